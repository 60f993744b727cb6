//! `<state-dir>/status.json`: what a running device is doing, for `status` and for monitoring.
//! Written atomically after every change; never contains the token.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Waiting before the next connection attempt.
    Waiting,
    Stopped,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Waiting => "waiting",
            ConnectionState::Stopped => "stopped",
        }
    }
}

/// The status file. `details` is the role's own part (client or gateway), flattened into the
/// same object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status<T> {
    pub pid: u32,
    pub state: ConnectionState,
    /// When the next connection attempt is due, while `waiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub updated_at: DateTime<Utc>,
    /// The portal's base URL (without query).
    pub portal: String,
    pub device_id: String,
    pub device_name: String,
    pub version: String,
    /// The last time the portal handed this device a successor of its token (a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rotation: Option<TokenRotation>,
    /// With workload identity: where the ID token comes from and the exchanged token's renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityStatus>,
    #[serde(flatten)]
    pub details: T,
}

/// The device's token by exchange of its workload's ID token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadIdentityStatus {
    /// `the ID token file PATH` or `the ID token command `CMD``.
    pub source: String,
    pub token_id: uuid::Uuid,
    pub token_expires_at: DateTime<Utc>,
    /// When the next exchange is tried.
    pub renews_at: DateTime<Utc>,
    /// Why the last renewal failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A rotation of the device's token, as the device carried it out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRotation {
    pub at: DateTime<Utc>,
    /// The rotated token, which stops working at `replaced_token_expires_at`.
    pub replaced_token_id: uuid::Uuid,
    pub replaced_token_expires_at: DateTime<Utc>,
    /// The successor, which the device uses from now on.
    pub token_id: uuid::Uuid,
    pub expires_at: DateTime<Utc>,
    /// Whether the successor was written to the token file (a restart uses it).
    pub persisted: bool,
    /// What the operator must do, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_needed: Option<String>,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old or the new contents, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

pub fn write_status<T: Serialize>(state_dir: &Path, status: &Status<T>) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
    write_atomic(&status_path(state_dir), &json, 0o600)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no {program} is running: {path} does not exist")]
    Missing { program: String, path: String },
    #[error("cannot read {path}: {source}")]
    Unreadable { path: String, source: io::Error },
    #[error("cannot understand {path}: {source}")]
    Malformed {
        path: String,
        source: serde_json::Error,
    },
}

/// The status file as read, and whether the process that wrote it is still running.
#[derive(Debug)]
pub struct StatusReport<T> {
    pub status: Status<T>,
    /// The raw JSON, for `status --json`.
    pub raw: serde_json::Value,
    pub running: bool,
}

/// Reads the status file of `program` (its process name, as in `/proc/<pid>/comm`) in
/// `state_dir`.
pub fn read_status<T: DeserializeOwned>(
    state_dir: &Path,
    program: &str,
) -> Result<StatusReport<T>, StatusError> {
    let path = status_path(state_dir);
    let shown = path.display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::Missing {
                program: program.to_string(),
                path: shown,
            });
        }
        Err(source) => {
            return Err(StatusError::Unreadable {
                path: shown,
                source,
            })
        }
    };
    let raw: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Malformed {
            path: shown.clone(),
            source,
        })?;
    let status: Status<T> =
        serde_json::from_value(raw.clone()).map_err(|source| StatusError::Malformed {
            path: shown,
            source,
        })?;
    let running = status.state != ConnectionState::Stopped && process_is(status.pid, program);
    Ok(StatusReport {
        status,
        raw,
        running,
    })
}

/// Whether `pid` is alive and runs `program`. The name check guards against a reused pid
/// after a crash left a status file that still says "connected".
pub fn process_is(pid: u32, program: &str) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return false;
    }
    match std::fs::read_to_string(proc_dir.join("comm")) {
        // The kernel truncates comm to 15 bytes.
        Ok(comm) => {
            let expected: String = program.chars().take(15).collect();
            comm.trim_end() == expected
        }
        Err(_) => true,
    }
}

/// The `status` subcommand of a device binary: the running device's status file as JSON, or for
/// people the lines every device has followed by `details` (the role's own lines). Exit 1 when
/// no device runs.
pub fn status_command<T: DeserializeOwned>(
    state_dir: &Path,
    program: &str,
    json: bool,
    details: impl Fn(&T) -> String,
) -> std::process::ExitCode {
    let report = match read_status::<T>(state_dir, program) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if !report.running {
        eprintln!("{}", not_running(program, &report.status));
        return std::process::ExitCode::FAILURE;
    }
    if json {
        return match serde_json::to_string_pretty(&report.raw) {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    print!(
        "{}{}",
        header(program, &report.status),
        details(&report.status.details)
    );
    std::process::ExitCode::SUCCESS
}

/// A left-aligned text table with a header row.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn not_running<T>(program: &str, status: &Status<T>) -> String {
    let mut text = format!(
        "no {program} is running (the last one, pid {}, was {} at {})",
        status.pid,
        status.state.as_str(),
        status.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(error) = &status.last_error {
        text.push_str(&format!("\nlast error: {error}"));
    }
    text
}

fn header<T>(program: &str, status: &Status<T>) -> String {
    let mut out = format!(
        "{program} {} (pid {}): {} to {}\n",
        status.version,
        status.pid,
        status.state.as_str(),
        status.portal
    );
    if let Some(retry_at) = status.retry_at {
        out.push_str(&format!(
            "  next attempt: {}\n",
            retry_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if let Some(error) = &status.last_error {
        out.push_str(&format!("  last error:   {error}\n"));
    }
    out.push_str(&format!(
        "  device:       {} ({})\n",
        status.device_name, status.device_id
    ));
    if let Some(workload) = &status.workload_identity {
        out.push_str(&format!(
            "  token:        exchanged for {}, until {}, renewed at {}\n",
            workload.source,
            workload.token_expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
            workload.renews_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        if let Some(error) = &workload.last_error {
            out.push_str(&format!("  renewal:      failed: {error}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Details {
        resources: Vec<String>,
    }

    fn status(pid: u32, state: ConnectionState) -> Status<Details> {
        Status {
            pid,
            state,
            retry_at: None,
            last_error: None,
            exit_code: None,
            updated_at: Utc::now(),
            portal: "ws://127.0.0.1:8080/".into(),
            device_id: "dev".into(),
            device_name: "box".into(),
            version: "0.1.0".into(),
            token_rotation: None,
            workload_identity: None,
            details: Details {
                resources: vec!["db".into()],
            },
        }
    }

    fn this_program() -> String {
        std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end()
            .to_string()
    }

    #[test]
    fn written_atomically_flattened_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        write_status(
            dir.path(),
            &status(std::process::id(), ConnectionState::Connected),
        )
        .unwrap();
        let path = status_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![STATUS_FILE], "no temporary file left behind");
        let report = read_status::<Details>(dir.path(), &this_program()).unwrap();
        assert!(report.running);
        assert_eq!(report.raw["resources"][0], "db");
        assert_eq!(report.raw["state"], "connected");
        assert_eq!(report.status.details.resources, vec!["db".to_string()]);
    }

    #[test]
    fn stopped_dead_or_foreign_processes_are_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let program = this_program();
        write_status(
            dir.path(),
            &status(std::process::id(), ConnectionState::Stopped),
        )
        .unwrap();
        assert!(
            !read_status::<Details>(dir.path(), &program)
                .unwrap()
                .running
        );
        write_status(
            dir.path(),
            &status(std::process::id(), ConnectionState::Connected),
        )
        .unwrap();
        assert!(
            !read_status::<Details>(dir.path(), "postern-client")
                .unwrap()
                .running
        );
        write_status(dir.path(), &status(u32::MAX, ConnectionState::Connected)).unwrap();
        assert!(
            !read_status::<Details>(dir.path(), &program)
                .unwrap()
                .running
        );
    }

    #[test]
    fn the_header_says_how_an_exchanged_token_is_renewed() {
        let mut exchanged = status(1, ConnectionState::Connected);
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        exchanged.workload_identity = Some(WorkloadIdentityStatus {
            source: "the ID token file /run/token".into(),
            token_id: uuid::Uuid::nil(),
            token_expires_at: at("2026-12-05T10:00:00Z"),
            renews_at: at("2026-12-05T09:40:00Z"),
            last_error: Some("cannot reach the portal".into()),
        });
        let text = header("postern-client", &exchanged);
        assert!(
            text.contains("exchanged for the ID token file /run/token, until 2026-12-05 10:00:00 UTC, renewed at 2026-12-05 09:40:00 UTC"),
            "{text}"
        );
        assert!(
            text.contains("renewal:      failed: cannot reach the portal"),
            "{text}"
        );
        assert!(
            !header("postern-client", &status(1, ConnectionState::Connected)).contains("token:")
        );
    }

    #[test]
    fn a_missing_file_says_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_status::<Details>(dir.path(), "postern-client").unwrap_err();
        assert!(err.to_string().starts_with("no postern-client is running"));
    }
}
