//! TLS end to end with real processes: `postern serve --tls-cert --tls-key` serves HTTPS and
//! WSS; the CLI and `postern-client` reach it with `--ca-file` (a private CA) and fail without;
//! a certificate replaced on disk, or after SIGHUP, is used for new connections while the
//! client's session stays up; a key that does not match is refused and the old certificate
//! stays. Certificates come from rcgen, signed by throwaway CAs.

mod common;
#[path = "common/e2e.rs"]
#[allow(unused_macros)]
mod e2e;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{postern, Portal, Run};
use e2e::{connected, Device, START};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, written to `dir/name.pem`, that signs leaf certificates for localhost and 127.0.0.1.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Postern test {name}"));
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, issuer.pem()).expect("write CA");
        TestCa { issuer, pem }
    }

    /// Writes a fresh leaf certificate and its key to `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = params.signed_by(&leaf_key, &self.issuer).expect("leaf");
        std::fs::write(cert, leaf.pem()).expect("write cert");
        std::fs::write(key, leaf_key.serialize_pem()).expect("write key");
    }

    fn ca_file(&self) -> &str {
        self.pem.to_str().expect("utf-8 path")
    }
}

fn cli(portal: &Portal, token: &str, ca: Option<&TestCa>, args: &[&str]) -> Run {
    let mut all: Vec<&str> = args.to_vec();
    if let Some(ca) = ca {
        all.extend(["--ca-file", ca.ca_file()]);
    }
    postern(
        &all,
        &[
            ("POSTERN_API_URL", &portal.url),
            ("POSTERN_API_TOKEN", token),
        ],
    )
}

/// Waits until the CLI trusting `ca` is served, i.e. the portal uses that CA's certificate.
fn wait_served_by(portal: &Portal, token: &str, ca: &TestCa) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = cli(portal, token, Some(ca), &["account", "show"]);
        if run.code == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the portal never served the new certificate:\n{}\n{}",
            run.stderr,
            portal.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn set_modified(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(time))
        .expect("set mtime");
}

#[test]
fn https_with_a_private_ca_and_certificates_replaced_without_dropping_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cert = dir.path().join("portal.crt");
    let key = dir.path().join("portal.key");
    let first = TestCa::new(dir.path(), "first");
    let second = TestCa::new(dir.path(), "second");
    let third = TestCa::new(dir.path(), "third");
    first.issue(&cert, &key);

    let data_arg = data.to_str().unwrap();
    let portal = Portal::try_start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_arg,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .unwrap_or_else(|log| panic!("postern serve did not start:\n{log}"));
    assert!(
        portal.url.starts_with("https://127.0.0.1:"),
        "{}",
        portal.url
    );
    let token = common::api_token(&data);

    // The CLI: trusted with --ca-file, refused without (the public roots do not know it).
    cli(&portal, &token, Some(&first), &["account", "show"]).ok();
    cli(&portal, &token, None, &["account", "show"]).fails_with(&["certificate"]);
    let created = cli(&portal, &token, Some(&first), &["sa", "create", "runner"]).ok();
    let secret = created.last_line().to_string();

    // A client with the CA connects over WSS; one without it cannot.
    let url = portal.url.replace("127.0.0.1", "localhost");
    let mut trusting = Device::client(
        dir.path(),
        &url,
        "trusting",
        &secret,
        &["--ca-file", first.ca_file()],
    );
    let mut untrusting = Device::client(dir.path(), &url, "untrusting", &secret, &[]);
    let deadline = Instant::now() + START;
    while !trusting.status_file().is_some_and(|s| connected(&s)) {
        assert!(
            Instant::now() < deadline && trusting.running(),
            "the client with --ca-file did not connect:\n{}",
            trusting.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + START;
    while !untrusting.log().contains("certificate") {
        assert!(
            Instant::now() < deadline,
            "the client without the CA should fail on the certificate:\n{}",
            untrusting.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(untrusting
        .status_file()
        .is_none_or(|status| !connected(&status)));

    // Replaced on disk: picked up without a signal.
    second.issue(&cert, &key);
    wait_served_by(&portal, &token, &second);
    cli(&portal, &token, Some(&first), &["account", "show"]).fails_with(&["certificate"]);

    // Replaced with the old modification times: only SIGHUP makes the portal read it.
    let modified = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let (cert_time, key_time) = (modified(&cert), modified(&key));
    third.issue(&cert, &key);
    set_modified(&cert, cert_time);
    set_modified(&key, key_time);
    std::thread::sleep(Duration::from_secs(3));
    cli(&portal, &token, Some(&second), &["account", "show"]).ok();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &portal.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    wait_served_by(&portal, &token, &third);

    // A key that does not belong to the certificate: refused, the certificate in use stays.
    let (_, other_key) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    first.issue(&dir.path().join("other.crt"), &other_key);
    std::fs::copy(&other_key, &key).expect("copy key");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !portal
        .log()
        .contains("keeping the previous TLS certificate")
    {
        assert!(Instant::now() < deadline, "{}", portal.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    cli(&portal, &token, Some(&third), &["account", "show"]).ok();

    // Through all of it the first session stayed up: one connection, still connected.
    assert!(trusting.running(), "{}", trusting.describe());
    assert!(trusting.status_file().is_some_and(|s| connected(&s)));
    assert_eq!(
        trusting.log().matches("connected to the portal").count(),
        1,
        "the session never reconnected:\n{}",
        trusting.log()
    );
}

#[test]
fn the_cli_refuses_plain_http_to_another_machine() {
    let run = postern(
        &[
            "account",
            "show",
            "--api-url",
            "http://portal.example.com:8080",
        ],
        &[("POSTERN_API_TOKEN", "postern_api_x")],
    );
    run.fails_with(&[
        "refusing to send the API token unencrypted to portal.example.com",
        "--insecure",
    ]);
    // With --insecure it tries (and here cannot resolve the name).
    let run = postern(
        &[
            "account",
            "show",
            "--insecure",
            "--api-url",
            "http://portal.invalid:8080",
        ],
        &[("POSTERN_API_TOKEN", "postern_api_x")],
    );
    let run = run.fails_with(&["portal.invalid"]);
    assert!(!run.stderr.contains("refusing"), "{}", run.stderr);
}
