//! The in-memory side of token checks: a cache of token records keyed by token id, and a buffer
//! of last-use records flushed to the database in batches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use postern_domain::ChangeEvent;
use postern_token::{TokenHash, TokenKind};
use uuid::Uuid;

/// How long a cached record is trusted before it is read again. Changes invalidate at once, from
/// this process or (PostgreSQL) from other nodes via NOTIFY; the bound covers a lost notification.
const RECORD_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct CachedToken {
    pub kind: TokenKind,
    pub account_id: Uuid,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub hash: [u8; 32],
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub holder_disabled: bool,
    pub loaded_at: Instant,
}

impl CachedToken {
    pub fn hash(&self) -> TokenHash {
        TokenHash::from_bytes(self.hash)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PendingUse {
    pub at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub actor_id: Option<Uuid>,
}

#[derive(Default)]
pub(crate) struct TokenCache {
    records: RwLock<HashMap<Uuid, CachedToken>>,
    usage: Mutex<HashMap<Uuid, PendingUse>>,
}

impl TokenCache {
    pub fn get(&self, token_id: &Uuid) -> Option<CachedToken> {
        let records = self.records.read();
        let record = records.get(token_id)?;
        (record.loaded_at.elapsed() < RECORD_TTL).then(|| record.clone())
    }

    pub fn insert(&self, token_id: Uuid, record: CachedToken) {
        self.records.write().insert(token_id, record);
    }

    /// Forgets what a change made stale. Every change to tokens and their holders comes through
    /// here, whether it was made by this process or announced by another portal node.
    pub fn apply(&self, event: &ChangeEvent) {
        match event {
            ChangeEvent::TokensRevoked { token_ids, .. } => self.invalidate_tokens(token_ids),
            ChangeEvent::ActorDisabled { actor_id, .. }
            | ChangeEvent::ActorEnabled { actor_id, .. }
            | ChangeEvent::ActorDeleted { actor_id, .. } => self.invalidate_holder(*actor_id),
            ChangeEvent::SiteDeleted { site_id, .. } => self.invalidate_holder(*site_id),
            _ => {}
        }
    }

    /// Forgets every record: after a gap in the change feed, nothing cached can be trusted.
    pub fn clear(&self) {
        self.records.write().clear();
    }

    pub fn invalidate_tokens(&self, token_ids: &[Uuid]) {
        let mut records = self.records.write();
        for id in token_ids {
            records.remove(id);
        }
    }

    /// Drops every record of tokens held by this actor or site.
    pub fn invalidate_holder(&self, holder_id: Uuid) {
        self.records
            .write()
            .retain(|_, r| r.actor_id != Some(holder_id) && r.site_id != Some(holder_id));
    }

    pub fn record_use(&self, token_id: Uuid, pending: PendingUse) {
        self.usage.lock().insert(token_id, pending);
    }

    pub fn pending_use(&self, token_id: &Uuid) -> Option<PendingUse> {
        self.usage.lock().get(token_id).cloned()
    }

    pub fn take_usage(&self) -> HashMap<Uuid, PendingUse> {
        std::mem::take(&mut *self.usage.lock())
    }
}
