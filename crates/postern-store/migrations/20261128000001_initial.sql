-- One schema for SQLite and PostgreSQL: identifiers are UUIDv7 text (time-ordered), instants are
-- BIGINT microseconds since the Unix epoch, structured values are JSON text.

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE actors (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT,
    password_hash TEXT,
    disabled_at BIGINT,
    last_seen_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX actors_by_account ON actors (account_id, id);
CREATE UNIQUE INDEX actors_by_email ON actors (account_id, email) WHERE email IS NOT NULL;

CREATE TABLE actor_groups (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX actor_groups_by_name ON actor_groups (account_id, name);

CREATE TABLE memberships (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    group_id TEXT NOT NULL REFERENCES actor_groups(id) ON DELETE CASCADE,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, actor_id)
);
CREATE INDEX memberships_by_actor ON memberships (actor_id);

CREATE TABLE sites (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX sites_by_name ON sites (account_id, name);

CREATE TABLE resources (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    site_id TEXT NOT NULL REFERENCES sites(id),
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    description TEXT,
    filters TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX resources_by_account ON resources (account_id, id);
CREATE INDEX resources_by_site ON resources (site_id);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    group_id TEXT NOT NULL REFERENCES actor_groups(id) ON DELETE CASCADE,
    resource_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    description TEXT,
    conditions TEXT NOT NULL,
    disabled_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX policies_by_account ON policies (account_id, id);
CREATE INDEX policies_by_group ON policies (group_id);
CREATE INDEX policies_by_resource ON policies (resource_id);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    actor_id TEXT REFERENCES actors(id) ON DELETE CASCADE,
    site_id TEXT REFERENCES sites(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    expires_at BIGINT NOT NULL,
    last_used_at BIGINT,
    last_used_ip TEXT,
    last_used_user_agent TEXT,
    revoked_at BIGINT,
    revoked_by TEXT
);
CREATE INDEX tokens_by_actor ON tokens (account_id, actor_id, id);
CREATE INDEX tokens_by_site ON tokens (account_id, site_id, id);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    account_id TEXT REFERENCES accounts(id) ON DELETE CASCADE,
    occurred_at BIGINT NOT NULL,
    actor_id TEXT,
    token_id TEXT,
    source_ip TEXT,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT,
    before_state TEXT,
    after_state TEXT
);
CREATE INDEX audit_events_by_account ON audit_events (account_id, id);
