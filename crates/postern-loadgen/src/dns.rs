//! `postern-loadgen dns`: queries per second and latency of a DNS server over UDP, for the
//! client's stub resolver against the upstream resolver queried directly (`bench/dns.sh`).
//!
//! `--concurrency` workers each keep one query in flight on a socket of their own for
//! `--duration`; a query unanswered within `--timeout` counts as lost. Names come round-robin
//! from `--name` (repeatable); `{n}` in a name becomes the query's number, for names that are
//! new each time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::parse_duration;
use crate::stats::summary_ms;

#[derive(clap::Args, Clone)]
pub struct DnsArgs {
    /// The DNS server, IP:PORT
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// Names to ask for A records of, round-robin (repeatable); `{n}` becomes the query number
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Queries in flight at once (one socket each)
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to send queries
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// A query unanswered after this long is lost
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON summary line on stdout (the human summary always goes to stderr)
    #[arg(long)]
    json: bool,
    /// A label copied into the JSON output
    #[arg(long, default_value = "")]
    label: String,
}

pub async fn run(args: DnsArgs) -> anyhow::Result<serde_json::Value> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (args, counter) = (args.clone(), counter.clone());
        workers.spawn(async move { worker(&args, &counter, deadline).await });
    }
    let (mut latencies, mut lost, mut errors) = (Vec::new(), 0u64, 0u64);
    while let Some(done) = workers.join_next().await {
        let outcome = done.context("a worker failed")??;
        latencies.extend(outcome.latencies_ms);
        lost += outcome.lost;
        errors += outcome.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let answered = latencies.len();
    let qps = answered as f64 / elapsed;
    let summary = json!({
        "label": args.label,
        "server": args.server.to_string(),
        "names": args.names,
        "concurrency": args.concurrency,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "answered": answered,
        "lost": lost,
        "errors": errors,
        "qps": qps.round(),
        "latency_ms": summary_ms(&latencies),
    });
    eprintln!(
        "{}: {answered} answered ({qps:.0}/s), {lost} lost, {errors} answers with an error code; latency {}",
        args.server, summary["latency_ms"]
    );
    if args.json {
        println!("{summary}");
    }
    Ok(summary)
}

struct Outcome {
    latencies_ms: Vec<f64>,
    lost: u64,
    errors: u64,
}

async fn worker(args: &DnsArgs, counter: &AtomicU64, deadline: Instant) -> anyhow::Result<Outcome> {
    let local: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(args.server).await?;
    let mut outcome = Outcome {
        latencies_ms: Vec::new(),
        lost: 0,
        errors: 0,
    };
    let mut buffer = vec![0u8; 4096];
    while Instant::now() < deadline {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let template = &args.names[usize::try_from(n).unwrap_or(0) % args.names.len()];
        let name = template.replace("{n}", &n.to_string());
        let id = u16::try_from(n % 65_536).unwrap_or(0);
        let query = query_bytes(&name, id)?;
        let sent = Instant::now();
        socket.send(&query).await?;
        let answer = tokio::time::timeout(args.timeout, async {
            loop {
                let len = socket.recv(&mut buffer).await?;
                if buffer.get(..2) == Some(&id.to_be_bytes()[..]) {
                    return std::io::Result::Ok(len);
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(len)) => {
                outcome
                    .latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
                let failed = Message::from_vec(&buffer[..len])
                    .map(|m| m.response_code() != hickory_proto::op::ResponseCode::NoError)
                    .unwrap_or(true);
                if failed {
                    outcome.errors += 1;
                }
            }
            _ => outcome.lost += 1,
        }
    }
    Ok(outcome)
}

fn query_bytes(name: &str, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
                .with_context(|| format!("'{name}' is not a DNS name"))?,
            RecordType::A,
        ));
    Ok(message.to_vec()?)
}
