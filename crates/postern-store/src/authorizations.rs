//! Authorizations given to gateways, as opaque JSON documents owned by the session hub.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{self, ts};
use crate::{Result, Store};

/// A stored authorization: who holds it, where it applies, until when, and its document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAuthorization {
    pub id: Uuid,
    pub token_id: Uuid,
    pub gateway_device_id: String,
    pub expires_at: DateTime<Utc>,
    pub body: serde_json::Value,
}

impl Store {
    pub async fn save_authorization(
        &self,
        account_id: Uuid,
        authorization: &StoredAuthorization,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO authorizations (id, account_id, token_id, gateway_device_id, expires_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(authorization.id.to_string())
        .bind(account_id.to_string())
        .bind(authorization.token_id.to_string())
        .bind(authorization.gateway_device_id.clone())
        .bind(ts(authorization.expires_at))
        .bind(db::to_json(&authorization.body)?)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    pub async fn delete_authorizations(&self, account_id: Uuid, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for id in ids {
            sqlx::query("DELETE FROM authorizations WHERE account_id = $1 AND id = $2")
                .bind(account_id.to_string())
                .bind(id.to_string())
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await
    }

    /// The account's authorizations that have not expired by `now` (expired ones are deleted).
    pub async fn load_authorizations(
        &self,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredAuthorization>> {
        sqlx::query("DELETE FROM authorizations WHERE account_id = $1 AND expires_at <= $2")
            .bind(account_id.to_string())
            .bind(ts(now))
            .execute(self.pool())
            .await?;
        let rows = sqlx::query("SELECT * FROM authorizations WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredAuthorization {
                    id: db::uuid(row, "id")?,
                    token_id: db::uuid(row, "token_id")?,
                    gateway_device_id: db::text(row, "gateway_device_id")?,
                    expires_at: db::time(row, "expires_at")?,
                    body: db::json(row, "body")?,
                })
            })
            .collect()
    }
}
