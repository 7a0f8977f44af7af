-- Fencing: each coordinator that takes the leadership raises the epoch, and every write a
-- leader makes checks, in its own transaction, that its epoch is still the current one (and
-- that its lock is still held); a leader that was paused past its lease writes nothing.
CREATE TABLE leader_epoch (
    id     SMALLINT PRIMARY KEY CHECK (id = 1),
    epoch  BIGINT      NOT NULL,
    -- The leader's `application_name` and backend, for an operator.
    holder TEXT,
    since  TIMESTAMPTZ
);
INSERT INTO leader_epoch (id, epoch) VALUES (1, 0);

-- The rows a leader writes carry its epoch: the fencing check sets `mosaic.epoch` for the
-- transaction (unset, as for a coordinator that never led: NULL).
ALTER TABLE issue_transitions
    ADD COLUMN epoch BIGINT DEFAULT NULLIF(current_setting('mosaic.epoch', true), '')::BIGINT;
ALTER TABLE outbox
    ADD COLUMN epoch BIGINT DEFAULT NULLIF(current_setting('mosaic.epoch', true), '')::BIGINT;
ALTER TABLE sessions
    ADD COLUMN epoch BIGINT DEFAULT NULLIF(current_setting('mosaic.epoch', true), '')::BIGINT;
