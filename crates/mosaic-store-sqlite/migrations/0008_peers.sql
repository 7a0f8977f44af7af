-- Mosaic Coordinator store (SQLite), schema 8: the coordinators sharing this store, each as it
-- last said it was alive (every second), so /health and /metrics can count the live ones.
CREATE TABLE peers (
    id      TEXT    PRIMARY KEY,
    name    TEXT    NOT NULL,
    is_leader INTEGER NOT NULL,
    at      INTEGER NOT NULL
);
