//! The stub resolver on the network: UDP and TCP on port 53 of the resolver's addresses
//! (198.18.0.53 and fd70:6f73:7465:726f::53, set on the TUN, so the kernel delivers queries
//! locally). Each query goes through [`postern_dns::StubResolver`]: a name a reachable DNS
//! resource covers is answered with its proxy addresses, anything else is forwarded as it is
//! to the upstream resolvers the system had before (UDP over UDP, TCP over TCP, EDNS and all),
//! and their answer goes back unchanged.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use postern_dns::{StubResolver, Verdict};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// The resolver shared by the DNS server (which gives out proxy addresses) and the data
/// plane (which routes packets to them): a name is known before its answer leaves.
pub type SharedResolver = Arc<RwLock<StubResolver>>;

/// How long one upstream resolver has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; more are answered SERVFAIL.
const MAX_FORWARDS: usize = 512;
/// TCP connections served at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection with no query for this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_MESSAGE: usize = 65_535;

/// What the DNS side of the client shows in its status, shared with the role.
#[derive(Debug, Default)]
pub struct DnsState {
    pub resolver: SharedResolver,
    pub info: Mutex<DnsInfo>,
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    /// Something shown in the status changed since the status was last written.
    pub dirty: AtomicBool,
    /// Some name is marked unresolvable (checked on the packet path before the lock).
    pub any_unresolvable: AtomicBool,
}

/// How the system's DNS is pointed at the stub resolver, and where everything else goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsInfo {
    /// `systemd-resolved`, `resolv-conf` or `disabled`.
    pub mode: String,
    /// Where the stub resolver listens.
    pub listen: Vec<SocketAddr>,
    /// Where queries for other names go.
    pub upstreams: Vec<SocketAddr>,
    /// Routing domains given to systemd-resolved (split DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Names a gateway said it cannot resolve, `NAME` for IPv4 and `NAME (IPv6)` for IPv6
    /// (→ the gateway's word).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unresolvable: BTreeMap<String, String>,
}

/// At most this many unresolvable names are remembered for the status.
const MAX_UNRESOLVABLE_SHOWN: usize = 64;

impl DnsState {
    /// A gateway answered a packet to `name`'s proxy address of one family with "host
    /// unreachable": the name has no address of that family there (or none at all).
    pub fn note_unresolvable(&self, name: &str, ipv6: bool, gateway: &str) {
        let key = unresolvable_key(name, ipv6);
        let mut info = self.info.lock();
        if info.unresolvable.contains_key(&key) {
            return;
        }
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        info!("{name} has no {family} address at gateway {gateway}: connections to it over {family} fail");
        if info.unresolvable.len() >= MAX_UNRESOLVABLE_SHOWN {
            if let Some(first) = info.unresolvable.keys().next().cloned() {
                info.unresolvable.remove(&first);
            }
        }
        info.unresolvable
            .insert(key, format!("no {family} address at gateway {gateway}"));
        self.any_unresolvable.store(true, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A packet came back from `name`'s proxy address of one family: it resolves there now.
    pub fn note_resolvable(&self, name: &str, ipv6: bool) {
        let mut info = self.info.lock();
        if info
            .unresolvable
            .remove(&unresolvable_key(name, ipv6))
            .is_some()
        {
            info!("{name} resolves at its gateway again");
            self.any_unresolvable
                .store(!info.unresolvable.is_empty(), Ordering::Relaxed);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// `name` for IPv4, `name (IPv6)` for IPv6: the keys of [`DnsInfo::unresolvable`].
fn unresolvable_key(name: &str, ipv6: bool) -> String {
    if ipv6 {
        format!("{name} (IPv6)")
    } else {
        name.to_string()
    }
}

/// The stub resolver's sockets.
pub struct Listeners {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP port `port` on each address; an address that cannot be bound is
    /// skipped with a warning (IPv6 may be off), none at all is an error.
    pub async fn bind(addresses: &[IpAddr], port: u16) -> Result<Self, String> {
        let mut listeners = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        let mut errors = Vec::new();
        for address in addresses {
            let at = SocketAddr::new(*address, port);
            let bound = async {
                let udp = UdpSocket::bind(at).await?;
                let tcp = TcpListener::bind(at).await?;
                std::io::Result::Ok((udp, tcp))
            };
            match bound.await {
                Ok((udp, tcp)) => {
                    listeners.udp.push(Arc::new(udp));
                    listeners.tcp.push(tcp);
                }
                Err(err) => {
                    warn!("the DNS resolver cannot listen on {at}: {err}");
                    errors.push(format!("{at}: {err}"));
                }
            }
        }
        if listeners.udp.is_empty() {
            return Err(format!(
                "the DNS resolver cannot listen anywhere ({})",
                errors.join("; ")
            ));
        }
        Ok(listeners)
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect()
    }
}

/// Serves queries until the task is dropped.
pub async fn serve(listeners: Listeners, state: Arc<DnsState>, upstreams: Vec<SocketAddr>) {
    if upstreams.is_empty() {
        warn!("no upstream DNS resolver is known: only names of DNS resources will resolve");
    }
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for socket in listeners.udp {
        tasks.spawn(serve_udp(
            socket,
            state.clone(),
            upstreams.clone(),
            forwards.clone(),
        ));
    }
    for listener in listeners.tcp {
        tasks.spawn(serve_tcp(
            listener,
            state.clone(),
            upstreams.clone(),
            connections.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

fn decide(state: &DnsState, query: &[u8]) -> Verdict {
    let (verdict, names) = {
        let mut resolver = state.resolver.write();
        let before = resolver.name_count();
        let verdict = resolver.handle_query(query);
        (verdict, resolver.name_count() != before)
    };
    if names {
        state.dirty.store(true, Ordering::Relaxed);
    }
    verdict
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    state: Arc<DnsState>,
    upstreams: Arc<[SocketAddr]>,
    forwards: Arc<Semaphore>,
) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                debug!("DNS receive failed: {err}");
                continue;
            }
        };
        let query = &buffer[..len];
        match decide(&state, query) {
            Verdict::Answer(answer) => {
                state.answered.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&answer, from).await;
            }
            Verdict::Drop => {}
            Verdict::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(answer) = postern_dns::server_failure(query) {
                        let _ = socket.send_to(&answer, from).await;
                    }
                    continue;
                };
                let (socket, state, upstreams, query) = (
                    socket.clone(),
                    state.clone(),
                    upstreams.clone(),
                    query.to_vec(),
                );
                tokio::spawn(async move {
                    let answer = match forward_udp(&query, &upstreams).await {
                        Some(answer) => {
                            state.forwarded.fetch_add(1, Ordering::Relaxed);
                            Some(answer)
                        }
                        None => {
                            state.failed.fetch_add(1, Ordering::Relaxed);
                            postern_dns::server_failure(&query)
                        }
                    };
                    if let Some(answer) = answer {
                        let _ = socket.send_to(&answer, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Asks each upstream in turn over UDP, from a fresh socket with a random port (connected, so
/// only the upstream's datagrams are read); the first answer carrying the query's id wins.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    for upstream in upstreams {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let attempt = async {
            let socket = UdpSocket::bind(local).await.ok()?;
            socket.connect(upstream).await.ok()?;
            socket.send(query).await.ok()?;
            loop {
                let len = socket.recv(&mut buffer).await.ok()?;
                let answer = &buffer[..len];
                if answer.get(..2) == Some(id) {
                    return Some(answer.to_vec());
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(answer)) => return Some(answer),
            Ok(None) => debug!("upstream DNS resolver {upstream} failed"),
            Err(_) => debug!("upstream DNS resolver {upstream} did not answer in time"),
        }
    }
    None
}

async fn serve_tcp(
    listener: TcpListener,
    state: Arc<DnsState>,
    upstreams: Arc<[SocketAddr]>,
    connections: Arc<Semaphore>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!("too many DNS connections: one closed");
            continue;
        };
        let (state, upstreams) = (state.clone(), upstreams.clone());
        tokio::spawn(async move {
            serve_connection(stream, &state, &upstreams).await;
            drop(permit);
        });
    }
}

/// Reads length-prefixed queries until the peer closes or idles; answers each in turn.
async fn serve_connection(mut stream: TcpStream, state: &DnsState, upstreams: &[SocketAddr]) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_message(&mut stream)).await else {
            return;
        };
        let answer = match decide(state, &query) {
            Verdict::Answer(answer) => {
                state.answered.fetch_add(1, Ordering::Relaxed);
                answer
            }
            Verdict::Drop => return,
            Verdict::Forward => match forward_tcp(&query, upstreams).await {
                Some(answer) => {
                    state.forwarded.fetch_add(1, Ordering::Relaxed);
                    answer
                }
                None => {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    match postern_dns::server_failure(&query) {
                        Some(answer) => answer,
                        None => return,
                    }
                }
            },
        };
        if write_message(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let attempt = async {
            let mut stream = TcpStream::connect(upstream).await.ok()?;
            write_message(&mut stream, query).await.ok()?;
            read_message(&mut stream).await.ok()
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(answer)) => return Some(answer),
            _ => debug!("upstream DNS resolver {upstream} failed over TCP"),
        }
    }
    None
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}
