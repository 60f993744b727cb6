//! Authorizations given to gateways, as opaque JSON documents owned by the session hub. The hub
//! writes them in batches (saves and deletes in one transaction, in the order it decided them)
//! and reads them back, with the state of their tokens, when an account's sessions start.

use chrono::{DateTime, Utc};
use postern_domain::ChangeEvent;
use sqlx::Row;
use uuid::Uuid;

use crate::db::{self, from_ts, ts};
use crate::{Result, Store};

pub use postern_domain::StoredAuthorization;

/// A stored authorization read back, with what its token is now.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedAuthorization {
    pub authorization: StoredAuthorization,
    /// `None` when the token no longer exists.
    pub token: Option<TokenState>,
}

/// What a token is now, for checking what was granted with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub revoked: bool,
    pub expires_at: DateTime<Utc>,
}

impl TokenState {
    /// Whether the token still authenticates at `now` (its holder aside).
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at > now
    }
}

/// Authorization changes to write together: every save is an upsert, an update changes a row
/// only if it still exists (another node may have deleted it: it stays deleted), deletes of
/// unknown ids change nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthorizationWrites {
    pub save: Vec<StoredAuthorization>,
    pub update: Vec<StoredAuthorization>,
    pub delete: Vec<Uuid>,
}

impl AuthorizationWrites {
    pub fn is_empty(&self) -> bool {
        self.save.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Ids per `… IN (…)`: well under SQLite's and PostgreSQL's bind limits.
pub(crate) const IDS_PER_QUERY: usize = 500;

/// Deletes the grants made with these tokens, in the caller's transaction.
pub(crate) async fn delete_by_tokens(
    tx: &mut crate::db::WriteTx,
    account_id: Uuid,
    token_ids: &[Uuid],
) -> Result<()> {
    delete_where(tx, account_id, "token_id", token_ids).await
}

/// Deletes the account's grants whose `column` is one of `values`.
async fn delete_where(
    tx: &mut crate::db::WriteTx,
    account_id: Uuid,
    column: &'static str,
    values: &[Uuid],
) -> Result<()> {
    for chunk in values.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "DELETE FROM authorizations WHERE account_id = $1 AND {column} IN ({})",
            db::placeholders(2, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(account_id.to_string());
        for id in chunk {
            query = query.bind(id.to_string());
        }
        query.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

impl Store {
    /// Writes a batch of authorization changes in one transaction; on PostgreSQL the other
    /// portal nodes hear of them through the change feed, in the same transaction.
    pub async fn write_authorizations(
        &self,
        account_id: Uuid,
        writes: &AuthorizationWrites,
    ) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        delete_where(&mut tx, account_id, "id", &writes.delete).await?;
        for authorization in &writes.save {
            sqlx::query(
                "INSERT INTO authorizations (id, account_id, token_id, gateway_device_id, expires_at, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET token_id = $3, gateway_device_id = $4, \
                 expires_at = $5, body = $6 WHERE authorizations.account_id = $2",
            )
            .bind(authorization.id.to_string())
            .bind(account_id.to_string())
            .bind(authorization.token_id.to_string())
            .bind(authorization.gateway_device_id.clone())
            .bind(ts(authorization.expires_at))
            .bind(db::to_json(&self.inner.sealer.seal(authorization.id, &authorization.body)?)?)
            .execute(&mut *tx.tx)
            .await?;
        }
        let mut saved = writes.save.clone();
        for authorization in &writes.update {
            let done = sqlx::query(
                "UPDATE authorizations SET token_id = $3, gateway_device_id = $4, expires_at = $5, \
                 body = $6 WHERE id = $1 AND account_id = $2",
            )
            .bind(authorization.id.to_string())
            .bind(account_id.to_string())
            .bind(authorization.token_id.to_string())
            .bind(authorization.gateway_device_id.clone())
            .bind(ts(authorization.expires_at))
            .bind(db::to_json(&self.inner.sealer.seal(authorization.id, &authorization.body)?)?)
            .execute(&mut *tx.tx)
            .await?;
            if done.rows_affected() > 0 {
                saved.push(authorization.clone());
            }
        }
        let event = ChangeEvent::AuthorizationsWritten {
            account_id,
            saved,
            deleted: writes.delete.clone(),
        };
        self.commit_announcing(tx, vec![event]).await
    }

    /// The account's authorizations that have not expired by `now` (expired ones are deleted),
    /// each with the current state of its token.
    pub async fn load_authorizations(
        &self,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<LoadedAuthorization>> {
        // Under the writer's lock like every write: a write beside an open SQLite write
        // transaction makes that one fail with "database is locked".
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM authorizations WHERE account_id = $1 AND expires_at <= $2")
            .bind(account_id.to_string())
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        let rows = sqlx::query(
            "SELECT a.id, a.token_id, a.gateway_device_id, a.expires_at, a.body, \
             t.id AS token_found, t.revoked_at AS token_revoked_at, \
             t.expires_at AS token_expires_at \
             FROM authorizations a \
             LEFT JOIN tokens t ON t.id = a.token_id AND t.account_id = a.account_id \
             WHERE a.account_id = $1",
        )
        .bind(account_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let found: Option<String> = row.try_get("token_found")?;
                let token = match found {
                    None => None,
                    Some(_) => Some(TokenState {
                        revoked: row.try_get::<Option<i64>, _>("token_revoked_at")?.is_some(),
                        expires_at: from_ts(row.try_get("token_expires_at")?)?,
                    }),
                };
                let id = db::uuid(row, "id")?;
                Ok(LoadedAuthorization {
                    authorization: StoredAuthorization {
                        id,
                        token_id: db::uuid(row, "token_id")?,
                        gateway_device_id: db::text(row, "gateway_device_id")?,
                        expires_at: db::time(row, "expires_at")?,
                        body: self.inner.sealer.open(id, db::json(row, "body")?)?,
                    },
                    token,
                })
            })
            .collect()
    }

    /// The current state of these tokens of the account; tokens that do not exist are missing
    /// from the answer.
    pub async fn token_states(
        &self,
        account_id: Uuid,
        token_ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, TokenState>> {
        let mut states = std::collections::HashMap::new();
        for chunk in token_ids.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "SELECT id, revoked_at, expires_at FROM tokens WHERE account_id = $1 AND id IN ({})",
                db::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(account_id.to_string());
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(self.pool()).await? {
                let revoked_at: Option<i64> = row.try_get("revoked_at")?;
                states.insert(
                    db::uuid(&row, "id")?,
                    TokenState {
                        revoked: revoked_at.is_some(),
                        expires_at: from_ts(row.try_get("expires_at")?)?,
                    },
                );
            }
        }
        Ok(states)
    }

    /// The guardrails of these tokens of the account as they are now; tokens that do not
    /// exist are missing from the answer.
    pub async fn token_guardrails(
        &self,
        account_id: Uuid,
        token_ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, postern_domain::TokenGuardrails>> {
        let mut guardrails = std::collections::HashMap::new();
        for chunk in token_ids.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "SELECT id, max_clients, allowed_source_cidrs, require_approval, ephemeral FROM tokens \
                 WHERE account_id = $1 AND id IN ({})",
                db::placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(account_id.to_string());
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(self.pool()).await? {
                guardrails.insert(
                    db::uuid(&row, "id")?,
                    crate::tokens::guardrails_from_row(&row)?,
                );
            }
        }
        Ok(guardrails)
    }
}

impl Store {
    /// The event as it goes into the change feed: preshared keys sealed.
    pub(crate) fn seal_event(&self, event: &ChangeEvent) -> Result<ChangeEvent> {
        self.map_authorizations(event.clone(), |sealer, a| {
            sealer
                .seal(a.id, &a.body)
                .map(|body| StoredAuthorization { body, ..a })
        })
    }

    /// The event as it came from the change feed, with its preshared keys opened.
    pub(crate) fn open_event(&self, event: ChangeEvent) -> Result<ChangeEvent> {
        self.map_authorizations(event, |sealer, a| {
            let id = a.id;
            sealer
                .open(id, a.body.clone())
                .map(|body| StoredAuthorization { body, ..a })
        })
    }

    fn map_authorizations(
        &self,
        event: ChangeEvent,
        map: impl Fn(&crate::sealed::Sealer, StoredAuthorization) -> Result<StoredAuthorization>,
    ) -> Result<ChangeEvent> {
        let ChangeEvent::AuthorizationsWritten {
            account_id,
            saved,
            deleted,
        } = event
        else {
            return Ok(event);
        };
        let saved = saved
            .into_iter()
            .map(|a| map(&self.inner.sealer, a))
            .collect::<Result<Vec<_>>>()?;
        Ok(ChangeEvent::AuthorizationsWritten {
            account_id,
            saved,
            deleted,
        })
    }
}
