//! `postern-loadgen`: load generator for the portal's client sessions (issue 4).
//!
//! One process opens up to ~19 000 client WebSocket sessions (the open-file limit), spread over
//! several loopback source addresses so that the ephemeral port range of one address is not the
//! limit, with a bounded number of handshakes in flight. It measures the connect rate (first
//! connect attempt to the last `Init` received), keeps the sessions alive with heartbeats for a
//! bounded time, and optionally makes one API call itself (token revocation, or a policy change
//! in two rounds) and measures, per session, how long after that call returned the resulting
//! `disconnect` / `resource_removed` / `resource_upserted` arrived. It prints a human summary on
//! stderr and, with `--json`, one JSON line on stdout for `bench/sessions.sh` to aggregate.
//!
//! Everything is bounded: session count, handshake timeout, hold time, fan-out timeout.

mod dns;
mod grants;
mod http;
mod stats;
mod tcp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use failures::Failures;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const LONG_ABOUT: &str = "\
Load generator for the Postern portal's client sessions (issue 4).

'sessions' opens N client sessions (GET /v1/client/websocket with 'Authorization: Bearer <client \
token>' and 'x-postern-protocol: 1'), at most --concurrency handshakes in flight, each TCP \
socket bound to one of --source-ips before connecting. It reports the connect rate (first \
connect attempt to the last Init received), sends a heartbeat every 10 s per session, holds \
the sessions for --hold, and can make one API call itself once all sessions are up:
  --revoke ACTOR_ID/TOKEN_ID   DELETE /v1/actors/ACTOR_ID/tokens/TOKEN_ID; every session must \
receive disconnect{reason:token_revoked}
  --policy-change POLICY_ID    PATCH /v1/policies/POLICY_ID {\"disabled\":true} (every session \
must receive resource_removed), then {\"disabled\":false} (resource_upserted)
The fan-out latency of a session is the instant it received the message minus the instant the \
API call returned (negative values, a message overtaking the HTTP response, count as 0).

'healthz' is the in-run baseline: N fresh TCP connections, each sending one GET /healthz \
(Connection: close) and reading the answer, with the same concurrency and source addresses; \
plus the round-trip time of single GET /healthz requests on fresh connections.

One process holds at most ~19 000 sockets (open-file limit 20 000): run several for more.";

#[derive(Parser)]
#[command(name = "postern-loadgen", version, about = "Load generator for the portal's client sessions", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Open many client sessions, measure the connect rate, hold them, optionally measure fan-out.
    #[command(
        after_help = "Example:\n  postern-loadgen sessions --api-url http://127.0.0.1:8080 \
        --token-file client.token --sessions 10000 --concurrency 256 \
        --source-ips 127.0.0.2-127.0.0.9 --hold 30s --json\n  postern-loadgen sessions \
        --api-url http://127.0.0.1:8080 --token-file client.token --sessions 10000 \
        --api-token-file api.token --revoke $ACTOR_ID/$TOKEN_ID --json"
    )]
    Sessions(SessionsArgs),
    /// Baseline: TCP connect + GET /healthz per connection, and single-request round trips.
    Healthz(HealthzArgs),
    /// Grants across gateways, then one revocation: how long until the last gateway has
    /// dropped every grant of the token.
    #[command(
        after_help = "Example:\n  postern-loadgen grants --api-url http://127.0.0.1:8080 \
        --token-file client.token --gateway-token-file gateway.token --resource-id $RESOURCE \
        --gateways 10 --clients 1000 --api-token-file api.token --revoke $ACTOR_ID/$TOKEN_ID --json"
    )]
    Grants(grants::GrantsArgs),
    /// Queries per second and latency of a DNS server over UDP (the client's stub resolver,
    /// or an upstream for the baseline).
    #[command(
        after_help = "Example:\n  postern-loadgen dns --server 198.18.0.53:53 --name app.internal.test \
        --concurrency 32 --duration 5s --json\n  postern-loadgen dns --server 10.1.1.1:53 \
        --name 'n{n}.outside.test' --json"
    )]
    Dns(dns::DnsArgs),
    /// A TCP server for `tcp`: streams data (`D`) or answers one byte (`P`) per connection.
    TcpServer(tcp::ServerArgs),
    /// TCP throughput (download) and connection setup rate to a tcp-server, directly or
    /// through a SOCKS5 proxy.
    #[command(
        after_help = "Example:\n  postern-loadgen tcp --target 10.2.0.5:9000 --socks5 127.0.0.1:1080 \
        --streams 4 --duration 5s --connections 2000 --json"
    )]
    Tcp(tcp::ClientArgs),
}

#[derive(clap::Args, Clone)]
pub(crate) struct Common {
    /// The portal's base URL (http only), e.g. http://127.0.0.1:8080
    #[arg(long, value_name = "URL")]
    pub(crate) api_url: String,
    /// Handshakes (or baseline connections) in flight at once
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// Loopback source addresses to bind client sockets to, round-robin: a range
    /// 127.0.0.2-127.0.0.40 and/or a comma-separated list
    #[arg(long, default_value = "127.0.0.1", value_name = "IPS")]
    pub(crate) source_ips: String,
    /// Runtime worker threads of this process
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Print one JSON summary line on stdout (the human summary always goes to stderr)
    #[arg(long)]
    pub(crate) json: bool,
    /// A label copied into the JSON output (for aggregation by a script)
    #[arg(long, default_value = "")]
    pub(crate) label: String,
}

#[derive(clap::Args, Clone)]
struct SessionsArgs {
    #[command(flatten)]
    common: Common,
    /// File holding a client token; repeat for several tokens (session i uses token i mod n)
    #[arg(long = "token-file", value_name = "FILE", required = true)]
    token_files: Vec<PathBuf>,
    /// Number of sessions to open (at most ~19 000 per process: the open-file limit)
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Device ids are PREFIX-0, PREFIX-1, ... (use a distinct prefix per process)
    #[arg(long, default_value = "lg")]
    device_prefix: String,
    /// How long to keep the sessions open once all are up (e.g. 30s, 2m, 500ms)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// Give up on a handshake (connect + upgrade + Init) after this long
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Heartbeat period of each session (the protocol's is 10 s)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// SO_RCVBUF / SO_SNDBUF of each client socket, in bytes (0: the kernel's default)
    #[arg(long, default_value_t = 8192)]
    socket_buffer: u32,
    /// Further portal nodes on the same database (repeatable): session i connects to node
    /// i mod (1 + their number), --api-url being node 0; fan-out is also reported per node
    #[arg(long = "also-api-url", value_name = "URL")]
    also_api_urls: Vec<String>,
    /// File holding an API token, for --revoke / --policy-change (sent to --api-url)
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Once all sessions are up, revoke this token: ACTOR_ID/TOKEN_ID
    #[arg(
        long,
        value_name = "ACTOR_ID/TOKEN_ID",
        conflicts_with = "policy_change"
    )]
    revoke: Option<String>,
    /// Once all sessions are up, disable then re-enable this policy (two fan-out rounds)
    #[arg(long, value_name = "POLICY_ID")]
    policy_change: Option<String>,
    /// Wait this long for a fan-out round to reach every session
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    fanout_timeout: Duration,
    /// Pause between the connect phase and the first API call
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Write the number of established sessions to this file once the connect phase is over
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct HealthzArgs {
    #[command(flatten)]
    common: Common,
    /// Number of connections (one GET /healthz each)
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Sequential single requests (fresh connection each) for the round-trip time
    #[arg(long, default_value_t = 51)]
    rtt_samples: usize,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("'{text}': unit must be ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

pub(crate) fn parse_ips(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: Ipv4Addr = from
                .trim()
                .parse()
                .with_context(|| format!("bad address in '{part}'"))?;
            let to: Ipv4Addr = to
                .trim()
                .parse()
                .with_context(|| format!("bad address in '{part}'"))?;
            let (a, b) = (u32::from(from), u32::from(to));
            if b < a || b - a > 65_535 {
                bail!("bad address range '{part}'");
            }
            ips.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            ips.push(
                part.parse()
                    .with_context(|| format!("bad address '{part}'"))?,
            );
        }
    }
    if ips.is_empty() {
        bail!("--source-ips lists no address");
    }
    Ok(ips)
}

/// `http://HOST:PORT[/]` -> the socket address (a literal IP is required: no DNS here).
pub(crate) fn parse_api_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--api-url must start with http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("--api-url must be http://IP:PORT, got '{url}'"))
}

pub(crate) fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(text)
}

fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Sessions(a) => a.common.threads,
        Command::Healthz(a) => a.common.threads,
        Command::Grants(a) => a.common.threads,
        Command::Dns(_) | Command::TcpServer(_) | Command::Tcp(_) => 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        match cli.command {
            Command::Sessions(args) => run_sessions(args).await,
            Command::Healthz(args) => run_healthz(args).await,
            Command::Grants(args) => grants::run(args).await,
            Command::Dns(args) => dns::run(args).await,
            Command::TcpServer(args) => tcp::serve(args).await,
            Command::Tcp(args) => tcp::run(args).await,
        }
    })?;
    // Leave the remaining (already closed) tasks behind without waiting for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = summary;
    Ok(())
}

/// Failure reasons, counted.
mod failures {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Failures(Mutex<BTreeMap<String, u64>>);

    impl Failures {
        pub fn add(&self, reason: impl Into<String>) {
            *self.0.lock().unwrap().entry(reason.into()).or_default() += 1;
        }
        pub fn snapshot(&self) -> BTreeMap<String, u64> {
            self.0.lock().unwrap().clone()
        }
    }
}

const NOT_YET: u64 = u64::MAX;

/// What the session tasks share with the orchestrating task. Instants are nanoseconds since
/// `base` (one monotonic clock, in-process).
struct Shared {
    base: Instant,
    handshakes_done: AtomicUsize,
    established: AtomicUsize,
    closed_by_portal: AtomicUsize,
    first_attempt: AtomicU64,
    last_init: AtomicU64,
    failures: Failures,
    /// Round being measured (0: none), and the message type it waits for.
    round: AtomicU64,
    /// Per session: when it received the awaited message of each round (index round-1).
    received: Vec<[AtomicU64; 2]>,
    heartbeats_sent: AtomicU64,
    unexpected: Failures,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn round_expects(round: u64, revoke: bool) -> &'static str {
    match (revoke, round) {
        (true, _) => "disconnect",
        (false, 1) => "resource_removed",
        (false, _) => "resource_upserted",
    }
}

#[derive(serde::Deserialize)]
struct Tagged<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    reason: Option<&'a str>,
}

async fn run_sessions(args: SessionsArgs) -> anyhow::Result<Value> {
    let server = parse_api_url(&args.common.api_url)?;
    let mut nodes = vec![server];
    for url in &args.also_api_urls {
        nodes.push(parse_api_url(url)?);
    }
    let ips = parse_ips(&args.common.source_ips)?;
    let tokens: Vec<Arc<str>> = args
        .token_files
        .iter()
        .map(|p| read_secret(p).map(Arc::from))
        .collect::<anyhow::Result<_>>()?;
    let api_token = args.api_token_file.as_ref().map(read_secret).transpose()?;
    if (args.revoke.is_some() || args.policy_change.is_some()) && api_token.is_none() {
        bail!("--revoke and --policy-change need --api-token-file");
    }
    let revoke = match &args.revoke {
        Some(spec) => {
            let (actor, token) = spec
                .split_once('/')
                .ok_or_else(|| anyhow!("--revoke takes ACTOR_ID/TOKEN_ID"))?;
            Some((actor.to_string(), token.to_string()))
        }
        None => None,
    };
    let n = args.sessions;
    // `base` and `start_wall` are read together: wall-clock instants in the JSON are
    // start_wall + (monotonic instant - base).
    let start_wall = SystemTime::now();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        handshakes_done: AtomicUsize::new(0),
        established: AtomicUsize::new(0),
        closed_by_portal: AtomicUsize::new(0),
        first_attempt: AtomicU64::new(NOT_YET),
        last_init: AtomicU64::new(0),
        failures: Failures::default(),
        round: AtomicU64::new(0),
        received: (0..n)
            .map(|_| [AtomicU64::new(NOT_YET), AtomicU64::new(NOT_YET)])
            .collect(),
        heartbeats_sent: AtomicU64::new(0),
        unexpected: Failures::default(),
    });
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.common.concurrency.max(1)));
    let is_revoke = revoke.is_some();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let spec = SessionSpec {
            index: i,
            server: node,
            source: ips[i % ips.len()],
            url: format!(
                "ws://{node}/v1/client/websocket?id={p}-{i}&name={p}-{i}&version=loadgen",
                p = args.device_prefix
            ),
            token: tokens[i % tokens.len()].clone(),
            config,
            socket_buffer: args.socket_buffer,
            handshake_timeout: args.handshake_timeout,
            heartbeat: args.heartbeat,
            is_revoke,
        };
        tasks.push(tokio::spawn(session(
            spec,
            shared.clone(),
            gate.clone(),
            stop_rx.clone(),
        )));
    }
    drop(stop_rx);

    // Connect phase: bounded by the handshake timeout of each session.
    let mut last_report = Instant::now();
    while shared.handshakes_done.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "[{}] {} / {n} handshakes done, {} established",
                args.common.label,
                shared.handshakes_done.load(Ordering::Relaxed),
                shared.established.load(Ordering::Relaxed)
            );
        }
    }
    let established = shared.established.load(Ordering::Acquire);
    let first = shared.first_attempt.load(Ordering::Acquire);
    let last = shared.last_init.load(Ordering::Acquire);
    let connect_secs = if established > 0 && last > first {
        (last - first) as f64 / 1e9
    } else {
        0.0
    };
    let ns_to_wall = |ns: u64| unix_us(start_wall) + ns / 1000;
    let connect = json!({
        "established": established,
        "failures": shared.failures.snapshot(),
        "connect_secs": connect_secs,
        "sessions_per_sec": if connect_secs > 0.0 { established as f64 / connect_secs } else { 0.0 },
        "first_attempt_unix_us": if first == NOT_YET { 0 } else { ns_to_wall(first) },
        "last_init_unix_us": if established == 0 { 0 } else { ns_to_wall(last) },
    });
    eprintln!(
        "[{}] connect phase: {established} / {n} established in {connect_secs:.3} s ({:.0} sessions/s); failures {:?}",
        args.common.label,
        if connect_secs > 0.0 { established as f64 / connect_secs } else { 0.0 },
        shared.failures.snapshot()
    );
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{established}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let mut fanout = Vec::new();
    let mut healthz_rtt = Value::Null;
    if revoke.is_some() || args.policy_change.is_some() {
        tokio::time::sleep(args.settle).await;
        let api_token = api_token.as_deref().unwrap_or_default();
        // The in-run baseline: single GET /healthz round trips, under the same load.
        let rtt = http::rtt_samples(server, ips[0], 21).await;
        healthz_rtt = stats::summary_ms(&rtt);
        let calls: Vec<(u64, &str, String, Option<&str>)> = match (&revoke, &args.policy_change) {
            (Some((actor, token)), _) => vec![(
                1,
                "DELETE",
                format!("/v1/actors/{actor}/tokens/{token}"),
                None,
            )],
            (None, Some(policy)) => vec![
                (
                    1,
                    "PATCH",
                    format!("/v1/policies/{policy}"),
                    Some(r#"{"disabled":true}"#),
                ),
                (
                    2,
                    "PATCH",
                    format!("/v1/policies/{policy}"),
                    Some(r#"{"disabled":false}"#),
                ),
            ],
            (None, None) => vec![],
        };
        for (round, method, path, body) in calls {
            let open = shared.established.load(Ordering::Acquire)
                - shared.closed_by_portal.load(Ordering::Acquire);
            shared.round.store(round, Ordering::Release);
            let sent = shared.now_ns();
            let status = http::request(server, method, &path, api_token, body).await;
            let returned = shared.now_ns();
            let status = status.with_context(|| format!("{method} {path}"))?;
            if !(200..300).contains(&status) {
                bail!("{method} {path} answered {status}");
            }
            let expect = round_expects(round, is_revoke);
            let slot = (round - 1) as usize;
            let deadline = Instant::now() + args.fanout_timeout;
            let count = || {
                shared
                    .received
                    .iter()
                    .filter(|r| r[slot].load(Ordering::Relaxed) != NOT_YET)
                    .count()
            };
            let mut received = count();
            while received < open && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                received = count();
            }
            let per_node: Vec<Value> = (0..nodes.len())
                .map(|node| {
                    let latencies: Vec<f64> = shared
                        .received
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % nodes.len() == node)
                        .map(|(_, r)| r[slot].load(Ordering::Acquire))
                        .filter(|&t| t != NOT_YET)
                        .map(|t| t.saturating_sub(returned) as f64 / 1e6)
                        .collect();
                    json!({
                        "node": nodes[node].to_string(),
                        "received": latencies.len(),
                        "latency_from_return_ms": stats::summary_ms(&latencies),
                    })
                })
                .collect();
            let arrivals: Vec<u64> = shared
                .received
                .iter()
                .map(|r| r[slot].load(Ordering::Acquire))
                .filter(|&t| t != NOT_YET)
                .collect();
            let from_return: Vec<f64> = arrivals
                .iter()
                .map(|&t| t.saturating_sub(returned) as f64 / 1e6)
                .collect();
            let from_sent: Vec<f64> = arrivals
                .iter()
                .map(|&t| t.saturating_sub(sent) as f64 / 1e6)
                .collect();
            let overtook = arrivals.iter().filter(|&&t| t < returned).count();
            let entry = json!({
                "round": round,
                "call": format!("{method} {path}{}", body.map(|b| format!(" {b}")).unwrap_or_default()),
                "expects": expect,
                "sessions_open": open,
                "received": arrivals.len(),
                "missing": open.saturating_sub(arrivals.len()),
                "api_call_ms": (returned - sent) as f64 / 1e6,
                "arrived_before_return": overtook,
                "latency_from_return_ms": stats::summary_ms(&from_return),
                "latency_from_request_ms": stats::summary_ms(&from_sent),
                "per_node": per_node,
            });
            eprintln!("[{}] fan-out round {round}: {entry}", args.common.label);
            fanout.push(entry);
            // Let the sessions settle between rounds.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else {
        tokio::time::sleep(args.hold).await;
    }

    let alive = shared.established.load(Ordering::Acquire)
        - shared.closed_by_portal.load(Ordering::Acquire);
    let _ = stop_tx.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(10);
    for task in tasks {
        let left = close_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            break;
        }
    }
    let summary = json!({
        "mode": "sessions",
        "label": args.common.label,
        "sessions_requested": n,
        "source_ips": ips.len(),
        "concurrency": args.common.concurrency,
        "connect": connect,
        "alive_at_end_of_hold": alive,
        "closed_by_portal": shared.closed_by_portal.load(Ordering::Acquire),
        "heartbeats_sent": shared.heartbeats_sent.load(Ordering::Acquire),
        "unexpected_messages": shared.unexpected.snapshot(),
        "healthz_rtt_ms": healthz_rtt,
        "fanout": fanout,
        "peak_rss_kib": stats::peak_rss_kib(),
    });
    if args.common.json {
        println!("{summary}");
    }
    eprintln!(
        "[{}] done: {alive} sessions alive at the end of the hold",
        args.common.label
    );
    Ok(summary)
}

struct SessionSpec {
    index: usize,
    server: SocketAddr,
    source: IpAddr,
    url: String,
    token: Arc<str>,
    config: WebSocketConfig,
    socket_buffer: u32,
    handshake_timeout: Duration,
    heartbeat: Duration,
    is_revoke: bool,
}

pub(crate) fn client_socket(source: IpAddr, buffer: u32) -> std::io::Result<TcpSocket> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if buffer > 0 {
        socket.set_recv_buffer_size(buffer)?;
        socket.set_send_buffer_size(buffer)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket)
}

async fn handshake(
    spec: &SessionSpec,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    open_socket(
        spec.server,
        spec.source,
        spec.socket_buffer,
        &spec.url,
        &spec.token,
        spec.config,
    )
    .await
}

/// Opens a device WebSocket from `source`: TCP connect, then the upgrade with the token in
/// the `Authorization` header and the protocol version header.
pub(crate) async fn open_socket(
    server: SocketAddr,
    source: IpAddr,
    socket_buffer: u32,
    url: &str,
    token: &str,
    config: WebSocketConfig,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    let socket = client_socket(source, socket_buffer).map_err(|e| format!("bind: {}", e.kind()))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token".to_string())?,
    );
    headers.insert("x-postern-protocol", "1".parse().expect("static"));
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("http_{}", response.status().as_u16()))
        }
        Err(tokio_tungstenite::tungstenite::Error::Io(e)) => {
            Err(format!("handshake_io: {}", e.kind()))
        }
        Err(e) => Err(format!("handshake: {e}")),
    }
}

async fn session(
    spec: SessionSpec,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = gate.acquire_owned().await.expect("never closed");
    shared
        .first_attempt
        .fetch_min(shared.now_ns(), Ordering::AcqRel);
    let opened = tokio::time::timeout(spec.handshake_timeout, async {
        let mut ws = handshake(&spec).await?;
        // The first message must be Init.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return match serde_json::from_str::<Tagged>(text.as_str()) {
                        Ok(t) if t.kind == "init" => Ok(ws),
                        Ok(t) => Err(format!("first message was {}", t.kind)),
                        Err(_) => Err("first message is not JSON".to_string()),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_)) => return Err("unexpected frame before Init".to_string()),
                Some(Err(e)) => return Err(format!("closed before Init: {e}")),
                None => return Err("closed before Init".to_string()),
            }
        }
    })
    .await;
    let mut ws = match opened {
        Ok(Ok(ws)) => {
            shared
                .last_init
                .fetch_max(shared.now_ns(), Ordering::AcqRel);
            shared.established.fetch_add(1, Ordering::AcqRel);
            ws
        }
        Ok(Err(reason)) => {
            shared.failures.add(reason);
            shared.handshakes_done.fetch_add(1, Ordering::AcqRel);
            return;
        }
        Err(_) => {
            shared.failures.add("timeout");
            shared.handshakes_done.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    drop(permit);
    shared.handshakes_done.fetch_add(1, Ordering::AcqRel);

    // Spread the heartbeats over the period instead of sending them all at once.
    let period = spec.heartbeat.max(Duration::from_millis(100));
    let phase = (spec.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % period.as_millis() as u64;
    let heartbeat = tokio::time::sleep(Duration::from_millis(phase.max(1)));
    tokio::pin!(heartbeat);
    let heartbeat_text = r#"{"type":"heartbeat"}"#;
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let at = shared.now_ns();
                    let Ok(tagged) = serde_json::from_str::<Tagged>(text.as_str()) else {
                        shared.unexpected.add("not JSON");
                        continue;
                    };
                    let round = shared.round.load(Ordering::Acquire);
                    match tagged.kind {
                        "heartbeat" => {}
                        kind if round > 0 && kind == round_expects(round, spec.is_revoke) => {
                            let slot = &shared.received[spec.index][(round - 1) as usize];
                            let _ = slot.compare_exchange(NOT_YET, at, Ordering::AcqRel, Ordering::Relaxed);
                        }
                        other => {
                            let label = match tagged.reason {
                                Some(reason) => format!("{other}:{reason}"),
                                None => other.to_string(),
                            };
                            shared.unexpected.add(label);
                        }
                    }
                    if tagged.kind == "disconnect" {
                        shared.closed_by_portal.fetch_add(1, Ordering::AcqRel);
                        // Keep the socket, unread, until the end: closing 10 000 sockets here
                        // would slow down this process while it still times other sessions.
                        let _ = stop.changed().await;
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    shared.closed_by_portal.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Some(Ok(_)) => {}
            },
            _ = &mut heartbeat => {
                if ws.send(Message::Text(heartbeat_text.into())).await.is_err() {
                    shared.closed_by_portal.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                shared.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                heartbeat.as_mut().reset(tokio::time::Instant::now() + period);
            },
            _ = stop.changed() => break,
        }
    }
    // Dropping the stream closes the socket; the portal sees the end of the stream.
}

async fn run_healthz(args: HealthzArgs) -> anyhow::Result<Value> {
    let server = parse_api_url(&args.common.api_url)?;
    let ips = parse_ips(&args.common.source_ips)?;
    let rtt = http::rtt_samples(server, ips[0], args.rtt_samples).await;
    let gate = Arc::new(Semaphore::new(args.common.concurrency.max(1)));
    let failures = Arc::new(Failures::default());
    let ok = Arc::new(AtomicUsize::new(0));
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (gate, failures, ok) = (gate.clone(), failures.clone(), ok.clone());
        let source = ips[i % ips.len()];
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("never closed");
            match tokio::time::timeout(Duration::from_secs(30), http::healthz_once(server, source))
                .await
            {
                Ok(Ok(())) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => failures.add(e),
                Err(_) => failures.add("timeout"),
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let summary = json!({
        "mode": "healthz",
        "label": args.common.label,
        "connections": args.connections,
        "ok": ok,
        "failures": failures.snapshot(),
        "secs": secs,
        "start_unix_us": unix_us(started_wall),
        "end_unix_us": unix_us(started_wall) + (secs * 1e6) as u64,
        "connects_per_sec": ok as f64 / secs,
        "concurrency": args.common.concurrency,
        "source_ips": ips.len(),
        "healthz_rtt_ms": stats::summary_ms(&rtt),
    });
    eprintln!(
        "[{}] healthz baseline: {ok} / {} connections in {secs:.3} s ({:.0} connects/s); rtt {}",
        args.common.label,
        args.connections,
        ok as f64 / secs,
        stats::summary_ms(&rtt)
    );
    if args.common.json {
        println!("{summary}");
    }
    Ok(summary)
}
