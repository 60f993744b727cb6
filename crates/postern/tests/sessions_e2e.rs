//! Control sessions end to end, with real processes only: a `postern serve` portal (on SQLite
//! and on a fresh PostgreSQL database), real `postern-client --no-tunnel` and `postern-gateway`
//! processes, and the REST API over a real socket.
//!
//! The binaries `postern-client` and `postern-gateway` must have been built next to `postern`:
//! `cargo build --workspace --bins` (scripts/test does it).
//!
//! Waits are deadlines (generous, for a loaded machine), not timing assertions; the one timing
//! assertion is the issue's: revoking a token ends its clients within 2 s.

mod common;
#[macro_use]
#[path = "common/e2e.rs"]
mod e2e;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{postern, string, Portal};
use e2e::{
    connected, shows_exactly, wait_for_all, Api, Backend, Database, Device, PROPAGATION, START,
};
use serde_json::json;

/// The bound: from the revoke call returning to the last client exiting.
const REVOCATION_BOUND: Duration = Duration::from_secs(2);
/// Exit code of a device whose token was rejected.
const TOKEN_REJECTED: i32 = 3;
/// Exit code of a client device an administrator blocked, or outside its token's networks.
const DEVICE_REFUSED: i32 = 4;
/// Exit code of a client refused because its token serves `max_clients` devices already.
const TOKEN_LIMIT: i32 = 5;

on_both_backends!(
    twenty_clients_on_one_token_all_see_a_new_resource,
    revoking_a_token_ends_its_twenty_clients_with_code_3_within_2_s_and_spares_the_other_token,
    an_expired_or_revoked_token_is_refused_with_code_3,
    leaving_the_policy_group_withdraws_the_resource_and_the_client_keeps_running,
    clients_and_gateways_reconnect_through_a_portal_restart,
    blocking_a_device_ends_it_with_code_4_and_refuses_its_id_and_key_until_unblocked,
    a_tokens_guardrails_refuse_the_extra_device_and_the_outsider_and_hold_a_new_one_until_approved,
    ephemeral_clients_go_when_they_stop_and_after_the_timeout_when_killed,
    a_token_revoked_by_whoever_presents_it_ends_its_client_with_code_3,
);

struct Token {
    id: String,
    secret: String,
}

/// A portal on a fresh database with: a group `fleet`, a service account `runner` in it with
/// token A (its initial one) and token B, a site `dc` with a gateway token, a resource `db` in
/// that site and a policy granting it to `fleet`. Fields drop in order: the portal first, then
/// the database, then the temporary directory of the devices.
struct World {
    portal: Option<Portal>,
    api: Api,
    db: Database,
    root: tempfile::TempDir,
    group_id: String,
    actor_id: String,
    token_a: Token,
    token_b: Token,
    site_id: String,
    gateway_secret: String,
    resource_id: String,
}

impl World {
    /// `None` when the backend is skipped.
    fn new(backend: Backend) -> Option<World> {
        let db = Database::create(backend)?;
        let api_token = db.api_token();
        // A sweep each second: the ephemeral devices' test sets a timeout of seconds; the other
        // tests' devices are far from the default timeouts.
        let mut args = db.args();
        args.extend(["--device-sweep-interval", "1s"]);
        let portal = Portal::start(&args);
        let api = Api::new(&portal.url, &api_token);

        let group = api.post("/v1/groups", json!({"name": "fleet"}));
        let group_id = string(&group["data"], "id");
        let created = api.post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner", "group_ids": [group_id]}),
        );
        let actor_id = string(&created["data"], "id");
        let token_a = Token {
            id: string(&created["token"], "id"),
            secret: string(&created["token"], "secret"),
        };
        let second = api.post(
            &format!("/v1/actors/{actor_id}/tokens"),
            json!({"name": "second"}),
        );
        let token_b = Token {
            id: string(&second["data"], "id"),
            secret: string(&second["data"], "secret"),
        };
        let site = api.post("/v1/sites", json!({"name": "dc"}));
        let site_id = string(&site["data"], "id");
        let gateway = api.post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}));
        let gateway_secret = string(&gateway["data"], "secret");
        let world = World {
            portal: Some(portal),
            api,
            db,
            root: tempfile::tempdir().expect("temp dir"),
            group_id,
            actor_id,
            token_a,
            token_b,
            site_id,
            gateway_secret,
            resource_id: String::new(),
        };
        let resource_id = world.grant("db", "10.20.0.0/24");
        Some(World {
            resource_id,
            ..world
        })
    }

    fn url(&self) -> String {
        self.portal.as_ref().expect("the portal runs").url.clone()
    }

    /// Creates a CIDR resource in the site and a policy granting it to the group; returns the
    /// resource's id.
    fn grant(&self, name: &str, address: &str) -> String {
        let resource = self.api.post(
            "/v1/resources",
            json!({"type": "cidr", "name": name, "address": address, "site_id": self.site_id}),
        );
        let resource_id = string(&resource["data"], "id");
        self.api.post(
            "/v1/policies",
            json!({"group_id": self.group_id, "resource_id": resource_id}),
        );
        resource_id
    }

    fn client(&self, id: &str, token: &Token, args: &[&str]) -> Device {
        Device::client(self.root.path(), &self.url(), id, &token.secret, args)
    }

    fn gateway(&self, id: &str) -> Device {
        Device::gateway(self.root.path(), &self.url(), id, &self.gateway_secret)
    }

    /// Twenty clients with token A and two with token B, each with its own state directory and
    /// device id.
    fn fleet(&self) -> (Vec<Device>, Vec<Device>) {
        let on_a = (1..=20)
            .map(|n| self.client(&format!("fleet-a-{n:02}"), &self.token_a, &[]))
            .collect();
        let on_b = (1..=2)
            .map(|n| self.client(&format!("fleet-b-{n:02}"), &self.token_b, &[]))
            .collect();
        (on_a, on_b)
    }

    fn online_sessions(&self, token: &Token) -> u64 {
        let token = self
            .api
            .get(&format!("/v1/actors/{}/tokens/{}", self.actor_id, token.id));
        token["data"]["online_sessions"]
            .as_u64()
            .unwrap_or_else(|| panic!("no online_sessions in {token}"))
    }

    fn revoke(&self, token: &Token) {
        self.api
            .delete(&format!("/v1/actors/{}/tokens/{}", self.actor_id, token.id));
    }
}

/// Checks, through `postern-client status --json` as an operator would run it, that each
/// client is connected with `token` and lists exactly `resources`.
#[track_caller]
fn assert_status(devices: &[Device], token: &Token, resources: &[&str]) {
    for device in devices {
        let status = device.status();
        assert!(
            shows_exactly(&status, resources),
            "{}: expected connected with {resources:?}, status --json says:\n{status:#}",
            device.id
        );
        assert_eq!(status["token"]["id"], token.id.as_str(), "{status:#}");
        assert_eq!(status["device_id"], device.id.as_str(), "{status:#}");
    }
}

/// 20 clients on one token (and 2 on a second token of the same account) all get the resource
/// at connect, then all get a resource granted while they run.
fn twenty_clients_on_one_token_all_see_a_new_resource(backend: Backend) {
    let Some(w) = World::new(backend) else { return };
    let (mut on_a, mut on_b) = w.fleet();
    let first = w.resource_id.as_str();
    wait_for_all(&mut on_a, START, "connected with the first resource", |s| {
        shows_exactly(s, &[first])
    });
    wait_for_all(&mut on_b, START, "connected with the first resource", |s| {
        shows_exactly(s, &[first])
    });
    assert_eq!(w.online_sessions(&w.token_a), 20);
    assert_eq!(w.online_sessions(&w.token_b), 2);

    let second = w.grant("git", "10.30.0.0/24");
    let both = [first, second.as_str()];
    let took = wait_for_all(&mut on_a, PROPAGATION, "showing the new resource", |s| {
        shows_exactly(s, &both)
    });
    eprintln!(
        "propagation: all 20 clients showed the new resource {took:?} after the policy was created"
    );
    wait_for_all(&mut on_b, PROPAGATION, "showing the new resource", |s| {
        shows_exactly(s, &both)
    });
    assert_status(&on_a, &w.token_a, &both);
    assert_status(&on_b, &w.token_b, &both);

    // Every device is listed online with its token.
    let clients = w
        .api
        .get(&format!("/v1/clients?token_id={}&limit=100", w.token_a.id));
    let rows = clients["data"].as_array().expect("a list");
    assert_eq!(rows.len(), 20, "{clients:#}");
    assert!(rows.iter().all(|row| row["online"] == true), "{clients:#}");

    // The CLI lists the same 22 online clients of the service account.
    let env = [
        ("POSTERN_API_URL", w.api.url.as_str()),
        ("POSTERN_API_TOKEN", w.api.token()),
    ];
    let listed = postern(
        &["clients", "--online", "--actor", "runner", "--json"],
        &env,
    )
    .ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(22), "{listed:#}");
}

/// Revoking token A ends all 20 of its clients with exit code 3, the last within 2 s of the
/// revoke call returning; the 2 clients on token B stay connected.
fn revoking_a_token_ends_its_twenty_clients_with_code_3_within_2_s_and_spares_the_other_token(
    backend: Backend,
) {
    let Some(w) = World::new(backend) else { return };
    let (mut on_a, mut on_b) = w.fleet();
    let first = w.resource_id.as_str();
    wait_for_all(&mut on_a, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
    wait_for_all(&mut on_b, START, "connected", |s| {
        shows_exactly(s, &[first])
    });

    w.revoke(&w.token_a);
    let revoked = Instant::now();
    let deadline = revoked + Duration::from_secs(15);
    let mut last_exit = Duration::ZERO;
    while on_a.iter_mut().any(Device::running) {
        assert!(
            Instant::now() < deadline,
            "clients of the revoked token still run after 15 s:\n{}",
            on_a.iter_mut()
                .filter_map(|d| d.running().then(|| d.describe()))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(5));
        last_exit = revoked.elapsed();
    }
    for device in &mut on_a {
        let code = device.exit_status().and_then(|status| status.code());
        assert_eq!(
            code,
            Some(TOKEN_REJECTED),
            "a client of the revoked token must exit 3:\n{}",
            device.describe()
        );
        let status = device.status_file().expect("a status file");
        assert_eq!(status["state"], "stopped", "{status:#}");
        assert_eq!(status["exit_code"], TOKEN_REJECTED, "{status:#}");
        assert_eq!(
            status["last_error"], "the portal ended the session: the token was revoked",
            "the reason is recorded: {status:#}"
        );
    }
    assert!(
        last_exit <= REVOCATION_BOUND,
        "the last of 20 clients exited {last_exit:?} after the revoke call returned (bound: {REVOCATION_BOUND:?})"
    );
    eprintln!(
        "revocation: the last of 20 clients exited {last_exit:?} after the revoke call returned"
    );

    // Token B's clients are untouched: still running, still connected, still with the resource.
    std::thread::sleep(Duration::from_millis(500));
    for device in &mut on_b {
        assert!(
            device.running(),
            "a client of the other token stopped:\n{}",
            device.describe()
        );
    }
    assert_status(&on_b, &w.token_b, &[first]);
    assert_eq!(w.online_sessions(&w.token_b), 2);
    assert_eq!(w.online_sessions(&w.token_a), 0);
    let clients = w
        .api
        .get(&format!("/v1/clients?token_id={}&limit=100", w.token_a.id));
    let rows = clients["data"].as_array().expect("a list");
    assert_eq!(rows.len(), 20, "{clients:#}");
    assert!(rows.iter().all(|row| row["online"] == false), "{clients:#}");
}

/// A token that expires while in use ends its session at the expiry (the client exits 3); an
/// expired token and a revoked token are refused at connect (exit 3).
fn an_expired_or_revoked_token_is_refused_with_code_3(backend: Backend) {
    let Some(w) = World::new(backend) else { return };
    // Long enough for the client to connect first on a busy machine.
    let lifetime = Duration::from_secs(5);
    let expires_at = Utc::now() + chrono::Duration::from_std(lifetime).expect("a duration");
    let short = w.api.post(
        &format!("/v1/actors/{}/tokens", w.actor_id),
        json!({"name": "short", "expires_at": expires_at.to_rfc3339()}),
    );
    let short = Token {
        id: string(&short["data"], "id"),
        secret: string(&short["data"], "secret"),
    };
    let mut client = [w.client("short-lived", &short, &[])];
    let first = w.resource_id.as_str();
    wait_for_all(&mut client, lifetime, "connected before the expiry", |s| {
        shows_exactly(s, &[first])
    });
    let [mut client] = client;
    let status = client.status();
    assert_eq!(status["token"]["id"], short.id.as_str(), "{status:#}");
    let shown: chrono::DateTime<Utc> = status["token"]["expires_at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("the status shows the token's expiry: {status:#}"));
    assert!(
        (shown - expires_at).num_milliseconds().abs() < 1000,
        "expiry shown {shown}, set {expires_at}"
    );

    let status = client.wait_exit(Duration::from_secs(20));
    let exited_at = Utc::now();
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(TOKEN_REJECTED),
        "the client of an expiring token must exit 3 once it expires:\n{}",
        client.describe()
    );
    assert!(
        exited_at >= expires_at,
        "the client exited at {exited_at}, before the token's expiry {expires_at}"
    );
    let recorded = client.status_file().expect("a status file");
    // The portal ended the session (`token_expired`); the client did not just give up.
    assert_eq!(
        recorded["last_error"], "the portal ended the session: the token expired",
        "the reason is recorded: {recorded:#}"
    );
    eprintln!(
        "expiry: the client exited {} ms after the token's expiry",
        (exited_at - expires_at).num_milliseconds()
    );

    // Starting again with the expired token, or with a revoked one: refused at connect.
    let mut again = w.client("short-lived-again", &short, &[]);
    assert_refused_at_connect(&mut again, "an expired token");
    w.revoke(&w.token_b);
    let mut revoked = w.client("revoked", &w.token_b, &[]);
    assert_refused_at_connect(&mut revoked, "a revoked token");
    for device in [&client, &again, &revoked] {
        let log = device.log();
        assert!(
            !log.contains(&short.secret) && !log.contains(&w.token_b.secret),
            "a token was logged:\n{log}"
        );
    }
}

/// `postern tokens revoke-presented`, with no API token, given a leaked client token on its
/// standard input: the token is revoked and its running client exits 3; a second time it says
/// so; a text that is no token of this portal is refused with the reason.
fn a_token_revoked_by_whoever_presents_it_ends_its_client_with_code_3(backend: Backend) {
    let Some(w) = World::new(backend) else { return };
    let mut client = [w.client("leaky", &w.token_b, &[])];
    let first = w.resource_id.as_str();
    wait_for_all(&mut client, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
    let [mut client] = client;
    let url = w.url();
    let present = |text: &str| {
        common::postern_with_input(
            &["tokens", "revoke-presented"],
            &[("POSTERN_API_URL", &url)],
            Some(text),
        )
    };

    let run = present(&format!("{}\n", w.token_b.secret)).ok();
    assert!(
        run.stderr
            .contains(&format!("client token {} revoked", w.token_b.id)),
        "{}",
        run.stderr
    );
    assert!(
        !(run.stdout.contains(&w.token_b.secret) || run.stderr.contains(&w.token_b.secret)),
        "the secret is echoed"
    );
    let status = client.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(TOKEN_REJECTED),
        "the client of the presented token must exit 3:\n{}",
        client.describe()
    );
    let recorded = client.status_file().expect("a status file");
    assert_eq!(
        recorded["last_error"], "the portal ended the session: the token was revoked",
        "{recorded:#}"
    );

    let run = present(&w.token_b.secret).ok();
    assert!(run.stderr.contains("was already revoked"), "{}", run.stderr);
    present("postern_client_not-a-token").fails_with(&["no token of this portal matches"]);
    let events = w.api.get("/v1/audit-events?action=token.revoke");
    let presented = events["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|event| event["after"]["revoked_because"] == "presented")
        .count();
    assert_eq!(presented, 1, "{events:#}");
}

/// The device exits 3 because the portal refused its token when connecting.
#[track_caller]
fn assert_refused_at_connect(device: &mut Device, what: &str) {
    let status = device.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(TOKEN_REJECTED),
        "a client with {what} must exit 3:\n{}",
        device.describe()
    );
    let recorded = device.status_file().expect("a status file");
    assert!(
        recorded["last_error"]
            .as_str()
            .is_some_and(|error| error.starts_with("the portal refused the token")),
        "a client with {what}: {recorded:#}"
    );
}

/// Taking the service account out of the policy's group withdraws the resource from its running
/// client, which stays connected; putting it back grants the resource again.
fn leaving_the_policy_group_withdraws_the_resource_and_the_client_keeps_running(backend: Backend) {
    let Some(w) = World::new(backend) else { return };
    let mut client = [w.client("member", &w.token_a, &[])];
    let first = w.resource_id.as_str();
    wait_for_all(&mut client, START, "connected", |s| {
        shows_exactly(s, &[first])
    });

    let memberships = format!("/v1/groups/{}/memberships", w.group_id);
    w.api.patch(&memberships, json!({"remove": [w.actor_id]}));
    wait_for_all(&mut client, PROPAGATION, "without the resource", |s| {
        shows_exactly(s, &[])
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(client[0].running(), "{}", client[0].describe());
    assert_status(&client, &w.token_a, &[]);

    w.api.patch(&memberships, json!({"add": [w.actor_id]}));
    wait_for_all(&mut client, PROPAGATION, "with the resource again", |s| {
        shows_exactly(s, &[first])
    });
    assert_status(&client, &w.token_a, &[first]);
}

/// Stopping the portal (SIGTERM) and starting it again on the same port and database: the
/// client (with a long enough --max-partition-time) and the gateway reconnect by themselves,
/// the client shows its resources again and the gateway is online again.
fn clients_and_gateways_reconnect_through_a_portal_restart(backend: Backend) {
    let Some(mut w) = World::new(backend) else {
        return;
    };
    let mut clients = [w.client("survivor", &w.token_a, &["--max-partition-time", "60s"])];
    let mut gateways = [w.gateway("gw-1")];
    let first = w.resource_id.as_str();
    wait_for_all(&mut clients, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
    wait_for_all(&mut gateways, START, "connected", connected);
    assert_gateway_online(&w, "gw-1");
    let client_pid = clients[0].pid();
    let addresses = clients[0].status()["addresses"].clone();
    assert!(addresses.is_object(), "tunnel addresses: {addresses}");

    // Stop the portal.
    let portal = w.portal.take().expect("the portal runs");
    let url = portal.url.clone();
    let port = url.rsplit(':').next().expect("a port").to_string();
    let log = portal.log();
    let code = portal.terminate();
    assert_eq!(code, Some(0), "postern serve exits 0 on SIGTERM:\n{log}");
    wait_for_all(
        &mut clients,
        PROPAGATION,
        "noticing the portal is gone",
        |s| !connected(s),
    );
    wait_for_all(
        &mut gateways,
        PROPAGATION,
        "noticing the portal is gone",
        |s| !connected(s),
    );
    std::thread::sleep(Duration::from_secs(1));
    for device in clients.iter_mut().chain(gateways.iter_mut()) {
        assert!(device.running(), "{}", device.describe());
        // The portal said goodbye: the device knows it is a restart, not a network failure.
        let described = device.describe();
        assert!(
            described.contains("the portal is restarting"),
            "{described}"
        );
    }

    // Start it again on the same port and database.
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["serve", "--listen", &listen];
    args.extend(w.db.args());
    let portal =
        Portal::try_start(&args).unwrap_or_else(|log| panic!("the portal did not restart:\n{log}"));
    assert_eq!(portal.url, url);
    w.portal = Some(portal);

    wait_for_all(&mut clients, START, "reconnected with the resource", |s| {
        shows_exactly(s, &[first])
    });
    wait_for_all(&mut gateways, START, "reconnected", connected);
    assert_eq!(clients[0].pid(), client_pid);
    assert!(clients[0].running(), "{}", clients[0].describe());
    assert_status(&clients, &w.token_a, &[first]);
    // The device keeps its tunnel addresses: the portal stored them before it stopped.
    assert_eq!(clients[0].status()["addresses"], addresses);
    assert_eq!(gateways[0].status()["state"], "connected");
    assert_gateway_online(&w, "gw-1");

    // The restarted portal still pushes changes to the reconnected client.
    let second = w.grant("git", "10.30.0.0/24");
    wait_for_all(&mut clients, PROPAGATION, "showing the new resource", |s| {
        shows_exactly(s, &[first, second.as_str()])
    });
}

/// `postern clients block DEVICE`, as an operator runs it: the blocked client (user-space
/// mode, so it has a WireGuard key) exits 4 at once, and is refused at connect under its device
/// id and, with its key, under another id; its sibling on the same token keeps its session and
/// resource. `postern clients unblock` lets it back.
fn blocking_a_device_ends_it_with_code_4_and_refuses_its_id_and_key_until_unblocked(
    backend: Backend,
) {
    let Some(w) = World::new(backend) else { return };
    let userspace = |id: &str| {
        Device::start(
            "postern-client",
            w.root.path(),
            &w.url(),
            id,
            &w.token_a.secret,
            &["--userspace"],
        )
    };
    let mut devices = [userspace("stolen"), w.client("sibling", &w.token_a, &[])];
    let first = w.resource_id.as_str();
    wait_for_all(&mut devices, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
    let [mut stolen, sibling] = devices;
    let env = [
        ("POSTERN_API_URL", w.api.url.as_str()),
        ("POSTERN_API_TOKEN", w.api.token()),
    ];

    let blocked = postern(&["clients", "block", "stolen"], &env).ok();
    assert!(
        blocked.stdout.contains("blocked stolen"),
        "{}",
        blocked.stdout
    );
    let status = stolen.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(DEVICE_REFUSED),
        "the blocked client exits 4:\n{}",
        stolen.describe()
    );
    let recorded = stolen.status_file().expect("a status file");
    assert_eq!(
        recorded["last_error"],
        "the portal ended the session: this device was blocked by an administrator",
        "{recorded:#}"
    );

    // Started again, under its id or under a new id with the same key: refused, exit 4.
    let mut again = userspace("stolen");
    let renamed_state = w.root.path().join("renamed").join("state");
    std::fs::create_dir_all(&renamed_state).expect("state dir");
    std::fs::copy(
        w.root.path().join("stolen/state/wireguard.key"),
        renamed_state.join("wireguard.key"),
    )
    .expect("the blocked client's key");
    let mut renamed = userspace("renamed");
    for (device, what) in [(&mut again, "its id"), (&mut renamed, "its key")] {
        let status = device.wait_exit(Duration::from_secs(20));
        assert_eq!(
            status.and_then(|status| status.code()),
            Some(DEVICE_REFUSED),
            "a blocked device is refused by {what}:\n{}",
            device.describe()
        );
        let recorded = device.status_file().expect("a status file");
        assert!(
            recorded["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("the portal refused this device")),
            "{recorded:#}"
        );
    }

    let mut sibling = [sibling];
    assert!(sibling[0].running(), "{}", sibling[0].describe());
    assert_status(&sibling, &w.token_a, &[first]);
    let listed = postern(&["clients", "--blocked", "--json"], &env).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["device_id"].as_str())
        .collect();
    assert_eq!(ids, ["stolen"], "{listed:#}");

    postern(&["clients", "block", "no-such-box"], &env)
        .fails_with(&["no client with device id 'no-such-box'"]);
    postern(&["clients", "unblock", "stolen"], &env).ok();
    let mut back = [userspace("stolen")];
    wait_for_all(&mut back, START, "connected once unblocked", |s| {
        shows_exactly(s, &[first])
    });
}

/// A token's guardrails, set and changed with the CLI as an operator does: with
/// `--max-clients 2` the third client exits 5 while the first two keep their sessions;
/// `--allow-source 10.0.0.0/8` ends the connected clients (they come from 127.0.0.1) and
/// refuses the next, exit 4; with `--require-approval` a new client connects, says it waits and
/// lists nothing until `postern clients approve`, then its resource.
fn a_tokens_guardrails_refuse_the_extra_device_and_the_outsider_and_hold_a_new_one_until_approved(
    backend: Backend,
) {
    let Some(w) = World::new(backend) else { return };
    let env = [
        ("POSTERN_API_URL", w.api.url.as_str()),
        ("POSTERN_API_TOKEN", w.api.token()),
    ];
    let created = postern(
        &[
            "tokens",
            "create",
            "--actor",
            &w.actor_id,
            "--name",
            "fleet",
            "--max-clients",
            "2",
            "--json",
        ],
        &env,
    )
    .ok();
    let created: serde_json::Value = serde_json::from_str(&created.stdout).expect("JSON");
    let fleet = Token {
        id: string(&created, "id"),
        secret: string(&created, "secret"),
    };
    let first = w.resource_id.as_str();
    let mut two = [
        w.client("fleet-1", &fleet, &[]),
        w.client("fleet-2", &fleet, &[]),
    ];
    wait_for_all(&mut two, START, "connected", |s| shows_exactly(s, &[first]));
    let mut third = w.client("fleet-3", &fleet, &[]);
    assert_exits(&mut third, TOKEN_LIMIT, &["at its limit", "allows 2"]);
    for device in &mut two {
        assert!(device.running(), "{}", device.describe());
    }
    assert_status(&two, &fleet, &[first]);
    assert_eq!(w.online_sessions(&fleet), 2);

    let update = |args: &[&str]| {
        let mut all = vec!["tokens", "update", "--actor", &w.actor_id, &fleet.id];
        all.extend_from_slice(args);
        postern(&all, &env).ok()
    };
    let updated = update(&["--allow-source", "10.0.0.0/8", "--no-max-clients"]);
    assert!(
        updated.stdout.contains("from 10.0.0.0/8"),
        "{}",
        updated.stdout
    );
    for device in &mut two {
        assert_exits(device, DEVICE_REFUSED, &["only from 10.0.0.0/8"]);
    }
    let mut outsider = w.client("fleet-4", &fleet, &[]);
    assert_exits(
        &mut outsider,
        DEVICE_REFUSED,
        &["only from 10.0.0.0/8", "127.0.0.1"],
    );

    update(&["--any-source", "--require-approval", "true"]);
    let mut kiosk = [w.client("kiosk", &fleet, &[])];
    wait_for_all(&mut kiosk, START, "connected and waiting", |s| {
        shows_exactly(s, &[]) && s["awaiting_approval"] == true
    });
    let waiting = postern(&["clients", "--awaiting-approval"], &env).ok();
    assert!(
        waiting.stdout.contains("kiosk") && waiting.stdout.contains("awaiting approval"),
        "{}",
        waiting.stdout
    );
    let approved = postern(&["clients", "approve", "kiosk"], &env).ok();
    assert!(
        approved.stdout.contains("approved kiosk"),
        "{}",
        approved.stdout
    );
    wait_for_all(
        &mut kiosk,
        PROPAGATION,
        "shown its resource once approved",
        |s| shows_exactly(s, &[first]) && s.get("awaiting_approval").is_none(),
    );
    // The others of the fleet were seen before approval was required: they are not held.
    let mut back = [w.client("fleet-1", &fleet, &[])];
    wait_for_all(&mut back, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
}

/// `postern-client --ephemeral`: stopped with SIGTERM it says goodbye and is gone from
/// `GET /v1/clients` at once; killed with SIGKILL it is still listed, then gone once the
/// account's timeout (3 s here) has passed since its session ended. Each removal is audited
/// once; a client that is not ephemeral stays.
fn ephemeral_clients_go_when_they_stop_and_after_the_timeout_when_killed(backend: Backend) {
    let Some(w) = World::new(backend) else { return };
    let env = [
        ("POSTERN_API_URL", w.api.url.as_str()),
        ("POSTERN_API_TOKEN", w.api.token()),
    ];
    postern(
        &[
            "account",
            "update",
            "--ephemeral-device-timeout-seconds",
            "3",
        ],
        &env,
    )
    .ok();
    let first = w.resource_id.as_str();
    let mut devices = [
        w.client("eph-term", &w.token_a, &["--ephemeral"]),
        w.client("eph-kill", &w.token_a, &["--ephemeral"]),
        w.client("keeper", &w.token_a, &[]),
    ];
    wait_for_all(&mut devices, START, "connected", |s| {
        shows_exactly(s, &[first])
    });
    let listed = |device: &str| {
        let found = w.api.get(&format!("/v1/clients?device_id={device}"));
        found["data"]
            .as_array()
            .and_then(|rows| rows.first())
            .cloned()
    };
    let deadline_gone = |device: &str, limit: Duration| {
        let deadline = Instant::now() + limit;
        while listed(device).is_some() {
            assert!(
                Instant::now() < deadline,
                "{device} still listed after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let shown = postern(&["clients"], &env).ok();
    assert!(
        shown.stdout.contains("online, ephemeral"),
        "{}",
        shown.stdout
    );
    let [mut term, mut kill, mut keeper] = devices;
    assert_eq!(listed("eph-term").expect("listed")["ephemeral"], true);

    term.terminate();
    let status = term.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        term.describe()
    );
    deadline_gone("eph-term", PROPAGATION);

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &kill.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    kill.wait_exit(Duration::from_secs(10));
    assert!(
        listed("eph-kill").is_some(),
        "a vanished ephemeral device stays until its timeout"
    );
    deadline_gone("eph-kill", Duration::from_secs(20));

    assert!(keeper.running(), "{}", keeper.describe());
    assert!(listed("keeper").is_some());
    let audit = w.api.get("/v1/audit-events?action=client.remove&limit=50");
    let removed: Vec<String> = audit["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["before"]["device_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(removed.len(), 2, "each removal audited once: {audit:#}");
    assert!(removed.contains(&"eph-term".to_string()) && removed.contains(&"eph-kill".to_string()));
}

/// Waits for `device` to exit with `code`, its status file's last error saying each of `says`.
#[track_caller]
fn assert_exits(device: &mut Device, code: i32, says: &[&str]) {
    let status = device.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(code),
        "expected exit {code}:\n{}",
        device.describe()
    );
    let recorded = device.status_file().expect("a status file");
    let error = recorded["last_error"].as_str().unwrap_or_default();
    assert!(says.iter().all(|s| error.contains(s)), "{recorded:#}");
}

/// `GET /v1/sites/{id}/gateways` lists `device` as online (polled: the listing follows the
/// session registration).
#[track_caller]
fn assert_gateway_online(w: &World, device: &str) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let gateways = w.api.get(&format!("/v1/sites/{}/gateways", w.site_id));
        let online = gateways["data"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|row| row["device_id"] == device && row["online"] == true)
        });
        if online {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gateway {device} not listed online within {PROPAGATION:?}:\n{gateways:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
