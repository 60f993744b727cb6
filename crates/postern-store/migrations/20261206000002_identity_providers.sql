-- People sign in through an account's OpenID Connect providers. The client secret is sealed
-- (it must be read back to redeem codes). A person provisioned by a provider is recognized by
-- the provider's subject (`sub`) on later sign-ins; service accounts never have one.
CREATE TABLE identity_providers (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed TEXT,
    scopes TEXT NOT NULL,
    email_claim TEXT NOT NULL,
    groups_claim TEXT,
    admin_groups TEXT NOT NULL,
    session_lifetime_seconds BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX identity_providers_by_account ON identity_providers (account_id, id);

ALTER TABLE actors ADD COLUMN identity_provider_id TEXT;
ALTER TABLE actors ADD COLUMN provider_subject TEXT;
CREATE UNIQUE INDEX actors_by_provider_subject ON actors (identity_provider_id, provider_subject)
    WHERE provider_subject IS NOT NULL;

-- A sign-in under way: the browser left for the provider with `state` (kept here as its
-- SHA-256) and comes back with it once; the PKCE verifier is sealed. Taken (deleted) when the
-- browser comes back, so a replayed callback finds nothing.
CREATE TABLE oidc_sign_ins (
    state_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider_id TEXT NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    pkce_verifier_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
