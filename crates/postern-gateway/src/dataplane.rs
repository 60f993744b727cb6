//! The gateway's data plane: one task owns the UDP listener and the TUN device, keeps one
//! WireGuard peer (boringtun's sans-IO `Tunn`) per authorized client, and lets a decrypted
//! packet into the site's network only when `postern_dataplane::gateway::GatewayPolicy` says so.
//! The kernel forwards it with source NAT (nftables masquerade, set up here), so resources need
//! no route back; replies come back through the TUN and the same tunnel.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use chrono::Utc;
use ipnet::IpNet;
use parking_lot::Mutex;
use postern_dataplane::gateway::{DropCounters, DropReason, GatewayPolicy};
use postern_dataplane::{encode_key, PeerKey};
use postern_device::handshakes::{initiator_key, HandshakeScreen, Screened};
use postern_device::net::{self, DataPlaneRuntime, NetError, TunReader, TunWriter, UdpBatch};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::plan::{PlanBatch, PlanReceiver};

const TICK: Duration = Duration::from_millis(250);
const COUNTER_LOG: Duration = Duration::from_secs(10);
const BUFFER: usize = 65_536 + 148;
/// Reads from one source before the others are polled again (each is one system call;
/// draining a burst spares a trip through the reactor per packet, and gathers the packets
/// written to the TUN device into one batch).
const BATCH: usize = 64;

struct Peer {
    tunn: Tunn,
    /// Where the client last sent from (clients roam; WireGuard authenticates, not the address).
    endpoint: Option<SocketAddr>,
    preshared_key: Option<[u8; 32]>,
    index: u32,
    routes: Vec<IpNet>,
}

pub struct GatewayDataPlane {
    /// The thread that runs `run`; the TUN device and the socket are registered with it.
    runtime: DataPlaneRuntime,
    tun: tun_rs::AsyncDevice,
    /// Packets for the TUN device, written after each burst of datagrams.
    tun_out: TunWriter,
    mtu: u16,
    tun_name: String,
    nft_table: String,
    udp: UdpSocket,
    /// Datagrams from one burst of TUN packets, sent together (UDP GSO).
    udp_out: UdpBatch,
    private: StaticSecret,
    public: PublicKey,
    handshakes: HandshakeScreen,
    policy: GatewayPolicy,
    peers: HashMap<PeerKey, Peer>,
    by_index: HashMap<u32, PeerKey>,
    next_index: u32,
    counters: DropCounters,
    shared_counters: Arc<Mutex<DropCounters>>,
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
        net::grow_socket_buffers(&udp, net::UDP_BUFFER);
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
        let rules = format!(
            "table inet {nft_table} {{}}\n\
             delete table inet {nft_table}\n\
             table inet {nft_table} {{\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 iifname \"{tun_name}\" masquerade\n\
               }}\n\
               chain input {{\n\
                 type filter hook input priority filter; policy accept;\n\
                 iifname \"{tun_name}\" drop\n\
               }}\n\
               chain forward {{\n\
                 type filter hook forward priority filter; policy accept;\n\
                 oifname \"{tun_name}\" ct state established,related accept\n\
                 oifname \"{tun_name}\" drop\n\
               }}\n\
             }}\n"
        );
        net::run_with_input("nft", &["-f", "-"], Some(&rules)).await?;
        let public = PublicKey::from(&private);
        Ok(Self {
            handshakes: HandshakeScreen::new(&public),
            runtime,
            tun,
            tun_out: TunWriter::default(),
            mtu,
            tun_name: tun_name.to_string(),
            nft_table,
            udp,
            udp_out: UdpBatch::default(),
            private,
            public,
            policy: GatewayPolicy::default(),
            peers: HashMap::new(),
            by_index: HashMap::new(),
            next_index: rand::random::<u32>() & 0x00ff_ffff,
            counters: DropCounters::default(),
            shared_counters,
        })
    }

    /// Runs the data plane on its own thread until the plan's sender is dropped.
    pub async fn run(self, plans: PlanReceiver) {
        let handle = self.runtime.handle().clone();
        let _ = handle.spawn(self.run_here(plans)).await;
    }

    async fn run_here(mut self, mut plans: PlanReceiver) {
        let mut tun_in = TunReader::new(self.mtu);
        let mut udp_buf = vec![0u8; BUFFER];
        let mut out = vec![0u8; BUFFER];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = DropCounters::default();
        let mut last_log = tokio::time::Instant::now();
        if let Ok(address) = self.udp.local_addr() {
            info!(tun = %self.tun_name, "data plane listening on UDP {address}");
        }
        loop {
            tokio::select! {
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
                _ = tick.tick() => {
                    self.on_tick(&mut out).await;
                    *self.shared_counters.lock() = self.counters;
                    if self.counters != logged && last_log.elapsed() >= COUNTER_LOG {
                        let counts: Vec<String> = self
                            .counters
                            .non_zero()
                            .into_iter()
                            .map(|(reason, count)| format!("{reason}={count}"))
                            .collect();
                        info!("packets dropped so far: {}", counts.join(" "));
                        logged = self.counters;
                        last_log = tokio::time::Instant::now();
                    }
                }
                batch = plans.next() => {
                    let Some(batch) = batch else { break };
                    self.apply(batch).await;
                }
            }
        }
        let _ = net::run("nft", &["delete", "table", "inet", &self.nft_table]).await;
    }

    /// Applies each authorization change on its own, then brings the tunnels of the clients
    /// it touched in line: a new client gets a peer, a re-keyed one a new peer, one left with
    /// nothing loses its peer and routes.
    async fn apply(&mut self, batch: PlanBatch) {
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
            self.reconcile(key).await;
        }
    }

    /// Makes the peer of one client match the policy's view of it.
    async fn reconcile(&mut self, key: PeerKey) {
        let Some(client) = self.policy.peer(&key) else {
            if let Some(peer) = self.peers.remove(&key) {
                self.by_index.remove(&peer.index);
                for route in &peer.routes {
                    let _ = net::delete_route(route, &self.tun_name).await;
                }
                info!("client {} removed", encode_key(&key));
            }
            return;
        };
        let routes = vec![
            IpNet::from(std::net::IpAddr::V4(client.addresses.ipv4)),
            IpNet::from(std::net::IpAddr::V6(client.addresses.ipv6)),
        ];
        let (preshared_key, ipv4) = (client.preshared_key, client.addresses.ipv4);
        if let Some(peer) = self.peers.get(&key) {
            if peer.preshared_key == preshared_key && peer.routes == routes {
                return;
            }
        }
        let endpoint = self.peers.get(&key).and_then(|p| p.endpoint);
        if let Some(old) = self.peers.remove(&key) {
            self.by_index.remove(&old.index);
            for route in old.routes.iter().filter(|r| !routes.contains(r)) {
                let _ = net::delete_route(route, &self.tun_name).await;
            }
        }
        for route in &routes {
            if let Err(err) = net::add_route(route, &self.tun_name).await {
                warn!("{err}");
            }
        }
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(key),
            preshared_key,
            None,
            index,
            None,
        );
        info!("client {} ({ipv4}) added", encode_key(&key));
        self.by_index.insert(index, key);
        self.peers.insert(
            key,
            Peer {
                tunn,
                endpoint,
                preshared_key,
                index,
                routes,
            },
        );
    }

    fn peer_of(&mut self, packet: &Packet<'_>) -> Option<PeerKey> {
        match packet {
            Packet::HandshakeInit(_) => initiator_key(&self.private, &self.public, packet),
            Packet::HandshakeResponse(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketCookieReply(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketData(p) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
        }
    }

    async fn on_udp(&mut self, datagram: &[u8], from: SocketAddr, out: &mut [u8]) {
        let packet = match self.handshakes.screen(from.ip(), datagram, out) {
            Screened::Pass(packet) => packet,
            Screened::CookieReply(cookie) => {
                self.counters.record(DropReason::HandshakeUnderLoad);
                let _ = self.udp.send_to(cookie, from).await;
                return;
            }
            Screened::Drop => {
                self.counters.record(DropReason::BadHandshake);
                return;
            }
        };
        let Some(key) = self.peer_of(&packet) else {
            debug!(%from, "datagram that is no WireGuard message of a known client dropped");
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            self.counters.record(DropReason::UnknownPeer);
            debug!(%from, "handshake from a client with no authorization dropped");
            return;
        };
        let mut result = peer.tunn.decapsulate(Some(from.ip()), datagram, out);
        loop {
            match result {
                TunnResult::WriteToNetwork(reply) => {
                    peer.endpoint = Some(from);
                    if let Err(err) = self.udp.send_to(reply, from).await {
                        debug!(%from, "sending to a client failed: {err}");
                    }
                    result = peer.tunn.decapsulate(None, &[], out);
                }
                TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                    peer.endpoint = Some(from);
                    match self.policy.check_inbound(&key, packet, Utc::now()) {
                        Ok(()) => {
                            if self.tun_out.push(packet) {
                                if let Err(err) = self.tun_out.flush(&self.tun).await {
                                    debug!("writing to the TUN device failed: {err}");
                                }
                            }
                        }
                        Err(reason) => {
                            self.counters.record(reason);
                            debug!(reason = reason.as_str(), "packet from a client dropped");
                        }
                    }
                    return;
                }
                TunnResult::Done => {
                    peer.endpoint = Some(from);
                    return;
                }
                TunnResult::Err(err) => {
                    debug!(%from, ?err, "WireGuard refused a datagram");
                    return;
                }
            }
        }
    }

    async fn on_tun(&mut self, packet: &[u8], out: &mut [u8]) {
        let key = match self.policy.route_reply(packet, Utc::now()) {
            Ok(key) => key,
            // The kernel's own traffic on the TUN (IPv6 neighbour discovery, multicast) is
            // for no client: not worth counting.
            Err(DropReason::UnknownPeer) => return,
            Err(reason) => {
                self.counters.record(reason);
                debug!(reason = reason.as_str(), "reply dropped");
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            debug!("reply for a client that never connected dropped");
            return;
        };
        if let TunnResult::WriteToNetwork(datagram) = peer.tunn.encapsulate(packet, out) {
            if !self.udp_out.fits(endpoint, datagram.len()) {
                self.flush_udp().await;
            }
            self.udp_out.push(endpoint, datagram);
        }
    }

    /// Sends the datagrams queued by `on_tun`.
    async fn flush_udp(&mut self) {
        let endpoint = self.udp_out.destination();
        if let Err((err, _)) = net::send_batch(&self.udp, &mut self.udp_out).await {
            debug!(?endpoint, "sending to a client failed: {err}");
        }
    }

    async fn flush_tun(&mut self) {
        if let Err(err) = self.tun_out.flush(&self.tun).await {
            debug!("writing to the TUN device failed: {err}");
        }
    }

    async fn on_tick(&mut self, out: &mut [u8]) {
        self.handshakes.tick();
        for peer in self.peers.values_mut() {
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(out) {
                let _ = self.udp.send_to(datagram, endpoint).await;
            }
        }
    }
}
