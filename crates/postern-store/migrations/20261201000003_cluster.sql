-- Portal nodes sharing one PostgreSQL database: each heartbeats here; a node silent for 20 s
-- is gone, and its rows in `presence` with it. SQLite (one node) writes nothing here.
CREATE TABLE portal_nodes (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- Which devices have sessions on which node: the other nodes count them as online, and route
-- access through a gateway whatever node holds its session (a gateway's row carries its device
-- record and endpoint).
CREATE TABLE presence (
    node_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    token_id TEXT NOT NULL,
    sessions BIGINT NOT NULL,
    endpoint TEXT,
    device TEXT,
    PRIMARY KEY (node_id, account_id, kind, device_id)
);
CREATE INDEX presence_by_device ON presence (account_id, kind, device_id);
CREATE INDEX presence_by_token ON presence (token_id);
