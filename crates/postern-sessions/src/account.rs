//! One account's live sessions as a sans-IO state machine: [`AccountSessions`].
//!
//! It owns the account's client and gateway sessions, its access snapshot, its devices and the
//! authorizations (grants) it has given to gateways, and decides everything about them: what a
//! device is told when it connects, who may reach what, through which gateway, until when,
//! and when a grant is renewed, updated or withdrawn. It never waits, reads no clock and draws
//! no random number of its own: the caller passes the instant to every `handle_*` input and an
//! RNG at creation, and carries out what the `poll_*` outputs ask for — messages for sessions
//! ([`AccountSessions::poll_transmit`]), session outcomes ([`AccountSessions::poll_event`]),
//! store operations ([`AccountSessions::poll_store`]) and the next instant it needs to be woken
//! ([`AccountSessions::poll_timeout`]).
//!
//! Store operations are outputs so that no withdrawal can forget its delete: a grant leaves the
//! core, its gateways and the store in the same step, and a grant read back after a restart is
//! checked against the current token, actor, policy, resource and device state before any
//! gateway hears of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use postern_access::{diff, resource_view, AccessSnapshot, View};
use postern_domain::{ChangeEvent, Device, DeviceKind, TokenGuardrails};
use postern_protocol::{
    encode, Authorization, ClientInit, ConnectParams, DisconnectReason, DnsTarget, GatewayInfo,
    GatewayInit, PortalToClient, PortalToGateway, PresharedKey, ResourceView, TokenSecret,
    TunnelAddresses, WireGuardKey,
};
use postern_store::{
    AccessData, AuthorizationWrites, DeviceClaim, LoadedAuthorization, Principal, RemoteGateway,
    StoredAuthorization, TokenState,
};
use rand::RngCore;
use uuid::Uuid;

use crate::{addresses, Outbound};

mod remote;

/// A session's number, unique within one portal process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The limits and lifetimes of an account's sessions.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// The longest an authorization lasts before it must be renewed (it also ends with the
    /// token and the allowing time window). Bounds the life of a withdrawal that is lost.
    pub authorization_lifetime: Duration,
    /// Authorizations one client device may hold at once.
    pub max_grants_per_device: usize,
    /// Access requests a session may make at once, and how many it regains per second.
    pub access_request_burst: u32,
    pub access_requests_per_second: u32,
    /// How far ahead to look for a time window opening or closing.
    pub boundary_horizon: Duration,
    /// How long to wait before retrying a failed store read or write.
    pub store_retry: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            authorization_lifetime: Duration::hours(24),
            max_grants_per_device: 512,
            access_request_burst: 20,
            access_requests_per_second: 5,
            boundary_horizon: Duration::hours(1),
            store_retry: Duration::seconds(1),
        }
    }
}

/// A device asking for a session, after its token was checked.
#[derive(Debug, Clone)]
pub struct Registration {
    pub session: SessionId,
    pub kind: DeviceKind,
    pub principal: Principal,
    pub params: ConnectParams,
    pub source_ip: Option<IpAddr>,
    /// Sessions on the same token on other portal nodes, when the token limits them
    /// (`max_clients`); 0 otherwise.
    pub remote_sessions_on_token: u32,
}

/// Why a registration was not accepted, and so what the device should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token was checked before a revocation that may concern it: check it again
    /// (`Store::recheck_token`) and register anew with the fresh principal.
    Recheck,
    /// The device's identity is bound to someone else: retrying cannot help.
    Conflict(String),
    /// The token cannot open this kind of session.
    Forbidden(String),
    /// The token works, but this device may not use it (an administrator blocked it, or it
    /// connects from outside the token's allowed networks).
    DeviceRefused(String),
    /// The token already serves as many sessions as its `max_clients` allows.
    TokenLimit(String),
    /// A passing condition (the account could not be read, the portal is stopping): retry.
    Unavailable(String),
}

/// Who a session is, for presence counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub kind: DeviceKind,
    pub device_id: String,
    pub token_id: Uuid,
}

/// What became of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Accepted; its `Init` is among the transmits.
    Registered {
        session: SessionId,
        presence: Presence,
    },
    Refused {
        session: SessionId,
        refusal: Refusal,
    },
    /// The session is gone from the core (it left, was ended or stalled): the caller drops its
    /// queue after delivering what was already transmitted to it.
    Ended {
        session: SessionId,
        presence: Presence,
    },
}

/// A message for one session.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub session: SessionId,
    pub message: Outbound,
}

/// The sessions' outbound queues, as the caller holds them: bounded, never waited on.
pub trait Queues {
    /// Queues a message for a session without waiting.
    fn try_queue(&mut self, session: SessionId, message: Outbound) -> Queued;
    /// The core is done with the session: drop its queue (what is queued is still delivered,
    /// then the session's connection closes).
    fn release(&mut self, session: SessionId);
}

/// What became of a message handed to [`Queues::try_queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// The queue is full: the device does not keep up.
    Full,
    /// Nobody reads the queue any more (the session's task ended).
    Gone,
}

/// What the core needs from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Read the account ([`AccountLoad`]) and call [`AccountSessions::handle_account_loaded`],
    /// or [`AccountSessions::handle_load_failed`].
    LoadAccount,
    /// Read the access data and the state of these tokens ([`AccessLoad`]) and call
    /// [`AccountSessions::handle_access_loaded`], or [`AccountSessions::handle_load_failed`].
    LoadAccess { tokens: Vec<Uuid> },
    /// Write these authorization changes (one transaction), then call
    /// [`AccountSessions::handle_write_done`]. The next `Write` is only asked for after that.
    Write(AuthorizationWrites),
    /// Record a device sighting; nothing to report back.
    RecordDevice(Device),
    /// Claim these new devices' rows (their ids and tunnel addresses), each on its own, then
    /// call [`AccountSessions::handle_devices_claimed`] with the outcomes in the same order (or
    /// [`AccountSessions::handle_claims_failed`]). The next claim waits for that answer.
    ClaimDevices(Vec<Device>),
    /// Tell the other portal nodes that a gateway's first session here began (`online`) or its
    /// last one here ended (`Store::announce_gateway`); nothing to report back.
    AnnounceGateway {
        gateway: Device,
        token_id: Uuid,
        endpoint: Option<String>,
        online: bool,
    },
    /// Write at once that these client devices are approved (their token no longer requires
    /// approval when they were seen): not buffered like a sighting, so that a crash cannot
    /// leave a device with grants recorded as waiting. Nothing to report back.
    ApproveDevices(Vec<Uuid>),
    /// Remove these devices' rows (ephemeral ones that said goodbye), audited, and tell every
    /// node (`Store::remove_devices`); nothing to report back.
    RemoveDevices { ids: Vec<Uuid>, why: String },
    /// Audit that a client device moved from a rotated token to its successor
    /// (`Store::record_token_move`); nothing to report back.
    RecordTokenMove {
        device: Uuid,
        device_id: String,
        from: Uuid,
        to: Uuid,
    },
    /// Read the account's stored grants and the gateways on other nodes ([`GrantsLoad`]) again
    /// and call [`AccountSessions::handle_grants_loaded`], or
    /// [`AccountSessions::handle_load_failed`]: other nodes' writes may have been missed.
    LoadGrants,
}

/// The account as stored, read when its first session arrives.
#[derive(Debug, Clone)]
pub struct AccountLoad {
    pub slug: String,
    pub access: AccessData,
    pub devices: Vec<Device>,
    pub authorizations: Vec<LoadedAuthorization>,
    /// Gateways with sessions on other live portal nodes.
    pub remote_gateways: Vec<RemoteGateway>,
}

/// The account's grants and other nodes' gateways, read again after a gap in the change feed.
#[derive(Debug, Clone)]
pub struct GrantsLoad {
    pub authorizations: Vec<LoadedAuthorization>,
    pub remote_gateways: Vec<RemoteGateway>,
}

/// A decided authorization write, the last decision about a grant winning.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// A new grant (an upsert).
    Save(StoredAuthorization),
    /// A grant that exists: written only if its row still does (another node may have deleted
    /// it, and then it stays deleted).
    Update(StoredAuthorization),
    Delete,
}

/// The account's access data read again after a change, with the tokens asked for.
#[derive(Debug, Clone)]
pub struct AccessLoad {
    pub slug: String,
    pub access: AccessData,
    /// Tokens that no longer exist are missing.
    pub tokens: HashMap<Uuid, TokenState>,
    /// The guardrails of the same tokens, as they are now.
    pub guardrails: HashMap<Uuid, TokenGuardrails>,
    /// The successors of those of the same tokens that were rotated and are in their overlap
    /// window.
    pub successors: HashMap<Uuid, Successor>,
}

/// The token that replaces a rotated one, to hand to the clients still connected with it.
#[derive(Debug, Clone)]
pub struct Successor {
    pub token_id: Uuid,
    pub secret: TokenSecret,
    pub expires_at: DateTime<Utc>,
}

/// What is stored of a grant, so that a restarted portal still knows (and can withdraw) it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct StoredGrant {
    authorization: Authorization,
    client_ip: Option<IpAddr>,
    #[serde(default)]
    gateway_public_key: Option<WireGuardKey>,
}

/// An authorization given to a gateway for one client device and one resource.
#[derive(Debug, Clone)]
struct Grant {
    authorization: Authorization,
    token_id: Uuid,
    /// The address the policy was evaluated for.
    client_ip: Option<IpAddr>,
    gateway_device: String,
    /// The gateway's key when granted: the client's tunnel uses it.
    gateway_public_key: Option<WireGuardKey>,
    /// The client session it serves, while one does: only then is it renewed.
    session: Option<SessionId>,
    /// When the core next looks at it (renewal or expiry); its key in `Grants::wakeups`.
    wake_at: DateTime<Utc>,
}

impl Grant {
    fn id(&self) -> Uuid {
        self.authorization.id
    }

    fn stored(&self) -> StoredAuthorization {
        let body = StoredGrant {
            authorization: self.authorization.clone(),
            client_ip: self.client_ip,
            gateway_public_key: self.gateway_public_key,
        };
        StoredAuthorization {
            id: self.authorization.id,
            token_id: self.token_id,
            gateway_device_id: self.gateway_device.clone(),
            expires_at: self.authorization.expires_at,
            // Plain data with string keys: serialising cannot fail.
            body: serde_json::to_value(body).unwrap_or_default(),
        }
    }
}

/// The grants with the indexes every decision needs, kept in step in one place.
#[derive(Debug, Default)]
struct Grants {
    by_id: HashMap<Uuid, Grant>,
    /// One grant per (client device, resource).
    by_pair: HashMap<(String, Uuid), Uuid>,
    by_client: HashMap<String, HashSet<Uuid>>,
    by_gateway: HashMap<String, HashSet<Uuid>>,
    by_token: HashMap<Uuid, HashSet<Uuid>>,
    wakeups: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Grants {
    fn insert(&mut self, grant: Grant) {
        let id = grant.id();
        self.remove(id);
        let client = grant.authorization.client_device_id.clone();
        self.by_pair
            .insert((client.clone(), grant.authorization.resource.id), id);
        self.by_client.entry(client).or_default().insert(id);
        self.by_gateway
            .entry(grant.gateway_device.clone())
            .or_default()
            .insert(id);
        self.by_token.entry(grant.token_id).or_default().insert(id);
        self.wakeups.insert((grant.wake_at, id));
        self.by_id.insert(id, grant);
    }

    fn remove(&mut self, id: Uuid) -> Option<Grant> {
        let grant = self.by_id.remove(&id)?;
        let client = &grant.authorization.client_device_id;
        let pair = (client.clone(), grant.authorization.resource.id);
        if self.by_pair.get(&pair) == Some(&id) {
            self.by_pair.remove(&pair);
        }
        remove_from(&mut self.by_client, client, &id);
        remove_from(&mut self.by_gateway, &grant.gateway_device, &id);
        remove_from(&mut self.by_token, &grant.token_id, &id);
        self.wakeups.remove(&(grant.wake_at, id));
        Some(grant)
    }

    fn rebind_token(&mut self, id: Uuid, token_id: Uuid) {
        let Some(grant) = self.by_id.get_mut(&id) else {
            return;
        };
        let previous = std::mem::replace(&mut grant.token_id, token_id);
        remove_from(&mut self.by_token, &previous, &id);
        self.by_token.entry(token_id).or_default().insert(id);
    }

    fn set_wake(&mut self, id: Uuid, at: DateTime<Utc>) {
        let Some(grant) = self.by_id.get_mut(&id) else {
            return;
        };
        self.wakeups.remove(&(grant.wake_at, id));
        grant.wake_at = at;
        self.wakeups.insert((at, id));
    }

    fn ids_of<K: std::hash::Hash + Eq>(index: &HashMap<K, HashSet<Uuid>>, key: &K) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = index.get(key).into_iter().flatten().copied().collect();
        ids.sort();
        ids
    }

    fn count_at_gateway(&self, gateway_device: &str) -> usize {
        self.by_gateway.get(gateway_device).map_or(0, HashSet::len)
    }

    fn all_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.by_id.keys().copied().collect();
        ids.sort();
        ids
    }
}

/// Removes `value` from the set at `key`, and the set when it becomes empty.
fn remove_from<Q, K, V>(index: &mut HashMap<Q, HashSet<V>>, key: &K, value: &V)
where
    Q: std::borrow::Borrow<K> + std::hash::Hash + Eq,
    K: std::hash::Hash + Eq + ?Sized,
    V: std::hash::Hash + Eq,
{
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// A live session, as the core knows it.
#[derive(Debug)]
struct Session {
    kind: DeviceKind,
    device_id: String,
    actor_id: Option<Uuid>,
    site_id: Option<Uuid>,
    token_id: Uuid,
    token_expires_at: DateTime<Utc>,
    source_ip: Option<IpAddr>,
    /// Gateways: where clients reach their WireGuard listener.
    endpoint: Option<String>,
    /// Clients: what they were last told they may reach.
    view: Arc<View>,
    /// Clients: the access-request allowance.
    requests: Bucket,
    /// Clients: until when a throttled session is not told again that it is throttled (one
    /// notice a second, so that a flood cannot fill its own queue with refusals).
    throttle_notice_until: Option<DateTime<Utc>>,
    /// Clients: the device waits for an administrator's approval (its token requires one):
    /// it is shown no resource and granted nothing.
    held: bool,
    /// Clients: it was handed its token's successor (a rotation) and is not told again.
    successor_offered: bool,
}

impl Session {
    fn presence(&self) -> Presence {
        Presence {
            kind: self.kind,
            device_id: self.device_id.clone(),
            token_id: self.token_id,
        }
    }
}

/// A token bucket: `burst` requests at once, `per_second` more each second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

impl Bucket {
    fn full(burst: u32, now: DateTime<Utc>) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn take(&mut self, burst: u32, per_second: u32, now: DateTime<Utc>) -> bool {
        let elapsed = (now - self.at).num_milliseconds().max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * f64::from(per_second)).min(f64::from(burst));
        self.at = self.at.max(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The account as last read.
#[derive(Debug)]
struct Loaded {
    slug: String,
    snapshot: AccessSnapshot,
    devices: HashMap<(DeviceKind, String), Device>,
    /// Which device holds a WireGuard public key.
    keys: HashMap<WireGuardKey, (DeviceKind, String)>,
    used_ipv4: HashSet<Ipv4Addr>,
    site_names: HashMap<Uuid, String>,
    /// Client devices an administrator blocked, by id and by the key they had then.
    blocked: Blocked,
    /// The next time window boundary (a view may change on its own then).
    next_boundary: DateTime<Utc>,
}

/// Blocked client devices: refused by id, and by the WireGuard key they had when blocked (a
/// copy of the device under another id is refused too).
#[derive(Debug, Default)]
struct Blocked {
    ids: HashSet<String>,
    keys: HashSet<WireGuardKey>,
}

impl Blocked {
    fn from(list: &[postern_store::BlockedDevice]) -> Self {
        Blocked {
            ids: list.iter().map(|b| b.device_id.clone()).collect(),
            keys: list.iter().filter_map(|b| b.public_key).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.keys.is_empty()
    }

    fn refuses(&self, device_id: &str, key: Option<&WireGuardKey>) -> bool {
        self.ids.contains(device_id) || key.is_some_and(|k| self.keys.contains(k))
    }
}

impl Loaded {
    /// Forgets the devices the database deleted with their actor or site (their addresses and
    /// keys are free again); returns their device ids.
    fn forget_devices(&mut self, gone: impl Fn(&Device) -> bool) -> Vec<String> {
        let keys: Vec<(DeviceKind, String)> = self
            .devices
            .iter()
            .filter(|(_, d)| gone(d))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            let Some(device) = self.devices.remove(key) else {
                continue;
            };
            self.used_ipv4.remove(&device.ipv4);
            if let Some(public_key) = &device.public_key {
                if self.keys.get(public_key) == Some(key) {
                    self.keys.remove(public_key);
                }
            }
        }
        keys.into_iter().map(|(_, id)| id).collect()
    }
}

/// A new device's row being claimed. The device's sessions run meanwhile, with the address
/// reserved here, but nothing is granted to it until the row is its own.
#[derive(Debug)]
struct Claim {
    device: Device,
    /// Access requests of the device's sessions, answered once the claim succeeds.
    requests: Vec<(SessionId, Uuid, Option<DnsTarget>)>,
    /// Handed to the caller in a `StoreOp::ClaimDevices`.
    sent: bool,
}

/// An input that waits for the account to be read.
#[derive(Debug)]
enum Deferred {
    Register(Box<Registration>),
    RequestAccess {
        session: SessionId,
        resource_id: Uuid,
        dns: Option<DnsTarget>,
    },
}

/// Where reading the account stands.
#[derive(Debug, Clone, PartialEq)]
enum LoadState {
    /// Not asked for yet, or asked for and not handed to the caller.
    Wanted(StoreOp),
    /// Handed to the caller; its answer is awaited.
    InFlight,
    /// Failed: ask again at this instant.
    RetryAt(DateTime<Utc>, StoreOp),
    Idle,
}

/// Why a grant goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Withdrawal {
    /// The client is told too (`access_denied`), so that it asks again.
    TellClient,
    /// The client is gone or learns it otherwise (its session ends, the resource leaves its
    /// view, or a new grant follows at once).
    Quietly,
}

/// One account's live sessions. See the module documentation.
pub struct AccountSessions {
    /// The account these sessions belong to; every store operation is scoped to it.
    account_id: Uuid,
    /// Limits and lifetimes, fixed at creation.
    config: SessionsConfig,
    /// Draws authorization ids, preshared keys and device row ids (injected: tests seed it).
    rng: Box<dyn RngCore + Send + Sync>,
    /// The highest revocation generation among the changes handled: a registration whose
    /// token was checked at an older generation is sent back to be checked again.
    revocations_seen: u64,
    /// The account as last read: snapshot, devices, keys, addresses; `None` before the first
    /// session.
    loaded: Option<Loaded>,
    /// Whether a read is wanted, out with the caller, or waiting to be retried.
    load: LoadState,
    /// Tokens to check with the next access load (after a gap in the change feed).
    tokens_to_check: HashSet<Uuid>,
    /// A change arrived while a read was in flight: that read may predate it.
    reload_after_flight: bool,
    /// Registrations and access requests waiting for a current read, in arrival order.
    deferred: VecDeque<Deferred>,
    /// Registered client sessions.
    clients: HashMap<SessionId, Session>,
    /// Registered gateway sessions.
    gateways: HashMap<SessionId, Session>,
    /// Sessions by token, so that a revocation ends them without a scan.
    by_token: HashMap<Uuid, HashSet<SessionId>>,
    /// Sessions by device: the gateway sessions a grant goes to, the client sessions it serves.
    by_device: HashMap<(DeviceKind, String), HashSet<SessionId>>,
    /// Sessions by their token's expiry: they end then.
    expiries: BTreeSet<(DateTime<Utc>, SessionId)>,
    /// The authorizations given to gateways, with their indexes.
    grants: Grants,
    /// Views computed since the snapshot last changed, shared by sessions with the same key.
    view_cache: HashMap<(Uuid, Option<IpAddr>), Arc<View>>,
    /// Authorization writes decided and not yet handed out, by id: the last decision wins.
    writes: HashMap<Uuid, Write>,
    /// The ids the `StoreOp::Write` out with the caller writes.
    writing: HashSet<Uuid>,
    /// New grants through a gateway on another node, by id: the client hears of them once the
    /// write has committed (and the gateway's node has been told, in the same transaction).
    granted_after_write: HashMap<Uuid, SessionId>,
    /// A `StoreOp::Write` is out with the caller: the next waits for its answer.
    write_in_flight: bool,
    /// A write failed: the next is asked for at this instant.
    write_retry_at: Option<DateTime<Utc>>,
    /// Messages for sessions, in the order decided ([`Self::poll_transmit`]).
    transmits: VecDeque<Transmit>,
    /// Session outcomes ([`Self::poll_event`]).
    events: VecDeque<Event>,
    /// Device sightings to record ([`Self::poll_store`]).
    store_ops: VecDeque<StoreOp>,
    /// Set by [`Self::handle_shutdown`]: registrations are refused from then on.
    shutting_down: bool,
    /// New devices whose rows are being claimed, by device.
    claims: BTreeMap<(DeviceKind, String), Claim>,
    /// The devices of the `StoreOp::ClaimDevices` out with the caller, in its order.
    claims_in_flight: Vec<(DeviceKind, String)>,
    /// Gateways with sessions on other portal nodes: device id → node → endpoint.
    remote_gateways: HashMap<String, BTreeMap<Uuid, Option<String>>>,
    /// Other nodes' grant writes and gateway presence that arrived while a read was pending,
    /// applied in order after it; past [`REMOTE_PENDING`] the grants are read again instead.
    remote_pending: VecDeque<ChangeEvent>,
    /// Tokens revoked lately: a grant another node made with one just before it heard of the
    /// revocation is deleted here rather than given to a gateway.
    revoked_tokens: HashSet<Uuid>,
    revoked_order: VecDeque<Uuid>,
    /// Grants deleted lately (ids are never reused): another node's save of one, committed
    /// before the delete but heard after it, must not bring it back.
    deleted_grants: HashSet<Uuid>,
    deleted_order: VecDeque<Uuid>,
    /// Other nodes' writes may have been missed: read the grants again once current.
    grants_stale: bool,
}

/// Remote changes kept while a read is pending.
const REMOTE_PENDING: usize = 65_536;
/// Revoked tokens and deleted grants remembered (the races they cover last as long as the
/// change feed takes to deliver).
const REVOKED_REMEMBERED: usize = 65_536;
const DELETED_REMEMBERED: usize = 65_536;

impl AccountSessions {
    /// An account with no sessions yet. `revocation_generation` is the store's generation now
    /// (`Store::revocation_generation`); `rng` draws authorization ids and preshared keys, so
    /// it must be a cryptographic one outside tests.
    pub fn new(
        account_id: Uuid,
        config: SessionsConfig,
        revocation_generation: u64,
        rng: Box<dyn RngCore + Send + Sync>,
    ) -> Self {
        Self {
            account_id,
            config,
            rng,
            revocations_seen: revocation_generation,
            loaded: None,
            load: LoadState::Idle,
            tokens_to_check: HashSet::new(),
            reload_after_flight: false,
            deferred: VecDeque::new(),
            clients: HashMap::new(),
            gateways: HashMap::new(),
            by_token: HashMap::new(),
            by_device: HashMap::new(),
            expiries: BTreeSet::new(),
            grants: Grants::default(),
            view_cache: HashMap::new(),
            writes: HashMap::new(),
            writing: HashSet::new(),
            granted_after_write: HashMap::new(),
            write_in_flight: false,
            write_retry_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            store_ops: VecDeque::new(),
            shutting_down: false,
            claims: BTreeMap::new(),
            claims_in_flight: Vec::new(),
            remote_gateways: HashMap::new(),
            remote_pending: VecDeque::new(),
            revoked_tokens: HashSet::new(),
            revoked_order: VecDeque::new(),
            deleted_grants: HashSet::new(),
            deleted_order: VecDeque::new(),
            grants_stale: false,
        }
    }

    pub fn account_id(&self) -> Uuid {
        self.account_id
    }

    /// Whether this device's row is still being claimed (its sessions run on a reserved
    /// address and are granted nothing meanwhile).
    pub fn is_claiming(&self, kind: DeviceKind, device_id: &str) -> bool {
        self.claims.contains_key(&(kind, device_id.to_string()))
    }

    /// Whether the account has been read (it is, from the first session on).
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// How many sessions are registered.
    pub fn session_count(&self) -> usize {
        self.clients.len() + self.gateways.len()
    }

    /// Authorization writes decided but not yet known to be stored (queued, in flight, or
    /// waiting to be retried).
    pub fn pending_writes(&self) -> usize {
        self.writes.len() + usize::from(self.write_in_flight)
    }

    /// The authorizations currently given to gateways, in id order (for tests and status).
    pub fn authorizations(&self) -> Vec<&Authorization> {
        let mut all: Vec<&Authorization> = self
            .grants
            .by_id
            .values()
            .map(|g| &g.authorization)
            .collect();
        all.sort_by_key(|a| a.id);
        all
    }

    // ----- inputs -----

    /// A device asks for a session. The outcome comes out of [`Self::poll_event`]; an accepted
    /// session's `Init` out of [`Self::poll_transmit`]. Waits for the account to be read.
    pub fn handle_register(&mut self, registration: Registration, now: DateTime<Utc>) {
        if self.shutting_down {
            self.refuse(
                registration.session,
                Refusal::Unavailable("the portal is shutting down".into()),
            );
            return;
        }
        if !self.is_current() {
            self.defer(Deferred::Register(Box::new(registration)));
            return;
        }
        self.register(registration, now);
    }

    /// The session ended on its own (the device left or its connection broke).
    pub fn handle_unregister(&mut self, session: SessionId, now: DateTime<Utc>) {
        self.end(session, now);
    }

    /// The session ended after the client said goodbye (a clean stop): an ephemeral device
    /// goes with it. While the account is being read again the device stays, and the sweep
    /// removes it once its timeout has passed.
    pub fn handle_goodbye(&mut self, session: SessionId, now: DateTime<Utc>) {
        if self.is_current() {
            self.goodbye(session, now);
        }
        self.end(session, now);
    }

    /// The caller could not queue a message for the session (its queue is full): the session
    /// ends, so that the device reconnects and starts again from a fresh `Init` — nothing it
    /// was told is lost while the portal moves on.
    pub fn handle_stalled(&mut self, session: SessionId, now: DateTime<Utc>) {
        self.end(session, now);
    }

    /// A client asks for access to a resource; the answer (`access_granted` or
    /// `access_denied`) comes out of [`Self::poll_transmit`].
    pub fn handle_request_access(
        &mut self,
        session: SessionId,
        resource_id: Uuid,
        dns: Option<DnsTarget>,
        now: DateTime<Utc>,
    ) {
        if !self.clients.contains_key(&session) {
            return;
        }
        if !self.is_current() {
            self.defer(Deferred::RequestAccess {
                session,
                resource_id,
                dns,
            });
            return;
        }
        self.request_access(session, resource_id, dns, now);
    }

    /// A committed change of the account. `generation` is the store's revocation generation
    /// when the change was handed over (`Store::revocation_generation`).
    pub fn handle_change(&mut self, event: &ChangeEvent, generation: u64, now: DateTime<Utc>) {
        if revokes_credentials(event) {
            self.revocations_seen = self.revocations_seen.max(generation);
        }
        match event {
            ChangeEvent::AuthorizationsWritten { .. }
            | ChangeEvent::DevicesClaimed { .. }
            | ChangeEvent::GatewayPresence { .. } => {
                self.handle_remote(event, now);
            }
            ChangeEvent::TokensRevoked { token_ids, .. } => {
                for token_id in token_ids {
                    self.remember_revoked(*token_id);
                    self.end_token(
                        *token_id,
                        DisconnectReason::TokenRevoked,
                        "the token was revoked",
                        now,
                    );
                }
            }
            ChangeEvent::ActorDisabled { actor_id, .. } => {
                self.end_actor(
                    *actor_id,
                    DisconnectReason::ActorDisabled,
                    "the service account was disabled",
                    now,
                );
                self.want_reload();
            }
            ChangeEvent::ActorDeleted { actor_id, .. } => {
                self.end_actor(
                    *actor_id,
                    DisconnectReason::ActorDeleted,
                    "the service account was deleted",
                    now,
                );
                if let Some(loaded) = &mut self.loaded {
                    loaded.forget_devices(|d| d.actor_id == Some(*actor_id));
                }
                self.want_reload();
            }
            ChangeEvent::SiteDeleted { site_id, .. } => {
                let sessions: Vec<SessionId> = sorted(
                    self.gateways
                        .iter()
                        .filter(|(_, s)| s.site_id == Some(*site_id))
                        .map(|(id, _)| *id),
                );
                for session in sessions {
                    self.close(
                        session,
                        DisconnectReason::SiteDeleted,
                        "the site was deleted",
                        now,
                    );
                }
                let gone_devices = match &mut self.loaded {
                    Some(loaded) => loaded.forget_devices(|d| d.site_id == Some(*site_id)),
                    None => Vec::new(),
                };
                for device in gone_devices {
                    let ids = Grants::ids_of(&self.grants.by_gateway, &device);
                    self.withdraw(
                        &ids,
                        "the gateway's site was deleted",
                        Withdrawal::TellClient,
                    );
                }
                self.want_reload();
            }
            ChangeEvent::DeviceBlocked { device_id, .. } => {
                // Refused from now on: the reload brings the blocked list, and registrations
                // wait for it.
                self.end_client_device(device_id, now);
                self.want_reload();
            }
            ChangeEvent::DeviceUnblocked { .. } => self.want_reload(),
            ChangeEvent::DeviceApproved { device_id, .. } => self.approve_device(device_id, now),
            ChangeEvent::DevicesRemoved {
                kind, device_ids, ..
            } => self.remove_devices(*kind, device_ids, now),
            ChangeEvent::TokenRotated {
                token_id,
                expires_at,
                ..
            } => {
                // Cut at once to the end of its window; the reload brings the successor to
                // hand to its clients.
                self.shorten_token(*token_id, *expires_at, now);
                if self.by_token.contains_key(token_id) {
                    self.tokens_to_check.insert(*token_id);
                    self.want_reload();
                }
            }
            ChangeEvent::TokenUpdated { token_id, .. } => {
                // Its guardrails may have changed: the reload reads them for its sessions.
                if self.by_token.contains_key(token_id) {
                    self.tokens_to_check.insert(*token_id);
                    self.want_reload();
                }
            }
            ChangeEvent::ActorEnabled { .. }
            | ChangeEvent::GroupDeleted { .. }
            | ChangeEvent::MembershipChanged { .. }
            | ChangeEvent::ResourceCreated { .. }
            | ChangeEvent::ResourceUpdated { .. }
            | ChangeEvent::ResourceDeleted { .. }
            | ChangeEvent::PolicyCreated { .. }
            | ChangeEvent::PolicyUpdated { .. }
            | ChangeEvent::PolicyDeleted { .. }
            | ChangeEvent::AccountUpdated { .. } => self.want_reload(),
            ChangeEvent::TokenCreated { .. }
            | ChangeEvent::ActorCreated { .. }
            | ChangeEvent::ActorUpdated { .. }
            | ChangeEvent::GroupCreated { .. }
            | ChangeEvent::GroupUpdated { .. }
            | ChangeEvent::SiteCreated { .. }
            | ChangeEvent::SiteUpdated { .. } => {}
        }
    }

    /// Changes may have been missed (the change feed lagged or was cut): read the account
    /// again, check every token in use, and correct every session and grant that no longer
    /// holds. Sessions that still hold are not disturbed.
    /// `generation` is the store's revocation generation when the gap was noticed.
    pub fn handle_resync(&mut self, generation: u64) {
        self.revocations_seen = self.revocations_seen.max(generation);
        self.tokens_to_check.extend(self.by_token.keys().copied());
        self.tokens_to_check
            .extend(self.grants.by_token.keys().copied());
        self.grants_stale = self.loaded.is_some();
        self.announce_local_gateways();
        self.want_reload();
    }

    /// The portal is stopping: every session is told, so devices know to reconnect.
    pub fn handle_shutdown(&mut self, now: DateTime<Utc>) {
        self.shutting_down = true;
        let sessions: Vec<SessionId> = self.all_sessions();
        for session in sessions {
            self.close(
                session,
                DisconnectReason::ServerShutdown,
                "the portal is restarting; reconnect",
                now,
            );
        }
        for deferred in std::mem::take(&mut self.deferred) {
            if let Deferred::Register(registration) = deferred {
                self.refuse(
                    registration.session,
                    Refusal::Unavailable("the portal is shutting down".into()),
                );
            }
        }
        self.claims.clear();
        self.claims_in_flight.clear();
    }

    /// The answer to [`StoreOp::LoadAccount`].
    pub fn handle_account_loaded(&mut self, load: AccountLoad, now: DateTime<Utc>) {
        self.load = LoadState::Idle;
        let site_names = load.access.site_names.clone();
        let blocked = Blocked::from(&load.access.blocked_devices);
        let mut loaded = Loaded {
            slug: load.slug,
            snapshot: snapshot_of(load.access),
            devices: HashMap::new(),
            keys: HashMap::new(),
            used_ipv4: HashSet::new(),
            site_names,
            blocked,
            next_boundary: now,
        };
        for device in load.devices {
            let key = (device.kind, device.device_id.clone());
            loaded.used_ipv4.insert(device.ipv4);
            if let Some(public_key) = &device.public_key {
                loaded.keys.insert(*public_key, key.clone());
            }
            loaded.devices.insert(key, device);
        }
        loaded.next_boundary =
            postern_access::next_time_boundary(&loaded.snapshot, now, self.config.boundary_horizon);
        self.loaded = Some(loaded);
        self.view_cache.clear();
        self.restore(load.authorizations, now);
        self.end_blocked_clients(now);
        self.take_remote_gateways(load.remote_gateways, now);
        self.after_load(now);
    }

    /// The answer to [`StoreOp::LoadAccess`].
    pub fn handle_access_loaded(&mut self, load: AccessLoad, now: DateTime<Utc>) {
        self.load = LoadState::Idle;
        let Some(loaded) = &mut self.loaded else {
            self.load = LoadState::Wanted(StoreOp::LoadAccount);
            return;
        };
        loaded.slug = load.slug;
        loaded.site_names = load.access.site_names.clone();
        loaded.blocked = Blocked::from(&load.access.blocked_devices);
        loaded.snapshot = snapshot_of(load.access);
        loaded.next_boundary =
            postern_access::next_time_boundary(&loaded.snapshot, now, self.config.boundary_horizon);
        self.view_cache.clear();
        let checked: Vec<Uuid> = sorted(self.tokens_to_check.drain());
        for token_id in checked {
            let state = load.tokens.get(&token_id).filter(|t| t.is_usable(now));
            let Some(state) = state else {
                self.end_token(
                    token_id,
                    DisconnectReason::TokenRevoked,
                    "the token no longer authenticates",
                    now,
                );
                continue;
            };
            self.shorten_token(token_id, state.expires_at, now);
            if let Some(guardrails) = load.guardrails.get(&token_id) {
                self.apply_guardrails(token_id, guardrails, now);
            }
            if let Some(successor) = load.successors.get(&token_id) {
                self.offer_successor(token_id, successor, state.expires_at);
            }
        }
        self.end_blocked_clients(now);
        self.refresh(now);
        self.after_load(now);
    }

    /// A [`StoreOp::LoadAccount`] or [`StoreOp::LoadAccess`] failed: it is asked for again
    /// after `store_retry`; registrations waiting for a first load are refused as unavailable.
    pub fn handle_load_failed(&mut self, op: StoreOp, now: DateTime<Utc>) {
        self.load = LoadState::RetryAt(now + self.config.store_retry, op);
        if self.loaded.is_none() {
            for deferred in std::mem::take(&mut self.deferred) {
                if let Deferred::Register(registration) = deferred {
                    self.refuse(
                        registration.session,
                        Refusal::Unavailable("the portal could not read the account".into()),
                    );
                }
            }
        }
    }

    /// The last [`StoreOp::Write`] finished; when it failed, pass it back (`failed`) and it is
    /// written again after `store_retry`, under any newer decision about the same grants.
    pub fn handle_write_done(&mut self, failed: Option<AuthorizationWrites>, now: DateTime<Utc>) {
        self.write_in_flight = false;
        let written = std::mem::take(&mut self.writing);
        let Some(batch) = failed else {
            for id in sorted(written) {
                if let Some(session) = self.granted_after_write.remove(&id) {
                    self.send_granted(session, id);
                }
            }
            return;
        };
        for stored in batch.save {
            match self.writes.get(&stored.id) {
                // A change decided since: it must create the row the failed save did not.
                Some(Write::Update(newer)) => {
                    let newer = newer.clone();
                    self.writes.insert(stored.id, Write::Save(newer));
                }
                Some(_) => {}
                None => {
                    self.writes.insert(stored.id, Write::Save(stored));
                }
            }
        }
        for stored in batch.update {
            self.writes
                .entry(stored.id)
                .or_insert(Write::Update(stored));
        }
        for id in batch.delete {
            self.writes.entry(id).or_insert(Write::Delete);
        }
        self.write_retry_at = Some(now + self.config.store_retry);
    }

    /// The outcomes of the last [`StoreOp::ClaimDevices`], in its order. A claimed row lets
    /// the device's waiting access requests through. When another node won the race — it took
    /// the address, or wrote a row for the same id — the device's sessions are told to
    /// reconnect: the next registration finds a fresh address, or the other node's row (whose
    /// holder decides, a different service account being refused as a conflict).
    pub fn handle_devices_claimed(&mut self, outcomes: Vec<DeviceClaim>, now: DateTime<Utc>) {
        let keys = std::mem::take(&mut self.claims_in_flight);
        let mut outcomes = outcomes.into_iter();
        for key in keys {
            let Some(claim) = self.claims.remove(&key) else {
                continue;
            };
            let outcome = outcomes.next();
            if outcome == Some(DeviceClaim::Claimed) {
                let approved_meanwhile = claim.device.approved_at.is_none()
                    && self
                        .device(key.0, &key.1)
                        .is_some_and(|d| d.approved_at.is_some());
                if approved_meanwhile {
                    self.store_ops
                        .push_back(StoreOp::ApproveDevices(vec![claim.device.id]));
                }
                for (session, resource_id, dns) in claim.requests {
                    self.handle_request_access(session, resource_id, dns, now);
                }
                continue;
            }
            let Some(loaded) = self.loaded.as_mut() else {
                continue;
            };
            if loaded.devices.get(&key).map(|d| d.id) == Some(claim.device.id) {
                loaded.devices.remove(&key);
            }
            if let Some(public_key) = &claim.device.public_key {
                if loaded.keys.get(public_key) == Some(&key) {
                    loaded.keys.remove(public_key);
                }
            }
            let why = match outcome {
                Some(DeviceClaim::IdTaken(existing)) => {
                    loaded.used_ipv4.remove(&claim.device.ipv4);
                    loaded.used_ipv4.insert(existing.ipv4);
                    if let Some(public_key) = &existing.public_key {
                        loaded
                            .keys
                            .entry(*public_key)
                            .or_insert_with(|| key.clone());
                    }
                    loaded.devices.insert(key.clone(), *existing);
                    "another portal node registered this device meanwhile; reconnect"
                }
                // The address stays marked used: another device of the account holds it.
                Some(DeviceClaim::AddressTaken) => {
                    "another portal node gave this device's address away meanwhile; reconnect"
                }
                Some(DeviceClaim::Claimed) | None => {
                    loaded.used_ipv4.remove(&claim.device.ipv4);
                    "the portal could not record this device; reconnect"
                }
            };
            for session in self.sessions_of(key.0, &key.1) {
                self.close(session, DisconnectReason::ServerShutdown, why, now);
            }
        }
    }

    /// The last [`StoreOp::ClaimDevices`] failed: the devices' sessions are told to reconnect
    /// (they claim again), and the addresses they reserved are free again.
    pub fn handle_claims_failed(&mut self, now: DateTime<Utc>) {
        self.handle_devices_claimed(Vec::new(), now);
    }

    /// Time passed: time windows open and close, grants are renewed or expire, failed store
    /// operations are retried. Call at (or after) [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: DateTime<Utc>) {
        if let LoadState::RetryAt(at, op) = &self.load {
            if *at <= now {
                self.load = LoadState::Wanted(op.clone());
            }
        }
        if self.write_retry_at.is_some_and(|at| at <= now) {
            self.write_retry_at = None;
        }
        let horizon = self.config.boundary_horizon;
        let boundary_due = match &mut self.loaded {
            Some(loaded) if loaded.next_boundary <= now => {
                loaded.next_boundary =
                    postern_access::next_time_boundary(&loaded.snapshot, now, horizon);
                true
            }
            _ => false,
        };
        // With a read pending, its answer refreshes everything anyway.
        if boundary_due && self.is_current() {
            self.refresh(now);
        }
        while let Some(&(at, session)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.close(
                session,
                DisconnectReason::TokenExpired,
                "the token expired",
                now,
            );
        }
        self.wake_grants(now);
    }

    // ----- outputs -----

    /// The next message for a session. Deliver it without waiting; when the session's queue
    /// is full, call [`Self::handle_stalled`] ([`Self::deliver`] does all of this).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Whether messages wait to be delivered.
    pub fn has_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Hands every pending message to its session's queue. A full queue ends its session
    /// ([`Self::handle_stalled`]), so no message is ever dropped while the session lives on; a
    /// queue nobody reads ends it as gone. A `Close` releases the queue once queued.
    pub fn deliver(&mut self, queues: &mut impl Queues, now: DateTime<Utc>) {
        while let Some(Transmit { session, message }) = self.poll_transmit() {
            let closing = matches!(message, Outbound::Close { .. });
            match queues.try_queue(session, message) {
                Queued::Yes if closing => queues.release(session),
                Queued::Yes => {}
                Queued::Full => {
                    queues.release(session);
                    self.handle_stalled(session, now);
                }
                Queued::Gone => {
                    queues.release(session);
                    self.handle_unregister(session, now);
                }
            }
        }
    }

    /// The next session outcome.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next store operation to carry out. Loads and writes come one at a time: the next
    /// only after the answer to the previous one of its kind.
    pub fn poll_store(&mut self) -> Option<StoreOp> {
        if let Some(op) = self.store_ops.pop_front() {
            return Some(op);
        }
        if let LoadState::Wanted(op) = &self.load {
            let op = op.clone();
            self.load = LoadState::InFlight;
            return Some(op);
        }
        if self.claims_in_flight.is_empty() {
            let mut devices = Vec::new();
            for (key, claim) in self.claims.iter_mut().filter(|(_, c)| !c.sent) {
                claim.sent = true;
                devices.push(claim.device.clone());
                self.claims_in_flight.push(key.clone());
            }
            if !devices.is_empty() {
                return Some(StoreOp::ClaimDevices(devices));
            }
        }
        if self.write_in_flight || self.write_retry_at.is_some() || self.writes.is_empty() {
            return None;
        }
        let mut batch = AuthorizationWrites::default();
        let mut writes: Vec<(Uuid, Write)> = self.writes.drain().collect();
        writes.sort_by_key(|(id, _)| *id);
        for (id, write) in writes {
            self.writing.insert(id);
            match write {
                Write::Save(stored) => batch.save.push(stored),
                Write::Update(stored) => batch.update.push(stored),
                Write::Delete => {
                    self.remember_deleted(id);
                    batch.delete.push(id);
                }
            }
        }
        self.write_in_flight = true;
        Some(StoreOp::Write(batch))
    }

    /// When [`Self::handle_timeout`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        let mut next: Option<DateTime<Utc>> = None;
        let mut consider = |at: DateTime<Utc>| {
            next = Some(next.map_or(at, |n| n.min(at)));
        };
        if let LoadState::RetryAt(at, _) = &self.load {
            consider(*at);
        }
        if let Some(at) = self.write_retry_at {
            consider(at);
        }
        if let Some((at, _)) = self.grants.wakeups.first() {
            consider(*at);
        }
        if let Some((at, _)) = self.expiries.first() {
            consider(*at);
        }
        if let Some(loaded) = &self.loaded {
            if !self.clients.is_empty() || !self.grants.by_id.is_empty() {
                consider(loaded.next_boundary);
            }
        }
        next
    }

    // ----- loading -----

    /// Whether decisions can be made now: the account is read and no re-read is pending.
    fn is_current(&self) -> bool {
        self.loaded.is_some() && self.load == LoadState::Idle
    }

    fn defer(&mut self, deferred: Deferred) {
        if self.loaded.is_none() && matches!(self.load, LoadState::Idle) {
            self.load = LoadState::Wanted(StoreOp::LoadAccount);
        }
        if let LoadState::RetryAt(_, op) = &self.load {
            if self.loaded.is_none() {
                // The first read failed a moment ago: try again now for this new arrival.
                self.load = LoadState::Wanted(op.clone());
            }
        }
        self.deferred.push_back(deferred);
    }

    fn want_reload(&mut self) {
        if self.loaded.is_none() {
            return;
        }
        let tokens = sorted(self.tokens_to_check.iter().copied());
        match &mut self.load {
            LoadState::Idle => self.load = LoadState::Wanted(StoreOp::LoadAccess { tokens }),
            LoadState::Wanted(StoreOp::LoadAccess { tokens: wanted })
            | LoadState::RetryAt(_, StoreOp::LoadAccess { tokens: wanted }) => *wanted = tokens,
            // A read in flight may predate this change: read again after it.
            LoadState::InFlight => self.reload_after_flight = true,
            // The access data first; the grants are read after it.
            LoadState::Wanted(StoreOp::LoadGrants) | LoadState::RetryAt(_, StoreOp::LoadGrants) => {
                self.grants_stale = true;
                self.load = LoadState::Wanted(StoreOp::LoadAccess { tokens });
            }
            LoadState::Wanted(_) | LoadState::RetryAt(_, _) => {}
        }
    }

    fn after_load(&mut self, now: DateTime<Utc>) {
        if std::mem::take(&mut self.reload_after_flight) {
            self.want_reload();
            return;
        }
        if std::mem::take(&mut self.grants_stale) {
            self.remote_pending.clear();
            self.load = LoadState::Wanted(StoreOp::LoadGrants);
            return;
        }
        for event in std::mem::take(&mut self.remote_pending) {
            self.apply_remote(&event, now);
        }
        for deferred in std::mem::take(&mut self.deferred) {
            match deferred {
                Deferred::Register(registration) => self.register(*registration, now),
                Deferred::RequestAccess {
                    session,
                    resource_id,
                    dns,
                } => self.request_access(session, resource_id, dns, now),
            }
        }
    }

    /// Takes in the grants read back from the store: each is kept only if it still holds
    /// now, as if it had just been checked; the others are deleted before any gateway hears.
    fn restore(&mut self, stored: Vec<LoadedAuthorization>, now: DateTime<Utc>) {
        let mut stored = stored;
        // The latest grant of a (device, resource) pair wins over older duplicates.
        stored.sort_by_key(|s| (s.authorization.expires_at, s.authorization.id));
        for loaded in stored {
            let id = loaded.authorization.id;
            let token = loaded.token.filter(|t| t.is_usable(now));
            let body = serde_json::from_value::<StoredGrant>(loaded.authorization.body);
            let (Some(token), Ok(body)) = (token, body) else {
                self.writes.insert(id, Write::Delete);
                continue;
            };
            if body.authorization.id != id {
                self.writes.insert(id, Write::Delete);
                continue;
            }
            let gateway_device = loaded.authorization.gateway_device_id;
            let gateway_public_key = body.gateway_public_key.or_else(|| {
                self.device(DeviceKind::Gateway, &gateway_device)
                    .and_then(|d| d.public_key)
            });
            let mut authorization = body.authorization;
            let cap = (now + self.config.authorization_lifetime).min(token.expires_at);
            let clamped = authorization.expires_at > cap;
            authorization.expires_at = authorization.expires_at.min(cap);
            let grant = Grant {
                wake_at: authorization.expires_at,
                authorization,
                token_id: loaded.authorization.token_id,
                client_ip: body.client_ip,
                gateway_device,
                gateway_public_key,
                session: None,
            };
            let pair = (
                grant.authorization.client_device_id.clone(),
                grant.authorization.resource.id,
            );
            if let Some(older) = self.grants.by_pair.get(&pair).copied() {
                self.grants.remove(older);
                self.writes.insert(older, Write::Delete);
            }
            match self.verdict(&grant, now) {
                Verdict::Withdraw(_) => {
                    self.writes.insert(id, Write::Delete);
                }
                Verdict::Update {
                    resource,
                    expires_at,
                } => {
                    let mut grant = grant;
                    grant.authorization.resource = resource;
                    let pattern = grant.authorization.resource.address.clone();
                    grant
                        .authorization
                        .dns
                        .retain(|t| t.check(&pattern).is_ok());
                    grant.authorization.expires_at = expires_at;
                    grant.wake_at = expires_at;
                    self.update_write(id, grant.stored());
                    self.grants.insert(grant);
                }
                Verdict::Keep => {
                    if clamped {
                        self.update_write(id, grant.stored());
                    }
                    self.grants.insert(grant);
                }
            }
        }
    }

    // ----- sessions -----

    fn register(&mut self, registration: Registration, now: DateTime<Utc>) {
        let device = match self.admit(&registration, now) {
            Ok(device) => device,
            Err(refusal) => {
                self.refuse(registration.session, refusal);
                return;
            }
        };
        let Registration {
            session,
            kind,
            principal,
            params,
            source_ip,
            ..
        } = registration;
        let (actor_id, site_id) = (principal.actor_id, principal.site_id);
        if principal.rotated && kind == DeviceKind::Client {
            // Connected with a rotated token: the reload hands it the successor.
            self.tokens_to_check.insert(principal.token_id);
            self.want_reload();
        }
        let held = kind == DeviceKind::Client && awaits_approval(&principal.guardrails, &device);
        let mut entry = Session {
            kind,
            device_id: device.device_id.clone(),
            actor_id,
            site_id,
            token_id: principal.token_id,
            token_expires_at: principal.expires_at,
            source_ip,
            endpoint: params.endpoint.clone(),
            view: Arc::new(View::new()),
            requests: Bucket::full(self.config.access_request_burst, now),
            throttle_notice_until: None,
            held,
            successor_offered: false,
        };
        let slug = self
            .loaded
            .as_ref()
            .map(|l| l.slug.clone())
            .unwrap_or_default();
        let init = match (kind, actor_id) {
            (DeviceKind::Client, Some(actor_id)) => {
                if !held {
                    entry.view = self.view_for((actor_id, source_ip), now);
                }
                encode(&PortalToClient::Init(ClientInit {
                    account_id: self.account_id,
                    account_slug: slug,
                    actor_id,
                    actor_name: principal.holder_name.clone(),
                    token_id: entry.token_id,
                    token_expires_at: entry.token_expires_at,
                    device_id: entry.device_id.clone(),
                    addresses: addresses_of(&device),
                    resources: entry.view.values().cloned().collect(),
                    awaiting_approval: held,
                }))
            }
            _ => {
                let ids = Grants::ids_of(&self.grants.by_gateway, &entry.device_id);
                encode(&PortalToGateway::Init(GatewayInit {
                    account_id: self.account_id,
                    site_id: site_id.unwrap_or_default(),
                    site_name: principal.holder_name.clone(),
                    token_id: entry.token_id,
                    token_expires_at: entry.token_expires_at,
                    device_id: entry.device_id.clone(),
                    addresses: addresses_of(&device),
                    authorizations: ids
                        .iter()
                        .filter_map(|id| self.grants.by_id.get(id))
                        .map(|g| g.authorization.clone())
                        .collect(),
                }))
            }
        };
        self.transmit(session, Outbound::Text(init.into()));
        self.events.push_back(Event::Registered {
            session,
            presence: entry.presence(),
        });
        self.by_token
            .entry(entry.token_id)
            .or_default()
            .insert(session);
        let device_sessions = self
            .by_device
            .entry((kind, entry.device_id.clone()))
            .or_default();
        device_sessions.insert(session);
        if kind == DeviceKind::Gateway && device_sessions.len() == 1 {
            self.store_ops.push_back(StoreOp::AnnounceGateway {
                gateway: device.clone(),
                token_id: entry.token_id,
                endpoint: entry.endpoint.clone(),
                online: true,
            });
        }
        self.expiries.insert((entry.token_expires_at, session));
        let token_id = entry.token_id;
        match kind {
            DeviceKind::Client => self.clients.insert(session, entry),
            DeviceKind::Gateway => self.gateways.insert(session, entry),
        };
        if kind == DeviceKind::Client {
            // The device's grants (also those read back after a restart) serve this session
            // now, from its address: check them as such.
            let ids = Grants::ids_of(&self.grants.by_client, &device.device_id);
            let mut moved_grants = Vec::new();
            for id in &ids {
                let moved = self.grants.by_id.get(id).is_some_and(|grant| {
                    grant.token_id != token_id && Some(grant.token_id) == principal.rotated_from
                });
                if moved {
                    moved_grants.push(*id);
                    // The device moved to the successor of a rotated token: its grants go
                    // with it, so the tunnels stay up and the rotated token's end leaves them.
                    self.grants.rebind_token(*id, token_id);
                    if let Some(stored) = self.grants.by_id.get(id).map(Grant::stored) {
                        self.update_write(*id, stored);
                    }
                }
                if let Some(grant) = self.grants.by_id.get_mut(id) {
                    if grant.token_id == token_id {
                        grant.session = Some(session);
                        grant.client_ip = source_ip;
                    }
                }
            }
            self.check_grants(&ids, now);
            // They were cut to the rotated token's window: extended under the successor now.
            if self.is_current() {
                for id in moved_grants {
                    self.renew(id, now);
                }
            }
        }
    }

    /// Whether a registration may become a session: its token checked after the last
    /// revocation seen, of the right kind, its device identity its own. Its device record if so.
    fn admit(
        &mut self,
        registration: &Registration,
        now: DateTime<Utc>,
    ) -> Result<Device, Refusal> {
        let principal = &registration.principal;
        if principal.generation < self.revocations_seen || principal.expires_at <= now {
            return Err(Refusal::Recheck);
        }
        match (registration.kind, principal.actor_id, principal.site_id) {
            (DeviceKind::Client, Some(_), _) | (DeviceKind::Gateway, _, Some(_)) => {}
            (DeviceKind::Client, None, _) => {
                let why = "a client token must belong to a service account";
                return Err(Refusal::Forbidden(why.into()));
            }
            (DeviceKind::Gateway, _, None) => {
                let why = "a gateway token must belong to a site";
                return Err(Refusal::Forbidden(why.into()));
            }
        }
        if registration.kind == DeviceKind::Client {
            self.check_guardrails(registration)?;
        }
        self.sight_device(registration, now)
    }

    /// A client token's limits for its fleet: where sessions may come from, how many there
    /// may be at once. The device's own sessions do not count (a reconnect replaces one).
    fn check_guardrails(&self, registration: &Registration) -> Result<(), Refusal> {
        let guardrails = &registration.principal.guardrails;
        if !guardrails.allows_source(registration.source_ip) {
            let from = registration
                .source_ip
                .map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            return Err(Refusal::DeviceRefused(format!(
                "the token accepts sessions only from {}; this device connects from {from}",
                cidr_list(&guardrails.allowed_source_cidrs)
            )));
        }
        let Some(max_clients) = guardrails.max_clients else {
            return Ok(());
        };
        let token_id = registration.principal.token_id;
        let own = self
            .by_device
            .get(&(DeviceKind::Client, registration.params.id.clone()))
            .map_or(0, |sessions| {
                sessions
                    .iter()
                    .filter(|s| self.clients.get(s).is_some_and(|c| c.token_id == token_id))
                    .count()
            });
        let local = self
            .by_token
            .get(&token_id)
            .map_or(0, HashSet::len)
            .saturating_sub(own);
        let others = u32::try_from(local)
            .unwrap_or(u32::MAX)
            .saturating_add(registration.remote_sessions_on_token);
        if others >= max_clients {
            return Err(Refusal::TokenLimit(format!(
                "the token allows {max_clients} connected device{} at once and {others} {}                  connected; stop one of them or raise the token's max_clients",
                if max_clients == 1 { "" } else { "s" },
                if others == 1 { "is" } else { "are" },
            )));
        }
        Ok(())
    }

    /// Finds or creates the device record of a registering device, refusing identities that
    /// belong to someone else. A changed key withdraws what was granted under the old one.
    fn sight_device(
        &mut self,
        registration: &Registration,
        now: DateTime<Utc>,
    ) -> Result<Device, Refusal> {
        let Registration {
            kind,
            principal,
            params,
            source_ip,
            ..
        } = registration;
        let (kind, source_ip) = (*kind, *source_ip);
        let (actor_id, site_id) = (principal.actor_id, principal.site_id);
        let Some(loaded) = self.loaded.as_mut() else {
            return Err(Refusal::Unavailable("the account is not loaded".into()));
        };
        if actor_id.is_some_and(|a| loaded.snapshot.disabled_actors.contains(&a)) {
            // The token check said enabled, the snapshot disabled: one of them is about to
            // catch up with the other.
            return Err(Refusal::Unavailable(
                "the service account's state is changing; retry".into(),
            ));
        }
        let key = (kind, params.id.clone());
        if kind == DeviceKind::Client
            && loaded
                .blocked
                .refuses(&params.id, params.public_key.as_ref())
        {
            return Err(Refusal::DeviceRefused(format!(
                "device '{}' is blocked by an administrator of the account; the token works \
                 for the service account's other devices",
                params.id
            )));
        }
        // A device known only from another node's grant, without its addresses, is claimed
        // like a new one: the store answers with its row.
        let known = loaded
            .devices
            .get(&key)
            .filter(|d| !d.ipv4.is_unspecified());
        if let Some(known) = known {
            if known.actor_id != actor_id || known.site_id != site_id {
                let owner = match kind {
                    DeviceKind::Client => "another service account",
                    DeviceKind::Gateway => "a gateway of another site",
                };
                return Err(Refusal::Conflict(format!(
                    "device id '{}' is registered to {owner}; start this {} with a different --id \
                     (or remove the device id file in its state directory)",
                    params.id,
                    kind.as_str()
                )));
            }
        }
        if let Some(public_key) = &params.public_key {
            if loaded
                .keys
                .get(public_key)
                .is_some_and(|holder| *holder != key)
            {
                return Err(Refusal::Conflict(format!(
                    "this {}'s WireGuard public key is already used by another device of the \
                     account; remove wireguard.key from its state directory so that a new key is made",
                    kind.as_str()
                )));
            }
        }
        let Some(known) = known else {
            return self.claim_new_device(registration, now);
        };
        let (id, created_at, tunnel, old_key) = (
            known.id,
            known.created_at,
            addresses_of(known),
            Some(known.public_key),
        );
        let approved_at = known
            .approved_at
            .or((!principal.guardrails.require_approval).then_some(now));
        if let (Some(from), Some(rotated_from)) = (known.token_id, principal.rotated_from) {
            if from == rotated_from {
                self.store_ops.push_back(StoreOp::RecordTokenMove {
                    device: id,
                    device_id: params.id.clone(),
                    from,
                    to: principal.token_id,
                });
            }
        }
        if known.approved_at.is_none() && approved_at.is_some() {
            self.store_ops.push_back(StoreOp::ApproveDevices(vec![id]));
        }
        if let Some(Some(old)) = &old_key {
            if loaded.keys.get(old) == Some(&key) {
                loaded.keys.remove(old);
            }
        }
        if let Some(new) = &params.public_key {
            loaded.keys.insert(*new, key.clone());
        }
        let device = Device {
            id,
            account_id: self.account_id,
            kind,
            device_id: params.id.clone(),
            actor_id,
            site_id,
            token_id: Some(principal.token_id),
            name: params.name.clone(),
            version: Some(params.version.clone()),
            public_key: params.public_key,
            ipv4: tunnel.ipv4,
            ipv6: tunnel.ipv6,
            last_seen_ip: source_ip.map(|ip| ip.to_string()),
            last_seen_at: now,
            created_at,
            approved_at,
            ephemeral: params.ephemeral || principal.guardrails.ephemeral,
        };
        let news = loaded
            .devices
            .get(&key)
            .is_none_or(|before| sighting_is_news(before, &device));
        loaded.devices.insert(key, device.clone());
        if news {
            self.store_ops
                .push_back(StoreOp::RecordDevice(device.clone()));
        }
        if old_key.is_some_and(|old| old != params.public_key) {
            let index = match kind {
                DeviceKind::Client => &self.grants.by_client,
                DeviceKind::Gateway => &self.grants.by_gateway,
            };
            let ids = Grants::ids_of(index, &params.id);
            let why = format!("the {}'s WireGuard key changed", kind.as_str());
            self.withdraw(&ids, &why, Withdrawal::TellClient);
        }
        Ok(device)
    }

    /// A device seen for the first time: reserves a tunnel address and asks for its row to be
    /// claimed in the database, which decides between portal nodes. The session starts at once
    /// with the reserved address; if another node wins the race, the device's sessions are told
    /// to reconnect (see [`Self::handle_devices_claimed`]).
    fn claim_new_device(
        &mut self,
        registration: &Registration,
        now: DateTime<Utc>,
    ) -> Result<Device, Refusal> {
        let Registration {
            kind,
            principal,
            params,
            source_ip,
            ..
        } = registration;
        let key = (*kind, params.id.clone());
        let Some(loaded) = self.loaded.as_mut() else {
            return Err(Refusal::Unavailable("the account is not loaded".into()));
        };
        let device_key = addresses::device_key(*kind, &params.id);
        let Some(tunnel) = addresses::allocate(&device_key, &loaded.used_ipv4) else {
            return Err(Refusal::Unavailable(
                "the account has no tunnel addresses left".into(),
            ));
        };
        loaded.used_ipv4.insert(tunnel.ipv4);
        let mut random = [0u8; 10];
        self.rng.fill_bytes(&mut random);
        let millis = u64::try_from(now.timestamp_millis()).unwrap_or_default();
        let device = Device {
            id: uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid(),
            account_id: self.account_id,
            kind: *kind,
            device_id: params.id.clone(),
            actor_id: principal.actor_id,
            site_id: principal.site_id,
            token_id: Some(principal.token_id),
            name: params.name.clone(),
            version: Some(params.version.clone()),
            public_key: params.public_key,
            ipv4: tunnel.ipv4,
            ipv6: tunnel.ipv6,
            last_seen_ip: source_ip.map(|ip| ip.to_string()),
            last_seen_at: now,
            created_at: now,
            approved_at: (!principal.guardrails.require_approval).then_some(now),
            ephemeral: params.ephemeral || principal.guardrails.ephemeral,
        };
        if let Some(public_key) = &device.public_key {
            loaded.keys.insert(*public_key, key.clone());
        }
        loaded.devices.insert(key.clone(), device.clone());
        self.claims.insert(
            key,
            Claim {
                device: device.clone(),
                requests: Vec::new(),
                sent: false,
            },
        );
        Ok(device)
    }

    fn refuse(&mut self, session: SessionId, refusal: Refusal) {
        self.events.push_back(Event::Refused { session, refusal });
    }

    /// Tells the session to end and forgets it at once.
    fn close(
        &mut self,
        session: SessionId,
        reason: DisconnectReason,
        message: &str,
        now: DateTime<Utc>,
    ) {
        if !self.clients.contains_key(&session) && !self.gateways.contains_key(&session) {
            return;
        }
        self.transmit(
            session,
            Outbound::Close {
                reason,
                message: message.to_string(),
            },
        );
        self.end(session, now);
    }

    /// Forgets a session. Its grants stay (the device may be back in a moment), but are only
    /// renewed while another session of the device serves them.
    fn end(&mut self, session: SessionId, now: DateTime<Utc>) {
        let Some(entry) = self
            .clients
            .remove(&session)
            .or_else(|| self.gateways.remove(&session))
        else {
            return;
        };
        remove_from(&mut self.by_token, &entry.token_id, &session);
        self.expiries.remove(&(entry.token_expires_at, session));
        let device_key = (entry.kind, entry.device_id.clone());
        remove_from(&mut self.by_device, &device_key, &session);
        if entry.kind == DeviceKind::Gateway && !self.by_device.contains_key(&device_key) {
            if let Some(gateway) = self.device(DeviceKind::Gateway, &entry.device_id).cloned() {
                self.store_ops.push_back(StoreOp::AnnounceGateway {
                    gateway,
                    token_id: entry.token_id,
                    endpoint: None,
                    online: false,
                });
            }
        }
        if entry.kind == DeviceKind::Client {
            let successor = self
                .sessions_of(DeviceKind::Client, &entry.device_id)
                .into_iter()
                .filter(|s| {
                    self.clients
                        .get(s)
                        .is_some_and(|c| c.token_id == entry.token_id)
                })
                .max();
            for id in Grants::ids_of(&self.grants.by_client, &entry.device_id) {
                let Some(grant) = self.grants.by_id.get_mut(&id) else {
                    continue;
                };
                if grant.session != Some(session) {
                    continue;
                }
                grant.session = successor;
                let wake = self.wake_time(id, now);
                self.grants.set_wake(id, wake);
            }
            if !self.by_device.contains_key(&device_key) && !self.shutting_down {
                self.record_last_session_end(&device_key, now);
            }
        }
        self.events.push_back(Event::Ended {
            session,
            presence: entry.presence(),
        });
    }

    /// A client device's last session here ended: when it was last seen is now (an ephemeral
    /// device that vanished is removed a while after this).
    fn record_last_session_end(&mut self, key: &(DeviceKind, String), now: DateTime<Utc>) {
        if self.claims.contains_key(key) {
            return;
        }
        let Some(device) = self.loaded.as_mut().and_then(|l| l.devices.get_mut(key)) else {
            return;
        };
        if device.ipv4.is_unspecified() {
            return;
        }
        device.last_seen_at = now;
        self.store_ops
            .push_back(StoreOp::RecordDevice(device.clone()));
    }

    /// A client stops cleanly. An ephemeral device with no other session is removed at once:
    /// its grants withdrawn, its address free, its row deleted on every node. The session
    /// itself ends with its close frame, as any other.
    fn goodbye(&mut self, session: SessionId, now: DateTime<Utc>) {
        let Some(client) = self.clients.get(&session) else {
            return;
        };
        let key = (DeviceKind::Client, client.device_id.clone());
        let alone = self.by_device.get(&key).is_some_and(|s| s.len() == 1);
        let device = self
            .loaded
            .as_ref()
            .and_then(|l| l.devices.get(&key))
            .filter(|d| d.ephemeral && !d.ipv4.is_unspecified())
            .cloned();
        let Some(device) = device else { return };
        if !alone || self.claims.contains_key(&key) {
            return;
        }
        // Forgotten first, so that the session's end records no sighting of a removed device.
        self.forget_client_devices(std::slice::from_ref(&device.device_id));
        self.end(session, now);
        self.store_ops.push_back(StoreOp::RemoveDevices {
            ids: vec![device.id],
            why: "the ephemeral device stopped".into(),
        });
    }

    /// Devices whose rows were removed (here or on another node): their grants go, their
    /// addresses and keys are free, and a session one of them holds is told to reconnect.
    fn remove_devices(&mut self, kind: DeviceKind, device_ids: &[String], now: DateTime<Utc>) {
        for device_id in device_ids {
            for session in self.sessions_of(kind, device_id) {
                self.close(
                    session,
                    DisconnectReason::DeviceRemoved,
                    "this device's record was removed; reconnect to register again",
                    now,
                );
            }
        }
        match kind {
            DeviceKind::Client => self.forget_client_devices(device_ids),
            DeviceKind::Gateway => {
                for device_id in device_ids {
                    let ids = Grants::ids_of(&self.grants.by_gateway, device_id);
                    self.withdraw(&ids, "the gateway was removed", Withdrawal::TellClient);
                }
                let gone: HashSet<&String> = device_ids.iter().collect();
                if let Some(loaded) = &mut self.loaded {
                    loaded.forget_devices(|d| d.kind == kind && gone.contains(&d.device_id));
                }
            }
        }
    }

    fn forget_client_devices(&mut self, device_ids: &[String]) {
        for device_id in device_ids {
            let ids = Grants::ids_of(&self.grants.by_client, device_id);
            self.withdraw(&ids, "the device was removed", Withdrawal::Quietly);
        }
        let gone: HashSet<&String> = device_ids.iter().collect();
        if let Some(loaded) = &mut self.loaded {
            loaded.forget_devices(|d| d.kind == DeviceKind::Client && gone.contains(&d.device_id));
        }
    }

    fn end_token(
        &mut self,
        token_id: Uuid,
        reason: DisconnectReason,
        message: &str,
        now: DateTime<Utc>,
    ) {
        // The gateways first: their cut is what stops traffic; the sessions end right after.
        let ids = Grants::ids_of(&self.grants.by_token, &token_id);
        self.withdraw(&ids, message, Withdrawal::Quietly);
        let sessions = sorted(self.by_token.get(&token_id).into_iter().flatten().copied());
        for session in sessions {
            self.close(session, reason, message, now);
        }
    }

    /// A token now ends earlier than its sessions were told (it was rotated): they end then,
    /// and so do its grants.
    fn shorten_token(&mut self, token_id: Uuid, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        let sessions = sorted(self.by_token.get(&token_id).into_iter().flatten().copied());
        for session in sessions {
            let entry = match self.clients.get_mut(&session) {
                Some(entry) => entry,
                None => match self.gateways.get_mut(&session) {
                    Some(entry) => entry,
                    None => continue,
                },
            };
            if entry.token_expires_at <= expires_at {
                continue;
            }
            self.expiries.remove(&(entry.token_expires_at, session));
            entry.token_expires_at = expires_at;
            self.expiries.insert((expires_at, session));
        }
        let ids = Grants::ids_of(&self.grants.by_token, &token_id);
        for id in ids {
            let Some(grant) = self.grants.by_id.get(&id) else {
                continue;
            };
            if grant.authorization.expires_at > expires_at {
                let resource = grant.authorization.resource.clone();
                self.update_grant(id, resource, expires_at, now);
            }
        }
    }

    /// Hands a rotated token's successor to the clients connected with the rotated token.
    fn offer_successor(
        &mut self,
        token_id: Uuid,
        successor: &Successor,
        replaced_expires_at: DateTime<Utc>,
    ) {
        let sessions: Vec<SessionId> = self
            .client_sessions_of_token(token_id)
            .into_iter()
            .filter(|s| self.clients.get(s).is_some_and(|c| !c.successor_offered))
            .collect();
        if sessions.is_empty() {
            return;
        }
        let text: Arc<str> = encode(&PortalToClient::TokenRotated {
            token_id: successor.token_id,
            secret: successor.secret.clone(),
            expires_at: successor.expires_at,
            replaced_token_expires_at: replaced_expires_at,
        })
        .into();
        for session in sessions {
            if let Some(client) = self.clients.get_mut(&session) {
                client.successor_offered = true;
            }
            self.transmit_text(session, &text);
        }
    }

    /// The client sessions holding this token, in order.
    fn client_sessions_of_token(&self, token_id: Uuid) -> Vec<SessionId> {
        sorted(
            self.by_token
                .get(&token_id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|s| self.clients.contains_key(s)),
        )
    }

    /// A token's guardrails as they are now, for its live sessions: those from outside its
    /// networks end (their grants withdrawn first), approval is required or no longer. A lower
    /// `max_clients` refuses new sessions and leaves the live ones be.
    fn apply_guardrails(
        &mut self,
        token_id: Uuid,
        guardrails: &TokenGuardrails,
        now: DateTime<Utc>,
    ) {
        let sessions = self.client_sessions_of_token(token_id);
        let mut unheld = Vec::new();
        for session in sessions {
            let Some(client) = self.clients.get(&session) else {
                continue;
            };
            if !guardrails.allows_source(client.source_ip) {
                let device_id = client.device_id.clone();
                let ids: Vec<Uuid> = Grants::ids_of(&self.grants.by_client, &device_id)
                    .into_iter()
                    .filter(|id| {
                        self.grants
                            .by_id
                            .get(id)
                            .is_some_and(|g| g.token_id == token_id)
                    })
                    .collect();
                self.withdraw(
                    &ids,
                    "the token's allowed networks changed",
                    Withdrawal::Quietly,
                );
                let why = format!(
                    "the token now accepts sessions only from {}",
                    cidr_list(&guardrails.allowed_source_cidrs)
                );
                self.close(session, DisconnectReason::SourceNotAllowed, &why, now);
                continue;
            }
            let held = self
                .device(DeviceKind::Client, &client.device_id)
                .is_some_and(|device| awaits_approval(guardrails, device));
            if held != client.held {
                let device_id = client.device_id.clone();
                self.set_held(session, held);
                if !held {
                    // The token no longer requires approval: the device is approved from now
                    // on, as any device seen on such a token.
                    self.record_approval(&device_id, now);
                    unheld.push(session);
                }
            }
        }
        if !unheld.is_empty() {
            self.refresh(now);
        }
    }

    /// Records a client device as approved at `now`, if it was not.
    fn record_approval(&mut self, device_id: &str, now: DateTime<Utc>) {
        let key = (DeviceKind::Client, device_id.to_string());
        let Some(device) = self.loaded.as_mut().and_then(|l| l.devices.get_mut(&key)) else {
            return;
        };
        if device.approved_at.is_some() || device.ipv4.is_unspecified() {
            return;
        }
        device.approved_at = Some(now);
        let id = device.id;
        match self.claims.get_mut(&key) {
            Some(claim) if !claim.sent => claim.device.approved_at = Some(now),
            // Its row is being written as waiting: approved once it is (`handle_devices_claimed`).
            Some(_) => {}
            None => self.store_ops.push_back(StoreOp::ApproveDevices(vec![id])),
        }
    }

    /// An administrator approved a client device: its waiting sessions are shown what their
    /// policies allow, on this node as on every other.
    fn approve_device(&mut self, device_id: &str, now: DateTime<Utc>) {
        let key = (DeviceKind::Client, device_id.to_string());
        if let Some(device) = self.loaded.as_mut().and_then(|l| l.devices.get_mut(&key)) {
            device.approved_at.get_or_insert(now);
        }
        if let Some(claim) = self.claims.get_mut(&key) {
            claim.device.approved_at.get_or_insert(now);
        }
        let held: Vec<SessionId> = sorted(
            self.by_device
                .get(&key)
                .into_iter()
                .flatten()
                .copied()
                .filter(|s| self.clients.get(s).is_some_and(|c| c.held)),
        );
        if held.is_empty() {
            return;
        }
        for session in held {
            self.set_held(session, false);
        }
        self.refresh(now);
    }

    /// Holds a client session (it is shown nothing, its view emptied) or lets it go (the next
    /// refresh shows it its resources), and tells the client.
    fn set_held(&mut self, session: SessionId, held: bool) {
        let Some(client) = self.clients.get_mut(&session) else {
            return;
        };
        client.held = held;
        let mut messages = Vec::new();
        if held {
            let before = std::mem::replace(&mut client.view, Arc::new(View::new()));
            messages = diff(&before, &client.view);
            let device_id = client.device_id.clone();
            let ids = Grants::ids_of(&self.grants.by_client, &device_id);
            self.withdraw(&ids, "the device awaits approval", Withdrawal::Quietly);
        }
        messages.push(PortalToClient::Approval {
            awaiting_approval: held,
        });
        for message in messages {
            self.transmit(session, Outbound::Text(encode(&message).into()));
        }
    }

    /// Ends the connected clients the blocked list (as just read) refuses: a block this node
    /// did not hear of (a gap in the change feed) still ends them at the next read.
    fn end_blocked_clients(&mut self, now: DateTime<Utc>) {
        let Some(loaded) = &self.loaded else {
            return;
        };
        if loaded.blocked.is_empty() {
            return;
        }
        let blocked = sorted(
            self.by_device
                .keys()
                .filter(|(kind, _)| *kind == DeviceKind::Client)
                .filter(|key| {
                    let key_now = loaded.devices.get(*key).and_then(|d| d.public_key);
                    loaded.blocked.refuses(&key.1, key_now.as_ref())
                })
                .map(|(_, device_id)| device_id.clone()),
        );
        for device_id in blocked {
            self.end_client_device(&device_id, now);
        }
    }

    /// Ends a blocked client device: its grants first (the gateways' cut), then its sessions.
    fn end_client_device(&mut self, device_id: &str, now: DateTime<Utc>) {
        let message = "this device was blocked by an administrator";
        let ids = Grants::ids_of(&self.grants.by_client, &device_id.to_string());
        self.withdraw(&ids, message, Withdrawal::Quietly);
        for session in self.sessions_of(DeviceKind::Client, device_id) {
            self.close(session, DisconnectReason::DeviceBlocked, message, now);
        }
    }

    fn end_actor(
        &mut self,
        actor_id: Uuid,
        reason: DisconnectReason,
        message: &str,
        now: DateTime<Utc>,
    ) {
        let ids = sorted(
            self.grants
                .by_id
                .values()
                .filter(|g| g.authorization.actor_id == actor_id)
                .map(Grant::id),
        );
        self.withdraw(&ids, message, Withdrawal::Quietly);
        let sessions = sorted(
            self.clients
                .iter()
                .filter(|(_, s)| s.actor_id == Some(actor_id))
                .map(|(id, _)| *id),
        );
        for session in sessions {
            self.close(session, reason, message, now);
        }
    }

    fn all_sessions(&self) -> Vec<SessionId> {
        sorted(self.clients.keys().chain(self.gateways.keys()).copied())
    }

    fn sessions_of(&self, kind: DeviceKind, device_id: &str) -> Vec<SessionId> {
        sorted(
            self.by_device
                .get(&(kind, device_id.to_string()))
                .into_iter()
                .flatten()
                .copied(),
        )
    }

    fn device(&self, kind: DeviceKind, device_id: &str) -> Option<&Device> {
        self.loaded
            .as_ref()?
            .devices
            .get(&(kind, device_id.to_string()))
    }

    fn transmit(&mut self, session: SessionId, message: Outbound) {
        self.transmits.push_back(Transmit { session, message });
    }

    fn transmit_text(&mut self, session: SessionId, text: &Arc<str>) {
        self.transmit(session, Outbound::Text(text.clone()));
    }

    // ----- access -----

    fn request_access(
        &mut self,
        session: SessionId,
        resource_id: Uuid,
        dns: Option<DnsTarget>,
        now: DateTime<Utc>,
    ) {
        let (burst, rate) = (
            self.config.access_request_burst,
            self.config.access_requests_per_second,
        );
        let Some(client) = self.clients.get_mut(&session) else {
            return;
        };
        if client.token_expires_at <= now {
            self.close(
                session,
                DisconnectReason::TokenExpired,
                "the token expired",
                now,
            );
            return;
        }
        if !client.requests.take(burst, rate, now) {
            if client
                .throttle_notice_until
                .is_some_and(|until| now < until)
            {
                return;
            }
            client.throttle_notice_until = Some(now + Duration::seconds(1));
            let why = format!(
                "too many access requests from this session (at most {burst} at once and \
                 {rate} a second); retry later"
            );
            self.deny(session, resource_id, why);
            return;
        }
        if client.held {
            let why = format!(
                "device '{}' awaits an administrator's approval (its token requires one): \
                 postern clients approve, or Approve on the service account's page",
                client.device_id
            );
            self.deny(session, resource_id, why);
            return;
        }
        let Some(actor_id) = client.actor_id else {
            return;
        };
        let (source_ip, device_id, token_id, token_expires_at) = (
            client.source_ip,
            client.device_id.clone(),
            client.token_id,
            client.token_expires_at,
        );
        // Nothing is granted to a device whose row is not yet its own.
        if let Some(claim) = self
            .claims
            .get_mut(&(DeviceKind::Client, device_id.clone()))
        {
            claim.requests.push((session, resource_id, dns));
            return;
        }
        let (until, resource) = match self.may_reach(actor_id, resource_id, source_ip, now) {
            Ok(allowed) => allowed,
            Err(reason) => {
                self.deny(session, resource_id, reason);
                return;
            }
        };
        // A DNS resource is reached by name: the gateway resolves only names the resource
        // covers, each through the proxy addresses the client gave it.
        let dns = match (resource.resource_type.as_str(), dns) {
            ("dns", Some(target)) => match target.check(&resource.address) {
                Ok(()) => Some(target),
                Err(reason) => {
                    self.deny(session, resource_id, reason);
                    return;
                }
            },
            ("dns", None) => {
                let why = "a DNS resource is reached by name: this client sent none \
                           (a version without DNS resources?)"
                    .to_string();
                self.deny(session, resource_id, why);
                return;
            }
            (_, _) => None,
        };
        let Some(client_device) = self.device(DeviceKind::Client, &device_id) else {
            return;
        };
        let client_key = client_device.public_key;
        let client_addresses = addresses_of(client_device);

        // One grant per (device, resource): asked again, the same grant is given again, as
        // long as its gateway is online; otherwise access moves to another gateway.
        if let Some(id) = self
            .grants
            .by_pair
            .get(&(device_id.clone(), resource_id))
            .copied()
        {
            let reusable = self.grants.by_id.get(&id).is_some_and(|grant| {
                grant.token_id == token_id
                    && grant.authorization.client_public_key == client_key
                    && self.gateway_online(&grant.gateway_device)
            });
            if reusable && self.verdict_of(id, now) == Some(Verdict::Keep) {
                let mut named = false;
                if let Some(grant) = self.grants.by_id.get_mut(&id) {
                    grant.session = Some(session);
                    grant.client_ip = source_ip;
                    if let Some(target) = dns {
                        named = add_dns_target(&mut grant.authorization.dns, target);
                    }
                }
                if named {
                    if let Some(stored) = self.grants.by_id.get(&id).map(Grant::stored) {
                        self.update_write(id, stored);
                    }
                    self.send_authorize(id);
                }
                let wake = self.wake_time(id, now);
                self.grants.set_wake(id, wake);
                self.send_granted(session, id);
                return;
            }
            self.withdraw(
                &[id],
                "access moves to another gateway",
                Withdrawal::Quietly,
            );
        }

        let held = self
            .grants
            .by_client
            .get(&device_id)
            .map_or(0, HashSet::len);
        if held >= self.config.max_grants_per_device {
            let why = format!(
                "this device already holds the most authorizations allowed ({})",
                self.config.max_grants_per_device
            );
            self.deny(session, resource_id, why);
            return;
        }
        let Some(gateway_device) = self.least_loaded_gateway(resource.site_id) else {
            let site = self
                .loaded
                .as_ref()
                .and_then(|l| l.site_names.get(&resource.site_id).cloned())
                .unwrap_or_else(|| resource.site_id.to_string());
            let why = format!("no gateway of site '{site}' is online");
            self.deny(session, resource_id, why);
            return;
        };
        let gateway_public_key = self
            .device(DeviceKind::Gateway, &gateway_device)
            .and_then(|d| d.public_key);
        // One preshared key per client–gateway pair: a WireGuard peer has a single one.
        let shared = Grants::ids_of(&self.grants.by_client, &device_id)
            .into_iter()
            .filter_map(|id| self.grants.by_id.get(&id))
            .find(|g| {
                g.gateway_device == gateway_device
                    && g.authorization.client_public_key == client_key
            })
            .and_then(|g| g.authorization.preshared_key.clone());
        let preshared_key = match shared {
            Some(key) => key,
            None => self.preshared_key(),
        };
        let expires_at = expiry(
            now + self.config.authorization_lifetime,
            token_expires_at,
            until,
        );
        let authorization = Authorization {
            id: self.random_uuid(),
            client_device_id: device_id,
            actor_id,
            client_public_key: client_key,
            client_addresses,
            resource,
            expires_at,
            preshared_key: Some(preshared_key),
            dns: dns.into_iter().collect(),
        };
        let grant = Grant {
            wake_at: expires_at,
            authorization,
            token_id,
            client_ip: source_ip,
            gateway_device,
            gateway_public_key,
            session: Some(session),
        };
        let id = grant.id();
        let gateway_here = !self
            .sessions_of(DeviceKind::Gateway, &grant.gateway_device)
            .is_empty();
        self.writes.insert(id, Write::Save(grant.stored()));
        self.grants.insert(grant);
        let wake = self.wake_time(id, now);
        self.grants.set_wake(id, wake);
        self.send_authorize(id);
        if gateway_here {
            self.send_granted(session, id);
        } else {
            // The gateway's node hears of it when the write commits: a client told earlier
            // would knock before the gateway knows its key.
            self.granted_after_write.insert(id, session);
        }
    }

    /// Whether the actor may reach the resource from `source_ip` now: until when, and the
    /// resource as granted; else why not.
    fn may_reach(
        &self,
        actor_id: Uuid,
        resource_id: Uuid,
        source_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(Option<DateTime<Utc>>, ResourceView), String> {
        let loaded = self
            .loaded
            .as_ref()
            .ok_or_else(|| "the account is not loaded".to_string())?;
        let until = loaded
            .snapshot
            .authorize(actor_id, resource_id, source_ip, now)?;
        let resource = loaded
            .snapshot
            .resources
            .get(&resource_id)
            .ok_or_else(|| "no such resource".to_string())?;
        Ok((until, resource_view(resource, until)))
    }

    /// The online gateway of the site with the fewest grants (ties: the lowest device id),
    /// whatever portal node holds its session.
    fn least_loaded_gateway(&self, site_id: Uuid) -> Option<String> {
        let mut candidates: BTreeSet<&String> = self
            .gateways
            .values()
            .filter(|g| g.site_id == Some(site_id))
            .map(|g| &g.device_id)
            .collect();
        candidates.extend(self.remote_gateways.keys().filter(|device| {
            self.device(DeviceKind::Gateway, device)
                .is_some_and(|d| d.site_id == Some(site_id))
        }));
        candidates
            .into_iter()
            .min_by_key(|d| (self.grants.count_at_gateway(d), (*d).clone()))
            .cloned()
    }

    fn deny(&mut self, session: SessionId, resource_id: Uuid, reason: String) {
        let text: Arc<str> = encode(&PortalToClient::AccessDenied {
            resource_id,
            reason,
        })
        .into();
        self.transmit_text(session, &text);
    }

    /// Sends a grant (new, renewed or changed) to every session of its gateway.
    fn send_authorize(&mut self, id: Uuid) {
        let Some(grant) = self.grants.by_id.get(&id) else {
            return;
        };
        let text: Arc<str> = encode(&PortalToGateway::Authorize {
            authorization: grant.authorization.clone(),
        })
        .into();
        for session in self.sessions_of(DeviceKind::Gateway, &grant.gateway_device) {
            self.transmit_text(session, &text);
        }
    }

    /// Tells a client session about its grant: which gateway, its key and endpoint, until when.
    fn send_granted(&mut self, session: SessionId, id: Uuid) {
        let Some(grant) = self.grants.by_id.get(&id) else {
            return;
        };
        let endpoint = self.gateway_endpoint(&grant.gateway_device);
        let Some(gateway) = self.device(DeviceKind::Gateway, &grant.gateway_device) else {
            return;
        };
        let text: Arc<str> = encode(&PortalToClient::AccessGranted {
            resource_id: grant.authorization.resource.id,
            authorization_id: grant.authorization.id,
            gateway: GatewayInfo {
                id: gateway.device_id.clone(),
                name: gateway.name.clone(),
                public_key: grant.gateway_public_key,
                endpoint,
                addresses: addresses_of(gateway),
            },
            expires_at: grant.authorization.expires_at,
            preshared_key: grant.authorization.preshared_key.clone(),
            dns: grant.authorization.dns.clone(),
        })
        .into();
        self.transmit_text(session, &text);
    }

    /// Removes grants from the core, their gateways and the store, in one step.
    fn withdraw(&mut self, ids: &[Uuid], reason: &str, how: Withdrawal) {
        let mut per_gateway: std::collections::BTreeMap<String, Vec<Uuid>> = Default::default();
        for id in ids {
            let Some(grant) = self.grants.remove(*id) else {
                continue;
            };
            self.writes.insert(*id, Write::Delete);
            if how == Withdrawal::TellClient {
                let resource_id = grant.authorization.resource.id;
                for session in
                    self.sessions_of(DeviceKind::Client, &grant.authorization.client_device_id)
                {
                    let in_view = self
                        .clients
                        .get(&session)
                        .is_some_and(|c| c.view.contains_key(&resource_id));
                    if in_view {
                        self.deny(
                            session,
                            resource_id,
                            format!("access was withdrawn: {reason}"),
                        );
                    }
                }
            }
            per_gateway
                .entry(grant.gateway_device)
                .or_default()
                .push(*id);
        }
        for (device, ids) in per_gateway {
            let text: Arc<str> = encode(&PortalToGateway::Revoke {
                authorization_ids: ids,
                reason: reason.to_string(),
            })
            .into();
            for session in self.sessions_of(DeviceKind::Gateway, &device) {
                self.transmit_text(session, &text);
            }
        }
    }

    /// Checks these grants against the current state: each is kept, changed in place (its
    /// filters or its end moved) or withdrawn.
    fn check_grants(&mut self, ids: &[Uuid], now: DateTime<Utc>) {
        let mut withdrawn: Vec<(Uuid, String)> = Vec::new();
        for id in ids {
            match self.verdict_of(*id, now) {
                None | Some(Verdict::Keep) => {}
                Some(Verdict::Withdraw(why)) => withdrawn.push((*id, why)),
                Some(Verdict::Update {
                    resource,
                    expires_at,
                }) => self.update_grant(*id, resource, expires_at, now),
            }
        }
        // Grouped by reason, so that each gateway gets one message per reason.
        let mut by_reason: std::collections::BTreeMap<String, Vec<Uuid>> = Default::default();
        for (id, why) in withdrawn {
            by_reason.entry(why).or_default().push(id);
        }
        for (why, ids) in by_reason {
            self.withdraw(&ids, &why, Withdrawal::TellClient);
        }
    }

    fn update_grant(
        &mut self,
        id: Uuid,
        resource: ResourceView,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let Some(grant) = self.grants.by_id.get_mut(&id) else {
            return;
        };
        let shortened = expires_at != grant.authorization.expires_at;
        grant.authorization.resource = resource;
        let pattern = grant.authorization.resource.address.clone();
        grant
            .authorization
            .dns
            .retain(|t| t.check(&pattern).is_ok());
        grant.authorization.expires_at = expires_at;
        let session = grant.session;
        let stored = grant.stored();
        self.update_write(id, stored);
        let wake = self.wake_time(id, now);
        self.grants.set_wake(id, wake);
        self.send_authorize(id);
        if let (true, Some(session)) = (shortened, session) {
            self.send_granted(session, id);
        }
    }

    fn verdict_of(&self, id: Uuid, now: DateTime<Utc>) -> Option<Verdict> {
        self.grants.by_id.get(&id).map(|g| self.verdict(g, now))
    }

    /// What must become of a grant now.
    fn verdict(&self, grant: &Grant, now: DateTime<Utc>) -> Verdict {
        let Some(loaded) = &self.loaded else {
            return Verdict::Keep;
        };
        let authorization = &grant.authorization;
        if authorization.expires_at <= now {
            return Verdict::Withdraw("the authorization expired".into());
        }
        if loaded.blocked.refuses(
            &authorization.client_device_id,
            authorization.client_public_key.as_ref(),
        ) {
            return Verdict::Withdraw("the client device is blocked".into());
        }
        let source_ip = grant
            .session
            .and_then(|s| self.clients.get(&s))
            .map_or(grant.client_ip, |c| c.source_ip);
        let granted = &authorization.resource;
        let until =
            match loaded
                .snapshot
                .authorize(authorization.actor_id, granted.id, source_ip, now)
            {
                Ok(until) => until,
                Err(reason) => return Verdict::Withdraw(reason),
            };
        let Some(resource) = loaded.snapshot.resources.get(&granted.id) else {
            return Verdict::Withdraw("the resource was deleted".into());
        };
        if resource.address != granted.address
            || resource.site_id != granted.site_id
            || resource.resource_type.as_str() != granted.resource_type
        {
            return Verdict::Withdraw("the resource's address or site changed".into());
        }
        let client = loaded
            .devices
            .get(&(DeviceKind::Client, authorization.client_device_id.clone()));
        match client {
            Some(device)
                if device.public_key == authorization.client_public_key
                    && device.actor_id == Some(authorization.actor_id) => {}
            _ => return Verdict::Withdraw("the client device's key changed".into()),
        }
        let gateway = loaded
            .devices
            .get(&(DeviceKind::Gateway, grant.gateway_device.clone()));
        match gateway {
            Some(device)
                if device.site_id == Some(resource.site_id)
                    && device.public_key == grant.gateway_public_key => {}
            _ => return Verdict::Withdraw("the gateway's key or site changed".into()),
        }
        // A narrowed window shortens the grant; a widened one waits for its renewal.
        let expires_at = until.map_or(authorization.expires_at, |u| {
            authorization.expires_at.min(u)
        });
        let access_until = if expires_at < authorization.expires_at {
            until
        } else {
            granted.access_until
        };
        let current = ResourceView {
            access_until,
            ..resource_view(resource, None)
        };
        if current != *granted || expires_at != authorization.expires_at {
            return Verdict::Update {
                resource: current,
                expires_at,
            };
        }
        Verdict::Keep
    }

    /// When the core next looks at a grant: at renewal time while a session serves it
    /// (half its lifetime before it ends), else at its end.
    fn wake_time(&self, id: Uuid, now: DateTime<Utc>) -> DateTime<Utc> {
        let Some(grant) = self.grants.by_id.get(&id) else {
            return now;
        };
        let expires_at = grant.authorization.expires_at;
        if grant.session.is_none() {
            return expires_at;
        }
        let renew_at = expires_at - self.config.authorization_lifetime / 2;
        if renew_at <= now {
            // Nothing to gain from renewing before it can be extended: look again at the end.
            return expires_at;
        }
        renew_at
    }

    /// Expires and renews the grants whose time has come.
    fn wake_grants(&mut self, now: DateTime<Utc>) {
        while let Some(&(at, id)) = self.grants.wakeups.first() {
            if at > now {
                break;
            }
            let Some(grant) = self.grants.by_id.get(&id) else {
                self.grants.wakeups.remove(&(at, id));
                continue;
            };
            if grant.authorization.expires_at <= now {
                // Gateway and client drop it on their own at that instant.
                self.grants.remove(id);
                self.writes.insert(id, Write::Delete);
                continue;
            }
            if !self.is_current() {
                let retry = (now + self.config.store_retry).min(grant.authorization.expires_at);
                self.grants.set_wake(id, retry);
                continue;
            }
            self.renew(id, now);
        }
    }

    /// Extends a grant that a session still uses, if its token, policy and window let it
    /// last longer; corrects or withdraws it if it no longer holds as it is.
    fn renew(&mut self, id: Uuid, now: DateTime<Utc>) {
        match self.verdict_of(id, now) {
            None => return,
            Some(Verdict::Withdraw(why)) => {
                self.withdraw(&[id], &why, Withdrawal::TellClient);
                return;
            }
            Some(Verdict::Update {
                resource,
                expires_at,
            }) => {
                self.update_grant(id, resource, expires_at, now);
                return;
            }
            Some(Verdict::Keep) => {}
        }
        let Some(grant) = self.grants.by_id.get(&id) else {
            return;
        };
        let current_end = grant.authorization.expires_at;
        let serving = grant.session.and_then(|s| {
            self.clients
                .get(&s)
                .map(|c| (s, c.source_ip, c.token_expires_at))
        });
        let Some((session, source_ip, token_expires_at)) = serving else {
            self.grants.set_wake(id, current_end);
            return;
        };
        let (actor_id, resource_id) = (
            grant.authorization.actor_id,
            grant.authorization.resource.id,
        );
        let Ok((until, resource)) = self.may_reach(actor_id, resource_id, source_ip, now) else {
            self.grants.set_wake(id, current_end);
            return;
        };
        let extended = expiry(
            now + self.config.authorization_lifetime,
            token_expires_at,
            until,
        );
        if extended <= current_end {
            self.grants.set_wake(id, current_end);
            return;
        }
        if let Some(grant) = self.grants.by_id.get_mut(&id) {
            grant.authorization.resource = resource;
            let pattern = grant.authorization.resource.address.clone();
            grant
                .authorization
                .dns
                .retain(|t| t.check(&pattern).is_ok());
            grant.authorization.expires_at = extended;
            let stored = grant.stored();
            self.update_write(id, stored);
        }
        let wake = self.wake_time(id, now);
        self.grants.set_wake(id, wake);
        self.send_authorize(id);
        self.send_granted(session, id);
    }

    // ----- views -----

    /// Recomputes every client's view, tells each client what changed, and corrects the
    /// grants that no longer hold as they are.
    fn refresh(&mut self, now: DateTime<Utc>) {
        self.view_cache.clear();
        let mut encoded: HashMap<(usize, usize), Vec<Arc<str>>> = HashMap::new();
        let keys: Vec<(SessionId, (Uuid, Option<IpAddr>))> = {
            let mut keys: Vec<_> = self
                .clients
                .iter()
                .filter(|(_, s)| !s.held)
                .filter_map(|(id, s)| s.actor_id.map(|a| (*id, (a, s.source_ip))))
                .collect();
            keys.sort_by_key(|(id, _)| *id);
            keys
        };
        // Replaced views stay alive until the loop ends: `encoded` is keyed by their addresses,
        // which must not be reused by a view allocated meanwhile.
        let mut retired: Vec<Arc<View>> = Vec::new();
        for (session, key) in keys {
            let new = self.view_for(key, now);
            let Some(entry) = self.clients.get_mut(&session) else {
                continue;
            };
            if Arc::ptr_eq(&entry.view, &new) || *entry.view == *new {
                retired.push(std::mem::replace(&mut entry.view, new));
                continue;
            }
            let pair = (
                Arc::as_ptr(&entry.view) as usize,
                Arc::as_ptr(&new) as usize,
            );
            let messages = encoded
                .entry(pair)
                .or_insert_with(|| {
                    diff(&entry.view, &new)
                        .iter()
                        .map(|m| Arc::from(encode(m)))
                        .collect()
                })
                .clone();
            retired.push(std::mem::replace(&mut entry.view, new));
            for message in &messages {
                self.transmit_text(session, message);
            }
        }
        drop(retired);
        let ids = self.grants.all_ids();
        self.check_grants(&ids, now);
    }

    fn view_for(&mut self, key: (Uuid, Option<IpAddr>), now: DateTime<Utc>) -> Arc<View> {
        if let Some(view) = self.view_cache.get(&key) {
            return view.clone();
        }
        let view = match &self.loaded {
            Some(loaded) => Arc::new(loaded.snapshot.view(key.0, key.1, now)),
            None => Arc::new(View::new()),
        };
        self.view_cache.insert(key, view.clone());
        view
    }

    // ----- randomness -----

    /// Decides to write a changed grant: still a save if its first save is pending.
    fn update_write(&mut self, id: Uuid, stored: StoredAuthorization) {
        let write = match self.writes.get(&id) {
            Some(Write::Save(_)) => Write::Save(stored),
            _ => Write::Update(stored),
        };
        self.writes.insert(id, write);
    }

    fn random_uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// A fresh 256-bit WireGuard preshared key.
    fn preshared_key(&mut self) -> PresharedKey {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        self.rng.fill_bytes(key.as_mut());
        PresharedKey::from_bytes(*key)
    }
}

/// What must become of a grant.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Keep,
    /// Same gateway, same address: the gateway takes the new filters or end in place.
    Update {
        resource: ResourceView,
        expires_at: DateTime<Utc>,
    },
    Withdraw(String),
}

/// Changes after which a token checked before them may no longer be valid.
pub(crate) fn revokes_credentials(event: &ChangeEvent) -> bool {
    matches!(
        event,
        ChangeEvent::TokensRevoked { .. }
            | ChangeEvent::TokenUpdated { .. }
            | ChangeEvent::TokenRotated { .. }
            | ChangeEvent::ActorDisabled { .. }
            | ChangeEvent::ActorDeleted { .. }
            | ChangeEvent::SiteDeleted { .. }
    )
}

/// Names one grant of a DNS resource holds at most; past it the oldest makes room.
pub const MAX_DNS_TARGETS_PER_GRANT: usize = 256;

/// Adds a name a client asked for under a grant; whether the list changed. A name or proxy
/// address given again (the client restarted and numbered its names anew) replaces the old
/// entry.
fn add_dns_target(targets: &mut Vec<DnsTarget>, target: DnsTarget) -> bool {
    if targets.contains(&target) {
        return false;
    }
    targets.retain(|t| {
        t.name != target.name
            && t.proxy_ipv4 != target.proxy_ipv4
            && t.proxy_ipv6 != target.proxy_ipv6
    });
    if targets.len() >= MAX_DNS_TARGETS_PER_GRANT {
        targets.remove(0);
    }
    targets.push(target);
    true
}

/// The end of an authorization: its lifetime, the token's expiry, the window's end.
fn expiry(
    lifetime_end: DateTime<Utc>,
    token_expires_at: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let end = lifetime_end.min(token_expires_at);
    until.map_or(end, |until| end.min(until))
}

/// How stale a stored "last seen" may be before a sighting that changes nothing else is
/// written anyway.
const LAST_SEEN_PRECISION: Duration = Duration::minutes(1);

/// Whether a sighting tells the store anything: a changed name, version, key, token or source,
/// or a last sighting more than a minute old. A device that reconnects at once, or registers
/// right after its row was claimed, costs no write.
fn sighting_is_news(before: &Device, now: &Device) -> bool {
    before.name != now.name
        || before.version != now.version
        || before.public_key != now.public_key
        || before.token_id != now.token_id
        || before.last_seen_ip != now.last_seen_ip
        || before.approved_at != now.approved_at
        || before.ephemeral != now.ephemeral
        || now.last_seen_at - before.last_seen_at >= LAST_SEEN_PRECISION
}

/// Whether a client device waits for approval: its token requires one and it has none.
fn awaits_approval(guardrails: &TokenGuardrails, device: &Device) -> bool {
    guardrails.require_approval && device.approved_at.is_none()
}

/// Networks as a person reads them: `10.0.0.0/8, 192.0.2.0/24`.
fn cidr_list(networks: &[ipnet::IpNet]) -> String {
    networks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.into_iter().collect();
    items.sort();
    items
}

fn snapshot_of(data: AccessData) -> AccessSnapshot {
    let mut snapshot = AccessSnapshot::new(data.resources, data.policies, data.memberships);
    snapshot.disabled_actors = data.disabled_actors.into_iter().collect();
    snapshot
}

fn addresses_of(device: &Device) -> TunnelAddresses {
    TunnelAddresses {
        ipv4: device.ipv4,
        ipv6: device.ipv6,
    }
}

#[cfg(test)]
mod dns_target_tests {
    use super::*;

    fn target(name: &str, host: u8) -> DnsTarget {
        DnsTarget {
            name: name.into(),
            proxy_ipv4: Ipv4Addr::new(198, 18, 1, host),
            proxy_ipv6: format!("fd70:6f73:7465:726f::1{host:02}").parse().unwrap(),
        }
    }

    #[test]
    fn names_under_a_grant_are_added_once_renumbered_in_place_and_bounded() {
        let mut targets = Vec::new();
        assert!(add_dns_target(&mut targets, target("a.test", 0)));
        assert!(!add_dns_target(&mut targets, target("a.test", 0)));
        assert!(add_dns_target(&mut targets, target("b.test", 1)));
        // The client restarted and gave proxy 0 to another name: one entry per address.
        assert!(add_dns_target(&mut targets, target("b.test", 0)));
        assert_eq!(targets, vec![target("b.test", 0)]);
        for host in 1..=u8::try_from(MAX_DNS_TARGETS_PER_GRANT).unwrap_or(u8::MAX) {
            add_dns_target(&mut targets, target(&format!("n{host}.test"), host));
        }
        assert!(targets.len() <= MAX_DNS_TARGETS_PER_GRANT);
    }
}
