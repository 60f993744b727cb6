-- Sessions of administrators signed in to the web portal. Only a SHA-256 of the random
-- 256-bit session id is stored: a database dump does not let anyone take over a session.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    actor_id TEXT NOT NULL REFERENCES actors(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source_ip TEXT,
    user_agent TEXT
);
CREATE INDEX web_sessions_by_actor ON web_sessions (actor_id);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
