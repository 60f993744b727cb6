//! The WireGuard peers of one device, sans-IO: client and gateway alike. A [`PeerTable`] holds
//! one boringtun `Tunn` per peer, finds the peer of each datagram (by receiver index, or by the
//! initiator's key for a handshake), screens handshakes before any key agreement, follows a
//! peer's endpoint to where its authenticated datagrams come from, and runs the timers. The
//! I/O shell feeds it datagrams (`handle_network_input`), packets for a peer (`encapsulate`)
//! and the time (`handle_timeout`), and sends what `poll_transmit` returns.
//!
//! Hot-path results (a decrypted packet, an encrypted datagram) are written into the caller's
//! buffer; control messages (handshake answers, keepalives, cookie replies, packets that waited
//! for a handshake) are queued as [`Transmit`]s.
//!
//! boringtun reads the monotonic clock itself for its session timers (it has no `_at` variants,
//! and its `mock-instant` feature would, through Cargo's feature unification, freeze the clock
//! of every binary built with the tests). The table therefore owns every other clock (the
//! handshake budget, the timer schedule, when a peer was first used) through `now`, and tests
//! drive rekeying through new handshakes rather than by advancing boringtun's clock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::{PresharedKey, WireGuardKey};

/// Handshake messages a device processes per second before it asks for cookies.
pub const HANDSHAKES_PER_SECOND: u64 = 100;
/// How often boringtun's timers run (keepalives, rekeying, retransmitted handshakes).
pub const TIMER_INTERVAL: Duration = Duration::from_millis(250);
/// Control messages waiting to be sent; past it the newest are dropped (and counted).
pub const MAX_QUEUED_TRANSMITS: usize = 4096;
/// The largest WireGuard overhead: a handshake initiation is 148 bytes, a data message adds 32.
pub const OVERHEAD: usize = 148;

/// What a peer is, as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: WireGuardKey,
    pub preshared_key: Option<PresharedKey>,
    /// Where to send first. `None` (a gateway's clients) waits for the peer to send.
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives on an idle tunnel (for a peer behind NAT).
    pub keepalive: Option<u16>,
}

/// What [`PeerTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Added,
    /// The preshared key changed: a new session, the old one is gone.
    Replaced,
    /// Only the endpoint or keepalive changed; the session stays.
    Updated,
    Unchanged,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Why a datagram from the network went no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not WireGuard, or a handshake not made for this device's key.
    NotForUs,
    /// Over the handshake budget without a cookie: answered with a cookie reply.
    UnderLoad,
    /// A well-formed message for no peer of this table.
    UnknownPeer,
    /// The peer's session refused it: a replay, a wrong key, an expired session.
    Rejected,
}

/// The outcome of one datagram from the network.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A decrypted IP packet from `peer`, for the shell to judge and deliver.
    Packet {
        peer: WireGuardKey,
        packet: &'a [u8],
    },
    /// A handshake or keepalive: handled, answers (if any) are in `poll_transmit`.
    Handled {
        peer: WireGuardKey,
    },
    Refused(Refused),
}

/// How one peer is doing, for status and warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    pub endpoint: Option<SocketAddr>,
    /// Since the last completed handshake; `None` before the first.
    pub since_handshake: Option<Duration>,
    /// When the shell first sent a packet to this peer.
    pub first_send: Option<Instant>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
}

/// Initiations from keys that are not peers yet, kept at most this long…
pub const EARLY_HANDSHAKE_LIFETIME: Duration = Duration::from_secs(3);
/// …and at most this many at once (the oldest goes).
const MAX_EARLY_HANDSHAKES: usize = 256;

struct EarlyHandshake {
    from: SocketAddr,
    datagram: Vec<u8>,
    at: Instant,
}

struct Peer {
    tunn: Tunn,
    config: PeerConfig,
    endpoint: Option<SocketAddr>,
    index: u32,
    first_send: Option<Instant>,
}

pub struct PeerTable {
    private: StaticSecret,
    public: PublicKey,
    limiter: RateLimiter,
    peers: HashMap<WireGuardKey, Peer>,
    by_index: HashMap<u32, WireGuardKey>,
    /// Initiations that arrived before their peer (see [`PeerTable::keep_early`]).
    early: HashMap<WireGuardKey, EarlyHandshake>,
    next_index: u32,
    transmits: VecDeque<Transmit>,
    dropped_transmits: u64,
    next_timers: Option<Instant>,
    next_budget: Option<Instant>,
    scratch: Vec<u8>,
}

impl PeerTable {
    /// `index_seed` starts the receiver indices (random in production, so that a restarted
    /// device does not reuse the indices its peers still hold; fixed in tests).
    pub fn new(private: StaticSecret, index_seed: u32) -> Self {
        let public = PublicKey::from(&private);
        Self {
            limiter: RateLimiter::new(&public, HANDSHAKES_PER_SECOND),
            private,
            public,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            early: HashMap::new(),
            next_index: index_seed & 0x00ff_ffff,
            transmits: VecDeque::new(),
            dropped_transmits: 0,
            next_timers: None,
            next_budget: None,
            scratch: vec![0; 65_536 + OVERHEAD],
        }
    }

    pub fn public_key(&self) -> WireGuardKey {
        WireGuardKey::from_bytes(self.public.to_bytes())
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn contains(&self, key: &WireGuardKey) -> bool {
        self.peers.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &WireGuardKey> {
        self.peers.keys()
    }

    /// Control messages dropped because the queue was full.
    pub fn dropped_transmits(&self) -> u64 {
        self.dropped_transmits
    }

    /// Adds a peer or brings it in line with `config`. A known endpoint is kept when the
    /// config gives none (a gateway learns its clients' endpoints from their datagrams).
    pub fn upsert(&mut self, config: PeerConfig, now: Instant) -> Upserted {
        if let Some(peer) = self.peers.get_mut(&config.key) {
            if peer.config == config {
                return Upserted::Unchanged;
            }
            let same_session = peer.config.preshared_key == config.preshared_key
                && peer.config.keepalive == config.keepalive;
            if same_session {
                if config.endpoint.is_some() {
                    peer.endpoint = config.endpoint;
                }
                peer.config = config;
                return Upserted::Updated;
            }
        }
        let old = self.remove_peer(&config.key);
        let upserted = match old {
            Some(_) => Upserted::Replaced,
            None => Upserted::Added,
        };
        let endpoint = config.endpoint.or(old.and_then(|old| old.endpoint));
        let index = self.allocate_index();
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(*config.key.as_bytes()),
            config.preshared_key.as_ref().map(|key| *key.as_bytes()),
            config.keepalive,
            index,
            None,
        );
        let key = config.key;
        self.by_index.insert(index, key);
        self.peers.insert(
            key,
            Peer {
                tunn,
                config,
                endpoint,
                index,
                first_send: None,
            },
        );
        self.answer_early(&key, now);
        upserted
    }

    /// Forgets a peer: its sessions end, its datagrams are refused from now on.
    pub fn remove(&mut self, key: &WireGuardKey) -> bool {
        self.remove_peer(key).is_some()
    }

    fn remove_peer(&mut self, key: &WireGuardKey) -> Option<Peer> {
        let peer = self.peers.remove(key)?;
        self.by_index.remove(&peer.index);
        Some(peer)
    }

    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    pub fn stats(&self, key: &WireGuardKey) -> Option<PeerStats> {
        let peer = self.peers.get(key)?;
        let (since_handshake, tx_bytes, rx_bytes, _, _) = peer.tunn.stats();
        Some(PeerStats {
            endpoint: peer.endpoint,
            since_handshake,
            first_send: peer.first_send,
            tx_bytes,
            rx_bytes,
        })
    }

    /// One datagram from `from`. A decrypted packet is written into `out` (at least the
    /// datagram's length) and returned; everything else to send is queued.
    pub fn handle_network_input<'a>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Received<'a> {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let key = match self.limiter.verify_packet(Some(from.ip()), datagram, out) {
            Ok(packet) => match self.peer_of(&packet) {
                Ok(key) => key,
                Err(Some(stranger)) => {
                    self.keep_early(stranger, from, datagram, now);
                    return Received::Refused(Refused::UnknownPeer);
                }
                Err(None) => return Received::Refused(Refused::UnknownPeer),
            },
            Err(TunnResult::WriteToNetwork(cookie)) => {
                Self::push(
                    &mut self.transmits,
                    &mut self.dropped_transmits,
                    from,
                    cookie.to_vec(),
                );
                return Received::Refused(Refused::UnderLoad);
            }
            Err(_) => return Received::Refused(Refused::NotForUs),
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return Received::Refused(Refused::UnknownPeer);
        };
        match peer.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                peer.endpoint = Some(from);
                let reply = reply.to_vec();
                Self::push(
                    &mut self.transmits,
                    &mut self.dropped_transmits,
                    from,
                    reply,
                );
                // Packets that waited for this handshake go out now.
                while let TunnResult::WriteToNetwork(queued) =
                    peer.tunn.decapsulate(None, &[], &mut self.scratch)
                {
                    let queued = queued.to_vec();
                    Self::push(
                        &mut self.transmits,
                        &mut self.dropped_transmits,
                        from,
                        queued,
                    );
                }
                Received::Handled { peer: key }
            }
            TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                peer.endpoint = Some(from);
                Received::Packet { peer: key, packet }
            }
            TunnResult::Done => {
                peer.endpoint = Some(from);
                Received::Handled { peer: key }
            }
            TunnResult::Err(_) => Received::Refused(Refused::Rejected),
        }
    }

    /// The peer a screened message belongs to: a handshake initiation by its sender's static
    /// key (one key agreement, only for messages that passed the screen), every other message
    /// by the receiver index this table gave out. `Err(Some(key))`: a well-formed initiation
    /// from a key that is no peer (yet).
    fn peer_of(&self, packet: &Packet<'_>) -> Result<WireGuardKey, Option<WireGuardKey>> {
        let index = match packet {
            Packet::HandshakeInit(init) => {
                let key = parse_handshake_anon(&self.private, &self.public, init)
                    .map(|half| WireGuardKey::from_bytes(half.peer_static_public))
                    .map_err(|_| None)?;
                return match self.peers.contains_key(&key) {
                    true => Ok(key),
                    false => Err(Some(key)),
                };
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.by_index.get(&(index >> 8)).copied().ok_or(None)
    }

    /// Keeps a screened initiation from a key that is not a peer yet: the portal tells the
    /// gateway and the client of a grant at the same moment, so a client's first handshake
    /// often arrives just before its key. Answered when the peer is added within
    /// [`EARLY_HANDSHAKE_LIFETIME`], instead of the client retrying after 5 s.
    fn keep_early(&mut self, key: WireGuardKey, from: SocketAddr, datagram: &[u8], now: Instant) {
        if !self.early.contains_key(&key) && self.early.len() >= MAX_EARLY_HANDSHAKES {
            let oldest = self.early.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.early.remove(&oldest);
            }
        }
        self.early.insert(
            key,
            EarlyHandshake {
                from,
                datagram: datagram.to_vec(),
                at: now,
            },
        );
    }

    /// Answers the initiation a new peer sent before it was added, if it is recent.
    fn answer_early(&mut self, key: &WireGuardKey, now: Instant) {
        let Some(early) = self.early.remove(key) else {
            return;
        };
        if now.saturating_duration_since(early.at) > EARLY_HANDSHAKE_LIFETIME {
            return;
        }
        let mut out = vec![0u8; early.datagram.len() + OVERHEAD];
        let _ = self.handle_network_input(early.from, &early.datagram, now, &mut out);
    }

    /// Encrypts `packet` for `key` into `out` (at least the packet's length plus
    /// [`OVERHEAD`]) and says where to send it. `None`: no such peer, no endpoint yet, or the
    /// packet waits for a handshake (whose initiation is then what is returned).
    pub fn encapsulate<'a>(
        &mut self,
        key: &WireGuardKey,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        let peer = self.peers.get_mut(key)?;
        peer.first_send.get_or_insert(now);
        let endpoint = peer.endpoint?;
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => Some((endpoint, datagram)),
            _ => None,
        }
    }

    /// Runs whatever is due at `now`: boringtun's timers every [`TIMER_INTERVAL`] (their
    /// datagrams are queued), and once a second a new handshake budget (boringtun's limiter
    /// resets when its own clock agrees that a second has passed).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_budget.is_none_or(|at| now >= at) {
            self.limiter.reset_count();
            self.next_budget = Some(now + Duration::from_secs(1));
        }
        if self.next_timers.is_some_and(|at| now < at) {
            return;
        }
        self.next_timers = Some(now + TIMER_INTERVAL);
        for peer in self.peers.values_mut() {
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            // An expired session needs nothing: the next packet starts a handshake.
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(&mut self.scratch)
            {
                let datagram = datagram.to_vec();
                Self::push(
                    &mut self.transmits,
                    &mut self.dropped_transmits,
                    endpoint,
                    datagram,
                );
            }
        }
    }

    /// When `handle_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        match (self.next_timers, self.next_budget) {
            (Some(timers), Some(budget)) => timers.min(budget),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => Instant::now(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn push(queue: &mut VecDeque<Transmit>, dropped: &mut u64, to: SocketAddr, datagram: Vec<u8>) {
        if queue.len() >= MAX_QUEUED_TRANSMITS {
            *dropped += 1;
            return;
        }
        queue.push_back(Transmit { to, datagram });
    }
}

/// `to` as a dual-stack socket wants it: IPv4 as a mapped IPv6 address.
pub fn dual_stack_address(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT_AT: &str = "192.0.2.1:40000";
    const GATEWAY_AT: &str = "198.51.100.2:51820";

    fn secret(seed: u8) -> StaticSecret {
        StaticSecret::from([seed; 32])
    }

    fn key_of(secret: &StaticSecret) -> WireGuardKey {
        WireGuardKey::from_bytes(PublicKey::from(secret).to_bytes())
    }

    /// An IPv4 UDP packet from 100.64.0.2 to 10.0.0.5 carrying `payload` (checksums are not
    /// WireGuard's business).
    fn packet(payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 64, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 5]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    /// A table that knows only the gateway (`secret(seed)` as its own key).
    fn initiator(seed: u8, gateway_key: WireGuardKey) -> PeerTable {
        let mut table = PeerTable::new(secret(seed), u32::from(seed) * 10);
        table.upsert(
            PeerConfig {
                key: gateway_key,
                preshared_key: None,
                endpoint: Some(GATEWAY_AT.parse().unwrap()),
                keepalive: None,
            },
            Instant::now(),
        );
        table
    }

    /// `payload` in a packet encrypted by `table` for `key`: the datagram it would send.
    fn seal(table: &mut PeerTable, key: &WireGuardKey, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        table
            .encapsulate(key, &packet(payload), Instant::now(), &mut out)
            .map(|(_, d)| d.to_vec())
            .expect("a datagram")
    }

    struct Pair {
        client: PeerTable,
        gateway: PeerTable,
        client_key: WireGuardKey,
        gateway_key: WireGuardKey,
        now: Instant,
        psk: Option<PresharedKey>,
    }

    impl Pair {
        fn new(psk: Option<PresharedKey>) -> Self {
            let (client_secret, gateway_secret) = (secret(1), secret(2));
            let (client_key, gateway_key) = (key_of(&client_secret), key_of(&gateway_secret));
            let mut pair = Pair {
                client: PeerTable::new(client_secret, 10),
                gateway: PeerTable::new(gateway_secret, 20),
                client_key,
                gateway_key,
                now: Instant::now(),
                psk: psk.clone(),
            };
            pair.configure_client();
            assert_eq!(
                pair.gateway.upsert(
                    PeerConfig {
                        key: client_key,
                        preshared_key: psk,
                        endpoint: None,
                        keepalive: None,
                    },
                    Instant::now()
                ),
                Upserted::Added
            );
            pair
        }

        fn configure_client(&mut self) -> Upserted {
            self.client.upsert(
                PeerConfig {
                    key: self.gateway_key,
                    preshared_key: self.psk.clone(),
                    endpoint: Some(GATEWAY_AT.parse().unwrap()),
                    keepalive: Some(25),
                },
                Instant::now(),
            )
        }

        /// Sends from the client; returns what the gateway delivered.
        fn client_sends(&mut self, payload: &[u8]) -> Vec<Vec<u8>> {
            let mut out = vec![0u8; 2048];
            let sent = self
                .client
                .encapsulate(&self.gateway_key, &packet(payload), self.now, &mut out)
                .map(|(to, d)| (to, d.to_vec()));
            let mut delivered = Vec::new();
            if let Some((to, datagram)) = sent {
                assert_eq!(to, GATEWAY_AT.parse().unwrap());
                delivered.extend(self.deliver_to_gateway(&datagram));
            }
            delivered.extend(self.exchange());
            delivered
        }

        fn gateway_sends(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
            let mut out = vec![0u8; 2048];
            let (to, datagram) = self
                .gateway
                .encapsulate(&self.client_key, &packet(payload), self.now, &mut out)
                .map(|(to, d)| (to, d.to_vec()))?;
            assert_eq!(
                to,
                CLIENT_AT.parse().unwrap(),
                "the endpoint the client sent from"
            );
            let mut back = vec![0u8; 2048];
            match self.client.handle_network_input(
                GATEWAY_AT.parse().unwrap(),
                &datagram,
                Instant::now(),
                &mut back,
            ) {
                Received::Packet { peer, packet } => {
                    assert_eq!(peer, self.gateway_key);
                    Some(packet.to_vec())
                }
                other => panic!("the client did not take the gateway's packet: {other:?}"),
            }
        }

        fn deliver_to_gateway(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
            let mut out = vec![0u8; 2048];
            match self.gateway.handle_network_input(
                CLIENT_AT.parse().unwrap(),
                datagram,
                Instant::now(),
                &mut out,
            ) {
                Received::Packet { peer, packet } => {
                    assert_eq!(peer, self.client_key);
                    vec![packet.to_vec()]
                }
                Received::Handled { .. } => vec![],
                Received::Refused(why) => panic!("the gateway refused a datagram: {why:?}"),
            }
        }

        /// Carries queued control messages both ways until both sides are quiet.
        fn exchange(&mut self) -> Vec<Vec<u8>> {
            let mut delivered = Vec::new();
            for _ in 0..16 {
                let mut moved = false;
                while let Some(t) = self.client.poll_transmit() {
                    assert_eq!(t.to, GATEWAY_AT.parse().unwrap());
                    delivered.extend(self.deliver_to_gateway(&t.datagram));
                    moved = true;
                }
                while let Some(t) = self.gateway.poll_transmit() {
                    assert_eq!(t.to, CLIENT_AT.parse().unwrap());
                    let mut out = vec![0u8; 2048];
                    let received = self.client.handle_network_input(
                        GATEWAY_AT.parse().unwrap(),
                        &t.datagram,
                        Instant::now(),
                        &mut out,
                    );
                    assert!(
                        matches!(received, Received::Handled { .. }),
                        "the gateway's control message: {received:?}"
                    );
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            delivered
        }
    }

    fn payload_of(packet: &[u8]) -> &[u8] {
        &packet[28..]
    }

    #[test]
    fn two_tables_handshake_and_carry_packets_both_ways() {
        for psk in [None, Some(PresharedKey::from_bytes([9; 32]))] {
            let mut pair = Pair::new(psk);
            let delivered = pair.client_sends(b"first");
            assert_eq!(
                delivered.len(),
                1,
                "the packet that waited for the handshake"
            );
            assert_eq!(payload_of(&delivered[0]), b"first");
            for i in 0..50u32 {
                let sent = format!("up {i}");
                let delivered = pair.client_sends(sent.as_bytes());
                assert_eq!(
                    delivered.iter().map(|p| payload_of(p)).collect::<Vec<_>>(),
                    [sent.as_bytes()]
                );
                let reply = format!("down {i}");
                let back = pair.gateway_sends(reply.as_bytes()).expect("a reply");
                assert_eq!(payload_of(&back), reply.as_bytes());
            }
            let stats = pair.client.stats(&pair.gateway_key).unwrap();
            assert!(stats.since_handshake.is_some());
            assert!(stats.tx_bytes > 0 && stats.rx_bytes > 0);
        }
    }

    #[test]
    fn a_gateway_cannot_send_before_the_client_did_and_follows_its_endpoint() {
        let mut pair = Pair::new(None);
        let mut out = vec![0u8; 2048];
        assert!(pair
            .gateway
            .encapsulate(&pair.client_key, &packet(b"x"), pair.now, &mut out)
            .is_none());
        pair.client_sends(b"hello");
        assert_eq!(
            pair.gateway.stats(&pair.client_key).unwrap().endpoint,
            Some(CLIENT_AT.parse().unwrap())
        );
        // The client roams: its next authenticated datagram moves the endpoint.
        let roamed: SocketAddr = "203.0.113.9:41000".parse().unwrap();
        let datagram = seal(&mut pair.client, &pair.gateway_key, b"roam");
        let mut back = vec![0u8; 2048];
        assert!(matches!(
            pair.gateway
                .handle_network_input(roamed, &datagram, Instant::now(), &mut back),
            Received::Packet { .. }
        ));
        assert_eq!(
            pair.gateway.stats(&pair.client_key).unwrap().endpoint,
            Some(roamed)
        );
    }

    #[test]
    fn an_initiation_that_came_before_its_peer_is_answered_once_the_peer_is_added() {
        let gateway_secret = secret(2);
        let gateway_key = key_of(&gateway_secret);
        let client_key = key_of(&secret(1));
        let now = Instant::now();
        let stranger = |gateway: &mut PeerTable, client: &mut PeerTable| {
            let mut out = vec![0u8; 2048];
            let (_, init) = client
                .encapsulate(&gateway_key, &packet(b"first"), now, &mut out)
                .map(|(to, d)| (to, d.to_vec()))
                .expect("an initiation");
            let mut back = vec![0u8; 2048];
            assert!(matches!(
                gateway.handle_network_input(CLIENT_AT.parse().unwrap(), &init, now, &mut back),
                Received::Refused(Refused::UnknownPeer)
            ));
            assert!(gateway.poll_transmit().is_none(), "nothing for a stranger");
        };
        let config = PeerConfig {
            key: client_key,
            preshared_key: None,
            endpoint: None,
            keepalive: None,
        };

        let mut client = initiator(1, gateway_key);
        let mut gateway = PeerTable::new(gateway_secret.clone(), 20);
        stranger(&mut gateway, &mut client);
        gateway.upsert(config.clone(), now + Duration::from_secs(1));
        let response = gateway
            .poll_transmit()
            .expect("answered when the peer came");
        assert_eq!(response.to, CLIENT_AT.parse().unwrap());
        let mut back = vec![0u8; 2048];
        client.handle_network_input(
            GATEWAY_AT.parse().unwrap(),
            &response.datagram,
            now,
            &mut back,
        );
        let mut delivered = Vec::new();
        while let Some(t) = client.poll_transmit() {
            let mut plain = vec![0u8; 2048];
            if let Received::Packet { packet, .. } = gateway.handle_network_input(
                CLIENT_AT.parse().unwrap(),
                &t.datagram,
                now,
                &mut plain,
            ) {
                delivered.push(packet.to_vec());
            }
        }
        assert_eq!(
            delivered,
            vec![packet(b"first")],
            "the packet that waited arrives"
        );

        // Too old: the client retries on its own by then.
        let mut client = initiator(1, gateway_key);
        let mut gateway = PeerTable::new(gateway_secret, 20);
        stranger(&mut gateway, &mut client);
        gateway.upsert(
            config,
            now + EARLY_HANDSHAKE_LIFETIME + Duration::from_secs(1),
        );
        assert!(gateway.poll_transmit().is_none());
    }

    #[test]
    fn replays_junk_strangers_and_removed_peers_are_refused() {
        let mut pair = Pair::new(None);
        pair.client_sends(b"hello");
        let datagram = seal(&mut pair.client, &pair.gateway_key, b"once");
        assert_eq!(pair.deliver_to_gateway(&datagram).len(), 1);
        let mut back = vec![0u8; 2048];
        let from: SocketAddr = CLIENT_AT.parse().unwrap();
        assert_eq!(
            pair.gateway
                .handle_network_input(from, &datagram, Instant::now(), &mut back),
            Received::Refused(Refused::Rejected),
            "a replayed datagram"
        );
        assert_eq!(
            pair.gateway
                .handle_network_input(from, b"\x01junk", Instant::now(), &mut back),
            Received::Refused(Refused::NotForUs)
        );

        // A stranger's handshake for this gateway's key: well-formed, but no such peer.
        let mut stranger = initiator(3, pair.gateway_key);
        let init = seal(&mut stranger, &pair.gateway_key, b"let me in");
        assert_eq!(
            pair.gateway
                .handle_network_input(from, &init, Instant::now(), &mut back),
            Received::Refused(Refused::UnknownPeer)
        );
        assert!(
            pair.gateway.poll_transmit().is_none(),
            "nothing answers a stranger"
        );

        // Once removed, the client's datagrams are refused at once.
        assert!(pair.gateway.remove(&pair.client_key));
        let datagram = seal(&mut pair.client, &pair.gateway_key, b"after");
        assert_eq!(
            pair.gateway
                .handle_network_input(from, &datagram, Instant::now(), &mut back),
            Received::Refused(Refused::UnknownPeer)
        );
    }

    #[test]
    fn a_restarted_client_handshakes_again_and_the_gateway_moves_to_the_new_session() {
        let mut pair = Pair::new(None);
        pair.client_sends(b"before");
        pair.client = PeerTable::new(secret(1), 99);
        pair.configure_client();
        let delivered = pair.client_sends(b"after restart");
        assert_eq!(
            delivered.iter().map(|p| payload_of(p)).collect::<Vec<_>>(),
            [b"after restart"]
        );
        let back = pair
            .gateway_sends(b"reply")
            .expect("the gateway answers on the new session");
        assert_eq!(payload_of(&back), b"reply");
    }

    #[test]
    fn a_new_preshared_key_replaces_the_session_and_the_old_key_no_longer_works() {
        let mut pair = Pair::new(Some(PresharedKey::from_bytes([4; 32])));
        pair.client_sends(b"old key");
        pair.psk = Some(PresharedKey::from_bytes([5; 32]));
        assert_eq!(
            pair.gateway.upsert(
                PeerConfig {
                    key: pair.client_key,
                    preshared_key: pair.psk.clone(),
                    endpoint: None,
                    keepalive: None,
                },
                Instant::now()
            ),
            Upserted::Replaced
        );
        assert_eq!(
            pair.gateway.stats(&pair.client_key).unwrap().endpoint,
            Some(CLIENT_AT.parse().unwrap()),
            "the endpoint survives a new session"
        );
        let datagram = seal(&mut pair.client, &pair.gateway_key, b"stale");
        let mut back = vec![0u8; 2048];
        assert_eq!(
            pair.gateway.handle_network_input(
                CLIENT_AT.parse().unwrap(),
                &datagram,
                Instant::now(),
                &mut back
            ),
            Received::Refused(Refused::UnknownPeer),
            "the old session's index is gone"
        );
        assert_eq!(pair.configure_client(), Upserted::Replaced);
        let delivered = pair.client_sends(b"new key");
        assert_eq!(
            delivered.iter().map(|p| payload_of(p)).collect::<Vec<_>>(),
            [b"new key"]
        );
        assert_eq!(pair.configure_client(), Upserted::Unchanged);
    }

    #[test]
    fn a_handshake_flood_past_the_budget_gets_cookies() {
        let mut pair = Pair::new(None);
        pair.gateway.handle_timeout(pair.now);
        let mut out = vec![0u8; 2048];
        let mut initiator = initiator(1, pair.gateway_key);
        let init = seal(&mut initiator, &pair.gateway_key, b"x");
        let from: SocketAddr = "203.0.113.50:1000".parse().unwrap();
        let mut under_load = 0;
        for _ in 0..(HANDSHAKES_PER_SECOND * 2) {
            if pair
                .gateway
                .handle_network_input(from, &init, Instant::now(), &mut out)
                == Received::Refused(Refused::UnderLoad)
            {
                under_load += 1;
            }
        }
        assert_eq!(under_load, HANDSHAKES_PER_SECOND);
        let cookies: Vec<Transmit> = std::iter::from_fn(|| pair.gateway.poll_transmit())
            .filter(|t| t.to == from && t.datagram.len() == 64)
            .collect();
        // One cookie reply for each refused initiation, and more from the peer's own session,
        // which boringtun limits to 10 handshakes a second on its own.
        assert!(
            cookies.len() as u64 >= HANDSHAKES_PER_SECOND,
            "{}",
            cookies.len()
        );
    }

    #[test]
    fn timers_run_on_their_schedule() {
        let mut pair = Pair::new(None);
        pair.client_sends(b"up");
        pair.client.handle_timeout(pair.now);
        let next = pair.client.poll_timeout();
        assert!(next > pair.now && next <= pair.now + TIMER_INTERVAL);
        pair.client
            .handle_timeout(pair.now + Duration::from_millis(10));
        assert_eq!(
            pair.client.poll_timeout(),
            next,
            "not due yet: nothing moves"
        );
    }

    proptest! {
        /// Datagrams delivered in any order within WireGuard's replay window arrive once each;
        /// the copies of a duplicated delivery are refused.
        #[test]
        fn reordered_and_duplicated_datagrams_arrive_exactly_once(
            order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(),
            duplicates in proptest::collection::vec(0..40usize, 0..10),
            sizes in proptest::collection::vec(0..1200usize, 40),
        ) {
            let mut pair = Pair::new(None);
            pair.client_sends(b"open");
            let datagrams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    let mut payload = vec![(i % 251) as u8; *size];
                    payload.extend_from_slice(&(i as u32).to_be_bytes());
                    seal(&mut pair.client, &pair.gateway_key, &payload)
                })
                .collect();
            let from: SocketAddr = CLIENT_AT.parse().unwrap();
            let mut seen = Vec::new();
            let mut refused = 0;
            for i in order.iter().copied().chain(duplicates.iter().copied()) {
                let mut back = vec![0u8; 2048];
                match pair.gateway.handle_network_input(from, &datagrams[i], Instant::now(), &mut back) {
                    Received::Packet { packet, .. } => {
                        let tail = &packet[packet.len() - 4..];
                        seen.push(u32::from_be_bytes(tail.try_into().unwrap()) as usize);
                    }
                    Received::Refused(Refused::Rejected) => refused += 1,
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..40).collect::<Vec<_>>());
            prop_assert_eq!(refused, duplicates.len());
        }
    }
}
