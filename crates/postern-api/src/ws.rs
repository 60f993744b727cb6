//! The WebSocket endpoints of headless clients and gateways: check the protocol version, the
//! device's parameters and its token, then run the session until the device leaves, the token
//! expires, or the hub ends it.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use postern_domain::DeviceKind;
use postern_protocol::{
    decode, encode, ClientToPortal, ConnectParams, DisconnectReason, GatewayToPortal,
    PortalToClient, PortalToGateway, CLIENT_PATH, GATEWAY_PATH, HEARTBEAT_INTERVAL,
    MAX_MESSAGE_BYTES, PEER_TIMEOUT, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use postern_sessions::{Hello, Outbound, SessionError, SessionHandle};
use postern_token::TokenKind;

use crate::error::ApiError;
use crate::extract::authenticate;
use crate::AppState;

/// Small socket buffers: a portal holds many idle sessions, each with its own.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// How long one write to a device may take: a device that stops reading is dropped, and its
/// session task ends, instead of holding its queue (and the portal's memory) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(CLIENT_PATH, get(client_socket))
        .route(GATEWAY_PATH, get(gateway_socket))
}

async fn client_socket(State(state): State<AppState>, request: Request) -> Response {
    upgrade(state, request, DeviceKind::Client).await
}

async fn gateway_socket(State(state): State<AppState>, request: Request) -> Response {
    upgrade(state, request, DeviceKind::Gateway).await
}

async fn upgrade(state: AppState, request: Request, kind: DeviceKind) -> Response {
    let (mut parts, _body) = request.into_parts();
    let hello = match admit(&parts, &state, kind).await {
        Ok(hello) => hello,
        Err(err) => return refused(kind, err).into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return ApiError::bad_request(None, "expected a WebSocket upgrade request")
                .into_response()
        }
    };
    let session = match kind {
        DeviceKind::Client => state.hub.connect_client(hello.clone()).await,
        DeviceKind::Gateway => state.hub.connect_gateway(hello.clone()).await,
    };
    let handle = match session {
        Ok(handle) => handle,
        Err(err) => {
            tracing::warn!(device = %hello.params.id, kind = kind.as_str(), error = %err, "could not open a session");
            return refused(kind, refusal(err)).into_response();
        }
    };
    metrics::counter!(postern_metrics::SESSION_CONNECTS, "kind" => kind.as_str()).increment(1);
    tracing::debug!(device = %hello.params.id, kind = kind.as_str(), "session opened");
    // The upgraded connection keeps its place among the listener's connections while it lives.
    let slot = parts
        .extensions
        .get::<crate::server::ConnectionSlot>()
        .cloned();
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            run(socket, handle, kind).await;
            drop(slot);
        })
}

/// Counts a refused upgrade by its problem type.
fn refused(kind: DeviceKind, err: ApiError) -> ApiError {
    metrics::counter!(
        postern_metrics::SESSION_REFUSALS,
        "kind" => kind.as_str(),
        "reason" => err.kind()
    )
    .increment(1);
    err
}

/// The answer to a device whose session was not opened. Only passing conditions are a 503
/// with `Retry-After`; a refusal that will not go away says so, and devices stop.
fn refusal(err: SessionError) -> ApiError {
    match err {
        SessionError::Unauthorized(postern_store::AuthError::Store(store)) => {
            // The token could not be checked again: the database's words stay in the log.
            tracing::warn!(error = %store, "cannot check a device's token");
            ApiError::unavailable("the portal cannot check the token right now; retry", 1)
        }
        SessionError::Unauthorized(auth) => ApiError::unauthorized(auth.to_string()),
        SessionError::Conflict(why) => ApiError::conflict(why),
        SessionError::Forbidden(why) => ApiError::forbidden(why),
        SessionError::DeviceRefused(why) => ApiError::device_refused(why),
        SessionError::TokenLimit(why) => ApiError::token_limit(why),
        SessionError::Unavailable(why) => ApiError::unavailable(why, 1),
        SessionError::Closed => ApiError::unavailable(err.to_string(), 1),
    }
}

/// Protocol version (426), device parameters (400), token (401): in that order, so an outdated
/// device learns that it must be upgraded whatever else is wrong.
async fn admit(parts: &Parts, state: &AppState, kind: DeviceKind) -> Result<Hello, ApiError> {
    let version = parts
        .headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    if version != Some(PROTOCOL_VERSION) {
        return Err(ApiError::upgrade_required(format!(
            "this portal speaks protocol version {PROTOCOL_VERSION} (header {PROTOCOL_HEADER}); \
             the device sent {}: upgrade the {}",
            version.map_or("none".to_string(), |v| v.to_string()),
            kind.as_str()
        )));
    }
    let query = parts.uri.query().unwrap_or_default();
    let params: ConnectParams = serde_urlencoded_params(query)?;
    params
        .validate()
        .map_err(|message| ApiError::bad_request(Some("query".to_string()), message))?;
    let token_kind = match kind {
        DeviceKind::Client => TokenKind::Client,
        DeviceKind::Gateway => TokenKind::Gateway,
    };
    let (principal, source_ip) = authenticate(parts, state, token_kind).await?;
    Ok(Hello {
        principal,
        params,
        source_ip,
    })
}

fn serde_urlencoded_params(query: &str) -> Result<ConnectParams, ApiError> {
    axum::extract::Query::<ConnectParams>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::bad_request(Some("query".into()), "malformed query"))?,
    )
    .map(|q| q.0)
    .map_err(|err| ApiError::bad_request(Some("query".to_string()), err.body_text()))
}

/// Carries one session: the hub's messages out (each write bounded by [`WRITE_TIMEOUT`]), the
/// device's messages in, heartbeats both ways. The hub ends it (revocation, the token's
/// expiry, shutdown) by queueing `Close` or dropping the queue.
async fn run(socket: WebSocket, mut handle: SessionHandle, kind: DeviceKind) {
    let (mut sink, mut stream) = socket.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let heartbeat_text = encode(&PortalToClient::Heartbeat);
    let ending: Option<(DisconnectReason, String)> = loop {
        tokio::select! {
            outbound = handle.outbound.recv() => match outbound {
                Some(Outbound::Text(text)) => {
                    if !send(&mut sink, Message::Text(text.as_ref().into())).await {
                        break None;
                    }
                }
                Some(Outbound::Close { reason, message }) => break Some((reason, message)),
                None => break None,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    last_heard = tokio::time::Instant::now();
                    if let Err(problem) = handle_incoming(&mut handle, kind, text.as_str()).await {
                        break Some((DisconnectReason::ProtocolError, problem));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = tokio::time::Instant::now(),
                Some(Ok(Message::Binary(_))) => {
                    break Some((DisconnectReason::ProtocolError, "binary frames are not part of the protocol".to_string()));
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= PEER_TIMEOUT {
                    tracing::debug!(session = %handle.id, "device silent for too long; closing");
                    break None;
                }
                if !send(&mut sink, Message::Text(heartbeat_text.as_str().into())).await {
                    break None;
                }
            },
        }
    };
    if let Some((reason, message)) = ending {
        let text = match kind {
            DeviceKind::Client => encode(&PortalToClient::Disconnect { reason, message }),
            DeviceKind::Gateway => encode(&PortalToGateway::Disconnect { reason, message }),
        };
        let _ = send(&mut sink, Message::Text(text.into())).await;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}

/// Sends one frame within [`WRITE_TIMEOUT`]; false when the device is gone or too slow.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: Message,
) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await,
        Ok(Ok(()))
    )
}

async fn handle_incoming(
    handle: &mut SessionHandle,
    kind: DeviceKind,
    text: &str,
) -> Result<(), String> {
    match kind {
        DeviceKind::Client => match decode::<ClientToPortal>(text).map_err(|e| e.to_string())? {
            ClientToPortal::RequestAccess { resource_id, dns } => {
                handle.request_access(resource_id, dns).await
            }
            ClientToPortal::Heartbeat => {}
            ClientToPortal::Goodbye => handle.goodbye(),
        },
        DeviceKind::Gateway => match decode::<GatewayToPortal>(text).map_err(|e| e.to_string())? {
            GatewayToPortal::Heartbeat => {}
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_error_is_not_told_to_the_device() {
        let leak = "relation \"tokens\" does not exist at 10.0.0.7:5432";
        let err = SessionError::Unauthorized(postern_store::AuthError::Store(
            postern_store::StoreError::Database(sqlx::Error::Protocol(leak.into())),
        ));
        let response = refusal(err).into_response();
        assert_eq!(
            response.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("relation") && !text.contains("10.0.0.7"),
            "{text}"
        );
        assert!(text.contains("retry"), "{text}");
    }

    #[test]
    fn a_device_key_is_parsed_where_it_comes_in() {
        let key = postern_protocol::WireGuardKey::from_bytes([9; 32]);
        let encoded = key.to_string().replace('=', "%3D").replace('+', "%2B");
        let params =
            serde_urlencoded_params(&format!("id=d&name=d&version=1&public_key={encoded}"))
                .expect("a well-formed key");
        assert_eq!(params.public_key, Some(key));
        for bad in ["c2hvcnQ%3D", "owner-key", "AAAA"] {
            let Err(err) =
                serde_urlencoded_params(&format!("id=d&name=d&version=1&public_key={bad}"))
            else {
                panic!("{bad} was taken for a key");
            };
            let response = err.into_response();
            assert_eq!(
                response.status(),
                axum::http::StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
