//! What a gateway knows: which client may reach which resource, until when.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::messages::{Authorization, GatewayInit, PortalToGateway};

#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    pub identity: Option<GatewayInit>,
    authorizations: HashMap<Uuid, Authorization>,
    /// The authorizations by expiry, so that the next one is found without a scan.
    expiries: BTreeSet<(DateTime<Utc>, Uuid)>,
}

/// What one message changed, each authorization change on its own (a gateway applies it
/// without rebuilding its table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayUpdate {
    /// The table was replaced by a session's `Init`.
    Synced { authorizations: usize },
    /// Added, renewed or changed in place (same id).
    Authorized(Uuid),
    /// Removed, as they were.
    Revoked(Vec<Authorization>),
}

impl GatewayState {
    /// The authorizations in force, by id.
    pub fn authorizations(&self) -> &HashMap<Uuid, Authorization> {
        &self.authorizations
    }

    pub fn apply(&mut self, message: PortalToGateway) -> Vec<GatewayUpdate> {
        match message {
            PortalToGateway::Init(mut init) => {
                let authorizations = std::mem::take(&mut init.authorizations);
                self.authorizations.clear();
                self.expiries.clear();
                for authorization in authorizations {
                    self.insert(authorization);
                }
                self.identity = Some(init);
                vec![GatewayUpdate::Synced {
                    authorizations: self.authorizations.len(),
                }]
            }
            PortalToGateway::Authorize { authorization } => {
                let id = authorization.id;
                self.insert(authorization);
                vec![GatewayUpdate::Authorized(id)]
            }
            PortalToGateway::Revoke {
                authorization_ids, ..
            } => {
                let removed: Vec<Authorization> = authorization_ids
                    .into_iter()
                    .filter_map(|id| self.remove(id))
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

    /// Removes expired authorizations and returns them.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Authorization> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            expired.extend(self.remove(id));
        }
        expired
    }

    /// The earliest expiry, to wake up for.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.expiries.first().map(|(at, _)| *at)
    }

    fn insert(&mut self, authorization: Authorization) {
        self.remove(authorization.id);
        self.expiries
            .insert((authorization.expires_at, authorization.id));
        self.authorizations.insert(authorization.id, authorization);
    }

    fn remove(&mut self, id: Uuid) -> Option<Authorization> {
        let authorization = self.authorizations.remove(&id)?;
        self.expiries.remove(&(authorization.expires_at, id));
        Some(authorization)
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
            dns: Vec::new(),
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
        let expired = state.expire(now + chrono::Duration::minutes(2));
        assert_eq!(
            expired.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![Uuid::from_u128(2)]
        );
        let updates = state.apply(PortalToGateway::Revoke {
            authorization_ids: vec![Uuid::from_u128(1), Uuid::from_u128(7)],
            reason: "token revoked".into(),
        });
        assert!(
            matches!(&updates[..], [GatewayUpdate::Revoked(gone)] if gone.len() == 1 && gone[0].id == Uuid::from_u128(1)),
            "{updates:?}"
        );
        assert!(!state.allows("a", Uuid::from_u128(100), now));
    }
}
