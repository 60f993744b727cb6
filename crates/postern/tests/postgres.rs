//! The local commands and `postern serve` against PostgreSQL, in a fresh database per run.
//! Runs only when POSTERN_TEST_DATABASE_URL points at a server where it may create databases.

mod common;

use common::{postern, Portal};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

const URL_ENV: &str = "POSTERN_TEST_DATABASE_URL";

#[test]
fn api_token_and_serve_on_postgresql() {
    let Ok(admin_url) = std::env::var(URL_ENV) else {
        eprintln!("SKIPPED (PostgreSQL): {URL_ENV} not set");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let name = format!("postern_cli_{}", uuid::Uuid::new_v4().simple());
    runtime.block_on(admin(&admin_url, &format!("CREATE DATABASE {name}")));
    let url = with_database(&admin_url, &name);

    let result = std::panic::catch_unwind(|| exercise(&url));
    runtime.block_on(admin(
        &admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    ));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn exercise(url: &str) {
    let run = postern(
        &[
            "api-token",
            "create",
            "--name",
            "admin-cli",
            "--database-url",
            url,
        ],
        &[],
    )
    .ok();
    let token = run.stdout.trim().to_string();
    assert!(token.starts_with("postern_api_"), "{}", run.stdout);
    postern(
        &["account", "create", "--slug", "acme", "--database-url", url],
        &[],
    )
    .ok();
    let accounts = postern(&["account", "list", "--json", "--database-url", url], &[])
        .ok()
        .json();
    assert_eq!(accounts.as_array().map(Vec::len), Some(2));

    let portal = Portal::start(&["--database-url", url]);
    assert_eq!(
        portal.cli(&token, &["sa", "list", "--json"]).ok().json(),
        Value::Array(vec![])
    );
    portal
        .cli(&token, &["groups", "create", "engineering"])
        .ok();
    let created = portal
        .cli(
            &token,
            &[
                "sa",
                "create",
                "ci",
                "--group",
                "engineering",
                "--expires-in",
                "30d",
            ],
        )
        .ok();
    assert!(created.last_line().starts_with("postern_client_"));
    assert_eq!(
        portal
            .cli(&token, &["sa", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(!portal.log().contains(&token));
}

async fn admin(url: &str, statement: &str) {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {URL_ENV}: {err}"));
    conn.execute(statement)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
    let _ = conn.close().await;
}

/// The same server URL with another database name.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}
