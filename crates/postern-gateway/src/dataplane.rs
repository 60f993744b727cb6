//! The gateway's data plane: the shared engine (`postern_device::engine`) with one WireGuard
//! peer per authorized client, and a [`GatewayForwarding`] that lets a decrypted packet into
//! the site's network only when `postern_dataplane::gateway::GatewayPolicy` says so, and sends
//! a reply from the site back only to the client whose flow it answers. The kernel forwards
//! with source NAT (nftables masquerade, set up here), so resources need no route back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use chrono::Utc;
use ipnet::IpNet;
use parking_lot::Mutex;
use postern_dataplane::gateway::{DropCounters, DropReason, GatewayPolicy};
use postern_dataplane::hold::HoldQueue;
use postern_dataplane::peers::{PeerConfig, PeerTable, Refused, Upserted};
use postern_dataplane::translations::{ProxyVerdict, Release, TranslationChange, Translations};
use postern_dataplane::WireGuardKey;
use postern_device::engine::{Changes, Emit, Engine, Forwarding};
use postern_device::net::{self, DataPlaneRuntime, NetError};
use postern_domain::dns::is_proxy_address;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::DataPlaneMetrics;
use crate::plan::{PlanBatch, PlanReceiver};

const COUNTER_LOG: Duration = Duration::from_secs(10);
/// A packet from a client to a destination none of its authorizations covers waits this long
/// for one that does: the portal tells the client and the gateway of a grant at the same
/// moment, so the client's first packet can arrive first. Bounded per client and in all.
const AUTHORIZATION_WAIT: Duration = Duration::from_secs(1);
const MAX_WAITING_PER_CLIENT: usize = 16;
const MAX_WAITING: usize = 1024;
/// How often `status` sees fresh drop counters.
const COUNTER_SHARE: Duration = Duration::from_secs(2);

pub struct GatewayDataPlane {
    /// The nftables table of this data plane (its DNS translation maps too).
    pub nft_table: String,
    engine: Engine,
    forwarding: GatewayForwarding,
}

impl GatewayDataPlane {
    /// Binds the UDP listener, creates the TUN device and sets up forwarding and NAT.
    pub async fn create(
        listen: SocketAddr,
        tun_name: &str,
        mtu: u16,
        private: StaticSecret,
        shared_counters: Arc<Mutex<DropCounters>>,
    ) -> Result<Self, NetError> {
        let runtime = DataPlaneRuntime::start("postern-dataplane")?;
        let entered = runtime.enter();
        let udp = net::bind_udp(listen).map_err(|err| NetError::Command {
            command: format!("listen on UDP {listen}"),
            detail: err.to_string(),
        })?;
        let tun = net::create_tun(tun_name, mtu)?;
        drop(entered);
        net::sysctl("net/ipv4/ip_forward", "1")?;
        if let Err(err) = net::sysctl("net/ipv6/conf/all/forwarding", "1") {
            warn!("IPv6 forwarding is off (IPv6 resources will not work): {err}");
        }
        // The tunnel reaches authorized resources through the gateway, never the gateway host
        // itself (input from the TUN is dropped, also to its own addresses inside a resource's
        // range); and resources answer clients but cannot open connections to them (only
        // established or related traffic is forwarded into the TUN).
        // Packets from clients arrive on the TUN with sources only routed back through it.
        let _ = net::sysctl(&format!("net/ipv4/conf/{tun_name}/rp_filter"), "0");
        let nft_table = format!(
            "postern_{}",
            tun_name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        );
        // A proxy address left untranslated (a name not resolved yet) must not leak onward.
        let dns4 = format!(
            "{}/{}",
            postern_domain::DNS_IPV4_NETWORK,
            postern_domain::DNS_IPV4_PREFIX_LEN
        );
        let dns6 = format!(
            "{}/{}",
            postern_domain::DNS_IPV6_NETWORK,
            postern_domain::DNS_IPV6_PREFIX_LEN
        );
        // The resolver of the Internet resource's clients is the only service of the gateway
        // host the tunnel reaches (the policy lets only those clients' DNS through).
        let (resolver4, resolver6) = (
            postern_domain::GATEWAY_RESOLVER_IPV4,
            postern_domain::GATEWAY_RESOLVER_IPV6,
        );
        let rules = format!(
            "table inet {nft_table} {{}}\n\
             delete table inet {nft_table}\n\
             table inet {nft_table} {{\n\
               map dns4 {{ type ipv4_addr . ipv4_addr : ipv4_addr; }}\n\
               map dns6 {{ type ipv6_addr . ipv6_addr : ipv6_addr; }}\n\
               chain prerouting {{\n\
                 type nat hook prerouting priority dstnat; policy accept;\n\
                 iifname \"{tun_name}\" dnat ip to ip saddr . ip daddr map @dns4\n\
                 iifname \"{tun_name}\" dnat ip6 to ip6 saddr . ip6 daddr map @dns6\n\
               }}\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 iifname \"{tun_name}\" masquerade\n\
               }}\n\
               chain input {{\n\
                 type filter hook input priority filter; policy accept;\n\
                 iifname \"{tun_name}\" ip daddr {resolver4} meta l4proto {{ tcp, udp }} th dport 53 accept\n\
                 iifname \"{tun_name}\" ip6 daddr {resolver6} meta l4proto {{ tcp, udp }} th dport 53 accept\n\
                 iifname \"{tun_name}\" drop\n\
               }}\n\
               chain forward {{\n\
                 type filter hook forward priority filter; policy accept;\n\
                 oifname \"{tun_name}\" ct state established,related accept\n\
                 oifname \"{tun_name}\" drop\n\
                 iifname \"{tun_name}\" ip daddr {dns4} drop\n\
                 iifname \"{tun_name}\" ip6 daddr {dns6} drop\n\
               }}\n\
             }}\n"
        );
        net::run_with_input("nft", &["-f", "-"], Some(&rules)).await?;
        let nft_table_name = nft_table.clone();
        let engine = Engine::new(
            runtime,
            net::PacketPort::Tun(tun),
            tun_name,
            mtu,
            udp,
            false,
            private,
        );
        if let Some(address) = engine.udp_address() {
            info!(tun = %tun_name, "data plane listening on UDP {address}");
        }
        Ok(Self {
            nft_table: nft_table_name,
            engine,
            forwarding: GatewayForwarding {
                tun_name: tun_name.to_string(),
                nft_table,
                policy: GatewayPolicy::default(),
                routes: HashMap::new(),
                counters: DropCounters::default(),
                shared_counters,
                shared_at: None,
                logged: DropCounters::default(),
                logged_at: None,
                translations: Translations::default(),
                emits: VecDeque::new(),
                unauthorized: HoldQueue::new(
                    MAX_WAITING_PER_CLIENT,
                    MAX_WAITING,
                    AUTHORIZATION_WAIT,
                ),
                metrics: DataPlaneMetrics::default(),
            },
        })
    }

    /// Runs the data plane on its own thread until the plan's sender is dropped.
    pub async fn run(
        self,
        plans: PlanReceiver,
        translations: mpsc::Receiver<Vec<TranslationChange>>,
    ) {
        let changes = GatewayChanges {
            plans,
            translations: Some(translations),
        };
        self.engine.run(self.forwarding, changes).await;
    }
}

/// What changes the data plane: authorizations, and the DNS translations set up for them.
pub enum GatewayChange {
    Plan(PlanBatch),
    Translations(Vec<TranslationChange>),
}

struct GatewayChanges {
    plans: PlanReceiver,
    /// `None` once the DNS translation has stopped.
    translations: Option<mpsc::Receiver<Vec<TranslationChange>>>,
}

impl Changes for GatewayChanges {
    type Change = GatewayChange;

    async fn next(&mut self) -> Option<GatewayChange> {
        loop {
            let Some(translations) = self.translations.as_mut() else {
                return self.plans.next().await.map(GatewayChange::Plan);
            };
            tokio::select! {
                batch = self.plans.next() => return batch.map(GatewayChange::Plan),
                changes = translations.recv() => match changes {
                    Some(changes) => return Some(GatewayChange::Translations(changes)),
                    None => self.translations = None,
                },
            }
        }
    }
}

pub struct GatewayForwarding {
    tun_name: String,
    nft_table: String,
    policy: GatewayPolicy,
    /// The tunnel addresses routed into the TUN for each client.
    routes: HashMap<WireGuardKey, Vec<IpNet>>,
    counters: DropCounters,
    shared_counters: Arc<Mutex<DropCounters>>,
    shared_at: Option<Instant>,
    logged: DropCounters,
    logged_at: Option<Instant>,
    /// Which clients' proxy addresses are translated; packets waiting for theirs.
    translations: Translations,
    /// ICMP errors for clients, and packets that waited for their authorization.
    emits: VecDeque<Emit>,
    /// Packets no authorization of their client covered yet, by client.
    unauthorized: HoldQueue<WireGuardKey, Vec<u8>>,
    metrics: DataPlaneMetrics,
}

impl Forwarding for GatewayForwarding {
    type Change = GatewayChange;

    async fn apply(&mut self, change: GatewayChange, peers: &mut PeerTable) {
        match change {
            GatewayChange::Plan(batch) => {
                self.apply_batch(batch, peers).await;
                self.recheck_unauthorized();
            }
            GatewayChange::Translations(changes) => {
                self.translations.handle_changes(changes, Instant::now())
            }
        }
    }

    fn poll_emit(&mut self) -> Option<Emit> {
        match self.translations.poll_release() {
            Some(Release::Tun(packet)) => return Some(Emit::Tun(packet)),
            Some(Release::Peer(peer, icmp)) => return Some(Emit::Peer(peer, icmp)),
            None => {}
        }
        self.emits.pop_front()
    }

    fn outbound(&mut self, packet: &[u8]) -> Option<WireGuardKey> {
        match self.policy.route_reply(packet, Utc::now()) {
            Ok(key) => {
                self.metrics.count_to_client(packet.len());
                Some(key)
            }
            // The kernel's own traffic on the TUN (IPv6 neighbour discovery, multicast) is
            // for no client: not worth counting.
            Err(DropReason::UnknownPeer) => None,
            Err(reason) => {
                self.counters.record(reason);
                debug!(reason = reason.as_str(), "reply dropped");
                None
            }
        }
    }

    fn inbound(&mut self, peer: &WireGuardKey, packet: &[u8]) -> bool {
        let now = Instant::now();
        match self.policy.check_inbound(peer, packet, Utc::now()) {
            Ok(()) => {
                let allowed = self.forward_allowed(peer, packet, now);
                if allowed {
                    self.metrics.count_from_client(packet.len());
                }
                allowed
            }
            // Perhaps its authorization is on its way (see AUTHORIZATION_WAIT).
            Err(DropReason::NotAuthorized)
                if self.unauthorized.push(peer, packet.to_vec(), now) =>
            {
                false
            }
            Err(reason) => {
                self.counters.record(reason);
                debug!(reason = reason.as_str(), "packet from a client dropped");
                false
            }
        }
    }

    fn refused(&mut self, why: Refused, from: SocketAddr) {
        let reason = match why {
            Refused::NotForUs => DropReason::BadHandshake,
            Refused::UnderLoad => DropReason::HandshakeUnderLoad,
            Refused::UnknownPeer => DropReason::UnknownPeer,
            Refused::Rejected => {
                debug!(%from, "WireGuard refused a datagram");
                return;
            }
        };
        self.counters.record(reason);
    }

    fn send_failed(&mut self, to: SocketAddr, _len: usize, err: &std::io::Error) {
        debug!(%to, "sending to a client failed: {err}");
    }

    fn tick(&mut self, peers: &PeerTable, now: Instant) {
        let never_authorized = self.unauthorized.expire(now);
        self.counters
            .record_many(DropReason::NotAuthorized, never_authorized as u64);
        let expired = self.translations.expire(now);
        if expired > 0 {
            debug!("{expired} packet(s) to DNS resources dropped: no translation in time");
        }
        if self.shared_at.is_none_or(|at| now >= at + COUNTER_SHARE) {
            *self.shared_counters.lock() = self.counters;
            self.shared_at = Some(now);
            let authorizations = self.policy.live_authorizations(Utc::now()).len();
            self.metrics.publish(
                &self.counters,
                peers,
                self.routes.keys().copied(),
                authorizations,
                now,
            );
        }
        let quiet = self.logged_at.is_some_and(|at| now < at + COUNTER_LOG);
        if self.counters != self.logged && !quiet {
            let counts: Vec<String> = self
                .counters
                .non_zero()
                .into_iter()
                .map(|(reason, count)| format!("{reason}={count}"))
                .collect();
            info!("packets dropped so far: {}", counts.join(" "));
            self.logged = self.counters;
            self.logged_at = Some(now);
        }
    }

    async fn shutdown(&mut self) {
        let _ = net::run("nft", &["delete", "table", "inet", &self.nft_table]).await;
    }
}

impl GatewayForwarding {
    /// A packet the policy allows: into the TUN, or for a DNS resource's name once its
    /// translation is in place.
    fn forward_allowed(&mut self, peer: &WireGuardKey, packet: &[u8], now: Instant) -> bool {
        let Ok((src, dst)) = postern_dataplane::packet::addresses(packet) else {
            return false;
        };
        if !is_proxy_address(dst) {
            return true;
        }
        match self.translations.route(peer, src, dst, packet, now) {
            ProxyVerdict::Deliver => true,
            ProxyVerdict::Held => false,
            ProxyVerdict::Unreachable(icmp) => {
                self.counters.record(DropReason::Unresolved);
                self.emits.push_back(Emit::Peer(*peer, icmp));
                false
            }
            ProxyVerdict::Dropped => {
                self.counters.record(DropReason::Unresolved);
                false
            }
        }
    }

    /// Judges again the packets that waited for an authorization, after a change: those it
    /// allows now go on, the others wait out their time.
    fn recheck_unauthorized(&mut self) {
        if self.unauthorized.is_empty() {
            return;
        }
        let now = Instant::now();
        let keys: Vec<WireGuardKey> = self.unauthorized.keys().copied().collect();
        for key in keys {
            for (at, packet) in self.unauthorized.take_timed(&key, now) {
                match self.policy.check_inbound(&key, &packet, Utc::now()) {
                    Ok(()) => {
                        if self.forward_allowed(&key, &packet, now) {
                            self.emits.push_back(Emit::Tun(packet));
                        }
                    }
                    Err(DropReason::NotAuthorized) => {
                        self.unauthorized.push(&key, packet, at);
                    }
                    Err(reason) => self.counters.record(reason),
                }
            }
        }
    }

    /// Applies each authorization change on its own, then brings the tunnels of the clients
    /// it touched in line: a new client gets a peer, a re-keyed one a new peer, one left with
    /// nothing loses its peer and routes.
    async fn apply_batch(&mut self, batch: PlanBatch, peers: &mut PeerTable) {
        let PlanBatch { reset, changes } = batch;
        let mut touched = BTreeSet::new();
        if reset {
            let stale: Vec<uuid::Uuid> = self
                .policy
                .authorization_ids()
                .filter(|id| !matches!(changes.get(id), Some(Some(_))))
                .collect();
            for id in stale {
                self.policy.remove(id, &mut touched);
            }
        }
        for (id, change) in changes {
            match change {
                Some(authorization) => {
                    if let Err(skip) = self.policy.upsert(&authorization, &mut touched) {
                        warn!(
                            "authorization {} cannot be served: {}",
                            skip.authorization_id, skip.why
                        );
                    }
                }
                None => self.policy.remove(id, &mut touched),
            }
        }
        for key in touched {
            self.reconcile(key, peers).await;
        }
    }

    /// Makes the peer of one client match the policy's view of it.
    async fn reconcile(&mut self, key: WireGuardKey, peers: &mut PeerTable) {
        let Some(client) = self.policy.peer(&key) else {
            peers.remove(&key);
            if let Some(routes) = self.routes.remove(&key) {
                for route in &routes {
                    let _ = net::delete_route(route, &self.tun_name).await;
                }
                info!("client {key} removed");
            }
            return;
        };
        let routes = vec![
            IpNet::from(std::net::IpAddr::V4(client.addresses.ipv4)),
            IpNet::from(std::net::IpAddr::V6(client.addresses.ipv6)),
        ];
        let ipv4 = client.addresses.ipv4;
        let upserted = peers.upsert(
            PeerConfig {
                key,
                preshared_key: client.preshared_key.clone(),
                endpoint: None,
                keepalive: None,
            },
            Instant::now(),
        );
        let old = self.routes.insert(key, routes.clone()).unwrap_or_default();
        if old == routes && upserted == Upserted::Unchanged {
            return;
        }
        for route in old.iter().filter(|r| !routes.contains(r)) {
            let _ = net::delete_route(route, &self.tun_name).await;
        }
        for route in routes.iter().filter(|r| !old.contains(r)) {
            if let Err(err) = net::add_route(route, &self.tun_name).await {
                warn!("{err}");
            }
        }
        match upserted {
            Upserted::Added => info!("client {key} ({ipv4}) added"),
            Upserted::Replaced => {
                info!("client {key} ({ipv4}) has a new session key")
            }
            Upserted::Updated | Upserted::Unchanged => {}
        }
    }
}
