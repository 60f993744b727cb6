//! Postern storage: one schema on embedded SQLite or on PostgreSQL, through sqlx's `Any` driver.
//!
//! Every query is scoped to one account. Every change is written in one transaction together with
//! its audit event, and emits [`ChangeEvent`]s after the commit. Token checks run against an
//! in-memory cache of token records, so the hot path makes no database round trip; last-use
//! bookkeeping is buffered and flushed in batches.

mod accounts;
pub use accounts::DEFAULT_ACCOUNT_SLUG;
mod actors;
mod audit;
mod auth;
mod authorizations;
mod cluster;
mod db;
mod devices;
mod feed;
mod groups;
mod identity_providers;
mod policies;
mod presented;
mod resources;
mod scim;
mod sealed;
mod sites;
mod token_cache;
mod tokens;
mod web_sessions;
mod webhooks;
mod workload_identities;

use std::path::Path;
use std::sync::Arc;

use postern_domain::{ChangeEvent, ValidationError};
use postern_token::HashKey;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use tokio::sync::broadcast;

pub use actors::{ActorFilter, ActorPatch, NewActor};
pub use audit::{AuditFilter, UNATTRIBUTED_BUCKETS, UNATTRIBUTED_RETENTION_DAYS};
pub use auth::{AuthError, Principal, TokenUse};
pub use authorizations::{
    AuthorizationWrites, LoadedAuthorization, StoredAuthorization, TokenState,
};
pub use cluster::{PresenceCount, RemoteGateway, NODE_TIMEOUT};
pub use devices::{AccessData, BlockedDevice, DeviceClaim, DeviceFilter};
pub use groups::MembershipChange;
pub use identity_providers::PendingSignIn;
pub use policies::{NewPolicy, PolicyPatch};
pub use presented::{PresentedToken, RevocationCause};
pub use resources::{NewResource, ResourcePatch};
pub use scim::{
    DirectoryChange, DirectoryGroup, DirectoryGroupChange, DirectoryPerson, DirectoryUser,
    PersonFilter, SCIM_TOKEN_PREFIX,
};
pub use tokens::{
    CreatedToken, HeldToken, NewTokenRequest, RotatedToken, TokenFilter, TokenHolder, TokenPatch,
    TokenSuccessor,
};
pub use web_sessions::{ProviderSession, WebSession};
pub use webhooks::{DeliveryOutcome, DueDelivery, NewWebhook, WebhookPatch};
pub use workload_identities::{ExchangedToken, RuleScope, MAX_RULES_CONSIDERED};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    /// A foreign-key violation means an object that was checked to exist was deleted by a
    /// concurrent change before this one committed: a conflict, not a broken database.
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_foreign_key_violation() {
                return StoreError::Conflict(
                    "an object this change refers to was deleted at the same time; nothing was \
                     changed"
                        .to_string(),
                );
            }
        }
        StoreError::Database(err)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A page request: at most `limit` items after `cursor` (an id returned as `next_cursor`).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: u32,
    pub cursor: Option<uuid::Uuid>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            cursor: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<uuid::Uuid>,
}

/// The storage handle: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    hash_key: HashKey,
    /// SQLite allows one writer: write transactions queue here instead of failing with SQLITE_BUSY.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    tokens: token_cache::TokenCache,
    events: broadcast::Sender<ChangeEvent>,
    /// Set for PostgreSQL: where to LISTEN for other nodes' changes.
    database_url: Option<String>,
    /// Tells this node's notifications from the others'.
    node_id: uuid::Uuid,
    /// Raised when changes from other nodes were missed beyond recovery (`Store::gaps`).
    gaps: tokio::sync::watch::Sender<u64>,
    /// Other portal nodes found gone (`Store::nodes_gone`).
    nodes_gone: broadcast::Sender<uuid::Uuid>,
    /// Device sightings not yet written, by (account, kind, device id).
    devices: parking_lot::Mutex<
        std::collections::HashMap<
            (uuid::Uuid, postern_domain::DeviceKind, String),
            postern_domain::Device,
        >,
    >,
    /// Failed authentications that belong to no account, until they are written.
    unattributed: parking_lot::Mutex<audit::UnattributedFailures>,
    /// Seals the preshared keys in authorization documents at rest and in the feed.
    sealer: sealed::Sealer,
}

/// How often failed authentications that belong to no account are written, aggregated.
const FAILED_AUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) the SQLite database `postern.db` in `data_dir`. The directory
    /// is made private (0700) and the database file 0600 (SQLite gives its WAL and shared-memory
    /// files the database file's mode): they hold token hashes and the hashing key.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        let cannot = |what: &str, err: std::io::Error| {
            StoreError::Corrupt(format!("cannot {what} {}: {err}", data_dir.display()))
        };
        std::fs::create_dir_all(data_dir).map_err(|err| cannot("create data directory", err))?;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| cannot("make private the data directory", err))?;
        let path = data_dir.join("postern.db");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|err| cannot("create the database in", err))?;
        for file in ["postern.db", "postern.db-wal", "postern.db-shm"] {
            let file = data_dir.join(file);
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|err| cannot("make private the database files in", err))?;
            }
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Validation(ValidationError::new(
                "database_url",
                "must start with sqlite:// or postgres://",
            )));
        };
        let mut options = AnyPoolOptions::new();
        if backend == Backend::Sqlite {
            options = options.max_connections(8).after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; \
                             PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(url).await?;
        MIGRATOR.run(&pool).await?;
        let hash_key = db::load_or_create_hash_key(&pool).await?;
        let (events, _) = broadcast::channel(65_536);
        let sealer = sealed::Sealer::new(&hash_key.to_hex());
        Ok(Self {
            inner: Arc::new(Inner {
                sealer,
                pool,
                write_lock: (backend == Backend::Sqlite)
                    .then(|| Arc::new(tokio::sync::Mutex::new(()))),
                backend,
                hash_key,
                tokens: token_cache::TokenCache::default(),
                events,
                database_url: (backend == Backend::Postgres).then(|| url.to_string()),
                node_id: uuid::Uuid::new_v4(),
                gaps: tokio::sync::watch::Sender::new(0),
                nodes_gone: broadcast::channel(1024).0,
                devices: Default::default(),
                unattributed: Default::default(),
            }),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Change events, in commit order: this process's writes and (PostgreSQL) the other
    /// nodes'.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.inner.events.subscribe()
    }

    /// Counts the times changes of other nodes were missed beyond recovery: whoever holds state
    /// derived from changes must then check it against the database.
    pub fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.gaps.subscribe()
    }

    /// Writes buffered token-use records (last used time, IP, user agent) and device sightings
    /// to the database.
    pub async fn flush_token_usage(&self) -> Result<usize> {
        Ok(tokens::flush_usage(self).await? + self.flush_devices().await?)
    }

    /// Flushes token usage every `period`, and failed authentications that belong to no account
    /// once a minute, until the store is dropped.
    pub fn spawn_usage_flusher(&self, period: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            let mut failures_written = std::time::Instant::now();
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                if let Err(err) = store.flush_token_usage().await {
                    tracing::warn!(error = %err, "could not record token usage");
                }
                if failures_written.elapsed() >= FAILED_AUTH_WINDOW {
                    failures_written = std::time::Instant::now();
                    if let Err(err) = store.flush_failed_authentications().await {
                        tracing::warn!(error = %err, "could not record failed authentications");
                    }
                }
            }
        })
    }

    pub async fn close(&self) {
        if let Err(err) = self.flush_token_usage().await {
            tracing::warn!(error = %err, "could not record token usage on shutdown");
        }
        if let Err(err) = self.flush_failed_authentications().await {
            tracing::warn!(error = %err, "could not record failed authentications on shutdown");
        }
        self.leave_cluster().await;
        self.inner.pool.close().await;
    }

    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// The database pool's connections: `(open, idle)`.
    pub fn pool_connections(&self) -> (u32, usize) {
        (self.inner.pool.size(), self.inner.pool.num_idle())
    }

    /// Makes committed changes take effect in this process: stale token records are dropped at
    /// once and subscribers hear of them (other nodes heard through the feed at commit).
    fn publish(&self, events: Vec<ChangeEvent>) {
        for event in &events {
            self.inner.tokens.apply(event);
        }
        for event in events {
            // No subscriber is fine: nothing is connected that needs to hear about it.
            let _ = self.inner.events.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A service account `runner`, with its first token if `with_token`.
    async fn service_account(
        store: &Store,
        account_id: uuid::Uuid,
        with_token: bool,
    ) -> (postern_domain::Actor, Option<tokens::CreatedToken>) {
        store
            .create_actor(
                account_id,
                actors::NewActor {
                    actor_type: postern_domain::ActorType::ServiceAccount,
                    name: "runner".into(),
                    email: None,
                    password_hash: None,
                    group_ids: Vec::new(),
                    token: with_token.then_some(tokens::NewTokenRequest {
                        name: None,
                        expires_at: None,
                        guardrails: Default::default(),
                        rotated_from: None,
                        workload_identity_id: None,
                    }),
                },
                &postern_domain::Acting::local_cli(),
            )
            .await
            .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    #[test]
    fn secrets_are_never_in_debug_output() {
        let session = WebSession {
            id_hash: "hash".into(),
            account_id: uuid::Uuid::nil(),
            actor_id: uuid::Uuid::nil(),
            csrf_token: "csrf-7f3a9c".into(),
            created_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
            source_ip: None,
            user_agent: None,
            identity_provider_id: None,
        };
        let shown = format!("{session:?}");
        assert!(!shown.contains("csrf-7f3a9c"), "{shown}");
        let created = tokens::CreatedToken {
            token: postern_domain::Token {
                id: uuid::Uuid::nil(),
                account_id: uuid::Uuid::nil(),
                kind: postern_token::TokenKind::Client,
                actor_id: None,
                site_id: None,
                name: "t".into(),
                created_by: None,
                created_at: chrono::Utc::now(),
                expires_at: chrono::Utc::now(),
                revoked_at: None,
                revoked_by: None,
                last_used_at: None,
                last_used_ip: None,
                last_used_user_agent: None,
                guardrails: Default::default(),
                rotated_from: None,
                successor_id: None,
                rotated_at: None,
                workload_identity_id: None,
            },
            secret: postern_token::SecretString::from("postern_client_s3cr3t".to_string()),
        };
        let shown = format!("{created:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    /// A flush that fails (here: the tables are away for a moment) keeps what it could not
    /// write, and the next flush writes it.
    #[tokio::test]
    async fn a_failed_flush_keeps_the_buffered_records_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let (account, _) = store.ensure_default_account().await.unwrap();
        let (actor, created) = service_account(&store, account.id, true).await;
        let token_id = created.expect("a token").token.id;
        let now = chrono::Utc::now();
        let device = postern_domain::Device {
            id: uuid::Uuid::now_v7(),
            account_id: account.id,
            kind: postern_domain::DeviceKind::Client,
            device_id: "runner-1".into(),
            actor_id: Some(actor.id),
            site_id: None,
            token_id: Some(token_id),
            name: "runner-1".into(),
            version: None,
            public_key: None,
            ipv4: "100.64.0.9".parse().unwrap(),
            ipv6: "fd70:6f73:7465:726e::6440:9".parse().unwrap(),
            last_seen_ip: None,
            last_seen_at: now,
            created_at: now,
            approved_at: Some(now),
            ephemeral: false,
        };
        store
            .claim_devices(std::slice::from_ref(&device))
            .await
            .unwrap();
        store.inner.tokens.record_use(
            token_id,
            token_cache::PendingUse {
                at: now,
                ip: Some("198.51.100.7".into()),
                user_agent: None,
                actor_id: Some(actor.id),
            },
        );
        store.record_device(postern_domain::Device {
            last_seen_ip: Some("198.51.100.7".into()),
            ..device
        });
        for (from, to) in [("tokens", "tokens_away"), ("devices", "devices_away")] {
            sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert!(store.flush_token_usage().await.is_err());
        assert!(store.flush_devices().await.is_err());
        for (from, to) in [("tokens_away", "tokens"), ("devices_away", "devices")] {
            sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert_eq!(store.flush_token_usage().await.unwrap(), 2);
        for table in ["tokens", "devices"] {
            let ip: Option<String> = sqlx::query_scalar(&format!(
                "SELECT last_seen_ip FROM (SELECT last_used_ip AS last_seen_ip, id FROM tokens \
                 UNION ALL SELECT last_seen_ip, id FROM devices) WHERE last_seen_ip IS NOT NULL \
                 AND id IN (SELECT id FROM {table})"
            ))
            .fetch_optional(store.pool())
            .await
            .unwrap();
            assert_eq!(ip.as_deref(), Some("198.51.100.7"), "{table}");
        }
        store.close().await;
    }

    /// A flood of bad tokens from the internet costs counters, then one row per address and
    /// reason; the number of rows stays bounded however many addresses there are, nothing is
    /// lost when a write fails, and old rows go.
    #[tokio::test]
    async fn failures_that_belong_to_no_account_are_aggregated_bounded_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let rows = || async {
            let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT source_ip, after_state FROM audit_events WHERE account_id IS NULL",
            )
            .fetch_all(store.pool())
            .await
            .unwrap();
            rows
        };
        for n in 0..3000 {
            let ip = format!("198.51.100.{}", n % 3);
            let reason = if n % 2 == 0 { "malformed" } else { "unknown" };
            store
                .record_failed_auth(None, None, Some(ip), reason)
                .await
                .unwrap();
        }
        assert!(rows().await.is_empty(), "nothing written per failure");
        sqlx::query("ALTER TABLE audit_events RENAME TO audit_away")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(store.flush_failed_authentications().await.is_err());
        sqlx::query("ALTER TABLE audit_away RENAME TO audit_events")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(store.flush_failed_authentications().await.unwrap(), 6);
        let written = rows().await;
        let total: u64 = written
            .iter()
            .map(|(_, after)| {
                let after: serde_json::Value =
                    serde_json::from_str(after.as_deref().unwrap()).unwrap();
                after["count"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(total, 3000, "every failure is counted once: {written:?}");

        for n in 0..(audit::UNATTRIBUTED_BUCKETS + 500) {
            let ip = format!("2001:db8:{:x}:{:x}::1", n / 65536, n % 65536);
            store
                .record_failed_auth(None, None, Some(ip), "unknown")
                .await
                .unwrap();
        }
        let flushed = store.flush_failed_authentications().await.unwrap();
        assert_eq!(
            flushed,
            audit::UNATTRIBUTED_BUCKETS + 1,
            "the rest under no address"
        );

        let old =
            chrono::Utc::now() - chrono::Duration::days(audit::UNATTRIBUTED_RETENTION_DAYS + 1);
        sqlx::query("UPDATE audit_events SET occurred_at = $1 WHERE account_id IS NULL")
            .bind(db::ts(old))
            .execute(store.pool())
            .await
            .unwrap();
        store
            .record_failed_auth(None, None, Some("203.0.113.1".into()), "malformed")
            .await
            .unwrap();
        assert_eq!(store.flush_failed_authentications().await.unwrap(), 1);
        assert_eq!(rows().await.len(), 1, "rows past the retention are deleted");
        store.close().await;
    }

    /// A revocation whose request is dropped at any moment either did not happen or takes
    /// effect here: its event is published once it is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_cancelled_after_commit_is_still_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let (account, _) = store.ensure_default_account().await.unwrap();
        let (actor, _) = service_account(&store, account.id, false).await;
        let holder = tokens::TokenHolder::Actor(actor.id);
        let acting = postern_domain::Acting::local_cli();
        let mut events = store.subscribe();
        for step in 0..200u64 {
            let created = store
                .create_token(
                    account.id,
                    holder,
                    tokens::NewTokenRequest {
                        name: None,
                        expires_at: None,
                        guardrails: Default::default(),
                        rotated_from: None,
                        workload_identity_id: None,
                    },
                    &acting,
                )
                .await
                .unwrap();
            let token_id = created.token.id;
            let cut = std::time::Duration::from_micros(step * 25);
            let _ = tokio::time::timeout(
                cut,
                store.revoke_token(account.id, holder, token_id, &acting),
            )
            .await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let revoked = store
                .get_token(account.id, holder, token_id)
                .await
                .unwrap()
                .revoked_at
                .is_some();
            let mut heard = false;
            while let Ok(event) = events.try_recv() {
                if let ChangeEvent::TokensRevoked { token_ids, .. } = event {
                    heard |= token_ids.contains(&token_id);
                }
            }
            assert_eq!(
                heard, revoked,
                "step {step}: revoked in the database {revoked}, event published {heard}"
            );
        }
        store.close().await;
    }

    /// Acknowledged changes survive a power loss (every commit reaches the disk), and the files
    /// that hold token hashes and the hashing key are readable by the portal's user only, also
    /// when they existed before with a looser mode.
    #[tokio::test]
    async fn the_sqlite_files_are_private_and_every_commit_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(data.join("postern.db"), b"").unwrap();
        std::fs::set_permissions(
            data.join("postern.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let store = Store::open_sqlite(&data).await.unwrap();
        store.ensure_default_account().await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "PRAGMA synchronous = FULL");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(mode(&data), 0o700);
        for file in ["postern.db", "postern.db-wal", "postern.db-shm"] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
        store.close().await;
    }
}
