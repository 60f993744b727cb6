//! `postern-loadgen tcp-server` and `postern-loadgen tcp`: TCP throughput and connection setup
//! rate, directly (through a TUN's routes) or through a SOCKS5 proxy (the rootless client's),
//! for `bench/rootless.sh`.
//!
//! The server reads one byte per connection: `D` streams data until the client closes (the
//! download direction, what a client mostly does), `P` answers `P` and closes (one round trip:
//! the setup rate). The client measures received bytes over `--duration` with `--streams`
//! connections, then `--connections` setups with `--concurrency` in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::parse_duration;
use crate::stats::summary_ms;

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Where to listen, ADDR:PORT
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
}

#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The tcp-server, ADDR:PORT
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Go through this SOCKS5 proxy (no authentication), ADDR:PORT
    #[arg(long, value_name = "ADDR")]
    socks5: Option<SocketAddr>,
    /// Connections receiving at once
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// How long to receive
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Connection setups to time afterwards (0: none)
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Setups in flight at once
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Print one JSON summary line on stdout
    #[arg(long)]
    json: bool,
    /// A label copied into the JSON output
    #[arg(long, default_value = "")]
    label: String,
}

pub async fn serve(args: ServerArgs) -> anyhow::Result<serde_json::Value> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("tcp-server listening on {}", args.listen);
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut command = [0u8; 1];
            if stream.read_exact(&mut command).await.is_err() {
                return;
            }
            match command[0] {
                b'D' => {
                    let block = vec![0x5a_u8; 128 * 1024];
                    while stream.write_all(&block).await.is_ok() {}
                }
                b'P' => {
                    let _ = stream.write_all(b"P").await;
                }
                _ => {}
            }
        });
    }
}

/// A connection to the server, through the SOCKS5 proxy when there is one.
async fn open(args: &ClientArgs) -> anyhow::Result<TcpStream> {
    let Some(proxy) = args.socks5 else {
        let stream = TcpStream::connect(args.target).await?;
        stream.set_nodelay(true)?;
        return Ok(stream);
    };
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await?;
    if method != [5, 0] {
        bail!("the SOCKS5 proxy wants authentication");
    }
    let mut request = vec![5, 1, 0];
    match args.target {
        SocketAddr::V4(v4) => {
            request.push(1);
            request.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            request.push(4);
            request.extend_from_slice(&v6.ip().octets());
        }
    }
    request.extend_from_slice(&args.target.port().to_be_bytes());
    stream.write_all(&request).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[1] != 0 {
        bail!("the SOCKS5 proxy refused: reply {}", head[1]);
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => bail!("unexpected SOCKS5 address type {}", head[3]),
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).await?;
    Ok(stream)
}

pub async fn run(args: ClientArgs) -> anyhow::Result<serde_json::Value> {
    if args.streams == 0 || args.concurrency == 0 {
        bail!("--streams and --concurrency must be at least 1");
    }
    // Throughput: every stream receives until the deadline.
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..args.streams {
        let mut stream = open(&args).await.context("opening a stream")?;
        stream.write_all(b"D").await?;
        streams.push(stream);
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut readers = tokio::task::JoinSet::new();
    for mut stream in streams {
        let received = received.clone();
        readers.spawn(async move {
            let mut buffer = vec![0u8; 256 * 1024];
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.read(&mut buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while readers.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let gbps = received.load(Ordering::Relaxed) as f64 * 8.0 / seconds / 1e9;

    // Setup rate: connect (and the SOCKS5 exchange), one round trip, close.
    let mut setups_per_second = None;
    let mut setup_ms = Vec::new();
    if args.connections > 0 {
        let limit = Arc::new(Semaphore::new(args.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        for _ in 0..args.connections {
            let permit = limit.clone().acquire_owned().await?;
            let args = args.clone();
            tasks.spawn(async move {
                let begun = Instant::now();
                let mut stream = open(&args).await?;
                stream.write_all(b"P").await?;
                let mut pong = [0u8; 1];
                stream.read_exact(&mut pong).await?;
                drop(permit);
                anyhow::Ok(begun.elapsed().as_secs_f64() * 1000.0)
            });
        }
        while let Some(done) = tasks.join_next().await {
            setup_ms.push(done??);
        }
        setups_per_second = Some(args.connections as f64 / started.elapsed().as_secs_f64());
    }
    let summary = json!({
        "label": args.label,
        "via": if args.socks5.is_some() { "socks5" } else { "direct" },
        "streams": args.streams,
        "gbps": (gbps * 1000.0).round() / 1000.0,
        "setups_per_second": setups_per_second.map(|r| r.round()),
        "setup_ms": summary_ms(&setup_ms),
    });
    eprintln!(
        "{} {} stream(s): {gbps:.3} Gbit/s{}",
        summary["via"],
        args.streams,
        setups_per_second
            .map(|r| format!(", {r:.0} setups/s"))
            .unwrap_or_default()
    );
    if args.json {
        println!("{summary}");
    }
    Ok(summary)
}
