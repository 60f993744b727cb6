//! The portal's Prometheus metrics, end to end: a real `postern serve --metrics-listen` (on
//! SQLite and on PostgreSQL), real `postern-client` processes, and `/metrics` read over a real
//! socket and parsed with a Prometheus text parser. The counters and gauges must move as
//! sessions come and go.

mod common;
#[macro_use]
#[path = "common/e2e.rs"]
mod e2e;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{string, Portal};
use e2e::{connected, wait_for_all, Api, Backend, Database, Device, PROPAGATION, START};
use serde_json::{json, Value};

on_both_backends!(the_metrics_follow_sessions_refusals_requests_and_expiring_tokens);

/// The samples of one scrape, by metric name and labels.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn read(metrics: &Api) -> Scrape {
        let text = match metrics.call(reqwest::Method::GET, "/metrics", None) {
            (status, Value::String(text)) if status.is_success() => text,
            (status, other) => panic!("GET /metrics: {status}: {other}"),
        };
        let lines = text.lines().map(|line| Ok(line.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format"))
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0
            .samples
            .iter()
            .any(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }
}

/// Scrapes until `ready` holds (the gauges follow the sessions within moments).
#[track_caller]
fn scrape_until(metrics: &Api, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let scrape = Scrape::read(metrics);
        if ready(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in /metrics within {PROPAGATION:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn the_metrics_follow_sessions_refusals_requests_and_expiring_tokens(backend: Backend) {
    let Some(db) = Database::create(backend) else {
        return;
    };
    let api_token = db.api_token();
    let mut args = db.args();
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let portal = Portal::start(&args);
    let deadline = Instant::now() + START;
    let metrics_url = loop {
        let log = portal.log();
        if let Some(at) = log.find("metrics on http://") {
            let rest = &log[at + "metrics on ".len()..];
            let url = rest.split_whitespace().next().unwrap_or_default();
            break url.trim_end_matches("/metrics").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no metrics listener in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let metrics = Api::new(&metrics_url, "");
    let api = Api::new(&portal.url, &api_token);
    let created = api.post(
        "/v1/actors",
        json!({"type": "service_account", "name": "fleet"}),
    );
    let actor_id = string(&created["data"], "id");
    let secret = string(&created["token"], "secret");
    let soon = (Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    api.post(
        &format!("/v1/actors/{actor_id}/tokens"),
        json!({"name": "ending", "expires_at": soon}),
    );

    let before = Scrape::read(&metrics);
    let connects_before = before.sum("postern_session_connects_total", &[("kind", "client")]);
    assert!(before.has("postern_db_pool_connections", &[("state", "idle")]));
    assert_eq!(
        before.sum(
            "postern_tokens_expiring",
            &[("within", "7d"), ("account", "default")]
        ),
        1.0,
        "the token ending in 3 days"
    );
    assert!(
        before.has(
            "postern_http_request_duration_seconds_count",
            &[
                ("route", "/v1/actors/:id/tokens"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        "requests are timed by route template: {:?}",
        before
            .0
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("postern_http"))
            .map(|s| (&s.metric, &s.labels, &s.value))
            .collect::<Vec<_>>()
    );

    let root = tempfile::tempdir().expect("temp dir");
    let mut devices: Vec<Device> = (1..=3)
        .map(|n| Device::client(root.path(), &portal.url, &format!("m-{n}"), &secret, &[]))
        .collect();
    wait_for_all(&mut devices, START, "connected", connected);
    let scrape = scrape_until(&metrics, "three client sessions", |s| {
        s.sum("postern_sessions", &[("kind", "client")]) == 3.0
    });
    assert!(
        scrape.sum("postern_session_connects_total", &[("kind", "client")])
            >= connects_before + 3.0
    );

    let revoked = api.post(
        &format!("/v1/actors/{actor_id}/tokens"),
        json!({"name": "gone"}),
    );
    api.delete(&format!(
        "/v1/actors/{actor_id}/tokens/{}",
        string(&revoked["data"], "id")
    ));
    let mut bad = Device::client(
        root.path(),
        &portal.url,
        "m-bad",
        &string(&revoked["data"], "secret"),
        &[],
    );
    bad.wait_exit(Duration::from_secs(20));
    let scrape = scrape_until(&metrics, "a refused token", |s| {
        s.sum("postern_session_refusals_total", &[("kind", "client")]) >= 1.0
    });
    assert!(
        scrape.sum("postern_auth_failures_total", &[("surface", "client")]) >= 1.0,
        "{:?}",
        scrape
            .0
            .samples
            .iter()
            .filter(|s| s.metric.contains("auth"))
            .collect::<Vec<_>>()
    );

    // An ID token nobody trusts is a refused exchange.
    let (status, _) = api.call(
        reqwest::Method::POST,
        "/v1/workload-identity/exchange",
        Some(json!({"id_token": "a.b.c"})),
    );
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    scrape_until(&metrics, "a refused exchange", |s| {
        s.sum(
            "postern_workload_identity_exchanges_total",
            &[("outcome", "refused")],
        ) == 1.0
    });

    let leaving = devices.pop().expect("a device");
    leaving.terminate();
    scrape_until(&metrics, "two client sessions after one left", |s| {
        s.sum("postern_sessions", &[("kind", "client")]) == 2.0
    });

    api.delete(&format!("/v1/actors/{actor_id}/tokens"));
    let scrape = scrape_until(&metrics, "the revocation's fan-out", |s| {
        s.sum("postern_sessions", &[("kind", "client")]) == 0.0
    });
    assert!(
        scrape.sum("postern_revocation_fanout_seconds_count", &[]) >= 1.0,
        "the revocation is timed"
    );
    assert_eq!(
        scrape.sum(
            "postern_tokens_expiring",
            &[("within", "7d"), ("account", "default")]
        ),
        0.0,
        "a revoked token no longer counts as expiring"
    );
}
