-- The change feed between portal nodes on one PostgreSQL database: each committed change's
-- events, written in the change's own transaction and announced by a NOTIFY that carries only
-- the event's id (so no payload limit applies). A node whose listener lost its connection reads
-- back what it missed from here. Kept for an hour; SQLite (one node) writes nothing here.
CREATE TABLE change_events (
    id TEXT PRIMARY KEY,
    account_id TEXT,
    node_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX change_events_by_time ON change_events (created_at);
