//! A deterministic simulation of one account's sessions core ([`AccountSessions`]).
//!
//! A seeded driver plays random sequences of connects, disconnects, access requests (also
//! repeated floods), policy / membership / resource / filter changes, token revocations (also
//! while a session is being admitted), actor disables, devices claiming other devices' ids or
//! keys, slow gateways with full queues, failing store reads and writes, time advancing across
//! window boundaries, renewals and expiries, and portal restarts (graceful, and crashes that
//! lose what was not yet written), administrators blocking and unblocking client devices, and gaps in the change feed (a revocation and a grant
//! deletion of another node never heard, then a resync). The core runs against a fake store that keeps exactly what
//! its store operations persisted; devices run the real protocol state machines
//! (`ClientState`, `GatewayState`) over bounded queues, as the tokio shell delivers them.
//!
//! A small reference model says who may reach what at each instant. After every step:
//! - every unexpired grant a connected gateway holds (or has queued) is allowed by the model;
//! - a revoked token holds no grant anywhere (core, store, connected gateways) and no session;
//! - a blocked client device holds no grant at a connected gateway and no session;
//! - at most one grant per (client device, resource), and no device above its cap;
//! - the store holds exactly the core's grants once the writes are done;
//! - after a graceful restart, each gateway's grants are those it had before minus the ones
//!   the model no longer allows.
//!
//! `POSTERN_SIM_CASES` (default 200) cases of `POSTERN_SIM_STEPS` (default 200) steps run;
//! `POSTERN_SIM_SEED=n` replays one case. A failure prints its seed and the steps before it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use postern_domain::{ChangeEvent, Device, DeviceKind, Policy, Resource, ResourceType};
use postern_policy::{evaluate, Condition, Decision, EvalContext, Filter, IpOperator, Protocol};
use postern_protocol::client::ClientState;
use postern_protocol::gateway::GatewayState;
use postern_protocol::{
    decode, Authorization, ConnectParams, PortalToClient, PortalToGateway, TokenSecret,
    TunnelAddresses,
};
use postern_sessions::account::{
    AccessLoad, AccountLoad, AccountSessions, Event, GrantsLoad, Queued, Queues, Refusal,
    Registration, SessionId, SessionsConfig, StoreOp, Successor,
};
use postern_sessions::Outbound;
use postern_store::{
    AccessData, AuthorizationWrites, BlockedDevice, DeviceClaim, LoadedAuthorization, Principal,
    StoredAuthorization, TokenState,
};
use postern_token::TokenKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

mod common;
use common::env_number;

#[test]
fn access_stays_withdrawn_under_random_histories() {
    let steps = env_number("POSTERN_SIM_STEPS", 200) as usize;
    if let Ok(seed) = std::env::var("POSTERN_SIM_SEED") {
        let seed: u64 = seed.parse().expect("POSTERN_SIM_SEED is a number");
        run_case(seed, steps);
        return;
    }
    let cases = env_number("POSTERN_SIM_CASES", 200);
    let mut total = Coverage::default();
    for seed in 0..cases {
        total.add(&run_case(seed, steps));
    }
    eprintln!("simulation: {cases} cases of {steps} steps: {total:?}");
    // The histories must reach what they are meant to test, or passing means nothing.
    if cases >= 16 {
        assert!(total.grants > 2 * cases, "too few grants: {total:?}");
        assert!(
            total.revokes_to_gateways > cases / 2,
            "too few withdrawals: {total:?}"
        );
        assert!(
            total.renewals > 0 && total.updates > 0,
            "no renewal or update: {total:?}"
        );
        assert!(
            total.stalls > 0 && total.rechecks > 0,
            "no stall or recheck: {total:?}"
        );
        assert!(
            total.restarts_with_grants > cases / 4,
            "too few restarts: {total:?}"
        );
        assert!(total.conflicts > cases / 4, "too few intruders: {total:?}");
        assert!(total.denied > cases, "too few denials: {total:?}");
        assert!(total.at_cap > 0, "no device reached its cap: {total:?}");
        assert!(total.lost_in_crash > 0, "no crash lost a write: {total:?}");
        assert!(
            total.claims_contested > cases / 2,
            "too few contested claims: {total:?}"
        );
        assert!(
            total.missed_deletes > cases / 8,
            "too few grants deleted unheard: {total:?}"
        );
        assert!(
            total.approved > cases / 8,
            "too few devices approved after waiting: {total:?}"
        );
        assert!(
            total.blocked_with_grants > cases / 8 && total.blocked_refused > cases / 8,
            "too few devices blocked while granted, or refused: {total:?}"
        );
        assert!(
            total.blocked_unheard > cases / 16,
            "too few devices blocked unheard: {total:?}"
        );
        assert!(
            total.rotations > cases / 4 && total.moved > cases / 8,
            "too few rotations, or clients moving to a successor: {total:?}"
        );
    }
}

/// What the histories exercised, summed over the cases.
#[derive(Debug, Default, Clone)]
struct Coverage {
    grants: u64,
    renewals: u64,
    updates: u64,
    revokes_to_gateways: u64,
    denied: u64,
    stalls: u64,
    rechecks: u64,
    conflicts: u64,
    restarts_with_grants: u64,
    at_cap: u64,
    lost_in_crash: u64,
    claims_contested: u64,
    missed_deletes: u64,
    blocked_with_grants: u64,
    blocked_refused: u64,
    blocked_unheard: u64,
    approved: u64,
    rotations: u64,
    moved: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.grants += other.grants;
        self.renewals += other.renewals;
        self.updates += other.updates;
        self.revokes_to_gateways += other.revokes_to_gateways;
        self.denied += other.denied;
        self.stalls += other.stalls;
        self.rechecks += other.rechecks;
        self.conflicts += other.conflicts;
        self.restarts_with_grants += other.restarts_with_grants;
        self.at_cap += other.at_cap;
        self.lost_in_crash += other.lost_in_crash;
        self.claims_contested += other.claims_contested;
        self.missed_deletes += other.missed_deletes;
        self.blocked_with_grants += other.blocked_with_grants;
        self.blocked_refused += other.blocked_refused;
        self.blocked_unheard += other.blocked_unheard;
        self.approved += other.approved;
        self.rotations += other.rotations;
        self.moved += other.moved;
    }
}

fn run_case(seed: u64, steps: usize) -> Coverage {
    let mut sim = Sim::new(seed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for step in 0..steps {
            sim.step = step;
            sim.random_step();
            sim.check();
        }
    }));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let trace: Vec<&String> = sim.trace.iter().rev().take(40).collect();
        let trace: Vec<String> = trace.into_iter().rev().cloned().collect();
        panic!(
            "simulation seed {seed} failed at step {}: {message}\n\
             replay with POSTERN_SIM_SEED={seed}\nlast steps:\n  {}",
            sim.step,
            trace.join("\n  ")
        );
    }
    sim.coverage
}

const LIFETIME_MINUTES: i64 = 90;
const CAP: usize = 2;

fn config() -> SessionsConfig {
    SessionsConfig {
        authorization_lifetime: Duration::minutes(LIFETIME_MINUTES),
        max_grants_per_device: CAP,
        access_request_burst: 4,
        access_requests_per_second: 1,
        boundary_horizon: Duration::hours(1),
        store_retry: Duration::seconds(1),
    }
}

// ----- the fake store -----

#[derive(Debug, Clone)]
struct TokenRecord {
    actor_id: Option<Uuid>,
    site_id: Option<Uuid>,
    revoked: bool,
    expires_at: DateTime<Utc>,
    /// A device new to the portal is granted nothing until approved.
    require_approval: bool,
    /// Rotation: the token this one replaced, and the one that replaces this one.
    rotated_from: Option<Uuid>,
    successor: Option<Uuid>,
}

/// What the database holds: what the core's store operations persisted and what the
/// simulated administrator changed.
#[derive(Debug, Clone, Default)]
struct Db {
    account_id: Uuid,
    resources: BTreeMap<Uuid, Resource>,
    policies: BTreeMap<Uuid, Policy>,
    memberships: BTreeSet<(Uuid, Uuid)>,
    disabled_actors: BTreeSet<Uuid>,
    sites: BTreeMap<Uuid, String>,
    tokens: BTreeMap<Uuid, TokenRecord>,
    devices: BTreeMap<(DeviceKind, String), Device>,
    /// Device sightings buffered by the store (written every few seconds; lost in a crash).
    pending_devices: BTreeMap<(DeviceKind, String), Device>,
    authorizations: BTreeMap<Uuid, StoredAuthorization>,
    /// Client devices an administrator blocked, with the key their row had then.
    blocked: BTreeMap<String, Option<postern_protocol::WireGuardKey>>,
    /// The store's revocation generation.
    generation: u64,
}

impl Db {
    fn access(&self) -> AccessData {
        AccessData {
            resources: self.resources.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            memberships: self.memberships.iter().copied().collect(),
            disabled_actors: self.disabled_actors.iter().copied().collect(),
            site_names: self.sites.iter().map(|(k, v)| (*k, v.clone())).collect(),
            blocked_devices: self
                .blocked
                .iter()
                .map(|(device_id, public_key)| BlockedDevice {
                    device_id: device_id.clone(),
                    public_key: *public_key,
                })
                .collect(),
        }
    }

    fn is_blocked(&self, device_id: &str, key: Option<&postern_protocol::WireGuardKey>) -> bool {
        self.blocked.contains_key(device_id)
            || key.is_some_and(|k| self.blocked.values().any(|b| b.as_ref() == Some(k)))
    }

    fn device(&self, kind: DeviceKind, id: &str) -> Option<&Device> {
        let key = (kind, id.to_string());
        self.pending_devices
            .get(&key)
            .or_else(|| self.devices.get(&key))
    }

    fn devices(&self) -> Vec<Device> {
        let mut all = self.devices.clone();
        for (key, device) in &self.pending_devices {
            all.insert(key.clone(), device.clone());
        }
        all.into_values().collect()
    }

    /// The unexpired grants with their tokens' state, as `Store::load_authorizations` reads them.
    fn loaded_authorizations(&self, now: DateTime<Utc>) -> Vec<LoadedAuthorization> {
        self.authorizations
            .values()
            .filter(|a| a.expires_at > now)
            .map(|a| LoadedAuthorization {
                authorization: a.clone(),
                token: self.token_state(a.token_id),
            })
            .collect()
    }

    fn token_state(&self, token_id: Uuid) -> Option<TokenState> {
        self.tokens.get(&token_id).map(|t| TokenState {
            revoked: t.revoked,
            expires_at: t.expires_at,
        })
    }

    /// The store's token check, as `Store::verify_token` / `recheck_token` would answer.
    fn verify(&self, token_id: Uuid, now: DateTime<Utc>) -> Result<Principal, String> {
        let token = self.tokens.get(&token_id).ok_or("unknown token")?;
        if token.revoked {
            return Err("revoked".into());
        }
        if token.expires_at <= now {
            return Err("expired".into());
        }
        if token
            .actor_id
            .is_some_and(|a| self.disabled_actors.contains(&a))
        {
            return Err("holder disabled".into());
        }
        Ok(Principal {
            account_id: self.account_id,
            token_id,
            kind: if token.actor_id.is_some() {
                TokenKind::Client
            } else {
                TokenKind::Gateway
            },
            actor_id: token.actor_id,
            site_id: token.site_id,
            holder_name: "holder".into(),
            expires_at: token.expires_at,
            guardrails: self.guardrails(token_id),
            rotated_from: token.rotated_from,
            rotated: token.successor.is_some(),
            generation: self.generation,
        })
    }

    /// The successor of a rotated token within its window, as `Store::token_successors` reads.
    fn successor(&self, token_id: Uuid, now: DateTime<Utc>) -> Option<Successor> {
        let token = self.tokens.get(&token_id)?;
        let successor_id = token.successor?;
        let successor = self.tokens.get(&successor_id)?;
        if token.revoked || successor.revoked || token.expires_at <= now {
            return None;
        }
        Some(Successor {
            token_id: successor_id,
            secret: TokenSecret::new(format!("secret of {successor_id}")),
            expires_at: successor.expires_at,
        })
    }

    fn guardrails(&self, token_id: Uuid) -> postern_domain::TokenGuardrails {
        postern_domain::TokenGuardrails {
            require_approval: self
                .tokens
                .get(&token_id)
                .is_some_and(|t| t.require_approval),
            ..Default::default()
        }
    }

    /// Whether a client device's row (or its sighting not yet written) says it was approved.
    fn approved(&self, device_id: &str) -> bool {
        let key = (DeviceKind::Client, device_id.to_string());
        self.devices
            .get(&key)
            .into_iter()
            .chain(self.pending_devices.get(&key))
            .any(|d| d.approved_at.is_some())
    }

    fn write(&mut self, writes: &AuthorizationWrites) {
        for id in &writes.delete {
            self.authorizations.remove(id);
        }
        for stored in &writes.save {
            self.authorizations.insert(stored.id, stored.clone());
        }
        for stored in &writes.update {
            if let Some(row) = self.authorizations.get_mut(&stored.id) {
                *row = stored.clone();
            }
        }
    }

    /// Sightings update the rows their devices claimed (never create one, never rebind one).
    fn flush_devices(&mut self) {
        for (key, seen) in std::mem::take(&mut self.pending_devices) {
            if let Some(row) = self.devices.get_mut(&key) {
                if row.actor_id == seen.actor_id && row.site_id == seen.site_id {
                    row.public_key = seen.public_key;
                    row.name = seen.name;
                    row.token_id = seen.token_id;
                    row.last_seen_at = seen.last_seen_at;
                    // As the store's sighting does: an approval is never undone.
                    row.approved_at = row.approved_at.or(seen.approved_at);
                    row.ephemeral = seen.ephemeral;
                }
            }
        }
    }

    /// The database's unique indexes on (kind, device id) and (account, address) decide.
    fn claim(&mut self, device: &Device) -> DeviceClaim {
        let key = (device.kind, device.device_id.clone());
        if let Some(existing) = self.devices.get(&key) {
            return DeviceClaim::IdTaken(Box::new(existing.clone()));
        }
        if self.devices.values().any(|d| d.ipv4 == device.ipv4) {
            return DeviceClaim::AddressTaken;
        }
        self.devices.insert(key, device.clone());
        DeviceClaim::Claimed
    }
}

// ----- simulated devices -----

#[derive(Debug)]
struct SimClient {
    device_id: String,
    actor_id: Uuid,
    token_id: Uuid,
    key: String,
    source_ip: IpAddr,
    session: Option<SessionId>,
    state: ClientState,
    /// The successor of its token the portal handed it, until it moves to it.
    handed: Option<Uuid>,
}

#[derive(Debug)]
struct SimGateway {
    device_id: String,
    site_id: Uuid,
    token_id: Uuid,
    key: String,
    session: Option<SessionId>,
    state: GatewayState,
    /// A slow gateway reads nothing from its queue.
    slow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Client(usize),
    Gateway(usize),
    /// A registration made to see it refused (another device's id or key).
    Intruder,
}

/// One session's queue, as the shell holds it.
#[derive(Debug)]
struct Queue {
    who: Who,
    messages: VecDeque<Outbound>,
    capacity: usize,
    /// The shell dropped its sender: the device reads what is queued, then the socket closes.
    closed: bool,
    /// Registered (not only asked for).
    live: bool,
    token_id: Uuid,
}

struct Sim {
    seed: u64,
    step: usize,
    rng: StdRng,
    now: DateTime<Utc>,
    core: AccountSessions,
    db: Db,
    clients: Vec<SimClient>,
    gateways: Vec<SimGateway>,
    queues: BTreeMap<SessionId, Queue>,
    next_session: u64,
    /// A write handed out by the core and not yet answered.
    write_in_flight: Option<AuthorizationWrites>,
    /// Device claims handed out by the core and not yet answered.
    claims_in_flight: Option<Vec<Device>>,
    fail_next_write: bool,
    fail_next_load: bool,
    /// Writes stay in flight across steps (a crash may lose them).
    slow_store: bool,
    /// A read of the account failed and its retry has not yet succeeded: the core decides on
    /// the data it read before, so only changes it acts on without reading (revocations,
    /// disables, keys) must have reached the gateways.
    stale_since: Option<DateTime<Utc>>,
    /// Outcomes of intruder registrations.
    refusals: Vec<Refusal>,
    /// The token each grant was given under (the requesting session's).
    grant_tokens: BTreeMap<Uuid, Uuid>,
    /// c5's id was bound to another service account by "another node": it never gets a session.
    c5_bound_elsewhere: bool,
    /// Device ids clients used before they restarted as new devices (their grants live on
    /// until they end): actor and source address.
    retired: BTreeMap<String, (Uuid, IpAddr)>,
    /// The last authorization each gateway was told of, by id, to tell renewals and updates.
    told: BTreeMap<Uuid, Authorization>,
    coverage: Coverage,
    groups: Vec<Uuid>,
    actors: Vec<Uuid>,
    trace: Vec<String>,
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Utc.with_ymd_and_hms(2026, 3, 27, 6, 0, 0).unwrap()
            + Duration::minutes(rng.gen_range(0..60 * 24 * 7));
        let account_id = id(1);
        let mut db = Db {
            account_id,
            ..Db::default()
        };
        let (site_a, site_b) = (id(10), id(11));
        db.sites.insert(site_a, "dc-a".into());
        db.sites.insert(site_b, "dc-b".into());
        let actors = vec![id(20), id(21), id(22)];
        let groups = vec![id(30), id(31)];
        let tokens = [
            (id(40), Some(actors[0])),
            (id(41), Some(actors[0])),
            (id(42), Some(actors[1])),
            (id(43), Some(actors[2])),
        ];
        for (token_id, actor) in tokens {
            let days = rng.gen_range(1..400);
            db.tokens.insert(
                token_id,
                TokenRecord {
                    actor_id: actor,
                    site_id: None,
                    revoked: false,
                    expires_at: start + Duration::days(days),
                    require_approval: false,
                    rotated_from: None,
                    successor: None,
                },
            );
        }
        for (token_id, site) in [(id(50), site_a), (id(51), site_b)] {
            db.tokens.insert(
                token_id,
                TokenRecord {
                    actor_id: None,
                    site_id: Some(site),
                    revoked: false,
                    expires_at: start + Duration::days(365),
                    require_approval: false,
                    rotated_from: None,
                    successor: None,
                },
            );
        }
        let addresses = [
            "10.1.0.0/24",
            "10.2.0.5",
            "10.3.0.0/16",
            "192.168.7.0/24",
            "10.4.0.0/24",
            "10.5.0.9",
        ];
        for (n, address) in addresses.iter().enumerate() {
            let resource = Resource {
                id: id(60 + n as u128),
                account_id,
                site_id: if n % 2 == 0 { site_a } else { site_b },
                resource_type: if address.contains('/') {
                    ResourceType::Cidr
                } else {
                    ResourceType::Ip
                },
                name: format!("r{n}"),
                address: address.to_string(),
                description: None,
                filters: vec![],
                created_at: start,
                updated_at: start,
            };
            db.resources.insert(resource.id, resource);
        }
        for (group, actor) in [(0, 0), (0, 1), (1, 2)] {
            db.memberships.insert((groups[group], actors[actor]));
        }
        let clients = [
            ("c0", 0, id(40), "10.0.0.1"),
            ("c1", 0, id(40), "10.0.0.2"),
            ("c2", 0, id(41), "192.168.1.5"),
            ("c3", 1, id(42), "10.0.0.3"),
            ("c4", 2, id(43), "172.16.0.4"),
            ("c5", 0, id(40), "10.0.0.5"),
        ]
        .into_iter()
        .map(|(name, actor, token_id, ip)| SimClient {
            device_id: name.to_string(),
            actor_id: actors[actor],
            token_id,
            key: format!("key-{name}-0"),
            source_ip: ip.parse().unwrap(),
            session: None,
            state: ClientState::default(),
            handed: None,
        })
        .collect();
        let gateways = [
            ("g0", site_a, id(50)),
            ("g1", site_a, id(50)),
            ("g2", site_b, id(51)),
        ]
        .into_iter()
        .map(|(name, site_id, token_id)| SimGateway {
            device_id: name.to_string(),
            site_id,
            token_id,
            key: format!("key-{name}-0"),
            session: None,
            state: GatewayState::default(),
            slow: false,
        })
        .collect();
        let c5_bound_elsewhere = rng.gen_bool(0.5);
        let core = AccountSessions::new(
            account_id,
            config(),
            db.generation,
            Box::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        );
        let mut sim = Sim {
            c5_bound_elsewhere,
            retired: BTreeMap::new(),
            seed,
            step: 0,
            rng,
            now: start,
            core,
            db,
            clients,
            gateways,
            queues: BTreeMap::new(),
            next_session: 1,
            write_in_flight: None,
            claims_in_flight: None,
            fail_next_write: false,
            fail_next_load: false,
            slow_store: false,
            stale_since: None,
            refusals: Vec::new(),
            grant_tokens: BTreeMap::new(),
            told: BTreeMap::new(),
            coverage: Coverage::default(),
            groups,
            actors,
            trace: Vec::new(),
        };
        for n in 0..9 {
            sim.create_policy_with(n % 2 == 0);
        }
        for j in 0..sim.gateways.len() {
            let principal = sim
                .db
                .verify(sim.gateways[j].token_id, sim.now)
                .expect("token");
            sim.register(Who::Gateway(j), principal);
        }
        sim.drive();
        // Once this node has read the account, another portal node gets there first: it takes
        // the address c2 is offered first (sometimes the next one too), sometimes registers c4
        // itself (same holder), and sometimes binds c5's id to another service account.
        let mut taken = std::collections::HashSet::new();
        for _ in 0..sim.rng.gen_range(1..=2) {
            let tunnel = postern_sessions::allocate("client:c2", &taken).expect("an address");
            taken.insert(tunnel.ipv4);
            let name = format!("elsewhere-{}", taken.len());
            sim.foreign_device(&name, sim.actors[0], tunnel);
        }
        if sim.rng.gen_bool(0.5) {
            let tunnel =
                postern_sessions::allocate("client:c4-elsewhere", &taken).expect("an address");
            sim.foreign_device("c4", sim.actors[2], tunnel);
        }
        if sim.c5_bound_elsewhere {
            let tunnel =
                postern_sessions::allocate("client:c5-elsewhere", &taken).expect("an address");
            sim.foreign_device("c5", sim.actors[1], tunnel);
        }
        for i in 0..sim.clients.len() {
            let principal = sim
                .db
                .verify(sim.clients[i].token_id, sim.now)
                .expect("token");
            sim.register(Who::Client(i), principal);
        }
        sim.drive();
        sim
    }

    /// A client device row another portal node wrote, unknown to this node's core.
    fn foreign_device(&mut self, device_id: &str, actor_id: Uuid, tunnel: TunnelAddresses) {
        let device = Device {
            id: Uuid::from_u128(9000 + self.db.devices.len() as u128),
            account_id: self.db.account_id,
            kind: DeviceKind::Client,
            device_id: device_id.to_string(),
            actor_id: Some(actor_id),
            site_id: None,
            token_id: None,
            name: device_id.to_string(),
            version: None,
            public_key: None,
            ipv4: tunnel.ipv4,
            ipv6: tunnel.ipv6,
            last_seen_ip: None,
            last_seen_at: self.now,
            created_at: self.now,
            approved_at: Some(self.now),
            ephemeral: false,
        };
        self.db
            .devices
            .insert((DeviceKind::Client, device_id.to_string()), device);
    }

    fn log(&mut self, what: String) {
        self.trace.push(format!(
            "{:>3} {} {what}",
            self.step,
            self.now.format("%a %H:%M:%S")
        ));
    }

    // ----- the shell's part -----

    /// Carries out the core's outputs until it has nothing more to say, as the tokio shell
    /// does; writes complete at once unless one is held back (`hold_writes`).
    fn drive(&mut self) {
        self.drive_with(self.slow_store);
    }

    fn drive_with(&mut self, hold_writes: bool) {
        for _ in 0..10_000 {
            let mut busy = false;
            if self.core.has_transmits() {
                busy = true;
                let mut queues = SimQueues {
                    queues: &mut self.queues,
                    clients: &self.clients,
                    grant_tokens: &mut self.grant_tokens,
                    told: &mut self.told,
                    coverage: &mut self.coverage,
                };
                self.core.deliver(&mut queues, self.now);
            }
            while let Some(event) = self.core.poll_event() {
                busy = true;
                self.on_event(event);
            }
            if let Some(op) = self.core.poll_store() {
                busy = true;
                self.carry_out(op);
            }
            if !hold_writes {
                if let Some(writes) = self.write_in_flight.take() {
                    busy = true;
                    self.finish_write(writes);
                }
                if let Some(devices) = self.claims_in_flight.take() {
                    busy = true;
                    self.finish_claims(devices);
                }
            }
            if !busy {
                // Devices reading their queues gives the core nothing new to do.
                self.read_queues();
                return;
            }
        }
        panic!("the core never became idle");
    }

    fn finish_claims(&mut self, devices: Vec<Device>) {
        if std::mem::take(&mut self.fail_next_write) {
            self.core.handle_claims_failed(self.now);
            return;
        }
        let outcomes: Vec<DeviceClaim> = devices.iter().map(|d| self.db.claim(d)).collect();
        self.coverage.claims_contested += outcomes
            .iter()
            .filter(|o| !matches!(o, DeviceClaim::Claimed))
            .count() as u64;
        self.core.handle_devices_claimed(outcomes, self.now);
    }

    fn finish_write(&mut self, writes: AuthorizationWrites) {
        if std::env::var("POSTERN_SIM_DEBUG").is_ok() {
            let save: Vec<String> = writes
                .save
                .iter()
                .map(|s| s.id.to_string()[..8].to_string())
                .collect();
            let delete: Vec<String> = writes
                .delete
                .iter()
                .map(|s| s.to_string()[..8].to_string())
                .collect();
            self.log(format!(
                "  write save {save:?} delete {delete:?} (fails: {})",
                self.fail_next_write
            ));
        }
        if std::mem::take(&mut self.fail_next_write) {
            self.core.handle_write_done(Some(writes), self.now);
        } else {
            self.db.write(&writes);
            self.core.handle_write_done(None, self.now);
        }
    }

    fn carry_out(&mut self, op: StoreOp) {
        match op {
            StoreOp::RemoveDevices { ids, .. } => {
                self.db.devices.retain(|_, d| !ids.contains(&d.id));
            }
            StoreOp::RecordTokenMove { from, to, .. } => {
                assert_eq!(self.db.tokens[&to].rotated_from, Some(from));
            }
            StoreOp::ApproveDevices(ids) => {
                let now = self.now;
                for row in self.db.devices.values_mut() {
                    if ids.contains(&row.id) {
                        row.approved_at.get_or_insert(now);
                    }
                }
            }
            StoreOp::RecordDevice(device) => {
                self.db
                    .pending_devices
                    .insert((device.kind, device.device_id.clone()), device);
            }
            StoreOp::ClaimDevices(devices) => {
                assert!(
                    self.claims_in_flight.is_none(),
                    "the core asked for a second claim while one was in flight"
                );
                self.claims_in_flight = Some(devices);
            }
            StoreOp::Write(writes) => {
                assert!(
                    self.write_in_flight.is_none(),
                    "the core asked for a second write while one was in flight"
                );
                self.write_in_flight = Some(writes);
            }
            StoreOp::AnnounceGateway { .. } => {}
            StoreOp::LoadGrants => {
                if std::mem::take(&mut self.fail_next_load) {
                    self.core.handle_load_failed(StoreOp::LoadGrants, self.now);
                    return;
                }
                let load = GrantsLoad {
                    authorizations: self.db.loaded_authorizations(self.now),
                    remote_gateways: Vec::new(),
                };
                self.core.handle_grants_loaded(load, self.now);
            }
            StoreOp::LoadAccount => {
                if std::mem::take(&mut self.fail_next_load) {
                    self.stale_since.get_or_insert(self.now);
                    self.core.handle_load_failed(StoreOp::LoadAccount, self.now);
                    return;
                }
                self.stale_since = None;
                let load = AccountLoad {
                    slug: "default".into(),
                    access: self.db.access(),
                    devices: self.db.devices(),
                    authorizations: self.db.loaded_authorizations(self.now),
                    remote_gateways: Vec::new(),
                };
                let loaded: Vec<String> = load
                    .authorizations
                    .iter()
                    .map(|a| {
                        format!(
                            "{}:{:?}",
                            &a.authorization.id.to_string()[..8],
                            a.token.map(|t| t.revoked)
                        )
                    })
                    .collect();
                self.core.handle_account_loaded(load, self.now);
                if std::env::var("POSTERN_SIM_DEBUG").is_ok() {
                    let held: Vec<String> = self
                        .core
                        .authorizations()
                        .iter()
                        .map(|a| a.id.to_string()[..8].to_string())
                        .collect();
                    self.log(format!(
                        "  load account: stored {loaded:?}, kept {held:?}, pending writes {}",
                        self.core.pending_writes()
                    ));
                }
            }
            StoreOp::LoadAccess { tokens } => {
                if std::mem::take(&mut self.fail_next_load) {
                    self.stale_since.get_or_insert(self.now);
                    self.core
                        .handle_load_failed(StoreOp::LoadAccess { tokens }, self.now);
                    return;
                }
                self.stale_since = None;
                let load = AccessLoad {
                    slug: "default".into(),
                    access: self.db.access(),
                    tokens: tokens
                        .iter()
                        .filter_map(|t| self.db.token_state(*t).map(|s| (*t, s)))
                        .collect(),
                    guardrails: tokens
                        .iter()
                        .filter(|t| self.db.tokens.contains_key(t))
                        .map(|t| (*t, self.db.guardrails(*t)))
                        .collect(),
                    successors: tokens
                        .iter()
                        .filter_map(|t| self.db.successor(*t, self.now).map(|s| (*t, s)))
                        .collect(),
                };
                self.core.handle_access_loaded(load, self.now);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Registered { session, .. } => {
                let Some(queue) = self.queues.get_mut(&session) else {
                    panic!("registered a session nobody asked for");
                };
                queue.live = true;
                match queue.who {
                    Who::Client(i) => self.clients[i].session = Some(session),
                    Who::Gateway(j) => self.gateways[j].session = Some(session),
                    Who::Intruder => panic!("an intruder was registered: {session:?}"),
                }
            }
            Event::Refused { session, refusal } => {
                let queue = self
                    .queues
                    .remove(&session)
                    .expect("refused an unknown session");
                if queue.who == Who::Intruder {
                    if matches!(refusal, Refusal::Conflict(_)) {
                        self.coverage.conflicts += 1;
                    }
                    self.refusals.push(refusal);
                    return;
                }
                if matches!(refusal, Refusal::DeviceRefused(_)) {
                    self.coverage.blocked_refused += 1;
                }
                if refusal == Refusal::Recheck {
                    self.coverage.rechecks += 1;
                    // The hub checks the token again and registers anew.
                    match self.db.verify(queue.token_id, self.now) {
                        Ok(principal) => self.register(queue.who, principal),
                        Err(why) => self.log(format!("  recheck refused {:?}: {why}", queue.who)),
                    }
                }
            }
            Event::Ended { session, .. } => {
                if let Some(queue) = self.queues.get_mut(&session) {
                    queue.closed = true;
                    queue.live = false;
                }
            }
        }
    }

    /// Devices read their queues (slow gateways do not); a closed queue read to its end is a
    /// closed socket.
    fn read_queues(&mut self) {
        let sessions: Vec<SessionId> = self.queues.keys().copied().collect();
        for session in sessions {
            let Some(queue) = self.queues.get(&session) else {
                continue;
            };
            let who = queue.who;
            if let Who::Gateway(j) = who {
                if self.gateways[j].slow {
                    if queue.closed {
                        // A device that does not read is cut by the write timeout.
                        self.queues.remove(&session);
                        self.core.handle_unregister(session, self.now);
                        if self.gateways[j].session == Some(session) {
                            self.gateways[j].session = None;
                        }
                    }
                    continue;
                }
            }
            let queue = self.queues.get_mut(&session).expect("queue");
            let messages: Vec<Outbound> = queue.messages.drain(..).collect();
            let closed = queue.closed;
            let mut disconnected = closed;
            for message in messages {
                match message {
                    Outbound::Close { .. } => disconnected = true,
                    Outbound::Text(text) => self.apply(who, &text),
                }
            }
            if disconnected {
                self.queues.remove(&session);
                // The session's task ends and drops its handle, as in the shell.
                self.core.handle_unregister(session, self.now);
                match who {
                    Who::Client(i) if self.clients[i].session == Some(session) => {
                        self.clients[i].session = None
                    }
                    Who::Gateway(j) if self.gateways[j].session == Some(session) => {
                        self.gateways[j].session = None
                    }
                    _ => {}
                }
            }
        }
    }

    fn apply(&mut self, who: Who, text: &str) {
        match who {
            Who::Client(i) => {
                let message: PortalToClient = decode(text).expect("a client message");
                if let PortalToClient::TokenRotated { token_id, .. } = &message {
                    let client = &mut self.clients[i];
                    assert_eq!(
                        self.db.tokens[token_id].rotated_from,
                        Some(client.token_id),
                        "{} was handed a successor of another token",
                        client.device_id
                    );
                    assert_ne!(
                        client.handed,
                        Some(*token_id),
                        "{} was handed the same successor twice in one session",
                        client.device_id
                    );
                    client.handed = Some(*token_id);
                }
                self.clients[i].state.apply(message);
            }
            Who::Gateway(j) => {
                let message: PortalToGateway = decode(text).expect("a gateway message");
                self.gateways[j].state.apply(message);
            }
            Who::Intruder => {}
        }
    }

    fn register(&mut self, who: Who, principal: Principal) {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let (params, capacity) = match who {
            Who::Client(i) => {
                let c = &self.clients[i];
                (params(&c.device_id, Some(wire_key(&c.key)), None), 8)
            }
            Who::Gateway(j) => {
                let g = &self.gateways[j];
                let endpoint = format!("{}.example:51820", g.device_id);
                (
                    params(&g.device_id, Some(wire_key(&g.key)), Some(endpoint)),
                    12,
                )
            }
            Who::Intruder => unreachable!("intruders register through `intrude`"),
        };
        let source_ip = match who {
            Who::Client(i) => Some(self.clients[i].source_ip),
            _ => Some("203.0.113.9".parse().unwrap()),
        };
        self.queues.insert(
            session,
            Queue {
                who,
                messages: VecDeque::new(),
                capacity,
                closed: false,
                live: false,
                token_id: principal.token_id,
            },
        );
        self.core.handle_register(
            Registration {
                session,
                kind: match who {
                    Who::Client(_) => DeviceKind::Client,
                    _ => DeviceKind::Gateway,
                },
                principal,
                params,
                source_ip,
                remote_sessions_on_token: 0,
            },
            self.now,
        );
    }

    fn change(&mut self, event: ChangeEvent) {
        if matches!(
            event,
            ChangeEvent::TokensRevoked { .. }
                | ChangeEvent::TokenUpdated { .. }
                | ChangeEvent::TokenRotated { .. }
                | ChangeEvent::ActorDisabled { .. }
                | ChangeEvent::ActorDeleted { .. }
                | ChangeEvent::SiteDeleted { .. }
        ) {
            self.db.generation += 1;
        }
        self.core
            .handle_change(&event, self.db.generation, self.now);
    }

    // ----- time -----

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..100_000 {
            match self.core.poll_timeout() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    self.expire_on_devices();
                    self.core.handle_timeout(self.now);
                    self.drive();
                }
                _ => {
                    self.now = target;
                    self.expire_on_devices();
                    return;
                }
            }
        }
        panic!("the core keeps asking to be woken without time passing");
    }

    fn expire_on_devices(&mut self) {
        for gateway in &mut self.gateways {
            gateway.state.expire(self.now);
        }
        for client in &mut self.clients {
            client.state.expire(self.now);
        }
    }

    // ----- random steps -----

    fn random_step(&mut self) {
        if self.rng.gen_bool(0.7) {
            self.move_handed_clients();
        }
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=11 => self.connect_random_client(),
            12 => self.disconnect_random_client(),
            13 => self.toggle_block(),
            14..=19 => self.connect_random_gateway(),
            20..=21 => self.disconnect_random_gateway(),
            22..=37 => self.request_random_access(),
            38..=39 => self.flood(),
            40..=43 => self.toggle_membership(),
            44..=46 => self.create_policy(),
            47..=49 => self.delete_or_toggle_policy(),
            50..=53 => self.change_resource(),
            54..=55 => self.revoke_random_token(),
            56 => self.rotate_random_token(),
            57 => self.admission_race(),
            58..=59 => self.toggle_actor(),
            60 => self.rotate_client_key(),
            61 => self.restart_as_new_device(),
            62 => self.rotate_gateway_key(),
            63..=64 => self.intrude(),
            65..=67 => self.toggle_slow_gateway(),
            68 => self.fail_next_write = true,
            69 => self.fail_next_load = true,
            70..=72 => self.toggle_approval(),
            73..=84 => {
                let seconds = self.rng.gen_range(1..40);
                self.log(format!("advance {seconds} s"));
                self.advance(Duration::seconds(seconds));
            }
            85..=92 => {
                let minutes = self.rng.gen_range(5..120);
                self.log(format!("advance {minutes} min"));
                self.advance(Duration::minutes(minutes));
            }
            93 => self.missed_changes(),
            94 => {
                let hours = self.rng.gen_range(2..30);
                self.log(format!("advance {hours} h"));
                self.advance(Duration::hours(hours));
            }
            95 => {
                self.slow_store = !self.slow_store;
                self.log(format!("slow store: {}", self.slow_store));
            }
            96 => self.restart(true),
            97 => self.revoke_then_crash(),
            _ => self.restart(false),
        }
        self.drive();
    }

    fn connect_random_client(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        if self.clients[i].session.is_some() || self.pending(Who::Client(i)) {
            return;
        }
        self.log(format!("connect client {}", self.clients[i].device_id));
        if let Ok(principal) = self.db.verify(self.clients[i].token_id, self.now) {
            self.register(Who::Client(i), principal);
        }
    }

    fn pending(&self, who: Who) -> bool {
        self.queues.values().any(|q| q.who == who && !q.closed)
    }

    fn disconnect_random_client(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        let Some(session) = self.clients[i].session.take() else {
            return;
        };
        self.log(format!("disconnect client {}", self.clients[i].device_id));
        self.queues.remove(&session);
        self.core.handle_unregister(session, self.now);
    }

    fn connect_random_gateway(&mut self) {
        let j = self.rng.gen_range(0..self.gateways.len());
        if self.gateways[j].session.is_some() || self.pending(Who::Gateway(j)) {
            return;
        }
        self.log(format!("connect gateway {}", self.gateways[j].device_id));
        if let Ok(principal) = self.db.verify(self.gateways[j].token_id, self.now) {
            self.register(Who::Gateway(j), principal);
        }
    }

    fn disconnect_random_gateway(&mut self) {
        let j = self.rng.gen_range(0..self.gateways.len());
        let Some(session) = self.gateways[j].session.take() else {
            return;
        };
        self.log(format!("disconnect gateway {}", self.gateways[j].device_id));
        self.queues.remove(&session);
        self.core.handle_unregister(session, self.now);
    }

    fn random_resource(&mut self) -> Uuid {
        let ids: Vec<Uuid> = self.db.resources.keys().copied().collect();
        ids[self.rng.gen_range(0..ids.len())]
    }

    fn request_random_access(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        let Some(session) = self.clients[i].session else {
            return;
        };
        // Mostly what the client was told it may reach, as a real client asks.
        let known: Vec<Uuid> = self.clients[i].state.resources.keys().copied().collect();
        let resource = if !known.is_empty() && self.rng.gen_bool(0.8) {
            known[self.rng.gen_range(0..known.len())]
        } else {
            self.random_resource()
        };
        self.log(format!(
            "client {} requests {resource}",
            self.clients[i].device_id
        ));
        self.core
            .handle_request_access(session, resource, None, self.now);
    }

    fn flood(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        let Some(session) = self.clients[i].session else {
            return;
        };
        let resource = self.random_resource();
        let times = self.rng.gen_range(5..40);
        self.log(format!(
            "client {} requests {resource} {times} times",
            self.clients[i].device_id
        ));
        for n in 0..times {
            let _ = n;
            self.core
                .handle_request_access(session, resource, None, self.now);
            self.drive();
        }
    }

    fn toggle_membership(&mut self) {
        let group = self.groups[self.rng.gen_range(0..self.groups.len())];
        let actor = self.actors[self.rng.gen_range(0..self.actors.len())];
        let (added, removed) = if self.db.memberships.remove(&(group, actor)) {
            (vec![], vec![actor])
        } else {
            self.db.memberships.insert((group, actor));
            (vec![actor], vec![])
        };
        self.log(format!(
            "membership {actor} in {group}: +{added:?} -{removed:?}"
        ));
        self.change(ChangeEvent::MembershipChanged {
            account_id: self.db.account_id,
            group_id: group,
            added,
            removed,
        });
    }

    fn random_conditions(&mut self) -> Vec<Condition> {
        let mut conditions = Vec::new();
        if self.rng.gen_bool(0.35) {
            let specs = [
                "Mon-Fri 09:00-17:00 Europe/Berlin",
                "Mon-Sun 06:00-06:30 UTC",
                "Sat-Sun 22:00-02:00 America/New_York",
                "Mon-Sun 00:00-24:00 UTC",
                "Tue 10:15-10:45 Asia/Kolkata",
            ];
            let spec = specs[self.rng.gen_range(0..specs.len())];
            conditions.push(Condition::TimeWindow(
                postern_policy::TimeWindow::from_specs([spec]).expect("valid spec"),
            ));
        }
        if self.rng.gen_bool(0.25) {
            let ranges = ["10.0.0.0/24", "192.168.0.0/16", "10.0.0.2/32"];
            let range = ranges[self.rng.gen_range(0..ranges.len())];
            conditions.push(Condition::SourceIp {
                operator: if self.rng.gen_bool(0.5) {
                    IpOperator::In
                } else {
                    IpOperator::NotIn
                },
                ranges: vec![range.parse().expect("range")],
            });
        }
        conditions
    }

    fn create_policy(&mut self) {
        self.create_policy_with(false);
    }

    fn create_policy_with(&mut self, unconditional: bool) {
        let group = self.groups[self.rng.gen_range(0..self.groups.len())];
        let resource = self.random_resource();
        let conditions = if unconditional {
            vec![]
        } else {
            self.random_conditions()
        };
        let policy_id = Uuid::from_u128(1000 + self.rng.gen_range(0..1_000_000u128));
        self.log(format!(
            "policy {policy_id}: {group} -> {resource} ({} conditions)",
            conditions.len()
        ));
        self.db.policies.insert(
            policy_id,
            Policy {
                id: policy_id,
                account_id: self.db.account_id,
                group_id: group,
                resource_id: resource,
                description: None,
                conditions,
                disabled: false,
                disabled_at: None,
                created_at: self.now,
                updated_at: self.now,
            },
        );
        self.change(ChangeEvent::PolicyCreated {
            account_id: self.db.account_id,
            policy_id,
        });
    }

    fn delete_or_toggle_policy(&mut self) {
        let ids: Vec<Uuid> = self.db.policies.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let policy_id = ids[self.rng.gen_range(0..ids.len())];
        let account_id = self.db.account_id;
        match self.rng.gen_range(0..3) {
            0 => {
                self.log(format!("delete policy {policy_id}"));
                self.db.policies.remove(&policy_id);
                self.change(ChangeEvent::PolicyDeleted {
                    account_id,
                    policy_id,
                });
            }
            1 => {
                let conditions = self.random_conditions();
                self.log(format!("change conditions of policy {policy_id}"));
                if let Some(p) = self.db.policies.get_mut(&policy_id) {
                    p.conditions = conditions;
                }
                self.change(ChangeEvent::PolicyUpdated {
                    account_id,
                    policy_id,
                });
            }
            _ => {
                let policy = self.db.policies.get_mut(&policy_id).expect("policy");
                policy.disabled = !policy.disabled;
                let disabled = policy.disabled;
                self.log(format!("policy {policy_id} disabled={disabled}"));
                self.change(ChangeEvent::PolicyUpdated {
                    account_id,
                    policy_id,
                });
            }
        }
    }

    fn change_resource(&mut self) {
        let resource_id = self.random_resource();
        let sites: Vec<Uuid> = self.db.sites.keys().copied().collect();
        let what = self.rng.gen_range(0..4);
        let resource = self.db.resources.get_mut(&resource_id).expect("resource");
        let description = match what {
            0 => {
                resource.filters = match resource.filters.is_empty() {
                    true => vec![Filter {
                        protocol: Protocol::Tcp,
                        ports: postern_policy::parse_ports("443").expect("ports"),
                    }],
                    false => vec![],
                };
                format!("filters of {resource_id} -> {:?}", resource.filters)
            }
            1 => {
                let new = if resource.address.ends_with(".0/24") {
                    resource.address.replace(".0/24", ".0/25")
                } else {
                    resource.address.replace(".0/25", ".0/24")
                };
                resource.address = new;
                format!("address of {resource_id} -> {}", resource.address)
            }
            2 => {
                resource.site_id = if resource.site_id == sites[0] {
                    sites[1]
                } else {
                    sites[0]
                };
                format!("site of {resource_id} -> {}", resource.site_id)
            }
            _ => {
                resource.name = format!("{}-renamed", resource.name);
                format!("rename {resource_id}")
            }
        };
        self.log(description);
        self.change(ChangeEvent::ResourceUpdated {
            account_id: self.db.account_id,
            resource_id,
            address_or_site_changed: what == 1 || what == 2,
        });
    }

    /// Rotates a live client token with a window of a few minutes to hours, as
    /// `Store::rotate_token` does.
    fn rotate_random_token(&mut self) {
        let now = self.now;
        let live: Vec<Uuid> = self
            .db
            .tokens
            .iter()
            .filter(|(_, t)| {
                t.actor_id.is_some() && !t.revoked && t.successor.is_none() && t.expires_at > now
            })
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return;
        }
        let token_id = live[self.rng.gen_range(0..live.len())];
        let overlap = Duration::minutes(self.rng.gen_range(1..180));
        let successor = Uuid::from_u128(7_000_000 + self.rng.gen_range(0..1_000_000u128));
        let token = self.db.tokens.get_mut(&token_id).expect("token");
        token.expires_at = token.expires_at.min(now + overlap);
        token.successor = Some(successor);
        let record = TokenRecord {
            expires_at: now + Duration::days(30),
            rotated_from: Some(token_id),
            successor: None,
            ..token.clone()
        };
        self.db.tokens.insert(successor, record);
        self.coverage.rotations += 1;
        self.log(format!(
            "rotate token {token_id} to {successor} (window {overlap})"
        ));
        self.change(ChangeEvent::TokenCreated {
            account_id: self.db.account_id,
            token_id: successor,
        });
        let expires_at = self.db.tokens[&token_id].expires_at;
        self.change(ChangeEvent::TokenRotated {
            account_id: self.db.account_id,
            token_id,
            successor_id: successor,
            expires_at,
        });
    }

    /// The clients handed a successor reconnect with it, as the device's session loop does;
    /// the model takes their grants to the successor with them.
    fn move_handed_clients(&mut self) {
        for i in 0..self.clients.len() {
            let Some(successor) = self.clients[i].handed.take() else {
                continue;
            };
            let old = self.clients[i].token_id;
            if let Some(session) = self.clients[i].session.take() {
                self.queues.remove(&session);
                self.core.handle_unregister(session, self.now);
            }
            self.log(format!(
                "client {} moves from {old} to {successor}",
                self.clients[i].device_id
            ));
            self.clients[i].token_id = successor;
            let device = self.clients[i].device_id.clone();
            for (id, token) in self.grant_tokens.iter_mut() {
                let of_device = self
                    .told
                    .get(id)
                    .is_some_and(|a| a.client_device_id == device);
                if *token == old && of_device {
                    *token = successor;
                }
            }
            if let Ok(principal) = self.db.verify(successor, self.now) {
                self.coverage.moved += 1;
                self.register(Who::Client(i), principal);
            }
        }
    }

    fn revoke_random_token(&mut self) {
        let ids: Vec<Uuid> = self.db.tokens.keys().copied().collect();
        let token_id = ids[self.rng.gen_range(0..ids.len())];
        self.revoke(token_id);
    }

    fn revoke(&mut self, token_id: Uuid) {
        let token = self.db.tokens.get_mut(&token_id).expect("token");
        if token.revoked {
            return;
        }
        token.revoked = true;
        self.log(format!("revoke token {token_id}"));
        self.change(ChangeEvent::TokensRevoked {
            account_id: self.db.account_id,
            token_ids: vec![token_id],
        });
        // A later step may issue a new token to the same holder.
        if self.rng.gen_bool(0.5) {
            let replacement = Uuid::from_u128(5000 + self.rng.gen_range(0..1_000_000u128));
            let record = TokenRecord {
                revoked: false,
                expires_at: self.now + Duration::days(self.rng.gen_range(1..30)),
                rotated_from: None,
                successor: None,
                ..self.db.tokens[&token_id].clone()
            };
            self.db.tokens.insert(replacement, record);
            for client in &mut self.clients {
                if client.token_id == token_id {
                    client.token_id = replacement;
                }
            }
            for gateway in &mut self.gateways {
                if gateway.token_id == token_id {
                    gateway.token_id = replacement;
                }
            }
        }
    }

    /// Changes this node never heard (its feed was cut beyond recovery): a token revoked and a
    /// grant deleted by another node; then the gap is reported and the core resyncs — it must
    /// end the token's sessions and withdraw its grants, and drop the deleted grant from itself
    /// and its gateways.
    fn missed_changes(&mut self) {
        if self.rng.gen_bool(0.5) {
            let ids: Vec<Uuid> = self.db.tokens.keys().copied().collect();
            let token_id = ids[self.rng.gen_range(0..ids.len())];
            if let Some(token) = self.db.tokens.get_mut(&token_id) {
                if !token.revoked {
                    token.revoked = true;
                    self.log(format!("token {token_id} revoked unheard"));
                }
            }
        }
        if self.rng.gen_bool(0.3) {
            let i = self.rng.gen_range(0..self.clients.len());
            let device_id = self.clients[i].device_id.clone();
            let row = self
                .db
                .devices
                .get(&(DeviceKind::Client, device_id.clone()));
            if let Some(row) = row.filter(|r| r.actor_id == Some(self.clients[i].actor_id)) {
                let key = row.public_key;
                self.db.blocked.insert(device_id.clone(), key);
                self.log(format!("client {device_id} blocked unheard"));
                self.coverage.blocked_unheard += 1;
            }
        }
        if self.rng.gen_bool(0.7) && self.write_in_flight.is_none() {
            let ids: Vec<Uuid> = self.db.authorizations.keys().copied().collect();
            if !ids.is_empty() {
                let id = ids[self.rng.gen_range(0..ids.len())];
                self.db.authorizations.remove(&id);
                self.log(format!("grant {id} deleted unheard"));
                self.coverage.missed_deletes += 1;
            }
        }
        self.db.generation += 1;
        self.fail_next_load = false;
        self.log("resync".into());
        self.core.handle_resync(self.db.generation);
        // A read that failed just before is retried after `store_retry`: only then can the
        // core know what it missed.
        self.drive();
        self.advance(config().store_retry);
    }

    /// The report's first defect: a token is revoked (its gateways told), the store is slow to
    /// delete the grants, and the portal crashes before it has: the grants read back after
    /// the restart must not reach any gateway.
    fn revoke_then_crash(&mut self) {
        let tokens: BTreeSet<Uuid> = self
            .core
            .authorizations()
            .iter()
            .filter_map(|a| self.grant_tokens.get(&a.id).copied())
            .collect();
        let Some(&token_id) = tokens.iter().next() else {
            return;
        };
        self.log(format!("revoke {token_id} with a slow store, then crash"));
        self.drive();
        self.slow_store = true;
        self.revoke(token_id);
        self.drive();
        self.restart(false);
    }

    /// A token checked at admission, revoked before its session registers: the session must
    /// not live on (either order of the revocation's arrival and the registration).
    fn admission_race(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        if self.clients[i].session.is_some() || self.pending(Who::Client(i)) {
            return;
        }
        let token_id = self.clients[i].token_id;
        let Ok(principal) = self.db.verify(token_id, self.now) else {
            return;
        };
        self.log(format!(
            "admission race: client {} checked, then token revoked",
            self.clients[i].device_id
        ));
        if self.rng.gen_bool(0.5) {
            self.revoke(token_id);
            self.drive();
            self.register(Who::Client(i), principal);
        } else {
            self.register(Who::Client(i), principal);
            self.drive();
            self.revoke(token_id);
        }
    }

    /// An administrator blocks a client device (its row's id and key), or unblocks one.
    fn toggle_block(&mut self) {
        // Mostly a device that holds grants: the case that matters.
        let granted: Vec<usize> = (0..self.clients.len())
            .filter(|&i| {
                let id = &self.clients[i].device_id;
                self.core
                    .authorizations()
                    .iter()
                    .any(|a| &a.client_device_id == id)
            })
            .collect();
        let i = if !granted.is_empty() && self.rng.gen_bool(0.7) {
            granted[self.rng.gen_range(0..granted.len())]
        } else {
            self.rng.gen_range(0..self.clients.len())
        };
        let device_id = self.clients[i].device_id.clone();
        let account_id = self.db.account_id;
        if self.db.blocked.remove(&device_id).is_some() {
            self.log(format!("unblock client {device_id}"));
            self.change(ChangeEvent::DeviceUnblocked {
                account_id,
                device_id,
            });
            return;
        }
        // The store blocks rows it has written: a device it never saw cannot be blocked.
        let Some(row) = self
            .db
            .devices
            .get(&(DeviceKind::Client, device_id.clone()))
        else {
            return;
        };
        if row.actor_id != Some(self.clients[i].actor_id) {
            return;
        }
        let key = row.public_key;
        if self
            .core
            .authorizations()
            .iter()
            .any(|a| a.client_device_id == device_id)
        {
            self.coverage.blocked_with_grants += 1;
        }
        self.db.blocked.insert(device_id.clone(), key);
        self.log(format!("block client {device_id}"));
        self.change(ChangeEvent::DeviceBlocked {
            account_id,
            device_id,
        });
    }

    /// An administrator makes a client token require approval (or no longer), or approves a
    /// device that waits.
    fn toggle_approval(&mut self) {
        let account_id = self.db.account_id;
        let waiting: Vec<String> = self
            .db
            .devices
            .values()
            .filter(|d| d.kind == DeviceKind::Client && d.approved_at.is_none())
            .map(|d| d.device_id.clone())
            .collect();
        if !waiting.is_empty() && self.rng.gen_bool(0.5) {
            let device_id = waiting[self.rng.gen_range(0..waiting.len())].clone();
            let now = self.now;
            if let Some(row) = self
                .db
                .devices
                .get_mut(&(DeviceKind::Client, device_id.clone()))
            {
                row.approved_at = Some(now);
            }
            self.coverage.approved += 1;
            self.log(format!("approve client {device_id}"));
            self.change(ChangeEvent::DeviceApproved {
                account_id,
                device_id,
            });
            return;
        }
        let tokens: Vec<Uuid> = self
            .db
            .tokens
            .iter()
            .filter(|(_, t)| t.actor_id.is_some() && !t.revoked)
            .map(|(id, _)| *id)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let token_id = tokens[self.rng.gen_range(0..tokens.len())];
        let Some(token) = self.db.tokens.get_mut(&token_id) else {
            return;
        };
        token.require_approval = !token.require_approval;
        let now = token.require_approval;
        self.log(format!("token {token_id} requires approval: {now}"));
        self.change(ChangeEvent::TokenUpdated {
            account_id,
            token_id,
        });
    }

    fn toggle_actor(&mut self) {
        let actor_id = self.actors[self.rng.gen_range(0..self.actors.len())];
        let account_id = self.db.account_id;
        if self.db.disabled_actors.remove(&actor_id) {
            self.log(format!("enable actor {actor_id}"));
            self.change(ChangeEvent::ActorEnabled {
                account_id,
                actor_id,
            });
        } else {
            self.db.disabled_actors.insert(actor_id);
            self.log(format!("disable actor {actor_id}"));
            self.change(ChangeEvent::ActorDisabled {
                account_id,
                actor_id,
            });
        }
    }

    /// A client comes back as a new device (a CI runner with a fresh id): its row is claimed
    /// anew, maybe while the store is slow and while it already asks for access.
    fn restart_as_new_device(&mut self) {
        let i = self.rng.gen_range(0..5); // c5 keeps its id bound elsewhere
        let old = self.clients[i].device_id.clone();
        let new = format!("{}-{}", old.split('-').next().unwrap_or("c"), self.step);
        self.log(format!("client {old} restarts as new device {new}"));
        if let Some(session) = self.clients[i].session.take() {
            self.queues.remove(&session);
            self.core.handle_unregister(session, self.now);
        }
        let client = &mut self.clients[i];
        self.retired
            .insert(old, (client.actor_id, client.source_ip));
        client.device_id = new.clone();
        client.key = format!("key-{new}");
        client.state = ClientState::default();
        self.drive();
        if let Ok(principal) = self.db.verify(self.clients[i].token_id, self.now) {
            self.register(Who::Client(i), principal);
            self.drive();
            let known: Vec<Uuid> = self.db.resources.keys().copied().collect();
            if let (Some(session), Some(resource)) = (self.clients[i].session, known.first()) {
                self.core
                    .handle_request_access(session, *resource, None, self.now);
            }
        }
    }

    fn rotate_client_key(&mut self) {
        let i = self.rng.gen_range(0..self.clients.len());
        let generation: u32 = self.rng.gen_range(1..1000);
        let client = &mut self.clients[i];
        client.key = format!("key-{}-{generation}", client.device_id);
        client.state = ClientState::default();
        self.log(format!(
            "client {} restarts with a new key",
            self.clients[i].device_id
        ));
        if let Some(session) = self.clients[i].session.take() {
            self.queues.remove(&session);
            self.core.handle_unregister(session, self.now);
        }
        self.drive();
        if let Ok(principal) = self.db.verify(self.clients[i].token_id, self.now) {
            self.register(Who::Client(i), principal);
        }
    }

    fn rotate_gateway_key(&mut self) {
        let j = self.rng.gen_range(0..self.gateways.len());
        let generation: u32 = self.rng.gen_range(1..1000);
        let gateway = &mut self.gateways[j];
        gateway.key = format!("key-{}-{generation}", gateway.device_id);
        gateway.state = GatewayState::default();
        self.log(format!(
            "gateway {} restarts with a new key",
            self.gateways[j].device_id
        ));
        if let Some(session) = self.gateways[j].session.take() {
            self.queues.remove(&session);
            self.core.handle_unregister(session, self.now);
        }
        self.drive();
        if let Ok(principal) = self.db.verify(self.gateways[j].token_id, self.now) {
            self.register(Who::Gateway(j), principal);
        }
    }

    /// Another service account claims a client's device id, a device claims another's key,
    /// or a gateway of the other site claims a gateway's id: each is refused, and the
    /// device it targets keeps its record.
    fn intrude(&mut self) {
        let kind = self.rng.gen_range(0..3);
        let (victim_kind, victim_id, token_id, claimed_key, device_id) = match kind {
            0 => {
                let i = self.rng.gen_range(0..self.clients.len());
                let victim = &self.clients[i];
                // Another holder than the one the database binds the id to.
                let owner = self
                    .db
                    .device(DeviceKind::Client, &victim.device_id)
                    .and_then(|d| d.actor_id)
                    .unwrap_or(victim.actor_id);
                let token = self
                    .clients
                    .iter()
                    .find(|c| c.actor_id != owner)
                    .map(|c| c.token_id)
                    .expect("another actor");
                let id = victim.device_id.clone();
                (
                    DeviceKind::Client,
                    id.clone(),
                    token,
                    wire_key(&format!("intruder-{}", self.step)),
                    id,
                )
            }
            1 => {
                let i = self.rng.gen_range(0..self.clients.len());
                let victim = &self.clients[i];
                // The key the victim holds now: one it gave up (a restart with a new key whose
                // registration waits for a reload) is free to be used by another device.
                let live = victim
                    .session
                    .is_some_and(|s| self.queues.get(&s).is_some_and(|q| q.live));
                if !live {
                    return;
                }
                let key = wire_key(&victim.key);
                let token = victim.token_id;
                (
                    DeviceKind::Client,
                    victim.device_id.clone(),
                    token,
                    key,
                    format!("copycat-{}", self.step),
                )
            }
            _ => {
                let j = self.rng.gen_range(0..self.gateways.len());
                let victim = &self.gateways[j];
                let token = self
                    .gateways
                    .iter()
                    .find(|g| g.site_id != victim.site_id)
                    .map(|g| g.token_id)
                    .expect("another site");
                let id = victim.device_id.clone();
                (
                    DeviceKind::Gateway,
                    id.clone(),
                    token,
                    wire_key(&format!("intruder-{}", self.step)),
                    id,
                )
            }
        };
        let Some(before) = self.db.device(victim_kind, &victim_id).cloned() else {
            return;
        };
        let Ok(principal) = self.db.verify(token_id, self.now) else {
            return;
        };
        self.log(format!(
            "intruder claims {victim_kind:?} {victim_id} as {device_id}"
        ));
        let mut answer = None;
        for _ in 0..5 {
            let session = SessionId(self.next_session);
            self.next_session += 1;
            self.queues.insert(
                session,
                Queue {
                    who: Who::Intruder,
                    messages: VecDeque::new(),
                    capacity: 8,
                    closed: false,
                    live: false,
                    token_id,
                },
            );
            let refused_before = self.refusals.len();
            self.core.handle_register(
                Registration {
                    session,
                    kind: victim_kind,
                    principal: principal.clone(),
                    params: params(&device_id, Some(claimed_key), None),
                    source_ip: Some("198.51.100.7".parse().unwrap()),
                    remote_sessions_on_token: 0,
                },
                self.now,
            );
            self.drive();
            for _ in 0..10 {
                if self.refusals.len() > refused_before {
                    break;
                }
                // A failed read of the account is retried a moment later.
                self.advance(Duration::seconds(1));
            }
            assert_eq!(
                self.refusals.len(),
                refused_before + 1,
                "the intruder's registration got no answer"
            );
            answer = self.refusals.last().cloned();
            // A passing refusal (the account could not be read) is retried, as devices do.
            if !matches!(answer, Some(Refusal::Unavailable(_))) {
                break;
            }
            self.advance(Duration::seconds(1));
        }
        let blocked =
            victim_kind == DeviceKind::Client && self.db.is_blocked(&device_id, Some(&claimed_key));
        assert!(
            matches!(answer, Some(Refusal::Conflict(_)))
                || (blocked && matches!(answer, Some(Refusal::DeviceRefused(_)))),
            "an intruder must be refused as a conflict (or as blocked), got {answer:?}"
        );
        let after = self
            .db
            .device(victim_kind, &victim_id)
            .expect("still there");
        assert_eq!(
            (after.actor_id, after.site_id, after.ipv4),
            (before.actor_id, before.site_id, before.ipv4),
            "the victim's device record changed"
        );
        // Its key may move only to the victim's own new one (a restart with a new key whose
        // registration waited for a reload and completed meanwhile), never to the intruder's.
        let victim_key = self
            .clients
            .iter()
            .find(|c| c.device_id == victim_id)
            .map(|c| wire_key(&c.key))
            .or_else(|| {
                self.gateways
                    .iter()
                    .find(|g| g.device_id == victim_id)
                    .map(|g| wire_key(&g.key))
            });
        assert!(
            after.public_key == before.public_key || after.public_key == victim_key,
            "the victim's key changed to another: {:?} -> {:?}",
            before.public_key,
            after.public_key
        );
    }

    fn toggle_slow_gateway(&mut self) {
        let j = self.rng.gen_range(0..self.gateways.len());
        self.gateways[j].slow = !self.gateways[j].slow;
        self.log(format!(
            "gateway {} slow={}",
            self.gateways[j].device_id, self.gateways[j].slow
        ));
    }

    /// The portal stops and starts again: a graceful stop first writes everything; a crash
    /// loses what was not written (buffered device sightings, queued and in-flight writes).
    fn restart(&mut self, graceful: bool) {
        self.log(format!("restart (graceful: {graceful})"));
        if graceful {
            self.fail_next_write = false;
            self.slow_store = false;
            for _ in 0..100 {
                self.drive();
                if self.core.pending_writes() == 0
                    && self.write_in_flight.is_none()
                    && self.claims_in_flight.is_none()
                {
                    break;
                }
                self.advance(Duration::seconds(1));
            }
            assert_eq!(self.core.pending_writes(), 0, "writes never finished");
            self.db.flush_devices();
        } else {
            self.slow_store = false;
            if let Some(writes) = self.write_in_flight.take() {
                if self.rng.gen_bool(0.5) {
                    self.db.write(&writes);
                } else {
                    self.coverage.lost_in_crash += 1;
                }
            }
            if let Some(devices) = self.claims_in_flight.take() {
                if self.rng.gen_bool(0.5) {
                    for device in &devices {
                        self.db.claim(device);
                    }
                }
            }
            self.db.pending_devices.clear();
        }
        // What the gateways hold once everything decided before the stop is out.
        let before: Vec<Option<BTreeMap<Uuid, Authorization>>> = (0..self.gateways.len())
            .map(|j| self.effective_gateway_grants(j))
            .collect();
        if before.iter().flatten().any(|grants| !grants.is_empty()) {
            self.coverage.restarts_with_grants += 1;
        }
        self.queues.clear();
        for client in &mut self.clients {
            client.session = None;
        }
        for gateway in &mut self.gateways {
            gateway.session = None;
            gateway.slow = false;
        }
        self.fail_next_load = false;
        self.stale_since = None;
        self.core = AccountSessions::new(
            self.db.account_id,
            config(),
            self.db.generation,
            Box::new(StdRng::seed_from_u64(self.seed ^ self.step as u64)),
        );
        let was_connected: Vec<usize> =
            (0..before.len()).filter(|j| before[*j].is_some()).collect();
        for j in was_connected {
            if let Ok(principal) = self.db.verify(self.gateways[j].token_id, self.now) {
                self.register(Who::Gateway(j), principal);
            }
        }
        self.drive();
        if !graceful {
            return;
        }
        for (j, before) in before.iter().enumerate() {
            let Some(before) = before else { continue };
            let Some(after) = self.effective_gateway_grants(j) else {
                continue;
            };
            let gateway = &self.gateways[j];
            for id in after.keys() {
                assert!(
                    before.contains_key(id),
                    "gateway {} got grant {id} after the restart that it did not have before",
                    gateway.device_id
                );
            }
            for (id, authorization) in before {
                if after.contains_key(id) || authorization.expires_at <= self.now {
                    continue;
                }
                if self.allowed(authorization, gateway).is_ok() {
                    panic!(
                        "gateway {} lost grant {id} ({} to {}) over a graceful restart, though \
                         the model still allows it",
                        gateway.device_id,
                        authorization.client_device_id,
                        authorization.resource.name
                    );
                }
            }
        }
    }

    // ----- the reference model and the invariants -----

    /// The grants a connected gateway holds once it has read its queue, by id.
    fn effective_gateway_grants(&self, j: usize) -> Option<BTreeMap<Uuid, Authorization>> {
        let session = self.gateways[j].session?;
        let queue = self.queues.get(&session)?;
        if !queue.live {
            return None;
        }
        let mut state = self.gateways[j].state.clone();
        for message in &queue.messages {
            if let Outbound::Text(text) = message {
                if let Ok(message) = decode::<PortalToGateway>(text) {
                    state.apply(message);
                }
            }
        }
        Some(
            state
                .authorizations()
                .iter()
                .filter(|(_, a)| a.expires_at > self.now)
                .map(|(id, a)| (*id, a.clone()))
                .collect(),
        )
    }

    /// Whether the model lets the client of `authorization` reach its resource through this
    /// gateway now, as authorized.
    fn allowed(&self, authorization: &Authorization, gateway: &SimGateway) -> Result<(), String> {
        self.allowed_as(authorization, gateway, self.stale_since.is_none())
    }

    /// `current`: the core has read the account since its last change; otherwise only what it
    /// decides without reading (tokens, disabled actors, keys) is required.
    fn allowed_as(
        &self,
        authorization: &Authorization,
        gateway: &SimGateway,
        current: bool,
    ) -> Result<(), String> {
        let (device_id, actor_id, source_ip) = self
            .clients
            .iter()
            .map(|c| (&c.device_id, c.actor_id, c.source_ip))
            .chain(self.retired.iter().map(|(id, (a, ip))| (id, *a, *ip)))
            .find(|(id, _, _)| **id == authorization.client_device_id)
            .map(|(id, a, ip)| (id.clone(), a, ip))
            .ok_or("no such client")?;
        if actor_id != authorization.actor_id {
            return Err("granted to another actor".into());
        }
        let token_id = self
            .grant_tokens
            .get(&authorization.id)
            .ok_or("a grant the simulation never saw given")?;
        let token = &self.db.tokens[token_id];
        if token.revoked {
            return Err(format!("its token {token_id} is revoked"));
        }
        if current && token.expires_at < authorization.expires_at {
            return Err(format!(
                "it outlives its token {token_id} (until {})",
                token.expires_at
            ));
        }
        if current && token.require_approval && !self.db.approved(&device_id) {
            return Err(format!("{device_id} awaits approval (token {token_id})"));
        }
        if token.expires_at <= self.now || authorization.expires_at > token.expires_at {
            return Err(format!("it outlives its token {token_id}"));
        }
        if self.db.disabled_actors.contains(&actor_id) {
            return Err("the actor is disabled".into());
        }
        let device = self
            .db
            .device(DeviceKind::Client, &device_id)
            .ok_or("no device record")?;
        if device.public_key != authorization.client_public_key {
            return Err("the client's key changed".into());
        }
        if self
            .db
            .is_blocked(&device_id, authorization.client_public_key.as_ref())
        {
            return Err("the client device is blocked".into());
        }
        if !current {
            return Ok(());
        }
        let resource = self
            .db
            .resources
            .get(&authorization.resource.id)
            .ok_or("no such resource")?;
        let granted = &authorization.resource;
        if resource.address != granted.address
            || resource.site_id != granted.site_id
            || resource.filters != granted.filters
        {
            return Err(format!(
                "granted {} {:?} at {}, now {} {:?} at {}",
                granted.address,
                granted.filters,
                granted.site_id,
                resource.address,
                resource.filters,
                resource.site_id
            ));
        }
        if gateway.site_id != resource.site_id {
            return Err("the gateway does not serve the resource's site".into());
        }
        let ctx = EvalContext {
            source_ip: Some(source_ip),
            now: self.now,
        };
        let allowed = self.db.policies.values().any(|p| {
            !p.disabled
                && p.resource_id == resource.id
                && self.db.memberships.contains(&(p.group_id, actor_id))
                && match evaluate(&p.conditions, &ctx) {
                    Decision::Allow { until } => {
                        until.is_none_or(|u| authorization.expires_at <= u)
                    }
                    Decision::Deny(_) => false,
                }
        });
        if !allowed {
            return Err("no policy allows it (for as long as granted)".into());
        }
        if authorization.expires_at > self.now + Duration::minutes(LIFETIME_MINUTES) {
            return Err("it outlives the authorization lifetime".into());
        }
        Ok(())
    }

    fn check(&mut self) {
        self.drive();
        if let Some(since) = self.stale_since {
            assert!(
                self.now - since <= Duration::seconds(2) || self.core.poll_timeout().is_some(),
                "a failed read of the account is never retried"
            );
        }
        let mut pairs: BTreeMap<(String, Uuid), Vec<Uuid>> = BTreeMap::new();
        for j in 0..self.gateways.len() {
            let Some(grants) = self.effective_gateway_grants(j) else {
                continue;
            };
            let gateway = &self.gateways[j];
            for authorization in grants.values() {
                if let Err(why) = self.allowed(authorization, gateway) {
                    panic!(
                        "gateway {} holds grant {} for {} to {} ({}), which the model refuses: {why}",
                        gateway.device_id,
                        authorization.id,
                        authorization.client_device_id,
                        authorization.resource.name,
                        authorization.resource.address
                    );
                }
                pairs
                    .entry((
                        authorization.client_device_id.clone(),
                        authorization.resource.id,
                    ))
                    .or_default()
                    .push(authorization.id);
            }
        }
        for ((device, resource), ids) in &pairs {
            assert!(
                ids.len() == 1,
                "device {device} holds {} grants for resource {resource} at connected gateways: {ids:?}",
                ids.len()
            );
        }
        let revoked: BTreeSet<Uuid> = self
            .db
            .tokens
            .iter()
            .filter(|(_, t)| t.revoked)
            .map(|(id, _)| *id)
            .collect();
        // The core: one grant per pair, at most CAP per device, none of a revoked token.
        let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen_pairs = BTreeSet::new();
        for authorization in self.core.authorizations() {
            *per_device
                .entry(&authorization.client_device_id)
                .or_default() += 1;
            assert!(
                seen_pairs.insert((&authorization.client_device_id, authorization.resource.id)),
                "the core holds two grants for one (device, resource)"
            );
        }
        for (device, count) in per_device {
            assert!(
                count <= CAP,
                "device {device} holds {count} grants (cap {CAP})"
            );
        }
        for authorization in self.core.authorizations() {
            let token = self.grant_tokens.get(&authorization.id);
            assert!(
                token.is_none_or(|t| !revoked.contains(t)),
                "the core keeps grant {} of a revoked token",
                authorization.id
            );
        }
        if self.core.is_loaded()
            && self.core.pending_writes() == 0
            && self.write_in_flight.is_none()
        {
            let stored: BTreeSet<Uuid> = self.db.authorizations.keys().copied().collect();
            let held: BTreeSet<Uuid> = self.core.authorizations().iter().map(|a| a.id).collect();
            let unexpired_stored: BTreeSet<Uuid> = stored
                .iter()
                .filter(|id| self.db.authorizations[id].expires_at > self.now)
                .copied()
                .collect();
            assert_eq!(
                unexpired_stored,
                held,
                "the store and the core disagree on the grants (now {}; stored {:?}; held {:?})",
                self.now,
                self.db
                    .authorizations
                    .values()
                    .map(|a| (a.id, a.expires_at))
                    .collect::<Vec<_>>(),
                self.core
                    .authorizations()
                    .iter()
                    .map(|a| (a.id, a.expires_at))
                    .collect::<Vec<_>>()
            );
            for stored in self.db.authorizations.values() {
                assert!(
                    !revoked.contains(&stored.token_id) || stored.expires_at <= self.now,
                    "the store keeps grant {} of revoked token {}",
                    stored.id,
                    stored.token_id
                );
            }
        }
        // Tunnel addresses are unique in the account, whichever node allocated them.
        let mut addresses = BTreeSet::new();
        for device in self.db.devices.values() {
            assert!(
                addresses.insert(device.ipv4),
                "two devices hold {} in the database",
                device.ipv4
            );
        }
        // A connected client was told its own row's address, once its row is claimed.
        for client in &self.clients {
            let (Some(session), Some(identity)) = (client.session, &client.state.identity) else {
                continue;
            };
            if self.core.is_claiming(DeviceKind::Client, &client.device_id) {
                continue;
            }
            if !self
                .queues
                .get(&session)
                .is_some_and(|q| q.live && !q.closed)
            {
                continue;
            }
            let row = self
                .db
                .devices
                .get(&(DeviceKind::Client, client.device_id.clone()));
            assert_eq!(
                row.map(|d| d.ipv4),
                Some(identity.addresses.ipv4),
                "client {} was told an address that is not its row's",
                client.device_id
            );
        }
        if self.c5_bound_elsewhere {
            let c5 = &self.clients[5];
            assert!(
                c5.session.is_none(),
                "c5's id belongs to another service account"
            );
            assert_eq!(
                self.db
                    .device(DeviceKind::Client, "c5")
                    .and_then(|d| d.actor_id),
                Some(self.actors[1]),
                "c5's row was rebound"
            );
        }
        // A blocked client device has no session.
        for client in &self.clients {
            if !self.db.blocked.contains_key(&client.device_id) {
                continue;
            }
            if let Some(session) = client.session {
                assert!(
                    !self
                        .queues
                        .get(&session)
                        .is_some_and(|q| q.live && !q.closed),
                    "blocked client {} keeps its session",
                    client.device_id
                );
            }
        }
        // No live session holds a revoked or expired token.
        for (session, queue) in &self.queues {
            if queue.live && !queue.closed {
                assert!(
                    !revoked.contains(&queue.token_id),
                    "session {session:?} of {:?} lives on with revoked token {}",
                    queue.who,
                    queue.token_id
                );
                assert!(
                    self.db.tokens[&queue.token_id].expires_at > self.now,
                    "session {session:?} of {:?} lives on past its token's expiry",
                    queue.who
                );
            }
        }
    }
}

/// The sessions' queues as the core delivers to them; what passes through is noted for the
/// model (which token each grant was given under) and the coverage.
struct SimQueues<'a> {
    queues: &'a mut BTreeMap<SessionId, Queue>,
    clients: &'a [SimClient],
    grant_tokens: &'a mut BTreeMap<Uuid, Uuid>,
    told: &'a mut BTreeMap<Uuid, Authorization>,
    coverage: &'a mut Coverage,
}

impl Queues for SimQueues<'_> {
    fn try_queue(&mut self, session: SessionId, message: Outbound) -> Queued {
        let Some(queue) = self.queues.get_mut(&session) else {
            return Queued::Gone;
        };
        if queue.closed {
            return Queued::Gone;
        }
        // Noted whether or not it fits: the grant exists in the core either way.
        if let Outbound::Text(text) = &message {
            if let Ok(PortalToClient::AccessDenied { reason, .. }) = decode(text) {
                self.coverage.denied += 1;
                if reason.contains("most authorizations allowed") {
                    self.coverage.at_cap += 1;
                }
                if std::env::var("POSTERN_SIM_DEBUG").is_ok() {
                    eprintln!("denied: {reason}");
                }
            }
            if let Ok(PortalToGateway::Revoke { .. }) = decode(text) {
                self.coverage.revokes_to_gateways += 1;
            }
            if let Ok(PortalToGateway::Authorize { authorization }) =
                decode::<PortalToGateway>(text)
            {
                match self.told.insert(authorization.id, authorization.clone()) {
                    None => self.coverage.grants += 1,
                    Some(old) if old.expires_at < authorization.expires_at => {
                        self.coverage.renewals += 1
                    }
                    Some(old) if old != authorization => self.coverage.updates += 1,
                    Some(_) => {}
                }
                if !self.grant_tokens.contains_key(&authorization.id) {
                    let client = self
                        .clients
                        .iter()
                        .find(|c| c.device_id == authorization.client_device_id)
                        .expect("a grant for a simulated client");
                    self.grant_tokens.insert(authorization.id, client.token_id);
                }
            }
        }
        if queue.messages.len() >= queue.capacity {
            self.coverage.stalls += 1;
            return Queued::Full;
        }
        queue.messages.push_back(message);
        Queued::Yes
    }

    fn release(&mut self, session: SessionId) {
        // The shell drops its sender: the device reads what is queued, then the socket closes.
        if let Some(queue) = self.queues.get_mut(&session) {
            queue.closed = true;
        }
    }
}

/// The simulated devices name their keys; a name stands for one 32-byte key.
fn wire_key(name: &str) -> postern_protocol::WireGuardKey {
    use std::hash::{Hash, Hasher};
    let mut bytes = [0u8; 32];
    for (part, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (part, name).hash(&mut hasher);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    postern_protocol::WireGuardKey::from_bytes(bytes)
}

fn params(
    device_id: &str,
    key: Option<postern_protocol::WireGuardKey>,
    endpoint: Option<String>,
) -> ConnectParams {
    ConnectParams {
        id: device_id.to_string(),
        name: device_id.to_string(),
        version: "sim".into(),
        public_key: key,
        endpoint,
        ephemeral: false,
    }
}
