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
    /// The holder's name (service account or site), for the device's `Init`.
    pub holder_name: String,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub holder_disabled: bool,
    pub guardrails: postern_domain::TokenGuardrails,
    pub rotated_from: Option<Uuid>,
    pub rotated: bool,
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
    records: RwLock<Records>,
    usage: Mutex<HashMap<Uuid, PendingUse>>,
}

#[derive(Default)]
struct Records {
    by_id: HashMap<Uuid, CachedToken>,
    /// The revocation generation: raised by every invalidation, under the same lock. A record
    /// read from the database at an older generation may predate a revocation and is not cached;
    /// a principal checked at an older generation is checked again before its session is kept.
    generation: u64,
}

impl TokenCache {
    /// The record if cached and fresh, with the generation it was read at.
    pub fn get(&self, token_id: &Uuid) -> (Option<CachedToken>, u64) {
        let records = self.records.read();
        let record = records
            .by_id
            .get(token_id)
            .filter(|record| record.loaded_at.elapsed() < RECORD_TTL)
            .cloned();
        (record, records.generation)
    }

    pub fn generation(&self) -> u64 {
        self.records.read().generation
    }

    /// Caches a record read from the database when `read_at` (the generation before the read)
    /// is still current; returns whether it was cached.
    pub fn insert(&self, token_id: Uuid, record: CachedToken, read_at: u64) -> bool {
        let mut records = self.records.write();
        if records.generation != read_at {
            return false;
        }
        records.by_id.insert(token_id, record);
        true
    }

    /// Forgets what a change made stale. Every change to tokens and their holders comes through
    /// here, whether it was made by this process or announced by another portal node.
    pub fn apply(&self, event: &ChangeEvent) {
        match event {
            ChangeEvent::TokensRevoked { token_ids, .. } => self.invalidate_tokens(token_ids),
            ChangeEvent::TokenUpdated { token_id, .. }
            | ChangeEvent::TokenRotated { token_id, .. } => self.invalidate_tokens(&[*token_id]),
            ChangeEvent::ActorDisabled { actor_id, .. }
            | ChangeEvent::ActorEnabled { actor_id, .. }
            | ChangeEvent::ActorDeleted { actor_id, .. } => self.invalidate_holder(*actor_id),
            ChangeEvent::SiteDeleted { site_id, .. } => self.invalidate_holder(*site_id),
            _ => {}
        }
    }

    /// Forgets every record: after a gap in the change feed, nothing cached can be trusted.
    pub fn clear(&self) {
        let mut records = self.records.write();
        records.by_id.clear();
        records.generation += 1;
    }

    pub fn invalidate_tokens(&self, token_ids: &[Uuid]) {
        let mut records = self.records.write();
        for id in token_ids {
            records.by_id.remove(id);
        }
        records.generation += 1;
    }

    /// Drops every record of tokens held by this actor or site.
    pub fn invalidate_holder(&self, holder_id: Uuid) {
        let mut records = self.records.write();
        records
            .by_id
            .retain(|_, r| r.actor_id != Some(holder_id) && r.site_id != Some(holder_id));
        records.generation += 1;
    }

    pub fn record_use(&self, token_id: Uuid, pending: PendingUse) {
        self.usage.lock().insert(token_id, pending);
    }

    pub fn pending_use(&self, token_id: &Uuid) -> Option<PendingUse> {
        self.usage.lock().get(token_id).cloned()
    }

    /// The latest not-yet-flushed use per actor.
    pub fn pending_seen(&self) -> HashMap<Uuid, DateTime<Utc>> {
        let mut seen: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        for used in self.usage.lock().values() {
            let Some(actor_id) = used.actor_id else {
                continue;
            };
            let latest = seen.entry(actor_id).or_insert(used.at);
            *latest = (*latest).max(used.at);
        }
        seen
    }

    pub fn take_usage(&self) -> HashMap<Uuid, PendingUse> {
        std::mem::take(&mut *self.usage.lock())
    }

    /// Puts back uses that could not be written; a use recorded since wins over its older one.
    pub fn restore_usage(&self, usage: HashMap<Uuid, PendingUse>) {
        let mut pending = self.usage.lock();
        for (token_id, used) in usage {
            pending.entry(token_id).or_insert(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(revoked: bool) -> CachedToken {
        CachedToken {
            kind: TokenKind::Client,
            account_id: Uuid::nil(),
            actor_id: Some(Uuid::from_u128(7)),
            site_id: None,
            hash: [0; 32],
            holder_name: "ci".into(),
            expires_at: Utc::now() + chrono::Duration::days(1),
            revoked,
            holder_disabled: false,
            guardrails: Default::default(),
            rotated_from: None,
            rotated: false,
            loaded_at: Instant::now(),
        }
    }

    #[test]
    fn a_record_read_before_a_revocation_is_not_cached_after_it() {
        let cache = TokenCache::default();
        let token = Uuid::from_u128(1);
        // A check misses the cache and starts reading the database...
        let (cached, read_at) = cache.get(&token);
        assert!(cached.is_none());
        // ...the revocation commits and clears the cache meanwhile...
        cache.invalidate_tokens(&[token]);
        // ...and the record it read (still valid) must not go back in.
        assert!(!cache.insert(token, record(false), read_at));
        assert!(cache.get(&token).0.is_none());
        // A read that started after the revocation is cached.
        let (_, now) = cache.get(&token);
        assert!(cache.insert(token, record(true), now));
        assert!(cache.get(&token).0.is_some_and(|r| r.revoked));
    }

    #[test]
    fn every_invalidation_raises_the_generation() {
        let cache = TokenCache::default();
        let start = cache.generation();
        cache.invalidate_tokens(&[Uuid::from_u128(1)]);
        cache.invalidate_holder(Uuid::from_u128(7));
        cache.clear();
        assert_eq!(cache.generation(), start + 3);
        cache.apply(&ChangeEvent::ActorDisabled {
            account_id: Uuid::nil(),
            actor_id: Uuid::from_u128(7),
        });
        assert_eq!(cache.generation(), start + 4);
        cache.apply(&ChangeEvent::ResourceCreated {
            account_id: Uuid::nil(),
            resource_id: Uuid::from_u128(9),
        });
        assert_eq!(cache.generation(), start + 4, "other changes leave it");
    }
}
