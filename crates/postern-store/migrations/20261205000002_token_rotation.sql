-- Rotation: a successor token takes over from its predecessor during an overlap window.
-- `rotated_from` on the successor names its predecessor; `successor_id` on the predecessor
-- names the successor, and `successor_secret` holds the successor's secret sealed
-- (ChaCha20-Poly1305, bound to the predecessor's id) so that every portal node can hand it to
-- the clients still connected with the predecessor. The sealed secret is cleared when the
-- window ends or either token is revoked.
ALTER TABLE tokens ADD COLUMN rotated_from TEXT;
ALTER TABLE tokens ADD COLUMN successor_id TEXT;
ALTER TABLE tokens ADD COLUMN successor_secret TEXT;
ALTER TABLE tokens ADD COLUMN rotated_at BIGINT;
