//! The client's data plane: one task owns the TUN device and the UDP socket, routes packets
//! with `postern_dataplane::client::ClientRouter`, and runs one WireGuard tunnel (boringtun's
//! sans-IO `Tunn`) per gateway. The control session feeds it a [`Plan`] (addresses, resources,
//! grants) and receives its access requests.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use postern_dataplane::client::{ClientRouter, Route, RouteGrant};
use postern_dataplane::{decode_key, PeerKey};
use postern_device::handshakes::{initiator_key, HandshakeScreen, Screened};
use postern_device::net::{self, DataPlaneRuntime, NetError, TunReader, TunWriter, UdpBatch};
use postern_protocol::{ClientToPortal, ResourceView, TunnelAddresses};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use uuid::Uuid;

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
    pub gateway_key: Option<String>,
    pub endpoint: Option<String>,
    pub preshared_key: Option<postern_protocol::PresharedKey>,
    pub expires_at: DateTime<Utc>,
}

const TICK: Duration = Duration::from_millis(250);
/// How long a gateway may stay silent after the first packet before the user is told.
const HANDSHAKE_WARNING: Duration = Duration::from_secs(5);
const BUFFER: usize = 65_536 + 148;
/// Reads from one source before the others are polled again (each is one system call;
/// draining a burst spares a trip through the reactor per packet, and gathers the packets
/// written to the TUN device into one batch).
const BATCH: usize = 64;

struct Peer {
    name: String,
    tunn: Tunn,
    endpoint: SocketAddr,
    preshared_key: Option<[u8; 32]>,
    index: u32,
    first_send: Option<Instant>,
    warned_silent: bool,
    warned_mtu: bool,
}

pub struct ClientTunnel {
    /// The thread that runs `run`; the TUN device and the socket are registered with it.
    runtime: DataPlaneRuntime,
    tun: tun_rs::AsyncDevice,
    /// Packets for the TUN device, written after each burst of datagrams.
    tun_out: TunWriter,
    tun_name: String,
    mtu: u16,
    udp: UdpSocket,
    /// Datagrams from one burst of TUN packets, sent together (UDP GSO).
    udp_out: UdpBatch,
    /// The socket is dual-stack: IPv4 endpoints are written as mapped addresses.
    dual_stack: bool,
    private: StaticSecret,
    public: PublicKey,
    handshakes: HandshakeScreen,
    router: ClientRouter,
    peers: HashMap<PeerKey, Peer>,
    by_index: HashMap<u32, PeerKey>,
    next_index: u32,
    routes: BTreeSet<IpNet>,
    addresses: Option<TunnelAddresses>,
    requests: mpsc::UnboundedSender<ClientToPortal>,
    names: HashMap<Uuid, String>,
}

impl ClientTunnel {
    /// Creates the TUN device and the UDP socket; fails with a message a user can act on.
    pub async fn create(
        tun_name: &str,
        mtu: u16,
        private: StaticSecret,
        requests: mpsc::UnboundedSender<ClientToPortal>,
    ) -> Result<Self, NetError> {
        let runtime = DataPlaneRuntime::start("postern-tunnel")?;
        let entered = runtime.enter();
        let tun = net::create_tun(tun_name, mtu)?;
        let (udp, dual_stack) = match net::bind_udp((std::net::Ipv6Addr::UNSPECIFIED, 0).into()) {
            Ok(udp) => (udp, true),
            Err(_) => (
                net::bind_udp((std::net::Ipv4Addr::UNSPECIFIED, 0).into()).map_err(|err| {
                    NetError::Command {
                        command: "bind a UDP socket".into(),
                        detail: err.to_string(),
                    }
                })?,
                false,
            ),
        };
        drop(entered);
        net::grow_socket_buffers(&udp, net::UDP_BUFFER);
        let public = PublicKey::from(&private);
        Ok(Self {
            handshakes: HandshakeScreen::new(&public),
            runtime,
            tun,
            tun_out: TunWriter::default(),
            tun_name: tun_name.to_string(),
            mtu,
            udp,
            udp_out: UdpBatch::default(),
            dual_stack,
            private,
            public,
            router: ClientRouter::default(),
            peers: HashMap::new(),
            by_index: HashMap::new(),
            next_index: rand::random::<u32>() & 0x00ff_ffff,
            routes: BTreeSet::new(),
            addresses: None,
            requests,
            names: HashMap::new(),
        })
    }

    /// Runs the data plane on its own thread until the plan's sender is dropped.
    pub async fn run(self, plans: watch::Receiver<Plan>) {
        let handle = self.runtime.handle().clone();
        let _ = handle.spawn(self.run_here(plans)).await;
    }

    async fn run_here(mut self, mut plans: watch::Receiver<Plan>) {
        let mut tun_in = TunReader::new(self.mtu);
        let mut udp_buf = vec![0u8; BUFFER];
        let mut out = vec![0u8; BUFFER];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(tun = %self.tun_name, mtu = self.mtu, "tunnel device ready");
        loop {
            tokio::select! {
                read = tun_in.recv(&self.tun) => match read {
                    Ok(count) => {
                        for i in 0..count {
                            self.on_tun(tun_in.packet(i), &mut out).await;
                        }
                        for _ in 1..BATCH {
                            let Ok(count) = tun_in.try_recv(&self.tun) else { break };
                            for i in 0..count {
                                self.on_tun(tun_in.packet(i), &mut out).await;
                            }
                        }
                        self.flush_udp().await;
                    }
                    // A segment the offload could not split: not a failing device.
                    Err(err) if err.raw_os_error().is_none() => {
                        debug!("packet from the TUN device dropped: {err}");
                    }
                    Err(err) => {
                        warn!("reading the TUN device failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                read = self.udp.recv_from(&mut udp_buf) => match read {
                    Ok((n, from)) => {
                        self.on_udp(&udp_buf[..n], from, &mut out).await;
                        for _ in 1..BATCH {
                            let Ok((n, from)) = self.udp.try_recv_from(&mut udp_buf) else { break };
                            self.on_udp(&udp_buf[..n], from, &mut out).await;
                        }
                        self.flush_tun().await;
                    }
                    Err(err) => debug!("UDP receive error: {err}"),
                },
                _ = tick.tick() => self.on_tick(&mut out).await,
                changed = plans.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let plan = plans.borrow_and_update().clone();
                    self.apply(plan, &mut out).await;
                    self.flush_udp().await;
                }
            }
        }
        self.cleanup().await;
    }

    async fn cleanup(&mut self) {
        for route in std::mem::take(&mut self.routes) {
            let _ = net::delete_route(&route, &self.tun_name).await;
        }
    }

    async fn apply(&mut self, plan: Plan, out: &mut [u8]) {
        if plan.addresses != self.addresses {
            if let Some(addresses) = plan.addresses {
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
        }
        self.names = plan
            .resources
            .iter()
            .map(|r| (r.id, r.name.clone()))
            .collect();
        let wanted: BTreeSet<IpNet> = self
            .router
            .set_resources(&plan.resources)
            .into_iter()
            .collect();
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
        let mut wanted_peers: HashMap<PeerKey, &PlannedGrant> = HashMap::new();
        for grant in &plan.grants {
            let Some(key) = grant.gateway_key.as_deref().and_then(decode_key) else {
                warn!(
                    "gateway {} has no valid WireGuard public key: is it a version with the data plane?",
                    grant.gateway_name
                );
                continue;
            };
            route_grants.push(RouteGrant {
                resource_id: grant.resource_id,
                gateway: key,
                expires_at: grant.expires_at,
            });
            // The latest grant of a pair carries its current preshared key.
            let newer = wanted_peers
                .get(&key)
                .is_none_or(|other| other.expires_at <= grant.expires_at);
            if newer {
                wanted_peers.insert(key, grant);
            }
        }
        let stale: Vec<PeerKey> = self
            .peers
            .keys()
            .filter(|key| !wanted_peers.contains_key(*key))
            .copied()
            .collect();
        for key in stale {
            if let Some(peer) = self.peers.remove(&key) {
                self.by_index.remove(&peer.index);
                info!("tunnel to gateway {} closed", peer.name);
            }
        }
        for (key, grant) in wanted_peers {
            let preshared_key = grant.preshared_key.as_deref().and_then(decode_key);
            let Some(endpoint) = self.resolve(grant).await else {
                continue;
            };
            if let Some(peer) = self.peers.get_mut(&key) {
                if peer.preshared_key == preshared_key {
                    peer.endpoint = endpoint;
                    continue;
                }
            }
            self.add_peer(key, grant.gateway_name.clone(), endpoint, preshared_key);
        }
        let now = Utc::now();
        for (key, packet) in self.router.set_grants(route_grants, now) {
            self.send_to_peer(&key, &packet, out).await;
        }
    }

    fn add_peer(
        &mut self,
        key: PeerKey,
        name: String,
        endpoint: SocketAddr,
        psk: Option<[u8; 32]>,
    ) {
        if let Some(old) = self.peers.remove(&key) {
            self.by_index.remove(&old.index);
        }
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(key),
            psk,
            Some(25),
            index,
            None,
        );
        info!("tunnel to gateway {name} at {endpoint}");
        self.by_index.insert(index, key);
        self.peers.insert(
            key,
            Peer {
                name,
                tunn,
                endpoint,
                preshared_key: psk,
                index,
                first_send: None,
                warned_silent: false,
                warned_mtu: false,
            },
        );
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

    async fn on_tun(&mut self, packet: &[u8], out: &mut [u8]) {
        match self.router.route(packet, Utc::now()) {
            Route::Send(key) => self.send_to_peer(&key, packet, out).await,
            Route::Held {
                request: Some(resource_id),
            } => {
                let name = self
                    .names
                    .get(&resource_id)
                    .cloned()
                    .unwrap_or_else(|| resource_id.to_string());
                info!("requesting access to {name}");
                let _ = self
                    .requests
                    .send(ClientToPortal::RequestAccess { resource_id });
            }
            Route::Held { request: None } => {}
            Route::Drop(why) => debug!(?why, "packet from the TUN dropped"),
        }
    }

    async fn send_to_peer(&mut self, key: &PeerKey, packet: &[u8], out: &mut [u8]) {
        let Some(peer) = self.peers.get_mut(key) else {
            debug!("no tunnel to the gateway of this packet yet");
            return;
        };
        peer.first_send.get_or_insert_with(Instant::now);
        let result = peer.tunn.encapsulate(packet, out);
        let endpoint = socket_address(self.dual_stack, peer.endpoint);
        if let TunnResult::WriteToNetwork(datagram) = result {
            if !self.udp_out.fits(endpoint, datagram.len()) {
                self.flush_udp().await;
            }
            self.udp_out.push(endpoint, datagram);
        }
    }

    /// Sends the datagrams queued by `send_to_peer`.
    async fn flush_udp(&mut self) {
        if self.udp_out.is_empty() {
            return;
        }
        let to = self.udp_out.destination();
        if let Err((err, len)) = net::send_batch(&self.udp, &mut self.udp_out).await {
            let dual_stack = self.dual_stack;
            let peer = self
                .peers
                .values_mut()
                .find(|peer| Some(socket_address(dual_stack, peer.endpoint)) == to);
            match peer {
                Some(peer) => report_send_error(peer, len, self.mtu, &err),
                None => debug!("sending to a gateway failed: {err}"),
            }
        }
    }

    async fn on_udp(&mut self, datagram: &[u8], from: SocketAddr, out: &mut [u8]) {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let packet = match self.handshakes.screen(from.ip(), datagram, out) {
            Screened::Pass(packet) => packet,
            Screened::CookieReply(cookie) => {
                let _ = send(&self.udp, self.dual_stack, cookie, from).await;
                return;
            }
            Screened::Drop => {
                debug!(%from, "datagram that is no WireGuard message for this device dropped");
                return;
            }
        };
        let Some(key) = self.peer_of(&packet, from) else {
            debug!(%from, "datagram from an unknown peer dropped");
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let mut result = peer.tunn.decapsulate(Some(from.ip()), datagram, out);
        loop {
            match result {
                TunnResult::WriteToNetwork(reply) => {
                    let _ = send(&self.udp, self.dual_stack, reply, peer.endpoint).await;
                    result = peer.tunn.decapsulate(None, &[], out);
                }
                TunnResult::WriteToTunnelV4(packet, src) => {
                    let src = IpAddr::V4(src);
                    self.write_to_tun(&key, src, packet).await;
                    return;
                }
                TunnResult::WriteToTunnelV6(packet, src) => {
                    let src = IpAddr::V6(src);
                    self.write_to_tun(&key, src, packet).await;
                    return;
                }
                TunnResult::Done => return,
                TunnResult::Err(err) => {
                    debug!(?err, "WireGuard refused a datagram");
                    return;
                }
            }
        }
    }

    /// Only packets from a resource granted through this gateway reach the TUN.
    async fn write_to_tun(&mut self, from_peer: &PeerKey, src: IpAddr, packet: &[u8]) {
        let granted = self
            .router
            .gateway_of(src, Utc::now())
            .is_some_and(|key| key == *from_peer);
        if !granted {
            debug!(%src, "packet from a gateway for a resource it does not serve dropped");
            return;
        }
        if self.tun_out.push(packet) {
            self.flush_tun().await;
        }
    }

    async fn flush_tun(&mut self) {
        if let Err(err) = self.tun_out.flush(&self.tun).await {
            debug!("writing to the TUN device failed: {err}");
        }
    }

    fn peer_of(&self, packet: &Packet<'_>, from: SocketAddr) -> Option<PeerKey> {
        match packet {
            Packet::HandshakeInit(_) => initiator_key(&self.private, &self.public, packet)
                .filter(|key| self.peers.contains_key(key)),
            Packet::HandshakeResponse(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketCookieReply(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketData(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
        }
        .or_else(|| {
            self.peers
                .iter()
                .find(|(_, p)| p.endpoint == from)
                .map(|(k, _)| *k)
        })
    }

    async fn on_tick(&mut self, out: &mut [u8]) {
        self.handshakes.tick();
        for peer in self.peers.values_mut() {
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(out) {
                let len = datagram.len();
                if let Err(err) = send(&self.udp, self.dual_stack, datagram, peer.endpoint).await {
                    report_send_error(peer, len, self.mtu, &err);
                }
            }
            let silent = peer.tunn.stats().0.is_none();
            let waited = peer
                .first_send
                .is_some_and(|at| at.elapsed() > HANDSHAKE_WARNING);
            if silent && waited && !peer.warned_silent {
                warn!(
                    "gateway {} at {} is unreachable: no WireGuard handshake after {} s (is UDP to it allowed?)",
                    peer.name,
                    peer.endpoint,
                    HANDSHAKE_WARNING.as_secs()
                );
                peer.warned_silent = true;
            }
            if !silent && peer.warned_silent {
                info!("gateway {} answered: tunnel up", peer.name);
                peer.warned_silent = false;
            }
        }
        let dropped = self.router.expire(Utc::now());
        if dropped > 0 {
            debug!("{dropped} held packet(s) dropped: no access granted in time");
        }
    }
}

fn report_send_error(peer: &mut Peer, len: usize, mtu: u16, err: &std::io::Error) {
    if err.raw_os_error() == Some(libc::EMSGSIZE) {
        if !peer.warned_mtu {
            warn!(
                "MTU problem: a {len}-byte WireGuard datagram does not fit the path to gateway {} at {}; lower --mtu (now {mtu})",
                peer.name, peer.endpoint
            );
            peer.warned_mtu = true;
        }
        return;
    }
    if !peer.warned_silent {
        warn!(
            "gateway {} at {} is unreachable: {err}",
            peer.name, peer.endpoint
        );
        peer.warned_silent = true;
    }
}

/// `to` as the socket wants it: on the dual-stack socket, IPv4 as a mapped address.
fn socket_address(dual_stack: bool, to: SocketAddr) -> SocketAddr {
    match (dual_stack, to) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    }
}

async fn send(
    udp: &UdpSocket,
    dual_stack: bool,
    datagram: &[u8],
    to: SocketAddr,
) -> std::io::Result<()> {
    udp.send_to(datagram, socket_address(dual_stack, to))
        .await
        .map(|_| ())
}
