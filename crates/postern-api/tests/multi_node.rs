//! Several portal nodes on one PostgreSQL database: a change on one reaches the others at once.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Backend, Portal};
use postern_store::Store;
use postern_token::TokenKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_node_reaches_the_others_cache() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let node_b = Store::connect(&url).await.expect("second node");
    let listener = node_b.spawn_change_listener().expect("postgres listens");
    let mut events_on_b = node_b.subscribe();

    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let secret = created["token"]["secret"].as_str().unwrap().to_string();
    // Node B verifies once, so the token's record sits in B's cache (trusted for 10 s).
    node_b
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await
        .expect("valid on node B");

    let actor_id = created["data"]["id"].as_str().unwrap();
    let token_id = created["token"]["id"].as_str().unwrap();
    let (status, _) = node_a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert!(status.is_success());

    // Well inside the cache's 10 s lifetime, B must refuse the token: only the notification
    // from node A can have told it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match node_b
            .verify_token(&secret, TokenKind::Client, Utc::now())
            .await
        {
            Err(err) => {
                assert_eq!(err.reason(), "revoked");
                break;
            }
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(_) => panic!("node B still accepts a token revoked on node A"),
        }
    }
    // And B's subscribers (later: its connected clients) hear of it.
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(postern_domain::ChangeEvent::TokensRevoked { token_ids, .. }) =
                events_on_b.recv().await
            {
                return token_ids;
            }
        }
    })
    .await
    .expect("event reaches node B");
    assert_eq!(event[0].to_string(), token_id);

    listener.abort();
    node_b.close().await;
    node_a.stop().await;
}
