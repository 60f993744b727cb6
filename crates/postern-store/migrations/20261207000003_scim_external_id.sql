-- The id a directory keeps for a person it provisioned (SCIM `externalId`, e.g. Entra ID's
-- mailNickname or objectId), returned as it was given and searchable with `externalId eq`.
ALTER TABLE actors ADD COLUMN scim_external_id TEXT;
CREATE INDEX actors_by_scim_external_id ON actors (identity_provider_id, scim_external_id);

-- The same for the groups a directory syncs (Entra ID sends the group's objectId).
ALTER TABLE actor_groups ADD COLUMN scim_external_id TEXT;
