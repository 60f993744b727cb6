-- What the web portal keeps between requests, in the database so that any portal node can serve
-- the next request (no sticky sessions).
--
-- A created token's secret, waiting to be shown once to the session that created it: sealed
-- with a key derived from the session id, which only the browser's cookie holds (the database
-- has its SHA-256), so a database dump does not reveal it. Read once (deleted as it is read).
CREATE TABLE web_shown_secrets (
    session_hash TEXT NOT NULL REFERENCES web_sessions(id_hash) ON DELETE CASCADE,
    holder_id TEXT NOT NULL,
    token TEXT NOT NULL,
    sealed TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (session_hash, holder_id)
);
-- Failed web sign-ins by key (source address, email), for the limits.
CREATE TABLE web_sign_in_failures (
    key TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX web_sign_in_failures_by_key ON web_sign_in_failures (key, at);
