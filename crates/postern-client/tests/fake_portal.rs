//! `postern-client` against a fake portal started in the test: the upgrade request, the
//! session, `status --json` while it runs, and the exit codes of the portal's refusals.

// The callback type of `accept_hdr_async` is tungstenite's, large `Err` included.
#![allow(clippy::result_large_err)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use common::*;
use futures_util::{SinkExt, StreamExt};
use postern_policy::{Filter, PortRange, Protocol};
use postern_protocol::{
    ClientInit, DisconnectReason, PortalToClient, ResourceView, TunnelAddresses, CLIENT_PATH,
    PROTOCOL_HEADER,
};
use postern_token::TokenKind;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(20);

struct Setup {
    _dir: tempfile::TempDir,
    token: String,
    state: std::path::PathBuf,
    child: std::process::Child,
    listener: TcpListener,
}

async fn start_client() -> Setup {
    start_client_after(None).await
}

/// The client with `first` as an earlier `--api-url` than the fake portal's.
async fn start_client_after(first: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token = token(TokenKind::Client);
    let token_path = token_file(dir.path(), &token, 0o600);
    let state = dir.path().join("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let api_urls = match first {
        Some(first) => format!("{first},{api_url}"),
        None => api_url,
    };
    let child = command(&[
        "run",
        "--no-tunnel",
        "--token-path",
        token_path.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--api-url",
        &api_urls,
        "--id",
        "test-device",
        "--name",
        "ci box",
    ])
    .spawn()
    .unwrap();
    Setup {
        _dir: dir,
        token,
        state,
        child,
        listener,
    }
}

fn resource(name: &str, address: &str, filters: Vec<Filter>) -> ResourceView {
    ResourceView {
        id: Uuid::now_v7(),
        name: name.into(),
        resource_type: "cidr".into(),
        address: address.into(),
        description: None,
        filters,
        site_id: Uuid::now_v7(),
        access_until: None,
    }
}

/// The portal's `Init` for the test device, with these resources.
fn init(resources: Vec<ResourceView>) -> PortalToClient {
    PortalToClient::Init(ClientInit {
        account_id: Uuid::now_v7(),
        account_slug: "acme".into(),
        actor_id: Uuid::now_v7(),
        actor_name: "ci-runner".into(),
        token_id: Uuid::now_v7(),
        token_expires_at: Utc::now() + chrono::Duration::days(30),
        device_id: "test-device".into(),
        addresses: TunnelAddresses {
            ipv4: "100.64.0.7".parse().unwrap(),
            ipv6: "fd00::7".parse().unwrap(),
        },
        resources,
        awaiting_approval: false,
    })
}

fn text(message: &PortalToClient) -> Message {
    Message::text(postern_protocol::encode(message))
}

/// Runs `postern-client status --json` until `check` accepts its output.
async fn wait_for_status(state: &std::path::Path, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let state = state.to_path_buf();
        let finished = tokio::task::spawn_blocking(move || {
            run(
                &mut command(&["status", "--json", "--state-dir", state.to_str().unwrap()]),
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap();
        if finished.code == Some(0) {
            let value: serde_json::Value = serde_json::from_str(&finished.stdout).unwrap();
            if check(&value) {
                return;
            }
        }
        last = format!(
            "{:?}\n{}{}",
            finished.code, finished.stdout, finished.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never matched; last:\n{last}");
}

fn resource_names(status: &serde_json::Value) -> Vec<String> {
    status["resources"]
        .as_array()
        .map(|resources| {
            resources
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_shows_resources_and_a_revoked_token_exits_3() {
    let Setup {
        _dir,
        token,
        state,
        child,
        listener,
    } = start_client().await;

    let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the client connects")
        .unwrap();
    let seen: Arc<Mutex<Option<Request>>> = Arc::default();
    let record = seen.clone();
    let mut ws = tokio_tungstenite::accept_hdr_async(
        stream,
        move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            let mut copy = Request::new(());
            *copy.uri_mut() = request.uri().clone();
            *copy.headers_mut() = request.headers().clone();
            *record.lock().unwrap() = Some(copy);
            Ok(response)
        },
    )
    .await
    .unwrap();

    let request = seen.lock().unwrap().take().unwrap();
    assert_eq!(request.uri().path(), CLIENT_PATH);
    let query = request.uri().query().unwrap_or_default().to_string();
    assert!(query.contains("id=test-device"), "{query}");
    assert!(
        query.contains("name=ci+box") || query.contains("name=ci%20box"),
        "{query}"
    );
    assert!(query.contains("version="), "{query}");
    assert!(
        !request.uri().to_string().contains(&token),
        "the token is not in the URL"
    );
    assert_eq!(
        request.headers()["authorization"].to_str().unwrap(),
        format!("Bearer {token}")
    );
    assert_eq!(request.headers()[PROTOCOL_HEADER].to_str().unwrap(), "1");

    let db = resource(
        "db",
        "10.0.0.0/24",
        vec![Filter {
            protocol: Protocol::Tcp,
            ports: vec![PortRange::single(5432)],
        }],
    );
    let wiki = resource("wiki", "10.1.0.0/24", vec![]);
    ws.send(text(&init(vec![db.clone(), wiki.clone()])))
        .await
        .unwrap();

    wait_for_status(&state, |status| {
        status["state"] == "connected" && resource_names(status) == ["db", "wiki"]
    })
    .await;
    // The human form, while it runs.
    let human = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            run(
                &mut command(&["status", "--state-dir", state.to_str().unwrap()]),
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(human.code, Some(0), "{}", human.stderr);
    for needle in [
        "connected",
        "ci-runner",
        "acme",
        "db",
        "10.0.0.0/24",
        "tcp:5432",
        "wiki",
    ] {
        assert!(human.stdout.contains(needle), "{needle}: {}", human.stdout);
    }
    let raw = std::fs::read_to_string(state.join("status.json")).unwrap();
    assert!(
        !raw.contains(&token),
        "the status file never holds the token"
    );

    ws.send(text(&PortalToClient::ResourceRemoved { id: db.id }))
        .await
        .unwrap();
    wait_for_status(&state, |status| resource_names(status) == ["wiki"]).await;

    ws.send(text(&PortalToClient::Disconnect {
        reason: DisconnectReason::TokenRevoked,
        message: "the token was revoked".into(),
    }))
    .await
    .unwrap();
    // The client answers with a close frame; finish the closing handshake.
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
    {
        if message.is_close() {
            break;
        }
    }
    let _ = ws.close(None).await;

    let finished = tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap();
    assert_exit(
        &finished,
        3,
        &[
            "resource added: db (10.0.0.0/24)",
            "resource added: wiki (10.1.0.0/24)",
            "resource removed: db (10.0.0.0/24)",
            "the token was revoked",
        ],
    );
    assert!(
        !finished.stderr.contains(&token),
        "the token is never logged"
    );
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["exit_code"], 3);
}

/// A portal that answers the upgrade with an HTTP error and a problem+json body.
async fn refuse_with(status: u16, detail: &str) -> (common::Finished, String) {
    let Setup {
        _dir,
        token,
        state: _,
        child,
        listener,
    } = start_client().await;
    let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the client connects")
        .unwrap();
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "refused",
        "status": status,
        "detail": detail,
    })
    .to_string();
    let refused = tokio_tungstenite::accept_hdr_async(
        stream,
        move |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            Err(tokio_tungstenite::tungstenite::http::Response::builder()
                .status(status)
                .header("content-type", "application/problem+json")
                .header("content-length", body.len())
                .body(Some(body))
                .unwrap())
        },
    )
    .await;
    assert!(refused.is_err());
    let finished = tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap();
    (finished, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_401_means_token_rejected_exit_3() {
    let (finished, token) = refuse_with(401, "the token has expired").await;
    assert_exit(
        &finished,
        3,
        &["the portal refused the token", "the token has expired"],
    );
    assert!(!finished.stderr.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_426_means_upgrade_required_exit_1() {
    let (finished, _) = refuse_with(426, "protocol version 1 is no longer supported").await;
    assert_exit(
        &finished,
        1,
        &[
            "upgrade required",
            "protocol version 1 is no longer supported",
        ],
    );
}

/// With several portal URLs, an unreachable first node is passed over for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_portal_node_is_passed_over_for_the_next() {
    // A port that refuses connections: bound, then closed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let Setup {
        _dir,
        state,
        mut child,
        listener,
        ..
    } = start_client_after(Some(&dead_url)).await;
    let live_url = format!("ws://{}/", listener.local_addr().unwrap());
    let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the client moves on to the second portal node")
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    ws.send(text(&init(vec![]))).await.unwrap();
    wait_for_status(&state, |status| {
        status["state"] == "connected" && status["portal"] == live_url.as_str()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
