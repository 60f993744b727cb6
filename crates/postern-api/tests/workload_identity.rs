//! Workload identity federation over a real portal on a real socket, with a real OIDC issuer
//! on localhost (discovery and JWKS over HTTP) signing ID tokens: matching tokens are exchanged
//! for client tokens that open a session; every kind of bad token is refused with its reason.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use common::Portal;
use parking_lot::Mutex;
use postern_protocol::{CLIENT_PATH, PROTOCOL_HEADER};
use postern_workload_identity::test_issuer::TestIssuer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

on_both_backends!(
    a_matching_id_token_is_exchanged_for_a_token_that_connects,
    every_kind_of_bad_id_token_is_refused_with_its_reason,
    the_token_exchange_form_of_rfc_8693_is_answered_in_kind,
    a_renewal_takes_over_from_the_token_presented,
    deleting_a_workload_identity_revokes_its_tokens,
    an_issuer_that_rotates_its_keys_is_followed_and_offline_keys_work,
    rules_are_checked_when_created,
    exchanged_tokens_are_not_expiring_and_are_purged_a_week_after_they_end,
    another_accounts_rules_are_looked_at_only_when_asked_for,
);

/// An OIDC issuer on localhost: discovery and a key set that can be replaced; counts the key
/// set's fetches.
struct Issuer {
    signer: TestIssuer,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let signer = TestIssuer::new(&base, "k1");
    let jwks = Arc::new(Mutex::new(signer.jwks()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let discovery = signer.discovery(&format!("{base}/jwks"));
    let served = jwks.clone();
    let counted = fetches.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route(
            "/jwks",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let keys = served.lock().clone();
                async move { Json(keys) }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Issuer {
        signer,
        jwks,
        fetches,
    }
}

const SUBJECT: &str = "repo:acme/deploy:ref:refs/heads/main";

fn now() -> i64 {
    Utc::now().timestamp()
}

/// A service account with a workload identity for the issuer: (actor id, rule).
async fn trusting(portal: &Portal, issuer: &Issuer, name: &str) -> (String, Value) {
    let actor = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": name}),
        )
        .await;
    let actor_id = actor["data"]["id"].as_str().unwrap().to_string();
    let rule = portal
        .post(
            &format!("/v1/actors/{actor_id}/workload-identities"),
            json!({
                "issuer": issuer.signer.issuer,
                "audience": "postern",
                "subject": "repo:acme/deploy:*",
                "claims": {"repository_owner": "acme"},
            }),
        )
        .await["data"]
        .clone();
    (actor_id, rule)
}

async fn exchange(portal: &Portal, body: Value) -> (StatusCode, Value) {
    let response = portal
        .http
        .post(format!("{}/v1/workload-identity/exchange", portal.base))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn exchange_form(portal: &Portal, fields: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = portal
        .http
        .post(format!("{}/v1/workload-identity/exchange", portal.base))
        .form(fields)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Whether a client session opens with this token.
async fn connects(portal: &Portal, token: &str) -> Result<(), StatusCode> {
    let url = format!(
        "ws://{}{CLIENT_PATH}?id=wi-device&name=wi-device&version=test",
        portal.addr()
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert(PROTOCOL_HEADER, "1".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(err) => panic!("connect: {err}"),
    }
}

async fn a_matching_id_token_is_exchanged_for_a_token_that_connects(portal: &Portal) {
    let issuer = issuer().await;
    let (actor_id, rule) = trusting(portal, &issuer, "ci-deploy").await;
    assert_eq!(rule["token_lifetime_seconds"], 3600);
    let id_token = issuer
        .signer
        .sign(&issuer.signer.claims("postern", SUBJECT, now()));

    let (status, body) = exchange(portal, json!({ "id_token": id_token })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let exchanged = &body["data"];
    let secret = exchanged["secret"].as_str().unwrap();
    let parsed = postern_token::parse(secret).expect("a token");
    assert_eq!(parsed.kind, postern_token::TokenKind::Client);
    assert_eq!(
        parsed.id.to_string(),
        exchanged["token_id"].as_str().unwrap()
    );
    assert_eq!(exchanged["actor_id"], actor_id.as_str());
    assert_eq!(exchanged["workload_identity_id"], rule["id"]);
    let expires_at: DateTime<Utc> = exchanged["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_at - Utc::now();
    assert!(
        lifetime > chrono::Duration::minutes(59) && lifetime <= chrono::Duration::hours(1),
        "{lifetime}"
    );
    assert_eq!(connects(portal, secret).await, Ok(()));

    // Listed among the service account's tokens, tied to the rule; the rule was used.
    let tokens = portal.get(&format!("/v1/actors/{actor_id}/tokens")).await;
    let listed = tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["id"] == exchanged["token_id"])
        .expect("listed")
        .clone();
    assert_eq!(listed["workload_identity_id"], rule["id"]);
    assert!(
        listed["name"].as_str().unwrap().ends_with(SUBJECT),
        "{listed}"
    );
    let rule_now = portal
        .get(&format!(
            "/v1/actors/{actor_id}/workload-identities/{}",
            rule["id"].as_str().unwrap()
        ))
        .await;
    assert!(rule_now["data"]["last_used_at"].is_string());

    // Audited with the claims that matched, attributed to the service account.
    let audit = portal.get("/v1/audit-events?action=token.exchange").await["data"][0].clone();
    assert_eq!(audit["object_id"], exchanged["token_id"]);
    assert_eq!(audit["actor_id"], actor_id.as_str());
    assert_eq!(audit["after"]["claims"]["sub"], SUBJECT);
    assert_eq!(audit["after"]["claims"]["repository_owner"], "acme");
    assert!(!audit.to_string().contains(secret));
}

async fn every_kind_of_bad_id_token_is_refused_with_its_reason(portal: &Portal) {
    let issuer = issuer().await;
    trusting(portal, &issuer, "ci-deploy").await;
    let signer = &issuer.signer;
    let good = || signer.claims("postern", SUBJECT, now());
    let refused = |detail_has: &'static str, id_token: String| async move {
        let (status, body) = exchange(portal, json!({ "id_token": id_token })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let detail = body["detail"].as_str().unwrap_or_default().to_string();
        assert!(
            detail.contains(detail_has),
            "'{detail_has}' not in: {detail}"
        );
    };

    let mut claims = good();
    claims["aud"] = json!("someone-else");
    refused("no workload identity trusts", signer.sign(&claims)).await;

    let mut claims = good();
    claims["sub"] = json!("repo:evil/deploy:ref:refs/heads/main");
    refused("subject 'repo:evil/deploy", signer.sign(&claims)).await;

    let mut claims = good();
    claims["repository_owner"] = json!("evil");
    refused("repository_owner", signer.sign(&claims)).await;

    let mut claims = good();
    claims["exp"] = json!(now() - 600);
    refused("expired", signer.sign(&claims)).await;

    let impostor = TestIssuer::new(&signer.issuer, "k1");
    refused("signature does not verify", impostor.sign(&good())).await;

    let header = json!({"alg": "ES256", "kid": "k9"});
    refused(
        "no key with id 'k9' (its keys: k1)",
        signer.sign_with_header(&header, &good()),
    )
    .await;

    refused("'none' is refused", TestIssuer::unsigned(&good())).await;
    let header = json!({"alg": "HS256", "kid": "k1"});
    refused(
        "'HS256' is refused",
        signer.sign_with_header(&header, &good()),
    )
    .await;
    refused("not a JWT", "garbage".into()).await;

    // An issuer nobody trusts is never fetched from.
    let stranger = TestIssuer::new("https://stranger.example", "s1");
    refused(
        "no workload identity trusts ID tokens from 'https://stranger.example'",
        stranger.sign(&stranger.claims("postern", SUBJECT, now())),
    )
    .await;

    // A missing field is a bad request, not a refusal.
    let (status, _) = exchange(portal, json!({ "token": "x" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing was issued.
    let audit = portal.get("/v1/audit-events?action=token.exchange").await;
    assert_eq!(audit["data"].as_array().unwrap().len(), 0);
}

async fn the_token_exchange_form_of_rfc_8693_is_answered_in_kind(portal: &Portal) {
    let issuer = issuer().await;
    let (_, rule) = trusting(portal, &issuer, "ci-deploy").await;
    let id_token = issuer
        .signer
        .sign(&issuer.signer.claims("postern", SUBJECT, now()));
    let grant = "urn:ietf:params:oauth:grant-type:token-exchange";
    let id_token_type = "urn:ietf:params:oauth:token-type:id_token";
    let (status, body) = exchange_form(
        portal,
        &[
            ("grant_type", grant),
            ("subject_token", &id_token),
            ("subject_token_type", id_token_type),
            ("audience", rule["id"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(
        connects(portal, body["access_token"].as_str().unwrap()).await,
        Ok(())
    );

    let (status, body) = exchange_form(
        portal,
        &[
            ("grant_type", "client_credentials"),
            ("subject_token", &id_token),
            ("subject_token_type", id_token_type),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");

    let mut claims = issuer.signer.claims("postern", SUBJECT, now());
    claims["exp"] = json!(now() - 600);
    let expired = issuer.signer.sign(&claims);
    let (status, body) = exchange_form(
        portal,
        &[
            ("grant_type", grant),
            ("subject_token", &expired),
            ("subject_token_type", id_token_type),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

async fn a_renewal_takes_over_from_the_token_presented(portal: &Portal) {
    let issuer = issuer().await;
    let (actor_id, _) = trusting(portal, &issuer, "ci-deploy").await;
    let sign = || {
        issuer
            .signer
            .sign(&issuer.signer.claims("postern", SUBJECT, now()))
    };
    let (_, first) = exchange(portal, json!({ "id_token": sign() })).await;
    let first = &first["data"];
    assert!(first["replaces"].is_null());
    let (status, second) = exchange(
        portal,
        json!({ "id_token": sign(), "actor_token": first["secret"] }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second = &second["data"];
    assert_eq!(second["replaces"], first["token_id"]);
    let old = portal
        .get(&format!(
            "/v1/actors/{actor_id}/tokens/{}",
            first["token_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(old["data"]["successor_id"], second["token_id"]);
    // The replaced token still works until it expires (its device moves on its own).
    assert_eq!(
        connects(portal, first["secret"].as_str().unwrap()).await,
        Ok(())
    );

    // Presented again (a retry), it takes over nothing: the new token starts afresh.
    let (_, third) = exchange(
        portal,
        json!({ "id_token": sign(), "actor_token": first["secret"] }),
    )
    .await;
    assert!(third["data"]["replaces"].is_null(), "{third}");
    // Another service account's token is not taken over either.
    let other = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "other", "token": {"name": "t"}}),
        )
        .await;
    let (_, fourth) = exchange(
        portal,
        json!({ "id_token": sign(), "actor_token": other["token"]["secret"] }),
    )
    .await;
    assert!(fourth["data"]["replaces"].is_null(), "{fourth}");
}

async fn deleting_a_workload_identity_revokes_its_tokens(portal: &Portal) {
    let issuer = issuer().await;
    let (actor_id, rule) = trusting(portal, &issuer, "ci-deploy").await;
    let id_token = issuer
        .signer
        .sign(&issuer.signer.claims("postern", SUBJECT, now()));
    let (_, exchanged) = exchange(portal, json!({ "id_token": id_token.clone() })).await;
    let secret = exchanged["data"]["secret"].as_str().unwrap().to_string();
    // A token created by hand for the same account is not the rule's.
    let kept = portal
        .post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": "by hand"}),
        )
        .await;
    let path = format!(
        "/v1/actors/{actor_id}/workload-identities/{}",
        rule["id"].as_str().unwrap()
    );
    let (status, body) = portal.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["revoked_tokens"], 1);
    assert_eq!(
        connects(portal, &secret).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        connects(portal, kept["data"]["secret"].as_str().unwrap()).await,
        Ok(())
    );
    let (status, _) = portal.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same ID token earns nothing now.
    let (status, _) = exchange(portal, json!({ "id_token": id_token })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn an_issuer_that_rotates_its_keys_is_followed_and_offline_keys_work(portal: &Portal) {
    let issuer = issuer().await;
    trusting(portal, &issuer, "ci-deploy").await;
    let claims = issuer.signer.claims("postern", SUBJECT, now());
    let (status, _) = exchange(portal, json!({ "id_token": issuer.signer.sign(&claims) })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = exchange(portal, json!({ "id_token": issuer.signer.sign(&claims) })).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "the keys are cached"
    );

    // The issuer rotates to a new key: a token signed with it makes the portal fetch again.
    let rotated = TestIssuer::new(&issuer.signer.issuer, "k2");
    *issuer.jwks.lock() = rotated.jwks();
    let (status, body) = exchange(portal, json!({ "id_token": rotated.sign(&claims) })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
    // An unknown key id fetches again at most once a minute.
    let header = json!({"alg": "ES256", "kid": "k3"});
    for _ in 0..3 {
        let (status, _) = exchange(
            portal,
            json!({ "id_token": rotated.sign_with_header(&header, &claims) }),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);

    // Offline: the rule carries the keys of an issuer the portal cannot reach.
    let offline = TestIssuer::new("https://offline.invalid", "o1");
    let actor = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "offline"}),
        )
        .await;
    portal
        .post(
            &format!(
                "/v1/actors/{}/workload-identities",
                actor["data"]["id"].as_str().unwrap()
            ),
            json!({
                "issuer": offline.issuer, "audience": "postern",
                "subject": "system:serviceaccount:billing:*", "jwks": offline.jwks(),
            }),
        )
        .await;
    let token =
        offline.sign(&offline.claims("postern", "system:serviceaccount:billing:worker", now()));
    let (status, body) = exchange(portal, json!({ "id_token": token })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn exchanged_tokens_are_not_expiring_and_are_purged_a_week_after_they_end(portal: &Portal) {
    let issuer = issuer().await;
    let (actor_id, _) = trusting(portal, &issuer, "ci-deploy").await;
    let id_token = issuer
        .signer
        .sign(&issuer.signer.claims("postern", SUBJECT, now()));
    let (_, exchanged) = exchange(portal, json!({ "id_token": id_token })).await;
    let token_id = exchanged["data"]["token_id"].as_str().unwrap().to_string();
    // A token made by hand that expires tomorrow is expiring; the exchanged one, ending within
    // the hour by design, is not.
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    portal
        .post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": "by hand", "expires_at": tomorrow}),
        )
        .await;
    let all = portal.get("/v1/tokens").await;
    let row = |id: &str| {
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|token| token["id"] == id)
            .cloned()
            .expect("listed")
    };
    assert_eq!(row(&token_id)["expiring_soon"], false);
    let expiring = portal.get("/v1/tokens?expiring=true").await;
    let names: Vec<&str> = expiring["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|token| token["name"].as_str())
        .collect();
    assert_eq!(names, ["by hand"]);

    // Kept for a week after it ends, then purged (the audit log keeps its record).
    let purged = portal
        .store
        .purge_ended_exchanged_tokens(Utc::now() + chrono::Duration::days(6))
        .await
        .unwrap();
    assert_eq!(purged, 0);
    let purged = portal
        .store
        .purge_ended_exchanged_tokens(Utc::now() + chrono::Duration::days(8))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let (status, _) = portal
        .call(
            Method::GET,
            &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let tokens = portal.get(&format!("/v1/actors/{actor_id}/tokens")).await;
    assert!(
        tokens["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|token| token["id"] != token_id.as_str() && token["name"] != ""),
        "only the exchanged token is gone: {tokens}"
    );
    assert!(tokens.to_string().contains("by hand"));
    let audit = portal.get("/v1/audit-events?action=token.exchange").await;
    assert_eq!(audit["data"][0]["object_id"], token_id.as_str());
}

async fn rules_are_checked_when_created(portal: &Portal) {
    let issuer = issuer().await;
    let (actor_id, _) = trusting(portal, &issuer, "ci-deploy").await;
    let path = format!("/v1/actors/{actor_id}/workload-identities");
    let invalid = |body: Value, field: &'static str| {
        let path = path.clone();
        async move {
            let (status, response) = portal.call(Method::POST, &path, Some(body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{response}");
            assert!(response.to_string().contains(field), "{field}: {response}");
        }
    };
    let base =
        json!({"issuer": issuer.signer.issuer, "audience": "postern", "subject": "repo:acme/*"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    invalid(with("subject", json!("*")), "subject").await;
    invalid(with("issuer", json!("http://issuer.example")), "issuer").await;
    invalid(with("token_lifetime", json!("2d")), "token_lifetime").await;
    invalid(with("jwks", json!({"keys": []})), "jwks").await;
    invalid(with("claims", json!({"sub": "x"})), "claims.sub").await;
    // An API client cannot have one: its tokens are not client tokens.
    let api = portal
        .post(
            "/v1/actors",
            json!({"type": "api_client", "name": "automation"}),
        )
        .await;
    let (status, body) = portal
        .call(
            Method::POST,
            &format!(
                "/v1/actors/{}/workload-identities",
                api["data"]["id"].as_str().unwrap()
            ),
            Some(base.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("is an API client"),
        "{body}"
    );
    let list = portal.get(&path).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

/// `POST path` with `token` (another account's API token); the answer's `data`.
async fn post_as(portal: &Portal, token: &str, path: &str, body: Value) -> Value {
    let response = portal
        .http
        .post(format!("{}{path}", portal.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED, "POST {path}");
    response.json::<Value>().await.unwrap()["data"].clone()
}

async fn another_accounts_rules_are_looked_at_only_when_asked_for(portal: &Portal) {
    let issuer = issuer().await;
    let (ours, _) = trusting(portal, &issuer, "ci-deploy").await;
    // Another tenant trusts every repository's tokens from the same issuer and audience.
    let other = portal
        .store
        .create_account("other", "Other", &postern_domain::Acting::local_cli())
        .await
        .unwrap();
    let other_token = common::api_token(&portal.store, other.id, "other-admin").await;
    let mut rules = Vec::new();
    for batch in 0..5 {
        let actor = post_as(
            portal,
            &other_token,
            "/v1/actors",
            json!({"type": "service_account", "name": format!("greedy-{batch}")}),
        )
        .await;
        let actor_id = actor["id"].as_str().unwrap().to_string();
        for n in 0..if batch == 0 { 1 } else { 50 } {
            let rule = post_as(
                portal,
                &other_token,
                &format!("/v1/actors/{actor_id}/workload-identities"),
                json!({
                    "name": format!("all-{n}"),
                    "issuer": issuer.signer.issuer,
                    "audience": "postern",
                    "subject": "repo:*",
                }),
            )
            .await;
            rules.push((actor_id.clone(), rule["id"].as_str().unwrap().to_string()));
        }
        if batch == 0 {
            let id_token = issuer
                .signer
                .sign(&issuer.signer.claims("postern", SUBJECT, now()));
            // Without an account named, the portal's default account's rules only: ours,
            // not ambiguous with theirs.
            let (status, body) = exchange(portal, json!({ "id_token": id_token })).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["data"]["actor_id"], ours.as_str());
            let (status, body) = exchange(
                portal,
                json!({ "id_token": id_token, "account": "default" }),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["data"]["actor_id"], ours.as_str());
            // Their account only when the workload asks for it, or names their rule.
            let (status, body) =
                exchange(portal, json!({ "id_token": id_token, "account": "other" })).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["data"]["actor_id"], rules[0].0.as_str());
            let (status, body) = exchange(
                portal,
                json!({ "id_token": id_token, "workload_identity_id": rules[0].1 }),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["data"]["actor_id"], rules[0].0.as_str());
            let (status, body) =
                exchange(portal, json!({ "id_token": id_token, "account": "nope" })).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(body.to_string().contains("no account 'nope'"), "{body}");
        }
    }
    // 201 rules for the issuer and audience in their account: too many to look at; the
    // refusal says how to name one, and naming one works.
    let id_token = issuer
        .signer
        .sign(&issuer.signer.claims("postern", SUBJECT, now()));
    let (status, body) =
        exchange(portal, json!({ "id_token": id_token, "account": "other" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("more than 200"), "{body}");
    assert!(body.to_string().contains("workload_identity_id"), "{body}");
    let (last_actor, last_rule) = rules.last().unwrap();
    let (status, body) = exchange(
        portal,
        json!({ "id_token": id_token, "workload_identity_id": last_rule }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["actor_id"], last_actor.as_str());
    // Ours is still found without naming it.
    let (status, body) = exchange(portal, json!({ "id_token": id_token })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["actor_id"], ours.as_str());
}
