-- Mosaic Coordinator store, schema 2: delivery bodies may be stored compressed.
-- 'identity': the bytes as received (every row of schema 1); 'lz4': an LZ4 block preceded by
-- the body's length (4 bytes, little-endian). Duplicate rows hold no body.
ALTER TABLE inbox ADD COLUMN body_codec TEXT NOT NULL DEFAULT 'identity'
    CHECK (body_codec IN ('identity', 'lz4'));
