-- Mosaic Coordinator store, schema 4: a session keeps the four token kinds its agent reported
-- apart (input, output, cache reads, cache writes: priced differently). Existing sessions read 0.
ALTER TABLE sessions ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
