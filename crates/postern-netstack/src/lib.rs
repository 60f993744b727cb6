//! The rootless client's TCP/IP stack: TCP connections through the tunnel without a TUN device
//! or any privilege. A smoltcp [`Interface`] holds the client's tunnel addresses; what it sends
//! goes to the data plane as plain IP packets (which routes and encrypts them as it would a
//! TUN's), and what the data plane decrypts comes back to it.
//!
//! smoltcp is the core (sans-IO: a device of packet queues, `poll` at an instant). This crate
//! is its shell: one task ([`NetStack::run`]) moves packets between the queues and the data
//! plane's channels and polls at smoltcp's deadlines; each [`TcpConnection`] is an
//! `AsyncRead + AsyncWrite` over one smoltcp socket, woken by smoltcp's socket wakers.
//!
//! Why smoltcp: the user-space TCP/IP stack of the Rust ecosystem (embassy-net, the
//! Firezone and Mullvad clients' DNS-over-tunnel paths, shadowsocks' and tun2proxy's user-space
//! modes build on it), `no_std`-grade careful with memory (every buffer is given to it, nothing
//! grows), with window scaling, SACK-free but fast retransmit, and a sans-IO design that fits
//! ours. The alternatives (lwIP through C bindings, gVisor's netstack in Go) would bring a C
//! toolchain or a second runtime.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

/// Datagrams buffered each way per UDP socket, and their bytes.
const UDP_DATAGRAMS: usize = 256;
const UDP_BYTES: usize = 256 * 1024;

/// Receive buffer (the window offered) of each connection.
pub const RECEIVE_BUFFER: usize = 256 * 1024;
/// Send buffer of each connection.
pub const SEND_BUFFER: usize = 256 * 1024;
/// Connections open at once (each holds its buffers: a bound on memory).
pub const MAX_CONNECTIONS: usize = 1024;
/// Packets queued toward the stack or the tunnel before more are dropped (as a NIC would).
pub const QUEUE: usize = 4096;
/// A connection whose peer stays silent this long (keepalives unanswered) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Ephemeral ports, as Linux's default range.
const FIRST_PORT: u16 = 32_768;
const LAST_PORT: u16 = 60_999;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConnectError {
    #[error("the client has no tunnel addresses yet")]
    NoAddresses,
    #[error("too many proxied connections are open (at most {MAX_CONNECTIONS})")]
    TooMany,
    #[error("the connection was refused or reset by {0}")]
    Refused(SocketAddr),
    #[error("{0} did not answer in time")]
    TimedOut(SocketAddr),
    #[error("{0} cannot be reached from the tunnel addresses")]
    Unaddressable(SocketAddr),
}

/// The data plane's end of the stack: packets the stack sends (to route and encrypt), and the
/// way back for packets out of the tunnel.
pub struct PacketPipe {
    pub outbound: mpsc::Receiver<Vec<u8>>,
    pub inbound: mpsc::Sender<Vec<u8>>,
}

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub open: AtomicUsize,
    pub opened: AtomicU64,
    pub dropped_packets: AtomicU64,
}

/// The stack. Cheap to clone: every clone is the same stack.
#[derive(Clone)]
pub struct NetStack {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Something changed for the poll task (data to send, a window to open, a new socket).
    poll: Notify,
    stats: Stats,
}

struct Inner {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Queues,
    addresses: Option<(Ipv4Addr, Ipv6Addr)>,
    next_port: u16,
    /// Sockets whose connection was dropped: removed once closed.
    closing: Vec<SocketHandle>,
}

/// smoltcp's device: the packets waiting for it and those it sent.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl NetStack {
    /// A stack for packets of at most `mtu` bytes, and the data plane's end of it. Run it with
    /// [`NetStack::run`]; it has addresses once [`NetStack::set_addresses`] gave them.
    pub fn new(mtu: u16, seed: u64) -> (Self, PacketPipe, StackPipe) {
        let mut device = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: usize::from(mtu),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let iface = Interface::new(config, &mut device, now());
        let (outbound_tx, outbound_rx) = mpsc::channel(QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(QUEUE);
        let stack = NetStack {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    iface,
                    sockets: SocketSet::new(Vec::new()),
                    device,
                    addresses: None,
                    next_port: FIRST_PORT
                        + u16::try_from(seed % u64::from(LAST_PORT - FIRST_PORT)).unwrap_or(0),
                    closing: Vec::new(),
                }),
                poll: Notify::new(),
                stats: Stats::default(),
            }),
        };
        (
            stack,
            PacketPipe {
                outbound: outbound_rx,
                inbound: inbound_tx,
            },
            StackPipe {
                outbound: outbound_tx,
                inbound: inbound_rx,
            },
        )
    }

    /// The client's tunnel addresses: the stack's own (connections made before keep theirs).
    pub fn set_addresses(&self, ipv4: Ipv4Addr, ipv6: Ipv6Addr) {
        let mut inner = self.shared.inner.lock();
        if inner.addresses == Some((ipv4, ipv6)) {
            return;
        }
        inner.addresses = Some((ipv4, ipv6));
        inner.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ipv4), 32));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ipv6), 128));
        });
        // Every destination is reached the same way: out of the one "link", the tunnel.
        let routes = inner.iface.routes_mut();
        let _ = routes.add_default_ipv4_route(ipv4);
        let _ = routes.add_default_ipv6_route(ipv6);
        drop(inner);
        self.shared.poll.notify_one();
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Opens a TCP connection to `remote` from the client's tunnel address of its family.
    pub async fn connect(&self, remote: SocketAddr) -> Result<TcpConnection, ConnectError> {
        let handle = {
            let mut inner = self.shared.inner.lock();
            let (local, port) = self.local_endpoint(&mut inner, remote)?;
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RECEIVE_BUFFER]),
                tcp::SocketBuffer::new(vec![0; SEND_BUFFER]),
            );
            socket.set_timeout(Some(IDLE_TIMEOUT.into()));
            socket.set_keep_alive(Some(KEEPALIVE.into()));
            socket.set_nagle_enabled(false);
            let inner = &mut *inner;
            socket
                .connect(inner.iface.context(), endpoint(remote), (local, port))
                .map_err(|_| ConnectError::Unaddressable(remote))?;
            inner.sockets.add(socket)
        };
        self.shared.stats.open.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        self.shared.poll.notify_one();
        let connection = TcpConnection {
            shared: self.shared.clone(),
            handle,
            remote,
            shut_down: false,
        };
        poll_fn(|cx| connection.poll_established(cx)).await?;
        Ok(connection)
    }

    /// A UDP socket on an ephemeral port of the client's tunnel address of `remote`'s family,
    /// for datagrams to and from `remote`.
    pub fn udp(&self, remote: SocketAddr) -> Result<UdpSocket, ConnectError> {
        let mut inner = self.shared.inner.lock();
        let (local, port) = self.local_endpoint(&mut inner, remote)?;
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_DATAGRAMS],
                vec![0; UDP_BYTES],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket
            .bind((local, port))
            .map_err(|_| ConnectError::Unaddressable(remote))?;
        let handle = inner.sockets.add(socket);
        drop(inner);
        self.shared.stats.open.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(UdpSocket {
            shared: self.shared.clone(),
            handle,
            remote,
        })
    }

    /// The local end of a new socket toward `remote`: the tunnel address of its family and the
    /// next ephemeral port; refused before the addresses are known, or past the bound.
    fn local_endpoint(
        &self,
        inner: &mut Inner,
        remote: SocketAddr,
    ) -> Result<(IpAddress, u16), ConnectError> {
        let Some((ipv4, ipv6)) = inner.addresses else {
            return Err(ConnectError::NoAddresses);
        };
        if self.shared.stats.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            return Err(ConnectError::TooMany);
        }
        let local = match remote.ip() {
            IpAddr::V4(_) => IpAddress::Ipv4(ipv4),
            IpAddr::V6(_) => IpAddress::Ipv6(ipv6),
        };
        let port = inner.next_port;
        inner.next_port = if port >= LAST_PORT {
            FIRST_PORT
        } else {
            port + 1
        };
        Ok((local, port))
    }

    /// Moves packets between smoltcp and the data plane until the data plane's end is gone.
    pub async fn run(self, mut pipe: StackPipe) {
        let mut outgoing = Vec::new();
        loop {
            let delay = {
                let mut inner = self.shared.inner.lock();
                let inner = &mut *inner;
                let at = now();
                inner.iface.poll(at, &mut inner.device, &mut inner.sockets);
                collect_closed(inner, &self.shared.stats);
                outgoing.extend(inner.device.tx.drain(..));
                inner
                    .iface
                    .poll_delay(at, &inner.sockets)
                    .map(Duration::from)
            };
            for packet in outgoing.drain(..) {
                if pipe.outbound.try_send(packet).is_err() {
                    self.shared
                        .stats
                        .dropped_packets
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            // A deadline of zero means there is more to send at once.
            if delay == Some(Duration::ZERO) {
                tokio::task::yield_now().await;
                continue;
            }
            let sleep = tokio::time::sleep(delay.unwrap_or(Duration::from_secs(60)));
            tokio::select! {
                packet = pipe.inbound.recv() => {
                    let Some(packet) = packet else { break };
                    let mut inner = self.shared.inner.lock();
                    inner.device.push_rx(packet, &self.shared.stats);
                    while let Ok(packet) = pipe.inbound.try_recv() {
                        inner.device.push_rx(packet, &self.shared.stats);
                    }
                }
                () = self.shared.poll.notified() => {}
                () = sleep => {}
            }
        }
        debug!("user-space network stack stopped");
    }
}

/// The stack's end of the channels to the data plane (given to [`NetStack::run`]).
pub struct StackPipe {
    outbound: mpsc::Sender<Vec<u8>>,
    inbound: mpsc::Receiver<Vec<u8>>,
}

fn collect_closed(inner: &mut Inner, stats: &Stats) {
    let sockets = &mut inner.sockets;
    inner.closing.retain(|handle| {
        let state = sockets.get_mut::<tcp::Socket>(*handle).state();
        let done = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
        if done {
            sockets.remove(*handle);
            stats.open.fetch_sub(1, Ordering::Relaxed);
        }
        !done
    });
}

fn now() -> SmolInstant {
    SmolInstant::now()
}

fn endpoint(address: SocketAddr) -> IpEndpoint {
    let ip = match address.ip() {
        IpAddr::V4(v4) => IpAddress::Ipv4(v4),
        IpAddr::V6(v6) => IpAddress::Ipv6(v6),
    };
    IpEndpoint::new(ip, address.port())
}

impl Queues {
    fn push_rx(&mut self, packet: Vec<u8>, stats: &Stats) {
        if self.rx.len() >= QUEUE {
            stats.dropped_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.rx.push_back(packet);
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _at: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _at: SmolInstant) -> Option<Tx<'_>> {
        (self.tx.len() < QUEUE).then_some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ip;
        capabilities.max_transmission_unit = self.mtu;
        capabilities
    }
}

struct Rx(Vec<u8>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

/// One TCP connection through the tunnel.
pub struct TcpConnection {
    shared: Arc<Shared>,
    handle: SocketHandle,
    remote: SocketAddr,
    shut_down: bool,
}

impl TcpConnection {
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Resolves once the handshake completed, or with why it did not.
    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        let mut inner = self.shared.inner.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                socket.register_send_waker(cx.waker());
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            tcp::State::Closed => {
                // smoltcp gives up after its retransmissions: a timeout if nothing answered.
                Poll::Ready(Err(ConnectError::Refused(self.remote)))
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Ends the connection at once with a reset (a withdrawn grant, a refused proxy client).
    pub fn abort(&mut self) {
        let mut inner = self.shared.inner.lock();
        inner.sockets.get_mut::<tcp::Socket>(self.handle).abort();
        self.shut_down = true;
        drop(inner);
        self.shared.poll.notify_one();
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = this.shared.inner.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(this.handle);
        if socket.can_recv() {
            let result = socket.recv_slice(buf.initialize_unfilled());
            drop(inner);
            return match result {
                Ok(read) => {
                    buf.advance(read);
                    // The window opened: the peer may send more.
                    this.shared.poll.notify_one();
                    Poll::Ready(Ok(()))
                }
                Err(tcp::RecvError::Finished) => Poll::Ready(Ok(())),
                Err(tcp::RecvError::InvalidState) => Poll::Ready(Err(reset())),
            };
        }
        if !socket.may_recv() {
            // The peer closed its side (end of stream), or the connection is gone.
            return match socket.state() {
                tcp::State::Closed if !this.shut_down => Poll::Ready(Err(reset())),
                _ => Poll::Ready(Ok(())),
            };
        }
        socket.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut inner = this.shared.inner.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(this.handle);
        if !socket.may_send() {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
        }
        if !socket.can_send() {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        let result = socket.send_slice(data);
        drop(inner);
        match result {
            Ok(written) => {
                this.shared.poll.notify_one();
                Poll::Ready(Ok(written))
            }
            Err(_) => Poll::Ready(Err(reset())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN once what was written has gone.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inner = this.shared.inner.lock();
        inner.sockets.get_mut::<tcp::Socket>(this.handle).close();
        this.shut_down = true;
        drop(inner);
        this.shared.poll.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpConnection {
    /// A connection dropped without its FIN (an error, a cancelled copy) ends with a reset;
    /// either way its socket goes once closed.
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock();
        let socket = inner.sockets.get_mut::<tcp::Socket>(self.handle);
        if !self.shut_down {
            socket.abort();
        }
        inner.closing.push(self.handle);
        drop(inner);
        self.shared.poll.notify_one();
    }
}

/// UDP datagrams to and from one remote endpoint through the tunnel.
pub struct UdpSocket {
    shared: Arc<Shared>,
    handle: SocketHandle,
    remote: SocketAddr,
}

impl UdpSocket {
    /// Sends one datagram to the remote endpoint (waits while the send buffer is full).
    pub async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        poll_fn(|cx| {
            let mut inner = self.shared.inner.lock();
            let socket = inner.sockets.get_mut::<udp::Socket>(self.handle);
            if !socket.can_send() {
                socket.register_send_waker(cx.waker());
                return Poll::Pending;
            }
            let sent = socket
                .send_slice(datagram, endpoint(self.remote))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
            drop(inner);
            self.shared.poll.notify_one();
            Poll::Ready(sent)
        })
        .await
    }

    /// The next datagram from the remote endpoint (others are dropped), into `buffer`.
    pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let remote = endpoint(self.remote);
        poll_fn(|cx| {
            let mut inner = self.shared.inner.lock();
            let socket = inner.sockets.get_mut::<udp::Socket>(self.handle);
            while socket.can_recv() {
                match socket.recv_slice(buffer) {
                    Ok((len, meta)) if meta.endpoint == remote => return Poll::Ready(Ok(len)),
                    Ok(_) | Err(_) => continue,
                }
            }
            socket.register_recv_waker(cx.waker());
            Poll::Pending
        })
        .await
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock();
        inner.sockets.remove(self.handle);
        self.shared.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}
