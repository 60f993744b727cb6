//! The I/O shell around one account's [`AccountSessions`]: a tokio task that feeds it commands,
//! change events and the clock, delivers its messages to the sessions' queues, and carries out
//! its store operations (reads awaited in place, writes one at a time in the background, in
//! the order the core decided them).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use postern_domain::ChangeEvent;
use postern_protocol::DnsTarget;
use postern_store::{AuthorizationWrites, DeviceClaim, Store, StoreError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::account::{
    AccessLoad, AccountLoad, AccountSessions, Event, GrantsLoad, Queued, Queues, Refusal,
    Registration, SessionId, SessionsConfig, StoreOp, Successor,
};
use crate::{HubInner, Outbound};
use postern_protocol::TokenSecret;

/// Commands a worker takes, at most this many waiting: senders wait (connects, access
/// requests) or fall back to a resync (change events).
const COMMAND_QUEUE: usize = 4096;
/// Commands handled before the core's outputs are carried out: a burst of changes costs one
/// read of the account, but a flood cannot starve the outputs.
const COMMANDS_PER_ROUND: usize = 1024;

/// A session that ended, and whether its client said goodbye first (a clean stop).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Departure {
    pub(crate) session: SessionId,
    pub(crate) said_goodbye: bool,
}

pub(crate) enum Command {
    Register {
        registration: Box<Registration>,
        outbound: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    RequestAccess {
        session: SessionId,
        resource_id: Uuid,
        dns: Option<DnsTarget>,
    },
    Change {
        event: ChangeEvent,
        generation: u64,
    },
    /// Another portal node is gone: its gateways' sessions with it.
    NodeGone(Uuid),
    /// The portal is stopping: tell every session, so devices know to reconnect.
    Shutdown,
}

/// How the hub reaches one account's worker.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    /// Sessions that ended. Unbounded, but each session sends here once, so it never holds
    /// more than the sessions the worker has.
    pub(crate) departures: mpsc::UnboundedSender<Departure>,
    /// Set when a change event could not be queued: the worker resyncs the account.
    missed: Arc<Missed>,
}

#[derive(Default)]
struct Missed {
    /// The revocation generation when the latest change was missed.
    generation: Mutex<Option<u64>>,
    notify: Notify,
}

impl WorkerHandle {
    pub(crate) fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Hands a change over without waiting; when the worker is that far behind, it is told to
    /// resync instead (nothing is lost: it reads the account again and checks every token).
    pub(crate) fn change(&self, event: ChangeEvent, generation: u64) {
        match self
            .commands
            .try_send(Command::Change { event, generation })
        {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => self.resync(generation),
        }
    }

    pub(crate) fn resync(&self, generation: u64) {
        let mut missed = self.missed.generation.lock();
        *missed = Some(missed.map_or(generation, |g| g.max(generation)));
        drop(missed);
        self.missed.notify.notify_one();
    }
}

pub(crate) fn spawn(
    account_id: Uuid,
    store: Store,
    hub: Weak<HubInner>,
    config: SessionsConfig,
) -> WorkerHandle {
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (departures, departure_rx) = mpsc::unbounded_channel();
    let missed = Arc::new(Missed::default());
    let core = AccountSessions::new(
        account_id,
        config,
        store.revocation_generation(),
        Box::new(rand::rngs::OsRng),
    );
    let worker = Worker {
        core,
        store,
        hub,
        queues: HashMap::new(),
        replies: HashMap::new(),
        write: None,
        claim: None,
        announcing: None,
        revoking_since: None,
    };
    tokio::spawn(worker.run(command_rx, departure_rx, missed.clone()));
    WorkerHandle {
        commands,
        departures,
        missed,
    }
}

fn session_gauge(account_id: Uuid, presence: &crate::account::Presence) -> metrics::Gauge {
    metrics::gauge!(
        postern_metrics::SESSIONS,
        "kind" => presence.kind.as_str(),
        "account" => account_id.to_string()
    )
}

struct Worker {
    core: AccountSessions,
    store: Store,
    hub: Weak<HubInner>,
    /// Each registered session's outbound queue, by session: filled here, drained by the
    /// session's WebSocket task.
    queues: HashMap<SessionId, mpsc::Sender<Outbound>>,
    /// Sessions waiting to hear whether they are registered.
    replies: HashMap<SessionId, oneshot::Sender<Result<(), Refusal>>>,
    /// The write the core asked for last, while it runs: the task (true on success) and what
    /// it writes, to hand back to the core if it fails.
    write: Option<(JoinHandle<bool>, Arc<AuthorizationWrites>)>,
    /// The device claims the core asked for last, while they run.
    claim: Option<JoinHandle<Option<Vec<DeviceClaim>>>>,
    /// The latest gateway announcement, while it runs.
    announcing: Option<JoinHandle<()>>,
    /// When the oldest revoking change not yet carried out arrived (for the fan-out metric).
    revoking_since: Option<std::time::Instant>,
}

impl Worker {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut departures: mpsc::UnboundedReceiver<Departure>,
        missed: Arc<Missed>,
    ) {
        loop {
            self.carry_out().await;
            let timeout = self.core.poll_timeout();
            // Biased toward the rare, cheap inputs (departures, a finished write, a missed
            // change, a due timer), so that a stream of commands cannot starve them.
            tokio::select! {
                biased;
                Some(departure) = departures.recv() => {
                    self.depart(departure);
                    while let Ok(departure) = departures.try_recv() {
                        self.depart(departure);
                    }
                }
                failed = finished(&mut self.write) => {
                    self.write = None;
                    self.core.handle_write_done(failed, Utc::now());
                }
                outcomes = claimed(&mut self.claim) => {
                    self.claim = None;
                    match outcomes {
                        Some(outcomes) => self.core.handle_devices_claimed(outcomes, Utc::now()),
                        None => self.core.handle_claims_failed(Utc::now()),
                    }
                }
                _ = missed.notify.notified() => {
                    if let Some(generation) = missed.generation.lock().take() {
                        tracing::warn!(
                            account_id = %self.core.account_id(),
                            "session worker missed change events; resynchronising its sessions"
                        );
                        self.core.handle_resync(generation);
                    }
                }
                _ = sleep_until(timeout) => self.core.handle_timeout(Utc::now()),
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.handle(command);
                    for _ in 1..COMMANDS_PER_ROUND {
                        let Ok(command) = commands.try_recv() else { break };
                        self.handle(command);
                    }
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Utc::now();
        match command {
            Command::Register {
                registration,
                outbound,
                reply,
            } => {
                self.queues.insert(registration.session, outbound);
                self.replies.insert(registration.session, reply);
                self.core.handle_register(*registration, now);
            }
            Command::RequestAccess {
                session,
                resource_id,
                dns,
            } => self
                .core
                .handle_request_access(session, resource_id, dns, now),
            Command::Change { event, generation } => {
                if crate::account::revokes_credentials(&event) {
                    self.revoking_since
                        .get_or_insert_with(std::time::Instant::now);
                }
                self.core.handle_change(&event, generation, now)
            }
            Command::NodeGone(node_id) => self.core.handle_node_gone(node_id),
            Command::Shutdown => self.core.handle_shutdown(now),
        }
    }

    /// Delivers what the core has to say and does what it asks of the store, until it asks
    /// for nothing more.
    async fn carry_out(&mut self) {
        loop {
            self.core
                .deliver(&mut SessionQueues(&mut self.queues), Utc::now());
            if let Some(since) = self.revoking_since.take() {
                metrics::histogram!(postern_metrics::REVOCATION_FANOUT)
                    .record(since.elapsed().as_secs_f64());
            }
            while let Some(event) = self.core.poll_event() {
                self.on_event(event);
            }
            let Some(op) = self.core.poll_store() else {
                return;
            };
            match op {
                StoreOp::RecordDevice(device) => self.store.record_device(device),
                StoreOp::ClaimDevices(devices) => {
                    let store = self.store.clone();
                    self.claim = Some(tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let result = store.claim_devices(&devices).await;
                        tracing::debug!(
                            devices = devices.len(),
                            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                            "claimed devices"
                        );
                        match result {
                            Ok(outcomes) => Some(outcomes),
                            Err(err) => {
                                tracing::warn!(error = %err, "could not record new devices");
                                None
                            }
                        }
                    }));
                }
                StoreOp::Write(writes) => {
                    let (store, account_id) = (self.store.clone(), self.core.account_id());
                    let writes = Arc::new(writes);
                    let task = tokio::spawn({
                        let writes = writes.clone();
                        async move {
                            let result = store.write_authorizations(account_id, &writes).await;
                            if let Err(err) = &result {
                                tracing::warn!(%account_id, error = %err, "could not store authorizations; retrying");
                            }
                            result.is_ok()
                        }
                    });
                    self.write = Some((task, writes));
                }
                StoreOp::LoadAccount => match self.load_account().await {
                    Ok(load) => self.core.handle_account_loaded(load, Utc::now()),
                    Err(err) => {
                        tracing::error!(account_id = %self.core.account_id(), error = %err, "cannot read the account's sessions data");
                        self.core
                            .handle_load_failed(StoreOp::LoadAccount, Utc::now());
                    }
                },
                StoreOp::AnnounceGateway {
                    gateway,
                    token_id,
                    endpoint,
                    online,
                } => {
                    // In the background, each after the previous one: in the order decided,
                    // without holding up the sessions.
                    let (store, previous) = (self.store.clone(), self.announcing.take());
                    self.announcing = Some(tokio::spawn(async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        if let Err(err) = store
                            .announce_gateway(&gateway, token_id, endpoint, online)
                            .await
                        {
                            tracing::warn!(device_id = %gateway.device_id, online, error = %err, "could not tell the other portal nodes about a gateway");
                        }
                    }));
                }
                StoreOp::ApproveDevices(ids) => {
                    let (store, account_id) = (self.store.clone(), self.core.account_id());
                    tokio::spawn(async move {
                        if let Err(err) = store.mark_approved(account_id, &ids).await {
                            tracing::warn!(error = %err, "could not record devices as approved");
                        }
                    });
                }
                StoreOp::RemoveDevices { ids, why } => {
                    // In the background: the sessions go on meanwhile. If it fails, the sweep
                    // removes the device once its timeout has passed.
                    let (store, account_id) = (self.store.clone(), self.core.account_id());
                    tokio::spawn(async move {
                        match store.remove_devices(account_id, &ids, None, &why).await {
                            Ok(gone) => {
                                metrics::counter!(postern_metrics::DEVICES_REMOVED, "reason" => "goodbye")
                                    .increment(gone.len() as u64);
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "could not remove an ephemeral device; the sweep will");
                            }
                        }
                    });
                }
                StoreOp::RecordTokenMove {
                    device,
                    device_id,
                    from,
                    to,
                } => {
                    let (store, account_id) = (self.store.clone(), self.core.account_id());
                    tokio::spawn(async move {
                        let moved =
                            store.record_token_move(account_id, device, &device_id, from, to);
                        if let Err(err) = moved.await {
                            tracing::warn!(%device_id, error = %err, "could not audit a client's move to a rotated token's successor");
                        }
                    });
                }
                StoreOp::LoadGrants => match self.load_grants().await {
                    Ok(load) => self.core.handle_grants_loaded(load, Utc::now()),
                    Err(err) => {
                        tracing::error!(account_id = %self.core.account_id(), error = %err, "cannot read the account's grants again");
                        self.core
                            .handle_load_failed(StoreOp::LoadGrants, Utc::now());
                    }
                },
                StoreOp::LoadAccess { tokens } => match self.load_access(&tokens).await {
                    Ok(load) => self.core.handle_access_loaded(load, Utc::now()),
                    Err(err) => {
                        tracing::error!(account_id = %self.core.account_id(), error = %err, "cannot reload the account's access data");
                        self.core
                            .handle_load_failed(StoreOp::LoadAccess { tokens }, Utc::now());
                    }
                },
            }
        }
    }

    fn depart(&mut self, departure: Departure) {
        match departure.said_goodbye {
            true => self.core.handle_goodbye(departure.session, Utc::now()),
            false => self.core.handle_unregister(departure.session, Utc::now()),
        }
    }

    fn on_event(&mut self, event: Event) {
        let account_id = self.core.account_id();
        match event {
            Event::Registered { session, presence } => {
                if let Some(hub) = self.hub.upgrade() {
                    hub.mark_online(account_id, &presence);
                }
                session_gauge(account_id, &presence).increment(1.0);
                let answered = self
                    .replies
                    .remove(&session)
                    .is_some_and(|reply| reply.send(Ok(())).is_ok());
                if !answered {
                    // The connecting task gave up meanwhile: nobody will drain the queue.
                    self.queues.remove(&session);
                    self.core.handle_unregister(session, Utc::now());
                }
            }
            Event::Refused { session, refusal } => {
                self.queues.remove(&session);
                if let Some(reply) = self.replies.remove(&session) {
                    let _ = reply.send(Err(refusal));
                }
            }
            Event::Ended { session, presence } => {
                if let Some(hub) = self.hub.upgrade() {
                    hub.mark_offline(account_id, &presence);
                }
                session_gauge(account_id, &presence).decrement(1.0);
                self.queues.remove(&session);
            }
        }
    }

    async fn load_account(&self) -> Result<AccountLoad, StoreError> {
        let account_id = self.core.account_id();
        let account = self.store.get_account(account_id).await?;
        let devices = self.store.load_devices(account_id).await?;
        let access = self.store.access_data(account_id).await?;
        let authorizations = self
            .store
            .load_authorizations(account_id, Utc::now())
            .await?;
        let remote_gateways = self.store.remote_gateways(account_id).await?;
        Ok(AccountLoad {
            slug: account.slug,
            access,
            devices,
            authorizations,
            remote_gateways,
        })
    }

    async fn load_grants(&self) -> Result<GrantsLoad, StoreError> {
        let account_id = self.core.account_id();
        let authorizations = self
            .store
            .load_authorizations(account_id, Utc::now())
            .await?;
        let remote_gateways = self.store.remote_gateways(account_id).await?;
        Ok(GrantsLoad {
            authorizations,
            remote_gateways,
        })
    }

    async fn load_access(&self, tokens: &[Uuid]) -> Result<AccessLoad, StoreError> {
        let account_id = self.core.account_id();
        let account = self.store.get_account(account_id).await?;
        let access = self.store.access_data(account_id).await?;
        let guardrails = self.store.token_guardrails(account_id, tokens).await?;
        let successors = self
            .store
            .token_successors(account_id, tokens)
            .await?
            .into_iter()
            .map(|(id, successor)| {
                let successor = Successor {
                    token_id: successor.token_id,
                    secret: TokenSecret::new(successor.secret.expose().to_string()),
                    expires_at: successor.expires_at,
                };
                (id, successor)
            })
            .collect();
        let tokens = self.store.token_states(account_id, tokens).await?;
        Ok(AccessLoad {
            slug: account.slug,
            access,
            tokens,
            guardrails,
            successors,
        })
    }
}

/// The sessions' tokio queues, as the core delivers to them.
struct SessionQueues<'a>(&'a mut HashMap<SessionId, mpsc::Sender<Outbound>>);

impl Queues for SessionQueues<'_> {
    fn try_queue(&mut self, session: SessionId, message: Outbound) -> Queued {
        let Some(queue) = self.0.get(&session) else {
            return Queued::Gone;
        };
        match queue.try_send(message) {
            Ok(()) => Queued::Yes,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(%session, "ending a session whose device does not keep up; it resyncs on reconnect");
                Queued::Full
            }
            Err(TrySendError::Closed(_)) => Queued::Gone,
        }
    }

    fn release(&mut self, session: SessionId) {
        self.0.remove(&session);
    }
}

/// Resolves when the running claims end: their outcomes, or `None` if they failed.
async fn claimed(
    claim: &mut Option<JoinHandle<Option<Vec<DeviceClaim>>>>,
) -> Option<Vec<DeviceClaim>> {
    let Some(task) = claim else {
        return std::future::pending().await;
    };
    task.await.ok().flatten()
}

/// Resolves when the running write ends: `Some(writes)` if they failed (or the task died).
async fn finished(
    write: &mut Option<(JoinHandle<bool>, Arc<AuthorizationWrites>)>,
) -> Option<AuthorizationWrites> {
    let Some((task, writes)) = write else {
        return std::future::pending().await;
    };
    match task.await {
        Ok(true) => None,
        Ok(false) | Err(_) => Some(writes.as_ref().clone()),
    }
}

async fn sleep_until(instant: Option<DateTime<Utc>>) {
    match instant {
        Some(instant) => {
            let wait = (instant - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}
