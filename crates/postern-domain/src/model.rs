//! The entities of an account. Every entity carries the `account_id` it belongs to.

use chrono::{DateTime, Utc};
use postern_policy::{Condition, Filter};
use postern_token::TokenKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A fresh, time-ordered identifier (UUIDv7), so that ordering by id is ordering by creation.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Account {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub settings: AccountSettings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AccountSettings {
    /// The longest lifetime, in days, that a new token of this account may have.
    #[schema(minimum = 1, maximum = 36500)]
    #[serde(deserialize_with = "postern_policy::json::whole_number")]
    pub max_token_lifetime_days: u32,
    /// How long after its last session ended an ephemeral client device that did not say
    /// goodbye (it crashed, or lost its network) is removed, in seconds.
    #[schema(minimum = 1, maximum = 2592000)]
    #[serde(
        default = "default_ephemeral_timeout",
        deserialize_with = "postern_policy::json::whole_number"
    )]
    pub ephemeral_device_timeout_seconds: u32,
    /// Devices (not ephemeral) unseen for this many days are removed.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(
        default = "default_stale_device_days",
        deserialize_with = "postern_policy::json::whole_number"
    )]
    pub stale_device_days: u32,
    /// Tokens expiring within this many days are shown as expiring soon (badges, the list of
    /// expiring tokens, `GET /v1/tokens?expiring=true`).
    #[schema(minimum = 1, maximum = 365)]
    #[serde(
        default = "default_token_expiry_warning_days",
        deserialize_with = "postern_policy::json::whole_number"
    )]
    pub token_expiry_warning_days: u32,
}

fn default_token_expiry_warning_days() -> u32 {
    crate::rules::DEFAULT_TOKEN_EXPIRY_WARNING_DAYS
}

fn default_ephemeral_timeout() -> u32 {
    crate::rules::DEFAULT_EPHEMERAL_DEVICE_TIMEOUT_SECONDS
}

fn default_stale_device_days() -> u32 {
    crate::rules::DEFAULT_STALE_DEVICE_DAYS
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            max_token_lifetime_days: crate::rules::DEFAULT_MAX_TOKEN_LIFETIME_DAYS,
            ephemeral_device_timeout_seconds: default_ephemeral_timeout(),
            stale_device_days: default_stale_device_days(),
            token_expiry_warning_days: default_token_expiry_warning_days(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    Admin,
    ServiceAccount,
    ApiClient,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Admin => "admin",
            ActorType::ServiceAccount => "service_account",
            ActorType::ApiClient => "api_client",
        }
    }

    /// For messages: "a user", "an admin", "a service account", "an API client".
    pub fn described(self) -> &'static str {
        match self {
            ActorType::User => "a user",
            ActorType::Admin => "an admin",
            ActorType::ServiceAccount => "a service account",
            ActorType::ApiClient => "an API client",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => ActorType::User,
            "admin" => ActorType::Admin,
            "service_account" => ActorType::ServiceAccount,
            "api_client" => ActorType::ApiClient,
            _ => return None,
        })
    }

    /// People are members of `Everyone`; machines (service accounts, API clients) never are.
    pub fn joins_everyone(self) -> bool {
        matches!(self, ActorType::User | ActorType::Admin)
    }

    /// The kind of token this actor type authenticates with, if it holds tokens at all.
    pub fn token_kind(self) -> Option<TokenKind> {
        match self {
            ActorType::ServiceAccount => Some(TokenKind::Client),
            ActorType::ApiClient => Some(TokenKind::Api),
            ActorType::User | ActorType::Admin => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    pub account_id: Uuid,
    #[serde(rename = "type")]
    pub actor_type: ActorType,
    pub name: String,
    pub email: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Actor {
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Membership is managed by hand (API, CLI, web UI).
    Static,
    /// The built-in `Everyone` group: every user and admin, managed by the portal.
    Everyone,
    /// Synced from an identity provider's directory (SCIM): its name and members change there;
    /// it holds that directory's people only, never a service account.
    Directory,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Static => "static",
            GroupKind::Everyone => "everyone",
            GroupKind::Directory => "directory",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "static" => Some(GroupKind::Static),
            "everyone" => Some(GroupKind::Everyone),
            "directory" => Some(GroupKind::Directory),
            _ => None,
        }
    }
}

pub const EVERYONE_GROUP_NAME: &str = "Everyone";

/// Where devices' tunnel addresses come from: 100.64.0.0/10 (the shared address space), and the
/// ULA fd70:6f73:7465:726e::/64 ("postern" in the global id) whose low 32 bits are the IPv4 one.
pub const TUNNEL_IPV4_NETWORK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 0);
pub const TUNNEL_IPV4_PREFIX_LEN: u8 = 10;
pub const TUNNEL_IPV6_NETWORK: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd70, 0x6f73, 0x7465, 0x726e, 0, 0, 0, 0);
pub const TUNNEL_IPV6_PREFIX_LEN: u8 = 64;

/// Where a client's stub resolver listens and its DNS resources' proxy addresses come from:
/// 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the Internet; the fake-IP range
/// of Clash and sing-box), and the ULA fd70:6f73:7465:726f::/64 beside the tunnel one. The
/// first /24 (and its IPv6 counterpart) is for the resolver itself and what may join it.
pub const DNS_IPV4_NETWORK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 0);
pub const DNS_IPV4_PREFIX_LEN: u8 = 15;
pub const DNS_IPV6_NETWORK: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd70, 0x6f73, 0x7465, 0x726f, 0, 0, 0, 0);
pub const DNS_IPV6_PREFIX_LEN: u8 = 64;
/// The resolver of the gateway that serves a client's Internet resource, reached through the
/// tunnel (the client's names that are not DNS resources go there while its full tunnel is on):
/// 198.18.0.54 and fd70:6f73:7465:726f::54.
pub const GATEWAY_RESOLVER_IPV4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 54);
pub const GATEWAY_RESOLVER_IPV6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd70, 0x6f73, 0x7465, 0x726f, 0, 0, 0, 0x54);

/// Whether `address` is a gateway's resolver for its Internet resource's clients.
pub fn is_gateway_resolver(address: std::net::IpAddr) -> bool {
    match address {
        std::net::IpAddr::V4(v4) => v4 == GATEWAY_RESOLVER_IPV4,
        std::net::IpAddr::V6(v6) => v6 == GATEWAY_RESOLVER_IPV6,
    }
}

/// The stub resolver's addresses on a client: 198.18.0.53 and fd70:6f73:7465:726f::53.
pub const DNS_RESOLVER_IPV4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 53);
pub const DNS_RESOLVER_IPV6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd70, 0x6f73, 0x7465, 0x726f, 0, 0, 0, 0x53);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Group {
    pub id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub kind: GroupKind,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Membership {
    pub group_id: Uuid,
    pub actor_id: Uuid,
    pub actor_name: String,
    pub actor_type: ActorType,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Site {
    pub id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Cidr,
    Ip,
    Dns,
    /// Everywhere else: the full tunnel through a site's gateways (one per account; a client
    /// uses it only when started with `--internet`).
    Internet,
}

/// The address of every Internet resource: every address of both families.
pub const INTERNET_ADDRESS: &str = "0.0.0.0/0, ::/0";

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Cidr => "cidr",
            ResourceType::Ip => "ip",
            ResourceType::Dns => "dns",
            ResourceType::Internet => "internet",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cidr" => Some(ResourceType::Cidr),
            "ip" => Some(ResourceType::Ip),
            "dns" => Some(ResourceType::Dns),
            "internet" => Some(ResourceType::Internet),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Resource {
    pub id: Uuid,
    pub account_id: Uuid,
    pub site_id: Uuid,
    #[serde(rename = "type")]
    pub resource_type: ResourceType,
    pub name: String,
    pub address: String,
    pub description: Option<String>,
    pub filters: Vec<Filter>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Policy {
    pub id: Uuid,
    pub account_id: Uuid,
    pub group_id: Uuid,
    pub resource_id: Uuid,
    pub description: Option<String>,
    pub conditions: Vec<Condition>,
    pub disabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who holds a token: a kind of actor, or a site (gateway tokens).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HolderType {
    User,
    Admin,
    ServiceAccount,
    ApiClient,
    Site,
}

/// A token's record. The secret is never part of it: only its keyed hash is stored, and the
/// full token string exists once, in the response that created it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Token {
    pub id: Uuid,
    pub account_id: Uuid,
    /// `client` (service-account headless client), `gateway` or `api`.
    #[schema(value_type = String)]
    #[serde(with = "token_kind_serde")]
    pub kind: TokenKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub last_used_user_agent: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<Uuid>,
    /// Limits for a fleet sharing the token (service-account tokens only).
    #[serde(flatten)]
    pub guardrails: TokenGuardrails,
    /// The token this one replaced by rotation, if any.
    #[serde(default)]
    pub rotated_from: Option<Uuid>,
    /// The token that replaces this one (it was rotated): this one keeps working until
    /// `expires_at`, the end of the overlap window, and the clients connected with it are
    /// handed the successor meanwhile.
    #[serde(default)]
    pub successor_id: Option<Uuid>,
    /// When this token was rotated.
    #[serde(default)]
    pub rotated_at: Option<DateTime<Utc>>,
    /// The trust rule this token was exchanged under (workload identity federation), if any:
    /// deleting the rule revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity_id: Option<Uuid>,
}

/// Limits on one service-account token, for a fleet of machines sharing it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TokenGuardrails {
    /// At most this many client devices hold a session on the token at once; the next one is
    /// refused (the client exits 5). `null`: no limit.
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_clients: Option<u32>,
    /// Sessions only from these networks (the client's address as the portal sees it, behind
    /// its trusted proxies); others are refused (the client exits 4). Empty: from anywhere.
    #[schema(value_type = Vec<String>, example = json!(["10.0.0.0/8", "203.0.113.7/32"]))]
    #[serde(default)]
    pub allowed_source_cidrs: Vec<ipnet::IpNet>,
    /// A device new to the portal connects with this token but is granted nothing until an
    /// administrator approves it (`POST /v1/clients/{id}/approve`).
    #[serde(default)]
    pub require_approval: bool,
    /// Every device connecting with this token is ephemeral (as if started with
    /// `--ephemeral`): removed when it stops, or a while after it vanished.
    #[serde(default)]
    pub ephemeral: bool,
}

impl TokenGuardrails {
    /// Whether a session may come from `source` (unknown: only when any address may).
    pub fn allows_source(&self, source: Option<std::net::IpAddr>) -> bool {
        if self.allowed_source_cidrs.is_empty() {
            return true;
        }
        source.is_some_and(|ip| {
            self.allowed_source_cidrs
                .iter()
                .any(|net| net.contains(&ip))
        })
    }

    pub fn is_set(&self) -> bool {
        *self != TokenGuardrails::default()
    }
}

impl Token {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

mod token_kind_serde {
    use postern_token::TokenKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &TokenKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TokenKind, D::Error> {
        let s = String::deserialize(d)?;
        TokenKind::parse_str(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown token kind '{s}'")))
    }
}

#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Client,
    Gateway,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Client => "client",
            DeviceKind::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(DeviceKind::Client),
            "gateway" => Some(DeviceKind::Gateway),
            _ => None,
        }
    }
}

/// An authorization given to a gateway, as the session hub stores it: who holds it, where it
/// applies, until when, and its document (opaque to everyone but the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuthorization {
    pub id: Uuid,
    pub token_id: Uuid,
    pub gateway_device_id: String,
    pub expires_at: DateTime<Utc>,
    pub body: serde_json::Value,
}

/// A headless client or gateway that has opened a session with the portal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Device {
    pub id: Uuid,
    pub account_id: Uuid,
    pub kind: DeviceKind,
    /// The id the device chose (`--id`), stable across its restarts.
    pub device_id: String,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    /// The token of its latest session.
    pub token_id: Option<Uuid>,
    pub name: String,
    pub version: Option<String>,
    /// Its WireGuard public key (base64), when it has a data plane.
    #[schema(value_type = Option<String>)]
    pub public_key: Option<crate::WireGuardKey>,
    #[schema(value_type = String)]
    pub ipv4: std::net::Ipv4Addr,
    #[schema(value_type = String)]
    pub ipv6: std::net::Ipv6Addr,
    pub last_seen_ip: Option<String>,
    pub last_seen_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When an administrator approved it, or when it was first seen on a token that does not
    /// require approval; `null`: it waits for approval (it holds a session and nothing else).
    pub approved_at: Option<DateTime<Utc>>,
    /// Removed when it stops (it says goodbye), or the account's
    /// `ephemeral_device_timeout_seconds` after its last session ended.
    #[serde(default)]
    pub ephemeral: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub account_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// The actor who acted, when known.
    pub actor_id: Option<Uuid>,
    /// The token the actor authenticated with, when known (its id, never its secret).
    pub token_id: Option<Uuid>,
    pub source_ip: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Who performed an operation, as recorded in the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acting {
    pub actor_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub source_ip: Option<String>,
}

impl Acting {
    /// A local administration command run on the portal host (no actor, no token).
    pub fn local_cli() -> Self {
        Self {
            actor_id: None,
            token_id: None,
            source_ip: Some("local".to_string()),
        }
    }
}
