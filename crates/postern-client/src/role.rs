//! The client's side of the session: keeps [`ClientState`] in step with the portal, logs what
//! changes, and describes itself for the status file.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postern_device::session::Successor;
use postern_device::Role;
use postern_policy::{format_ports, Filter, Protocol};
use postern_protocol::client::{ClientState, ClientUpdate};
use postern_protocol::{
    ClientToPortal, DisconnectReason, PortalToClient, ResourceView, TunnelAddresses, CLIENT_PATH,
};
use postern_token::SecretString;
use serde::{Deserialize, Serialize};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::dns::{DnsInfo, DnsState};
use crate::proxy::{OpenConnection, Proxies};
use crate::tunnel::{Plan, PlannedGrant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;

pub struct ClientRole {
    state: ClientState,
    token_id: Uuid,
    tunnel: bool,
    /// The data plane, when there is a tunnel: what it must know, and its access requests.
    plan: Option<watch::Sender<Plan>>,
    requests: Option<mpsc::UnboundedReceiver<ClientToPortal>>,
    /// The stub resolver, with a tunnel: shown in the status.
    dns: Option<Arc<DnsState>>,
    /// Started with `--internet`: the Internet resource is routed.
    internet: bool,
    /// The user-space mode's proxies and forwards (shown in the status).
    proxies: Option<Proxies>,
}

impl ClientRole {
    pub fn new(token_id: Uuid, tunnel: bool) -> Self {
        Self {
            state: ClientState::default(),
            token_id,
            tunnel,
            plan: None,
            requests: None,
            dns: None,
            internet: false,
            proxies: None,
        }
    }

    /// The user-space mode: its listeners and open connections go into the status.
    pub fn with_proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = Some(proxies);
        self
    }

    /// A role that keeps the tunnel's plan up to date and forwards its access requests.
    pub fn with_tunnel(
        token_id: Uuid,
        plan: watch::Sender<Plan>,
        requests: mpsc::UnboundedReceiver<ClientToPortal>,
        dns: Arc<DnsState>,
        internet: bool,
    ) -> Self {
        Self {
            plan: Some(plan),
            requests: Some(requests),
            dns: Some(dns),
            internet,
            ..Self::new(token_id, true)
        }
    }

    fn publish(&self) {
        let Some(sender) = &self.plan else { return };
        let plan = Plan {
            addresses: self.state.identity.as_ref().map(|i| i.addresses),
            resources: self.state.resources.values().cloned().collect(),
            grants: self
                .state
                .grants
                .iter()
                .map(|(resource_id, grant)| PlannedGrant {
                    resource_id: *resource_id,
                    gateway_name: grant.gateway.name.clone(),
                    gateway_key: grant.gateway.public_key,
                    endpoint: grant.gateway.endpoint.clone(),
                    preshared_key: grant.preshared_key.clone(),
                    expires_at: grant.expires_at,
                    dns: grant.dns.clone(),
                })
                .collect(),
        };
        sender.send_if_modified(|current| {
            if *current == plan {
                return false;
            }
            *current = plan;
            true
        });
    }
}

/// The client's part of `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientDetails {
    pub role: String,
    pub tunnel: bool,
    pub actor: Option<Named>,
    pub account: Option<AccountInfo>,
    pub token: TokenInfo,
    pub addresses: Option<TunnelAddresses>,
    /// The token requires approval and this device has none yet: it is granted nothing until
    /// an administrator approves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
    pub resources: Vec<ResourceStatus>,
    /// The stub resolver (with a tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,
    /// While the Internet resource is in the view: `on` (the full tunnel, `--internet`), or
    /// `off` (the client was not started with `--internet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<String>,
    /// The user-space mode (no TUN): its listeners and the connections open through them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userspace: Option<UserspaceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserspaceStatus {
    pub listeners: Vec<String>,
    /// How many proxied connections are open; `connections` lists the first few.
    pub open: usize,
    pub connections: Vec<OpenConnection>,
    /// Sockets of the user-space stack (open or closing): back to 0 once all are closed.
    pub stack_sockets: usize,
}

/// The stub resolver as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsStatus {
    #[serde(flatten)]
    pub info: DnsInfo,
    /// Names given proxy addresses (the first [`MAX_NAMES_SHOWN`]), and how many in all.
    pub names: Vec<NameStatus>,
    pub name_count: usize,
    /// Queries answered here, forwarded upstream, and failed (no upstream answered).
    pub answered: u64,
    pub forwarded: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameStatus {
    pub name: String,
    /// The DNS resource that covers it now, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub proxy_ipv4: std::net::Ipv4Addr,
    pub proxy_ipv6: std::net::Ipv6Addr,
    /// Its resource's grant lists it.
    pub granted: bool,
}

/// Names listed in `status.json`; the count says how many there are.
pub const MAX_NAMES_SHOWN: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Named {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountInfo {
    pub id: Uuid,
    pub slug: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: Uuid,
    /// Known once the portal has sent `Init`.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub filters: Vec<Filter>,
    pub site_id: Uuid,
    pub access_until: Option<DateTime<Utc>>,
    /// The current grant, when access was requested and granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_until: Option<DateTime<Utc>>,
}

/// `tcp:22,443 udp icmp`, or `all traffic` with no filters.
pub fn describe_filters(filters: &[Filter]) -> String {
    if filters.is_empty() {
        return "all traffic".to_string();
    }
    filters
        .iter()
        .map(|filter| {
            let protocol = match filter.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
            };
            if filter.ports.is_empty() {
                return protocol.to_string();
            }
            format!("{protocol}:{}", format_ports(&filter.ports))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe(resource: &ResourceView) -> String {
    format!("{} ({})", resource.name, resource.address)
}

impl ClientRole {
    fn log_update(&self, update: &ClientUpdate, before: &BTreeMap<Uuid, ResourceView>) {
        let current = |id: &Uuid| self.state.resources.get(id);
        match update {
            ClientUpdate::Synced { resources } => {
                if let Some(identity) = &self.state.identity {
                    info!(
                        actor = %identity.actor_name,
                        account = %identity.account_slug,
                        token_id = %identity.token_id,
                        token_expires_at = %identity.token_expires_at,
                        "session ready: {resources} resource(s) available"
                    );
                    if self.state.awaiting_approval {
                        warn!(
                            device_id = %identity.device_id,
                            "this device awaits an administrator's approval (its token requires one): it is granted nothing until then; approve it with `postern clients approve` or on the service account's page"
                        );
                    }
                }
                for (id, resource) in &self.state.resources {
                    match before.get(id) {
                        None => info!("resource added: {}", describe(resource)),
                        Some(old) if old != resource => {
                            info!("resource changed: {}", describe(resource));
                        }
                        Some(_) => {}
                    }
                }
                for (id, resource) in before {
                    if !self.state.resources.contains_key(id) {
                        info!("resource removed: {}", describe(resource));
                    }
                }
            }
            ClientUpdate::ResourceAdded(id) => {
                if let Some(resource) = current(id) {
                    info!("resource added: {}", describe(resource));
                }
            }
            ClientUpdate::ResourceChanged(id) => {
                if let Some(resource) = current(id) {
                    info!("resource changed: {}", describe(resource));
                }
            }
            ClientUpdate::ResourceRemoved(id) => match before.get(id) {
                Some(resource) => info!("resource removed: {}", describe(resource)),
                None => info!("resource removed: {id}"),
            },
            ClientUpdate::AccessGranted(id) => {
                let name = current(id).map_or_else(|| id.to_string(), |r| r.name.clone());
                info!("access granted: {name}");
            }
            ClientUpdate::AccessDenied {
                resource_id,
                reason,
            } => {
                let name = current(resource_id)
                    .map_or_else(|| resource_id.to_string(), |r| r.name.clone());
                warn!("access denied: {name}: {reason}");
            }
            ClientUpdate::Approval { awaiting: true } => {
                warn!("this device awaits an administrator's approval: it is granted nothing until then");
            }
            ClientUpdate::Approval { awaiting: false } => {
                info!("this device was approved: its resources follow");
            }
        }
    }
}

impl ClientRole {
    fn dns_status(&self, dns: &DnsState) -> DnsStatus {
        let resolver = dns.server.resolver.read();
        let names = resolver
            .proxies()
            .take(MAX_NAMES_SHOWN)
            .map(|(name, proxy_ipv4, proxy_ipv6)| {
                let resource_id = resolver.resource_for(name);
                let granted = resource_id
                    .and_then(|id| self.state.grants.get(&id))
                    .is_some_and(|grant| {
                        grant
                            .dns
                            .iter()
                            .any(|t| t.name == name && t.proxy_ipv4 == proxy_ipv4)
                    });
                NameStatus {
                    name: name.to_string(),
                    resource: resource_id
                        .and_then(|id| self.state.resources.get(&id))
                        .map(|r| r.name.clone()),
                    proxy_ipv4,
                    proxy_ipv6,
                    granted,
                }
            })
            .collect();
        DnsStatus {
            info: dns.info.lock().clone(),
            names,
            name_count: resolver.name_count(),
            answered: dns.server.answered.load(Ordering::Relaxed),
            forwarded: dns.server.forwarded.load(Ordering::Relaxed),
            failed: dns.server.failed.load(Ordering::Relaxed),
        }
    }
}

impl Role for ClientRole {
    type Incoming = PortalToClient;
    type Outgoing = ClientToPortal;
    type Details = ClientDetails;

    const PATH: &'static str = CLIENT_PATH;
    const PROGRAM: &'static str = "postern-client";

    fn heartbeat() -> ClientToPortal {
        ClientToPortal::Heartbeat
    }

    fn goodbye() -> Option<ClientToPortal> {
        Some(ClientToPortal::Goodbye)
    }

    fn disconnect(message: &PortalToClient) -> Option<(DisconnectReason, String)> {
        match message {
            PortalToClient::Disconnect { reason, message } => Some((*reason, message.clone())),
            _ => None,
        }
    }

    fn successor(message: &PortalToClient) -> Option<Successor> {
        match message {
            PortalToClient::TokenRotated {
                token_id,
                secret,
                expires_at,
                replaced_token_expires_at,
            } => Some(Successor {
                token_id: *token_id,
                secret: SecretString::new(secret.expose().to_string()),
                expires_at: *expires_at,
                replaced_token_expires_at: *replaced_token_expires_at,
            }),
            _ => None,
        }
    }

    fn on_message(&mut self, message: PortalToClient) -> bool {
        let before = match &message {
            PortalToClient::Init(_) | PortalToClient::ResourceRemoved { .. } => {
                self.state.resources.clone()
            }
            _ => BTreeMap::new(),
        };
        let updates = self.state.apply(message);
        for update in &updates {
            self.log_update(update, &before);
        }
        self.publish();
        !updates.is_empty()
    }

    fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let expiry = self.state.grants.values().map(|g| g.expires_at).min();
        // With a resolver, the status follows the names it gives out, once a second at most.
        let status = self.dns.as_ref().map(|_| {
            let now = Utc::now();
            now + chrono::Duration::milliseconds(1000 - i64::from(now.timestamp_subsec_millis()))
        });
        expiry.into_iter().chain(status).min()
    }

    fn on_wakeup(&mut self, now: DateTime<Utc>) -> bool {
        let dns_changed = self.dns.as_ref().is_some_and(|dns| dns.take_changed());
        let expired = self.state.expire(now);
        for id in &expired {
            let name = self
                .state
                .resources
                .get(id)
                .map_or_else(|| id.to_string(), |r| r.name.clone());
            info!("access expired: {name}");
        }
        if !expired.is_empty() {
            self.publish();
        }
        dns_changed || !expired.is_empty()
    }

    fn outbox(&mut self) -> Option<&mut mpsc::UnboundedReceiver<ClientToPortal>> {
        self.requests.as_mut()
    }

    fn details(&self) -> ClientDetails {
        let identity = self.state.identity.as_ref();
        ClientDetails {
            role: "client".to_string(),
            tunnel: self.tunnel,
            actor: identity.map(|i| Named {
                id: i.actor_id,
                name: i.actor_name.clone(),
            }),
            account: identity.map(|i| AccountInfo {
                id: i.account_id,
                slug: i.account_slug.clone(),
            }),
            token: TokenInfo {
                id: identity.map_or(self.token_id, |i| i.token_id),
                expires_at: identity.map(|i| i.token_expires_at),
            },
            addresses: identity.map(|i| i.addresses),
            awaiting_approval: self.state.awaiting_approval,
            resources: self
                .state
                .resources
                .values()
                .map(|r| ResourceStatus {
                    id: r.id,
                    name: r.name.clone(),
                    resource_type: r.resource_type.clone(),
                    address: r.address.clone(),
                    description: r.description.clone(),
                    filters: r.filters.clone(),
                    site_id: r.site_id,
                    access_until: r.access_until,
                    granted_until: self.state.grants.get(&r.id).map(|g| g.expires_at),
                })
                .collect(),
            dns: self.dns.as_ref().map(|dns| self.dns_status(dns)),
            internet: self
                .state
                .resources
                .values()
                .any(|r| r.resource_type == "internet")
                .then(|| if self.internet { "on" } else { "off" }.to_string()),
            userspace: self.proxies.as_ref().map(|proxies| {
                let (listeners, connections, open) = proxies.status();
                UserspaceStatus {
                    listeners,
                    open,
                    connections,
                    stack_sockets: proxies.stack_sockets(),
                }
            }),
        }
    }
}
