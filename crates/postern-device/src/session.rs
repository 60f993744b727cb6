//! The I/O shell around [`Connection`]: opens the WebSocket, feeds the state machine with what
//! happens and the clock, carries out its actions, and hands the portal's messages to the role
//! (client or gateway). Decisions stay in `postern-protocol`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use postern_protocol::connection::{exit_code, Action, ConnectFailure, Connection};
use postern_protocol::{
    DisconnectReason, DEVICE_REFUSED_PROBLEM, PROTOCOL_HEADER, PROTOCOL_VERSION,
    TOKEN_LIMIT_PROBLEM,
};
use postern_token::SecretString;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, RETRY_AFTER, USER_AGENT};
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, error, info, warn};
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::config::{replace_token_file, session_url, DeviceConfig};
use crate::status::{write_status, ConnectionState, Status, TokenRotation};
use crate::workload::{self, IdTokenSource, Renewal};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connection attempt (TCP, TLS, upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for the portal to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of an error body goes into a message.
const MAX_DETAIL_CHARS: usize = 300;

/// What a client or gateway does with its session; the loop does the rest.
pub trait Role {
    /// Messages from the portal.
    type Incoming: DeserializeOwned;
    /// Messages to the portal.
    type Outgoing: Serialize;
    /// The role's part of the status file.
    type Details: Serialize;

    /// The endpoint path (`CLIENT_PATH` or `GATEWAY_PATH`).
    const PATH: &'static str;
    /// The program name, for `User-Agent` and the status file check.
    const PROGRAM: &'static str;

    fn heartbeat() -> Self::Outgoing;
    /// What the device says before it closes the session on a clean stop, if anything.
    fn goodbye() -> Option<Self::Outgoing> {
        None
    }
    /// `Some` when the message is the portal's `Disconnect`.
    fn disconnect(message: &Self::Incoming) -> Option<(DisconnectReason, String)>;
    /// `Some` when the message hands over a successor of the device's token (a rotation).
    fn successor(_message: &Self::Incoming) -> Option<Successor> {
        None
    }
    /// Applies a message (never a `Disconnect`); returns whether the state changed.
    fn on_message(&mut self, message: Self::Incoming) -> bool;
    /// When `on_wakeup` is next due (an expiry), if ever.
    fn next_wakeup(&self) -> Option<DateTime<Utc>>;
    /// Returns whether the state changed.
    fn on_wakeup(&mut self, now: DateTime<Utc>) -> bool;
    fn details(&self) -> Self::Details;
    /// Messages the role sends on its own initiative (a client's access requests), if any.
    /// They wait while there is no session and go out once connected.
    fn outbox(&mut self) -> Option<&mut tokio::sync::mpsc::UnboundedReceiver<Self::Outgoing>> {
        None
    }
}

async fn next_outgoing<R: Role>(role: &mut R) -> Option<R::Outgoing> {
    match role.outbox() {
        Some(outbox) => outbox.recv().await,
        None => std::future::pending().await,
    }
}

/// The successor of the device's token, handed over by the portal when the token was rotated.
#[derive(Debug)]
pub struct Successor {
    pub token_id: Uuid,
    pub secret: SecretString,
    pub expires_at: DateTime<Utc>,
    /// When the token the device holds now stops working.
    pub replaced_token_expires_at: DateTime<Utc>,
}

/// How the session ended: the process exit code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub message: Option<String>,
}

/// Resolves on the first SIGTERM or SIGINT. Must be called inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name} received: closing the session");
    })
}

/// Runs the session with the portal until the state machine says to exit or `shutdown`
/// resolves (then the socket is closed cleanly and the outcome is exit code 0).
pub async fn run<R: Role>(
    mut config: DeviceConfig,
    role: &mut R,
    shutdown: impl Future<Output = ()>,
) -> Outcome {
    // Several rustls providers may be compiled in; pick one explicitly instead of panicking.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::pin!(shutdown);
    let mut shutdown: Pin<&mut _> = shutdown;
    let urls: Vec<Url> = config
        .portals
        .iter()
        .map(|base| session_url(base, R::PATH, &config.params))
        .collect();
    let mut portals = Rotation::new(urls.len());
    let mut status = StatusWriter::new(&config);
    let mut conn = Connection::new(Instant::now(), config.max_partition);
    let mut rng = StdRng::from_entropy();
    let mut next = Action::Connect;
    let mut renewals = config.exchanged.take().map(|(exchanger, first)| {
        let renewal = Renewal {
            token: first.clone(),
            last_error: None,
        };
        status.workload_source = Some(exchanger.source().clone());
        status.workload_identity = Some(renewal.status(exchanger.source()));
        let (sender, receiver) = watch::channel(renewal);
        tokio::spawn(workload::renew(exchanger, first, sender));
        receiver
    });
    loop {
        next = match next {
            Action::Connect => {
                if let Some(renewed) = renewals
                    .as_mut()
                    .filter(|receiver| receiver.has_changed().unwrap_or(false))
                    .map(|receiver| receiver.borrow_and_update().clone())
                {
                    adopt_exchanged(&mut config, renewed, &mut status);
                }
                status.set(ConnectionState::Connecting, None);
                status.write(role);
                let portal = &config.portals[portals.current];
                status.portal = portal.to_string();
                debug!(%portal, "connecting");
                let attempt = connect(
                    &urls[portals.current],
                    &config.token.secret,
                    R::PROGRAM,
                    config.tls.clone(),
                );
                let Some(result) = with_timers(attempt, role, &mut status, shutdown.as_mut()).await
                else {
                    return status.stopped(role);
                };
                match result {
                    Err(failure) => {
                        let action = conn.on_connect_failed(Instant::now(), failure, &mut rng);
                        match action {
                            Action::Reconnect { why, .. } if portals.try_next_now() => {
                                warn!(%portal, "{why}; trying the next portal node");
                                Action::Connect
                            }
                            Action::Reconnect { after, why } => {
                                portals.next_round();
                                Action::Reconnect { after, why }
                            }
                            other => other,
                        }
                    }
                    Ok(ws) => {
                        conn.on_connected(Instant::now());
                        status.last_error = None;
                        status.set(ConnectionState::Connected, None);
                        status.write(role);
                        info!(%portal, "connected to the portal");
                        let mut successor = None;
                        let mut renewed = None;
                        let end = session(
                            ws,
                            &mut conn,
                            role,
                            &mut status,
                            shutdown.as_mut(),
                            &mut rng,
                            Replacements {
                                successor: &mut successor,
                                renewals: &mut renewals,
                                renewed: &mut renewed,
                            },
                        )
                        .await;
                        if let Some(successor) = successor {
                            adopt_successor(&mut config, successor, &mut status);
                        }
                        if let Some(renewed) = renewed {
                            adopt_exchanged(&mut config, renewed, &mut status);
                        }
                        match end {
                            Some(action @ Action::Reconnect { .. }) => {
                                // The node may be gone: the next attempt goes to another one.
                                portals.next_round();
                                action
                            }
                            Some(action) => action,
                            None => return status.stopped(role),
                        }
                    }
                }
            }
            Action::Reconnect { after, why } => {
                warn!("{why}; reconnecting in {:.1} s", after.as_secs_f64());
                status.last_error = Some(why);
                let retry_at = chrono::Duration::from_std(after)
                    .ok()
                    .map(|after| Utc::now() + after);
                status.set(ConnectionState::Waiting, retry_at);
                status.write(role);
                let Some(action) =
                    wait(&mut conn, role, &mut status, shutdown.as_mut(), &mut rng).await
                else {
                    return status.stopped(role);
                };
                action
            }
            // Only asked for while connected, which `session` handles; never here.
            Action::SendHeartbeat => Action::Connect,
            Action::Exit { code, message } => {
                status.last_error = Some(message.clone());
                status.exit_code = Some(code);
                status.set(ConnectionState::Stopped, None);
                status.write(role);
                return Outcome {
                    code,
                    message: Some(message),
                };
            }
        };
    }
}

/// Which portal node to try: each round tries every node once in order without waiting; the
/// next round, after the connection's backoff, starts from the node after the last one tried.
#[derive(Debug)]
struct Rotation {
    count: usize,
    current: usize,
    /// Nodes not yet tried in this round.
    untried: usize,
}

impl Rotation {
    fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            current: 0,
            untried: count.saturating_sub(1),
        }
    }

    /// Moves to the next node if this round has one left.
    fn try_next_now(&mut self) -> bool {
        if self.untried == 0 {
            return false;
        }
        self.untried -= 1;
        self.current = (self.current + 1) % self.count;
        true
    }

    /// Starts a new round at the next node.
    fn next_round(&mut self) {
        self.current = (self.current + 1) % self.count;
        self.untried = self.count - 1;
    }
}

/// Waits out a reconnect delay; `None` on shutdown.
async fn wait<R: Role, S: Future<Output = ()>>(
    conn: &mut Connection,
    role: &mut R,
    status: &mut StatusWriter,
    mut shutdown: Pin<&mut S>,
    rng: &mut StdRng,
) -> Option<Action> {
    loop {
        let Some(deadline) = conn.poll_timeout() else {
            return Some(Action::Connect);
        };
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        with_timers(sleep, role, status, shutdown.as_mut()).await?;
        let action = conn.handle_timeout(Instant::now(), rng);
        if let Some(action @ (Action::Connect | Action::Exit { .. })) = action {
            return Some(action);
        }
    }
}

/// Awaits `future` while keeping the role's expiry timer; `None` on shutdown.
async fn with_timers<R: Role, F: Future, S: Future<Output = ()>>(
    future: F,
    role: &mut R,
    status: &mut StatusWriter,
    mut shutdown: Pin<&mut S>,
) -> Option<F::Output> {
    tokio::pin!(future);
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            output = &mut future => return Some(output),
            _ = sleep_until_wakeup(role.next_wakeup()) => {
                if role.on_wakeup(Utc::now()) {
                    status.write(role);
                }
            }
        }
    }
}

async fn sleep_until_wakeup(at: Option<DateTime<Utc>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let delay = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::sleep(delay).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

enum Event {
    Shutdown,
    Renewed(Renewal),
    Timer,
    Wakeup,
    Outgoing(String),
    Frame(Option<Result<Message, WsError>>),
}

/// Takes a token exchanged anew for the workload's ID token (it lives only in memory).
fn adopt_exchanged(config: &mut DeviceConfig, renewal: Renewal, status: &mut StatusWriter) {
    if let Some(source) = &status.workload_source {
        status.workload_identity = Some(renewal.status(source));
    }
    let token = renewal.token;
    if token.token_id == config.token.id {
        return;
    }
    debug!(token = %token.token_id, replaced = %config.token.id, "reconnecting with the renewed token");
    status.token_id = token.token_id;
    config.token.id = token.token_id;
    config.token.secret = token.secret;
}

/// What may replace the device's token during a session: a successor the portal hands over
/// (`successor`), or a token the renewal task exchanged (`renewals`, taken into `renewed`).
struct Replacements<'a> {
    successor: &'a mut Option<Successor>,
    renewals: &'a mut Option<watch::Receiver<Renewal>>,
    renewed: &'a mut Option<Renewal>,
}

/// The next token the renewal task publishes; never, without one.
async fn next_renewal(renewals: &mut Option<watch::Receiver<Renewal>>) -> Renewal {
    let Some(receiver) = renewals else {
        return std::future::pending().await;
    };
    match receiver.changed().await {
        Ok(()) => receiver.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

/// Takes a successor of the device's token: it is written to the token file (when the token
/// came from one) and used for every connection from now on. The secret is never logged.
fn adopt_successor(config: &mut DeviceConfig, successor: Successor, status: &mut StatusWriter) {
    let replaced = config.token.id;
    let (persisted, action_needed) = match &config.token.file {
        Some(path) => match replace_token_file(path, &successor.secret) {
            Ok(()) => {
                info!(
                    token = %successor.token_id,
                    replaced = %replaced,
                    "the token was rotated: its successor is in {}",
                    path.display()
                );
                (true, None)
            }
            Err(err) => {
                let why = format!(
                    "the token was rotated but its successor could not be written to {}: {err}; \
                     this client uses it until it stops, but must be given the new token by hand \
                     before {}",
                    path.display(),
                    successor.replaced_token_expires_at.to_rfc3339()
                );
                error!(token = %successor.token_id, "{why}");
                (false, Some(why))
            }
        },
        None => {
            let why = format!(
                "the token was rotated, and this client uses its successor {} until it stops, but \
                 it came from {} and cannot be persisted: give the client the new token \
                 (`postern tokens rotate` showed it) before the old one stops working at {}",
                successor.token_id,
                config.token.origin,
                successor.replaced_token_expires_at.to_rfc3339()
            );
            warn!("{why}");
            (false, Some(why))
        }
    };
    status.token_rotation = Some(TokenRotation {
        at: Utc::now(),
        replaced_token_id: replaced,
        replaced_token_expires_at: successor.replaced_token_expires_at,
        token_id: successor.token_id,
        expires_at: successor.expires_at,
        persisted,
        action_needed,
    });
    config.token.id = successor.token_id;
    config.token.secret = successor.secret;
}

/// A successor as the portal sent it, if it is a well-formed token of the kind the device
/// uses, with the id it claims, and not the token the device holds already.
fn checked_successor(successor: Successor, current: Uuid) -> Option<Successor> {
    let parsed = postern_token::parse(successor.secret.expose()).ok()?;
    if parsed.id != successor.token_id || successor.token_id == current {
        return None;
    }
    Some(successor)
}

/// Runs one open session; returns the next action, or `None` on shutdown. A successor of the
/// token, or a renewed one, ends the session (to connect again with it at once) and is put in
/// `replacements`.
async fn session<R: Role, S: Future<Output = ()>>(
    ws: Ws,
    conn: &mut Connection,
    role: &mut R,
    status: &mut StatusWriter,
    mut shutdown: Pin<&mut S>,
    rng: &mut StdRng,
    replacements: Replacements<'_>,
) -> Option<Action> {
    let Replacements {
        successor,
        renewals,
        renewed,
    } = replacements;
    let (mut sink, mut stream) = ws.split();
    loop {
        let wakeup = role.next_wakeup();
        let event = tokio::select! {
            _ = shutdown.as_mut() => Event::Shutdown,
            token = next_renewal(renewals) => Event::Renewed(token),
            _ = sleep_until_opt(conn.poll_timeout()) => Event::Timer,
            _ = sleep_until_wakeup(wakeup) => Event::Wakeup,
            Some(message) = next_outgoing(role) => {
                Event::Outgoing(postern_protocol::encode(&message))
            }
            frame = stream.next() => Event::Frame(frame),
        };
        let now = Instant::now();
        let text = match event {
            Event::Shutdown => {
                if let Some(goodbye) = R::goodbye() {
                    let text = postern_protocol::encode(&goodbye);
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Text(text.into())))
                            .await;
                }
                close(&mut sink, &mut stream).await;
                return None;
            }
            Event::Wakeup => {
                if role.on_wakeup(Utc::now()) {
                    status.write(role);
                }
                continue;
            }
            Event::Renewed(renewal) if renewal.token.token_id == status.token_id => {
                // A failed renewal: the status says so; the session goes on.
                if let Some(source) = &status.workload_source {
                    status.workload_identity = Some(renewal.status(source));
                }
                status.write(role);
                continue;
            }
            Event::Renewed(renewal) => {
                info!(token = %renewal.token.token_id, "the token was renewed: reconnecting with it");
                *renewed = Some(renewal);
                close(&mut sink, &mut stream).await;
                return Some(conn.on_token_replaced(Instant::now()));
            }
            Event::Outgoing(text) => {
                if let Err(err) = sink.send(Message::text(text)).await {
                    debug!("sending a message failed: {err}");
                    return Some(conn.on_disconnected(Instant::now(), None, rng));
                }
                continue;
            }
            Event::Timer => match conn.handle_timeout(now, rng) {
                Some(Action::SendHeartbeat) => {
                    let heartbeat = postern_protocol::encode(&R::heartbeat());
                    if let Err(err) = sink.send(Message::text(heartbeat)).await {
                        debug!("sending a heartbeat failed: {err}");
                        return Some(conn.on_disconnected(Instant::now(), None, rng));
                    }
                    continue;
                }
                Some(action @ (Action::Reconnect { .. } | Action::Exit { .. })) => {
                    close(&mut sink, &mut stream).await;
                    return Some(action);
                }
                Some(Action::Connect) | None => continue,
            },
            Event::Frame(None) => {
                debug!("the portal closed the connection");
                return Some(conn.on_disconnected(now, None, rng));
            }
            Event::Frame(Some(Err(err))) => {
                debug!("the connection failed: {err}");
                return Some(conn.on_disconnected(now, None, rng));
            }
            Event::Frame(Some(Ok(Message::Close(frame)))) => {
                debug!(?frame, "the portal closed the session");
                return Some(conn.on_disconnected(now, None, rng));
            }
            Event::Frame(Some(Ok(Message::Text(text)))) => {
                conn.on_received(now);
                text
            }
            Event::Frame(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                conn.on_received(now);
                continue;
            }
            Event::Frame(Some(Ok(Message::Binary(_)))) => {
                warn!("the portal sent a binary frame; this protocol only uses text");
                close(&mut sink, &mut stream).await;
                let why = "the portal sent a binary frame".to_string();
                return Some(conn.on_disconnected(
                    now,
                    Some((DisconnectReason::ProtocolError, why)),
                    rng,
                ));
            }
        };
        let message = match postern_protocol::decode::<R::Incoming>(text.as_str()) {
            Ok(message) => message,
            Err(err) => {
                warn!("malformed message from the portal: {err}");
                close(&mut sink, &mut stream).await;
                let why = format!("the portal sent a malformed message ({err})");
                return Some(conn.on_disconnected(
                    now,
                    Some((DisconnectReason::ProtocolError, why)),
                    rng,
                ));
            }
        };
        if let Some((reason, text)) = R::disconnect(&message) {
            let reason_name = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            info!(reason = %reason_name, "the portal ended the session: {text}");
            close(&mut sink, &mut stream).await;
            return Some(conn.on_disconnected(now, Some((reason, text)), rng));
        }
        if let Some(next) = R::successor(&message) {
            let current = status.token_id;
            match checked_successor(next, current) {
                Some(next) => {
                    info!(token = %next.token_id, "the portal handed over a successor of the token: reconnecting with it");
                    status.token_id = next.token_id;
                    *successor = Some(next);
                    close(&mut sink, &mut stream).await;
                    return Some(conn.on_token_replaced(Instant::now()));
                }
                None => {
                    debug!("ignoring a successor that is this token or not a token");
                    continue;
                }
            }
        }
        if role.on_message(message) {
            status.write(role);
        }
    }
}

/// Sends a close frame and waits briefly for the portal's, so neither side sees an abrupt end.
async fn close<K, St>(sink: &mut K, stream: &mut St)
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
    St: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if sink.send(Message::Close(None)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Opens the WebSocket: the token in the `Authorization` header, never in the URL.
async fn connect(
    url: &Url,
    token: &SecretString,
    program: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Ws, ConnectFailure> {
    let transient = |message: String| ConnectFailure::Transient {
        message,
        retry_after: None,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| transient(format!("cannot build the request: {err}")))?;
    let bearer = Zeroizing::new(format!("Bearer {}", token.expose()));
    let mut authorization = HeaderValue::from_str(&bearer)
        .map_err(|_| transient("the token cannot be sent in a header".to_string()))?;
    authorization.set_sensitive(true);
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, authorization);
    headers.insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    if let Ok(agent) = HeaderValue::from_str(&format!("{program}/{}", env!("CARGO_PKG_VERSION"))) {
        headers.insert(USER_AGENT, agent);
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(postern_protocol::MAX_MESSAGE_BYTES + 1024))
        .max_frame_size(Some(postern_protocol::MAX_MESSAGE_BYTES + 1024));
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let attempt =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(transient(format!(
            "no answer from the portal within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Err(WsError::Http(response))) => Err(failure_from_response(&response, Utc::now())),
        Ok(Err(err)) => Err(transient(format!("cannot connect to the portal: {err}"))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

fn failure_from_response(
    response: &Response<Option<Vec<u8>>>,
    now: DateTime<Utc>,
) -> ConnectFailure {
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok());
    classify_refusal(
        response.status().as_u16(),
        response.body().as_deref(),
        retry_after,
        now,
    )
}

/// What an HTTP answer instead of the upgrade means for the device (the portal's contract).
pub fn classify_refusal(
    status: u16,
    body: Option<&[u8]>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> ConnectFailure {
    let message = format!("{} (HTTP {status})", problem_detail(status, body));
    let problem_type = body
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|problem| problem.get("type")?.as_str().map(str::to_string));
    match status {
        403 if problem_type.as_deref() == Some(DEVICE_REFUSED_PROBLEM) => {
            ConnectFailure::DeviceRefused(message)
        }
        403 if problem_type.as_deref() == Some(TOKEN_LIMIT_PROBLEM) => {
            ConnectFailure::TokenLimit(message)
        }
        401 | 403 => ConnectFailure::Unauthorized(message),
        426 => ConnectFailure::UpgradeRequired(message),
        // 409: the device's id or key is bound to someone else; its settings must change.
        400 | 409 => ConnectFailure::BadRequest(message),
        _ => ConnectFailure::Transient {
            message: format!("the portal refused the connection: {message}"),
            retry_after: retry_after.and_then(|value| parse_retry_after(value, now)),
        },
    }
}

/// The `detail` (or `title`) of a problem+json body, else the body's text, else the reason.
fn problem_detail(status: u16, body: Option<&[u8]>) -> String {
    let body = body.unwrap_or_default();
    if let Ok(problem) = serde_json::from_slice::<serde_json::Value>(body) {
        let field = |name: &str| {
            problem
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        if let Some(text) = field("detail").or_else(|| field("title")) {
            return truncate(&text);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() && !text.starts_with('<') {
        return truncate(text);
    }
    tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("refused")
        .to_string()
}

fn truncate(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() <= MAX_DETAIL_CHARS {
        return cleaned;
    }
    let mut cut: String = cleaned.chars().take(MAX_DETAIL_CHARS).collect();
    cut.push('…');
    cut
}

/// `Retry-After`: delay seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Keeps the status file in step; a failed write is logged once, never fatal.
struct StatusWriter {
    state_dir: std::path::PathBuf,
    portal: String,
    device_id: String,
    device_name: String,
    version: String,
    state: ConnectionState,
    retry_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    exit_code: Option<i32>,
    token_rotation: Option<TokenRotation>,
    /// With workload identity: where the ID token comes from, and the renewal's state.
    workload_source: Option<IdTokenSource>,
    workload_identity: Option<crate::status::WorkloadIdentityStatus>,
    /// The token the device holds now.
    token_id: Uuid,
    warned: bool,
}

impl StatusWriter {
    fn new(config: &DeviceConfig) -> Self {
        Self {
            state_dir: config.state_dir.clone(),
            portal: config
                .portals
                .first()
                .map(Url::to_string)
                .unwrap_or_default(),
            device_id: config.params.id.clone(),
            device_name: config.params.name.clone(),
            version: config.params.version.clone(),
            state: ConnectionState::Connecting,
            retry_at: None,
            last_error: None,
            exit_code: None,
            token_rotation: None,
            workload_source: None,
            workload_identity: None,
            token_id: config.token.id,
            warned: false,
        }
    }

    fn set(&mut self, state: ConnectionState, retry_at: Option<DateTime<Utc>>) {
        self.state = state;
        self.retry_at = retry_at;
    }

    fn write<R: Role>(&mut self, role: &R) {
        let status = Status {
            pid: std::process::id(),
            state: self.state,
            retry_at: self.retry_at,
            last_error: self.last_error.clone(),
            exit_code: self.exit_code,
            updated_at: Utc::now(),
            portal: self.portal.clone(),
            device_id: self.device_id.clone(),
            device_name: self.device_name.clone(),
            version: self.version.clone(),
            token_rotation: self.token_rotation.clone(),
            workload_identity: self.workload_identity.clone(),
            details: role.details(),
        };
        match write_status(&self.state_dir, &status) {
            Ok(()) => self.warned = false,
            Err(err) if !self.warned => {
                warn!(
                    "cannot write the status file in {}: {err}",
                    self.state_dir.display()
                );
                self.warned = true;
            }
            Err(_) => {}
        }
    }

    fn stopped<R: Role>(&mut self, role: &R) -> Outcome {
        self.exit_code = Some(exit_code::STOPPED);
        self.set(ConnectionState::Stopped, None);
        self.write(role);
        Outcome {
            code: exit_code::STOPPED,
            message: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_new_token_with_its_own_id_is_taken_as_a_successor() {
        let key = postern_token::HashKey::generate();
        let current = Uuid::now_v7();
        let id = Uuid::now_v7();
        let secret = postern_token::generate(postern_token::TokenKind::Client, id, &key).secret;
        let offer = |token_id: Uuid, secret: &str| Successor {
            token_id,
            secret: SecretString::new(secret.to_string()),
            expires_at: now(),
            replaced_token_expires_at: now(),
        };
        assert!(checked_successor(offer(id, secret.expose()), current).is_some());
        assert!(checked_successor(offer(Uuid::now_v7(), secret.expose()), current).is_none());
        assert!(checked_successor(offer(id, "postern_client_nope"), current).is_none());
        assert!(checked_successor(offer(id, secret.expose()), id).is_none());
    }

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn refusals_map_to_the_contract() {
        let problem = br#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"the token was revoked"}"#;
        assert_eq!(
            classify_refusal(401, Some(problem), None, now()),
            ConnectFailure::Unauthorized("the token was revoked (HTTP 401)".into())
        );
        assert!(matches!(
            classify_refusal(426, Some(br#"{"title":"Upgrade Required"}"#), None, now()),
            ConnectFailure::UpgradeRequired(m) if m == "Upgrade Required (HTTP 426)"
        ));
        let blocked = format!(
            r#"{{"type":"{DEVICE_REFUSED_PROBLEM}","status":403,"detail":"device 'x' is blocked"}}"#
        );
        assert_eq!(
            classify_refusal(403, Some(blocked.as_bytes()), None, now()),
            ConnectFailure::DeviceRefused("device 'x' is blocked (HTTP 403)".into())
        );
        let limit = format!(r#"{{"type":"{TOKEN_LIMIT_PROBLEM}","status":403,"detail":"full"}}"#);
        assert_eq!(
            classify_refusal(403, Some(limit.as_bytes()), None, now()),
            ConnectFailure::TokenLimit("full (HTTP 403)".into())
        );
        let forbidden = br#"{"type":"urn:postern:problem:forbidden","status":403,"detail":"no"}"#;
        assert_eq!(
            classify_refusal(403, Some(forbidden), None, now()),
            ConnectFailure::Unauthorized("no (HTTP 403)".into())
        );
        assert!(matches!(
            classify_refusal(400, None, None, now()),
            ConnectFailure::BadRequest(m) if m == "Bad Request (HTTP 400)"
        ));
        assert_eq!(
            classify_refusal(429, Some(b"slow down"), Some("7"), now()),
            ConnectFailure::Transient {
                message: "the portal refused the connection: slow down (HTTP 429)".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert!(matches!(
            classify_refusal(503, Some(b"<html>"), Some("Sun, 01 Mar 2026 12:00:30 GMT"), now()),
            ConnectFailure::Transient { retry_after: Some(d), message }
                if d == Duration::from_secs(30) && message.contains("Service Unavailable")
        ));
        assert!(matches!(
            classify_refusal(502, None, None, now()),
            ConnectFailure::Transient {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(" 12 ", now()),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }

    #[test]
    fn long_or_control_laden_details_are_tamed() {
        let body = format!(
            "{{\"detail\":\"{}\\n{}\"}}",
            "a".repeat(10),
            "b".repeat(400)
        );
        let detail = problem_detail(401, Some(body.as_bytes()));
        assert!(!detail.contains('\n'));
        assert_eq!(detail.chars().count(), MAX_DETAIL_CHARS + 1);
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::Rotation;

    #[test]
    fn each_round_tries_every_node_once_then_starts_at_the_next() {
        let mut portals = Rotation::new(3);
        assert_eq!(portals.current, 0);
        assert!(portals.try_next_now());
        assert_eq!(portals.current, 1);
        assert!(portals.try_next_now());
        assert_eq!(portals.current, 2);
        assert!(!portals.try_next_now(), "the round is over: back off");
        portals.next_round();
        assert_eq!(portals.current, 0);
        assert!(portals.try_next_now());
        // A session on node 1 ends: the next attempt goes to node 2.
        portals.next_round();
        assert_eq!(portals.current, 2);
    }

    #[test]
    fn one_node_is_retried_after_the_backoff() {
        let mut portals = Rotation::new(1);
        assert!(!portals.try_next_now());
        portals.next_round();
        assert_eq!(portals.current, 0);
    }
}
