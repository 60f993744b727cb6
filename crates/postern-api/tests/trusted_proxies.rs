//! Behind a trusted reverse proxy the client's address, as the proxy names it in
//! `X-Forwarded-For`, drives rate limits, audit, last use and source-IP policy conditions; from
//! any other peer the header changes nothing. The test client connects from 127.0.0.1, which
//! plays the proxy when 127.0.0.0/8 is trusted.

mod common;

use common::{Backend, Portal};
use futures_util::StreamExt;
use postern_api::{ForwardedHeader, ServerConfig, TrustedProxies};
use postern_protocol::{decode, PortalToClient, CLIENT_PATH, PROTOCOL_HEADER};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const FAILURES_ALLOWED: usize = 20;

async fn behind_proxy() -> Portal {
    let config = ServerConfig {
        trusted_proxies: TrustedProxies::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            ForwardedHeader::XForwardedFor,
        ),
        ..Default::default()
    };
    Portal::start_with(Backend::Sqlite, config)
        .await
        .expect("sqlite portal")
}

async fn get_from(portal: &Portal, token: &str, forwarded_for: &str) -> StatusCode {
    portal
        .http
        .get(format!("{}/v1/account", portal.base))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("request")
        .status()
}

const BAD_TOKEN: &str =
    "postern_api_000000000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn one_client_failing_does_not_limit_the_others_behind_the_proxy() {
    let portal = behind_proxy().await;
    for _ in 0..FAILURES_ALLOWED {
        assert_eq!(
            get_from(&portal, BAD_TOKEN, "203.0.113.1").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        get_from(&portal, BAD_TOKEN, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the failing client is limited"
    );
    // A client forging the limited address in front of its own is still itself.
    assert_eq!(
        get_from(&portal, &portal.token, "203.0.113.1, 203.0.113.2").await,
        StatusCode::OK
    );
    assert_eq!(
        get_from(&portal, &portal.token, "203.0.113.2").await,
        StatusCode::OK,
        "another client behind the same proxy is not"
    );
    portal.stop().await;
}

#[tokio::test]
async fn the_header_from_an_untrusted_peer_is_ignored() {
    let portal = Portal::start(Backend::Sqlite).await.expect("sqlite portal");
    // Each failure claims another address: without trust they all count against 127.0.0.1.
    for n in 0..FAILURES_ALLOWED {
        get_from(&portal, BAD_TOKEN, &format!("198.51.100.{n}")).await;
    }
    assert_eq!(
        get_from(&portal, &portal.token, "198.51.100.200").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    portal.stop().await;
}

#[tokio::test]
async fn audit_and_last_use_record_the_client_address() {
    let portal = behind_proxy().await;
    let proxied = common::api_token(&portal.store, portal.account_id, "proxied").await;
    assert_eq!(
        get_from(&portal, &proxied, "203.0.113.7").await,
        StatusCode::OK
    );
    portal.store.flush_token_usage().await.expect("flush");
    let (status, created) = portal
        .http
        .post(format!("{}/v1/groups", portal.base))
        .bearer_auth(&portal.token)
        .header("x-forwarded-for", "203.0.113.8")
        .json(&json!({"name": "audited"}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .expect("request");
    assert_eq!(status, StatusCode::CREATED);
    drop(created);

    let events = portal.get("/v1/audit-events?action=group.create").await;
    assert_eq!(events["data"][0]["source_ip"], "203.0.113.8", "{events}");
    let me = portal.get("/v1/actors?type=api_client&name=proxied").await;
    let actor_id = me["data"][0]["id"].as_str().unwrap().to_string();
    let tokens = portal.get(&format!("/v1/actors/{actor_id}/tokens")).await;
    let used_from: Vec<&Value> = tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["last_used_ip"])
        .collect();
    assert!(
        used_from.contains(&&json!("203.0.113.7")),
        "the token's last use is the client's: {tokens}"
    );
    portal.stop().await;
}

async fn first_message(portal: &Portal, secret: &str, forwarded_for: &str) -> PortalToClient {
    let url = format!(
        "ws://{}{CLIENT_PATH}?id=dev-{}&name=dev&version=test",
        portal.addr(),
        forwarded_for.replace('.', "-")
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
    headers.insert(PROTOCOL_HEADER, "1".parse().unwrap());
    headers.insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("session");
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if !text.as_str().contains("\"heartbeat\"") => {
                return decode(text.as_str()).expect("decodes")
            }
            Some(Ok(_)) => continue,
            other => panic!("session ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn source_ip_conditions_see_the_client_behind_the_proxy() {
    let portal = behind_proxy().await;
    let group = portal.post("/v1/groups", json!({"name": "fleet"})).await["data"]["id"].clone();
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner", "group_ids": [group]}),
        )
        .await;
    let secret = sa["token"]["secret"].as_str().unwrap().to_string();
    let site = portal.post("/v1/sites", json!({"name": "dc"})).await["data"]["id"].clone();
    let resource = portal
        .post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site}),
        )
        .await["data"]["id"]
        .clone();
    let (status, body) = portal
        .call(
            Method::POST,
            "/v1/policies",
            Some(json!({"group_id": group, "resource_id": resource,
                "conditions": [{"property": "source_ip", "operator": "in", "values": ["203.0.113.0/24"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let PortalToClient::Init(inside) = first_message(&portal, &secret, "203.0.113.7").await else {
        panic!("Init first")
    };
    assert_eq!(inside.resources.len(), 1, "the client is in 203.0.113.0/24");
    let PortalToClient::Init(outside) = first_message(&portal, &secret, "198.51.100.7").await
    else {
        panic!("Init first")
    };
    assert!(
        outside.resources.is_empty(),
        "the proxy's own address (127.0.0.1) must not be judged, nor may the client be let in"
    );
    portal.stop().await;
}

/// A token's `allowed_source_cidrs` judges the client the proxy names, not the proxy: a session
/// forwarded for an address inside the networks opens, one forwarded for an address outside is
/// refused as `device-refused` though the proxy itself (127.0.0.1) would be neither.
#[tokio::test]
async fn a_tokens_allowed_networks_see_the_client_behind_the_proxy() {
    let portal = behind_proxy().await;
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet",
                "token": {"allowed_source_cidrs": ["203.0.113.0/24"]}}),
        )
        .await;
    let secret = sa["token"]["secret"].as_str().unwrap().to_string();
    assert!(matches!(
        first_message(&portal, &secret, "203.0.113.7").await,
        PortalToClient::Init(_)
    ));
    let url = format!(
        "ws://{}{CLIENT_PATH}?id=outsider&name=outsider&version=test",
        portal.addr()
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
    headers.insert(PROTOCOL_HEADER, "1".parse().unwrap());
    headers.insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            let problem: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .unwrap_or_default();
            assert_eq!(problem["type"], postern_protocol::DEVICE_REFUSED_PROBLEM);
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("198.51.100.7")),
                "{problem}"
            );
        }
        other => panic!("a client outside the token's networks was not refused: {other:?}"),
    }
    portal.stop().await;
}
