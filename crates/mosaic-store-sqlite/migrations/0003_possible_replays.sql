-- Mosaic Coordinator store, schema 3: an identical body under a new delivery id is a possible
-- replay, not a duplicate. Gitea's updated_at has one-second resolution, so a real repeat
-- (assign, unassign, assign within a second) arrives byte for byte as before. Such a row keeps
-- its body, is handled like any other (the engine confirms the issue with Gitea first) and names
-- the row it repeats in replay_of. Only a delivery id seen before makes a duplicate.
ALTER TABLE inbox ADD COLUMN replay_of INTEGER REFERENCES inbox (id);
DROP INDEX inbox_body_sha256;
CREATE UNIQUE INDEX inbox_body_sha256 ON inbox (body_sha256)
    WHERE duplicate_of IS NULL AND replay_of IS NULL;
