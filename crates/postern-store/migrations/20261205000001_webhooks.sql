-- Webhooks: an account's HTTPS endpoints, the events each wants, and a secret that signs each
-- delivery (sealed: it must be read back to sign). Deliveries are written in the transaction of
-- the change they report, so they survive a restart; a node claims a due one for a while before
-- sending it, so several nodes send each once.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    description TEXT,
    events TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_by_account ON webhooks (account_id, id);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    claimed_until BIGINT,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);

-- Which expiry notices (30, 7, 1 days before) a token's webhooks were sent: each once.
CREATE TABLE token_expiry_notices (
    token_id TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    days_before BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (token_id, days_before)
);
