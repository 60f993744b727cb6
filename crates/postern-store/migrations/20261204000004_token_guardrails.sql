-- Guardrails of a token a fleet shares: at most `max_clients` devices at once (NULL: no limit),
-- sessions only from `allowed_source_cidrs` (a JSON array; empty: anywhere), and new devices
-- waiting for an administrator's approval (`require_approval`, 0 or 1).
ALTER TABLE tokens ADD COLUMN max_clients BIGINT;
ALTER TABLE tokens ADD COLUMN allowed_source_cidrs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tokens ADD COLUMN require_approval BIGINT NOT NULL DEFAULT 0;

-- When a device was approved (or first seen on a token that does not require approval); NULL:
-- it waits. The devices seen so far were all admitted.
ALTER TABLE devices ADD COLUMN approved_at BIGINT;
UPDATE devices SET approved_at = created_at;
