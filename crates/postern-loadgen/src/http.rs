//! A minimal HTTP/1.1 client on a fresh connection per request (`Connection: close`): the
//! healthz baseline and the one API call of a fan-out round. No pooling, no TLS: the portal is
//! on loopback, and a fresh connection per request is what the baseline measures.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client_socket;

/// Sends one request and reads the whole answer; returns the status code.
pub async fn request_from(
    server: SocketAddr,
    source: IpAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<u16, String> {
    let socket = client_socket(source, 0).map_err(|e| format!("bind: {}", e.kind()))?;
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        head.push_str("\r\n");
    }
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut answer = Vec::with_capacity(512);
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {}", e.kind()))?;
    let status_line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "malformed answer".to_string())?;
    Ok(status)
}

/// One API call from 127.0.0.1.
pub async fn request(
    server: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&str>,
) -> anyhow::Result<u16> {
    request_from(
        server,
        IpAddr::from([127, 0, 0, 1]),
        method,
        path,
        Some(bearer),
        body,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))
}

/// TCP connect + GET /healthz + the answer, on a fresh connection.
pub async fn healthz_once(server: SocketAddr, source: IpAddr) -> Result<(), String> {
    match request_from(server, source, "GET", "/healthz", None, None).await? {
        200 => Ok(()),
        status => Err(format!("http_{status}")),
    }
}

/// Round-trip times (ms) of `count` sequential GET /healthz, each on a fresh connection.
pub async fn rtt_samples(server: SocketAddr, source: IpAddr, count: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        if healthz_once(server, source).await.is_ok() {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples
}
