//! Helpers shared by the process tests of `postern-client` and `postern-gateway` (each test
//! crate includes this file with `#[path]` and defines `BIN`): token files, running the binary
//! with a clean environment and a deadline.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern_token::TokenKind;

pub fn token(kind: TokenKind) -> String {
    let key = postern_token::HashKey::generate();
    postern_token::generate(kind, uuid::Uuid::now_v7(), &key)
        .secret
        .expose()
        .to_string()
}

pub fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A command with a clean environment (no POSTERN_* from the developer's shell).
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(super::BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Waits for `child` up to `limit`, killing it (and failing) when it takes longer. The pipes
/// are read as the child runs, so a chatty child never blocks on a full pipe.
pub fn finish(mut child: Child, limit: Duration) -> Finished {
    let start = Instant::now();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{} did not exit within {limit:?}; stderr:\n{stderr}",
                super::BIN
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code: status.code(),
        elapsed: start.elapsed(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

pub fn run(command: &mut Command, limit: Duration) -> Finished {
    finish(command.spawn().unwrap(), limit)
}

/// Asserts the exit code and that stderr contains every needle.
#[track_caller]
pub fn assert_exit(finished: &Finished, code: i32, needles: &[&str]) {
    assert_eq!(
        finished.code,
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    for needle in needles {
        assert!(
            finished.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            finished.stderr
        );
    }
}
