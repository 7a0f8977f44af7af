-- The coordinators sharing this database, each as it last said it was alive (every second),
-- so /health and /metrics on any of them can count the live ones.
CREATE TABLE peers (
    id      TEXT        PRIMARY KEY,
    name    TEXT        NOT NULL,
    is_leader BOOLEAN   NOT NULL,
    at      TIMESTAMPTZ NOT NULL
);
