//! What a gateway knows: which client may reach which resource, until when.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::messages::{Authorization, GatewayInit, PortalToGateway};

#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    pub identity: Option<GatewayInit>,
    pub authorizations: HashMap<Uuid, Authorization>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayUpdate {
    Synced { authorizations: usize },
    Authorized(Uuid),
    Revoked(Vec<Uuid>),
}

impl GatewayState {
    pub fn apply(&mut self, message: PortalToGateway) -> Vec<GatewayUpdate> {
        match message {
            PortalToGateway::Init(mut init) => {
                let authorizations = std::mem::take(&mut init.authorizations);
                self.authorizations = authorizations.into_iter().map(|a| (a.id, a)).collect();
                self.identity = Some(init);
                vec![GatewayUpdate::Synced {
                    authorizations: self.authorizations.len(),
                }]
            }
            PortalToGateway::Authorize { authorization } => {
                let id = authorization.id;
                self.authorizations.insert(id, authorization);
                vec![GatewayUpdate::Authorized(id)]
            }
            PortalToGateway::Revoke {
                authorization_ids, ..
            } => {
                let removed: Vec<Uuid> = authorization_ids
                    .into_iter()
                    .filter(|id| self.authorizations.remove(id).is_some())
                    .collect();
                if removed.is_empty() {
                    return vec![];
                }
                vec![GatewayUpdate::Revoked(removed)]
            }
            PortalToGateway::Disconnect { .. } | PortalToGateway::Heartbeat => vec![],
        }
    }

    /// Whether the client device may reach the resource now. Expired authorizations never
    /// allow anything, even before `expire` removed them.
    pub fn allows(&self, client_device_id: &str, resource_id: Uuid, now: DateTime<Utc>) -> bool {
        self.authorizations.values().any(|a| {
            a.client_device_id == client_device_id
                && a.resource.id == resource_id
                && a.expires_at > now
        })
    }

    /// Removes expired authorizations and returns their ids.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Uuid> {
        let expired: Vec<Uuid> = self
            .authorizations
            .values()
            .filter(|a| a.expires_at <= now)
            .map(|a| a.id)
            .collect();
        for id in &expired {
            self.authorizations.remove(id);
        }
        expired
    }

    /// The earliest expiry, to wake up for.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.authorizations.values().map(|a| a.expires_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ResourceView, TunnelAddresses};

    fn authorization(id: u128, device: &str, expires_at: DateTime<Utc>) -> Authorization {
        Authorization {
            id: Uuid::from_u128(id),
            client_device_id: device.into(),
            actor_id: Uuid::nil(),
            client_public_key: None,
            client_addresses: TunnelAddresses {
                ipv4: "100.64.0.9".parse().unwrap(),
                ipv6: "fd00::9".parse().unwrap(),
            },
            resource: ResourceView {
                id: Uuid::from_u128(100),
                name: "db".into(),
                resource_type: "ip".into(),
                address: "10.0.0.5".into(),
                description: None,
                filters: vec![],
                site_id: Uuid::nil(),
                access_until: None,
            },
            expires_at,
            preshared_key: None,
        }
    }

    #[test]
    fn authorize_allow_revoke_expire() {
        let now = Utc::now();
        let mut state = GatewayState::default();
        state.apply(PortalToGateway::Authorize {
            authorization: authorization(1, "a", now + chrono::Duration::minutes(5)),
        });
        state.apply(PortalToGateway::Authorize {
            authorization: authorization(2, "b", now + chrono::Duration::minutes(1)),
        });
        assert!(state.allows("a", Uuid::from_u128(100), now));
        assert!(
            !state.allows("a", Uuid::from_u128(101), now),
            "other resource"
        );
        assert!(
            !state.allows("c", Uuid::from_u128(100), now),
            "other device"
        );
        assert!(
            !state.allows(
                "b",
                Uuid::from_u128(100),
                now + chrono::Duration::minutes(2)
            ),
            "expired"
        );
        assert_eq!(
            state.next_expiry(),
            Some(now + chrono::Duration::minutes(1))
        );
        assert_eq!(
            state.expire(now + chrono::Duration::minutes(2)),
            vec![Uuid::from_u128(2)]
        );
        let updates = state.apply(PortalToGateway::Revoke {
            authorization_ids: vec![Uuid::from_u128(1), Uuid::from_u128(7)],
            reason: "token revoked".into(),
        });
        assert_eq!(
            updates,
            vec![GatewayUpdate::Revoked(vec![Uuid::from_u128(1)])]
        );
        assert!(!state.allows("a", Uuid::from_u128(100), now));
    }
}
