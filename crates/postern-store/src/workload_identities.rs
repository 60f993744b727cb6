//! Workload identity federation: a service account's trust rules, and the client tokens
//! exchanged under them. The signature check is the caller's (`postern-workload-identity`);
//! the store keeps the rules, finds the ones an issuer could satisfy, and issues the token.

use std::collections::BTreeMap;

use chrono::Utc;
use postern_domain::workload_identity::{
    self, ClaimPattern, MatchedClaims, ValidWorkloadIdentity, MAX_WORKLOAD_IDENTITIES_PER_ACTOR,
};
use postern_domain::{
    new_id, Acting, ActorType, ChangeEvent, TokenGuardrails, ValidationError, WorkloadIdentity,
};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, opt_uuid, text, time, ts};
use crate::tokens::{insert_token, revoke_held_tokens, CreatedToken, NewTokenRequest, TokenHolder};
use crate::{Result, Store, StoreError};

/// How long a token exchanged for an ID token is listed after it ended.
pub const EXCHANGED_TOKENS_KEPT_FOR: chrono::Duration = chrono::Duration::days(7);

/// The most rules of one account one exchange considers for an issuer and audience; beyond,
/// the workload names its rule.
pub const MAX_RULES_CONSIDERED: usize = 200;

/// Which trust rules an exchange looks at: never another account's, unless the workload names
/// that rule by id — a tenant's rule that matches everyone's tokens must neither make other
/// tenants' exchanges ambiguous nor take their workloads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    /// The one rule with this id.
    Rule(Uuid),
    /// The rules of this account.
    Account(Uuid),
}

/// An exchange: the token the workload gets, and whether it took over from the token the
/// workload held (a renewal: the portal moves that device's grants to the new one).
#[derive(Debug)]
pub struct ExchangedToken {
    pub created: CreatedToken,
    pub replaced: Option<Uuid>,
}

impl Store {
    /// Adds a trust rule (checked by `postern_workload_identity::validate_rule`) to a service
    /// account. Audited as `workload_identity.create`.
    pub async fn create_workload_identity(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
        valid: ValidWorkloadIdentity,
        acting: &Acting,
    ) -> Result<WorkloadIdentity> {
        let actor = self.get_actor(account_id, actor_id).await?;
        if actor.actor_type != ActorType::ServiceAccount {
            return Err(StoreError::Conflict(format!(
                "workload identities exchange ID tokens for service-account tokens; {} is {}",
                actor.name,
                actor.actor_type.described()
            )));
        }
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let rule = WorkloadIdentity {
            id: new_id(),
            account_id,
            actor_id,
            name: valid.name,
            issuer: valid.issuer,
            audience: valid.audience,
            subject: valid.subject,
            claims: valid.claims,
            token_lifetime_seconds: u32::try_from(valid.token_lifetime.num_seconds())
                .unwrap_or(u32::MAX),
            jwks: valid.jwks,
            created_at: now,
            created_by: acting.actor_id,
            last_used_at: None,
        };
        let mut tx = self.begin_write().await?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM workload_identities WHERE account_id = $1 AND actor_id = $2",
        )
        .bind(account_id.to_string())
        .bind(actor_id.to_string())
        .fetch_one(&mut *tx.tx)
        .await?;
        if count as usize >= MAX_WORKLOAD_IDENTITIES_PER_ACTOR {
            return Err(StoreError::Validation(ValidationError::new(
                "issuer",
                format!(
                    "a service account has at most {MAX_WORKLOAD_IDENTITIES_PER_ACTOR} workload identities"
                ),
            )));
        }
        sqlx::query(
            "INSERT INTO workload_identities (id, account_id, actor_id, name, issuer, audience, \
             subject, claims, token_lifetime_seconds, jwks, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(rule.id.to_string())
        .bind(account_id.to_string())
        .bind(actor_id.to_string())
        .bind(rule.name.clone())
        .bind(rule.issuer.clone())
        .bind(rule.audience.clone())
        .bind(rule.subject.as_str().to_string())
        .bind(db::to_json(&rule.claims)?)
        .bind(i64::from(rule.token_lifetime_seconds))
        .bind(rule.jwks.as_ref().map(db::to_json).transpose()?)
        .bind(ts(now))
        .bind(acting.actor_id.map(|id| id.to_string()))
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "workload_identity.create",
                object_type: "workload_identity",
                object_id: Some(rule.id),
                before: None,
                after: snapshot(&rule),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(rule)
    }

    pub async fn list_workload_identities(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
    ) -> Result<Vec<WorkloadIdentity>> {
        self.get_actor(account_id, actor_id).await?;
        let rows = sqlx::query(
            "SELECT * FROM workload_identities WHERE account_id = $1 AND actor_id = $2 ORDER BY id",
        )
        .bind(account_id.to_string())
        .bind(actor_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rule_from_row).collect()
    }

    pub async fn get_workload_identity(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
        id: Uuid,
    ) -> Result<WorkloadIdentity> {
        let row = sqlx::query(
            "SELECT * FROM workload_identities WHERE account_id = $1 AND actor_id = $2 AND id = $3",
        )
        .bind(account_id.to_string())
        .bind(actor_id.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref()
            .map(rule_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("workload identity"))
    }

    /// Deletes a trust rule and revokes the live tokens exchanged under it (every node ends
    /// their sessions at once); returns how many were revoked. Audited as
    /// `workload_identity.delete` and `token.revoke` for each token.
    pub async fn delete_workload_identity(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
        id: Uuid,
        acting: &Acting,
    ) -> Result<usize> {
        let before = self.get_workload_identity(account_id, actor_id, id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let token_ids =
            revoke_held_tokens(&mut tx.tx, account_id, "workload_identity_id", id, acting).await?;
        sqlx::query("DELETE FROM workload_identities WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "workload_identity.delete",
                object_type: "workload_identity",
                object_id: Some(id),
                before: snapshot(&before),
                after: Some(serde_json::json!({ "revoked_tokens": token_ids.len() })),
                now,
            },
        )
        .await?;
        let revoked = token_ids.len();
        let events = if token_ids.is_empty() {
            Vec::new()
        } else {
            vec![ChangeEvent::TokensRevoked {
                account_id,
                token_ids,
            }]
        };
        self.commit_publishing(tx, events).await?;
        Ok(revoked)
    }

    /// Deletes the tokens exchanged under a trust rule that ended (expired or revoked) more
    /// than [`EXCHANGED_TOKENS_KEPT_FOR`] ago, at most a thousand at a time; returns how many.
    pub async fn purge_ended_exchanged_tokens(&self, now: chrono::DateTime<Utc>) -> Result<u64> {
        let before = ts(now - EXCHANGED_TOKENS_KEPT_FOR);
        let done = sqlx::query(
            "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens \
             WHERE workload_identity_id IS NOT NULL \
             AND (expires_at <= $1 OR revoked_at <= $1) LIMIT 1000)",
        )
        .bind(before)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The trust rules in `scope` for this issuer and one of these audiences (the exchange
    /// then checks each): up to [`MAX_RULES_CONSIDERED`] + 1, so that the caller can tell
    /// there are too many.
    pub async fn workload_identities_for_issuer(
        &self,
        issuer: &str,
        audiences: &[String],
        scope: RuleScope,
    ) -> Result<Vec<WorkloadIdentity>> {
        // An ID token names a few audiences; more are not looked at.
        let audiences: Vec<&String> = audiences.iter().take(10).collect();
        if audiences.is_empty() {
            return Ok(Vec::new());
        }
        let (scoped_by, scope_id) = match scope {
            RuleScope::Rule(id) => ("id", id),
            RuleScope::Account(account_id) => ("account_id", account_id),
        };
        let sql = format!(
            "SELECT * FROM workload_identities WHERE issuer = $1 AND {scoped_by} = $2 \
             AND audience IN ({}) ORDER BY id LIMIT {}",
            db::placeholders(3, audiences.len()),
            MAX_RULES_CONSIDERED + 1
        );
        let mut query = sqlx::query(&sql)
            .bind(issuer.to_string())
            .bind(scope_id.to_string());
        for audience in audiences {
            query = query.bind(audience.clone());
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Issues a client token of the rule's service account for a verified ID token whose
    /// claims matched (`matched`). With `replaces` (a token of the same service account
    /// exchanged under the same rule, which the workload presented), the new token takes over
    /// from it like a rotation's successor: the device's grants move to it when it connects.
    /// Audited as `token.create` and `token.exchange` (with the matched claims).
    pub async fn exchange_workload_token(
        &self,
        rule: &WorkloadIdentity,
        matched: &MatchedClaims,
        replaces: Option<Uuid>,
        source_ip: Option<String>,
    ) -> Result<ExchangedToken> {
        let actor = self.get_actor(rule.account_id, rule.actor_id).await?;
        if actor.disabled_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "the service account {} is disabled",
                actor.name
            )));
        }
        let settings = self.get_account(rule.account_id).await?.settings;
        let now = Utc::now();
        let lifetime = chrono::Duration::seconds(i64::from(rule.token_lifetime_seconds));
        let expires_at = workload_identity::exchanged_token_expiry(lifetime, now, &settings);
        let subject = matched.get("sub").map(String::as_str).unwrap_or_default();
        let name: String = format!("{} · {subject}", rule.name)
            .chars()
            .filter(|c| !c.is_control())
            .take(postern_domain::validate::MAX_NAME_LEN)
            .collect();
        let acting = Acting {
            actor_id: Some(rule.actor_id),
            token_id: None,
            source_ip,
        };
        let request = NewTokenRequest {
            name: Some(name),
            expires_at: Some(expires_at),
            guardrails: TokenGuardrails::default(),
            rotated_from: replaces,
            workload_identity_id: Some(rule.id),
        };
        let replaced_expiry = match replaces {
            Some(old) => Some(
                self.get_token(rule.account_id, TokenHolder::Actor(rule.actor_id), old)
                    .await?
                    .expires_at,
            ),
            None => None,
        };
        let mut tx = self.begin_write().await?;
        let mut created = insert_token(
            self,
            &mut tx.tx,
            rule.account_id,
            TokenHolder::Actor(rule.actor_id),
            postern_token::TokenKind::Client,
            &request,
            &settings,
            &acting,
        )
        .await?;
        let mut replaced = None;
        if let Some(old) = replaces {
            let taken_over = sqlx::query(
                "UPDATE tokens SET successor_id = $1, rotated_at = $2 \
                 WHERE account_id = $3 AND id = $4 AND actor_id = $5 \
                 AND workload_identity_id = $6 AND revoked_at IS NULL AND successor_id IS NULL",
            )
            .bind(created.token.id.to_string())
            .bind(ts(now))
            .bind(rule.account_id.to_string())
            .bind(old.to_string())
            .bind(rule.actor_id.to_string())
            .bind(rule.id.to_string())
            .execute(&mut *tx.tx)
            .await?;
            if taken_over.rows_affected() == 1 {
                replaced = Some(old);
            } else {
                // Already renewed (a retry) or revoked: the new token starts afresh.
                sqlx::query("UPDATE tokens SET rotated_from = NULL WHERE id = $1")
                    .bind(created.token.id.to_string())
                    .execute(&mut *tx.tx)
                    .await?;
                created.token.rotated_from = None;
            }
        }
        sqlx::query("UPDATE workload_identities SET last_used_at = $1 WHERE id = $2")
            .bind(ts(now))
            .bind(rule.id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(rule.account_id),
                acting: &acting,
                action: "token.exchange",
                object_type: "token",
                object_id: Some(created.token.id),
                before: None,
                after: Some(serde_json::json!({
                    "workload_identity_id": rule.id,
                    "workload_identity": rule.name,
                    "claims": matched,
                    "expires_at": created.token.expires_at,
                    "replaces": replaced,
                })),
                now,
            },
        )
        .await?;
        let mut events = vec![ChangeEvent::TokenCreated {
            account_id: rule.account_id,
            token_id: created.token.id,
        }];
        if let (Some(old), Some(expires_at)) = (replaced, replaced_expiry) {
            events.push(ChangeEvent::TokenRotated {
                account_id: rule.account_id,
                token_id: old,
                successor_id: created.token.id,
                expires_at,
            });
        }
        self.commit_publishing(tx, events).await?;
        Ok(ExchangedToken { created, replaced })
    }
}

fn rule_from_row(row: &AnyRow) -> Result<WorkloadIdentity> {
    let claims: BTreeMap<String, ClaimPattern> = db::json(row, "claims")?;
    let jwks =
        match opt_text(row, "jwks")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|err| {
                StoreError::Corrupt(format!("a workload identity's key set: {err}"))
            })?),
            None => None,
        };
    let lifetime: i64 = row.try_get("token_lifetime_seconds")?;
    Ok(WorkloadIdentity {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        actor_id: db::uuid(row, "actor_id")?,
        name: text(row, "name")?,
        issuer: text(row, "issuer")?,
        audience: text(row, "audience")?,
        subject: ClaimPattern::parse("subject", &text(row, "subject")?)
            .map_err(|err| StoreError::Corrupt(format!("a workload identity's {err}")))?,
        claims,
        token_lifetime_seconds: u32::try_from(lifetime).unwrap_or(u32::MAX),
        jwks,
        created_at: time(row, "created_at")?,
        created_by: opt_uuid(row, "created_by")?,
        last_used_at: opt_time(row, "last_used_at")?,
    })
}
