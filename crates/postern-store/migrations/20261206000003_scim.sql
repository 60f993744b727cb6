-- Directory sync (SCIM 2.0): each identity provider may hold one bearer token its directory
-- provisions people with; only its SHA-256 is kept (the token is 256 random bits).
ALTER TABLE identity_providers ADD COLUMN scim_token_hash TEXT;

-- A group synced from a directory belongs to its identity provider (kind `directory`).
ALTER TABLE actor_groups ADD COLUMN identity_provider_id TEXT;
