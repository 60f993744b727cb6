-- Ephemeral devices: removed when they stop, or a while after they vanished (account setting);
-- a token may make every device that uses it ephemeral.
ALTER TABLE devices ADD COLUMN ephemeral BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN ephemeral BIGINT NOT NULL DEFAULT 0;
-- The sweep for vanished and long-unseen devices reads them by how long ago they were seen.
CREATE INDEX devices_by_last_seen ON devices (account_id, last_seen_at);
