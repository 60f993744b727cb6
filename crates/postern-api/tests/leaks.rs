//! Leaked tokens: revoked by whoever presents them, and by GitHub's signed secret-scanning
//! reports, over a real portal on a real socket.

mod common;

use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use common::{Backend, Portal};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use postern_store::AuthError;
use postern_token::TokenKind;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;

on_both_backends!(
    a_token_presented_is_revoked_for_good_and_audited,
    an_api_token_can_revoke_itself,
);

/// A service account with a token: (actor id, token id, secret).
async fn service_account(portal: &Portal, name: &str) -> (String, String, String) {
    let created = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": name, "token": {"name": "fleet"}}),
        )
        .await;
    (
        created["data"]["id"].as_str().unwrap().to_string(),
        created["token"]["id"].as_str().unwrap().to_string(),
        created["token"]["secret"].as_str().unwrap().to_string(),
    )
}

async fn present(portal: &Portal, token: &str) -> (StatusCode, Value) {
    let response = portal
        .http
        .post(format!("{}/v1/tokens/revoke-presented", portal.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The same token id with another (valid-looking) secret: what a guesser who saw the id has.
fn with_other_secret(token: &str) -> String {
    let parsed = postern_token::parse(token).expect("a token");
    fresh(parsed.kind, parsed.id)
}

/// A well-formed token of `kind` for `id` that this portal never issued.
fn fresh(kind: TokenKind, id: uuid::Uuid) -> String {
    let key = postern_token::HashKey::generate();
    postern_token::generate(kind, id, &key)
        .secret
        .expose()
        .to_string()
}

async fn audit(portal: &Portal, action: &str) -> Vec<Value> {
    portal
        .get(&format!("/v1/audit-events?action={action}"))
        .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

async fn a_token_presented_is_revoked_for_good_and_audited(portal: &Portal) {
    let (_, token_id, secret) = service_account(portal, "leaky").await;
    let (_, other_id, other_secret) = service_account(portal, "bystander").await;

    // The id with a wrong secret, an unknown token and plain text change nothing.
    for text in [
        with_other_secret(&secret),
        fresh(TokenKind::Client, uuid::Uuid::now_v7()),
        "hello".to_string(),
    ] {
        let (status, body) = present(portal, &text).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["type"], "urn:postern:problem:not-found");
        assert!(!body.to_string().contains(&text), "echoes the text: {body}");
    }
    portal
        .store
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await
        .expect("still valid after failed presentations");

    let (status, body) = present(portal, &format!("  {secret}\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["token_id"], token_id.as_str());
    assert_eq!(body["data"]["kind"], "client");
    assert_eq!(body["data"]["newly_revoked"], true);
    assert!(!body.to_string().contains(&secret), "echoes the secret");
    let refused = portal
        .store
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await;
    assert!(
        matches!(refused, Err(AuthError::Revoked { .. })),
        "{refused:?}"
    );
    portal
        .store
        .verify_token(&other_secret, TokenKind::Client, Utc::now())
        .await
        .expect("another token is untouched");
    let _ = other_id;

    // Presenting it again is harmless and says so.
    let (status, body) = present(portal, &secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["newly_revoked"], false);

    let events = audit(portal, "token.revoke").await;
    let ours: Vec<&Value> = events
        .iter()
        .filter(|event| event["object_id"] == token_id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "one revocation recorded: {events:?}");
    assert_eq!(ours[0]["after"]["revoked_because"], "presented");
    assert_eq!(ours[0]["actor_id"], Value::Null);
    assert_eq!(ours[0]["token_id"], token_id.as_str());
    assert_eq!(ours[0]["source_ip"], "127.0.0.1");
}

async fn an_api_token_can_revoke_itself(portal: &Portal) {
    let token = common::api_token(&portal.store, portal.account_id, "leaked-admin").await;
    let (status, _) = portal
        .call_as(&token, Method::GET, "/v1/account", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = present(portal, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["kind"], "api");
    let (status, body) = portal
        .call_as(&token, Method::GET, "/v1/account", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn unknown_texts_are_limited_like_failed_authentications() {
    let portal = Portal::start(Backend::Sqlite).await.expect("portal");
    let (_, _, secret) = service_account(&portal, "target").await;
    let forged = with_other_secret(&secret);
    for _ in 0..20 {
        let (status, _) = present(&portal, &forged).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, body) = present(&portal, &forged).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    portal.stop().await;
}

// --- GitHub secret scanning ---

struct GithubKey {
    id: &'static str,
    key: SigningKey,
}

impl GithubKey {
    fn new(id: &'static str) -> Self {
        Self {
            id,
            key: SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

/// GitHub's public-keys document listing `keys`.
fn keys_document(keys: &[&GithubKey]) -> String {
    let entries: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({
                "key_identifier": k.id,
                "key": k.key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                "is_current": true,
            })
        })
        .collect();
    json!({ "public_keys": entries }).to_string()
}

async fn report(portal: &Portal, key_id: &str, signature: &str, body: &str) -> (StatusCode, Value) {
    let response = portal
        .http
        .post(format!("{}/v1/secret-scanning/github", portal.base))
        .header("content-type", "application/json")
        .header("Github-Public-Key-Identifier", key_id)
        .header("Github-Public-Key-Signature", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_token_github_finds_is_revoked_only_on_a_valid_signature() {
    let github = GithubKey::new("github-1");
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("github-keys.json");
    std::fs::write(&keys_path, keys_document(&[&github])).unwrap();
    let keys = Arc::new(postern_api::GithubKeysFile::load(keys_path.clone()).expect("keys"));
    let portal = Portal::start_customized(
        Backend::Sqlite,
        postern_api::ServerConfig::default(),
        |mut state| {
            state.github_keys = Some(keys);
            state
        },
    )
    .await
    .expect("portal");
    let (_, token_id, secret) = service_account(&portal, "pushed-to-github").await;
    let unknown = with_other_secret(&secret);
    let url = "https://github.com/octo/app/blob/0123abcd/.env";
    let body = json!([
        {"token": secret, "type": "postern_client_token", "url": url, "source": "content"},
        {"token": unknown, "type": "postern_client_token", "url": url, "source": "content"},
        {"token": "postern_client_notreally", "type": "postern_client_token", "url": url, "source": "commit"},
    ])
    .to_string();

    // Refused without changing anything: a stranger's key under GitHub's id, an unknown id, a
    // signature of another body, no signature.
    let stranger = GithubKey::new("github-1");
    for (key_id, signature) in [
        ("github-1", stranger.sign(body.as_bytes())),
        ("github-2", github.sign(body.as_bytes())),
        ("github-1", github.sign(b"[]")),
        ("github-1", String::new()),
    ] {
        let (status, answer) = report(&portal, key_id, &signature, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key_id}: {answer}");
        assert_eq!(answer["type"], "urn:postern:problem:unauthorized");
    }
    portal
        .store
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await
        .expect("a refused report revokes nothing");
    assert!(audit(&portal, "token.leaked").await.is_empty());

    let (status, answer) = report(&portal, "github-1", &github.sign(body.as_bytes()), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let labels: Vec<(&str, &str)> = answer
        .as_array()
        .expect("GitHub's format: an array")
        .iter()
        .map(|v| {
            (
                v["token_hash"].as_str().unwrap(),
                v["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            (sha256_hex(&secret).as_str(), "true_positive"),
            (sha256_hex(&unknown).as_str(), "false_positive"),
            (
                sha256_hex("postern_client_notreally").as_str(),
                "false_positive"
            ),
        ]
    );
    assert!(
        !answer.to_string().contains(&secret),
        "the answer echoes the secret"
    );
    let refused = portal
        .store
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await;
    assert!(
        matches!(refused, Err(AuthError::Revoked { .. })),
        "{refused:?}"
    );
    let leaked = audit(&portal, "token.leaked").await;
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert_eq!(leaked[0]["object_id"], token_id.as_str());
    assert_eq!(leaked[0]["after"]["url"], url);
    assert_eq!(leaked[0]["after"]["reporter"], "github_secret_scanning");
    assert_eq!(leaked[0]["after"]["already_revoked"], false);

    // GitHub rotates its key: the operator replaces the file and the new key is taken at once.
    let rotated = GithubKey::new("github-2");
    std::fs::write(&keys_path, keys_document(&[&rotated])).unwrap();
    let file = std::fs::File::options()
        .write(true)
        .open(&keys_path)
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let (status, answer) = report(&portal, "github-2", &rotated.sign(b"[]"), "[]").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!([]));
    let (status, _) = report(&portal, "github-1", &github.sign(b"[]"), "[]").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the removed key no longer verifies"
    );
    portal.stop().await;
}

#[tokio::test]
async fn without_keys_the_github_endpoint_says_it_is_not_enabled() {
    let portal = Portal::start(Backend::Sqlite).await.expect("portal");
    let (status, body) = report(&portal, "k", "sig", "[]").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("--github-secret-scanning-keys"));
    portal.stop().await;
}
