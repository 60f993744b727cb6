-- Failed authentications that belong to no account are written aggregated and pruned by age.
CREATE INDEX audit_events_unattributed ON audit_events (occurred_at) WHERE account_id IS NULL;
