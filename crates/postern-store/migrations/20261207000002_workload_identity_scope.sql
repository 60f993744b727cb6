-- An exchange looks only at the rules of one account (or at the one rule it names), no longer
-- at every account's rules for an issuer.
DROP INDEX workload_identities_by_issuer;
CREATE INDEX workload_identities_by_account_issuer
    ON workload_identities (account_id, issuer, audience);
