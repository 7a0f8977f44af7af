-- Mosaic Coordinator store (SQLite), schema 7: every quality gate run, per issue, attempt and the
-- session whose result it checked, so the API shows them after a restart.
CREATE TABLE gate_runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    repository       TEXT    NOT NULL,
    number           INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    session_id       TEXT,
    gate             TEXT    NOT NULL,
    command          TEXT    NOT NULL, -- JSON array of strings
    required         INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    detail           TEXT    NOT NULL,
    duration_ms      INTEGER NOT NULL,
    output_tail      TEXT    NOT NULL,
    coverage_percent REAL,
    at               INTEGER NOT NULL
);
CREATE INDEX gate_runs_by_issue ON gate_runs (repository, number, id);
