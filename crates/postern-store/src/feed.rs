//! The change feed between portal nodes that share one PostgreSQL database.
//!
//! Why this shape: every change's events are written to `change_events` **in the change's own
//! transaction**, with a `pg_notify` that carries only the event's id. PostgreSQL delivers a
//! notification only if its transaction commits, and delivers notifications in commit order,
//! so a listening node hears of exactly the committed changes, in order, whatever their size
//! (the 8 000-byte payload limit never applies to an id). Notifications are not stored: a node
//! whose listening connection is lost misses those sent meanwhile, so when the listener comes
//! back (it is re-established before the loss is reported) the node reads the events of the
//! gap back from the table, and only if that is impossible (a gap longer than the table keeps
//! them, or the read fails) tells its sessions to resync. PostgreSQL is the engine we already
//! depend on; it needs no other broker for this.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postern_domain::ChangeEvent;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use uuid::Uuid;

use crate::db::{self, from_ts, ts, WriteTx};
use crate::{Backend, Result, Store, StoreError};

pub(crate) const CHANNEL: &str = "postern_changes";
/// How long events stay in `change_events`: a listener away longer than this resyncs.
const RETENTION: chrono::Duration = chrono::Duration::hours(1);
/// How far before the last event seen a catch-up reads: covers clocks of other nodes that are
/// a little behind, and transactions that took a while between writing and committing.
const CATCH_UP_MARGIN: chrono::Duration = chrono::Duration::seconds(60);
/// Event ids remembered, to apply each event once when a catch-up overlaps live ones.
const SEEN: usize = 100_000;
/// How often a node announces itself on the channel (and so hears itself: the connection is
/// alive up to then), and how long without a word it waits before taking the connection for
/// dead and reconnecting.
const PING: Duration = Duration::from_secs(30);
const SILENCE: Duration = Duration::from_secs(90);

/// A notification's payload stays below PostgreSQL's 8 000-byte limit: a larger event is
/// announced by its id alone and read from the table.
const INLINE_LIMIT: usize = 7_000;

/// What a notification carries: the id of a committed event (and the event itself when it is
/// small: the listener need not read it back), or (`id: None`) a node's ping.
#[derive(Serialize, Deserialize)]
struct Announcement {
    node: Uuid,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<ChangeEvent>,
    /// When the event was written (microseconds since the epoch), for the lag metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
}

/// Records how long another node's change took to be applied here.
fn observe_lag(written_at: DateTime<Utc>) {
    let lag = (Utc::now() - written_at)
        .num_microseconds()
        .unwrap_or(0)
        .max(0);
    metrics::histogram!(postern_metrics::CHANGE_EVENT_LAG).record(lag as f64 / 1e6);
}

impl Store {
    /// Commits a change and makes its events take effect: on PostgreSQL they are written to
    /// the feed and announced in the same transaction; then this node applies them.
    pub(crate) async fn commit_publishing(
        &self,
        mut tx: WriteTx,
        events: Vec<ChangeEvent>,
    ) -> Result<()> {
        for event in &events {
            if let ChangeEvent::TokensRevoked {
                account_id,
                token_ids,
            } = event
            {
                // A revocation deletes its grants in its own transaction: no node can restore
                // them, even one that had not loaded the account when it was made.
                crate::authorizations::delete_by_tokens(&mut tx, *account_id, token_ids).await?;
                // Nor is a revoked token's successor handed out, or a revoked successor.
                crate::tokens::forget_successors(&mut tx, *account_id, token_ids).await?;
            }
        }
        // In a task of its own: a request cancelled while its change commits (a client that
        // hung up) still has the change take effect here once it is committed.
        let store = self.clone();
        let finish = tokio::spawn(async move {
            store.feed(tx, &events).await?;
            store.publish(events);
            Ok(())
        });
        finish.await.map_err(|err| {
            StoreError::Corrupt(format!("a change's commit stopped unexpectedly: {err}"))
        })?
    }

    /// Commits a change whose events are for the other portal nodes only: this node's own
    /// session core made it and knows.
    pub(crate) async fn commit_announcing(
        &self,
        tx: WriteTx,
        events: Vec<ChangeEvent>,
    ) -> Result<()> {
        self.feed(tx, &events).await
    }

    /// Writes and announces the events in the transaction (PostgreSQL), then commits it.
    async fn feed(&self, mut tx: WriteTx, events: &[ChangeEvent]) -> Result<()> {
        if self.inner.backend == Backend::Postgres {
            let now = ts(Utc::now());
            for event in events {
                let id = Uuid::now_v7();
                let event = &self.seal_event(event)?;
                let body = db::to_json(event)?;
                sqlx::query(
                    "INSERT INTO change_events (id, account_id, node_id, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id.to_string())
                .bind(event.account_id().to_string())
                .bind(self.inner.node_id.to_string())
                .bind(&body)
                .bind(now)
                .execute(&mut *tx.tx)
                .await?;
                let inline = body.len() < INLINE_LIMIT;
                let announcement = Announcement {
                    node: self.inner.node_id,
                    id: Some(id),
                    event: inline.then(|| event.clone()),
                    at: Some(now),
                };
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(db::to_json(&announcement)?)
                    .execute(&mut *tx.tx)
                    .await?;
            }
        }
        tx.commit().await
    }

    /// Listens for other nodes' changes (PostgreSQL only; `None` on SQLite, where one process
    /// owns the database), catches up after a lost connection, and deletes events older than
    /// the retention now and then.
    pub fn spawn_change_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.inner.database_url.clone()?;
        let weak = std::sync::Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            let mut follower = Follower::default();
            let mut first = true;
            loop {
                let mut listener = match connect(&url).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for other portal nodes' changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if first {
                    follower.alive_at = Some(Utc::now());
                } else {
                    let Some(inner) = weak.upgrade() else { return };
                    follower.catch_up(&Store { inner }).await;
                }
                first = false;
                let mut cleaned = tokio::time::Instant::now();
                let mut pinged = tokio::time::Instant::now() - PING;
                loop {
                    if pinged.elapsed() >= PING {
                        pinged = tokio::time::Instant::now();
                        let Some(inner) = weak.upgrade() else { return };
                        Store { inner }.ping().await;
                    }
                    let received = tokio::time::timeout(SILENCE, listener.try_recv()).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let store = Store { inner };
                    match received {
                        Ok(Ok(Some(notification))) => {
                            follower.announced(&store, notification.payload()).await
                        }
                        Ok(Ok(None)) => {
                            tracing::warn!("the connection to other portal nodes' changes was lost; catching up");
                            follower.catch_up(&store).await;
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "lost the change feed from other portal nodes; reconnecting");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("no word on the change feed for {} s (not even this node's own ping); reconnecting", SILENCE.as_secs());
                            break;
                        }
                    }
                    if cleaned.elapsed() >= Duration::from_secs(60) {
                        cleaned = tokio::time::Instant::now();
                        if let Err(err) = store.delete_old_events(Utc::now() - RETENTION).await {
                            tracing::debug!(error = %err, "could not delete old change events");
                        }
                    }
                }
            }
        }))
    }

    /// Announces this node on the channel; hearing it back proves the listener is connected.
    async fn ping(&self) {
        let announcement = Announcement {
            node: self.inner.node_id,
            id: None,
            event: None,
            at: None,
        };
        let Ok(payload) = db::to_json(&announcement) else {
            return;
        };
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(self.pool())
            .await
        {
            tracing::debug!(error = %err, "could not ping the change feed");
        }
    }

    async fn delete_old_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM change_events WHERE created_at < $1")
            .bind(ts(before))
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Applies a change another node made.
    fn apply_remote(&self, event: ChangeEvent) {
        let event = match self.open_event(event) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a change event that cannot be opened");
                self.report_gap();
                return;
            }
        };
        self.inner.tokens.apply(&event);
        let _ = self.inner.events.send(event);
    }

    /// Tells subscribers that changes were missed beyond recovery, after dropping every cached
    /// token record: they must check what they hold against the database.
    pub(crate) fn report_gap(&self) {
        self.inner.tokens.clear();
        self.inner.gaps.send_modify(|gaps| *gaps += 1);
    }
}

/// What the listener has applied, to apply each event of the feed once and to know where to
/// catch up from.
#[derive(Default)]
struct Follower {
    seen: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    /// The latest `created_at` of an event applied.
    last_at: Option<DateTime<Utc>>,
    /// The latest instant the listening connection was surely alive (it heard something).
    alive_at: Option<DateTime<Utc>>,
}

impl Follower {
    fn remember(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// A notification: read the event it announces and apply it.
    async fn announced(&mut self, store: &Store, payload: &str) {
        let Ok(announcement) = serde_json::from_str::<Announcement>(payload) else {
            tracing::warn!("ignoring a malformed change notification");
            return;
        };
        self.alive_at = Some(Utc::now());
        let Some(id) = announcement.id else { return };
        if announcement.node == store.inner.node_id || !self.remember(id) {
            return;
        }
        if let Some(event) = announcement.event {
            if let Some(at) = announcement.at.and_then(|at| from_ts(at).ok()) {
                observe_lag(at);
            }
            store.apply_remote(event);
            return;
        }
        let row = sqlx::query("SELECT body, created_at FROM change_events WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(store.pool())
            .await;
        match row {
            Ok(Some(row)) => self.apply_row(store, &row),
            Ok(None) => {
                tracing::warn!(%id, "an announced change is not in the feed; resynchronising");
                store.report_gap();
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read an announced change; resynchronising");
                store.report_gap();
            }
        }
    }

    fn apply_row(&mut self, store: &Store, row: &sqlx::any::AnyRow) {
        let event = db::json::<ChangeEvent>(row, "body");
        let at = db::time(row, "created_at");
        match (event, at) {
            (Ok(event), Ok(at)) => {
                self.last_at = Some(self.last_at.map_or(at, |last| last.max(at)));
                observe_lag(at);
                store.apply_remote(event);
            }
            _ => tracing::warn!("ignoring a change event that cannot be read"),
        }
    }

    /// After a gap: applies what other nodes committed since shortly before the last event seen;
    /// if that reaches back further than the feed keeps, or fails, the node resyncs.
    async fn catch_up(&mut self, store: &Store) {
        let now = Utc::now();
        let known = match (self.last_at, self.alive_at) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        let since = known - CATCH_UP_MARGIN;
        if now - since > RETENTION {
            tracing::warn!(
                "the change feed was out of reach longer than it keeps events; resynchronising"
            );
            store.report_gap();
            return;
        }
        let rows = sqlx::query(
            "SELECT id, node_id, body, created_at FROM change_events \
             WHERE created_at >= $1 ORDER BY created_at, id",
        )
        .bind(ts(since))
        .fetch_all(store.pool())
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "cannot catch up with the change feed; resynchronising");
                store.report_gap();
                return;
            }
        };
        // Nothing cached may predate what is about to be applied.
        store.inner.tokens.clear();
        let mut applied = 0usize;
        for row in &rows {
            let (Ok(id), Ok(node)) = (db::uuid(row, "id"), db::uuid(row, "node_id")) else {
                continue;
            };
            if node == store.inner.node_id || !self.remember(id) {
                continue;
            }
            self.apply_row(store, row);
            applied += 1;
        }
        self.alive_at = Some(now);
        tracing::info!(applied, "caught up with the change feed");
    }
}

async fn connect(url: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("postern-change-listener");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
