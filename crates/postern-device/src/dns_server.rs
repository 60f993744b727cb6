//! A DNS server on the network around [`postern_dns::StubResolver`]: UDP and TCP on port 53
//! of the given addresses. Each query goes through the resolver: a name a reachable DNS
//! resource covers is answered with its proxy addresses, anything else is forwarded as it is to
//! the upstream resolvers (UDP over UDP, TCP over TCP, EDNS and all), and their answer goes back
//! unchanged. The client runs it as its stub resolver; the gateway runs it, with no resources,
//! as the resolver of its Internet resource's clients.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use postern_dns::{StubResolver, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How long one upstream resolver has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; more are answered SERVFAIL.
const MAX_FORWARDS: usize = 512;
/// TCP connections served at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection with no query for this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_MESSAGE: usize = 65_535;

/// The resolver, where it forwards, and what it did: shared by the server's tasks and its
/// owner (the client's data plane routes packets by the resolver's names, so a name is
/// routable before its answer leaves).
#[derive(Debug, Default)]
pub struct DnsServer {
    pub resolver: RwLock<StubResolver>,
    upstreams: RwLock<Arc<[SocketAddr]>>,
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    /// The resolver gave out proxy addresses for a new name since this was last cleared.
    pub names_changed: AtomicBool,
}

impl DnsServer {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        let server = Self::default();
        server.set_upstreams(upstreams);
        server
    }

    /// Where queries for other names go from now on.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.write() = upstreams.into();
    }

    pub fn upstreams(&self) -> Arc<[SocketAddr]> {
        self.upstreams.read().clone()
    }

    fn decide(&self, query: &[u8]) -> Verdict {
        let (verdict, new_name) = {
            let mut resolver = self.resolver.write();
            let before = resolver.name_count();
            let verdict = resolver.handle_query(query);
            (verdict, resolver.name_count() != before)
        };
        if new_name {
            self.names_changed.store(true, Ordering::Relaxed);
        }
        verdict
    }
}

/// The `nameserver` addresses of a resolv.conf text, in order (a link-local scope is dropped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|address| address.split('%').next()?.parse().ok())
        .collect()
}

/// The upstream servers: `nameservers` on port 53, without the stub resolver itself (and
/// without systemd-resolved's stub when forwarding to it would come back here).
pub fn upstreams(servers: &[IpAddr], resolver: &[IpAddr]) -> Vec<SocketAddr> {
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    for server in servers {
        let upstream = SocketAddr::new(*server, 53);
        if !resolver.contains(server) && !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
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
            match bind_pair(at).await {
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

/// UDP and TCP on `at`. With port 0 (tests) TCP takes the port UDP was given, which another
/// process may hold for TCP: then both are tried again on another port, a few times.
async fn bind_pair(at: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    const TRIES_ON_ANY_PORT: usize = 16;
    let tries = if at.port() == 0 { TRIES_ON_ANY_PORT } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(at).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port could be bound")))
}

/// Serves queries until the task is dropped.
pub async fn serve(listeners: Listeners, server: Arc<DnsServer>) {
    if server.upstreams().is_empty() {
        warn!("no upstream DNS resolver is known: only names of DNS resources will resolve");
    }
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for socket in listeners.udp {
        tasks.spawn(serve_udp(socket, server.clone(), forwards.clone()));
    }
    for listener in listeners.tcp {
        tasks.spawn(serve_tcp(listener, server.clone(), connections.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_udp(socket: Arc<UdpSocket>, server: Arc<DnsServer>, forwards: Arc<Semaphore>) {
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
        match server.decide(query) {
            Verdict::Answer(answer) => {
                server.answered.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&answer, from).await;
            }
            Verdict::Drop => {}
            Verdict::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    server.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(answer) = postern_dns::server_failure(query) {
                        let _ = socket.send_to(&answer, from).await;
                    }
                    continue;
                };
                let (socket, server, query) = (socket.clone(), server.clone(), query.to_vec());
                tokio::spawn(async move {
                    let answer = match forward_udp(&query, &server.upstreams()).await {
                        Some(answer) => {
                            server.forwarded.fetch_add(1, Ordering::Relaxed);
                            Some(answer)
                        }
                        None => {
                            server.failed.fetch_add(1, Ordering::Relaxed);
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

async fn serve_tcp(listener: TcpListener, server: Arc<DnsServer>, connections: Arc<Semaphore>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!("too many DNS connections: one closed");
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            serve_connection(stream, &server).await;
            drop(permit);
        });
    }
}

/// Reads length-prefixed queries until the peer closes or idles; answers each in turn.
async fn serve_connection(mut stream: TcpStream, server: &DnsServer) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_message(&mut stream)).await else {
            return;
        };
        let answer = match server.decide(&query) {
            Verdict::Answer(answer) => {
                server.answered.fetch_add(1, Ordering::Relaxed);
                answer
            }
            Verdict::Drop => return,
            Verdict::Forward => match forward_tcp(&query, &server.upstreams()).await {
                Some(answer) => {
                    server.forwarded.fetch_add(1, Ordering::Relaxed);
                    answer
                }
                None => {
                    server.failed.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_of_a_resolv_conf_become_upstreams_without_the_resolver_itself() {
        let text = "# from DHCP\nsearch corp.example\nnameserver 10.0.0.2\n\
                    nameserver fe80::1%eth0\nnameserver 198.18.0.53\noptions edns0\n";
        let servers = nameservers(text);
        assert_eq!(
            servers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "198.18.0.53".parse().unwrap()
            ]
        );
        let resolver: Vec<IpAddr> = vec!["198.18.0.53".parse().unwrap()];
        assert_eq!(
            upstreams(&servers, &resolver),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
