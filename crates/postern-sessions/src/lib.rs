//! The portal's live sessions. Every connected headless client and gateway registers here.
//! Each account's sessions, access snapshot, devices and authorizations belong to one
//! [`account::AccountSessions`], a sans-IO state machine that decides everything (what a device
//! is told, who may reach what through which gateway until when, what is withdrawn, what the
//! store must save or delete); a tokio worker per account (`worker.rs`) feeds it and carries out
//! its outputs; the [`Hub`] routes sessions and change events to the workers. No per-session
//! database round trip: a worker reads the account once and again only when something in it
//! changed.

pub mod account;
mod addresses;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use chrono::Utc;
use parking_lot::{Mutex, RwLock};
use postern_domain::DeviceKind;
use postern_protocol::{ConnectParams, DisconnectReason, DnsTarget};
use postern_store::{AuthError, Principal, Store};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use account::{Refusal, SessionId, SessionsConfig};
/// The tunnel addresses a new device would be offered first (for tests and tools).
pub use addresses::{allocate, colliding_client_ids};

use account::{Presence, Registration};
use worker::{Command, WorkerHandle};

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

/// How many messages may wait for a slow client before its session is ended (and the client
/// resyncs from a fresh `Init` when it reconnects).
pub const CLIENT_QUEUE: usize = 256;
/// The same for a gateway, which hears of every grant at its site.
pub const GATEWAY_QUEUE: usize = 4096;
/// How often a registration may be sent back to have its token checked again.
const RECHECKS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The token no longer authenticates (checked again after a revocation).
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// The device's identity belongs to someone else: retrying cannot help.
    #[error("{0}")]
    Conflict(String),
    /// The token cannot open this kind of session.
    #[error("{0}")]
    Forbidden(String),
    /// The token works, but this device may not use it (blocked, or outside the token's
    /// allowed networks).
    #[error("{0}")]
    DeviceRefused(String),
    /// The token already serves as many devices as its `max_clients` allows.
    #[error("{0}")]
    TokenLimit(String),
    /// Passing: retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("the portal is shutting down")]
    Closed,
}

impl From<Refusal> for SessionError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Conflict(why) => SessionError::Conflict(why),
            Refusal::Forbidden(why) => SessionError::Forbidden(why),
            Refusal::DeviceRefused(why) => SessionError::DeviceRefused(why),
            Refusal::TokenLimit(why) => SessionError::TokenLimit(why),
            Refusal::Unavailable(why) => SessionError::Unavailable(why),
            Refusal::Recheck => {
                SessionError::Unavailable("the token is being checked again; retry".into())
            }
        }
    }
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
    pub id: SessionId,
    pub outbound: mpsc::Receiver<Outbound>,
    worker: WorkerHandle,
    said_goodbye: bool,
}

impl SessionHandle {
    /// A client asks for access to a resource; the answer comes through `outbound`. Waits
    /// while the account's worker is busy, which slows only this session's reading.
    pub async fn request_access(&self, resource_id: Uuid, dns: Option<DnsTarget>) {
        let _ = self
            .worker
            .commands
            .send(Command::RequestAccess {
                session: self.id,
                resource_id,
                dns,
            })
            .await;
    }
}

impl SessionHandle {
    /// The client stops cleanly: when the session ends, an ephemeral device goes with it.
    pub fn goodbye(&mut self) {
        self.said_goodbye = true;
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let _ = self.worker.departures.send(worker::Departure {
            session: self.id,
            said_goodbye: self.said_goodbye,
        });
    }
}

/// The registry of all live sessions of this portal process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    store: Store,
    config: SessionsConfig,
    workers: Mutex<HashMap<Uuid, WorkerHandle>>,
    next_session: AtomicU64,
    online: RwLock<Online>,
    /// Other nodes' session counts of tokens with `max_clients`, as last read, and when: read
    /// again at most once per presence period, so that a burst of connects costs one query.
    remote_counts: Mutex<HashMap<Uuid, (u32, std::time::Instant)>>,
}

/// Who is online, readable without asking the workers (for the REST API).
#[derive(Default)]
pub(crate) struct Online {
    devices: HashMap<(Uuid, DeviceKind, String), u32>,
    tokens: HashMap<Uuid, u32>,
    /// Client devices whose count changed since the presence was last written for the other
    /// nodes, with their token (PostgreSQL only: nobody else reads it).
    dirty: HashMap<(Uuid, String), Uuid>,
}

const VANISHED: &str = "the ephemeral device vanished (no goodbye) and its timeout passed";
const STALE: &str = "the device was not seen for the account's stale_device_days";

/// Devices removed per account in one sweep (the next sweep takes the rest).
const SWEEP_BATCH: u32 = 1000;

/// Tokens whose other nodes' session counts are kept at most.
const REMOTE_COUNTS: usize = 100_000;

/// How often this node writes its clients' presence for the other nodes.
const PRESENCE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

impl Hub {
    /// Creates the hub with the default limits and starts forwarding the store's change
    /// events to the account workers.
    pub fn new(store: Store) -> Self {
        Self::with_config(store, SessionsConfig::default())
    }

    pub fn with_config(store: Store, config: SessionsConfig) -> Self {
        let hub = Hub {
            inner: Arc::new(HubInner {
                store: store.clone(),
                config,
                workers: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                online: RwLock::new(Online::default()),
                remote_counts: Mutex::new(HashMap::new()),
            }),
        };
        if store.is_clustered() {
            tokio::spawn(write_presence(store.clone(), Arc::downgrade(&hub.inner)));
        }
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
        let workers: Vec<WorkerHandle> = self.inner.workers.lock().values().cloned().collect();
        for worker in &workers {
            let _ = worker.commands.send(Command::Shutdown).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.online.read().devices.is_empty() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Which of these devices have a session on this node or another live one. Other nodes'
    /// sessions are counted as of their last presence write (at most a second or so behind);
    /// if the database cannot say, this node's alone.
    pub async fn online_devices(
        &self,
        account_id: Uuid,
        kind: DeviceKind,
        device_ids: &[String],
    ) -> std::collections::HashSet<String> {
        let mut online: std::collections::HashSet<String> = device_ids
            .iter()
            .filter(|d| self.is_online(account_id, kind, d))
            .cloned()
            .collect();
        let rest: Vec<String> = device_ids
            .iter()
            .filter(|d| !online.contains(*d))
            .cloned()
            .collect();
        match self
            .inner
            .store
            .remote_online(account_id, kind, &rest)
            .await
        {
            Ok(remote) => online.extend(remote),
            Err(err) => tracing::warn!(error = %err, "cannot read other portal nodes' presence"),
        }
        online
    }

    /// How many sessions use each of these tokens, on every live node (see
    /// [`Self::online_devices`]).
    pub async fn token_sessions(&self, account_id: Uuid, token_ids: &[Uuid]) -> HashMap<Uuid, u32> {
        let mut sessions: HashMap<Uuid, u32> = token_ids
            .iter()
            .map(|t| (*t, self.sessions_with_token(*t)))
            .collect();
        match self
            .inner
            .store
            .remote_token_sessions(account_id, token_ids)
            .await
        {
            Ok(remote) => {
                for (token, count) in remote {
                    *sessions.entry(token).or_default() += count;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read other portal nodes' presence"),
        }
        sessions
    }

    /// Removes the devices due for it in every account: ephemeral clients whose last session
    /// ended longer ago than the account's `ephemeral_device_timeout_seconds`, and devices
    /// unseen for its `stale_device_days`, leaving out those online on any live node. Every
    /// node may sweep: each device is removed (and audited) once. Returns how many went here.
    pub async fn sweep_devices(&self) -> Result<usize, postern_store::StoreError> {
        let store = &self.inner.store;
        let now = chrono::Utc::now();
        let mut removed = 0;
        for account in store.list_accounts().await? {
            let due = store
                .devices_due_for_removal(account.id, &account.settings, now, SWEEP_BATCH)
                .await?;
            if due.is_empty() {
                continue;
            }
            let mut online = std::collections::HashSet::new();
            for kind in [DeviceKind::Client, DeviceKind::Gateway] {
                let ids: Vec<String> = due
                    .iter()
                    .filter(|(d, _)| d.kind == kind)
                    .map(|(d, _)| d.device_id.clone())
                    .collect();
                for device_id in self.online_devices(account.id, kind, &ids).await {
                    online.insert((kind, device_id));
                }
            }
            let mut by_cutoff: std::collections::BTreeMap<_, Vec<Uuid>> = Default::default();
            for (device, cutoff) in &due {
                if online.contains(&(device.kind, device.device_id.clone())) {
                    continue;
                }
                let why = match device.ephemeral {
                    true => VANISHED,
                    false => STALE,
                };
                by_cutoff.entry((*cutoff, why)).or_default().push(device.id);
            }
            for ((cutoff, why), ids) in by_cutoff {
                let reason = if why == VANISHED { "vanished" } else { "stale" };
                let gone = store
                    .remove_devices(account.id, &ids, Some(cutoff), why)
                    .await?;
                if !gone.is_empty() {
                    tracing::info!(account = %account.slug, devices = gone.len(), why, "removed devices");
                    metrics::counter!(postern_metrics::DEVICES_REMOVED, "reason" => reason)
                        .increment(gone.len() as u64);
                }
                removed += gone.len();
            }
        }
        Ok(removed)
    }

    /// Sweeps every `period` ([`Self::sweep_devices`]) until the hub is dropped.
    pub fn spawn_device_sweep(&self, period: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let hub = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(inner) = hub.upgrade() else { return };
                if let Err(err) = (Hub { inner }).sweep_devices().await {
                    tracing::warn!(error = %err, "could not sweep vanished and stale devices; retrying");
                }
            }
        })
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

    /// Sessions on a token limited by `max_clients` on the other live nodes (as of their last
    /// presence write), so that the limit holds across nodes; 0 for tokens without a limit, on
    /// a single node, or when the database cannot say (the limit then holds per node).
    async fn remote_sessions_on_token(&self, principal: &Principal) -> u32 {
        if principal.guardrails.max_clients.is_none() || !self.inner.store.is_clustered() {
            return 0;
        }
        let token_id = principal.token_id;
        let cached = self.inner.remote_counts.lock().get(&token_id).copied();
        if let Some((count, at)) = cached {
            if at.elapsed() < PRESENCE_PERIOD {
                return count;
            }
        }
        let count = match self
            .inner
            .store
            .remote_token_sessions(principal.account_id, &[token_id])
            .await
        {
            Ok(counts) => counts.get(&token_id).copied().unwrap_or(0),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read other portal nodes' presence; max_clients holds per node");
                return 0;
            }
        };
        let mut counts = self.inner.remote_counts.lock();
        if counts.len() >= REMOTE_COUNTS {
            counts.retain(|_, (_, at)| at.elapsed() < PRESENCE_PERIOD);
        }
        if counts.len() < REMOTE_COUNTS {
            counts.insert(token_id, (count, std::time::Instant::now()));
        }
        count
    }

    /// Registers a session with its account's worker. A registration whose token check may
    /// predate a revocation comes back to be checked again, so that no revoked token leaves a
    /// live session behind.
    async fn connect(&self, kind: DeviceKind, hello: Hello) -> Result<SessionHandle, SessionError> {
        let worker = self.worker(hello.principal.account_id);
        let Hello {
            mut principal,
            params,
            source_ip,
        } = hello;
        let remote_sessions_on_token = self.remote_sessions_on_token(&principal).await;
        for _ in 0..RECHECKS {
            let session = SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed));
            let capacity = match kind {
                DeviceKind::Client => CLIENT_QUEUE,
                DeviceKind::Gateway => GATEWAY_QUEUE,
            };
            let (outbound_tx, outbound) = mpsc::channel(capacity);
            let (reply, answer) = oneshot::channel();
            let registration = Registration {
                session,
                kind,
                principal: principal.clone(),
                params: params.clone(),
                source_ip,
                remote_sessions_on_token,
            };
            worker
                .commands
                .send(Command::Register {
                    registration: Box::new(registration),
                    outbound: outbound_tx,
                    reply,
                })
                .await
                .map_err(|_| SessionError::Closed)?;
            match answer.await.map_err(|_| SessionError::Closed)? {
                Ok(()) => {
                    return Ok(SessionHandle {
                        id: session,
                        outbound,
                        worker,
                        said_goodbye: false,
                    })
                }
                Err(Refusal::Recheck) => {
                    principal = self
                        .inner
                        .store
                        .recheck_token(principal.token_id, Utc::now())
                        .await?;
                }
                Err(refusal) => return Err(refusal.into()),
            }
        }
        Err(Refusal::Recheck.into())
    }

    fn worker(&self, account_id: Uuid) -> WorkerHandle {
        let mut workers = self.inner.workers.lock();
        if let Some(worker) = workers.get(&account_id).filter(|w| !w.is_closed()) {
            return worker.clone();
        }
        let worker = worker::spawn(
            account_id,
            self.inner.store.clone(),
            Arc::downgrade(&self.inner),
            self.inner.config.clone(),
        );
        workers.insert(account_id, worker.clone());
        worker
    }
}

impl HubInner {
    pub(crate) fn mark_online(&self, account_id: Uuid, presence: &Presence) {
        let mut online = self.online.write();
        *online
            .devices
            .entry((account_id, presence.kind, presence.device_id.clone()))
            .or_default() += 1;
        *online.tokens.entry(presence.token_id).or_default() += 1;
        if presence.kind == DeviceKind::Client && self.store.is_clustered() {
            online
                .dirty
                .insert((account_id, presence.device_id.clone()), presence.token_id);
        }
    }

    pub(crate) fn mark_offline(&self, account_id: Uuid, presence: &Presence) {
        let mut online = self.online.write();
        let key = (account_id, presence.kind, presence.device_id.clone());
        if let Some(count) = online.devices.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                online.devices.remove(&key);
            }
        }
        if let Some(count) = online.tokens.get_mut(&presence.token_id) {
            *count -= 1;
            if *count == 0 {
                online.tokens.remove(&presence.token_id);
            }
        }
        if presence.kind == DeviceKind::Client && self.store.is_clustered() {
            online
                .dirty
                .insert((account_id, presence.device_id.clone()), presence.token_id);
        }
    }
}

/// Hands every committed change to its account's worker, with the revocation generation read
/// after it was applied to the token cache. A feed that lags, or changes of other nodes that
/// were missed beyond recovery, make every worker resync.
async fn forward_events(store: Store, hub: Weak<HubInner>) {
    let mut events = store.subscribe();
    let mut gaps = store.gaps();
    let mut nodes_gone = store.nodes_gone();
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            gone = nodes_gone.recv() => {
                let Some(hub) = hub.upgrade() else { return };
                match gone {
                    Ok(node_id) => {
                        tracing::info!(%node_id, "a portal node is gone; its sessions count as offline");
                        let workers: Vec<WorkerHandle> = hub.workers.lock().values().cloned().collect();
                        for worker in workers {
                            if let Err(mpsc::error::TrySendError::Full(_)) =
                                worker.commands.try_send(Command::NodeGone(node_id))
                            {
                                worker.resync(store.revocation_generation());
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        resync_all(&hub, store.revocation_generation());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                continue;
            }
            changed = gaps.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(hub) = hub.upgrade() else { return };
                tracing::warn!("changes of other portal nodes were missed; resynchronising every account");
                resync_all(&hub, store.revocation_generation());
                continue;
            }
        };
        let Some(hub) = hub.upgrade() else { return };
        let generation = store.revocation_generation();
        match received {
            Ok(event) => {
                let worker = hub.workers.lock().get(&event.account_id()).cloned();
                if let Some(worker) = worker {
                    worker.change(event, generation);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "session hub fell behind the change feed; resynchronising every account"
                );
                resync_all(&hub, generation);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Writes the client devices whose session count changed, for the other nodes, every
/// [`PRESENCE_PERIOD`] (gateways are announced by their account's worker at once).
async fn write_presence(store: Store, hub: Weak<HubInner>) {
    let mut ticker = tokio::time::interval(PRESENCE_PERIOD);
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let batch: Vec<postern_store::PresenceCount> = {
            let mut online = hub.online.write();
            let dirty = std::mem::take(&mut online.dirty);
            dirty
                .into_iter()
                .map(|((account_id, device_id), token_id)| {
                    let sessions = online
                        .devices
                        .get(&(account_id, DeviceKind::Client, device_id.clone()))
                        .copied()
                        .unwrap_or(0);
                    postern_store::PresenceCount {
                        account_id,
                        kind: DeviceKind::Client,
                        device_id,
                        token_id,
                        sessions,
                    }
                })
                .collect()
        };
        if let Err(err) = store.write_presence(&batch).await {
            tracing::warn!(error = %err, devices = batch.len(), "could not write this node's presence; retrying");
            let mut online = hub.online.write();
            for count in batch {
                online
                    .dirty
                    .entry((count.account_id, count.device_id))
                    .or_insert(count.token_id);
            }
        }
    }
}

fn resync_all(hub: &HubInner, generation: u64) {
    let workers: Vec<WorkerHandle> = hub.workers.lock().values().cloned().collect();
    for worker in workers {
        worker.resync(generation);
    }
}
