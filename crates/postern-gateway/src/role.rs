//! The gateway's side of the session: keeps [`GatewayState`] in step with the portal, expires
//! authorizations on time, logs grants and revocations, and describes itself for the status
//! file (never with preshared keys).

use chrono::{DateTime, Utc};
use postern_device::Role;
use postern_protocol::gateway::{GatewayState, GatewayUpdate};
use postern_protocol::{
    Authorization, DisconnectReason, GatewayToPortal, PortalToGateway, TunnelAddresses,
    GATEWAY_PATH,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use postern_dataplane::gateway::DropCounters;
use tracing::info;
use uuid::Uuid;

use crate::plan::PlanSender;

pub struct GatewayRole {
    state: GatewayState,
    token_id: Uuid,
    listen: String,
    public_endpoint: Option<String>,
    /// The data plane, when there is one: where authorization changes go, its drop counters.
    plan: Option<PlanSender>,
    dropped: Option<Arc<Mutex<DropCounters>>>,
    /// The drop counters as the status file last showed them, and when to look again.
    counters_shown: DropCounters,
    counters_due: DateTime<Utc>,
}

/// How often the status file catches up with the data plane's drop counters.
const COUNTERS_REFRESH: chrono::Duration = chrono::Duration::seconds(2);

impl GatewayRole {
    pub fn new(token_id: Uuid, listen: String, public_endpoint: Option<String>) -> Self {
        Self {
            state: GatewayState::default(),
            token_id,
            listen,
            public_endpoint,
            plan: None,
            dropped: None,
            counters_shown: DropCounters::default(),
            counters_due: Utc::now(),
        }
    }

    pub fn with_data_plane(mut self, plan: PlanSender, dropped: Arc<Mutex<DropCounters>>) -> Self {
        self.plan = Some(plan);
        self.dropped = Some(dropped);
        self
    }
}

/// The gateway's part of `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayDetails {
    pub role: String,
    pub site: Option<Site>,
    pub token: TokenInfo,
    pub addresses: Option<TunnelAddresses>,
    /// Where the data plane will listen (not used yet).
    pub listen: String,
    pub public_endpoint: Option<String>,
    pub authorizations_count: usize,
    pub authorizations: Vec<AuthorizationStatus>,
    /// Whether the data plane runs (not with `--no-tunnel`).
    #[serde(default)]
    pub data_plane: bool,
    /// Packets the data plane dropped, by reason.
    #[serde(default)]
    pub dropped_packets: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Site {
    pub id: Uuid,
    pub name: String,
    pub account_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationStatus {
    pub id: Uuid,
    pub client_device_id: String,
    pub actor_id: Uuid,
    pub client_addresses: TunnelAddresses,
    pub resource_id: Uuid,
    pub resource_name: String,
    pub resource_address: String,
    pub expires_at: DateTime<Utc>,
}

fn describe(authorization: &Authorization) -> String {
    format!(
        "{} for device {} to {} ({}) until {}",
        authorization.id,
        authorization.client_device_id,
        authorization.resource.name,
        authorization.resource.address,
        authorization.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

impl Role for GatewayRole {
    type Incoming = PortalToGateway;
    type Outgoing = GatewayToPortal;
    type Details = GatewayDetails;

    const PATH: &'static str = GATEWAY_PATH;
    const PROGRAM: &'static str = "postern-gateway";

    fn heartbeat() -> GatewayToPortal {
        GatewayToPortal::Heartbeat
    }

    fn disconnect(message: &PortalToGateway) -> Option<(DisconnectReason, String)> {
        match message {
            PortalToGateway::Disconnect { reason, message } => Some((*reason, message.clone())),
            _ => None,
        }
    }

    fn on_message(&mut self, message: PortalToGateway) -> bool {
        let revoke_reason = match &message {
            PortalToGateway::Revoke { reason, .. } => reason.clone(),
            _ => String::new(),
        };
        let updates = self.state.apply(message);
        for update in &updates {
            match update {
                GatewayUpdate::Synced { authorizations } => {
                    if let Some(identity) = &self.state.identity {
                        info!(
                            site = %identity.site_name,
                            token_id = %identity.token_id,
                            token_expires_at = %identity.token_expires_at,
                            "session ready: {authorizations} authorization(s)"
                        );
                    }
                    if let Some(plan) = &self.plan {
                        plan.replace(self.state.authorizations().values().cloned());
                    }
                }
                GatewayUpdate::Authorized(id) => {
                    if let Some(authorization) = self.state.authorizations().get(id) {
                        info!("authorization granted: {}", describe(authorization));
                        if let Some(plan) = &self.plan {
                            plan.upsert(authorization.clone());
                        }
                    }
                }
                GatewayUpdate::Revoked(gone) => {
                    for authorization in gone {
                        info!(
                            "authorization revoked: {} ({revoke_reason})",
                            describe(authorization)
                        );
                    }
                    if let Some(plan) = &self.plan {
                        plan.remove(gone.iter().map(|a| a.id));
                    }
                }
            }
        }
        !updates.is_empty()
    }

    fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        let counters = self.dropped.is_some().then_some(self.counters_due);
        match (self.state.next_expiry(), counters) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_wakeup(&mut self, now: DateTime<Utc>) -> bool {
        let mut counters_changed = false;
        if now >= self.counters_due {
            self.counters_due = now + COUNTERS_REFRESH;
            if let Some(dropped) = &self.dropped {
                let current = *dropped.lock();
                counters_changed = current != self.counters_shown;
                self.counters_shown = current;
            }
        }
        let expired = self.state.expire(now);
        for authorization in &expired {
            info!("authorization expired: {}", describe(authorization));
        }
        if let Some(plan) = &self.plan {
            plan.remove(expired.iter().map(|a| a.id));
        }
        !expired.is_empty() || counters_changed
    }

    fn details(&self) -> GatewayDetails {
        let identity = self.state.identity.as_ref();
        let mut authorizations: Vec<AuthorizationStatus> = self
            .state
            .authorizations()
            .values()
            .map(|a| AuthorizationStatus {
                id: a.id,
                client_device_id: a.client_device_id.clone(),
                actor_id: a.actor_id,
                client_addresses: a.client_addresses,
                resource_id: a.resource.id,
                resource_name: a.resource.name.clone(),
                resource_address: a.resource.address.clone(),
                expires_at: a.expires_at,
            })
            .collect();
        authorizations.sort_by_key(|a| (a.expires_at, a.id));
        GatewayDetails {
            role: "gateway".to_string(),
            site: identity.map(|i| Site {
                id: i.site_id,
                name: i.site_name.clone(),
                account_id: i.account_id,
            }),
            token: TokenInfo {
                id: identity.map_or(self.token_id, |i| i.token_id),
                expires_at: identity.map(|i| i.token_expires_at),
            },
            addresses: identity.map(|i| i.addresses),
            listen: self.listen.clone(),
            public_endpoint: self.public_endpoint.clone(),
            authorizations_count: authorizations.len(),
            authorizations,
            data_plane: self.plan.is_some(),
            dropped_packets: self
                .dropped
                .as_ref()
                .map(|counters| {
                    counters
                        .lock()
                        .non_zero()
                        .into_iter()
                        .map(|(reason, count)| (reason.to_string(), count))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
