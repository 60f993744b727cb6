//! Webhooks through the API: validation, the secret shown once, events queued with the change
//! that raises them, test events, and `token.expiring` notices once per threshold.

mod common;

use chrono::{Duration, Utc};
use common::Portal;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    webhooks_are_validated_and_their_secret_is_shown_once,
    a_change_queues_its_event_for_the_subscribed_webhooks_only,
    expiring_tokens_are_noticed_once_per_threshold,
);

async fn create(portal: &Portal, body: Value) -> (StatusCode, Value) {
    portal.call(Method::POST, "/v1/webhooks", Some(body)).await
}

async fn deliveries(portal: &Portal, webhook_id: &str) -> Vec<Value> {
    portal
        .get(&format!("/v1/webhooks/{webhook_id}/deliveries"))
        .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn webhooks_are_validated_and_their_secret_is_shown_once(portal: &Portal) {
    for (body, field) in [
        (
            json!({"url": "http://hooks.example.com/", "events": ["token.revoked"]}),
            "url",
        ),
        (
            json!({"url": "https://u:p@hooks.example.com/", "events": ["token.revoked"]}),
            "url",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["webhook.test"]}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["token.exploded"]}),
            "events[0]",
        ),
    ] {
        let (status, problem) = create(portal, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (status, created) = create(
        portal,
        json!({"url": "https://hooks.example.com/postern", "events": ["token.revoked", "token.leaked"],
               "description": "SIEM"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["data"]["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 6 + 64,
        "{secret}"
    );
    let id = created["data"]["id"].as_str().unwrap().to_string();
    let shown = portal.get(&format!("/v1/webhooks/{id}")).await;
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is shown again: {shown}"
    );
    assert_eq!(
        shown["data"]["events"],
        json!(["token.revoked", "token.leaked"])
    );
    let listed = portal.get("/v1/webhooks").await;
    assert!(!listed.to_string().contains(&secret));
    let audit = portal.get("/v1/audit-events?action=webhook.create").await;
    assert!(
        !audit.to_string().contains(&secret),
        "the secret is in the audit log"
    );

    let (status, patched) = portal
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": false, "description": null, "events": ["token.created"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["data"]["enabled"], false);
    assert_eq!(patched["data"]["description"], Value::Null);
    for n in 1..20 {
        let (status, body) = create(
            portal,
            json!({"url": format!("https://hooks.example.com/{n}"), "events": ["token.created"]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, problem) = create(
        portal,
        json!({"url": "https://hooks.example.com/21", "events": ["token.created"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("at most 20"),
        "{problem}"
    );
    let (status, _) = portal
        .call(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = portal
        .call(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_change_queues_its_event_for_the_subscribed_webhooks_only(portal: &Portal) {
    let (_, revoked_only) = create(
        portal,
        json!({"url": "https://a.example.com/", "events": ["token.revoked"]}),
    )
    .await;
    let (_, created_only) = create(
        portal,
        json!({"url": "https://b.example.com/", "events": ["token.created"]}),
    )
    .await;
    let a = revoked_only["data"]["id"].as_str().unwrap();
    let b = created_only["data"]["id"].as_str().unwrap();
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner"}),
        )
        .await;
    let actor_id = sa["data"]["id"].as_str().unwrap();
    let token_id = sa["token"]["id"].as_str().unwrap();
    let (status, _) = portal
        .call(
            Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let to_a = deliveries(portal, a).await;
    assert_eq!(to_a.len(), 1, "{to_a:#?}");
    assert_eq!(to_a[0]["event_type"], "token.revoked");
    assert_eq!(to_a[0]["state"], "pending");
    assert_eq!(to_a[0]["attempts"], 0);
    assert_eq!(to_a[0]["payload"]["data"]["object_id"], token_id);
    let to_b = deliveries(portal, b).await;
    assert_eq!(to_b.len(), 1, "{to_b:#?}");
    assert_eq!(to_b[0]["event_type"], "token.created");
    assert_ne!(to_a[0]["event_id"], to_b[0]["event_id"]);
    assert!(
        !to_b[0]["payload"]
            .to_string()
            .contains(sa["token"]["secret"].as_str().unwrap()),
        "a token's secret in an event"
    );

    let (status, queued) = portal
        .call(Method::POST, &format!("/v1/webhooks/{a}/test"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["data"]["event_type"], "webhook.test");
    assert_eq!(deliveries(portal, a).await.len(), 2);
    assert_eq!(
        deliveries(portal, b).await.len(),
        1,
        "a test goes to one webhook"
    );

    // What a node claims is not claimed again until its lease ends; an ended delivery leaves
    // the log after the retention, a pending one stays.
    let now = Utc::now();
    let claimed = portal
        .store
        .claim_due_deliveries(now, 100, Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    assert!(claimed.iter().all(|d| d.secret.starts_with("whsec_")));
    let again = portal
        .store
        .claim_due_deliveries(now, 100, Duration::seconds(60))
        .await
        .unwrap();
    assert!(again.is_empty(), "claimed twice: {again:?}");
    let state = portal
        .store
        .finish_delivery(
            &claimed[0],
            postern_store::DeliveryOutcome::Delivered { status: 204 },
            now,
            Duration::seconds(10),
        )
        .await
        .unwrap();
    assert_eq!(state, postern_domain::webhooks::DeliveryState::Delivered);
    let pruned = portal
        .store
        .prune_deliveries(now + Duration::days(31))
        .await
        .unwrap();
    assert_eq!(pruned, 1, "only the delivered one");
    let left = deliveries(portal, a).await.len() + deliveries(portal, b).await.len();
    assert_eq!(left, 2);
}

async fn expiring_tokens_are_noticed_once_per_threshold(portal: &Portal) {
    let (_, webhook) = create(
        portal,
        json!({"url": "https://a.example.com/", "events": ["token.expiring"]}),
    )
    .await;
    let webhook_id = webhook["data"]["id"].as_str().unwrap();
    let expires_at = Utc::now() + Duration::days(5);
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "soon",
                   "token": {"expires_at": expires_at.to_rfc3339()}}),
        )
        .await;
    let token_id = sa["token"]["id"].as_str().unwrap();

    // 5 days before: the 7-day notice only (never the 30-day one after it), and once.
    let now = Utc::now();
    assert_eq!(portal.store.queue_expiry_notices(now).await.unwrap(), 1);
    assert_eq!(portal.store.queue_expiry_notices(now).await.unwrap(), 0);
    let queued = deliveries(portal, webhook_id).await;
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(queued[0]["event_type"], "token.expiring");
    assert_eq!(queued[0]["payload"]["data"]["days_before"], 7);
    assert_eq!(queued[0]["payload"]["data"]["token"]["id"], token_id);

    // Half a day before: the 1-day notice, once; after the expiry: nothing.
    let later = expires_at - Duration::hours(12);
    assert_eq!(portal.store.queue_expiry_notices(later).await.unwrap(), 1);
    assert_eq!(portal.store.queue_expiry_notices(later).await.unwrap(), 0);
    let queued = deliveries(portal, webhook_id).await;
    assert_eq!(
        queued[0]["payload"]["data"]["days_before"], 1,
        "{queued:#?}"
    );
    let after = expires_at + Duration::hours(1);
    assert_eq!(portal.store.queue_expiry_notices(after).await.unwrap(), 0);
}
