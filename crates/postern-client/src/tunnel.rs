//! The client's data plane: the shared engine (`postern_device::engine`) with one WireGuard
//! peer per gateway, and a [`ClientForwarding`] that routes packets from the TUN with
//! `postern_dataplane::client::ClientRouter` (holding them while access is requested) and lets
//! a packet out of a tunnel reach the TUN only from a resource granted through that gateway.
//! The control session feeds it a [`Plan`] (addresses, resources, grants) and receives its
//! access requests.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::x25519::StaticSecret;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use postern_dataplane::client::{ClientRouter, Route, RouteGrant};
use postern_dataplane::peers::{PeerConfig, PeerTable, Upserted};
use postern_dataplane::WireGuardKey;
use postern_device::engine::{Changes, Engine, Forwarding};
use postern_device::net::{self, DataPlaneRuntime, NetError};
use postern_protocol::{ClientToPortal, ResourceView, TunnelAddresses};
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
    pub gateway_key: Option<WireGuardKey>,
    pub endpoint: Option<String>,
    pub preshared_key: Option<postern_protocol::PresharedKey>,
    pub expires_at: DateTime<Utc>,
}

/// How long a gateway may stay silent after the first packet before the user is told.
const HANDSHAKE_WARNING: Duration = Duration::from_secs(5);
/// Seconds between keepalives: the client is usually behind NAT.
const KEEPALIVE: u16 = 25;

pub struct ClientTunnel {
    engine: Engine,
    forwarding: ClientForwarding,
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
        info!(tun = %tun_name, mtu, "tunnel device ready");
        Ok(Self {
            engine: Engine::new(runtime, tun, tun_name, mtu, udp, dual_stack, private),
            forwarding: ClientForwarding {
                tun_name: tun_name.to_string(),
                mtu,
                dual_stack,
                router: ClientRouter::default(),
                gateways: HashMap::new(),
                routes: BTreeSet::new(),
                addresses: None,
                requests,
                names: HashMap::new(),
            },
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
    routes: BTreeSet<IpNet>,
    addresses: Option<TunnelAddresses>,
    requests: mpsc::UnboundedSender<ClientToPortal>,
    names: HashMap<Uuid, String>,
}

impl Forwarding for ClientForwarding {
    type Change = Plan;

    async fn apply(&mut self, plan: Plan, peers: &mut PeerTable) -> Vec<(WireGuardKey, Vec<u8>)> {
        self.apply_plan(plan, peers).await
    }

    fn outbound(&mut self, packet: &[u8]) -> Option<WireGuardKey> {
        match self.router.route(packet, Utc::now()) {
            Route::Send(key) => Some(key),
            Route::Held {
                request: Some(resource_id),
            } => {
                let name = self
                    .names
                    .get(&resource_id)
                    .cloned()
                    .unwrap_or_else(|| resource_id.to_string());
                info!("requesting access to {name}");
                let _ = self.requests.send(ClientToPortal::RequestAccess {
                    resource_id,
                    dns: None,
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
        let Ok((src, _)) = postern_dataplane::packet::addresses(packet) else {
            return false;
        };
        let granted = self
            .router
            .gateway_of(src, Utc::now())
            .is_some_and(|key| key == *peer);
        if !granted {
            debug!(%src, "packet from a gateway for a resource it does not serve dropped");
        }
        granted
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
        for route in std::mem::take(&mut self.routes) {
            let _ = net::delete_route(&route, &self.tun_name).await;
        }
    }
}

impl ClientForwarding {
    async fn apply_plan(
        &mut self,
        plan: Plan,
        peers: &mut PeerTable,
    ) -> Vec<(WireGuardKey, Vec<u8>)> {
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
            let upserted = peers.upsert(PeerConfig {
                key,
                preshared_key,
                endpoint: Some(endpoint),
                keepalive: Some(KEEPALIVE),
            });
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
        self.router.set_grants(route_grants, Utc::now())
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

fn endpoint_text(endpoint: Option<SocketAddr>) -> String {
    endpoint.map_or_else(|| "an unknown address".to_string(), |e| e.to_string())
}
