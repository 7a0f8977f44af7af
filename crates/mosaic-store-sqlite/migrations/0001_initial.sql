-- Mosaic Coordinator store, schema 1.
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC); booleans are 0/1.
-- Kept to SQL that PostgreSQL accepts with type changes only (BLOB → BYTEA, REAL → DOUBLE
-- PRECISION, AUTOINCREMENT → identity); partial unique indexes and ON CONFLICT exist in both.

CREATE TABLE inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     TEXT,
    event           TEXT    NOT NULL,
    event_type      TEXT,
    action          TEXT,
    repository      TEXT,
    issue_number    INTEGER,
    body_sha256     BLOB    NOT NULL,
    -- NULL for duplicate rows: the original holds the body.
    body            BLOB,
    status          TEXT    NOT NULL
        CHECK (status IN ('pending', 'processed', 'ignored', 'duplicate', 'failed')),
    duplicate_of    INTEGER REFERENCES inbox (id),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    received_at     INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    processed_at    INTEGER,
    CHECK ((status = 'duplicate') = (duplicate_of IS NOT NULL))
);
-- Deduplication keys hold among original rows only; duplicates repeat them by definition.
CREATE UNIQUE INDEX inbox_delivery_id ON inbox (delivery_id)
    WHERE duplicate_of IS NULL AND delivery_id IS NOT NULL;
CREATE UNIQUE INDEX inbox_body_sha256 ON inbox (body_sha256) WHERE duplicate_of IS NULL;
CREATE INDEX inbox_pending ON inbox (status, next_attempt_at, id);

CREATE TABLE issue_snapshots (
    repository  TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    title       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    labels      TEXT    NOT NULL, -- JSON array of strings
    assignees   TEXT    NOT NULL, -- JSON array of strings
    state       TEXT    NOT NULL CHECK (state IN ('open', 'closed')),
    updated_at  INTEGER NOT NULL,
    html_url    TEXT,
    stored_at   INTEGER NOT NULL,
    PRIMARY KEY (repository, number)
);

CREATE TABLE issues (
    repository     TEXT    NOT NULL,
    number         INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    metadata       TEXT, -- JSON IssueMetadata
    assigned_agent TEXT,
    estimate       INTEGER,
    priority       INTEGER NOT NULL DEFAULT 0,
    queued_at      INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_usd       REAL    NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (repository, number)
);
CREATE INDEX issues_state ON issues (state);

CREATE TABLE issue_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repository  TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    cause       TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    FOREIGN KEY (repository, number) REFERENCES issues (repository, number)
);
CREATE INDEX issue_transitions_issue ON issue_transitions (repository, number, id);

-- issue waits for blocker; a blocker need not be a coordinated issue.
CREATE TABLE dependencies (
    repository         TEXT    NOT NULL,
    number             INTEGER NOT NULL,
    blocker_repository TEXT    NOT NULL,
    blocker_number     INTEGER NOT NULL,
    PRIMARY KEY (repository, number, blocker_repository, blocker_number),
    FOREIGN KEY (repository, number) REFERENCES issues (repository, number)
);
CREATE INDEX dependencies_blocker ON dependencies (blocker_repository, blocker_number);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    repository      TEXT    NOT NULL,
    number          INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL, -- JSON
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    done_at         INTEGER
);
CREATE INDEX outbox_pending ON outbox (status, repository, number, id);

CREATE TABLE sessions (
    id            TEXT    PRIMARY KEY,
    agent         TEXT    NOT NULL,
    repository    TEXT    NOT NULL,
    number        INTEGER NOT NULL,
    pid           INTEGER,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    outcome       TEXT,
    detail        TEXT,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL    NOT NULL DEFAULT 0
);
CREATE INDEX sessions_issue ON sessions (repository, number, started_at);
CREATE INDEX sessions_open ON sessions (ended_at);

CREATE TABLE session_rotations (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    old_session_id         TEXT    NOT NULL,
    new_session_id         TEXT,
    agent_type             TEXT    NOT NULL,
    repository             TEXT    NOT NULL,
    number                 INTEGER NOT NULL,
    next_issue             TEXT,
    context_before_tokens  INTEGER NOT NULL,
    context_before_percent REAL    NOT NULL,
    success                INTEGER NOT NULL,
    error_message          TEXT,
    at                     INTEGER NOT NULL
);

CREATE TABLE compactions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT    NOT NULL,
    repository    TEXT    NOT NULL,
    number        INTEGER NOT NULL,
    before_tokens INTEGER NOT NULL,
    after_tokens  INTEGER NOT NULL,
    freed_tokens  INTEGER NOT NULL,
    freed_percent REAL    NOT NULL,
    success       INTEGER NOT NULL,
    at            INTEGER NOT NULL
);
CREATE INDEX compactions_session ON compactions (session_id, id);

CREATE TABLE parse_cache (
    cache_key  TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    stored_at  INTEGER NOT NULL
);

CREATE TABLE llm_usage (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    provider      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd      REAL    NOT NULL,
    issue         TEXT,
    at            INTEGER NOT NULL
);

-- One row; health checks prove a write by bumping it.
CREATE TABLE heartbeat (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    beats INTEGER NOT NULL,
    at   INTEGER NOT NULL
);
INSERT INTO heartbeat (id, beats, at) VALUES (1, 0, 0);
