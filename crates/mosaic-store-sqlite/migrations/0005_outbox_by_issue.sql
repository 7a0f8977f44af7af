-- Mosaic Coordinator store (SQLite), schema 5: an issue's outbox rows by issue, whatever their
-- status. The outbox worker reads them for every status comment and state label write (is a
-- newer one queued behind it?); without this index each read scanned the whole table.
CREATE INDEX outbox_by_issue ON outbox (repository, number, id);
