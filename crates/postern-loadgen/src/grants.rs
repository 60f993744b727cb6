//! `grants`: many grants across several gateways, then one revocation.
//!
//! Connects `--gateways` gateway sessions of one site, then `--clients` client sessions on one
//! token, each asking for access to `--resource-id` once: the portal spreads the grants over
//! the gateways (least loaded first). Once every gateway holds its grants, the load generator
//! revokes the token itself and times, per gateway, the moment the last of its grants was
//! withdrawn (`revoke` messages), from the moment the `DELETE` returned. The in-run baseline is
//! the round trip of a single `GET /healthz` on a fresh connection (median of 21), measured
//! right before the call.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    http, open_socket, parse_api_url, parse_duration, parse_ips, read_secret, stats, Common,
};

#[derive(clap::Args, Clone)]
pub(crate) struct GrantsArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// File holding the client token all clients share (the one revoked)
    #[arg(long = "token-file", value_name = "FILE")]
    token_file: PathBuf,
    /// File holding a gateway token of the resource's site
    #[arg(long, value_name = "FILE")]
    gateway_token_file: PathBuf,
    /// The resource every client asks for
    #[arg(long, value_name = "UUID")]
    resource_id: String,
    /// Gateway sessions of the site
    #[arg(long, default_value_t = 10)]
    gateways: usize,
    /// Client sessions, one grant each
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Device ids are PREFIX-gw-N and PREFIX-N
    #[arg(long, default_value = "grants")]
    device_prefix: String,
    /// File holding an API token, for the revocation
    #[arg(long, value_name = "FILE")]
    api_token_file: PathBuf,
    /// The token to revoke once every grant is in place: ACTOR_ID/TOKEN_ID
    #[arg(long, value_name = "ACTOR_ID/TOKEN_ID")]
    revoke: String,
    /// How long the set-up (connects and grants) and the withdrawal may each take
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

const NOT_YET: u64 = u64::MAX;

/// What one gateway session saw.
#[derive(Default)]
struct GatewayTrack {
    /// Authorization ids it holds now.
    held: Mutex<HashSet<String>>,
    /// How many it held when the revocation started.
    held_at_revoke: AtomicUsize,
    /// When (ns since `base`) its last grant was withdrawn, after the revocation started.
    emptied_at: AtomicU64,
    ready: AtomicUsize,
}

struct Shared {
    base: Instant,
    /// Set when the revocation starts: from then on a gateway that empties records when.
    revoking: AtomicUsize,
    gateways: Vec<GatewayTrack>,
    clients_granted: AtomicUsize,
    clients_done: AtomicUsize,
    clients_disconnected: AtomicUsize,
    failures: crate::failures::Failures,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn held_total(&self) -> usize {
        self.gateways
            .iter()
            .map(|g| g.held.lock().map(|h| h.len()).unwrap_or(0))
            .sum()
    }
}

/// A WireGuard-shaped public key (44 base64 characters), distinct per device (the portal
/// refuses a key another device holds), URL-encoded.
fn fake_key(prefix: &str, kind: &str, index: usize) -> String {
    let letters: String = prefix.chars().filter(char::is_ascii_alphanumeric).collect();
    let body = format!("{letters}{kind}{index:0>20}");
    let tail: String = body
        .chars()
        .rev()
        .take(42)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    // The 43rd character carries only 4 bits: "A" keeps it canonical.
    format!("{tail:A>42}A%3D")
}

pub(crate) async fn run(args: GrantsArgs) -> anyhow::Result<Value> {
    let server = parse_api_url(&args.common.api_url)?;
    let ips = parse_ips(&args.common.source_ips)?;
    let client_token: Arc<str> = read_secret(&args.token_file)?.into();
    let gateway_token: Arc<str> = read_secret(&args.gateway_token_file)?.into();
    let api_token = read_secret(&args.api_token_file)?;
    let (actor, token) = args
        .revoke
        .split_once('/')
        .ok_or_else(|| anyhow!("--revoke takes ACTOR_ID/TOKEN_ID"))?;
    let label = args.common.label.clone();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        revoking: AtomicUsize::new(0),
        gateways: (0..args.gateways)
            .map(|_| GatewayTrack::default())
            .collect(),
        clients_granted: AtomicUsize::new(0),
        clients_done: AtomicUsize::new(0),
        clients_disconnected: AtomicUsize::new(0),
        failures: Default::default(),
    });
    for gateway in &shared.gateways {
        gateway.emptied_at.store(NOT_YET, Ordering::Relaxed);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (stop_tx, stop_rx) = watch::channel(false);
    let host = server.to_string();
    let prefix = args.device_prefix.clone();

    let mut tasks = Vec::new();
    for g in 0..args.gateways {
        let url = format!(
            "ws://{host}/v1/gateway/websocket?id={prefix}-gw-{g}&name={prefix}-gw-{g}&version=loadgen\
             &public_key={}&endpoint=gw-{g}.example%3A51820",
            fake_key(&prefix, "gw", g)
        );
        let (shared, token, stop) = (shared.clone(), gateway_token.clone(), stop_rx.clone());
        let source = ips[g % ips.len()];
        tasks.push(tokio::spawn(async move {
            gateway_session(g, server, source, url, token, config, shared, stop).await
        }));
    }
    let deadline = Instant::now() + args.timeout;
    while shared
        .gateways
        .iter()
        .any(|g| g.ready.load(Ordering::Acquire) == 0)
    {
        if Instant::now() > deadline {
            bail!(
                "not every gateway session opened within {:?}: {:?}",
                args.timeout,
                shared.failures.snapshot()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("[{label}] {} gateway sessions up", args.gateways);

    let gate = Arc::new(Semaphore::new(args.common.concurrency.max(1)));
    for c in 0..args.clients {
        let url = format!(
            "ws://{host}/v1/client/websocket?id={prefix}-{c}&name={prefix}-{c}&version=loadgen&public_key={}",
            fake_key(&prefix, "cl", c)
        );
        let request = format!(
            r#"{{"type":"request_access","resource_id":"{}"}}"#,
            args.resource_id
        );
        let (shared, token, stop, gate) = (
            shared.clone(),
            client_token.clone(),
            stop_rx.clone(),
            gate.clone(),
        );
        let source = ips[c % ips.len()];
        tasks.push(tokio::spawn(async move {
            client_session(
                server, source, url, token, config, request, shared, stop, gate,
            )
            .await
        }));
    }
    drop(stop_rx);
    while shared.clients_done.load(Ordering::Acquire) < args.clients
        || shared.held_total() < shared.clients_granted.load(Ordering::Acquire)
    {
        if Instant::now() > deadline {
            bail!(
                "set-up incomplete within {:?}: {} clients granted, gateways hold {}; failures {:?}",
                args.timeout,
                shared.clients_granted.load(Ordering::Acquire),
                shared.held_total(),
                shared.failures.snapshot()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let granted = shared.clients_granted.load(Ordering::Acquire);
    let per_gateway: Vec<usize> = shared
        .gateways
        .iter()
        .map(|g| g.held.lock().map(|h| h.len()).unwrap_or(0))
        .collect();
    eprintln!("[{label}] {granted} grants, per gateway {per_gateway:?}");
    if granted < args.clients {
        bail!(
            "only {granted} of {} clients were granted access: {:?}",
            args.clients,
            shared.failures.snapshot()
        );
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rtt = http::rtt_samples(server, ips[0], 21).await;
    let path = format!("/v1/actors/{actor}/tokens/{token}");
    for gateway in &shared.gateways {
        let held = gateway.held.lock().map(|h| h.len()).unwrap_or(0);
        gateway.held_at_revoke.store(held, Ordering::Release);
    }
    shared.revoking.store(1, Ordering::Release);
    let sent = shared.now_ns();
    let status = http::request(server, "DELETE", &path, &api_token, None)
        .await
        .with_context(|| format!("DELETE {path}"))?;
    let returned = shared.now_ns();
    if !(200..300).contains(&status) {
        bail!("DELETE {path} answered {status}");
    }
    let withdrawal_deadline = Instant::now() + args.timeout;
    while shared
        .gateways
        .iter()
        .any(|g| g.emptied_at.load(Ordering::Acquire) == NOT_YET)
        && Instant::now() < withdrawal_deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let emptied: Vec<Option<f64>> = shared
        .gateways
        .iter()
        .map(|g| match g.emptied_at.load(Ordering::Acquire) {
            NOT_YET => None,
            at => Some(at.saturating_sub(returned) as f64 / 1e6),
        })
        .collect();
    let done: Vec<f64> = emptied.iter().flatten().copied().collect();
    // Let the clients' disconnects arrive before counting them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summary = json!({
        "mode": "grants",
        "label": label,
        "gateways": args.gateways,
        "clients": args.clients,
        "grants": granted,
        "grants_per_gateway": per_gateway,
        "healthz_rtt_ms": stats::summary_ms(&rtt),
        "api_call_ms": (returned - sent) as f64 / 1e6,
        "gateways_emptied": done.len(),
        "gateway_emptied_from_return_ms": stats::summary_ms(&done),
        "gateways_still_holding": shared.held_total(),
        "clients_disconnected": shared.clients_disconnected.load(Ordering::Acquire),
        "failures": shared.failures.snapshot(),
        "peak_rss_kib": stats::peak_rss_kib(),
    });
    eprintln!("[{label}] {summary}");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if args.common.json {
        println!("{summary}");
    }
    Ok(summary)
}

#[derive(serde::Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    authorization: Option<AuthorizationId>,
    #[serde(default)]
    authorization_ids: Vec<String>,
    #[serde(default)]
    authorizations: Vec<AuthorizationId>,
}

#[derive(serde::Deserialize)]
struct AuthorizationId {
    id: String,
}

#[allow(clippy::too_many_arguments)]
async fn gateway_session(
    index: usize,
    server: std::net::SocketAddr,
    source: IpAddr,
    url: String,
    token: Arc<str>,
    config: WebSocketConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = match open_socket(server, source, 0, &url, &token, config).await {
        Ok(ws) => ws,
        Err(reason) => {
            shared.failures.add(format!("gateway: {reason}"));
            return;
        }
    };
    let track = &shared.gateways[index];
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(Message::Text(text))) = incoming else {
                    if !matches!(incoming, Some(Ok(_))) {
                        shared.failures.add("gateway session ended");
                        return;
                    }
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Incoming>(text.as_str()) else {
                    shared.failures.add("gateway: not JSON");
                    continue;
                };
                let Ok(mut held) = track.held.lock() else { return };
                match message.kind.as_str() {
                    "init" => {
                        held.clear();
                        held.extend(message.authorizations.into_iter().map(|a| a.id));
                        track.ready.store(1, Ordering::Release);
                    }
                    "authorize" => {
                        if let Some(authorization) = message.authorization {
                            held.insert(authorization.id);
                        }
                    }
                    "revoke" => {
                        for id in &message.authorization_ids {
                            held.remove(id);
                        }
                        if held.is_empty() && shared.revoking.load(Ordering::Acquire) == 1 {
                            let _ = track.emptied_at.compare_exchange(
                                NOT_YET,
                                shared.now_ns(),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_session(
    server: std::net::SocketAddr,
    source: IpAddr,
    url: String,
    token: Arc<str>,
    config: WebSocketConfig,
    request: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    gate: Arc<Semaphore>,
) {
    // The gate bounds the handshakes in flight, not the sessions.
    let permit = gate.acquire_owned().await;
    let opened = open_socket(server, source, 8192, &url, &token, config).await;
    drop(permit);
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(reason) => {
            shared.failures.add(format!("client: {reason}"));
            shared.clients_done.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    let mut granted = false;
    let mut asked = false;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(Message::Text(text))) = incoming else {
                    if !matches!(incoming, Some(Ok(_))) {
                        if !granted {
                            shared.failures.add("client session ended before its grant");
                            shared.clients_done.fetch_add(1, Ordering::AcqRel);
                        }
                        return;
                    }
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Incoming>(text.as_str()) else {
                    continue;
                };
                match message.kind.as_str() {
                    "init" if !asked => {
                        asked = true;
                        if ws.send(Message::Text(request.as_str().into())).await.is_err() {
                            return;
                        }
                    }
                    "access_granted" if !granted => {
                        granted = true;
                        shared.clients_granted.fetch_add(1, Ordering::AcqRel);
                        shared.clients_done.fetch_add(1, Ordering::AcqRel);
                    }
                    "access_denied" if !granted => {
                        shared.failures.add(format!("client: access denied: {text}"));
                        shared.clients_done.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                    "disconnect" => {
                        shared.clients_disconnected.fetch_add(1, Ordering::AcqRel);
                        let _ = stop.changed().await;
                        return;
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}
