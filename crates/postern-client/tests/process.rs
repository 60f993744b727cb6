//! `postern-client` as a process, without a portal: configuration errors, `status`, and an
//! unreachable portal.

mod common;

use std::time::Duration;

use common::*;
use postern_token::TokenKind;

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn a_missing_token_file_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-token");
    let state = dir.path().join("state");
    let finished = run(
        command(&["--no-tunnel", "--state-dir", state.to_str().unwrap()])
            .env("POSTERN_TOKEN_PATH", &path),
        LIMIT,
    );
    assert_exit(
        &finished,
        2,
        &[
            &format!("token file {} does not exist", path.display()),
            "POSTERN_TOKEN",
        ],
    );
}

#[test]
fn a_token_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), &token(TokenKind::Client), 0o644);
    let state = dir.path().join("state");
    let finished = run(
        &mut command(&[
            "--no-tunnel",
            "--token-path",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]),
        LIMIT,
    );
    let shown = path.display();
    assert_exit(
        &finished,
        2,
        &[&format!(
            "token file {shown} has mode 0644: it must not be readable by group or others \
             (chmod 600 {shown})"
        )],
    );
}

#[test]
fn a_gateway_token_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let secret = token(TokenKind::Gateway);
    let path = token_file(dir.path(), &secret, 0o600);
    let state = dir.path().join("state");
    let finished = run(
        &mut command(&[
            "--no-tunnel",
            "--token-path",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert_exit(
        &finished,
        2,
        &["is a gateway token", "needs a client token"],
    );
    assert!(!finished.stderr.contains(&secret));

    // The same from the environment.
    let finished = run(
        command(&["--no-tunnel", "--state-dir", state.to_str().unwrap()])
            .env("POSTERN_TOKEN", &secret),
        LIMIT,
    );
    assert_exit(&finished, 2, &["POSTERN_TOKEN", "is a gateway token"]);
}

#[test]
fn an_mtu_outside_the_range_is_refused() {
    let finished = run(&mut command(&["--mtu", "100"]), LIMIT);
    assert_exit(&finished, 2, &["--mtu", "1280", "9000"]);
}

/// Without CAP_NET_ADMIN the TUN cannot be created: the error says what is needed and
/// suggests `--no-tunnel`. As root the client is started without privileges via `setpriv`.
#[test]
fn without_permission_for_a_tun_the_client_says_root_or_cap_net_admin_is_needed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = dir.path().join("state");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if root {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(BIN);
        cmd
    } else {
        std::process::Command::new(BIN)
    };
    cmd.args([
        "--state-dir",
        state.to_str().unwrap(),
        "--tun-name",
        "postern-t0",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("POSTERN_TOKEN", token(TokenKind::Client))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let finished = run(&mut cmd, LIMIT);
    assert_exit(
        &finished,
        2,
        &[
            "TUN device postern-t0",
            "root or the CAP_NET_ADMIN capability",
            "--no-tunnel",
        ],
    );
}

#[test]
fn plain_http_to_a_remote_portal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), &token(TokenKind::Client), 0o600);
    let state = dir.path().join("state");
    let finished = run(
        &mut command(&[
            "--no-tunnel",
            "--token-path",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--api-url",
            "http://portal.example.com",
        ]),
        LIMIT,
    );
    assert_exit(&finished, 2, &["--insecure", "https://"]);
}

#[test]
fn status_without_a_running_client_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let finished = run(
        &mut command(&["status", "--state-dir", dir.path().to_str().unwrap()]),
        LIMIT,
    );
    assert_exit(&finished, 1, &["no postern-client is running"]);
    let finished = run(
        &mut command(&[
            "status",
            "--json",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert_exit(&finished, 1, &["no postern-client is running"]);
    assert!(finished.stdout.is_empty());
}

#[test]
fn an_unreachable_portal_ends_after_the_max_partition_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), &token(TokenKind::Client), 0o600);
    let state = dir.path().join("state");
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let finished = run(
        &mut command(&[
            "--no-tunnel",
            "--token-path",
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--api-url",
            &format!("http://127.0.0.1:{port}"),
            "--max-partition-time",
            "2s",
        ]),
        LIMIT,
    );
    assert_exit(&finished, 1, &["--max-partition-time"]);
    assert!(
        finished.elapsed >= Duration::from_secs(2) && finished.elapsed < Duration::from_secs(6),
        "took {:?}",
        finished.elapsed
    );
    // The status file tells the story, and `status` knows nothing runs any more.
    let raw = std::fs::read_to_string(state.join("status.json")).unwrap();
    let status: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["exit_code"], 1);
    assert!(status["last_error"]
        .as_str()
        .unwrap()
        .contains("max-partition-time"));
    let finished = run(
        &mut command(&["status", "--state-dir", state.to_str().unwrap()]),
        LIMIT,
    );
    assert_exit(
        &finished,
        1,
        &["no postern-client is running", "last error"],
    );
}
