//! Webhooks end to end: real `postern serve` processes deliver to a real HTTP receiver on a
//! socket, which checks each signature as a user's receiver would. Events arrive once each,
//! signed; a receiver that fails is retried until it answers; a delivery survives the portal
//! being down when its retry was due; with two nodes on one PostgreSQL database each delivery
//! is sent once.
//!
//! Waits are deadlines, not timing assertions.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{string, Portal};
use e2e::{Api, Backend, Database};
use postern_domain::webhooks::verify_signature;
use serde_json::{json, Value};

/// Deadline for a delivery to arrive (a loaded machine, retries of 2 s and 4 s).
const ARRIVAL: Duration = Duration::from_secs(60);
/// The portals' first retry: long enough to stop a portal before it is due.
const FIRST_RETRY: &str = "3s";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver on 127.0.0.1: answers each request with the next queued status, or 200.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/hooks/postern",
            listener.local_addr().expect("addr")
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let (seen_by_thread, answers_by_thread) = (seen.clone(), answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut headers = HashMap::new();
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                    }
                }
                let length: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let answered = answers_by_thread.lock().unwrap().pop_front().unwrap_or(200);
                seen_by_thread.lock().unwrap().push(Received {
                    headers,
                    body,
                    answered,
                });
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {answered} X\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"
                );
            }
        });
        Receiver { url, seen, answers }
    }

    fn fail_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received.
    #[track_caller]
    fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {ARRIVAL:?}; received {:#?}",
                seen.iter().map(Received::json).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The tries of each delivery, by `Postern-Delivery`.
fn by_delivery(seen: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut tries: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for received in seen {
        tries
            .entry(received.header("postern-delivery").to_string())
            .or_default()
            .push(received.clone());
    }
    tries
}

/// Creates a webhook through the CLI; returns (id, secret).
fn create_webhook(portal: &Portal, token: &str, url: &str, events: &[&str]) -> (String, String) {
    let mut args = vec!["webhooks", "create", "--url", url];
    for event in events {
        args.extend(["--event", event]);
    }
    let run = portal.cli(token, &args).ok();
    let secret = run.last_line().to_string();
    assert!(secret.starts_with("whsec_"), "{}", run.stdout);
    let id = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("webhook id"))
        .map(|rest| rest.trim_start_matches([':', ' ']).trim().to_string())
        .unwrap_or_else(|| panic!("no webhook id in {}", run.stdout));
    (id, secret)
}

#[track_caller]
fn assert_signed(received: &Received, secret: &str) {
    assert!(
        verify_signature(
            secret.as_bytes(),
            received.header("postern-signature"),
            &received.body,
            Utc::now(),
            chrono::Duration::minutes(5),
        ),
        "a delivery that does not verify: {:?}",
        received.headers
    );
}

/// The webhook's newest delivery once the portal has recorded it delivered (the receiver may
/// see a try before the portal records its answer).
#[track_caller]
fn newest_delivered(portal: &Portal, token: &str, webhook_id: &str) -> Value {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let log = portal
            .cli(token, &["webhooks", "deliveries", webhook_id, "--json"])
            .ok()
            .json();
        if log[0]["state"] == "delivered" {
            return log[0].clone();
        }
        assert!(Instant::now() < deadline, "not recorded delivered: {log:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_arrive_signed_once_each_and_a_failing_receiver_gets_them_after_retries_and_a_restart() {
    let database = Database::create(Backend::Sqlite).expect("sqlite");
    let mut args = database.args();
    args.extend(["--webhook-first-retry", FIRST_RETRY]);
    let mut portal = Portal::start(&args);
    let token = database.api_token();
    let api = Api::new(&portal.url, &token);
    let receiver = Receiver::start();
    let (webhook_id, secret) = create_webhook(
        &portal,
        &token,
        &receiver.url,
        &["token.created", "token.revoked"],
    );

    // A service account with a token (token.created), the token revoked (token.revoked); a
    // group (no event) in between.
    let created = api.post(
        "/v1/actors",
        json!({"type": "service_account", "name": "runner", "token": {"name": "fleet"}}),
    );
    let actor_id = string(&created["data"], "id");
    let token_id = string(&created["token"], "id");
    let token_secret = string(&created["token"], "secret");
    api.post("/v1/groups", json!({"name": "no-event"}));
    api.delete(&format!("/v1/actors/{actor_id}/tokens/{token_id}"));
    let seen = receiver.wait_for("two events", |seen| seen.len() >= 2);
    std::thread::sleep(Duration::from_secs(2));
    let seen = if receiver.seen().len() > seen.len() {
        receiver.seen()
    } else {
        seen
    };
    assert_eq!(seen.len(), 2, "each event once: {seen:#?}");
    let types: Vec<String> = seen
        .iter()
        .map(|r| r.header("postern-event").to_string())
        .collect();
    assert_eq!(types, ["token.created", "token.revoked"]);
    for received in &seen {
        assert_signed(received, &secret);
        let event = received.json();
        assert_eq!(event["type"], received.header("postern-event"));
        assert_eq!(event["data"]["object_id"], token_id.as_str());
        assert!(!String::from_utf8_lossy(&received.body).contains(&token_secret));
        assert_eq!(received.header("content-type"), "application/json");
    }
    assert_ne!(
        seen[0].header("postern-delivery"),
        seen[1].header("postern-delivery")
    );
    let revoked = seen[1].json();
    assert!(
        revoked["data"]["after"]["revoked_at"].is_string(),
        "{revoked:#}"
    );

    // A receiver that fails twice gets the test event on the third try, 3 s and 6 s later.
    receiver.fail_next(&[500, 503]);
    portal.cli(&token, &["webhooks", "test", &webhook_id]).ok();
    let seen = receiver.wait_for("the third try", |seen| seen.len() >= 5);
    let tries = by_delivery(&seen[2..]);
    assert_eq!(
        tries.len(),
        1,
        "one delivery, tried three times: {tries:#?}"
    );
    let tries = tries.into_values().next().unwrap();
    assert_eq!(
        tries.iter().map(|t| t.answered).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    for received in &tries {
        assert_signed(received, &secret);
        assert_eq!(received.header("postern-event"), "webhook.test");
    }
    let test = newest_delivered(&portal, &token, &webhook_id);
    assert_eq!(test["event_type"], "webhook.test", "{test:#}");
    assert_eq!(test["attempts"], 3, "{test:#}");
    assert_eq!(test["last_status"], 200, "{test:#}");

    // The portal is down when the retry is due: the delivery waits in the database and goes
    // once it is back.
    receiver.fail_next(&[502]);
    portal.cli(&token, &["webhooks", "test", &webhook_id]).ok();
    receiver.wait_for("the first try", |seen| seen.len() >= 6);
    let url = portal.url.clone();
    assert_eq!(portal.terminate(), Some(0));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        receiver.seen().len(),
        6,
        "nothing is sent while the portal is down"
    );
    let listen = url.trim_start_matches("http://").to_string();
    let mut restart_args = vec!["serve", "--listen", &listen];
    restart_args.extend(&args);
    portal = Portal::try_start(&restart_args).unwrap_or_else(|log| panic!("restart:\n{log}"));
    let seen = receiver.wait_for("the retry after the restart", |seen| seen.len() >= 7);
    assert_eq!(
        seen[5].header("postern-delivery"),
        seen[6].header("postern-delivery")
    );
    assert_eq!((seen[5].answered, seen[6].answered), (502, 200));
    let retried = newest_delivered(&portal, &token, &webhook_id);
    assert_eq!(retried["attempts"], 2, "{retried:#}");

    // Paused, it is sent nothing; deleted, it is gone with its log.
    portal
        .cli(
            &token,
            &["webhooks", "update", &webhook_id, "--enabled", "false"],
        )
        .ok();
    api.post(
        &format!("/v1/actors/{actor_id}/tokens"),
        json!({"name": "while-paused"}),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.seen().len(), 7, "a paused webhook is sent nothing");
    portal
        .cli(&token, &["webhooks", "delete", &webhook_id])
        .ok();
    let listed = portal
        .cli(&token, &["webhooks", "list", "--json"])
        .ok()
        .json();
    assert_eq!(listed, json!([]));
}

#[test]
fn two_nodes_on_one_database_send_each_delivery_once() {
    let Some(database) = Database::create(Backend::Postgres) else {
        return;
    };
    let mut args = database.args();
    args.extend(["--webhook-first-retry", FIRST_RETRY]);
    let nodes = [Portal::start(&args), Portal::start(&args)];
    let token = database.api_token();
    let receiver = Receiver::start();
    let (_, secret) = create_webhook(&nodes[0], &token, &receiver.url, &["token.created"]);
    let apis = [
        Api::new(&nodes[0].url, &token),
        Api::new(&nodes[1].url, &token),
    ];
    let created = apis[0].post(
        "/v1/actors",
        json!({"type": "service_account", "name": "fleet"}),
    );
    let actor_id = string(&created["data"], "id");
    const TOKENS: usize = 30;
    for n in 0..TOKENS {
        apis[n % 2].post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": format!("t-{n}")}),
        );
    }
    // The service account's initial token, then the 30.
    let expected = TOKENS + 1;
    receiver.wait_for("every token.created", |seen| seen.len() >= expected);
    // Both nodes look for due deliveries every second: give a duplicate time to show.
    std::thread::sleep(Duration::from_secs(3));
    let seen = receiver.seen();
    let tries = by_delivery(&seen);
    assert_eq!(tries.len(), expected, "one delivery per token");
    assert_eq!(seen.len(), expected, "each sent once: {tries:#?}");
    for received in &seen {
        assert_signed(received, &secret);
    }
}
