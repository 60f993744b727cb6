//! Helpers for end-to-end tests: a real `postern serve` process and real CLI invocations.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// The result of one CLI run.
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns itself.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "postern {:?} failed\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Refused by the argument parser (exit code 2), saying each of `needles`.
    #[track_caller]
    pub fn usage_error(self, needles: &[&str]) -> Self {
        assert_eq!(
            self.code,
            Some(2),
            "postern {:?}: {}",
            self.args,
            self.stderr
        );
        for needle in needles {
            assert!(self.stderr.contains(needle), "{needle:?}: {}", self.stderr);
        }
        self
    }

    /// Asserts failure with exit code 1 and a message on stderr containing every `needle`.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Self {
        assert_eq!(
            self.code,
            Some(1),
            "postern {:?} should fail\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "postern {:?}: stderr lacks {needle:?}:\n{}",
                self.args,
                self.stderr
            );
        }
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "postern {:?} printed no JSON ({err}):\n{}",
                self.args, self.stdout
            )
        })
    }

    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Runs `postern ARGS` with a clean environment plus `env`, and `stdin` as its input.
pub fn postern_with_input(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTERN_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().expect("postern starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("stdin written");
    }
    let output: Output = child.wait_with_output().expect("postern finishes");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn postern(args: &[&str], env: &[(&str, &str)]) -> Run {
    postern_with_input(args, env, None)
}

/// A running `postern serve`, killed when dropped.
pub struct Portal {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Portal {
    /// Starts `postern serve --listen 127.0.0.1:0 DB_ARGS` and waits for its address.
    pub fn start(db_args: &[&str]) -> Portal {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(db_args);
        Self::try_start(&args).unwrap_or_else(|log| panic!("postern serve did not start:\n{log}"))
    }

    /// Starts `postern ARGS`; `Err` carries its log if it exited before listening.
    pub fn try_start(args: &[&str]) -> Result<Portal, String> {
        let mut command = Command::new(BIN);
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("POSTERN_") {
                command.env_remove(key);
            }
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("postern serve starts");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = sink.lock().expect("log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = found.send(url);
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(Portal { child, url, log }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(log.lock().expect("log lock").clone())
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postern serve did not stop on SIGTERM:\n{}", self.log());
    }

    /// Stops the portal (SIGTERM; it must exit 0) and starts it again on the same address with
    /// `db_args`, as an operator restarts it.
    pub fn restart(self, db_args: &[&str]) -> Portal {
        let url = self.url.clone();
        let listen = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        let log = self.log();
        assert_eq!(
            self.terminate(),
            Some(0),
            "postern serve exits 0 on SIGTERM:\n{log}"
        );
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(db_args);
        let portal = Self::try_start(&args)
            .unwrap_or_else(|log| panic!("the portal did not restart:\n{log}"));
        assert_eq!(portal.url, url, "the portal restarts on the same address");
        portal
    }

    /// Runs a remote CLI command against this portal with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Run {
        postern(
            args,
            &[("POSTERN_API_URL", &self.url), ("POSTERN_API_TOKEN", token)],
        )
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an API token locally in `data_dir` and returns it.
pub fn api_token(data_dir: &Path) -> String {
    let dir = data_dir.to_str().expect("utf-8 temp dir");
    let run = postern(
        &[
            "api-token",
            "create",
            "--name",
            "admin-cli",
            "--data-dir",
            dir,
        ],
        &[],
    )
    .ok();
    run.stdout.trim().to_string()
}

/// The string at `key`, owned.
#[track_caller]
pub fn string(value: &Value, key: &str) -> String {
    str_of(value, key).to_string()
}

#[track_caller]
pub fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string '{key}' in {value}"))
}
