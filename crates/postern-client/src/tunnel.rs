//! The client's data plane: the shared engine (`postern_device::engine`) with one WireGuard
//! peer per gateway, and a [`ClientForwarding`] that routes packets from the TUN with
//! `postern_dataplane::client::ClientRouter` (holding them while access is requested) and lets
//! a packet out of a tunnel reach the TUN only from a resource granted through that gateway.
//! The control session feeds it a [`Plan`] (addresses, resources, grants) and receives its
//! access requests.
//!
//! DNS resources: the stub resolver (`crate::dns`) listens on the TUN's resolver addresses and
//! gives names proxy addresses (routed into the TUN); a packet to one is routed by the name it
//! stands for, and asks for that name when the grant does not list it yet.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use postern_dataplane::client::{ClientRouter, Route, RouteGrant};
use postern_dataplane::packet::{self, Transport};
use postern_dataplane::peers::{PeerConfig, PeerTable, Upserted};
use postern_dataplane::WireGuardKey;
use postern_device::engine::{Changes, Emit, Engine, Forwarding};
use postern_device::net::{self, DataPlaneRuntime, NetError};
use postern_domain::dns::{is_proxy_address, NamePattern};
use postern_domain::{
    DNS_IPV4_NETWORK, DNS_IPV4_PREFIX_LEN, DNS_IPV6_NETWORK, DNS_IPV6_PREFIX_LEN,
    DNS_RESOLVER_IPV4, DNS_RESOLVER_IPV6, GATEWAY_RESOLVER_IPV4, GATEWAY_RESOLVER_IPV6,
};
use postern_protocol::{ClientToPortal, DnsTarget, ResourceView, TunnelAddresses};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::dns::DnsState;
use crate::dns_control::{Controlled, DnsControl};
use crate::internet::FullTunnel;
use postern_device::dns_server::{self, Listeners};
use postern_netstack::{NetStack, PacketPipe};

/// What the control session knows that the data plane needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub addresses: Option<TunnelAddresses>,
    pub resources: Vec<ResourceView>,
    pub grants: Vec<PlannedGrant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedGrant {
    pub resource_id: Uuid,
    pub gateway_name: String,
    pub gateway_key: Option<WireGuardKey>,
    pub endpoint: Option<String>,
    pub preshared_key: Option<postern_protocol::PresharedKey>,
    pub expires_at: DateTime<Utc>,
    /// For a DNS resource: the names the grant covers.
    pub dns: Vec<DnsTarget>,
}

/// The full tunnel, for a client started with `--internet`.
#[derive(Debug, Clone)]
pub struct InternetOptions {
    /// Routes the LAN (the ranges of the client's interfaces) into the tunnel too.
    pub include_lan: bool,
    /// The portal's addresses: they stay outside the tunnel.
    pub portal_addresses: Vec<IpAddr>,
}

/// How the client's stub resolver is set up.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub control: DnsControl,
    pub state_dir: std::path::PathBuf,
    /// Upstream servers instead of the system's.
    pub upstreams: Vec<SocketAddr>,
}

/// How long a gateway may stay silent after the first packet before the user is told.
const HANDSHAKE_WARNING: Duration = Duration::from_secs(5);
/// Seconds between keepalives: the client is usually behind NAT.
const KEEPALIVE: u16 = 25;

pub struct ClientTunnel {
    engine: Engine,
    forwarding: ClientForwarding,
}

/// The stub resolver's port: 53, so that any system resolver can be pointed at it.
const DNS_PORT: u16 = 53;

impl ClientTunnel {
    /// Creates the TUN device, the UDP socket and the stub resolver, and points the system's
    /// DNS at it; fails with a message a user can act on.
    pub async fn create(
        tun_name: &str,
        mtu: u16,
        private: StaticSecret,
        requests: mpsc::UnboundedSender<ClientToPortal>,
        dns: Arc<DnsState>,
        dns_options: DnsOptions,
        internet: Option<InternetOptions>,
    ) -> Result<Self, NetError> {
        let runtime = DataPlaneRuntime::start("postern-tunnel")?;
        let entered = runtime.enter();
        let tun = net::create_tun(tun_name, mtu)?;
        let (udp, dual_stack) = bind_any_udp()?;
        drop(entered);
        // Its datagrams to gateways must not follow the full tunnel into the TUN.
        if !net::mark_socket(&udp, crate::internet::MARK) && internet.is_some() {
            warn!("the tunnel's UDP socket cannot be marked: the full tunnel would loop");
        }
        info!(tun = %tun_name, mtu, "tunnel device ready");
        let (dns_task, control) = start_dns(tun_name, &dns, &dns_options).await?;
        let full_tunnel = match &internet {
            Some(options) => Some(FullTunnel::new(tun_name, options.include_lan).await),
            None => None,
        };
        let explicit_upstreams = !dns_options.upstreams.is_empty();
        let mut forwarding = ClientForwarding::new(tun_name, mtu, dual_stack, requests, dns);
        forwarding.dns_task = Some(dns_task);
        forwarding.control = Some(control);
        forwarding.full_tunnel = full_tunnel;
        forwarding.portal_addresses = internet
            .map(|options| options.portal_addresses)
            .unwrap_or_default();
        forwarding.explicit_upstreams = explicit_upstreams;
        let port = net::PacketPort::Tun(tun);
        Ok(Self {
            engine: Engine::new(runtime, port, tun_name, mtu, udp, dual_stack, private),
            forwarding,
        })
    }

    /// The rootless data plane: the same tunnels, with `stack` (a network stack in this
    /// process) where the TUN would be. Needs no privilege: a UDP socket and threads.
    pub async fn create_userspace(
        mtu: u16,
        private: StaticSecret,
        requests: mpsc::UnboundedSender<ClientToPortal>,
        dns: Arc<DnsState>,
        stack: NetStack,
        pipe: PacketPipe,
        internet: bool,
    ) -> Result<Self, NetError> {
        let runtime = DataPlaneRuntime::start("postern-tunnel")?;
        let entered = runtime.enter();
        let (udp, dual_stack) = bind_any_udp()?;
        drop(entered);
        let name = "user-space";
        info!(mtu, "user-space network stack ready (no TUN device)");
        let mut forwarding = ClientForwarding::new(name, mtu, dual_stack, requests, dns);
        forwarding.stack = Some(stack);
        forwarding.stack_internet = internet;
        let port = net::PacketPort::Memory {
            from_stack: pipe.outbound,
            to_stack: pipe.inbound,
        };
        Ok(Self {
            engine: Engine::new(runtime, port, name, mtu, udp, dual_stack, private),
            forwarding,
        })
    }

    /// Runs the data plane on its own thread until the plan's sender is dropped.
    pub async fn run(self, plans: watch::Receiver<Plan>) {
        self.engine.run(self.forwarding, Plans(plans)).await;
    }
}

struct Plans(watch::Receiver<Plan>);

impl Changes for Plans {
    type Change = Plan;

    async fn next(&mut self) -> Option<Plan> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().clone())
    }
}

/// What the client knows of one gateway beyond its peer: for messages.
struct Gateway {
    name: String,
    endpoint: SocketAddr,
    warned_silent: bool,
    warned_mtu: bool,
}

pub struct ClientForwarding {
    tun_name: String,
    mtu: u16,
    dual_stack: bool,
    router: ClientRouter,
    gateways: HashMap<WireGuardKey, Gateway>,
    /// Resource networks routed into the TUN.
    routes: BTreeSet<IpNet>,
    addresses: Option<TunnelAddresses>,
    requests: mpsc::UnboundedSender<ClientToPortal>,
    /// Resource id → name, for messages.
    names: HashMap<Uuid, String>,
    /// The stub resolver (its names and proxy addresses) and what the status shows of DNS.
    dns: Arc<DnsState>,
    /// The DNS server's task, stopped with the data plane.
    dns_task: Option<tokio::task::JoinHandle<()>>,
    /// The system's DNS as this client set it, restored at shutdown.
    control: Option<Controlled>,
    /// Held packets released by a grant.
    emits: VecDeque<Emit>,
    /// With `--internet`: the policy routing of the full tunnel.
    full_tunnel: Option<FullTunnel>,
    /// Kept outside the full tunnel, with the gateways' endpoints.
    portal_addresses: Vec<IpAddr>,
    /// `--dns-upstream` was given: the full tunnel does not move the upstreams.
    explicit_upstreams: bool,
    /// The rootless client's network stack: it takes the tunnel addresses, and nothing on
    /// the machine changes (no TUN, routes, resolver or rules). `None` with a TUN.
    stack: Option<NetStack>,
    /// Rootless with `--internet`: the Internet resource is routed (for the proxies).
    stack_internet: bool,
}

impl Forwarding for ClientForwarding {
    type Change = Plan;

    async fn apply(&mut self, plan: Plan, peers: &mut PeerTable) {
        let released = self.apply_plan(plan, peers).await;
        self.emits
            .extend(released.into_iter().map(|(key, p)| Emit::Peer(key, p)));
    }

    fn poll_emit(&mut self) -> Option<Emit> {
        self.emits.pop_front()
    }

    fn outbound(&mut self, packet: &[u8]) -> Option<WireGuardKey> {
        let route = {
            let names = self.dns.server.resolver.read();
            self.router.route(packet, &names, Utc::now())
        };
        match route {
            Route::Send(key) => Some(key),
            Route::Held {
                request: Some(request),
            } => {
                let resource = self
                    .names
                    .get(&request.resource_id)
                    .cloned()
                    .unwrap_or_else(|| request.resource_id.to_string());
                match &request.dns {
                    Some(target) => info!("requesting access to {} ({resource})", target.name),
                    None => info!("requesting access to {resource}"),
                }
                let _ = self.requests.send(ClientToPortal::RequestAccess {
                    resource_id: request.resource_id,
                    dns: request.dns,
                });
                None
            }
            Route::Held { request: None } => None,
            Route::Drop(why) => {
                debug!(?why, "packet from the TUN dropped");
                None
            }
        }
    }

    /// Only packets from a resource granted through this gateway reach the TUN.
    fn inbound(&mut self, peer: &WireGuardKey, packet: &[u8]) -> bool {
        let Ok((src, _)) = packet::addresses(packet) else {
            return false;
        };
        let names = self.dns.server.resolver.read();
        let granted = self
            .router
            .gateway_of(src, &names, Utc::now())
            .is_some_and(|key| key == *peer);
        if !granted {
            debug!(%src, "packet from a gateway for a resource it does not serve dropped");
            return false;
        }
        if is_proxy_address(src) {
            if let Some(target) = names.proxy_target(src) {
                let gateway = self.gateways.get(peer).map_or("?", |g| g.name.as_str());
                if is_host_unreachable(packet) {
                    self.dns
                        .note_unresolvable(target.name, src.is_ipv6(), gateway);
                } else if self.dns.any_unresolvable.load(Ordering::Relaxed) {
                    self.dns.note_resolvable(target.name, src.is_ipv6());
                }
            }
        }
        true
    }

    fn send_failed(&mut self, to: SocketAddr, len: usize, err: &std::io::Error) {
        let Some(gateway) = self.gateways.values_mut().find(|g| g.endpoint == to) else {
            debug!(%to, "sending to a gateway failed: {err}");
            return;
        };
        if err.raw_os_error() == Some(libc::EMSGSIZE) {
            if !gateway.warned_mtu {
                warn!(
                    "MTU problem: a {len}-byte WireGuard datagram does not fit the path to gateway {} at {to}; lower --mtu (now {})",
                    gateway.name, self.mtu
                );
                gateway.warned_mtu = true;
            }
            return;
        }
        if !gateway.warned_silent {
            warn!("gateway {} at {to} is unreachable: {err}", gateway.name);
            gateway.warned_silent = true;
        }
    }

    fn tick(&mut self, peers: &PeerTable, now: Instant) {
        for (key, gateway) in &mut self.gateways {
            let Some(stats) = peers.stats(key) else {
                continue;
            };
            let silent = stats.since_handshake.is_none();
            let waited = stats
                .first_send
                .is_some_and(|at| now.duration_since(at) > HANDSHAKE_WARNING);
            if silent && waited && !gateway.warned_silent {
                warn!(
                    "gateway {} at {} is unreachable: no WireGuard handshake after {} s (is UDP to it allowed?)",
                    gateway.name,
                    endpoint_text(stats.endpoint),
                    HANDSHAKE_WARNING.as_secs()
                );
                gateway.warned_silent = true;
            }
            if !silent && gateway.warned_silent {
                info!("gateway {} answered: tunnel up", gateway.name);
                gateway.warned_silent = false;
            }
        }
        let dropped = self.router.expire(Utc::now());
        if dropped > 0 {
            debug!("{dropped} held packet(s) dropped: no access granted in time");
        }
    }

    async fn shutdown(&mut self) {
        if self.stack.is_some() {
            return;
        }
        if let Some(full_tunnel) = self.full_tunnel.as_mut() {
            full_tunnel.shutdown().await;
        }
        if let Some(control) = self.control.take() {
            control.restore().await;
        }
        if let Some(task) = self.dns_task.take() {
            task.abort();
        }
        for address in [
            format!("{DNS_RESOLVER_IPV4}/32"),
            format!("{DNS_RESOLVER_IPV6}/128"),
        ] {
            let _ = net::delete_address(&address, RESOLVER_DEVICE).await;
        }
        for route in std::mem::take(&mut self.routes) {
            let _ = net::delete_route(&route, &self.tun_name).await;
        }
    }
}

impl ClientForwarding {
    fn new(
        tun_name: &str,
        mtu: u16,
        dual_stack: bool,
        requests: mpsc::UnboundedSender<ClientToPortal>,
        dns: Arc<DnsState>,
    ) -> Self {
        ClientForwarding {
            tun_name: tun_name.to_string(),
            mtu,
            dual_stack,
            router: ClientRouter::default(),
            gateways: HashMap::new(),
            routes: BTreeSet::new(),
            addresses: None,
            requests,
            names: HashMap::new(),
            dns,
            dns_task: None,
            control: None,
            emits: VecDeque::new(),
            full_tunnel: None,
            portal_addresses: Vec::new(),
            explicit_upstreams: false,
            stack: None,
            stack_internet: false,
        }
    }

    async fn apply_plan(
        &mut self,
        plan: Plan,
        peers: &mut PeerTable,
    ) -> Vec<(WireGuardKey, Vec<u8>)> {
        if plan.addresses != self.addresses {
            if let (Some(addresses), Some(stack)) = (plan.addresses, &self.stack) {
                stack.set_addresses(addresses.ipv4, addresses.ipv6);
                info!(ipv4 = %addresses.ipv4, ipv6 = %addresses.ipv6, "tunnel addresses set");
            } else if let Some(addresses) = plan.addresses {
                let v4 = format!("{}/32", addresses.ipv4);
                let v6 = format!("{}/128", addresses.ipv6);
                if let Err(err) = net::set_address(&v4, &self.tun_name).await {
                    warn!("cannot set the tunnel address: {err}");
                }
                if let Err(err) = net::set_address(&v6, &self.tun_name).await {
                    warn!("cannot set the tunnel's IPv6 address (IPv6 resources will not work): {err}");
                }
                info!(ipv4 = %addresses.ipv4, ipv6 = %addresses.ipv6, "tunnel addresses set");
            }
            self.addresses = plan.addresses;
            self.router.set_addresses(plan.addresses);
        }
        self.names = plan
            .resources
            .iter()
            .map(|r| (r.id, r.name.clone()))
            .collect();
        self.set_dns_resources(&plan.resources).await;
        // The Internet resource routes only for a client that opted in.
        let opted_in = self.full_tunnel.is_some() || self.stack_internet;
        let routed = plan
            .resources
            .iter()
            .filter(|r| opted_in || r.resource_type != "internet");
        let wanted: BTreeSet<IpNet> = self.router.set_resources(routed).into_iter().collect();
        if self.stack.is_some() {
            // No routes: the stack sends every packet here.
            self.routes = wanted.clone();
        }
        for route in self.routes.difference(&wanted).copied().collect::<Vec<_>>() {
            match net::delete_route(&route, &self.tun_name).await {
                Ok(()) => info!("route removed: {route}"),
                Err(err) => warn!("{err}"),
            }
            self.routes.remove(&route);
        }
        for route in wanted.difference(&self.routes).copied().collect::<Vec<_>>() {
            match net::add_route(&route, &self.tun_name).await {
                Ok(()) => {
                    info!("route added: {route} via {}", self.tun_name);
                    self.routes.insert(route);
                }
                Err(err) => warn!("{err}"),
            }
        }

        let mut route_grants = Vec::new();
        let mut wanted_peers: HashMap<WireGuardKey, &PlannedGrant> = HashMap::new();
        for grant in &plan.grants {
            let Some(key) = grant.gateway_key else {
                warn!(
                    "gateway {} has no WireGuard public key: is it a version with the data plane?",
                    grant.gateway_name
                );
                continue;
            };
            route_grants.push(RouteGrant {
                resource_id: grant.resource_id,
                gateway: key,
                expires_at: grant.expires_at,
                dns: grant.dns.clone(),
            });
            // The latest grant of a pair carries its current preshared key.
            let newer = wanted_peers
                .get(&key)
                .is_none_or(|other| other.expires_at <= grant.expires_at);
            if newer {
                wanted_peers.insert(key, grant);
            }
        }
        let stale: Vec<WireGuardKey> = peers
            .keys()
            .filter(|key| !wanted_peers.contains_key(*key))
            .copied()
            .collect();
        for key in stale {
            peers.remove(&key);
            if let Some(gateway) = self.gateways.remove(&key) {
                info!("tunnel to gateway {} closed", gateway.name);
            }
        }
        for (key, grant) in wanted_peers {
            let preshared_key = grant.preshared_key.clone();
            let Some(endpoint) = self.resolve(grant).await else {
                continue;
            };
            let upserted = peers.upsert(
                PeerConfig {
                    key,
                    preshared_key,
                    endpoint: Some(endpoint),
                    keepalive: Some(KEEPALIVE),
                },
                Instant::now(),
            );
            if upserted == Upserted::Added {
                info!("tunnel to gateway {} at {endpoint}", grant.gateway_name);
            }
            let gateway = self.gateways.entry(key).or_insert_with(|| Gateway {
                name: grant.gateway_name.clone(),
                endpoint,
                warned_silent: false,
                warned_mtu: false,
            });
            gateway.endpoint = endpoint;
        }
        self.set_full_tunnel(&plan).await;
        self.router.set_grants(route_grants, Utc::now())
    }

    /// With `--internet`, the full tunnel is on while the Internet resource is in the view;
    /// the portal and the gateways stay outside it.
    async fn set_full_tunnel(&mut self, plan: &Plan) {
        let Some(full_tunnel) = self.full_tunnel.as_mut() else {
            return;
        };
        let on = plan.resources.iter().any(|r| r.resource_type == "internet");
        let mut excluded: BTreeSet<IpAddr> = self.portal_addresses.iter().copied().collect();
        excluded.extend(
            self.gateways
                .values()
                .map(|g| g.endpoint.ip().to_canonical()),
        );
        full_tunnel.set(on, excluded).await;
        // While it is on, names go to the Internet resource's gateway too (unless upstreams
        // were given by hand): the local network sees no query.
        let Some(control) = self.control.as_ref().filter(|_| !self.explicit_upstreams) else {
            return;
        };
        let upstreams = match on {
            true => vec![
                SocketAddr::new(GATEWAY_RESOLVER_IPV4.into(), DNS_PORT),
                SocketAddr::new(GATEWAY_RESOLVER_IPV6.into(), DNS_PORT),
            ],
            false => control.upstreams.clone(),
        };
        if *self.dns.server.upstreams() != *upstreams {
            info!(
                "DNS: other names go to {}",
                if on {
                    "the Internet resource's gateway"
                } else {
                    "the system's servers"
                }
            );
            self.dns.server.set_upstreams(upstreams.clone());
            self.dns.info.lock().upstreams = upstreams;
            self.dns.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The stub resolver answers for the DNS resources of the plan from now on; with
    /// systemd-resolved, their domains are routed to it.
    async fn set_dns_resources(&mut self, resources: &[ResourceView]) {
        let dns: Vec<&ResourceView> = resources
            .iter()
            .filter(|r| r.resource_type == "dns")
            .collect();
        self.dns
            .server
            .resolver
            .write()
            .set_resources(dns.iter().map(|r| (r.id, r.address.as_str())));
        let Some(control) = self.control.as_mut() else {
            return;
        };
        let domains = dns
            .iter()
            .filter_map(|r| NamePattern::parse(&r.address)?.suffix())
            .collect();
        control.set_domains(domains).await;
        let domains = control.domains().to_vec();
        let mut info = self.dns.info.lock();
        if info.domains != domains {
            info.domains = domains;
            self.dns.dirty.store(true, Ordering::Relaxed);
        }
    }

    async fn resolve(&self, grant: &PlannedGrant) -> Option<SocketAddr> {
        let Some(endpoint) = grant.endpoint.as_deref() else {
            warn!(
                "gateway {} advertised no endpoint: start it with --public-endpoint HOST:PORT",
                grant.gateway_name
            );
            return None;
        };
        let found = tokio::net::lookup_host(endpoint).await;
        let address = found
            .ok()
            .and_then(|mut addresses| addresses.find(|a| self.dual_stack || a.is_ipv4()));
        if address.is_none() {
            warn!(
                "gateway {} is unreachable: cannot resolve its endpoint {endpoint}",
                grant.gateway_name
            );
        }
        address
    }
}

/// The interface that holds the resolver's addresses: loopback, not the TUN, whose only
/// addresses must be the tunnel's (the kernel picks a TUN route's source among them).
const RESOLVER_DEVICE: &str = "lo";

/// Gives loopback the resolver's addresses, routes the proxy ranges into the TUN, starts the
/// DNS server and points the system at it.
async fn start_dns(
    tun_name: &str,
    dns: &Arc<DnsState>,
    options: &DnsOptions,
) -> Result<(tokio::task::JoinHandle<()>, Controlled), NetError> {
    let dns_error = |detail: String| NetError::Command {
        command: "start the DNS resolver".into(),
        detail,
    };
    net::set_address(&format!("{DNS_RESOLVER_IPV4}/32"), RESOLVER_DEVICE).await?;
    let mut resolver = vec![IpAddr::V4(DNS_RESOLVER_IPV4)];
    match net::set_address(&format!("{DNS_RESOLVER_IPV6}/128"), RESOLVER_DEVICE).await {
        Ok(()) => resolver.push(IpAddr::V6(DNS_RESOLVER_IPV6)),
        Err(err) => warn!("the DNS resolver has no IPv6 address (IPv6 is off?): {err}"),
    }
    let ranges = [
        format!("{DNS_IPV4_NETWORK}/{DNS_IPV4_PREFIX_LEN}"),
        format!("{DNS_IPV6_NETWORK}/{DNS_IPV6_PREFIX_LEN}"),
    ];
    for range in ranges {
        let Ok(net) = range.parse::<IpNet>() else {
            continue;
        };
        if let Err(err) = net::add_route(&net, tun_name).await {
            warn!("DNS resources' proxy addresses cannot be routed: {err}");
        }
    }
    let listeners = Listeners::bind(&resolver, DNS_PORT)
        .await
        .map_err(dns_error)?;
    let listen = listeners.addresses();
    let control = Controlled::apply(
        options.control,
        &options.state_dir,
        tun_name,
        &resolver,
        &options.upstreams,
    )
    .await
    .map_err(dns_error)?;
    *dns.info.lock() = crate::dns::DnsInfo {
        mode: control.mode.as_str().to_string(),
        listen,
        upstreams: control.upstreams.clone(),
        ..Default::default()
    };
    info!(
        "DNS resolver on {}; other names go to {}",
        resolver
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if control.upstreams.is_empty() {
            "no upstream (none known)".to_string()
        } else {
            control
                .upstreams
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    dns.server.set_upstreams(control.upstreams.clone());
    let task = tokio::spawn(dns_server::serve(listeners, dns.server.clone()));
    Ok((task, control))
}

/// The data plane's UDP socket on any port: dual-stack, or IPv4 where IPv6 is off.
fn bind_any_udp() -> Result<(tokio::net::UdpSocket, bool), NetError> {
    if let Ok(udp) = net::bind_udp((std::net::Ipv6Addr::UNSPECIFIED, 0).into()) {
        return Ok((udp, true));
    }
    let udp = net::bind_udp((std::net::Ipv4Addr::UNSPECIFIED, 0).into()).map_err(|err| {
        NetError::Command {
            command: "bind a UDP socket".into(),
            detail: err.to_string(),
        }
    })?;
    Ok((udp, false))
}

/// An ICMP "host unreachable" (ICMPv6 "address unreachable"): what a gateway answers for a
/// name it cannot resolve.
fn is_host_unreachable(packet: &[u8]) -> bool {
    let Ok(info) = packet::parse(packet) else {
        return false;
    };
    let Transport::IcmpError { kind, code, .. } = info.transport else {
        return false;
    };
    match info.src {
        IpAddr::V4(_) => (kind, code) == (3, 1),
        IpAddr::V6(_) => (kind, code) == (1, 3),
    }
}

fn endpoint_text(endpoint: Option<SocketAddr>) -> String {
    endpoint.map_or_else(|| "an unknown address".to_string(), |e| e.to_string())
}
