//! The audit log: written inside the transaction of the change it records.

use chrono::{DateTime, Utc};
use postern_domain::{new_id, Acting, AuditEvent};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::db::{self, opt_text, opt_uuid, text, time, ts};
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

pub(crate) async fn record(conn: &mut AnyConnection, entry: Entry<'_>) -> Result<()> {
    let before = entry.before.as_ref().map(db::to_json).transpose()?;
    let after = entry.after.as_ref().map(db::to_json).transpose()?;
    sqlx::query(
        "INSERT INTO audit_events (id, account_id, occurred_at, actor_id, token_id, source_ip, \
         action, object_type, object_id, before_state, after_state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(new_id().to_string())
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
    .execute(conn)
    .await?;
    Ok(())
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
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = match value {
                BindValue::Text(text) => query.bind(text),
                BindValue::Int(int) => query.bind(int),
            };
        }
        let rows = query.fetch_all(self.pool()).await?;
        let items = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |e| e.id))
    }

    /// Records a failed authentication. `account_id` is known when the token's id matched a
    /// stored token; otherwise the event belongs to no account.
    pub async fn record_failed_auth(
        &self,
        account_id: Option<Uuid>,
        token_id: Option<Uuid>,
        source_ip: Option<String>,
        reason: &str,
    ) -> Result<()> {
        let acting = Acting {
            actor_id: None,
            token_id,
            source_ip,
        };
        let mut tx = self.begin_write().await?;
        record(
            &mut tx.tx,
            Entry {
                account_id,
                acting: &acting,
                action: "auth.failed",
                object_type: "token",
                object_id: token_id,
                before: None,
                after: Some(serde_json::json!({ "reason": reason })),
                now: Utc::now(),
            },
        )
        .await?;
        tx.commit().await
    }
}

enum BindValue {
    Text(String),
    Int(i64),
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
