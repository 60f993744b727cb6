-- A service account's devices, in pages and counted, without reading the whole account's
-- (a fleet on one token has thousands).
CREATE INDEX devices_by_actor ON devices (account_id, kind, actor_id, id);
