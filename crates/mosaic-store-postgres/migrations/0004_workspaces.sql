-- Mosaic Coordinator store (PostgreSQL), schema 4: each issue's git workspace (worktree path,
-- branch, base, last pushed commit) and the pull request opened from its branch, so the API and
-- the status comment know them after a restart. The row outlives the worktree (`removed_at`):
-- the branch and its pull request stay in Gitea.
CREATE TABLE workspaces (
    repository   TEXT        NOT NULL,
    number       BIGINT      NOT NULL,
    path         TEXT        NOT NULL,
    branch       TEXT        NOT NULL,
    base_branch  TEXT        NOT NULL,
    head_commit  TEXT,
    prepared_at  TIMESTAMPTZ NOT NULL,
    removed_at   TIMESTAMPTZ,
    pull_number  BIGINT,
    pull_url     TEXT,
    PRIMARY KEY (repository, number)
);
