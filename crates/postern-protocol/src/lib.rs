//! The control-session protocol between the portal and its headless clients and gateways.
//!
//! One WebSocket per device carries JSON text messages ([`messages`]). Everything that decides
//! something — decoding with size limits, connection lifecycle, heartbeats, reconnect backoff,
//! the client's view of its resources, the gateway's authorizations — is sans-IO: state
//! machines fed with events and the current instant, returning what to do. The binaries own the
//! sockets and the clock.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod connection;
pub mod gateway;
pub mod messages;
pub mod transport;

pub use codec::{decode, encode, CodecError, MAX_MESSAGE_BYTES};
pub use messages::*;

/// The protocol version this build speaks. A portal refuses other versions with HTTP 426 and a
/// message telling the device to upgrade.
pub const PROTOCOL_VERSION: u32 = 1;
/// The request header that carries [`PROTOCOL_VERSION`] on the WebSocket upgrade.
pub const PROTOCOL_HEADER: &str = "x-postern-protocol";
/// The problem type (RFC 9457) of an upgrade refused (HTTP 403) because of the device, not its
/// token: a blocked device. Devices exit with [`connection::exit_code::DEVICE_REFUSED`] and do not retry.
pub const DEVICE_REFUSED_PROBLEM: &str = "urn:postern:problem:device-refused";
/// The problem type of an upgrade refused (HTTP 403) because the token already serves its
/// `max_clients` devices. Devices exit with [`connection::exit_code::TOKEN_LIMIT`].
pub const TOKEN_LIMIT_PROBLEM: &str = "urn:postern:problem:token-limit";
/// Where headless clients connect.
pub const CLIENT_PATH: &str = "/v1/client/websocket";
/// Where gateways connect.
pub const GATEWAY_PATH: &str = "/v1/gateway/websocket";
/// How often each side sends a heartbeat.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Silence after which the peer is taken for dead (three missed heartbeats).
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
