-- Mosaic Coordinator store (SQLite), schema 6: each issue's git workspace (worktree path,
-- branch, base, last pushed commit) and the pull request opened from its branch, so the API and
-- the status comment know them after a restart. The row outlives the worktree (`removed_at`):
-- the branch and its pull request stay in Gitea.
CREATE TABLE workspaces (
    repository   TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    path         TEXT    NOT NULL,
    branch       TEXT    NOT NULL,
    base_branch  TEXT    NOT NULL,
    head_commit  TEXT,
    prepared_at  INTEGER NOT NULL,
    removed_at   INTEGER,
    pull_number  INTEGER,
    pull_url     TEXT,
    PRIMARY KEY (repository, number)
);
