//! Helpers for end-to-end session tests: a fresh database per test (SQLite file or PostgreSQL
//! database), the REST API, and real `postern-client` / `postern-gateway` processes that are
//! killed (and reaped) when dropped, also when a test fails.
//!
//! Included with `#[path = "common/e2e.rs"] mod e2e;` next to `mod common;`.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

use crate::common::{postern, BIN};

pub const DATABASE_URL_ENV: &str = "POSTERN_TEST_DATABASE_URL";

/// How long freshly started processes may take to connect (debug builds, a busy machine
/// running other tests). A deadline, not a measurement.
pub const START: Duration = Duration::from_secs(30);
/// How long a change may take to reach every device (the targets are far lower; this is a
/// deadline, not the measurement).
pub const PROPAGATION: Duration = Duration::from_secs(10);

/// `sqlite::NAME` and `postgres::NAME` tests calling `NAME(Backend)` for each listed function.
#[allow(unused_macros)] // not every test file runs on both backends
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Backend::Postgres) })*
        }
    };
}
pub const BUILD_HINT: &str = "run `cargo build --workspace --bins` first (scripts/test does)";

/// The path of a sibling binary of `postern` (`postern-client`, `postern-gateway`); fails the
/// test with the command to run when it was not built.
pub fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(BIN).with_file_name(name);
    assert!(
        path.is_file(),
        "{} does not exist: {BUILD_HINT}",
        path.display()
    );
    path
}

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skipped(why: &str) {
    eprintln!(
        "\n********************************************************************************\n\
         SKIPPED (PostgreSQL half): {why}\n\
         ********************************************************************************\n"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database: a SQLite file in a temporary directory, or a new PostgreSQL database that
/// is dropped (with its connections) when this is dropped.
pub struct Database {
    /// `postern` flags selecting it: `--data-dir DIR` or `--database-url URL`.
    pub args: Vec<String>,
    _dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Database {
    /// `None` when the PostgreSQL half is skipped (not configured, or unreachable outside CI).
    pub fn create(backend: Backend) -> Option<Database> {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(Database {
                args: vec![
                    "--data-dir".to_string(),
                    dir.path().to_str().expect("utf-8 temp dir").to_string(),
                ],
                _dir: dir,
                postgres: None,
            }),
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var(DATABASE_URL_ENV) else {
                    assert!(
                        !under_ci(),
                        "{DATABASE_URL_ENV} is not set under CI=true: the PostgreSQL half must run"
                    );
                    skipped(&format!("{DATABASE_URL_ENV} is not set"));
                    return None;
                };
                let name = format!("postern_e2e_{}", uuid::Uuid::new_v4().simple());
                if let Err(err) = admin(&admin_url, &format!("CREATE DATABASE {name}")) {
                    assert!(
                        !under_ci(),
                        "PostgreSQL ({DATABASE_URL_ENV}) is unusable under CI=true: {err}"
                    );
                    skipped(&format!(
                        "PostgreSQL ({DATABASE_URL_ENV}) is unusable: {err}"
                    ));
                    return None;
                }
                let url = with_database(&admin_url, &name);
                Some(Database {
                    args: vec!["--database-url".to_string(), url],
                    _dir: dir,
                    postgres: Some((admin_url, name)),
                })
            }
        }
    }

    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// A new API token, created locally on the database (`postern api-token create`).
    pub fn api_token(&self) -> String {
        let mut args = vec!["api-token", "create", "--name", "e2e"];
        args.extend(self.args());
        let token = postern(&args, &[]).ok().stdout.trim().to_string();
        assert!(token.starts_with("postern_api_"), "{token}");
        token
    }
}

impl Database {
    /// The first column of the first row `query` returns, as a number (PostgreSQL only).
    pub fn scalar(&self, query: &str) -> i64 {
        let (admin_url, name) = self.postgres.as_ref().expect("a PostgreSQL database");
        let url = with_database(admin_url, name);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut conn = PgConnection::connect(&url).await.expect("connects");
            let value: i64 = sqlx::query_scalar(query)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|err| panic!("{query}: {err}"));
            let _ = conn.close().await;
            value
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.postgres {
            if let Err(err) = admin(
                admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ) {
                eprintln!("could not drop the test database {name}: {err}");
            }
        }
    }
}

fn admin(url: &str, statement: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url))
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|err| format!("cannot connect: {err}"))?;
        conn.execute(statement)
            .await
            .map_err(|err| format!("{statement}: {err}"))?;
        let _ = conn.close().await;
        Ok(())
    })
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

/// The REST API with an API token, called synchronously.
pub struct Api {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    pub url: String,
    token: String,
}

impl Api {
    /// The API token, for running the CLI against the same portal.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn new(url: &str, token: &str) -> Api {
        Api {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            // No idle connections kept: this runtime is not driven between calls, so a pooled
            // connection would not notice a restarted portal closing it.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            url: url.to_string(),
            token: token.to_string(),
        }
    }

    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.url);
        self.runtime.block_on(async {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, value)
        })
    }

    /// Calls and asserts a 2xx answer.
    #[track_caller]
    pub fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body);
        assert!(status.is_success(), "{method} {path}: {status}\n{value:#}");
        value
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None)
    }

    #[track_caller]
    pub fn post(&self, path: &str, body: Value) -> Value {
        self.ok(Method::POST, path, Some(body))
    }

    #[track_caller]
    pub fn patch(&self, path: &str, body: Value) -> Value {
        self.ok(Method::PATCH, path, Some(body))
    }

    #[track_caller]
    pub fn delete(&self, path: &str) -> Value {
        self.ok(Method::DELETE, path, None)
    }
}

/// A running `postern-client` or `postern-gateway`: killed and reaped when dropped.
pub struct Device {
    pub program: &'static str,
    pub id: String,
    pub state_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Device {
    /// Starts `program --api-url URL --state-dir DIR --id ID --name ID ARGS` with `POSTERN_TOKEN`
    /// set to `token`, in a clean environment; its stdout and stderr go to a log file under
    /// `root`.
    pub fn start(
        program: &'static str,
        root: &Path,
        api_url: &str,
        id: &str,
        token: &str,
        args: &[&str],
    ) -> Device {
        let bin = sibling_binary(program);
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("device dir");
        let state_dir = dir.join("state");
        let log_path = dir.join("log");
        let log = File::create(&log_path).expect("log file");
        let child = Command::new(bin)
            .args([
                "--api-url",
                api_url,
                "--id",
                id,
                "--name",
                id,
                "--state-dir",
            ])
            .arg(&state_dir)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("POSTERN_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("{program} does not start: {err}"));
        Device {
            program,
            id: id.to_string(),
            state_dir,
            log_path,
            child,
            exited: None,
        }
    }

    /// `postern-client --no-tunnel ...`
    pub fn client(root: &Path, api_url: &str, id: &str, token: &str, args: &[&str]) -> Device {
        let mut all = vec!["--no-tunnel"];
        all.extend_from_slice(args);
        Self::start("postern-client", root, api_url, id, token, &all)
    }

    /// `postern-gateway --no-tunnel ...` (the data-plane listen address is only reported, never
    /// bound).
    pub fn gateway(root: &Path, api_url: &str, id: &str, token: &str) -> Device {
        Self::start(
            "postern-gateway",
            root,
            api_url,
            id,
            token,
            &["--no-tunnel", "--listen", "127.0.0.1:51820"],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once it exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    pub fn running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `status.json` as the process last wrote it (read directly: cheap enough to poll).
    pub fn status_file(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `PROGRAM status --json --state-dir DIR`: the running process's status, as an operator
    /// sees it. Fails the test when it does not exit 0.
    #[track_caller]
    pub fn status(&self) -> Value {
        let output = Command::new(sibling_binary(self.program))
            .args(["status", "--json", "--state-dir"])
            .arg(&self.state_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .expect("status runs");
        assert!(
            output.status.success(),
            "{} status --json ({}): {}\nstdout:\n{}\nstderr:\n{}\nlog:\n{}",
            self.program,
            self.id,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "{} status --json printed no JSON ({err}):\n{}",
                self.program,
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// For failure messages: the id, whether it runs, its status file and the end of its log.
    pub fn describe(&mut self) -> String {
        let exit = match self.exit_status() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_string(),
        };
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- {} {} ({exit})\nstatus.json: {}\nlog (end):\n{}\n",
            self.program,
            self.id,
            self.status_file()
                .map_or("none".to_string(), |status| status.to_string()),
            tail.join("\n")
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `ready` holds for the status file of every device, polling every 50 ms; fails
/// after `limit` (a deadline, not a timing assertion) naming the devices that never got there.
/// Returns how long it took.
#[track_caller]
pub fn wait_for_all(
    devices: &mut [Device],
    limit: Duration,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        let pending: Vec<usize> = devices
            .iter()
            .enumerate()
            .filter(|(_, device)| !device.status_file().is_some_and(|status| ready(&status)))
            .map(|(index, _)| index)
            .collect();
        if pending.is_empty() {
            return start.elapsed();
        }
        if Instant::now() >= deadline {
            let count = pending.len();
            let described: Vec<String> = pending
                .into_iter()
                .take(3)
                .map(|index| devices[index].describe())
                .collect();
            panic!(
                "{count} of {} device(s) not {what} within {limit:?}; for example:\n{}",
                devices.len(),
                described.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the resources a client's status lists.
pub fn resource_ids(status: &Value) -> Vec<String> {
    status["resources"]
        .as_array()
        .map(|resources| {
            resources
                .iter()
                .filter_map(|resource| resource["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn connected(status: &Value) -> bool {
    status["state"] == "connected"
}

/// Connected and listing exactly `ids` (in any order).
pub fn shows_exactly(status: &Value, ids: &[&str]) -> bool {
    let mut have = resource_ids(status);
    have.sort();
    let mut want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    want.sort();
    connected(status) && have == want
}
