//! Failed API authentications are limited per source address: 20 per minute, then 429 with
//! `Retry-After` until the window ends. Every portal here is fresh, so each test starts with an
//! empty limiter; all requests come from 127.0.0.1 unless they are sent from 127.0.0.2.

mod common;

use std::net::IpAddr;

use chrono::Utc;
use common::{Backend, Portal};
use postern_token::{HashKey, TokenKind};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

const MAX_FAILURES: usize = 20;
const WINDOW_SECS: u64 = 60;

async fn start() -> Portal {
    Portal::start(Backend::Sqlite).await.expect("sqlite portal")
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    content_type: String,
    body: Value,
}

async fn send(client: &reqwest::Client, portal: &Portal, token: &str, path: &str) -> Reply {
    let response = client
        .get(format!("{}{path}", portal.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_string())
    };
    let retry_after = header(RETRY_AFTER);
    let content_type = header(CONTENT_TYPE).unwrap_or_default();
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        retry_after,
        content_type,
        body,
    }
}

/// A client whose connections come from 127.0.0.2, another source address on loopback.
fn client_from_127_0_0_2() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client")
}

/// Creates an API token, revokes it through the API, and returns (token, token id).
async fn revoked_api_token(portal: &Portal) -> (String, Uuid) {
    let token = common::api_token(&portal.store, portal.account_id, "doomed").await;
    let principal = portal
        .store
        .verify_token(&token, TokenKind::Api, Utc::now())
        .await
        .expect("fresh token");
    let actor_id = principal.actor_id.expect("an API client");
    let (status, body) = portal
        .call(
            Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{}", principal.token_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (token, principal.token_id)
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        reply.body
    );
    assert_eq!(
        reply.body["type"], "urn:postern:problem:unauthorized",
        "{what}"
    );
    assert!(
        reply.retry_after.is_none(),
        "{what}: a 401 has no Retry-After"
    );
}

fn assert_rate_limited(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        reply.body
    );
    let retry_after: u64 = reply
        .retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no Retry-After header"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not a number of seconds"));
    assert!(
        (1..=WINDOW_SECS).contains(&retry_after),
        "{what}: Retry-After {retry_after}"
    );
    assert_eq!(reply.content_type, "application/problem+json", "{what}");
    assert_eq!(
        reply.body["type"], "urn:postern:problem:rate-limited",
        "{what}"
    );
    assert_eq!(reply.body["status"], 429, "{what}");
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_failures_then_429_and_while_blocked_even_a_valid_token_gets_429() {
    let portal = start().await;
    let (revoked, revoked_id) = revoked_api_token(&portal).await;
    let unknown = postern_token::generate(TokenKind::Api, Uuid::now_v7(), &HashKey::generate());
    let client_token = portal
        .post(
            "/v1/actors",
            serde_json::json!({"type": "service_account", "name": "robot"}),
        )
        .await["token"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    // Garbage, unknown tokens, a token of the wrong kind, and a revoked token (attributable).
    let attempts: Vec<(&str, &str)> = vec![
        ("garbage", "garbage"),
        ("postern_api_", "empty body"),
        (
            "postern_api_0000000000000000000000000000000000000000000000000000000000000000000000",
            "bad checksum",
        ),
        (unknown.secret.expose(), "well-formed, unknown id"),
        (&client_token, "a client token"),
        (&revoked, "revoked"),
    ];
    let http = &portal.http;
    let mut revoked_attempts = 0;
    for i in 0..MAX_FAILURES {
        let (token, what) = attempts[i % attempts.len()];
        revoked_attempts += usize::from(what == "revoked");
        let reply = send(http, &portal, token, "/v1/actors").await;
        assert_unauthorized(&reply, &format!("failure {} ({what})", i + 1));
    }

    // The 21st failure from this address is refused before its token is even looked at.
    let reply = send(http, &portal, "garbage", "/v1/actors").await;
    assert_rate_limited(&reply, "the 21st failed attempt");

    // While blocked, the address gets 429 whatever it sends: a valid API token too, and the
    // revoked token (whose attempt is then not audited: it is never checked).
    let reply = send(http, &portal, &portal.token, "/v1/account").await;
    assert_rate_limited(&reply, "a valid token from the blocked address");
    let reply = send(http, &portal, &revoked, "/v1/actors").await;
    assert_rate_limited(&reply, "the revoked token from the blocked address");

    // Another address is not blocked, and the valid token itself is fine.
    let elsewhere = client_from_127_0_0_2();
    let reply = send(&elsewhere, &portal, &portal.token, "/v1/account").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "another address: {}",
        reply.body
    );

    // The attributable failures are in the account's audit log: the revoked token's id,
    // reason and source address, once per attempt that reached the check.
    let reply = send(
        &elsewhere,
        &portal,
        &portal.token,
        "/v1/audit-events?action=auth.failed&limit=500",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let events = reply.body["data"].as_array().expect("events");
    let revoked_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["token_id"] == revoked_id.to_string().as_str())
        .collect();
    assert!(revoked_attempts > 0);
    assert_eq!(
        revoked_events.len(),
        revoked_attempts,
        "one auth.failed per revoked attempt that was checked: {events:?}"
    );
    for event in &revoked_events {
        assert_eq!(event["action"], "auth.failed");
        assert_eq!(event["object_type"], "token");
        assert_eq!(event["object_id"], revoked_id.to_string().as_str());
        assert_eq!(event["after"]["reason"], "revoked");
        assert_eq!(event["source_ip"], "127.0.0.1");
        assert_eq!(event["account_id"], portal.account_id.to_string().as_str());
        assert!(event["actor_id"].is_null(), "nobody authenticated: {event}");
    }
    assert!(
        events
            .iter()
            .all(|e| e["token_id"] == revoked_id.to_string().as_str()),
        "unattributable failures belong to no account: {events:?}"
    );
    portal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_do_not_count_and_the_limit_is_per_address() {
    let portal = start().await;
    let http = &portal.http;
    // Many successes do not use up the allowance.
    for _ in 0..30 {
        let reply = send(http, &portal, &portal.token, "/v1/account").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // 19 failures: still not blocked; the valid token keeps working in between.
    for i in 0..MAX_FAILURES - 1 {
        let reply = send(http, &portal, "postern_api_nope", "/v1/actors").await;
        assert_unauthorized(&reply, &format!("failure {}", i + 1));
    }
    let reply = send(http, &portal, &portal.token, "/v1/account").await;
    assert_eq!(reply.status, StatusCode::OK, "19 failures do not block");
    // The 20th failure is still answered 401; the next request of any kind is 429.
    let reply = send(http, &portal, "postern_api_nope", "/v1/actors").await;
    assert_unauthorized(&reply, "failure 20");
    let reply = send(http, &portal, &portal.token, "/v1/account").await;
    assert_rate_limited(&reply, "a valid token after 20 failures");

    // 127.0.0.2 has its own allowance: 20 failures, then 429 there too.
    let elsewhere = client_from_127_0_0_2();
    for i in 0..MAX_FAILURES {
        let reply = send(&elsewhere, &portal, "garbage", "/v1/actors").await;
        assert_unauthorized(&reply, &format!("127.0.0.2 failure {}", i + 1));
    }
    let reply = send(&elsewhere, &portal, "garbage", "/v1/actors").await;
    assert_rate_limited(&reply, "127.0.0.2 after 20 failures");
    portal.stop().await;
}
