//! The HTTP listener's limits over real sockets: a client trickling its headers, or keeping an
//! idle connection, is disconnected after the header-read timeout; connections beyond the cap
//! are closed at once while the others are served; an oversized body is refused with 413.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Portal};
use postern_api::{HttpLimits, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn limited(limits: HttpLimits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(postern_api::serve_with_config(
        listener,
        router,
        std::future::pending(),
        ServerConfig {
            limits,
            ..Default::default()
        },
    ));
    addr
}

/// Reads until the server closes the connection (`Some(bytes read)`), or `None` if it is still
/// open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_dropped() {
    let addr = limited(HttpLimits {
        header_read_timeout: Duration::from_millis(500),
        ..HttpLimits::default()
    })
    .await;
    // Headers trickling in, never finished.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "a connection that never finishes its headers stays open"
    );
    // A served request, then silence on the kept-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_others_served() {
    let addr = limited(HttpLimits {
        max_connections: 4,
        ..HttpLimits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\n\r\n")
        .await;
    let answer = closed_within(&mut over, Duration::from_secs(5))
        .await
        .expect("the connection over the cap is closed at once");
    assert!(answer.is_empty(), "it was served: {answer:?}");
    // The held ones still work, and a freed slot takes a new connection.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut first, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut again, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let portal = Portal::start(Backend::Sqlite).await.expect("portal");
    let name = "x".repeat(1_500_000);
    let (status, _) = portal
        .call(
            reqwest::Method::POST,
            "/v1/groups",
            Some(serde_json::json!({ "name": name })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    portal.stop().await;
}

/// A device session holds its connection's place while it lives: with room for two
/// connections, two sessions leave none, and closing one frees it.
#[tokio::test]
async fn websocket_sessions_count_against_the_cap() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let portal = Portal::start(Backend::Sqlite).await.expect("portal");
    let created = portal
        .post(
            "/v1/actors",
            serde_json::json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let secret = created["token"]["secret"].as_str().unwrap().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = postern_api::AppState::new(portal.store.clone());
    tokio::spawn(postern_api::serve_with_config(
        listener,
        postern_api::router(state),
        std::future::pending(),
        ServerConfig {
            limits: HttpLimits {
                max_connections: 2,
                ..HttpLimits::default()
            },
            ..Default::default()
        },
    ));
    let open = |device: &'static str| {
        let secret = secret.clone();
        async move {
            let url = format!(
                "ws://{addr}{}?id={device}&name={device}&version=test",
                postern_protocol::CLIENT_PATH
            );
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {secret}").parse().unwrap());
            request
                .headers_mut()
                .insert(postern_protocol::PROTOCOL_HEADER, "1".parse().unwrap());
            tokio_tungstenite::connect_async(request)
                .await
                .map(|(ws, _)| ws)
        }
    };
    let mut first = open("one").await.expect("first session");
    let _second = open("two").await.expect("second session");
    assert!(first.next().await.is_some(), "the first session works");
    assert!(
        open("three").await.is_err(),
        "a third connection while two sessions hold their places"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if open("four").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place of a closed session is never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    portal.stop().await;
}
