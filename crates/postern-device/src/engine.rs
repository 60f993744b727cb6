//! The one data-plane event loop of client and gateway: a thread of its own owns the TUN
//! device, the UDP socket and the [`PeerTable`], and moves packets between them. What differs
//! between the two is a [`Forwarding`]: which peer a packet from the TUN goes to, whether a
//! packet out of a tunnel may reach the TUN, and how control-plane changes become peers and
//! routes.
//!
//! Each wake-up drains a burst from one source (up to [`BATCH`] reads; each is one system call)
//! and then flushes what it produced: encrypted datagrams as one GSO batch per destination,
//! decrypted packets as one TUN write (with GRO). A lone packet is flushed at once; nothing
//! waits for a batch to fill.

use std::future::Future;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use postern_dataplane::peers::{dual_stack_address, PeerTable, Received, Refused, OVERHEAD};
use postern_dataplane::WireGuardKey;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::net::{self, DataPlaneRuntime, PacketPort, TunReader, TunWriter, UdpBatch};

/// Reads from one source before the others are polled again.
pub const BATCH: usize = 64;
const BUFFER: usize = 65_536 + OVERHEAD;
/// One receive buffer: with UDP GRO the kernel hands over up to 64 KiB of same-sized
/// datagrams from one sender in it.
const RECEIVE_BUFFER: usize = 65_536;

/// Where control-plane changes come from; `None` ends the engine.
pub trait Changes: Send {
    type Change: Send;
    fn next(&mut self) -> impl Future<Output = Option<Self::Change>> + Send;
}

/// What a client or a gateway does with packets.
pub trait Forwarding: Send {
    type Change: Send;

    /// Brings peers and routes in line with a control-plane change (packets it releases
    /// come out of [`Forwarding::poll_emit`]).
    fn apply(
        &mut self,
        change: Self::Change,
        peers: &mut PeerTable,
    ) -> impl Future<Output = ()> + Send;

    /// The peer a packet from the TUN goes to; `None` holds or drops it.
    fn outbound(&mut self, packet: &[u8]) -> Option<WireGuardKey>;

    /// Whether a packet out of `peer`'s tunnel may reach the TUN now (a packet it keeps or
    /// answers itself comes out of [`Forwarding::poll_emit`] later, or not at all).
    fn inbound(&mut self, peer: &WireGuardKey, packet: &[u8]) -> bool;

    /// A packet the forwarding released or made itself; called after every input until `None`.
    fn poll_emit(&mut self) -> Option<Emit> {
        None
    }

    /// A datagram the peer table refused.
    fn refused(&mut self, _why: Refused, _from: SocketAddr) {}

    /// Sending to `to` failed; `len` is the datagram size (for MTU messages).
    fn send_failed(&mut self, to: SocketAddr, len: usize, err: &std::io::Error) {
        debug!(%to, len, "sending a datagram failed: {err}");
    }

    /// Called after the peer table's timers: warnings, counters, expiry.
    fn tick(&mut self, _peers: &PeerTable, _now: Instant) {}

    /// Undoes what `apply` set up outside the process (routes).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// A packet a [`Forwarding`] hands to the engine on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Into the TUN (a packet that waited).
    Tun(Vec<u8>),
    /// Through a peer's tunnel (a packet that waited for a grant, an ICMP error).
    Peer(WireGuardKey, Vec<u8>),
}

/// The devices of one data plane, created on its thread.
pub struct Engine {
    runtime: DataPlaneRuntime,
    /// The TUN device, or the rootless client's stack in this process.
    port: PacketPort,
    tun_name: String,
    mtu: u16,
    udp: UdpSocket,
    /// Batched receive (`recvmmsg`) and UDP GRO, through quinn-udp.
    udp_state: Option<UdpSocketState>,
    /// The socket is dual-stack: IPv4 destinations are written as mapped addresses.
    dual_stack: bool,
    peers: PeerTable,
}

impl Engine {
    /// Create `tun` and `udp` inside [`DataPlaneRuntime::enter`] of `runtime`, so that they
    /// wake its thread.
    pub fn new(
        runtime: DataPlaneRuntime,
        port: PacketPort,
        tun_name: &str,
        mtu: u16,
        udp: UdpSocket,
        dual_stack: bool,
        private: StaticSecret,
    ) -> Self {
        net::grow_socket_buffers(&udp, net::UDP_BUFFER);
        let udp_state = match UdpSocketState::new(UdpSockRef::from(&udp)) {
            Ok(state) => Some(state),
            Err(err) => {
                warn!(
                    "batched UDP receive is not available, reading one datagram at a time: {err}"
                );
                None
            }
        };
        Self {
            runtime,
            port,
            tun_name: tun_name.to_string(),
            mtu,
            udp,
            udp_state,
            dual_stack,
            peers: PeerTable::new(private, rand::random()),
        }
    }

    pub fn udp_address(&self) -> Option<SocketAddr> {
        self.udp.local_addr().ok()
    }

    /// Runs the data plane on its own thread until `changes` ends.
    pub async fn run<F, C>(self, forwarding: F, changes: C)
    where
        F: Forwarding + 'static,
        C: Changes<Change = F::Change> + 'static,
    {
        let handle = self.runtime.handle().clone();
        let _ = handle.spawn(self.run_here(forwarding, changes)).await;
    }

    async fn run_here<F, C>(mut self, mut forwarding: F, mut changes: C)
    where
        F: Forwarding,
        C: Changes<Change = F::Change>,
    {
        let mut io = Io {
            tun_out: TunWriter::default(),
            udp_out: UdpBatch::default(),
            crypt: vec![0; BUFFER],
        };
        let mut tun_in = TunReader::new(self.mtu);
        let mut udp_in = UdpReceive::new(self.udp_state.as_ref());
        debug!(tun = %self.tun_name, mtu = self.mtu, "data plane running");
        // One timer entry, moved only when the deadline does: not one made and dropped per wake-up.
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.peers.poll_timeout()));
        tokio::pin!(timer);
        loop {
            let deadline = tokio::time::Instant::from_std(self.peers.poll_timeout());
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                read = tun_in.recv(&mut self.port) => match read {
                    Ok(count) => {
                        let now = Instant::now();
                        for i in 0..count {
                            self.on_tun(&mut forwarding, tun_in.packet(i), now, &mut io).await;
                        }
                        for _ in 1..BATCH {
                            let Ok(count) = tun_in.try_recv(&mut self.port) else { break };
                            for i in 0..count {
                                self.on_tun(&mut forwarding, tun_in.packet(i), now, &mut io).await;
                            }
                        }
                        self.emit(&mut forwarding, &mut io).await;
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
                ready = self.udp.readable() => {
                    if let Err(err) = ready {
                        debug!("UDP receive error: {err}");
                        continue;
                    }
                    let now = Instant::now();
                    for _ in 0..BATCH {
                        let Some(count) = udp_in.recv(&self.udp, self.udp_state.as_ref()) else { break };
                        for i in 0..count {
                            let (from, len, stride) = udp_in.message(i);
                            for offset in (0..len).step_by(stride.max(1)) {
                                let end = (offset + stride).min(len);
                                let Some(datagram) = udp_in.data(i, offset..end) else { continue };
                                self.on_udp(&mut forwarding, datagram, from, now, &mut io).await;
                            }
                        }
                    }
                    self.emit(&mut forwarding, &mut io).await;
                }
                () = &mut timer => {
                    let now = Instant::now();
                    self.peers.handle_timeout(now);
                    forwarding.tick(&self.peers, now);
                    self.emit(&mut forwarding, &mut io).await;
                }
                change = changes.next() => {
                    let Some(change) = change else { break };
                    forwarding.apply(change, &mut self.peers).await;
                    self.emit(&mut forwarding, &mut io).await;
                }
            }
        }
        forwarding.shutdown().await;
    }

    async fn on_tun<F: Forwarding>(
        &mut self,
        forwarding: &mut F,
        packet: &[u8],
        now: Instant,
        io: &mut Io,
    ) {
        if let Some(key) = forwarding.outbound(packet) {
            self.send_to_peer(forwarding, &key, packet, now, io).await;
        }
    }

    async fn send_to_peer<F: Forwarding>(
        &mut self,
        forwarding: &mut F,
        key: &WireGuardKey,
        packet: &[u8],
        now: Instant,
        io: &mut Io,
    ) {
        let Some((to, datagram)) = self.peers.encapsulate(key, packet, now, &mut io.crypt) else {
            return;
        };
        let to = self.socket_address(to);
        if !io.udp_out.fits(to, datagram.len()) {
            let queued_to = io.udp_out.destination();
            if let Err((err, len)) = net::send_batch(&self.udp, &mut io.udp_out).await {
                if let Some(queued_to) = queued_to {
                    forwarding.send_failed(canonical(queued_to), len, &err);
                }
            }
        }
        io.udp_out.push(to, datagram);
    }

    async fn on_udp<F: Forwarding>(
        &mut self,
        forwarding: &mut F,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        io: &mut Io,
    ) {
        match self
            .peers
            .handle_network_input(from, datagram, now, &mut io.crypt)
        {
            Received::Packet { peer, packet } => {
                if forwarding.inbound(&peer, packet) && io.tun_out.push(packet) {
                    if let Err(err) = io.tun_out.flush(&mut self.port).await {
                        debug!("writing to the TUN device failed: {err}");
                    }
                }
            }
            Received::Handled { .. } => {}
            Received::Refused(why) => forwarding.refused(why, from),
        }
    }

    /// Sends what the forwarding released or made, then flushes both directions and the peer
    /// table's own messages.
    async fn emit<F: Forwarding>(&mut self, forwarding: &mut F, io: &mut Io) {
        let now = Instant::now();
        while let Some(emit) = forwarding.poll_emit() {
            match emit {
                Emit::Tun(packet) => {
                    if io.tun_out.push(&packet) {
                        self.flush_tun(io).await;
                    }
                }
                Emit::Peer(key, packet) => {
                    self.send_to_peer(forwarding, &key, &packet, now, io).await;
                }
            }
        }
        self.flush_tun(io).await;
        self.flush_udp(forwarding, io).await;
        self.send_transmits(forwarding).await;
    }

    async fn flush_udp<F: Forwarding>(&mut self, forwarding: &mut F, io: &mut Io) {
        let to = io.udp_out.destination();
        if let Err((err, len)) = net::send_batch(&self.udp, &mut io.udp_out).await {
            if let Some(to) = to {
                forwarding.send_failed(canonical(to), len, &err);
            }
        }
    }

    async fn flush_tun(&mut self, io: &mut Io) {
        if let Err(err) = io.tun_out.flush(&mut self.port).await {
            debug!("writing to the TUN device failed: {err}");
        }
    }

    /// Sends the peer table's control messages (handshakes, keepalives, cookie replies and
    /// the packets that waited for a handshake).
    async fn send_transmits<F: Forwarding>(&mut self, forwarding: &mut F) {
        while let Some(transmit) = self.peers.poll_transmit() {
            let to = self.socket_address(transmit.to);
            if let Err(err) = self.udp.send_to(&transmit.datagram, to).await {
                forwarding.send_failed(transmit.to, transmit.datagram.len(), &err);
            }
        }
    }

    fn socket_address(&self, to: SocketAddr) -> SocketAddr {
        if self.dual_stack {
            dual_stack_address(to)
        } else {
            to
        }
    }
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The engine's buffers, apart from `Engine` so that a packet borrowed from one can be handed
/// to a method of the other.
struct Io {
    tun_out: TunWriter,
    udp_out: UdpBatch,
    crypt: Vec<u8>,
}

/// Buffers for one batched receive: several messages per system call, each holding one
/// datagram, or with GRO several of the same size (`stride`).
struct UdpReceive {
    buffers: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl UdpReceive {
    fn new(state: Option<&UdpSocketState>) -> Self {
        let messages = if state.is_some() {
            quinn_udp::BATCH_SIZE
        } else {
            1
        };
        Self {
            buffers: (0..messages).map(|_| vec![0; RECEIVE_BUFFER]).collect(),
            meta: (0..messages).map(|_| RecvMeta::default()).collect(),
        }
    }

    /// One receive without waiting; `None` when nothing is queued (or on an error, logged).
    fn recv(&mut self, udp: &UdpSocket, state: Option<&UdpSocketState>) -> Option<usize> {
        let result = match state {
            Some(state) => {
                let mut slices: Vec<IoSliceMut<'_>> = self
                    .buffers
                    .iter_mut()
                    .map(|b| IoSliceMut::new(b))
                    .collect();
                udp.try_io(Interest::READABLE, || {
                    state.recv(UdpSockRef::from(udp), &mut slices, &mut self.meta)
                })
            }
            None => {
                let buffer = self.buffers.first_mut()?;
                udp.try_recv_from(buffer).map(|(len, addr)| {
                    if let Some(meta) = self.meta.first_mut() {
                        meta.addr = addr;
                        meta.len = len;
                        meta.stride = len;
                    }
                    1
                })
            }
        };
        match result {
            Ok(count) => Some(count),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(err) => {
                debug!("UDP receive error: {err}");
                None
            }
        }
    }

    /// Sender, length and segment size of message `i` of the last receive.
    fn message(&self, i: usize) -> (SocketAddr, usize, usize) {
        self.meta
            .get(i)
            .map_or((SocketAddr::from(([0, 0, 0, 0], 0)), 0, 0), |m| {
                (m.addr, m.len, m.stride)
            })
    }

    fn data(&self, i: usize, range: std::ops::Range<usize>) -> Option<&[u8]> {
        self.buffers.get(i)?.get(range)
    }
}
