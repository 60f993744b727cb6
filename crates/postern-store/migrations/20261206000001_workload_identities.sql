-- Workload identity federation: a service account's trust rules. An ID token from `issuer`
-- for `audience` whose subject and claims match is exchanged for a short-lived client token
-- of the service account (no stored secret on the workload). `jwks` holds the issuer's keys
-- for sites that cannot reach it; otherwise they are fetched through discovery.
CREATE TABLE workload_identities (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    audience TEXT NOT NULL,
    subject TEXT NOT NULL,
    claims TEXT NOT NULL,
    token_lifetime_seconds BIGINT NOT NULL,
    jwks TEXT,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    last_used_at BIGINT
);
CREATE INDEX workload_identities_by_actor ON workload_identities (account_id, actor_id, id);
-- The exchange finds the rules that could trust a token by its issuer and audience, across accounts.
CREATE INDEX workload_identities_by_issuer ON workload_identities (issuer, audience);

-- The trust rule a token was exchanged under (revoked with the rule).
ALTER TABLE tokens ADD COLUMN workload_identity_id TEXT;
CREATE INDEX tokens_by_workload_identity ON tokens (workload_identity_id);
