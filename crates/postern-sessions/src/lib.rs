//! The portal's live sessions. Every connected headless client and gateway registers here; one
//! worker task per account owns that account's sessions, its access snapshot and its
//! authorizations, turns change events into messages for exactly the affected sessions, and
//! ends sessions whose token was revoked. No per-session database round trip: a worker reads
//! the account once and again only when something in it changed.

mod addresses;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use postern_domain::DeviceKind;
use postern_protocol::{ConnectParams, DisconnectReason};
use postern_store::{Principal, Store};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use addresses::allocate;

/// What a session sends to its device.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded message, often shared by many sessions.
    Text(Arc<str>),
    /// End the session: send `Disconnect` with this reason, then close.
    Close {
        reason: DisconnectReason,
        message: String,
    },
}

/// How many messages may wait for a slow device before its session is dropped.
pub const OUTBOUND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the portal could not load the account: {0}")]
    Store(#[from] postern_store::StoreError),
    #[error("the portal is shutting down")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

/// A device asking for a session.
#[derive(Debug, Clone)]
pub struct Hello {
    pub principal: Principal,
    pub params: ConnectParams,
    pub source_ip: Option<IpAddr>,
}

/// A registered session: receive what to send; dropping it ends the registration.
pub struct SessionHandle {
    pub id: u64,
    pub outbound: mpsc::Receiver<Outbound>,
    account: mpsc::UnboundedSender<worker::Command>,
}

impl SessionHandle {
    /// A client asks for access to a resource; the answer comes through `outbound`.
    pub fn request_access(&self, resource_id: Uuid) {
        let _ = self.account.send(worker::Command::RequestAccess {
            session: self.id,
            resource_id,
        });
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let _ = self
            .account
            .send(worker::Command::Unregister { session: self.id });
    }
}

/// The registry of all live sessions of this portal process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    store: Store,
    workers: Mutex<HashMap<Uuid, mpsc::UnboundedSender<worker::Command>>>,
    next_session: AtomicU64,
    online: RwLock<Online>,
}

/// Who is online, readable without asking the workers (for the REST API).
#[derive(Default)]
pub(crate) struct Online {
    devices: HashMap<(Uuid, DeviceKind, String), u32>,
    tokens: HashMap<Uuid, u32>,
}

impl Hub {
    /// Creates the hub and starts forwarding the store's change events to the account workers.
    pub fn new(store: Store) -> Self {
        let hub = Hub {
            inner: Arc::new(HubInner {
                store: store.clone(),
                workers: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                online: RwLock::new(Online::default()),
            }),
        };
        tokio::spawn(forward_events(store, Arc::downgrade(&hub.inner)));
        hub
    }

    pub async fn connect_client(&self, hello: Hello) -> Result<SessionHandle, SessionError> {
        self.connect(DeviceKind::Client, hello).await
    }

    pub async fn connect_gateway(&self, hello: Hello) -> Result<SessionHandle, SessionError> {
        self.connect(DeviceKind::Gateway, hello).await
    }

    /// Tells every session that the portal is stopping and waits (at most `grace`) until they
    /// have closed, so devices learn it is a restart and not a network failure.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let workers: Vec<mpsc::UnboundedSender<worker::Command>> =
            self.inner.workers.lock().values().cloned().collect();
        for worker in &workers {
            let _ = worker.send(worker::Command::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.online.read().devices.is_empty() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether a device has at least one open session on this portal.
    pub fn is_online(&self, account_id: Uuid, kind: DeviceKind, device_id: &str) -> bool {
        self.inner
            .online
            .read()
            .devices
            .contains_key(&(account_id, kind, device_id.to_string()))
    }

    /// How many sessions are open with this token on this portal.
    pub fn sessions_with_token(&self, token_id: Uuid) -> u32 {
        self.inner
            .online
            .read()
            .tokens
            .get(&token_id)
            .copied()
            .unwrap_or(0)
    }

    async fn connect(&self, kind: DeviceKind, hello: Hello) -> Result<SessionHandle, SessionError> {
        let account = self.worker(hello.principal.account_id);
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (outbound_tx, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        let (reply, answer) = oneshot::channel();
        account
            .send(worker::Command::Register {
                session: id,
                kind,
                hello,
                outbound: outbound_tx,
                reply,
            })
            .map_err(|_| SessionError::Closed)?;
        answer.await.map_err(|_| SessionError::Closed)??;
        Ok(SessionHandle {
            id,
            outbound,
            account,
        })
    }

    fn worker(&self, account_id: Uuid) -> mpsc::UnboundedSender<worker::Command> {
        let mut workers = self.inner.workers.lock();
        if let Some(sender) = workers.get(&account_id).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let sender = worker::spawn(
            account_id,
            self.inner.store.clone(),
            Arc::downgrade(&self.inner),
        );
        workers.insert(account_id, sender.clone());
        sender
    }
}

impl HubInner {
    pub(crate) fn mark_online(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        device_id: &str,
        token_id: Uuid,
    ) {
        let mut online = self.online.write();
        *online
            .devices
            .entry((account_id, kind, device_id.to_string()))
            .or_default() += 1;
        *online.tokens.entry(token_id).or_default() += 1;
    }

    pub(crate) fn mark_offline(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        device_id: &str,
        token_id: Uuid,
    ) {
        let mut online = self.online.write();
        let key = (account_id, kind, device_id.to_string());
        if let Some(count) = online.devices.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                online.devices.remove(&key);
            }
        }
        if let Some(count) = online.tokens.get_mut(&token_id) {
            *count -= 1;
            if *count == 0 {
                online.tokens.remove(&token_id);
            }
        }
    }
}

async fn forward_events(store: Store, hub: Weak<HubInner>) {
    let mut events = store.subscribe();
    loop {
        let received = events.recv().await;
        let Some(hub) = hub.upgrade() else { return };
        let workers: Vec<(Uuid, mpsc::UnboundedSender<worker::Command>)> = hub
            .workers
            .lock()
            .iter()
            .map(|(id, tx)| (*id, tx.clone()))
            .collect();
        match received {
            Ok(event) => {
                let account_id = event.account_id();
                if let Some((_, tx)) = workers.iter().find(|(id, _)| *id == account_id) {
                    let _ = tx.send(worker::Command::Change(event));
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "session hub fell behind the change feed; resynchronising every session"
                );
                for (_, tx) in workers {
                    let _ = tx.send(worker::Command::Resync);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
