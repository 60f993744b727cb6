//! Authorization changes from the session role to the data plane, one by one and coalesced:
//! the data plane takes everything pending at once and applies each change on its own, so a
//! grant costs the gateway one table update, not a rebuild. Bounded by construction: it never
//! holds more entries than there are authorizations.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use postern_protocol::Authorization;
use tokio::sync::Notify;
use uuid::Uuid;

/// What the data plane has to apply.
#[derive(Debug, Default, PartialEq)]
pub struct PlanBatch {
    /// The table was replaced (a new session's `Init`): every authorization not set in
    /// `changes` goes.
    pub reset: bool,
    /// The latest word on each authorization: `Some` to add or replace it, `None` to remove it.
    pub changes: HashMap<Uuid, Option<Authorization>>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    batch: PlanBatch,
    closed: bool,
}

/// The role's end: every change goes to each receiver. Dropping it stops them.
pub struct PlanSender {
    shared: Vec<Arc<Shared>>,
}

/// The data plane's end.
pub struct PlanReceiver {
    shared: Arc<Shared>,
}

pub fn channel() -> (PlanSender, PlanReceiver) {
    let shared = Arc::new(Shared::default());
    (
        PlanSender {
            shared: vec![shared.clone()],
        },
        PlanReceiver { shared },
    )
}

impl PlanSender {
    /// One more receiver of every change from now on (start it before the first one).
    pub fn subscribe(&mut self) -> PlanReceiver {
        let shared = Arc::new(Shared::default());
        self.shared.push(shared.clone());
        PlanReceiver { shared }
    }

    /// The whole table, from a session's `Init`.
    pub fn replace(&self, authorizations: impl IntoIterator<Item = Authorization>) {
        let table: HashMap<Uuid, Option<Authorization>> = authorizations
            .into_iter()
            .map(|a| (a.id, Some(a)))
            .collect();
        self.change(|batch| {
            batch.reset = true;
            batch.changes = table.clone();
        });
    }

    pub fn upsert(&self, authorization: Authorization) {
        self.change(|batch| {
            batch
                .changes
                .insert(authorization.id, Some(authorization.clone()));
        });
    }

    pub fn remove(&self, ids: impl IntoIterator<Item = Uuid>) {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        self.change(|batch| {
            for id in &ids {
                batch.changes.insert(*id, None);
            }
        });
    }

    fn change(&self, apply: impl Fn(&mut PlanBatch)) {
        for shared in &self.shared {
            apply(&mut shared.pending.lock().batch);
            shared.notify.notify_one();
        }
    }
}

impl Drop for PlanSender {
    fn drop(&mut self) {
        for shared in &self.shared {
            shared.pending.lock().closed = true;
            shared.notify.notify_one();
        }
    }
}

impl PlanReceiver {
    /// Waits for changes and takes all of them; `None` once the sender is gone.
    pub async fn next(&mut self) -> Option<PlanBatch> {
        loop {
            {
                let mut pending = self.shared.pending.lock();
                let batch = std::mem::take(&mut pending.batch);
                if batch.reset || !batch.changes.is_empty() {
                    return Some(batch);
                }
                if pending.closed {
                    return None;
                }
            }
            self.shared.notify.notified().await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use postern_protocol::{ResourceView, TunnelAddresses};

    /// An authorization of client 100.64.0.1 for an `ip` resource; tests change what they need.
    pub(crate) fn authorization(id: u128) -> Authorization {
        Authorization {
            id: Uuid::from_u128(id),
            client_device_id: "c".into(),
            actor_id: Uuid::nil(),
            client_public_key: None,
            client_addresses: TunnelAddresses {
                ipv4: "100.64.0.1".parse().unwrap(),
                ipv6: "fd00::1".parse().unwrap(),
            },
            resource: ResourceView {
                id: Uuid::from_u128(100),
                name: "db".into(),
                resource_type: "ip".into(),
                address: "10.0.0.5".into(),
                description: None,
                filters: vec![],
                site_id: Uuid::nil(),
                access_until: None,
            },
            expires_at: chrono::Utc::now(),
            preshared_key: None,
            dns: Vec::new(),
        }
    }

    #[tokio::test]
    async fn changes_coalesce_and_the_last_word_wins() {
        let (sender, mut receiver) = channel();
        sender.upsert(authorization(1));
        sender.upsert(authorization(2));
        sender.remove([Uuid::from_u128(1)]);
        let batch = receiver.next().await.unwrap();
        assert!(!batch.reset);
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(batch.changes[&Uuid::from_u128(1)], None);
        assert!(batch.changes[&Uuid::from_u128(2)].is_some());

        // A replacement drops what came before it; later changes stay on top of it.
        sender.upsert(authorization(3));
        sender.replace([authorization(4)]);
        sender.remove([Uuid::from_u128(5)]);
        let batch = receiver.next().await.unwrap();
        assert!(batch.reset);
        let mut ids: Vec<u128> = batch.changes.keys().map(|id| id.as_u128()).collect();
        ids.sort();
        assert_eq!(ids, vec![4, 5]);

        drop(sender);
        assert_eq!(receiver.next().await, None);
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_change() {
        let (mut sender, mut first) = channel();
        let mut second = sender.subscribe();
        sender.upsert(authorization(1));
        sender.remove([Uuid::from_u128(2)]);
        for receiver in [&mut first, &mut second] {
            let batch = receiver.next().await.unwrap();
            assert_eq!(batch.changes.len(), 2);
        }
        drop(sender);
        assert_eq!(second.next().await, None);
    }
}
