//! What a headless client knows: who it is and which resources it may reach, kept in step with
//! the portal's messages.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messages::{ClientInit, GatewayInfo, PortalToClient, ResourceView};

/// A grant of access to one resource through one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessGrant {
    pub authorization_id: Uuid,
    pub gateway: GatewayInfo,
    pub expires_at: DateTime<Utc>,
    /// The WireGuard preshared key of this client–gateway pair (never written to status files).
    #[serde(default, skip_serializing)]
    pub preshared_key: Option<crate::PresharedKey>,
    /// For a DNS resource: the names the grant covers, with their proxy addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<crate::DnsTarget>,
}

/// What changed, for logs and for the data plane (routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientUpdate {
    Synced {
        resources: usize,
    },
    ResourceAdded(Uuid),
    ResourceChanged(Uuid),
    ResourceRemoved(Uuid),
    AccessGranted(Uuid),
    AccessDenied {
        resource_id: Uuid,
        reason: String,
    },
    /// The device now waits for approval (`true`), or was approved (`false`).
    Approval {
        awaiting: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    pub identity: Option<ClientInit>,
    /// The device waits for an administrator's approval (granted nothing meanwhile).
    pub awaiting_approval: bool,
    pub resources: BTreeMap<Uuid, ResourceView>,
    pub grants: BTreeMap<Uuid, AccessGrant>,
}

impl ClientState {
    /// Applies one message from the portal. `Disconnect` and `Heartbeat` change nothing here
    /// (the connection state machine handles them).
    pub fn apply(&mut self, message: PortalToClient) -> Vec<ClientUpdate> {
        match message {
            PortalToClient::Init(mut init) => {
                let resources = std::mem::take(&mut init.resources);
                self.resources = resources.into_iter().map(|r| (r.id, r)).collect();
                self.grants.retain(|id, _| self.resources.contains_key(id));
                self.awaiting_approval = init.awaiting_approval;
                self.identity = Some(init);
                vec![ClientUpdate::Synced {
                    resources: self.resources.len(),
                }]
            }
            PortalToClient::ResourceUpserted { resource } => {
                let id = resource.id;
                let previous = self.resources.insert(id, resource.clone());
                match previous {
                    None => vec![ClientUpdate::ResourceAdded(id)],
                    Some(old) if old == resource => vec![],
                    Some(old) => {
                        if old.address != resource.address || old.site_id != resource.site_id {
                            self.grants.remove(&id);
                        }
                        vec![ClientUpdate::ResourceChanged(id)]
                    }
                }
            }
            PortalToClient::ResourceRemoved { id } => {
                self.grants.remove(&id);
                match self.resources.remove(&id) {
                    Some(_) => vec![ClientUpdate::ResourceRemoved(id)],
                    None => vec![],
                }
            }
            PortalToClient::AccessGranted {
                resource_id,
                authorization_id,
                gateway,
                expires_at,
                preshared_key,
                dns,
            } => {
                if !self.resources.contains_key(&resource_id) {
                    return vec![];
                }
                self.grants.insert(
                    resource_id,
                    AccessGrant {
                        authorization_id,
                        gateway,
                        expires_at,
                        preshared_key,
                        dns,
                    },
                );
                vec![ClientUpdate::AccessGranted(resource_id)]
            }
            PortalToClient::AccessDenied {
                resource_id,
                reason,
            } => {
                self.grants.remove(&resource_id);
                vec![ClientUpdate::AccessDenied {
                    resource_id,
                    reason,
                }]
            }
            PortalToClient::Approval { awaiting_approval } => {
                if self.awaiting_approval == awaiting_approval {
                    return vec![];
                }
                self.awaiting_approval = awaiting_approval;
                vec![ClientUpdate::Approval {
                    awaiting: awaiting_approval,
                }]
            }
            PortalToClient::Disconnect { .. }
            | PortalToClient::Heartbeat
            | PortalToClient::TokenRotated { .. } => vec![],
        }
    }

    /// Drops grants whose time is up.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Uuid> {
        let expired: Vec<Uuid> = self
            .grants
            .iter()
            .filter(|(_, g)| g.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.grants.remove(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::TunnelAddresses;

    fn resource(id: u128, address: &str) -> ResourceView {
        ResourceView {
            id: Uuid::from_u128(id),
            name: format!("r{id}"),
            resource_type: "cidr".into(),
            address: address.into(),
            description: None,
            filters: vec![],
            site_id: Uuid::nil(),
            access_until: None,
        }
    }

    fn init(resources: Vec<ResourceView>) -> PortalToClient {
        PortalToClient::Init(ClientInit {
            account_id: Uuid::nil(),
            account_slug: "default".into(),
            actor_id: Uuid::nil(),
            actor_name: "ci".into(),
            token_id: Uuid::nil(),
            token_expires_at: Utc::now(),
            device_id: "dev".into(),
            addresses: TunnelAddresses {
                ipv4: "100.64.0.1".parse().unwrap(),
                ipv6: "fd00::1".parse().unwrap(),
            },
            resources,
            awaiting_approval: false,
        })
    }

    #[test]
    fn init_replaces_and_changes_apply_in_order() {
        let mut state = ClientState::default();
        state.apply(init(vec![resource(1, "10.0.0.0/24")]));
        assert_eq!(state.resources.len(), 1);
        let updates = state.apply(PortalToClient::ResourceUpserted {
            resource: resource(2, "10.1.0.0/24"),
        });
        assert_eq!(
            updates,
            vec![ClientUpdate::ResourceAdded(Uuid::from_u128(2))]
        );
        let same = state.apply(PortalToClient::ResourceUpserted {
            resource: resource(2, "10.1.0.0/24"),
        });
        assert!(same.is_empty());
        state.apply(PortalToClient::ResourceRemoved {
            id: Uuid::from_u128(1),
        });
        assert_eq!(
            state.resources.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(2)]
        );
        // A reconnect's Init is the truth: resource 2 gone, 3 present.
        state.apply(init(vec![resource(3, "10.3.0.0/24")]));
        assert_eq!(
            state.resources.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(3)]
        );
    }

    #[test]
    fn grants_follow_their_resource() {
        let mut state = ClientState::default();
        state.apply(init(vec![resource(1, "10.0.0.0/24")]));
        let gateway = GatewayInfo {
            id: "gw".into(),
            name: "gw".into(),
            public_key: None,
            endpoint: None,
            addresses: TunnelAddresses {
                ipv4: "100.64.0.2".parse().unwrap(),
                ipv6: "fd00::2".parse().unwrap(),
            },
        };
        let grant = |rid: u128| PortalToClient::AccessGranted {
            resource_id: Uuid::from_u128(rid),
            authorization_id: Uuid::from_u128(9),
            gateway: gateway.clone(),
            expires_at: Utc::now() + chrono::Duration::hours(1),
            preshared_key: None,
            dns: Vec::new(),
        };
        assert!(
            state.apply(grant(7)).is_empty(),
            "no grant for an unknown resource"
        );
        state.apply(grant(1));
        assert!(state.grants.contains_key(&Uuid::from_u128(1)));
        state.apply(PortalToClient::ResourceUpserted {
            resource: resource(1, "10.9.0.0/24"),
        });
        assert!(
            state.grants.is_empty(),
            "an address change withdraws the grant"
        );
        state.apply(grant(1));
        state.apply(PortalToClient::ResourceRemoved {
            id: Uuid::from_u128(1),
        });
        assert!(state.grants.is_empty());
        state.apply(PortalToClient::ResourceUpserted {
            resource: resource(1, "10.9.0.0/24"),
        });
        state.apply(grant(1));
        assert_eq!(
            state.expire(Utc::now() + chrono::Duration::hours(2)),
            vec![Uuid::from_u128(1)]
        );
    }
}
