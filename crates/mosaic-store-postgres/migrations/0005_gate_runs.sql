-- Mosaic Coordinator store (PostgreSQL), schema 5: every quality gate run, per issue, attempt and
-- the session whose result it checked, so the API shows them after a restart.
CREATE TABLE gate_runs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository       TEXT             NOT NULL,
    number           BIGINT           NOT NULL,
    attempt          BIGINT           NOT NULL,
    session_id       TEXT,
    gate             TEXT             NOT NULL,
    command          JSONB            NOT NULL,
    required         BOOLEAN          NOT NULL,
    status           TEXT             NOT NULL,
    detail           TEXT             NOT NULL,
    duration_ms      BIGINT           NOT NULL,
    output_tail      TEXT             NOT NULL,
    coverage_percent DOUBLE PRECISION,
    at               TIMESTAMPTZ      NOT NULL
);
CREATE INDEX gate_runs_by_issue ON gate_runs (repository, number, id);
