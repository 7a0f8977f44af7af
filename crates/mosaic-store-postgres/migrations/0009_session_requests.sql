-- Sessions shared among the coordinators of this database. The leader asks for a session (a
-- request); a coordinator with free capacity claims it (skipping rows another is claiming),
-- runs it and reports its state (also its heartbeat); the leader leaves it commands. Task,
-- state and commands are the engine's JSON, kept as text. The leader's rows carry its epoch.
CREATE TABLE session_requests (
    session_id    TEXT        PRIMARY KEY,
    -- Request order: claims take the oldest first.
    request_seq   BIGINT      GENERATED ALWAYS AS IDENTITY,
    repository    TEXT        NOT NULL,
    number        BIGINT      NOT NULL,
    agent         TEXT        NOT NULL,
    task_json     TEXT        NOT NULL,
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The claimant's peer id and name (a restarted coordinator keeps its name, not its id).
    claimant_id   TEXT,
    claimant_name TEXT,
    claimed_at    TIMESTAMPTZ,
    -- The latest report, or the claim: how long the claimant has been silent.
    reported_at   TIMESTAMPTZ,
    state_json    TEXT,
    ended_at      TIMESTAMPTZ,
    cancelled_at  TIMESTAMPTZ,
    epoch         BIGINT DEFAULT NULLIF(current_setting('mosaic.epoch', true), '')::BIGINT
);
-- What a claim looks for, oldest first.
CREATE INDEX session_requests_unclaimed ON session_requests (request_seq)
    WHERE claimant_id IS NULL AND cancelled_at IS NULL;
-- A claimant's open claims (its capacity), also by name (what a restarted one left).
CREATE INDEX session_requests_open_by_claimant ON session_requests (claimant_id)
    WHERE claimant_id IS NOT NULL AND ended_at IS NULL;
CREATE INDEX session_requests_open_by_name ON session_requests (claimant_name)
    WHERE claimant_id IS NOT NULL AND ended_at IS NULL;
-- An issue's sessions still claimed (a new one waits until they end or fall silent).
CREATE INDEX session_requests_open_by_issue ON session_requests (repository, number)
    WHERE claimant_id IS NOT NULL AND ended_at IS NULL;

CREATE TABLE session_commands (
    seq          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   TEXT        NOT NULL REFERENCES session_requests (session_id),
    command_json TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    epoch        BIGINT DEFAULT NULLIF(current_setting('mosaic.epoch', true), '')::BIGINT
);
CREATE INDEX session_commands_by_session ON session_commands (session_id, seq);
-- A command stored again (a retry after its answer was lost) is stored once: the leader makes
-- each command's text unique. By its hash: a prompt can be longer than an index entry may be.
CREATE UNIQUE INDEX session_commands_once ON session_commands (session_id, md5(command_json));

-- How many sessions each coordinator runs at most at once.
ALTER TABLE peers ADD COLUMN capacity BIGINT NOT NULL DEFAULT 0;
