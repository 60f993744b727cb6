//! `postern-gateway` as a process: the token kind, and a session with a fake portal in which
//! authorizations arrive, expire on time and are revoked, ended by SIGTERM (exit 0).

// The callback type of `accept_hdr_async` is tungstenite's, large `Err` included.
#![allow(clippy::result_large_err)]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use futures_util::{SinkExt, StreamExt};
use postern_protocol::{
    Authorization, GatewayInit, PortalToGateway, ResourceView, TunnelAddresses, GATEWAY_PATH,
    PROTOCOL_HEADER,
};
use postern_token::TokenKind;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_client_token_is_refused_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), &token(TokenKind::Client), 0o600);
    let state = dir.path().join("state");
    let finished = run(
        &mut command(&[
            "--token-path",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert_exit(
        &finished,
        2,
        &["is a client token", "needs a gateway token"],
    );
}

#[test]
fn status_without_a_running_gateway_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let finished = run(
        &mut command(&["status", "--state-dir", dir.path().to_str().unwrap()]),
        LIMIT,
    );
    assert_exit(&finished, 1, &["no postern-gateway is running"]);
}

fn authorization(device: &str, expires_in: chrono::Duration) -> Authorization {
    Authorization {
        id: Uuid::now_v7(),
        client_device_id: device.into(),
        actor_id: Uuid::now_v7(),
        client_public_key: None,
        client_addresses: TunnelAddresses {
            ipv4: "100.64.0.9".parse().unwrap(),
            ipv6: "fd00::9".parse().unwrap(),
        },
        resource: ResourceView {
            id: Uuid::now_v7(),
            name: "db".into(),
            resource_type: "ip".into(),
            address: "10.0.0.5".into(),
            description: None,
            filters: vec![],
            site_id: Uuid::now_v7(),
            access_until: None,
        },
        expires_at: Utc::now() + expires_in,
        preshared_key: Some(postern_protocol::PresharedKey::from_bytes([5; 32])),
        dns: Vec::new(),
    }
}

async fn status_json(state: &std::path::Path) -> Option<serde_json::Value> {
    let state = state.to_path_buf();
    let finished = tokio::task::spawn_blocking(move || {
        run(
            &mut command(&["status", "--json", "--state-dir", state.to_str().unwrap()]),
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    if finished.code != Some(0) {
        return None;
    }
    serde_json::from_str(&finished.stdout).ok()
}

async fn wait_for_count(state: &std::path::Path, count: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = status_json(state).await {
            if status["state"] == "connected" && status["authorizations_count"] == count {
                return status;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {count} authorizations"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizations_arrive_expire_and_are_revoked_then_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let token = token(TokenKind::Gateway);
    let token_path = token_file(dir.path(), &token, 0o600);
    let state = dir.path().join("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let child = command(&[
        "--token-path",
        token_path.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--api-url",
        &api_url,
        "--public-endpoint",
        "gw.example.com:51820",
        "--no-tunnel",
    ])
    .spawn()
    .unwrap();
    let pid = child.id();

    let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut ws = tokio_tungstenite::accept_hdr_async(
        stream,
        |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
         response: tokio_tungstenite::tungstenite::handshake::server::Response| {
            assert_eq!(request.uri().path(), GATEWAY_PATH);
            assert_eq!(request.headers()[PROTOCOL_HEADER], "1");
            assert!(request.headers().contains_key("authorization"));
            Ok(response)
        },
    )
    .await
    .unwrap();

    let short = authorization("laptop-1", chrono::Duration::milliseconds(1500));
    let long = authorization("laptop-2", chrono::Duration::hours(1));
    let init = PortalToGateway::Init(GatewayInit {
        account_id: Uuid::now_v7(),
        site_id: Uuid::now_v7(),
        site_name: "office-berlin".into(),
        token_id: Uuid::now_v7(),
        token_expires_at: Utc::now() + chrono::Duration::days(365),
        device_id: "gw-1".into(),
        addresses: TunnelAddresses {
            ipv4: "100.64.0.1".parse().unwrap(),
            ipv6: "fd00::1".parse().unwrap(),
        },
        authorizations: vec![short.clone()],
    });
    ws.send(Message::text(postern_protocol::encode(&init)))
        .await
        .unwrap();
    ws.send(Message::text(postern_protocol::encode(
        &PortalToGateway::Authorize {
            authorization: long.clone(),
        },
    )))
    .await
    .unwrap();
    let status = wait_for_count(&state, 2).await;
    assert_eq!(status["site"]["name"], "office-berlin");
    assert_eq!(status["public_endpoint"], "gw.example.com:51820");
    assert_eq!(status["listen"], "0.0.0.0:51820");
    let raw = std::fs::read_to_string(state.join("status.json")).unwrap();
    assert!(!raw.contains(&token));
    assert!(
        !raw.contains("c2VjcmV0"),
        "no preshared keys in the status file"
    );

    // The short one expires on its own, with no word from the portal.
    let status = wait_for_count(&state, 1).await;
    assert_eq!(status["authorizations"][0]["client_device_id"], "laptop-2");

    ws.send(Message::text(postern_protocol::encode(
        &PortalToGateway::Revoke {
            authorization_ids: vec![long.id],
            reason: "policy deleted".into(),
        },
    )))
    .await
    .unwrap();
    wait_for_count(&state, 0).await;

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The gateway closes the session with a close frame.
    let mut saw_close = false;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
    {
        if message.is_close() {
            saw_close = true;
            break;
        }
    }
    assert!(saw_close, "a clean close on SIGTERM");
    let _ = ws.close(None).await;

    let finished = tokio::task::spawn_blocking(move || finish(child, LIMIT))
        .await
        .unwrap();
    assert_exit(
        &finished,
        0,
        &[
            "authorization granted",
            "authorization expired",
            "authorization revoked",
            "policy deleted",
            "SIGTERM",
        ],
    );
    assert!(!finished.stderr.contains(&token));
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["exit_code"], 0);
}
