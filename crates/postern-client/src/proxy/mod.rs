//! The rootless client's entry points: SOCKS5 (`socks5.rs`), HTTP CONNECT and plain HTTP
//! forwarding (`http.rs`), and port forwards (`forward.rs`), each making TCP connections
//! through the tunnel with the user-space stack (`postern-netstack`).
//!
//! What they share is here: where a target goes ([`Proxies::open`]: a name of a DNS resource
//! gets its proxy address, an address is checked against the resources and their filters so
//! that a refusal comes at once, not after a timeout), the relay between the local socket and
//! the tunnel, and the registry of open connections (for `status`, and to close the
//! connections of a resource as soon as it is withdrawn).

pub mod forward;
pub mod http;
pub mod socks5;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use postern_dataplane::{internet_networks, resource_network};
use postern_domain::dns::is_proxy_address;
use postern_netstack::{ConnectError, NetStack, TcpConnection, UdpSocket};
use postern_policy::{filters_allow, Protocol};
use postern_protocol::ResourceView;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info};
use uuid::Uuid;

use crate::dns::DnsState;
use crate::tunnel::Plan;

/// A connection through the tunnel has this long to be established (an access request, a
/// handshake and the SYN's answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes moved per read each way between the local socket and the tunnel: fewer, larger
/// copies (with tokio's default of 8 KiB one SOCKS5 stream made 1.68 Gbit/s, with 64 KiB 1.99;
/// bench/rootless.sh).
const RELAY_BUFFER: usize = 64 * 1024;
/// Connections listed in `status` (the count says how many are open).
const MAX_LISTED: usize = 256;

/// Why a target is not connected, said to the proxy's client in its protocol's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is in no resource this service account may reach")]
    NoResource(IpAddr),
    #[error("{protocol} port {port} is outside the filters of resource '{resource}'")]
    Filtered {
        protocol: &'static str,
        port: u16,
        resource: String,
    },
    #[error("{0} does not resolve")]
    Unresolved(String),
    #[error("{0}")]
    Connect(ConnectError),
    #[error("{0} did not answer in time (is access granted? see postern-client status)")]
    TimedOut(SocketAddr),
}

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Address(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(address) => write!(f, "{address}"),
            Target::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl Target {
    /// `host:port`, `[v6]:port`, or `name:port`.
    pub fn parse(text: &str) -> Option<Target> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Some(Target::Address(address));
        }
        let (host, port) = text.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(match host.parse::<IpAddr>() {
            Ok(ip) => Target::Address(SocketAddr::new(ip, port)),
            Err(_) => Target::Name(host.to_ascii_lowercase(), port),
        })
    }
}

/// A user name and password the proxies ask for (SOCKS5 RFC 1929, HTTP `Proxy-Authorization`).
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `USER:PASSWORD` on the first line of a file that only its owner may read.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let metadata =
            std::fs::metadata(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{shown} can be read by others: chmod 600 it (it holds the proxies' password)"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
        let line = text.lines().next().unwrap_or_default();
        let Some((user, password)) = line.split_once(':') else {
            return Err(format!("{shown} must hold USER:PASSWORD"));
        };
        if user.is_empty() || password.is_empty() || user.len() > 255 || password.len() > 255 {
            return Err(format!(
                "{shown}: the user and the password are 1 to 255 bytes each"
            ));
        }
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// Both match, compared in constant time.
    pub fn accepts(&self, user: &str, password: &str) -> bool {
        let user_ok = self.user.as_bytes().ct_eq(user.as_bytes());
        let password_ok = self.password.as_bytes().ct_eq(password.as_bytes());
        bool::from(user_ok & password_ok)
    }
}

/// One open proxied connection, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenConnection {
    /// `socks5`, `http` or `forward`.
    pub via: String,
    pub client: SocketAddr,
    pub target: String,
    pub resource: String,
    pub since: DateTime<Utc>,
}

struct Entry {
    shown: OpenConnection,
    resource_id: Uuid,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// What the proxies share; cheap to clone.
#[derive(Clone)]
pub struct Proxies {
    stack: NetStack,
    dns: Arc<DnsState>,
    plan: watch::Receiver<Plan>,
    /// `--internet`: addresses no resource covers go through the Internet resource.
    internet: bool,
    credentials: Option<Arc<Credentials>>,
    registry: Arc<Mutex<BTreeMap<u64, Entry>>>,
    next_id: Arc<AtomicU64>,
    /// Listeners, as `status` shows them (`socks5 127.0.0.1:1080`, …).
    listeners: Arc<Mutex<Vec<String>>>,
}

impl Proxies {
    pub fn new(
        stack: NetStack,
        dns: Arc<DnsState>,
        plan: watch::Receiver<Plan>,
        internet: bool,
        credentials: Option<Credentials>,
    ) -> Self {
        Self {
            stack,
            dns,
            plan,
            internet,
            credentials: credentials.map(Arc::new),
            registry: Arc::default(),
            next_id: Arc::default(),
            listeners: Arc::default(),
        }
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_deref()
    }

    pub(crate) fn listening(&self, what: String) {
        info!("listening: {what}");
        self.listeners.lock().push(what);
        self.changed();
    }

    /// The status shows something new.
    fn changed(&self) {
        self.dns.dirty.store(true, Ordering::Relaxed);
    }

    /// Sockets the user-space stack holds (open connections and those still closing).
    pub fn stack_sockets(&self) -> usize {
        self.stack.stats().open.load(Ordering::Relaxed)
    }

    /// What `status` shows: the listeners, the open connections (the first few) and their
    /// count.
    pub fn status(&self) -> (Vec<String>, Vec<OpenConnection>, usize) {
        let registry = self.registry.lock();
        let listed = registry
            .values()
            .take(MAX_LISTED)
            .map(|e| e.shown.clone())
            .collect();
        (self.listeners.lock().clone(), listed, registry.len())
    }

    /// Resolves and checks `target`, then connects through the tunnel.
    pub async fn open(&self, target: &Target) -> Result<(TcpConnection, ResourceView), Refusal> {
        let address = self.address_of(target).await?;
        let resource = self.check(address, Protocol::Tcp)?;
        let connecting = self.stack.connect(address);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => Ok((connection, resource)),
            Ok(Err(err)) => Err(Refusal::Connect(err)),
            Err(_) => Err(Refusal::TimedOut(address)),
        }
    }

    /// Resolves and checks `target` for UDP, and gives a UDP socket through the tunnel to it.
    pub async fn open_udp(&self, target: &Target) -> Result<(UdpSocket, ResourceView), Refusal> {
        let address = self.address_of(target).await?;
        let resource = self.check(address, Protocol::Udp)?;
        let socket = self.stack.udp(address).map_err(Refusal::Connect)?;
        Ok((socket, resource))
    }

    /// A name of a reachable DNS resource gets its proxy address; any other name is resolved
    /// by the system (it may be an address of a CIDR resource).
    async fn address_of(&self, target: &Target) -> Result<SocketAddr, Refusal> {
        let (name, port) = match target {
            Target::Address(address) => return Ok(*address),
            Target::Name(name, port) => (name.trim_end_matches('.'), *port),
        };
        let resolved = self.dns.server.resolver.write().resolve(name);
        if let postern_dns::Resolution::Proxies { ipv4, .. } = resolved {
            return Ok(SocketAddr::new(ipv4.into(), port));
        }
        let found = tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| Refusal::Unresolved(name.to_string()))?;
        let mut found: Vec<SocketAddr> = found.collect();
        found.sort_by_key(|a| !a.is_ipv4());
        found
            .into_iter()
            .next()
            .ok_or_else(|| Refusal::Unresolved(name.to_string()))
    }

    /// The resource `address` belongs to, and whether its filters let `protocol` to its port
    /// through: what the gateway would decide, said now.
    fn check(&self, address: SocketAddr, protocol: Protocol) -> Result<ResourceView, Refusal> {
        let plan = self.plan.borrow();
        let ip = address.ip();
        let resource = if is_proxy_address(ip) {
            let names = self.dns.server.resolver.read();
            names
                .proxy_target(ip)
                .and_then(|target| plan.resources.iter().find(|r| r.id == target.resource_id))
        } else {
            most_specific(&plan.resources, ip, self.internet)
        };
        let resource = resource.ok_or(Refusal::NoResource(ip))?;
        if !filters_allow(&resource.filters, protocol, Some(address.port())) {
            return Err(Refusal::Filtered {
                protocol: protocol_name(protocol),
                port: address.port(),
                resource: resource.name.clone(),
            });
        }
        Ok(resource.clone())
    }

    /// Registers a connection for `status` and for withdrawal; the receiver fires when its
    /// resource is withdrawn. [`Proxies::unregister`] it when it ends.
    pub(crate) fn register(
        &self,
        via: &str,
        client: SocketAddr,
        target: &Target,
        resource: &ResourceView,
    ) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        self.registry.lock().insert(
            id,
            Entry {
                shown: OpenConnection {
                    via: via.to_string(),
                    client,
                    target: target.to_string(),
                    resource: resource.name.clone(),
                    since: Utc::now(),
                },
                resource_id: resource.id,
                stop,
            },
        );
        self.changed();
        (id, stopped)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.registry.lock().remove(&id);
        self.changed();
    }

    /// Copies both ways between the local socket and the tunnel until either side ends, or
    /// until the connection's resource is withdrawn.
    pub async fn relay<L: AsyncRead + AsyncWrite + Unpin>(
        &self,
        via: &str,
        mut local: L,
        client: SocketAddr,
        target: &Target,
        mut connection: TcpConnection,
        resource: &ResourceView,
    ) {
        let (id, stopped) = self.register(via, client, target, resource);
        tokio::select! {
            copied = tokio::io::copy_bidirectional_with_sizes(&mut local, &mut connection, RELAY_BUFFER, RELAY_BUFFER) => {
                if let Err(err) = copied {
                    debug!(%client, %target, "proxied connection ended: {err}");
                }
            }
            _ = stopped => {
                info!(%client, %target, "proxied connection closed: access to {} withdrawn", resource.name);
                connection.abort();
            }
        }
        self.unregister(id);
    }

    /// Closes the connections whose resource left the plan, whenever the plan changes.
    pub async fn close_withdrawn(self) {
        let mut plan = self.plan.clone();
        while plan.changed().await.is_ok() {
            let reachable: std::collections::HashSet<Uuid> = plan
                .borrow_and_update()
                .resources
                .iter()
                .map(|r| r.id)
                .collect();
            let mut registry = self.registry.lock();
            let gone: Vec<u64> = registry
                .iter()
                .filter(|(_, e)| !reachable.contains(&e.resource_id))
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                if let Some(entry) = registry.remove(&id) {
                    let _ = entry.stop.send(());
                }
            }
        }
    }
}

/// The most specific resource network holding `ip`; the Internet resource, for a client that
/// opted in, for everything else (but the ranges no resource may reach).
fn most_specific(resources: &[ResourceView], ip: IpAddr, internet: bool) -> Option<&ResourceView> {
    let covering = resources
        .iter()
        .filter_map(|r| resource_network(r).map(|net| (net, r)))
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, r)| r);
    if covering.is_some() || !internet {
        return covering;
    }
    let allowed = postern_domain::validate::forbidden_destination(ip).is_none()
        && internet_networks().iter().any(|net| net.contains(&ip));
    resources
        .iter()
        .find(|r| r.resource_type == "internet")
        .filter(|_| allowed)
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    }
}

/// `PORT` (on loopback) or `ADDR:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("'{text}' is not PORT or ADDR:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: u128, kind: &str, address: &str, filters: &str) -> ResourceView {
        ResourceView {
            id: Uuid::from_u128(id),
            name: format!("r{id}"),
            resource_type: kind.into(),
            address: address.into(),
            description: None,
            filters: serde_json::from_str(filters).unwrap(),
            site_id: Uuid::nil(),
            access_until: None,
        }
    }

    #[test]
    fn targets_parse_as_addresses_or_names() {
        assert_eq!(
            Target::parse("10.0.0.5:5432"),
            Some(Target::Address("10.0.0.5:5432".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("[fd00::5]:80"),
            Some(Target::Address("[fd00::5]:80".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("DB.internal:5432"),
            Some(Target::Name("db.internal".into(), 5432))
        );
        for bad in ["db.internal", ":80", "db:port", ""] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_most_specific_resource_wins_and_the_internet_only_for_who_opted_in() {
        let resources = vec![
            resource(1, "cidr", "10.0.0.0/8", "[]"),
            resource(2, "cidr", "10.2.0.0/24", "[]"),
            resource(3, "internet", "0.0.0.0/0, ::/0", "[]"),
        ];
        let at = |ip: &str, internet| most_specific(&resources, ip.parse().unwrap(), internet);
        assert_eq!(at("10.2.0.5", false).unwrap().id, Uuid::from_u128(2));
        assert_eq!(at("10.9.0.5", false).unwrap().id, Uuid::from_u128(1));
        assert!(at("192.0.2.1", false).is_none());
        assert_eq!(at("192.0.2.1", true).unwrap().id, Uuid::from_u128(3));
        assert!(
            at("169.254.169.254", true).is_none(),
            "never the metadata service"
        );
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(
            parse_listen("1080").unwrap(),
            "127.0.0.1:1080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:1080").unwrap(),
            "0.0.0.0:1080".parse().unwrap()
        );
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn credentials_come_from_a_private_file_and_compare_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy-credentials");
        std::fs::write(&file, "ci:s3cret:with:colons\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Credentials::read(&file).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let credentials = Credentials::read(&file).unwrap();
        assert!(credentials.accepts("ci", "s3cret:with:colons"));
        assert!(!credentials.accepts("ci", "s3cret"));
        assert!(!credentials.accepts("cj", "s3cret:with:colons"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}
