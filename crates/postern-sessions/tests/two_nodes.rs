//! A deterministic simulation of one account's sessions on several portal nodes: one
//! [`AccountSessions`] per node over one fake database, each hearing the others only through a
//! change feed that delivers in commit order but late (each node's inbox drains at random
//! steps). Clients and gateways connect to any node and move between nodes; tokens are revoked
//! and memberships changed through any node; writes and deliveries lag; nodes crash (losing
//! their writes in flight) and come back.
//!
//! Whenever the cluster has settled (every inbox delivered, every write done), no connected
//! gateway holds, and the database stores, a grant whose token is revoked or whose actor may no
//! longer reach the resource; every live core agrees with the database on the grants; tunnel
//! addresses are unique.
//!
//! `POSTERN_SIM_CASES` (default 200) cases of `POSTERN_SIM_STEPS` (default 200) steps;
//! `POSTERN_SIM_SEED=n` replays one case and prints its steps.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Duration, TimeZone, Utc};
use postern_domain::{ChangeEvent, Device, DeviceKind, Policy, Resource, ResourceType};
use postern_protocol::{decode, Authorization, ConnectParams, PortalToGateway};
use postern_sessions::account::{
    AccessLoad, AccountLoad, AccountSessions, Event, GrantsLoad, Queued, Registration, SessionId,
    SessionsConfig, StoreOp,
};
use postern_sessions::Outbound;
use postern_store::{
    AccessData, AuthorizationWrites, DeviceClaim, LoadedAuthorization, Principal, RemoteGateway,
    StoredAuthorization, TokenState,
};
use postern_token::TokenKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

mod common;
use common::env_number;

const NODES: usize = 3;

#[test]
fn grants_stay_withdrawn_across_nodes() {
    let steps = env_number("POSTERN_SIM_STEPS", 200) as usize;
    if let Ok(seed) = std::env::var("POSTERN_SIM_SEED") {
        let mut world = World::new(seed.parse().expect("a number"));
        world.verbose = true;
        world.run(steps);
        return;
    }
    let cases = env_number("POSTERN_SIM_CASES", 200);
    let mut seen = Seen::default();
    for seed in 0..cases {
        let outcome = std::panic::catch_unwind(|| {
            let mut world = World::new(seed);
            world.run(steps);
            world.seen
        });
        match outcome {
            Ok(case) => seen.add(&case),
            Err(_) => panic!(
                "two-node simulation seed {seed} failed: replay with POSTERN_SIM_SEED={seed}"
            ),
        }
    }
    eprintln!("two-node simulation: {cases} cases of {steps} steps: {seen:?}");
    if cases >= 16 {
        assert!(
            seen.remote_grants > cases,
            "too few cross-node grants: {seen:?}"
        );
        assert!(seen.withdrawn > cases / 2, "too few withdrawals: {seen:?}");
        assert!(seen.crashes > cases / 2, "too few crashes: {seen:?}");
    }
}

/// What the histories exercised.
#[derive(Debug, Default)]
struct Seen {
    /// Grants whose gateway's session was on another node than the client's.
    remote_grants: u64,
    /// `revoke` messages gateways received.
    withdrawn: u64,
    crashes: u64,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.remote_grants += other.remote_grants;
        self.withdrawn += other.withdrawn;
        self.crashes += other.crashes;
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const ACCOUNT: u128 = 1;
const SITE: u128 = 2;
const GROUP: u128 = 3;
const ACTORS: [u128; 2] = [10, 11];
const RESOURCES: [u128; 2] = [20, 21];
const GATEWAY_TOKEN: u128 = 30;

/// The shared database: what the cores' store operations wrote and what administrators changed.
struct Db {
    now: DateTime<Utc>,
    resources: Vec<Resource>,
    policies: Vec<Policy>,
    memberships: BTreeSet<(Uuid, Uuid)>,
    /// token → (actor, revoked)
    tokens: BTreeMap<Uuid, (Option<Uuid>, bool)>,
    devices: BTreeMap<(DeviceKind, String), Device>,
    authorizations: BTreeMap<Uuid, StoredAuthorization>,
    /// (node, gateway device) → (record, endpoint)
    presence: BTreeMap<(usize, String), (Device, Option<String>)>,
    generation: u64,
}

impl Db {
    fn access(&self) -> AccessData {
        AccessData {
            resources: self.resources.clone(),
            policies: self.policies.clone(),
            memberships: self.memberships.iter().copied().collect(),
            disabled_actors: Vec::new(),
            site_names: [(id(SITE), "dc".to_string())].into_iter().collect(),
            blocked_devices: Vec::new(),
        }
    }

    fn token_state(&self, token_id: Uuid) -> Option<TokenState> {
        let (_, revoked) = self.tokens.get(&token_id)?;
        Some(TokenState {
            revoked: *revoked,
            expires_at: self.now + Duration::days(300),
        })
    }

    fn loaded_authorizations(&self) -> Vec<LoadedAuthorization> {
        self.authorizations
            .values()
            .filter(|a| a.expires_at > self.now)
            .map(|a| LoadedAuthorization {
                authorization: a.clone(),
                token: self.token_state(a.token_id),
            })
            .collect()
    }

    fn remote_gateways(&self, node: usize, nodes: &[Node]) -> Vec<RemoteGateway> {
        self.presence
            .iter()
            .filter(|((n, _), _)| *n != node && nodes[*n].core.is_some())
            .map(|((n, _), (gateway, endpoint))| RemoteGateway {
                node_id: nodes[*n].id,
                gateway: gateway.clone(),
                endpoint: endpoint.clone(),
            })
            .collect()
    }

    fn allows(&self, actor: Uuid) -> bool {
        self.memberships.contains(&(id(GROUP), actor))
    }
}

struct Node {
    id: Uuid,
    core: Option<AccountSessions>,
    /// Other nodes' events not yet delivered here, in commit order.
    inbox: VecDeque<ChangeEvent>,
    write_in_flight: Option<AuthorizationWrites>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Client(usize),
    Gateway(usize),
}

struct Sim {
    name: String,
    actor: Uuid,
    token: Uuid,
    node: Option<usize>,
    session: Option<SessionId>,
}

struct World {
    rng: StdRng,
    db: Db,
    nodes: Vec<Node>,
    clients: Vec<Sim>,
    gateways: Vec<Sim>,
    /// What each gateway holds: it keeps it while disconnected, as the real one does.
    held: Vec<BTreeMap<Uuid, Authorization>>,
    /// The token each grant a gateway heard of was made with.
    grant_tokens: HashMap<Uuid, Uuid>,
    sessions: HashMap<SessionId, (usize, Who)>,
    next_session: u64,
    seen: Seen,
    verbose: bool,
    step: usize,
}

fn config() -> SessionsConfig {
    SessionsConfig {
        authorization_lifetime: Duration::minutes(60),
        ..SessionsConfig::default()
    }
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).unwrap();
        let resources: Vec<Resource> = RESOURCES
            .iter()
            .enumerate()
            .map(|(n, r)| Resource {
                id: id(*r),
                account_id: id(ACCOUNT),
                site_id: id(SITE),
                resource_type: ResourceType::Cidr,
                name: format!("r{n}"),
                address: format!("10.{n}.0.0/24"),
                description: None,
                filters: vec![],
                created_at: now,
                updated_at: now,
            })
            .collect();
        let policies = RESOURCES
            .iter()
            .enumerate()
            .map(|(n, r)| Policy {
                id: id(40 + n as u128),
                account_id: id(ACCOUNT),
                group_id: id(GROUP),
                resource_id: id(*r),
                description: None,
                conditions: vec![],
                disabled: false,
                disabled_at: None,
                created_at: now,
                updated_at: now,
            })
            .collect();
        let mut tokens = BTreeMap::new();
        tokens.insert(id(GATEWAY_TOKEN), (None, false));
        let mut clients = Vec::new();
        for (n, actor) in [ACTORS[0], ACTORS[0], ACTORS[1], ACTORS[1]]
            .iter()
            .enumerate()
        {
            let token = id(100 + n as u128);
            tokens.insert(token, (Some(id(*actor)), false));
            clients.push(Sim {
                name: format!("c{n}"),
                actor: id(*actor),
                token,
                node: None,
                session: None,
            });
        }
        let gateways = (0..2)
            .map(|n| Sim {
                name: format!("g{n}"),
                actor: Uuid::nil(),
                token: id(GATEWAY_TOKEN),
                node: None,
                session: None,
            })
            .collect();
        let nodes = (0..NODES)
            .map(|n| Node {
                id: id(1000 + n as u128),
                core: Some(new_core(&mut rng)),
                inbox: VecDeque::new(),
                write_in_flight: None,
            })
            .collect();
        World {
            rng,
            db: Db {
                now,
                resources,
                policies,
                memberships: ACTORS.iter().map(|a| (id(GROUP), id(*a))).collect(),
                tokens,
                devices: BTreeMap::new(),
                authorizations: BTreeMap::new(),
                presence: BTreeMap::new(),
                generation: 0,
            },
            nodes,
            clients,
            gateways,
            held: vec![BTreeMap::new(), BTreeMap::new()],
            grant_tokens: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            seen: Seen::default(),
            verbose: false,
            step: 0,
        }
    }

    fn log(&self, what: impl AsRef<str>) {
        if self.verbose {
            eprintln!(
                "{:4} {} {}",
                self.step,
                self.db.now.format("%H:%M:%S"),
                what.as_ref()
            );
        }
    }

    fn run(&mut self, steps: usize) {
        for step in 0..steps {
            self.step = step;
            self.random_step();
            if self.rng.gen_bool(0.25) || step + 1 == steps {
                self.settle();
                self.check();
            }
        }
    }

    fn random_step(&mut self) {
        let node = self.rng.gen_range(0..NODES);
        match self.rng.gen_range(0..100) {
            0..=19 => {
                let c = self.rng.gen_range(0..self.clients.len());
                self.connect(Who::Client(c), node);
            }
            20..=29 => {
                let g = self.rng.gen_range(0..self.gateways.len());
                self.connect(Who::Gateway(g), node);
            }
            30..=49 => {
                let c = self.rng.gen_range(0..self.clients.len());
                let r = RESOURCES[self.rng.gen_range(0..RESOURCES.len())];
                if let (Some(session), Some(at)) = (self.clients[c].session, self.clients[c].node) {
                    self.log(format!("{} asks for {r} on n{at}", self.clients[c].name));
                    let now = self.db.now;
                    if let Some(core) = self.nodes[at].core.as_mut() {
                        core.handle_request_access(session, id(r), None, now);
                    }
                    self.drive(at);
                }
            }
            50..=54 => {
                let c = self.rng.gen_range(0..self.clients.len());
                self.disconnect(Who::Client(c));
            }
            55..=59 => {
                let g = self.rng.gen_range(0..self.gateways.len());
                self.disconnect(Who::Gateway(g));
            }
            60..=63 => self.revoke(node),
            64..=69 => self.toggle_membership(node),
            70..=84 => self.deliver(node),
            85..=89 => self.finish_write(node),
            90..=95 => {
                let minutes = self.rng.gen_range(1..50);
                self.advance(Duration::minutes(minutes));
            }
            _ => self.crash_or_restart(node),
        }
    }

    // ----- sessions -----

    fn sim(&mut self, who: Who) -> &mut Sim {
        match who {
            Who::Client(c) => &mut self.clients[c],
            Who::Gateway(g) => &mut self.gateways[g],
        }
    }

    fn connect(&mut self, who: Who, node: usize) {
        if self.sim(who).session.is_some() || self.nodes[node].core.is_none() {
            return;
        }
        let (token, name) = {
            let sim = self.sim(who);
            (sim.token, sim.name.clone())
        };
        let Some((actor, false)) = self.db.tokens.get(&token).copied() else {
            return;
        };
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let kind = match who {
            Who::Client(_) => DeviceKind::Client,
            Who::Gateway(_) => DeviceKind::Gateway,
        };
        let registration = Registration {
            session,
            kind,
            principal: Principal {
                account_id: id(ACCOUNT),
                token_id: token,
                kind: match who {
                    Who::Client(_) => TokenKind::Client,
                    Who::Gateway(_) => TokenKind::Gateway,
                },
                actor_id: actor,
                site_id: actor.is_none().then(|| id(SITE)),
                holder_name: "holder".into(),
                expires_at: self.db.now + Duration::days(300),
                guardrails: Default::default(),
                rotated_from: None,
                rotated: false,
                generation: self.db.generation,
            },
            params: ConnectParams {
                id: name.clone(),
                name: name.clone(),
                version: "sim".into(),
                public_key: Some(key_named(&name)),
                endpoint: matches!(who, Who::Gateway(_)).then(|| format!("{name}:51820")),
                ephemeral: false,
            },
            source_ip: Some("192.0.2.1".parse().unwrap()),
            remote_sessions_on_token: 0,
        };
        self.log(format!("{name} connects to n{node}"));
        self.sessions.insert(session, (node, who));
        let now = self.db.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_register(registration, now);
        }
        self.drive(node);
    }

    fn disconnect(&mut self, who: Who) {
        let (Some(session), Some(node)) = (self.sim(who).session, self.sim(who).node) else {
            return;
        };
        let name = self.sim(who).name.clone();
        self.log(format!("{name} leaves n{node}"));
        self.ended(session);
        let now = self.db.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_unregister(session, now);
        }
        self.drive(node);
    }

    fn ended(&mut self, session: SessionId) {
        if let Some((_, who)) = self.sessions.remove(&session) {
            let sim = self.sim(who);
            if sim.session == Some(session) {
                sim.session = None;
                sim.node = None;
            }
        }
    }

    fn receive(&mut self, session: SessionId, message: Outbound) -> Queued {
        let Some(&(node, who)) = self.sessions.get(&session) else {
            return Queued::Gone;
        };
        let Outbound::Text(text) = message else {
            let name = self.sim(who).name.clone();
            self.log(format!("{name} told to go by n{node}"));
            self.ended(session);
            return Queued::Yes;
        };
        let Who::Gateway(g) = who else {
            return Queued::Yes;
        };
        match decode::<PortalToGateway>(&text) {
            Ok(PortalToGateway::Init(init)) => {
                for authorization in &init.authorizations {
                    self.note_token(authorization);
                }
                self.held[g] = init.authorizations.into_iter().map(|a| (a.id, a)).collect();
            }
            Ok(PortalToGateway::Authorize { authorization }) => {
                self.note_token(&authorization);
                let client_node = self
                    .clients
                    .iter()
                    .find(|c| c.name == authorization.client_device_id)
                    .and_then(|c| c.node);
                if client_node.is_some_and(|n| n != node) {
                    self.seen.remote_grants += 1;
                }
                self.held[g].insert(authorization.id, authorization);
            }
            Ok(PortalToGateway::Revoke {
                authorization_ids, ..
            }) => {
                self.seen.withdrawn += 1;
                for id in authorization_ids {
                    self.held[g].remove(&id);
                }
            }
            _ => {}
        }
        Queued::Yes
    }

    /// Remembers the token a grant was made with, when a gateway first hears of it: the stored
    /// row's, or else (not yet written) the client's current one.
    fn note_token(&mut self, authorization: &Authorization) {
        let stored = self
            .db
            .authorizations
            .get(&authorization.id)
            .map(|s| s.token_id);
        let current = self
            .clients
            .iter()
            .find(|c| c.name == authorization.client_device_id)
            .map(|c| c.token);
        if let Some(token) = stored.or(current) {
            self.grant_tokens.entry(authorization.id).or_insert(token);
        }
    }

    // ----- changes through a node -----

    /// A committed change made through `node`: applied there at once, announced to the others.
    /// Changes go through live nodes only.
    fn publish(&mut self, node: usize, event: ChangeEvent) {
        let now = self.db.now;
        let generation = self.db.generation;
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_change(&event, generation, now);
        }
        self.announce(node, event);
        self.drive(node);
    }

    /// An event in the feed for every node but `from`.
    fn announce(&mut self, from: usize, event: ChangeEvent) {
        for (n, other) in self.nodes.iter_mut().enumerate() {
            if n != from && other.core.is_some() {
                other.inbox.push_back(event.clone());
            }
        }
    }

    fn revoke(&mut self, node: usize) {
        if self.nodes[node].core.is_none() {
            return;
        }
        let c = self.rng.gen_range(0..self.clients.len());
        let token = self.clients[c].token;
        let Some(entry) = self.db.tokens.get_mut(&token) else {
            return;
        };
        if entry.1 {
            return;
        }
        entry.1 = true;
        self.db.generation += 1;
        // The store deletes the token's grants in the revocation's transaction.
        self.db.authorizations.retain(|_, a| a.token_id != token);
        self.log(format!(
            "revoke {}'s token through n{node}",
            self.clients[c].name
        ));
        self.publish(
            node,
            ChangeEvent::TokensRevoked {
                account_id: id(ACCOUNT),
                token_ids: vec![token],
            },
        );
        // The holder gets a new token for its next session.
        let fresh = id(200 + self.rng.gen_range(0..1_000_000u128));
        let actor = self.clients[c].actor;
        self.db.tokens.insert(fresh, (Some(actor), false));
        for client in &mut self.clients {
            if client.token == token {
                client.token = fresh;
            }
        }
    }

    fn toggle_membership(&mut self, node: usize) {
        if self.nodes[node].core.is_none() {
            return;
        }
        let actor = id(ACTORS[1]);
        let key = (id(GROUP), actor);
        let (added, removed) = if self.db.memberships.remove(&key) {
            (vec![], vec![actor])
        } else {
            self.db.memberships.insert(key);
            (vec![actor], vec![])
        };
        self.log(format!(
            "membership of a1 through n{node}: +{added:?} -{removed:?}"
        ));
        self.publish(
            node,
            ChangeEvent::MembershipChanged {
                account_id: id(ACCOUNT),
                group_id: id(GROUP),
                added,
                removed,
            },
        );
    }

    fn deliver(&mut self, node: usize) {
        let count = self.rng.gen_range(1..4);
        for _ in 0..count {
            let Some(event) = self.nodes[node].inbox.pop_front() else {
                break;
            };
            let (now, generation) = (self.db.now, self.db.generation);
            self.log(format!("  n{node} hears {}", short(&event)));
            if let Some(core) = self.nodes[node].core.as_mut() {
                core.handle_change(&event, generation, now);
            }
            self.drive(node);
        }
    }

    fn finish_write(&mut self, node: usize) {
        let Some(writes) = self.nodes[node].write_in_flight.take() else {
            return;
        };
        self.log(format!(
            "  n{node} wrote: save {:?} update {:?} delete {:?}",
            writes
                .save
                .iter()
                .map(|s| s.id.to_string()[..8].to_string())
                .collect::<Vec<_>>(),
            writes
                .update
                .iter()
                .map(|s| s.id.to_string()[..8].to_string())
                .collect::<Vec<_>>(),
            writes
                .delete
                .iter()
                .map(|s| s.to_string()[..8].to_string())
                .collect::<Vec<_>>()
        ));
        for id in &writes.delete {
            self.db.authorizations.remove(id);
        }
        let mut saved = writes.save.clone();
        for stored in &writes.save {
            self.db.authorizations.insert(stored.id, stored.clone());
        }
        for stored in &writes.update {
            if let Some(row) = self.db.authorizations.get_mut(&stored.id) {
                *row = stored.clone();
                saved.push(stored.clone());
            }
        }
        self.announce(
            node,
            ChangeEvent::AuthorizationsWritten {
                account_id: id(ACCOUNT),
                saved,
                deleted: writes.delete.clone(),
            },
        );
        let now = self.db.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_write_done(None, now);
        }
        self.drive(node);
    }

    fn advance(&mut self, by: Duration) {
        let target = self.db.now + by;
        self.log(format!("advance {} min", by.num_minutes()));
        loop {
            let due = (0..NODES)
                .filter_map(|n| {
                    let at = self.nodes[n].core.as_ref()?.poll_timeout()?;
                    (at <= target).then_some((at, n))
                })
                .min();
            let Some((at, n)) = due else { break };
            self.db.now = self.db.now.max(at);
            let now = self.db.now;
            if let Some(core) = self.nodes[n].core.as_mut() {
                core.handle_timeout(now);
            }
            self.drive(n);
        }
        self.db.now = target;
        let now = self.db.now;
        for held in &mut self.held {
            held.retain(|_, a| a.expires_at > now);
        }
    }

    /// A node dies (its sessions end, its write in flight is lost, the others notice), or a dead
    /// one starts again, empty.
    fn crash_or_restart(&mut self, node: usize) {
        if self.nodes[node].core.is_none() {
            self.log(format!("n{node} starts again"));
            self.nodes[node].core = Some(new_core(&mut self.rng));
            return;
        }
        if self.nodes.iter().filter(|n| n.core.is_some()).count() == 1 {
            return;
        }
        self.log(format!("n{node} crashes"));
        self.seen.crashes += 1;
        self.nodes[node].core = None;
        self.nodes[node].inbox.clear();
        self.nodes[node].write_in_flight = None;
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(s, _)| *s)
            .collect();
        for session in gone {
            self.ended(session);
        }
        self.db.presence.retain(|(n, _), _| *n != node);
        let dead = self.nodes[node].id;
        for n in 0..NODES {
            if let Some(core) = self.nodes[n].core.as_mut() {
                core.handle_node_gone(dead);
            }
        }
    }

    // ----- the store and the devices, as each node's shell -----

    fn drive(&mut self, node: usize) {
        for _ in 0..10_000 {
            let Some(core) = self.nodes[node].core.as_mut() else {
                return;
            };
            let mut transmits = Vec::new();
            while let Some(transmit) = core.poll_transmit() {
                transmits.push(transmit);
            }
            let mut events = Vec::new();
            while let Some(event) = core.poll_event() {
                events.push(event);
            }
            let op = core.poll_store();
            let busy = !transmits.is_empty() || !events.is_empty() || op.is_some();
            let mut stalled = Vec::new();
            for transmit in transmits {
                if self.receive(transmit.session, transmit.message) == Queued::Gone {
                    stalled.push(transmit.session);
                }
            }
            let now = self.db.now;
            for session in stalled {
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_unregister(session, now);
                }
            }
            for event in events {
                self.on_event(node, event);
            }
            if let Some(op) = op {
                self.carry_out(node, op);
            }
            if !busy {
                return;
            }
        }
        panic!("node {node} never became idle");
    }

    fn on_event(&mut self, node: usize, event: Event) {
        match event {
            Event::Registered { session, .. } => {
                if let Some(&(_, who)) = self.sessions.get(&session) {
                    let sim = self.sim(who);
                    sim.session = Some(session);
                    sim.node = Some(node);
                }
            }
            Event::Refused { session, refusal } => {
                self.log(format!("  refused: {refusal:?}"));
                self.sessions.remove(&session);
            }
            Event::Ended { session, .. } => self.ended(session),
        }
    }

    fn carry_out(&mut self, node: usize, op: StoreOp) {
        let now = self.db.now;
        match op {
            StoreOp::LoadAccount => {
                let load = AccountLoad {
                    slug: "default".into(),
                    access: self.db.access(),
                    devices: self.db.devices.values().cloned().collect(),
                    authorizations: self.db.loaded_authorizations(),
                    remote_gateways: self.db.remote_gateways(node, &self.nodes),
                };
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_account_loaded(load, now);
                }
            }
            StoreOp::LoadAccess { tokens } => {
                let load = AccessLoad {
                    slug: "default".into(),
                    access: self.db.access(),
                    tokens: tokens
                        .iter()
                        .filter_map(|t| self.db.token_state(*t).map(|s| (*t, s)))
                        .collect(),
                    guardrails: Default::default(),
                    successors: Default::default(),
                };
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_access_loaded(load, now);
                }
            }
            StoreOp::LoadGrants => {
                let load = GrantsLoad {
                    authorizations: self.db.loaded_authorizations(),
                    remote_gateways: self.db.remote_gateways(node, &self.nodes),
                };
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_grants_loaded(load, now);
                }
            }
            StoreOp::Write(writes) => {
                self.nodes[node].write_in_flight = Some(writes);
                if self.rng.gen_bool(0.5) {
                    self.finish_write(node);
                }
            }
            StoreOp::RecordTokenMove { .. } => {}
            StoreOp::ApproveDevices(ids) => {
                for row in self.db.devices.values_mut() {
                    if ids.contains(&row.id) {
                        row.approved_at.get_or_insert(now);
                    }
                }
            }
            StoreOp::RemoveDevices { ids, .. } => {
                let device_ids: Vec<String> = self
                    .db
                    .devices
                    .values()
                    .filter(|d| ids.contains(&d.id))
                    .map(|d| d.device_id.clone())
                    .collect();
                self.db.devices.retain(|_, d| !ids.contains(&d.id));
                self.announce(
                    node,
                    ChangeEvent::DevicesRemoved {
                        account_id: id(ACCOUNT),
                        kind: DeviceKind::Client,
                        device_ids,
                    },
                );
            }
            StoreOp::RecordDevice(device) => {
                let key = (device.kind, device.device_id.clone());
                if let Some(row) = self.db.devices.get_mut(&key) {
                    row.public_key = device.public_key;
                }
            }
            StoreOp::ClaimDevices(devices) => {
                let mut outcomes = Vec::new();
                let mut claimed = Vec::new();
                for device in devices {
                    let key = (device.kind, device.device_id.clone());
                    let outcome = if let Some(existing) = self.db.devices.get(&key) {
                        DeviceClaim::IdTaken(Box::new(existing.clone()))
                    } else if self.db.devices.values().any(|d| d.ipv4 == device.ipv4) {
                        DeviceClaim::AddressTaken
                    } else {
                        self.db.devices.insert(key, device.clone());
                        claimed.push(device);
                        DeviceClaim::Claimed
                    };
                    outcomes.push(outcome);
                }
                if !claimed.is_empty() {
                    self.announce(
                        node,
                        ChangeEvent::DevicesClaimed {
                            account_id: id(ACCOUNT),
                            devices: claimed,
                        },
                    );
                }
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_devices_claimed(outcomes, now);
                }
            }
            StoreOp::AnnounceGateway {
                gateway,
                endpoint,
                online,
                ..
            } => {
                let key = (node, gateway.device_id.clone());
                if online {
                    self.db
                        .presence
                        .insert(key, (gateway.clone(), endpoint.clone()));
                } else {
                    self.db.presence.remove(&key);
                }
                let node_id = self.nodes[node].id;
                self.announce(
                    node,
                    ChangeEvent::GatewayPresence {
                        account_id: id(ACCOUNT),
                        node_id,
                        gateway: Box::new(gateway),
                        endpoint,
                        online,
                    },
                );
            }
        }
    }

    // ----- invariants -----

    /// Delivers every inbox and finishes every write, until nothing is left.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut busy = false;
            for node in 0..NODES {
                if self.nodes[node].write_in_flight.is_some() {
                    busy = true;
                    self.finish_write(node);
                }
                while !self.nodes[node].inbox.is_empty() {
                    busy = true;
                    self.deliver(node);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    fn check(&self) {
        let now = self.db.now;
        let revoked = |token: &Uuid| self.db.tokens.get(token).is_none_or(|t| t.1);
        for (g, gateway) in self.gateways.iter().enumerate() {
            if gateway.session.is_none() {
                continue;
            }
            for authorization in self.held[g].values() {
                if authorization.expires_at <= now {
                    continue;
                }
                let token = self.grant_token(authorization);
                assert!(
                    !token.is_some_and(|t| revoked(&t)),
                    "step {}: {} still holds {} of a revoked token",
                    self.step,
                    gateway.name,
                    authorization.id
                );
                assert!(
                    self.db.allows(authorization.actor_id),
                    "step {}: {} still holds {} for an actor out of the group",
                    self.step,
                    gateway.name,
                    authorization.id
                );
            }
        }
        for stored in self.db.authorizations.values() {
            if stored.expires_at <= now {
                continue;
            }
            assert!(
                !revoked(&stored.token_id),
                "step {}: the database keeps {} of a revoked token",
                self.step,
                stored.id
            );
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(core) = &node.core else { continue };
            if !core.is_loaded() {
                continue;
            }
            let held: BTreeSet<Uuid> = core
                .authorizations()
                .iter()
                .filter(|a| a.expires_at > now)
                .map(|a| a.id)
                .collect();
            let stored: BTreeSet<Uuid> = self
                .db
                .authorizations
                .values()
                .filter(|a| a.expires_at > now)
                .map(|a| a.id)
                .collect();
            assert_eq!(
                held, stored,
                "step {}: n{n} and the database disagree on the grants",
                self.step
            );
        }
        let addresses: BTreeSet<_> = self.db.devices.values().map(|d| d.ipv4).collect();
        assert_eq!(
            addresses.len(),
            self.db.devices.len(),
            "an address held twice"
        );
    }

    fn grant_token(&self, authorization: &Authorization) -> Option<Uuid> {
        self.grant_tokens.get(&authorization.id).copied()
    }
}

fn short(event: &ChangeEvent) -> String {
    match event {
        ChangeEvent::AuthorizationsWritten { saved, deleted, .. } => format!(
            "written: saved {:?} deleted {:?}",
            saved
                .iter()
                .map(|s| s.id.to_string()[..8].to_string())
                .collect::<Vec<_>>(),
            deleted
                .iter()
                .map(|s| s.to_string()[..8].to_string())
                .collect::<Vec<_>>()
        ),
        ChangeEvent::GatewayPresence {
            gateway, online, ..
        } => format!("presence {} {online}", gateway.device_id),
        ChangeEvent::DevicesClaimed { devices, .. } => format!(
            "claimed {:?}",
            devices.iter().map(|d| &d.device_id).collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}

fn new_core(rng: &mut StdRng) -> AccountSessions {
    AccountSessions::new(
        id(ACCOUNT),
        config(),
        0,
        Box::new(StdRng::seed_from_u64(rng.gen())),
    )
}

/// A distinct WireGuard key per (short, unique) device name.
fn key_named(name: &str) -> postern_protocol::WireGuardKey {
    let mut bytes = [0u8; 32];
    for (byte, from) in bytes.iter_mut().zip(name.bytes()) {
        *byte = from;
    }
    postern_protocol::WireGuardKey::from_bytes(bytes)
}
