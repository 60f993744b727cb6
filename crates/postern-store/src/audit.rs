//! The audit log: written inside the transaction of the change it records.

use chrono::{DateTime, Utc};
use postern_domain::{new_id, Acting, AuditEvent};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::db::{self, opt_text, opt_uuid, text, time, ts, BindValue};
use crate::{Page, Paged, Result, Store};

/// What to list: every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub(crate) struct Entry<'a> {
    pub account_id: Option<Uuid>,
    pub acting: &'a Acting,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub now: DateTime<Utc>,
}

pub(crate) fn snapshot<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// Writes the entry, and queues the webhook event it raises (if any) in the same transaction.
pub(crate) async fn record(conn: &mut AnyConnection, entry: Entry<'_>) -> Result<()> {
    let before = entry.before.as_ref().map(db::to_json).transpose()?;
    let after = entry.after.as_ref().map(db::to_json).transpose()?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO audit_events (id, account_id, occurred_at, actor_id, token_id, source_ip, \
         action, object_type, object_id, before_state, after_state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id.to_string())
    .bind(entry.account_id.map(|id| id.to_string()))
    .bind(ts(entry.now))
    .bind(entry.acting.actor_id.map(|id| id.to_string()))
    .bind(entry.acting.token_id.map(|id| id.to_string()))
    .bind(entry.acting.source_ip.clone())
    .bind(entry.action.to_string())
    .bind(entry.object_type.to_string())
    .bind(entry.object_id.map(|id| id.to_string()))
    .bind(before)
    .bind(after)
    .execute(&mut *conn)
    .await?;
    let (Some(account_id), Some(event)) = (
        entry.account_id,
        postern_domain::webhooks::WebhookEvent::of_audit_action(entry.action),
    ) else {
        return Ok(());
    };
    let data = serde_json::json!({
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "actor_id": entry.acting.actor_id,
        "token_id": entry.acting.token_id,
        "source_ip": entry.acting.source_ip,
        "before": entry.before,
        "after": entry.after,
    });
    crate::webhooks::enqueue(conn, account_id, event, id, data, entry.now).await
}

impl Store {
    /// The account's audit events, newest first.
    pub async fn list_audit_events(
        &self,
        account_id: Uuid,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Paged<AuditEvent>> {
        let mut sql = String::from("SELECT * FROM audit_events WHERE account_id = $1");
        let mut binds: Vec<BindValue> = vec![BindValue::Text(account_id.to_string())];
        let mut push = |clause: &str, value: BindValue| {
            binds.push(value);
            sql.push_str(&format!(" AND {clause} ${}", binds.len()));
        };
        if let Some(cursor) = page.cursor {
            push("id <", BindValue::Text(cursor.to_string()));
        }
        if let Some(actor_id) = filter.actor_id {
            push("actor_id =", BindValue::Text(actor_id.to_string()));
        }
        if let Some(action) = &filter.action {
            push("action =", BindValue::Text(action.clone()));
        }
        if let Some(since) = filter.since {
            push("occurred_at >=", BindValue::Int(ts(since)));
        }
        if let Some(until) = filter.until {
            push("occurred_at <", BindValue::Int(ts(until)));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", page.limit + 1));
        let rows = db::bind_all(sqlx::query(&sql), binds)
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |e| e.id))
    }

    /// Records a failed authentication. One that belongs to an account (a known token) is
    /// written at once, to that account's log. One that belongs to nobody (a malformed or
    /// unknown token) is counted in memory and written with the others from its source address
    /// and for its reason as one row a minute ([`Store::flush_failed_authentications`]): a
    /// flood from the internet then costs a counter, not a write under the database's lock.
    pub async fn record_failed_auth(
        &self,
        account_id: Option<Uuid>,
        token_id: Option<Uuid>,
        source_ip: Option<String>,
        reason: &str,
    ) -> Result<()> {
        let now = Utc::now();
        let Some(account_id) = account_id else {
            self.inner.unattributed.lock().count(source_ip, reason, now);
            return Ok(());
        };
        let acting = Acting {
            actor_id: None,
            token_id,
            source_ip,
        };
        let mut tx = self.begin_write().await?;
        record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting: &acting,
                action: "auth.failed",
                object_type: "token",
                object_id: token_id,
                before: None,
                after: Some(serde_json::json!({ "reason": reason })),
                now,
            },
        )
        .await?;
        tx.commit().await
    }

    /// Writes the counted failed authentications that belong to no account (one row per source
    /// address and reason, with `count`, `first_at` and `last_at`) and deletes such rows older
    /// than [`UNATTRIBUTED_RETENTION_DAYS`]. Counts are kept for the next try when the write
    /// fails. Returns the rows written.
    pub async fn flush_failed_authentications(&self) -> Result<usize> {
        let taken = std::mem::take(&mut *self.inner.unattributed.lock());
        if taken.buckets.is_empty() {
            return Ok(0);
        }
        let written = taken.buckets.len();
        let result = self.write_unattributed(&taken).await;
        if result.is_err() {
            self.inner.unattributed.lock().merge(taken);
        }
        result.map(|()| written)
    }

    async fn write_unattributed(&self, counted: &UnattributedFailures) -> Result<()> {
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        for ((source_ip, reason), bucket) in &counted.buckets {
            let acting = Acting {
                actor_id: None,
                token_id: None,
                source_ip: source_ip.clone(),
            };
            record(
                &mut tx.tx,
                Entry {
                    account_id: None,
                    acting: &acting,
                    action: "auth.failed",
                    object_type: "token",
                    object_id: None,
                    before: None,
                    after: Some(serde_json::json!({
                        "reason": reason,
                        "count": bucket.count,
                        "first_at": bucket.first_at,
                        "last_at": bucket.last_at,
                    })),
                    now,
                },
            )
            .await?;
        }
        let cutoff = now - chrono::Duration::days(UNATTRIBUTED_RETENTION_DAYS);
        sqlx::query("DELETE FROM audit_events WHERE account_id IS NULL AND occurred_at < $1")
            .bind(ts(cutoff))
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }
}

/// How long rows of failed authentications that belong to no account are kept.
pub const UNATTRIBUTED_RETENTION_DAYS: i64 = 90;
/// Distinct (source address, reason) pairs counted between two writes; failures beyond them
/// are counted under no address.
pub const UNATTRIBUTED_BUCKETS: usize = 10_000;

/// Failed authentications that belong to no account, counted until they are written.
#[derive(Debug, Default)]
pub(crate) struct UnattributedFailures {
    buckets: std::collections::HashMap<(Option<String>, String), FailureBucket>,
}

#[derive(Debug, Clone, Copy)]
struct FailureBucket {
    count: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

impl UnattributedFailures {
    fn count(&mut self, source_ip: Option<String>, reason: &str, now: DateTime<Utc>) {
        let mut key = (source_ip, reason.to_string());
        if self.buckets.len() >= UNATTRIBUTED_BUCKETS && !self.buckets.contains_key(&key) {
            key.0 = None;
        }
        self.add(
            key,
            FailureBucket {
                count: 1,
                first_at: now,
                last_at: now,
            },
        );
    }

    fn add(&mut self, key: (Option<String>, String), more: FailureBucket) {
        self.buckets
            .entry(key)
            .and_modify(|bucket| {
                bucket.count = bucket.count.saturating_add(more.count);
                bucket.first_at = bucket.first_at.min(more.first_at);
                bucket.last_at = bucket.last_at.max(more.last_at);
            })
            .or_insert(more);
    }

    fn merge(&mut self, other: UnattributedFailures) {
        for (key, bucket) in other.buckets {
            self.add(key, bucket);
        }
    }
}

fn event_from_row(row: &AnyRow) -> Result<AuditEvent> {
    let parse = |column: &str| -> Result<Option<serde_json::Value>> {
        opt_text(row, column)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|err| {
                    crate::StoreError::Corrupt(format!("audit column {column}: {err}"))
                })
            })
            .transpose()
    };
    Ok(AuditEvent {
        id: db::uuid(row, "id")?,
        account_id: opt_uuid(row, "account_id")?,
        occurred_at: time(row, "occurred_at")?,
        actor_id: opt_uuid(row, "actor_id")?,
        token_id: opt_uuid(row, "token_id")?,
        source_ip: opt_text(row, "source_ip")?,
        action: text(row, "action")?,
        object_type: text(row, "object_type")?,
        object_id: opt_uuid(row, "object_id")?,
        before: parse("before_state")?,
        after: parse("after_state")?,
    })
}
