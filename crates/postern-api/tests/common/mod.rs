//! A real portal for tests: the real router on a real socket, over a real SQLite file or a
//! fresh PostgreSQL database.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use postern_api::AppState;
use postern_domain::{Acting, ActorType};
use postern_store::{NewActor, NewTokenRequest, Store};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::Connection;
use uuid::Uuid;

pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Portal {
    pub base: String,
    pub store: Store,
    pub token: String,
    pub account_id: Uuid,
    pub http: reqwest::Client,
    pub data_dir: Option<tempfile::TempDir>,
    pub database: Option<String>,
    server: tokio::task::JoinHandle<()>,
}

/// The PostgreSQL server tests use: `POSTERN_TEST_POSTGRES_URL`, by default the `test` database
/// on 127.0.0.1:5432. `None` (after a loud message) when it is unreachable outside CI; under
/// `CI=true` an unreachable server fails the test.
pub async fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("POSTERN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            Some(url)
        }
        Err(err) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {url} is unreachable under CI=true: {err}");
            }
            eprintln!("\n*** SKIPPED (PostgreSQL half): {url} is unreachable: {err} ***\n");
            None
        }
    }
}

impl Portal {
    /// Starts a portal, or returns `None` when the PostgreSQL half is skipped.
    pub async fn start(backend: Backend) -> Option<Portal> {
        Self::start_with(backend, postern_api::ServerConfig::default()).await
    }

    /// The same with a chosen listener configuration (trusted proxies, limits).
    pub async fn start_with(backend: Backend, config: postern_api::ServerConfig) -> Option<Portal> {
        Self::start_customized(backend, config, |state| state).await
    }

    /// The same with the handlers' state changed first (GitHub keys, limits).
    pub async fn start_customized(
        backend: Backend,
        config: postern_api::ServerConfig,
        customize: impl FnOnce(AppState) -> AppState,
    ) -> Option<Portal> {
        let (store, data_dir, database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Store::open_sqlite(dir.path()).await.expect("open sqlite");
                (store, Some(dir), None)
            }
            Backend::Postgres => {
                let admin = postgres_admin_url().await?;
                let name = format!("postern_test_{}", Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("pg connect");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let url = replace_database(&admin, &name);
                let store = Store::connect(&url).await.expect("open postgres");
                (store, None, Some(name))
            }
        };
        let (account, _) = store
            .ensure_default_account()
            .await
            .expect("default account");
        let token = api_token(&store, account.id, "test-admin").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = customize(AppState::new(store.clone()));
        let server = tokio::spawn(async move {
            let router = postern_api::router(state);
            let _ =
                postern_api::serve_with_config(listener, router, std::future::pending(), config)
                    .await;
        });
        Some(Portal {
            base: format!("http://{addr}"),
            store,
            token,
            account_id: account.id,
            http: reqwest::Client::new(),
            data_dir,
            database,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("addr")
    }

    /// The URL of this portal's PostgreSQL database, to open a second portal node on it.
    pub async fn postgres_url(&self) -> Option<String> {
        let name = self.database.as_ref()?;
        Some(replace_database(&postgres_admin_url().await?, name))
    }

    /// Every row of every table of this portal's PostgreSQL database, as `(table, row as
    /// JSON)`; `None` on SQLite.
    pub async fn postgres_rows(&self) -> Option<Vec<(String, String)>> {
        use sqlx::Row;
        let url = self.postgres_url().await?;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
        )
        .fetch_all(&mut conn)
        .await
        .expect("list tables");
        let mut rows = Vec::new();
        for table in tables {
            let sql = format!("SELECT row_to_json(t)::text AS row FROM \"{table}\" t");
            for row in sqlx::query(&sql)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("dump {table}: {e}"))
            {
                rows.push((table.clone(), row.get::<String, _>("row")));
            }
        }
        let _ = conn.close().await;
        Some(rows)
    }

    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        let Some(dir) = &self.data_dir else {
            return vec![];
        };
        std::fs::read_dir(dir.path())
            .expect("read data dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect()
    }

    /// A request with this portal's API token; returns the status and the JSON body (or Null).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, response) = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {response}");
        response
    }

    pub async fn stop(self) {
        self.server.abort();
        self.store.close().await;
        if let Some(name) = &self.database {
            if let Some(admin) = postgres_admin_url().await {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            }
        }
    }
}

/// A new API client with an API token in `account_id`; returns the token.
pub async fn api_token(store: &Store, account_id: Uuid, name: &str) -> String {
    let (_, token) = store
        .create_actor(
            account_id,
            NewActor {
                actor_type: ActorType::ApiClient,
                name: name.to_string(),
                email: None,
                password_hash: None,
                group_ids: vec![],
                token: Some(NewTokenRequest::default()),
            },
            &Acting::local_cli(),
        )
        .await
        .expect("create api client");
    token.expect("token").secret.expose().to_string()
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    match query {
        Some(q) => format!("{prefix}/{database}?{q}"),
        None => format!("{prefix}/{database}"),
    }
}

/// Declares one test per backend from an `async fn(Portal)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let portal = $crate::common::Portal::start($crate::common::Backend::Sqlite)
                        .await
                        .expect("sqlite portal");
                    super::$name(&portal).await;
                    portal.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(portal) = $crate::common::Portal::start($crate::common::Backend::Postgres).await else {
                        return;
                    };
                    super::$name(&portal).await;
                    portal.stop().await;
                }
            )*
        }
    };
}
