//! Postern's Prometheus metrics. The names and help texts live here, one place for each; the
//! portal and the gateway record them through the `metrics` facade (a no-op until a recorder is
//! installed) and serve them on their own listener (`--metrics-listen`) with [`serve`].
//!
//! Every metric is listed, with its labels, in `docs/metrics.md`. Libraries record through the
//! facade with the names here; the binaries enable the `endpoint` feature for the recorder and
//! the HTTP listener, so that no library pulls in a server.

#[cfg(feature = "endpoint")]
mod endpoint;
#[cfg(feature = "endpoint")]
pub use endpoint::{bind, serve, Exporter, MetricsError};

/// Portal: open device sessions on this node (`kind`: client, gateway; `account`: its slug).
pub const SESSIONS: &str = "postern_sessions";
/// Portal: sessions opened (`kind`).
pub const SESSION_CONNECTS: &str = "postern_session_connects_total";
/// Portal: session upgrades refused (`kind`, `reason`).
pub const SESSION_REFUSALS: &str = "postern_session_refusals_total";
/// Portal: tokens refused (`surface`: api, client, gateway; `reason`).
pub const AUTH_FAILURES: &str = "postern_auth_failures_total";
/// Portal: a credential-revoking change reaching this node's account worker → the last
/// affected session's disconnect queued.
pub const REVOCATION_FANOUT: &str = "postern_revocation_fanout_seconds";
/// Portal: HTTP requests (`method`, `route` template, `status`).
pub const HTTP_REQUEST_DURATION: &str = "postern_http_request_duration_seconds";
/// Portal: database connections (`state`: idle, in_use).
pub const DB_POOL_CONNECTIONS: &str = "postern_db_pool_connections";
/// Portal: another node's change committed → applied on this one (PostgreSQL).
pub const CHANGE_EVENT_LAG: &str = "postern_change_event_lag_seconds";
/// Portal: live tokens expiring soon (`account`, `within`: 7d, 30d).
pub const TOKENS_EXPIRING: &str = "postern_tokens_expiring";
/// Portal: devices removed (`reason`: goodbye, vanished, stale).
pub const DEVICES_REMOVED: &str = "postern_devices_removed_total";
/// Portal: webhook delivery tries (`outcome`: delivered, retry, failed).
pub const WEBHOOK_DELIVERIES: &str = "postern_webhook_deliveries_total";
/// Portal: ID tokens presented for exchange (`outcome`: issued, renewed, refused, unavailable).
pub const WORKLOAD_IDENTITY_EXCHANGES: &str = "postern_workload_identity_exchanges_total";

/// Gateway: packets through the data plane (`direction`: from_clients, to_clients).
pub const GATEWAY_PACKETS: &str = "postern_gateway_packets_total";
/// Gateway: their bytes (IP packets, before encryption / after decryption).
pub const GATEWAY_BYTES: &str = "postern_gateway_bytes_total";
/// Gateway: packets and datagrams dropped (`reason`).
pub const GATEWAY_DROPS: &str = "postern_gateway_drops_total";
/// Gateway: WireGuard handshakes (`outcome`: completed, refused_bad, refused_under_load).
pub const GATEWAY_HANDSHAKES: &str = "postern_gateway_handshakes_total";
/// Gateway: WireGuard peers (clients with an authorization).
pub const GATEWAY_PEERS: &str = "postern_gateway_peers";
/// Gateway: authorizations held.
pub const GATEWAY_AUTHORIZATIONS: &str = "postern_gateway_authorizations";

/// Registers every metric's help text (and unit) with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(SESSIONS, "Open device sessions on this portal node");
    describe_counter!(
        SESSION_CONNECTS,
        "Device sessions opened on this portal node"
    );
    describe_counter!(
        SESSION_REFUSALS,
        "Device session upgrades refused, by reason"
    );
    describe_counter!(AUTH_FAILURES, "Tokens refused, by surface and reason");
    describe_histogram!(
        REVOCATION_FANOUT,
        Unit::Seconds,
        "From a revoking change reaching the account's worker to every affected session's disconnect queued"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request durations, by method, route template and status"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections, by state");
    describe_histogram!(
        CHANGE_EVENT_LAG,
        Unit::Seconds,
        "From another node's change committing to this node applying it"
    );
    describe_gauge!(TOKENS_EXPIRING, "Live tokens expiring within 7 or 30 days");
    describe_counter!(DEVICES_REMOVED, "Devices removed, by reason");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery tries by this node, by outcome"
    );
    describe_counter!(
        WORKLOAD_IDENTITY_EXCHANGES,
        "ID tokens presented for exchange to this node, by outcome"
    );
    describe_counter!(
        GATEWAY_PACKETS,
        "IP packets through the gateway, by direction"
    );
    describe_counter!(
        GATEWAY_BYTES,
        Unit::Bytes,
        "IP bytes through the gateway, by direction"
    );
    describe_counter!(
        GATEWAY_DROPS,
        "Packets and datagrams the gateway dropped, by reason"
    );
    describe_counter!(GATEWAY_HANDSHAKES, "WireGuard handshakes, by outcome");
    describe_gauge!(GATEWAY_PEERS, "WireGuard peers of the gateway");
    describe_gauge!(GATEWAY_AUTHORIZATIONS, "Authorizations the gateway holds");
}
