-- Signing out of the portal may also sign a person out at their identity provider
-- (OpenID Connect RP-initiated logout); off unless the provider is set to.
ALTER TABLE identity_providers ADD COLUMN sign_out_at_provider BIGINT NOT NULL DEFAULT 0;

-- A web session opened through a provider keeps which one, and the ID token it was opened with
-- (sealed, bound to the session): the provider's logout endpoint asks for it as `id_token_hint`.
ALTER TABLE web_sessions ADD COLUMN identity_provider_id TEXT;
ALTER TABLE web_sessions ADD COLUMN id_token_sealed TEXT;
