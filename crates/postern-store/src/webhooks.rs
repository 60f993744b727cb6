//! Webhooks and their deliveries. A delivery is written in the transaction of the audited
//! change it reports ([`enqueue`], called by `audit::record`), so a committed change always has
//! its deliveries and a rolled-back one never does. Sending is the portal's delivery loop: it
//! claims due deliveries for a lease ([`Store::claim_due_deliveries`]), so with several nodes
//! each delivery is sent by one node at a time, and records each outcome
//! ([`Store::finish_delivery`]).

use chrono::{DateTime, Duration, Utc};
use postern_domain::webhooks::{
    self, DeliveryState, Webhook, WebhookDelivery, WebhookEvent, EXPIRY_NOTICE_DAYS,
    MAX_WEBHOOKS_PER_ACCOUNT,
};
use postern_domain::{new_id, validate, Acting, ValidationError};
use rand::RngCore;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, text, time, ts};
use crate::{Page, Paged, Result, Store, StoreError};

/// What a new webhook is.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: String,
    pub description: Option<String>,
    pub events: Vec<String>,
}

/// What [`Store::update_webhook`] changes; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    /// `Some(None)` removes the description.
    pub description: Option<Option<String>>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// A delivery this node claimed and now sends.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: Uuid,
    pub account_id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: WebhookEvent,
    pub url: String,
    /// The webhook's signing secret.
    pub secret: String,
    pub payload: String,
    /// Tries before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// How a try ended.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// It answered otherwise, or not at all (`status: None`).
    Failed { status: Option<u16>, error: String },
}

/// The prefix of every webhook secret.
const SECRET_PREFIX: &str = "whsec_";

fn aad(webhook_id: Uuid) -> Vec<u8> {
    let mut aad = b"webhook secret:".to_vec();
    aad.extend_from_slice(webhook_id.as_bytes());
    aad
}

fn events_json(events: &[WebhookEvent]) -> Result<String> {
    db::to_json(&events)
}

impl Store {
    /// Creates a webhook with a fresh signing secret; returns it and the secret (shown once).
    /// Audited as `webhook.create`.
    pub async fn create_webhook(
        &self,
        account_id: Uuid,
        new: NewWebhook,
        acting: &Acting,
    ) -> Result<(Webhook, String)> {
        let url = webhooks::validate_url("url", &new.url)?;
        let events = webhooks::validate_events("events", &new.events)?;
        let description = validate::description("description", new.description.as_deref())?;
        let now = Utc::now();
        let webhook = Webhook {
            id: new_id(),
            account_id,
            url: url.to_string(),
            description,
            events,
            enabled: true,
            created_at: now,
            updated_at: now,
        };
        let mut secret_bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
        let secret = format!("{SECRET_PREFIX}{}", hex::encode(secret_bytes));
        let sealed = self.inner.sealer.seal_text(&aad(webhook.id), &secret)?;
        let mut tx = self.begin_write().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_one(&mut *tx.tx)
            .await?;
        if count as usize >= MAX_WEBHOOKS_PER_ACCOUNT {
            return Err(StoreError::Validation(ValidationError::new(
                "url",
                format!("an account has at most {MAX_WEBHOOKS_PER_ACCOUNT} webhooks"),
            )));
        }
        sqlx::query(
            "INSERT INTO webhooks (id, account_id, url, description, events, secret_sealed, \
             enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)",
        )
        .bind(webhook.id.to_string())
        .bind(account_id.to_string())
        .bind(webhook.url.clone())
        .bind(webhook.description.clone())
        .bind(events_json(&webhook.events)?)
        .bind(sealed)
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "webhook.create",
                object_type: "webhook",
                object_id: Some(webhook.id),
                before: None,
                after: snapshot(&webhook),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok((webhook, secret))
    }

    pub async fn list_webhooks(&self, account_id: Uuid) -> Result<Vec<Webhook>> {
        let rows = sqlx::query("SELECT * FROM webhooks WHERE account_id = $1 ORDER BY id")
            .bind(account_id.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    pub async fn get_webhook(&self, account_id: Uuid, webhook_id: Uuid) -> Result<Webhook> {
        db::get_in_account(
            self,
            "webhooks",
            account_id,
            webhook_id,
            "webhook",
            webhook_from_row,
        )
        .await
    }

    /// Changes a webhook's URL, description, events or whether it is enabled. Audited as
    /// `webhook.update`.
    pub async fn update_webhook(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        patch: WebhookPatch,
        acting: &Acting,
    ) -> Result<Webhook> {
        let before = self.get_webhook(account_id, webhook_id).await?;
        let mut after = before.clone();
        if let Some(url) = patch.url {
            after.url = webhooks::validate_url("url", &url)?.to_string();
        }
        if let Some(description) = patch.description {
            after.description = validate::description("description", description.as_deref())?;
        }
        if let Some(events) = patch.events {
            after.events = webhooks::validate_events("events", &events)?;
        }
        if let Some(enabled) = patch.enabled {
            after.enabled = enabled;
        }
        let now = Utc::now();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE webhooks SET url = $1, description = $2, events = $3, enabled = $4, \
             updated_at = $5 WHERE account_id = $6 AND id = $7",
        )
        .bind(after.url.clone())
        .bind(after.description.clone())
        .bind(events_json(&after.events)?)
        .bind(i64::from(after.enabled))
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(webhook_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "webhook.update",
                object_type: "webhook",
                object_id: Some(webhook_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Deletes a webhook and its deliveries, sent or not. Audited as `webhook.delete`.
    pub async fn delete_webhook(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_webhook(account_id, webhook_id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE account_id = $1 AND webhook_id = $2")
            .bind(account_id.to_string())
            .bind(webhook_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM webhooks WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(webhook_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "webhook.delete",
                object_type: "webhook",
                object_id: Some(webhook_id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        tx.commit().await
    }

    /// A webhook's deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        page: Page,
    ) -> Result<Paged<WebhookDelivery>> {
        self.get_webhook(account_id, webhook_id).await?;
        let mut sql = String::from(
            "SELECT * FROM webhook_deliveries WHERE account_id = $1 AND webhook_id = $2",
        );
        if page.cursor.is_some() {
            sql.push_str(" AND id < $3");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", page.limit + 1));
        let mut query = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(webhook_id.to_string());
        if let Some(cursor) = page.cursor {
            query = query.bind(cursor.to_string());
        }
        let rows = query.fetch_all(self.pool()).await?;
        let items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |d| d.id))
    }

    /// Queues a `webhook.test` event for one webhook (enabled or not). Audited as
    /// `webhook.test`.
    pub async fn send_test_event(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        acting: &Acting,
    ) -> Result<WebhookDelivery> {
        let webhook = self.get_webhook(account_id, webhook_id).await?;
        let now = Utc::now();
        let event_id = new_id();
        let payload = event_payload(
            event_id,
            WebhookEvent::WebhookTest,
            account_id,
            now,
            serde_json::json!({ "webhook_id": webhook.id, "url": webhook.url }),
        );
        let mut tx = self.begin_write().await?;
        let delivery_id = insert_delivery(
            &mut tx.tx,
            account_id,
            webhook.id,
            event_id,
            WebhookEvent::WebhookTest,
            &payload,
            now,
        )
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "webhook.test",
                object_type: "webhook",
                object_id: Some(webhook.id),
                before: None,
                after: Some(serde_json::json!({ "delivery_id": delivery_id })),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE id = $1")
            .bind(delivery_id.to_string())
            .fetch_one(self.pool())
            .await?;
        delivery_from_row(&row)
    }

    /// Claims up to `limit` deliveries that are due at `now` and that no node holds, for
    /// `lease`: another node takes them only once the lease ran out (this node stopped
    /// mid-send). Returns them with their webhooks' URLs and secrets.
    pub async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<DueDelivery>> {
        let until = ts(now + lease);
        // Read first, outside a write transaction: most seconds nothing is due, and SQLite's
        // one writer should not be taken for nothing.
        let candidates: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND d.next_attempt_at <= $1 \
             AND (d.claimed_until IS NULL OR d.claimed_until < $1) AND w.enabled = 1 \
             ORDER BY d.next_attempt_at LIMIT {limit}"
        ))
        .bind(ts(now))
        .fetch_all(self.pool())
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut claimed = Vec::new();
        for id in candidates {
            // The condition is checked again on the row itself: of two nodes that chose the
            // same delivery, the second finds it claimed and changes nothing.
            let updated = sqlx::query(
                "UPDATE webhook_deliveries SET claimed_until = $1 WHERE id = $2 \
                 AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)",
            )
            .bind(until)
            .bind(id.clone())
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
            if updated == 1 {
                claimed.push(id);
            }
        }
        let mut due = Vec::with_capacity(claimed.len());
        for id in claimed {
            let row = sqlx::query(
                "SELECT d.*, w.url, w.secret_sealed FROM webhook_deliveries d \
                 JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx.tx)
            .await?;
            let delivery = delivery_from_row(&row)?;
            let sealed = text(&row, "secret_sealed")?;
            let secret = self
                .inner
                .sealer
                .open_text(&aad(delivery.webhook_id), &sealed)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "webhook {}: its secret does not open",
                        delivery.webhook_id
                    ))
                })?;
            due.push(DueDelivery {
                id: delivery.id,
                account_id: db::uuid(&row, "account_id")?,
                webhook_id: delivery.webhook_id,
                event_type: delivery.event_type,
                url: text(&row, "url")?,
                secret,
                payload: text(&row, "payload")?,
                attempts: delivery.attempts,
                created_at: delivery.created_at,
            });
        }
        tx.commit().await?;
        Ok(due)
    }

    /// Records how a try of a claimed delivery ended: delivered, retried later on the
    /// schedule that starts at `first_retry`, or given up after a day.
    pub async fn finish_delivery(
        &self,
        delivery: &DueDelivery,
        outcome: DeliveryOutcome,
        now: DateTime<Utc>,
        first_retry: Duration,
    ) -> Result<DeliveryState> {
        let attempts = delivery.attempts.saturating_add(1);
        let (state, status, error, next) = match outcome {
            DeliveryOutcome::Delivered { status } => {
                (DeliveryState::Delivered, Some(status), None, None)
            }
            DeliveryOutcome::Failed { status, error } => {
                match webhooks::next_attempt(delivery.created_at, attempts, now, first_retry) {
                    Some(next) => (DeliveryState::Pending, status, Some(error), Some(next)),
                    None => (DeliveryState::Failed, status, Some(error), None),
                }
            }
        };
        let finished = (state != DeliveryState::Pending).then_some(ts(now));
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = $2, last_status = $3, \
             last_error = $4, next_attempt_at = $5, claimed_until = NULL, finished_at = $6 \
             WHERE id = $7",
        )
        .bind(state.as_str())
        .bind(i64::from(attempts))
        .bind(status.map(i64::from))
        .bind(error)
        .bind(next.map(ts))
        .bind(finished)
        .bind(delivery.id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(state)
    }

    /// Deletes the deliveries that ended (delivered or given up) before `before`, from every
    /// account; returns how many. The log keeps what is recent, the table stays bounded.
    pub async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let pruned = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND finished_at < $1",
        )
        .bind(ts(before))
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }

    /// Queues `token.expiring` for every live token of every account that has crossed 30, 7 or
    /// 1 days before its expiry and was not told of that yet (only the nearest threshold is
    /// sent: a token created 5 days before its expiry is told "7 days", never "30"). The
    /// notice rows make each one happen once, whichever node runs this. Returns how many
    /// tokens were noticed.
    pub async fn queue_expiry_notices(&self, now: DateTime<Utc>) -> Result<usize> {
        let Some(widest) = EXPIRY_NOTICE_DAYS.iter().max() else {
            return Ok(0);
        };
        let horizon = now + Duration::days(i64::from(*widest));
        let rows = sqlx::query(
            "SELECT t.*, (SELECT MIN(n.days_before) FROM token_expiry_notices n \
             WHERE n.token_id = t.id) AS noticed FROM tokens t \
             WHERE t.revoked_at IS NULL AND t.successor_id IS NULL \
             AND t.workload_identity_id IS NULL AND t.expires_at > $1 AND t.expires_at <= $2 \
             AND EXISTS (SELECT 1 FROM webhooks w WHERE w.account_id = t.account_id AND w.enabled = 1)",
        )
        .bind(ts(now))
        .bind(ts(horizon))
        .fetch_all(self.pool())
        .await?;
        let mut noticed = 0;
        for row in rows {
            let token = crate::tokens::token_from_row(&row)?;
            let already: Option<i64> = row.try_get("noticed")?;
            let days_left = (token.expires_at - now).num_seconds() as f64 / 86_400.0;
            let Some(threshold) = EXPIRY_NOTICE_DAYS
                .iter()
                .copied()
                .filter(|days| days_left <= f64::from(*days))
                .min()
            else {
                continue;
            };
            if already.is_some_and(|sent| sent <= i64::from(threshold)) {
                continue;
            }
            let mut tx = self.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO token_expiry_notices (token_id, days_before, sent_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(token.id.to_string())
            .bind(i64::from(threshold))
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            let event_id = new_id();
            let data = serde_json::json!({
                "days_before": threshold,
                "token": token,
            });
            enqueue(
                &mut tx.tx,
                token.account_id,
                WebhookEvent::TokenExpiring,
                event_id,
                data,
                now,
            )
            .await?;
            tx.commit().await?;
            noticed += 1;
        }
        Ok(noticed)
    }
}

/// The JSON body of an event.
fn event_payload(
    event_id: Uuid,
    event: WebhookEvent,
    account_id: Uuid,
    now: DateTime<Utc>,
    data: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "id": event_id,
        "type": event.as_str(),
        "created_at": now,
        "account_id": account_id,
        "data": data,
    })
}

/// Queues `event` for every enabled webhook of the account subscribed to it, in the caller's
/// transaction.
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    account_id: Uuid,
    event: WebhookEvent,
    event_id: Uuid,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<()> {
    let rows = sqlx::query("SELECT id, events FROM webhooks WHERE account_id = $1 AND enabled = 1")
        .bind(account_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let payload = event_payload(event_id, event, account_id, now, data);
    for row in rows {
        let events: Vec<WebhookEvent> = db::json(&row, "events")?;
        if !events.contains(&event) {
            continue;
        }
        let webhook_id = db::uuid(&row, "id")?;
        insert_delivery(conn, account_id, webhook_id, event_id, event, &payload, now).await?;
    }
    Ok(())
}

async fn insert_delivery(
    conn: &mut AnyConnection,
    account_id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    event: WebhookEvent,
    payload: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<Uuid> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, account_id, webhook_id, event_id, event_type, \
         payload, state, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(id.to_string())
    .bind(account_id.to_string())
    .bind(webhook_id.to_string())
    .bind(event_id.to_string())
    .bind(event.as_str())
    .bind(db::to_json(payload)?)
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(id)
}

fn webhook_from_row(row: &AnyRow) -> Result<Webhook> {
    let enabled: i64 = row.try_get("enabled")?;
    Ok(Webhook {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        url: text(row, "url")?,
        description: opt_text(row, "description")?,
        events: db::json(row, "events")?,
        enabled: enabled != 0,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn delivery_from_row(row: &AnyRow) -> Result<WebhookDelivery> {
    let event_text = text(row, "event_type")?;
    let state_text = text(row, "state")?;
    let attempts: i64 = row.try_get("attempts")?;
    let last_status: Option<i64> = row.try_get("last_status")?;
    let payload = text(row, "payload")?;
    Ok(WebhookDelivery {
        id: db::uuid(row, "id")?,
        webhook_id: db::uuid(row, "webhook_id")?,
        event_id: db::uuid(row, "event_id")?,
        event_type: WebhookEvent::parse(&event_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown webhook event '{event_text}'")))?,
        state: DeliveryState::parse(&state_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state '{state_text}'")))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: opt_time(row, "next_attempt_at")?,
        last_status: last_status.and_then(|status| u16::try_from(status).ok()),
        last_error: opt_text(row, "last_error")?,
        created_at: time(row, "created_at")?,
        finished_at: opt_time(row, "finished_at")?,
        payload: serde_json::from_str(&payload)
            .map_err(|err| StoreError::Corrupt(format!("a delivery's payload: {err}")))?,
    })
}
