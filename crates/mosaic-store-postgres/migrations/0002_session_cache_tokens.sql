-- Mosaic Coordinator store (PostgreSQL), schema 2: a session keeps the four token kinds its agent
-- reported apart (input, output, cache reads, cache writes: priced differently). Existing
-- sessions read 0.
ALTER TABLE sessions
    ADD COLUMN cache_read_tokens     BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN cache_creation_tokens BIGINT NOT NULL DEFAULT 0;
