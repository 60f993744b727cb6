//! Postern storage: one schema on embedded SQLite or on PostgreSQL, through sqlx's `Any` driver.
//!
//! Every query is scoped to one account. Every change is written in one transaction together with
//! its audit event, and emits [`ChangeEvent`]s after the commit. Token checks run against an
//! in-memory cache of token records, so the hot path makes no database round trip; last-use
//! bookkeeping is buffered and flushed in batches.

mod accounts;
mod actors;
mod audit;
mod auth;
mod authorizations;
mod cluster;
mod db;
mod devices;
mod feed;
mod groups;
mod policies;
mod resources;
mod sites;
mod token_cache;
mod tokens;
mod web_sessions;

use std::path::Path;
use std::sync::Arc;

use postern_domain::{ChangeEvent, ValidationError};
use postern_token::HashKey;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use tokio::sync::broadcast;

pub use actors::{ActorFilter, ActorPatch, NewActor};
pub use audit::AuditFilter;
pub use auth::{AuthError, Principal, TokenUse};
pub use authorizations::{
    AuthorizationWrites, LoadedAuthorization, StoredAuthorization, TokenState,
};
pub use cluster::{PresenceCount, RemoteGateway, NODE_TIMEOUT};
pub use devices::{AccessData, DeviceClaim, DeviceFilter};
pub use groups::MembershipChange;
pub use policies::{NewPolicy, PolicyPatch};
pub use resources::{NewResource, ResourcePatch};
pub use tokens::{CreatedToken, NewTokenRequest, TokenHolder};
pub use web_sessions::WebSession;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) the SQLite database `postern.db` in `data_dir`.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            StoreError::Corrupt(format!(
                "cannot create data directory {}: {err}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("postern.db");
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
                             PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
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
        Ok(Self {
            inner: Arc::new(Inner {
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

    /// Flushes token usage every `period` until the store is dropped.
    pub fn spawn_usage_flusher(&self, period: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                if let Err(err) = store.flush_token_usage().await {
                    tracing::warn!(error = %err, "could not record token usage");
                }
            }
        })
    }

    pub async fn close(&self) {
        if let Err(err) = self.flush_token_usage().await {
            tracing::warn!(error = %err, "could not record token usage on shutdown");
        }
        self.leave_cluster().await;
        self.inner.pool.close().await;
    }

    fn pool(&self) -> &AnyPool {
        &self.inner.pool
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
