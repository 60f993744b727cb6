//! Expiry governance: the account's warning period and `GET /v1/tokens` across every holder.

mod common;

use chrono::{Duration, Utc};
use common::Portal;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    expiring_tokens_are_listed_across_holders_within_the_warning_period,
    the_warning_period_is_a_validated_account_setting,
);

fn in_days(days: i64) -> String {
    (Utc::now() + Duration::days(days) + Duration::hours(1)).to_rfc3339()
}

/// (name, expires_in_days, holder_name, expiring_soon) of each listed token, by name.
fn listed(body: &Value) -> Vec<(String, i64, String, bool)> {
    let mut rows: Vec<_> = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["expires_in_days"].as_i64().unwrap(),
                t["holder_name"].as_str().unwrap().to_string(),
                t["expiring_soon"].as_bool().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

async fn expiring_tokens_are_listed_across_holders_within_the_warning_period(portal: &Portal) {
    let runner = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner",
                   "token": {"name": "in-5", "expires_at": in_days(5)}}),
        )
        .await;
    let runner_id = runner["data"]["id"].as_str().unwrap();
    let tokens = format!("/v1/actors/{runner_id}/tokens");
    portal
        .post(&tokens, json!({"name": "in-20", "expires_at": in_days(20)}))
        .await;
    portal
        .post(
            &tokens,
            json!({"name": "in-100", "expires_at": in_days(100)}),
        )
        .await;
    let revoked = portal
        .post(
            &tokens,
            json!({"name": "revoked-in-3", "expires_at": in_days(3)}),
        )
        .await;
    let (status, _) = portal
        .call(
            Method::DELETE,
            &format!("{tokens}/{}", revoked["data"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let site = portal.post("/v1/sites", json!({"name": "dc-1"})).await;
    portal
        .post(
            &format!(
                "/v1/sites/{}/gateway_tokens",
                site["data"]["id"].as_str().unwrap()
            ),
            json!({"name": "gw-in-10", "expires_at": in_days(10)}),
        )
        .await;

    // The default warning period is 30 days; revoked tokens and later ones are left out.
    let body = portal.get("/v1/tokens?expiring=true").await;
    assert_eq!(
        listed(&body),
        vec![
            ("gw-in-10".into(), 10, "dc-1".into(), true),
            ("in-20".into(), 20, "runner".into(), true),
            ("in-5".into(), 5, "runner".into(), true),
        ],
        "{body}"
    );
    let gateway = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gw-in-10")
        .unwrap();
    assert_eq!(gateway["holder_type"], "site");
    assert_eq!(gateway["kind"], "gateway");
    assert_eq!(gateway["online_sessions"], 0);

    // Any horizon, a kind, and revoked tokens on request.
    let before = urlencode(&in_days(7));
    let body = portal
        .get(&format!("/v1/tokens?expires_before={before}"))
        .await;
    assert_eq!(
        listed(&body),
        vec![("in-5".into(), 5, "runner".into(), true)]
    );
    let body = portal.get("/v1/tokens?expiring=true&kind=gateway").await;
    assert_eq!(listed(&body).len(), 1, "{body}");
    let body = portal
        .get(&format!(
            "/v1/tokens?expires_before={before}&include_revoked=true"
        ))
        .await;
    let names: Vec<String> = listed(&body).into_iter().map(|row| row.0).collect();
    assert_eq!(names, vec!["in-5", "revoked-in-3"], "{body}");
    let revoked_row = &listed(&body)[1];
    assert!(!revoked_row.3, "a revoked token is not 'expiring soon'");
    // Without a horizon: every live token of the account (the portal's API token too).
    let body = portal.get("/v1/tokens").await;
    let names: Vec<String> = listed(&body).into_iter().map(|row| row.0).collect();
    for name in ["in-5", "in-20", "in-100", "gw-in-10"] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    assert!(!names.contains(&"revoked-in-3".to_string()));
    let in_100 = listed(&body)
        .into_iter()
        .find(|row| row.0 == "in-100")
        .unwrap();
    assert!(!in_100.3, "100 days out is not within 30");

    // A shorter warning period narrows the list at once.
    let (status, body) = portal
        .call(
            Method::PATCH,
            "/v1/account",
            Some(json!({"settings": {"token_expiry_warning_days": 7}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["settings"]["token_expiry_warning_days"], 7);
    let body = portal.get("/v1/tokens?expiring=true").await;
    assert_eq!(
        listed(&body),
        vec![("in-5".into(), 5, "runner".into(), true)]
    );

    // Both horizons: the earlier holds (7 days of warning, 2 days asked).
    let two_days = urlencode(&in_days(2));
    let body = portal
        .get(&format!(
            "/v1/tokens?expiring=true&expires_before={two_days}"
        ))
        .await;
    assert_eq!(listed(&body), vec![], "{body}");
    let body = portal
        .get(&format!(
            "/v1/tokens?expiring=true&expires_before={}",
            urlencode(&in_days(60))
        ))
        .await;
    assert_eq!(
        listed(&body),
        vec![("in-5".into(), 5, "runner".into(), true)]
    );
    let (status, body) = portal
        .call(Method::GET, "/v1/tokens?kind=robot", None)
        .await;
    assert!(status.is_client_error(), "{status} {body}");
}

async fn the_warning_period_is_a_validated_account_setting(portal: &Portal) {
    let account = portal.get("/v1/account").await;
    assert_eq!(account["data"]["settings"]["token_expiry_warning_days"], 30);
    for bad in [json!(0), json!(366), json!(1.5), json!("7")] {
        let (status, body) = portal
            .call(
                Method::PATCH,
                "/v1/account",
                Some(json!({"settings": {"token_expiry_warning_days": bad}})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert!(
            body["field"]
                .as_str()
                .is_some_and(|f| f.contains("token_expiry_warning_days")),
            "{bad}: {body}"
        );
    }
    let account = portal.get("/v1/account").await;
    assert_eq!(account["data"]["settings"]["token_expiry_warning_days"], 30);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
