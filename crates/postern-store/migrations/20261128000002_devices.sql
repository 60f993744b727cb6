-- Devices: headless clients and gateways that opened a session with the portal.
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    actor_id TEXT REFERENCES actors(id) ON DELETE CASCADE,
    site_id TEXT REFERENCES sites(id) ON DELETE CASCADE,
    token_id TEXT,
    name TEXT NOT NULL,
    version TEXT,
    public_key TEXT,
    ipv4 TEXT NOT NULL,
    ipv6 TEXT NOT NULL,
    last_seen_ip TEXT,
    last_seen_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX devices_by_device_id ON devices (account_id, kind, device_id);
CREATE INDEX devices_by_account ON devices (account_id, kind, id);
