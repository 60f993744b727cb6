-- Authorizations issued to gateways, kept so that a portal restart neither forgets them (and
-- could no longer withdraw them) nor makes gateways drop tunnels that are still allowed.
CREATE TABLE authorizations (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    token_id TEXT NOT NULL,
    gateway_device_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX authorizations_by_account ON authorizations (account_id, expires_at);
