-- Mosaic Coordinator store on PostgreSQL, schema 1: the same tables and rules as SQLite's
-- schema 3 (crates/mosaic-store/migrations/sqlite/), in PostgreSQL's types: identity keys,
-- BYTEA, TIMESTAMPTZ (microseconds, like SQLite's integer timestamps), BOOLEAN, DOUBLE
-- PRECISION, JSONB for JSON the store itself reads back as values. The parse cache keeps TEXT:
-- it hands its values back exactly as they were put (JSONB would reformat them).

CREATE TABLE inbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     TEXT,
    event           TEXT        NOT NULL,
    event_type      TEXT,
    action          TEXT,
    repository      TEXT,
    issue_number    BIGINT,
    body_sha256     BYTEA       NOT NULL,
    -- NULL for duplicate rows: the original holds the body.
    body            BYTEA,
    -- 'identity': the bytes as received; 'lz4': an LZ4 block preceded by the body's length
    -- (4 bytes, little-endian).
    body_codec      TEXT        NOT NULL DEFAULT 'identity'
        CHECK (body_codec IN ('identity', 'lz4')),
    status          TEXT        NOT NULL
        CHECK (status IN ('pending', 'processed', 'ignored', 'duplicate', 'failed')),
    duplicate_of    BIGINT REFERENCES inbox (id),
    -- A possible replay: the same body as that row under a new delivery id; handled anyway.
    replay_of       BIGINT REFERENCES inbox (id),
    attempts        BIGINT      NOT NULL DEFAULT 0,
    last_error      TEXT,
    received_at     TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ,
    CHECK ((status = 'duplicate') = (duplicate_of IS NOT NULL))
);
-- Deduplication keys hold among original rows only; duplicates (and, for the body, possible
-- replays) repeat them by definition. Concurrent inserts of one key serialise on these.
CREATE UNIQUE INDEX inbox_delivery_id ON inbox (delivery_id)
    WHERE duplicate_of IS NULL AND delivery_id IS NOT NULL;
CREATE UNIQUE INDEX inbox_body_sha256 ON inbox (body_sha256)
    WHERE duplicate_of IS NULL AND replay_of IS NULL;
CREATE INDEX inbox_pending ON inbox (next_attempt_at, id) WHERE status = 'pending';

CREATE TABLE issue_snapshots (
    repository  TEXT        NOT NULL,
    number      BIGINT      NOT NULL,
    title       TEXT        NOT NULL,
    body        TEXT        NOT NULL,
    labels      JSONB       NOT NULL, -- array of strings
    assignees   JSONB       NOT NULL, -- array of strings
    state       TEXT        NOT NULL CHECK (state IN ('open', 'closed')),
    updated_at  TIMESTAMPTZ NOT NULL,
    html_url    TEXT,
    stored_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (repository, number)
);

CREATE TABLE issues (
    repository     TEXT             NOT NULL,
    number         BIGINT           NOT NULL,
    state          TEXT             NOT NULL,
    metadata       JSONB, -- IssueMetadata
    assigned_agent TEXT,
    estimate       BIGINT,
    priority       INTEGER          NOT NULL DEFAULT 0,
    queued_at      TIMESTAMPTZ,
    attempts       BIGINT           NOT NULL DEFAULT 0,
    input_tokens   BIGINT           NOT NULL DEFAULT 0,
    output_tokens  BIGINT           NOT NULL DEFAULT 0,
    cost_usd       DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (repository, number)
);
CREATE INDEX issues_state ON issues (state);

CREATE TABLE issue_transitions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository  TEXT        NOT NULL,
    number      BIGINT      NOT NULL,
    from_state  TEXT,
    to_state    TEXT        NOT NULL,
    cause       TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (repository, number) REFERENCES issues (repository, number)
);
CREATE INDEX issue_transitions_issue ON issue_transitions (repository, number, id);

-- issue waits for blocker; a blocker need not be a coordinated issue.
CREATE TABLE dependencies (
    repository         TEXT   NOT NULL,
    number             BIGINT NOT NULL,
    blocker_repository TEXT   NOT NULL,
    blocker_number     BIGINT NOT NULL,
    PRIMARY KEY (repository, number, blocker_repository, blocker_number),
    FOREIGN KEY (repository, number) REFERENCES issues (repository, number)
);
CREATE INDEX dependencies_blocker ON dependencies (blocker_repository, blocker_number);

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository      TEXT        NOT NULL,
    number          BIGINT      NOT NULL,
    idempotency_key TEXT        NOT NULL UNIQUE,
    kind            TEXT        NOT NULL,
    payload         JSONB       NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts        BIGINT      NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    done_at         TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (status, repository, number, id);

CREATE TABLE sessions (
    id            TEXT             PRIMARY KEY,
    agent         TEXT             NOT NULL,
    repository    TEXT             NOT NULL,
    number        BIGINT           NOT NULL,
    pid           BIGINT,
    started_at    TIMESTAMPTZ      NOT NULL,
    ended_at      TIMESTAMPTZ,
    outcome       TEXT,
    detail        TEXT,
    input_tokens  BIGINT           NOT NULL DEFAULT 0,
    output_tokens BIGINT           NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX sessions_issue ON sessions (repository, number, started_at);
CREATE INDEX sessions_open ON sessions (started_at, id) WHERE ended_at IS NULL;

CREATE TABLE session_rotations (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    old_session_id         TEXT             NOT NULL,
    new_session_id         TEXT,
    agent_type             TEXT             NOT NULL,
    repository             TEXT             NOT NULL,
    number                 BIGINT           NOT NULL,
    next_issue             TEXT,
    context_before_tokens  BIGINT           NOT NULL,
    context_before_percent DOUBLE PRECISION NOT NULL,
    success                BOOLEAN          NOT NULL,
    error_message          TEXT,
    at                     TIMESTAMPTZ      NOT NULL
);

CREATE TABLE compactions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id    TEXT             NOT NULL,
    repository    TEXT             NOT NULL,
    number        BIGINT           NOT NULL,
    before_tokens BIGINT           NOT NULL,
    after_tokens  BIGINT           NOT NULL,
    freed_tokens  BIGINT           NOT NULL,
    freed_percent DOUBLE PRECISION NOT NULL,
    success       BOOLEAN          NOT NULL,
    at            TIMESTAMPTZ      NOT NULL
);
CREATE INDEX compactions_session ON compactions (session_id, id);

CREATE TABLE parse_cache (
    cache_key  TEXT        PRIMARY KEY,
    value      TEXT        NOT NULL,
    stored_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE llm_usage (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider      TEXT             NOT NULL,
    model         TEXT             NOT NULL,
    input_tokens  BIGINT           NOT NULL,
    output_tokens BIGINT           NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    issue         TEXT,
    at            TIMESTAMPTZ      NOT NULL
);

-- One row; health checks prove a write by bumping it.
CREATE TABLE heartbeat (
    id    INTEGER     PRIMARY KEY CHECK (id = 1),
    beats BIGINT      NOT NULL,
    at    TIMESTAMPTZ NOT NULL
);
INSERT INTO heartbeat (id, beats, at) VALUES (1, 0, 'epoch');
