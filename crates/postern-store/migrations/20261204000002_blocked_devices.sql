-- Client devices an administrator blocked: refused by their id and by the WireGuard key they
-- had when blocked; the token keeps working for the service account's other devices. Apart
-- from `devices`, whose rows the portal nodes rewrite as devices come and go; deleted with the
-- service account, as its devices are (no block is left that nobody can see or lift).
CREATE TABLE blocked_devices (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    public_key TEXT,
    blocked_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
