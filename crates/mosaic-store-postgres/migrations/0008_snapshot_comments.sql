-- How many comments the issue had in the snapshot (Gitea's count; NULL for snapshots stored
-- before, or when Gitea did not say). With none, the bot certainly has no status comment yet.
ALTER TABLE issue_snapshots ADD COLUMN comments BIGINT;
