//! Acknowledged changes survive a crash. A writer creates and revokes tokens through the API
//! (four requests in flight) while `postern serve` is killed with SIGKILL at a random moment,
//! then started again on the same database; 20 rounds on SQLite and on PostgreSQL
//! (`POSTERN_CRASH_ROUNDS` for more). Afterwards every create and revoke the API acknowledged
//! is there, no create it refused is, and SQLite's `PRAGMA integrity_check` says `ok`.

mod common;
#[macro_use]
#[path = "common/e2e.rs"]
mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Portal;
use e2e::{Backend, Database};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

on_both_backends!(acknowledged_changes_survive_sigkill);

const WRITERS: usize = 4;

fn rounds() -> usize {
    std::env::var("POSTERN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// What the API answered, across every round.
#[derive(Default)]
struct Ledger {
    /// Token id → name, for each create answered 201.
    created: BTreeMap<String, String>,
    /// Token ids whose revoke was answered 200.
    revoked: BTreeSet<String>,
    /// Names of creates refused with 422.
    refused: BTreeSet<String>,
}

struct Writer {
    http: reqwest::Client,
    base: String,
    token: String,
    actor_id: String,
}

impl Writer {
    /// One operation: a create (now and then an invalid one), or a revoke of a token this
    /// writer created. Returns false once the portal is gone.
    async fn step(
        &self,
        n: usize,
        mine: &mut Vec<String>,
        ledger: &tokio::sync::Mutex<Ledger>,
    ) -> bool {
        let url = format!("{}/v1/actors/{}/tokens", self.base, self.actor_id);
        let choice = rand::thread_rng().gen_range(0..10);
        if choice < 3 && !mine.is_empty() {
            let id = mine.swap_remove(0);
            let answer = self
                .http
                .delete(format!("{url}/{id}"))
                .bearer_auth(&self.token)
                .send()
                .await;
            return match answer {
                Ok(response) if response.status() == StatusCode::OK => {
                    ledger.lock().await.revoked.insert(id);
                    true
                }
                Ok(response) => panic!("revoke answered {}", response.status()),
                Err(_) => false,
            };
        }
        let name = format!("t{n}-{}", uuid::Uuid::new_v4().simple());
        let invalid = choice == 9;
        let body = if invalid {
            json!({"name": name, "expires_at": "2001-01-01T00:00:00Z"})
        } else {
            json!({"name": name})
        };
        let answer = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        let Ok(response) = answer else {
            return false;
        };
        let status = response.status();
        let Ok(text) = response.text().await else {
            // Answered, but the body was cut: the outcome is unknown, like a lost request.
            return false;
        };
        match status {
            StatusCode::CREATED => {
                let value: Value = serde_json::from_str(&text).expect("json");
                let id = value["data"]["id"].as_str().expect("id").to_string();
                ledger.lock().await.created.insert(id.clone(), name);
                mine.push(id);
            }
            StatusCode::UNPROCESSABLE_ENTITY if invalid => {
                ledger.lock().await.refused.insert(name);
            }
            other => panic!("create answered {other}: {text}"),
        }
        true
    }
}

async fn all_tokens(http: &reqwest::Client, base: &str, token: &str, actor_id: &str) -> Vec<Value> {
    let mut tokens = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/actors/{actor_id}/tokens?limit=500");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        tokens.extend(page["data"].as_array().expect("data").iter().cloned());
        match page["metadata"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return tokens,
        }
    }
}

fn sigkill(portal: &Portal) {
    // SAFETY: kill(2) on a child process id.
    let killed = unsafe { libc::kill(portal.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9");
}

fn acknowledged_changes_survive_sigkill(backend: Backend) {
    let Some(database) = Database::create(backend) else {
        return;
    };
    let token = database.api_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let ledger = std::sync::Arc::new(tokio::sync::Mutex::new(Ledger::default()));
    let mut actor_id = String::new();
    for round in 0..rounds() {
        let portal = Portal::start(&database.args());
        if round == 0 {
            let created: Value = runtime.block_on(async {
                http.post(format!("{}/v1/actors", portal.url))
                    .bearer_auth(&token)
                    .json(&json!({"type": "service_account", "name": "crash"}))
                    .send()
                    .await
                    .expect("create")
                    .json()
                    .await
                    .expect("json")
            });
            actor_id = created["data"]["id"].as_str().expect("actor").to_string();
        }
        let kill_after = Duration::from_millis(rand::thread_rng().gen_range(50..600));
        runtime.block_on(async {
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..WRITERS {
                let writer = Writer {
                    http: http.clone(),
                    base: portal.url.clone(),
                    token: token.clone(),
                    actor_id: actor_id.clone(),
                };
                let ledger = ledger.clone();
                writers.spawn(async move {
                    let mut mine = Vec::new();
                    let mut n = w;
                    while writer.step(n, &mut mine, &ledger).await {
                        n += WRITERS;
                    }
                });
            }
            tokio::time::sleep(kill_after).await;
            sigkill(&portal);
            while writers.join_next().await.is_some() {}
        });
        drop(portal);
    }

    let portal = Portal::start(&database.args());
    let tokens = runtime.block_on(all_tokens(&http, &portal.url, &token, &actor_id));
    drop(portal);
    let ledger = runtime.block_on(async { std::mem::take(&mut *ledger.lock().await) });
    assert!(
        ledger.created.len() >= rounds(),
        "the writer got work done: {} creates",
        ledger.created.len()
    );
    let stored: BTreeMap<String, &Value> = tokens
        .iter()
        .map(|t| (t["id"].as_str().expect("id").to_string(), t))
        .collect();
    for (id, name) in &ledger.created {
        let token = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged token {id} ({name}) is gone"));
        assert_eq!(token["name"], name.as_str());
    }
    for id in &ledger.revoked {
        assert!(
            stored[id]["revoked_at"].is_string(),
            "acknowledged revoke of {id} is lost"
        );
    }
    let names: BTreeSet<&str> = tokens.iter().filter_map(|t| t["name"].as_str()).collect();
    for name in &ledger.refused {
        assert!(
            !names.contains(name.as_str()),
            "refused create {name} is stored"
        );
    }
    eprintln!(
        "{} rounds: {} creates, {} revokes acknowledged, {} refused; {} tokens stored",
        rounds(),
        ledger.created.len(),
        ledger.revoked.len(),
        ledger.refused.len(),
        tokens.len()
    );
    if backend == Backend::Sqlite {
        let check = runtime.block_on(integrity_check(&database.args[1]));
        assert_eq!(check, "ok");
    }
}

async fn integrity_check(dir: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{dir}/postern.db"))
        .await
        .expect("open");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity_check");
    check
}
