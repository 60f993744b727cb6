//! The messages. Each direction has its own enum, tagged by `"type"`.

use chrono::{DateTime, Utc};
use postern_policy::Filter;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use uuid::Uuid;

pub use postern_domain::keys::{PresharedKey, WireGuardKey};

/// Query parameters of the WebSocket upgrade (never secret: the token travels in the
/// `Authorization` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectParams {
    /// Stable device id chosen by the device (kept in its state directory).
    pub id: String,
    pub name: String,
    /// The device's software version, for the admin's view.
    pub version: String,
    /// The device's WireGuard public key, when it has a data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WireGuardKey>,
    /// Gateways: the `host:port` where clients reach its WireGuard listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Clients: removed from the portal when it stops (`goodbye`), or a while after it
    /// vanished, instead of kept as a known device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

pub const MAX_DEVICE_ID_LEN: usize = 128;
pub const MAX_DEVICE_NAME_LEN: usize = 255;

impl ConnectParams {
    /// Checks the fields a device chose, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_DEVICE_ID_LEN
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !id_ok {
            return Err(format!(
                "id must be 1-{MAX_DEVICE_ID_LEN} letters, digits, '-', '_', '.' or ':'"
            ));
        }
        if self.name.trim().is_empty()
            || self.name.chars().count() > MAX_DEVICE_NAME_LEN
            || self.name.chars().any(char::is_control)
        {
            return Err(format!(
                "name must be 1-{MAX_DEVICE_NAME_LEN} printable characters"
            ));
        }
        if self.version.len() > 64 || self.version.chars().any(char::is_control) {
            return Err("version must be at most 64 printable characters".to_string());
        }
        if let Some(endpoint) = &self.endpoint {
            if endpoint.len() > 255
                || endpoint
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err("endpoint must be a host:port of at most 255 characters".to_string());
            }
        }
        Ok(())
    }
}

/// The addresses a device uses inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelAddresses {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// A resource as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceView {
    pub id: Uuid,
    pub name: String,
    /// `cidr`, `ip` or `dns`.
    #[serde(rename = "type")]
    pub resource_type: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub site_id: Uuid,
    /// When access ends on its own (end of the allowing time window), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInit {
    pub account_id: Uuid,
    pub account_slug: String,
    pub actor_id: Uuid,
    pub actor_name: String,
    pub token_id: Uuid,
    pub token_expires_at: DateTime<Utc>,
    pub device_id: String,
    pub addresses: TunnelAddresses,
    pub resources: Vec<ResourceView>,
    /// The token requires approval and this device has none yet: it holds a session and is
    /// granted nothing until an administrator approves it (then `approval` follows).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<WireGuardKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub addresses: TunnelAddresses,
}

/// Why the portal ends a session. The `*_fatal` ones mean the credentials will not work again:
/// the device must stop, not reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    TokenRevoked,
    TokenExpired,
    ActorDisabled,
    ActorDeleted,
    SiteDeleted,
    /// An administrator blocked this device: it is refused until unblocked.
    DeviceBlocked,
    /// The token's allowed networks no longer include the address the device connects from.
    SourceNotAllowed,
    /// The device's record was removed (an ephemeral device that vanished, or one unseen for
    /// long) while it reconnected: connect again to register anew.
    DeviceRemoved,
    ProtocolError,
    ServerShutdown,
}

impl DisconnectReason {
    /// The token or its holder can no longer authenticate.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            DisconnectReason::TokenRevoked
                | DisconnectReason::TokenExpired
                | DisconnectReason::ActorDisabled
                | DisconnectReason::ActorDeleted
                | DisconnectReason::SiteDeleted
                | DisconnectReason::DeviceBlocked
                | DisconnectReason::SourceNotAllowed
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToClient {
    /// The full state, first message of every session.
    Init(ClientInit),
    /// A resource became reachable, or changed.
    ResourceUpserted {
        resource: ResourceView,
    },
    /// A resource is no longer reachable.
    ResourceRemoved {
        id: Uuid,
    },
    AccessGranted {
        resource_id: Uuid,
        authorization_id: Uuid,
        gateway: GatewayInfo,
        expires_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preshared_key: Option<PresharedKey>,
        /// For a DNS resource: the names (with their proxy addresses) the grant covers now; a
        /// name not among them needs an access request of its own.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dns: Vec<DnsTarget>,
    },
    AccessDenied {
        resource_id: Uuid,
        reason: String,
    },
    /// Whether the device waits for an administrator's approval now (its resources follow
    /// as `resource_upserted` once approved).
    Approval {
        awaiting_approval: bool,
    },
    /// The session's token was rotated: this successor replaces it, and the session's token
    /// stops working at `replaced_token_expires_at`. The client keeps the successor (in its
    /// token file when it has one) and reconnects with it; its tunnels stay up.
    TokenRotated {
        token_id: Uuid,
        secret: TokenSecret,
        expires_at: DateTime<Utc>,
        replaced_token_expires_at: DateTime<Utc>,
    },
    Disconnect {
        reason: DisconnectReason,
        message: String,
    },
    Heartbeat,
}

/// A token's full secret in a message: never shown by `Debug`, wiped when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenSecret(String);

impl TokenSecret {
    pub fn new(secret: String) -> Self {
        TokenSecret(secret)
    }

    /// The secret itself. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for TokenSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientToPortal {
    RequestAccess {
        resource_id: Uuid,
        /// For a DNS resource: the name the client resolved and the proxy addresses it gave it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns: Option<DnsTarget>,
    },
    Heartbeat,
    /// The client stops cleanly (its close frame follows): an ephemeral one is removed at once.
    Goodbye,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInit {
    pub account_id: Uuid,
    pub site_id: Uuid,
    pub site_name: String,
    pub token_id: Uuid,
    pub token_expires_at: DateTime<Utc>,
    pub device_id: String,
    pub addresses: TunnelAddresses,
    /// Authorizations still valid from before a reconnect.
    pub authorizations: Vec<Authorization>,
}

/// A client's permission to reach one resource through this gateway, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub id: Uuid,
    pub client_device_id: String,
    pub actor_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_public_key: Option<WireGuardKey>,
    pub client_addresses: TunnelAddresses,
    pub resource: ResourceView,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<PresharedKey>,
    /// For a DNS resource: the names the client asked for under it, each with its proxy
    /// addresses (the gateway resolves the name and translates proxy ↔ real address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsTarget>,
}

impl Authorization {
    /// The names of a DNS authorization that its resource's pattern covers, each with proxy
    /// addresses: the only ones a gateway serves (it does not rely on the portal's check).
    /// Empty for any other resource.
    pub fn covered_targets(&self) -> impl Iterator<Item = &DnsTarget> {
        let pattern = &self.resource.address;
        let dns = self.resource.resource_type == "dns";
        self.dns
            .iter()
            .filter(move |target| dns && target.check(pattern).is_ok())
    }
}

/// A name under a DNS resource as one client reaches it: through these proxy addresses, which
/// its stub resolver answered with (in `198.18.0.0/15` and `fd70:6f73:7465:726f::/64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DnsTarget {
    /// Lowercase, without the final dot.
    pub name: String,
    pub proxy_ipv4: Ipv4Addr,
    pub proxy_ipv6: Ipv6Addr,
}

impl DnsTarget {
    /// Why this target is not one a client may ask for under a resource with address
    /// `pattern`, if it is not: the name must match the pattern, the addresses must be proxy
    /// addresses.
    pub fn check(&self, pattern: &str) -> Result<(), String> {
        if !postern_domain::dns::is_plain_name(&self.name) {
            return Err("the name asked for is not a plain host name".to_string());
        }
        let matches =
            postern_domain::dns::NamePattern::parse(pattern).is_some_and(|p| p.matches(&self.name));
        if !matches {
            return Err(format!(
                "the name '{}' is not covered by {pattern}",
                self.name
            ));
        }
        let proxies = [
            std::net::IpAddr::V4(self.proxy_ipv4),
            std::net::IpAddr::V6(self.proxy_ipv6),
        ];
        if !proxies
            .into_iter()
            .all(postern_domain::dns::is_proxy_address)
        {
            return Err(format!(
                "the proxy addresses of '{}' are outside the proxy ranges",
                self.name
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToGateway {
    Init(GatewayInit),
    Authorize {
        authorization: Authorization,
    },
    Revoke {
        authorization_ids: Vec<Uuid>,
        reason: String,
    },
    Disconnect {
        reason: DisconnectReason,
        message: String,
    },
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayToPortal {
    Heartbeat,
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn preshared_keys_are_never_in_debug_output() {
        let secret = "c2VjcmV0LXByZXNoYXJlZC1rZXktMzItYnl0ZXMhISE=";
        let key: PresharedKey = secret.parse().unwrap();
        let addresses = TunnelAddresses {
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: "fd70::2".parse().unwrap(),
        };
        let authorization = Authorization {
            id: Uuid::nil(),
            client_device_id: "c".into(),
            actor_id: Uuid::nil(),
            client_public_key: None,
            client_addresses: addresses,
            resource: ResourceView {
                id: Uuid::nil(),
                name: "db".into(),
                resource_type: "cidr".into(),
                address: "10.0.0.0/24".into(),
                description: None,
                filters: vec![],
                site_id: Uuid::nil(),
                access_until: None,
            },
            expires_at: Utc::now(),
            preshared_key: Some(key.clone()),
            dns: Vec::new(),
        };
        let granted = PortalToClient::AccessGranted {
            resource_id: Uuid::nil(),
            authorization_id: Uuid::nil(),
            gateway: GatewayInfo {
                id: "g".into(),
                name: "g".into(),
                public_key: None,
                endpoint: None,
                addresses,
            },
            expires_at: Utc::now(),
            preshared_key: Some(key.clone()),
            dns: Vec::new(),
        };
        for shown in [
            format!("{key:?}"),
            format!("{authorization:?}"),
            format!(
                "{:?}",
                PortalToGateway::Authorize {
                    authorization: authorization.clone()
                }
            ),
            format!("{granted:?}"),
        ] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
        }
        // The wire still carries it.
        assert!(crate::encode(&granted).contains(secret));
    }
}

#[cfg(test)]
mod dns_target_tests {
    use super::*;

    fn target(name: &str, v4: &str, v6: &str) -> DnsTarget {
        DnsTarget {
            name: name.into(),
            proxy_ipv4: v4.parse().unwrap(),
            proxy_ipv6: v6.parse().unwrap(),
        }
    }

    #[test]
    fn a_client_may_ask_only_for_names_its_resource_covers_through_proxy_addresses() {
        let proxy = |name| target(name, "198.18.1.0", "fd70:6f73:7465:726f::100");
        assert_eq!(
            proxy("db.svc.internal.test").check("*.svc.internal.test"),
            Ok(())
        );
        for (name, pattern) in [
            ("a.b.svc.internal.test", "*.svc.internal.test"),
            ("evil.example.com", "*.svc.internal.test"),
            ("*.svc.internal.test", "*.svc.internal.test"),
            ("DB.svc.internal.test", "*.svc.internal.test"),
        ] {
            assert!(proxy(name).check(pattern).is_err(), "{name}");
        }
        for (v4, v6) in [
            ("10.0.0.5", "fd70:6f73:7465:726f::100"),
            ("198.18.0.53", "fd70:6f73:7465:726f::100"),
            ("198.18.1.0", "fd00::5"),
        ] {
            assert!(
                target("app.internal.test", v4, v6)
                    .check("app.internal.test")
                    .is_err(),
                "{v4} {v6}"
            );
        }
    }
}
