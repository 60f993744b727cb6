//! Token secrets exist in one place only: the response that created them. They are never
//! written to the database files (SQLite, with its WAL), never stored in any PostgreSQL column,
//! never logged (at TRACE, every target), and never returned by the API again.
//!
//! This binary installs a global tracing subscriber that captures every event in memory, so it
//! lives in its own file.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{Backend, Portal};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use postern_token::{HashKey, TokenKind, ID_CHARS, SECRET_CHARS};

on_both_backends!(the_api_never_returns_a_secret_after_creation);

// ---------------------------------------------------------------------------------------------
// Log capture

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs, once per test binary, a TRACE-level subscriber for every target that appends to
/// an in-memory buffer; returns the buffer.
fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured(Arc::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        captured
    })
}

fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Secrets and where to look for them

/// A full token and its 43-character secret part (after the prefix and the 22 id characters).
#[derive(Debug, Clone)]
struct Secret {
    label: String,
    full: String,
    part: String,
}

impl Secret {
    fn new(label: impl Into<String>, full: &str) -> Secret {
        let kind = TokenKind::ALL
            .into_iter()
            .find(|kind| full.starts_with(kind.prefix()))
            .unwrap_or_else(|| panic!("not a Postern token: {full}"));
        let body = &full[kind.prefix().len()..];
        assert_eq!(body.len(), 71, "token body length");
        Secret {
            label: label.into(),
            full: full.to_string(),
            part: body[ID_CHARS..ID_CHARS + SECRET_CHARS].to_string(),
        }
    }

    fn forms(&self) -> [(&'static str, &str); 2] {
        [("full token", &self.full), ("secret part", &self.part)]
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn assert_no_secret(secrets: &[Secret], haystack: &[u8], place: &str) {
    for secret in secrets {
        for (form, value) in secret.forms() {
            assert!(
                !contains(haystack, value),
                "the {form} of {} appears in {place}",
                secret.label
            );
        }
    }
}

/// A well-formed API token (valid checksum) whose id no account holds: the portal can only
/// reject it as invalid, attributed to its token id.
fn unknown_api_token() -> (Uuid, String) {
    let id = Uuid::now_v7();
    let token = postern_token::generate(TokenKind::Api, id, &HashKey::generate());
    (id, token.secret.expose().to_string())
}

// ---------------------------------------------------------------------------------------------
// The same traffic on either backend

struct Traffic {
    secrets: Vec<Secret>,
    failed_token_id: Uuid,
}

/// Creates a service account (S1), a second token (S2), a gateway token (S3) and an API client
/// (S4) through the API; uses them, presents wrong tokens, revokes S2 and flushes token usage.
async fn generate_traffic(portal: &Portal) -> Traffic {
    let created = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "robot", "token": {"name": "first"}}),
        )
        .await;
    let actor_id = created["data"]["id"].as_str().unwrap().to_string();
    let s1 = created["token"]["secret"].as_str().unwrap().to_string();
    let second = portal
        .post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": "second"}),
        )
        .await;
    let s2 = second["data"]["secret"].as_str().unwrap().to_string();
    let s2_id = second["data"]["id"].as_str().unwrap().to_string();
    let site = portal.post("/v1/sites", json!({"name": "hq"})).await;
    let site_id = site["data"]["id"].as_str().unwrap();
    let gateway = portal
        .post(
            &format!("/v1/sites/{site_id}/gateway_tokens"),
            json!({"name": "gw"}),
        )
        .await;
    let s3 = gateway["data"]["secret"].as_str().unwrap().to_string();
    let api_client = portal
        .post(
            "/v1/actors",
            json!({"type": "api_client", "name": "automation"}),
        )
        .await;
    let s4 = api_client["token"]["secret"].as_str().unwrap().to_string();
    let (failed_token_id, wrong) = unknown_api_token();

    // Use them: the portal's own API token and S4 succeed; S1 (a client token), S3 (a gateway
    // token), a well-formed unknown token and a revoked one fail.
    let (status, _) = portal.call(Method::GET, "/v1/actors", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = portal.call_as(&s4, Method::GET, "/v1/account", None).await;
    assert_eq!(status, StatusCode::OK);
    for (token, what) in [
        (&s1, "client token"),
        (&s3, "gateway token"),
        (&wrong, "unknown token"),
    ] {
        let (status, _) = portal.call_as(token, Method::GET, "/v1/actors", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    }
    let (status, _) = portal
        .call(
            Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{s2_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = portal.call_as(&s2, Method::GET, "/v1/actors", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    portal
        .store
        .flush_token_usage()
        .await
        .expect("flush token usage");
    portal
        .store
        .flush_failed_authentications()
        .await
        .expect("flush failed authentications");

    Traffic {
        secrets: vec![
            Secret::new("the portal's API token", &portal.token),
            Secret::new("S1 (service account)", &s1),
            Secret::new("S2 (second, revoked)", &s2),
            Secret::new("S3 (gateway)", &s3),
            Secret::new("S4 (API client)", &s4),
            Secret::new("the rejected unknown token", &wrong),
        ],
        failed_token_id,
    }
}

// ---------------------------------------------------------------------------------------------
// (a) SQLite files and logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_and_trace_logs_hold_no_secret() {
    let logs = captured_logs();
    let portal = Portal::start(Backend::Sqlite).await.expect("sqlite portal");
    let traffic = generate_traffic(&portal).await;
    portal.store.flush_token_usage().await.expect("flush");
    portal.store.close().await;

    let files = portal.sqlite_files();
    assert!(
        files.iter().any(|f| f.ends_with("postern.db")),
        "the database file is there: {files:?}"
    );
    let mut total = 0;
    for file in &files {
        // SQLite removes its -wal and -shm files as its last connection closes; a file that
        // is gone holds nothing.
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", file.display()),
        };
        total += bytes.len();
        assert_no_secret(&traffic.secrets, &bytes, &file.display().to_string());
    }
    assert!(total > 0, "the data files are not empty");
    // The check is not vacuous: what the database does hold can be found the same way.
    let all: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap_or_default())
        .collect();
    assert!(
        contains(&all, "robot"),
        "the service account's name is stored"
    );

    let text = logs_text();
    assert!(!logs.0.lock().unwrap().is_empty(), "logs were captured");
    assert_no_secret(&traffic.secrets, text.as_bytes(), "the captured logs");
    assert!(
        text.contains(&traffic.failed_token_id.to_string()),
        "the failed authentication is logged with its token id"
    );
    assert!(
        text.contains("authentication failed"),
        "the failed authentications are logged"
    );
    assert!(text.contains("/v1/actors"), "request lines are logged");
    assert!(
        text.contains(" DEBUG ") || text.contains(" TRACE "),
        "below-INFO events are captured too"
    );
    portal.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (b) PostgreSQL: every row of every table

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_hold_no_secret() {
    let _ = captured_logs();
    let Some(portal) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let traffic = generate_traffic(&portal).await;
    let rows = portal
        .postgres_rows()
        .await
        .expect("PostgreSQL was reachable a moment ago");
    for expected in [
        "tokens",
        "audit_events",
        "actors",
        "accounts",
        "server_secrets",
    ] {
        assert!(
            rows.iter().any(|(table, _)| table == expected),
            "rows of table {expected} are in the dump"
        );
    }
    let mut rows_seen = 0;
    let mut dump = String::new();
    for (table, text) in &rows {
        assert_no_secret(
            &traffic.secrets,
            text.as_bytes(),
            &format!("table {table}: {text}"),
        );
        dump.push_str(text);
        rows_seen += 1;
    }
    assert!(rows_seen > 10, "the dump saw the data ({rows_seen} rows)");
    assert!(dump.contains("robot"), "the dump holds what was stored");
    assert!(
        dump.contains("auth.failed") && dump.contains("first_at"),
        "the failed authentications that belong to no account are stored, counted"
    );
    portal.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (c) The API: the secret is in the creating response, and in no response after it

async fn the_api_never_returns_a_secret_after_creation(portal: &Portal) {
    let _ = captured_logs();
    let mut secrets = Vec::new();
    let mut token_ids = Vec::new();

    let created = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "robot"}),
        )
        .await;
    let actor_id = created["data"]["id"].as_str().unwrap().to_string();
    secrets.push(Secret::new(
        "S1 (initial)",
        created["token"]["secret"].as_str().unwrap(),
    ));
    token_ids.push(created["token"]["id"].as_str().unwrap().to_string());
    let second = portal
        .post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": "second"}),
        )
        .await;
    secrets.push(Secret::new(
        "S2 (second)",
        second["data"]["secret"].as_str().unwrap(),
    ));
    token_ids.push(second["data"]["id"].as_str().unwrap().to_string());
    let site = portal.post("/v1/sites", json!({"name": "hq"})).await;
    let site_id = site["data"]["id"].as_str().unwrap().to_string();
    let gateway = portal
        .post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}))
        .await;
    secrets.push(Secret::new(
        "S3 (gateway)",
        gateway["data"]["secret"].as_str().unwrap(),
    ));
    let gateway_id = gateway["data"]["id"].as_str().unwrap().to_string();
    let api_client = portal
        .post(
            "/v1/actors",
            json!({"type": "api_client", "name": "automation"}),
        )
        .await;
    let api_client_id = api_client["data"]["id"].as_str().unwrap().to_string();
    let s4 = api_client["token"]["secret"].as_str().unwrap().to_string();
    secrets.push(Secret::new("S4 (API client)", &s4));
    let s4_id = api_client["token"]["id"].as_str().unwrap().to_string();
    secrets.push(Secret::new("the portal's API token", &portal.token));

    // Use S4 so its last-use record is filled in, and have it read things too.
    let (status, _) = portal.call_as(&s4, Method::GET, "/v1/account", None).await;
    assert_eq!(status, StatusCode::OK);

    let mut responses: Vec<(String, Value)> = Vec::new();
    let get = |path: String| async move {
        let (status, body) = portal.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        (format!("GET {path}"), body)
    };
    for path in [
        format!("/v1/actors/{actor_id}"),
        format!("/v1/actors/{actor_id}/tokens"),
        format!("/v1/actors/{actor_id}/tokens/{}", token_ids[0]),
        format!("/v1/actors/{actor_id}/tokens/{}", token_ids[1]),
        format!("/v1/actors/{api_client_id}/tokens"),
        format!("/v1/actors/{api_client_id}/tokens/{s4_id}"),
        format!("/v1/sites/{site_id}/gateway_tokens"),
        "/v1/actors?limit=500".to_string(),
        "/v1/account".to_string(),
        "/v1/audit-events?limit=500".to_string(),
        "/v1/audit-events?action=token.create&limit=500".to_string(),
    ] {
        responses.push(get(path).await);
    }
    let (_, used) = &responses[5];
    assert!(
        used["data"]["last_used_at"].is_string(),
        "S4's use is recorded: {used}"
    );
    // S4 reads the audit log itself.
    let (status, own_view) = portal
        .call_as(&s4, Method::GET, "/v1/audit-events?limit=500", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    responses.push(("GET /v1/audit-events as S4".to_string(), own_view));

    // Revoking answers with the token, without its secret.
    for (path, label) in [
        (
            format!("/v1/actors/{actor_id}/tokens/{}", token_ids[0]),
            "revoke one",
        ),
        (format!("/v1/actors/{actor_id}/tokens"), "revoke all"),
        (
            format!("/v1/sites/{site_id}/gateway_tokens/{gateway_id}"),
            "revoke gateway",
        ),
    ] {
        let (status, body) = portal.call(Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{label}: {body}");
        responses.push((format!("DELETE {path}"), body));
    }
    let (status, body) = portal
        .call(Method::GET, "/v1/audit-events?limit=500", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    responses.push(("GET /v1/audit-events after revoking".to_string(), body));

    for (what, body) in &responses {
        let text = body.to_string();
        assert_no_secret(&secrets, text.as_bytes(), what);
        assert!(
            !text.contains("\"secret\""),
            "{what} has a secret field: {text}"
        );
        assert!(
            !text.contains("secret_hash"),
            "{what} shows a token hash: {text}"
        );
    }

    // Not vacuous: the audit log does hold each token.create with the token's record.
    let (_, creations) = &responses[10];
    for id in token_ids.iter().chain([&gateway_id, &s4_id]) {
        let event = creations["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["object_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no token.create for {id}: {creations}"));
        assert_eq!(event["after"]["id"], id.as_str(), "{event}");
        assert!(event["after"].get("secret").is_none(), "{event}");
    }
}
