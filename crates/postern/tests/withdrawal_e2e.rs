//! Access that stays withdrawn, end to end with real processes: a `postern serve` portal (on
//! SQLite and on a fresh PostgreSQL database), a real `postern-gateway`, real `postern-client`
//! processes, and clients speaking the control protocol over a real WebSocket where the test
//! must send what a client would (access requests, a flood of them).
//!
//! - A revoked client's grants never come back: revoke, restart the portal, let the gateway
//!   reconnect — its fresh `Init` lists the grants of the other client, not the revoked one's.
//! - A client flooding access requests leaves the gateway with one grant.
//! - A second service account claiming the first one's device id is refused, and so is a
//!   gateway of another site claiming a gateway's id: exit code 2, with the reason.

mod common;
#[macro_use]
#[path = "common/e2e.rs"]
mod e2e;

use std::time::{Duration, Instant};

use common::{string, Portal};
use e2e::{connected, wait_for_all, Api, Backend, Database, Device, PROPAGATION, START};
use futures_util::{SinkExt, StreamExt};
use postern_protocol::{
    decode, encode, ClientToPortal, DisconnectReason, PortalToClient, CLIENT_PATH, PROTOCOL_HEADER,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Exit code of a device whose settings the portal refused (here: an id bound elsewhere).
const BAD_CONFIG: i32 = 2;

on_both_backends!(
    revoked_grants_stay_gone_after_a_portal_restart_and_a_flood_leaves_one_grant,
    device_ids_stay_bound_to_their_service_account_and_site,
);

struct World {
    portal: Option<Portal>,
    api: Api,
    db: Database,
    root: tempfile::TempDir,
    group_id: String,
    site_id: String,
    gateway_secret: String,
    resource_id: String,
}

impl World {
    fn new(backend: Backend) -> Option<World> {
        let db = Database::create(backend)?;
        let api_token = db.api_token();
        let portal = Portal::start(&db.args());
        let api = Api::new(&portal.url, &api_token);
        let group = api.post("/v1/groups", json!({"name": "fleet"}));
        let group_id = string(&group["data"], "id");
        let site = api.post("/v1/sites", json!({"name": "dc"}));
        let site_id = string(&site["data"], "id");
        let gateway = api.post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}));
        let resource = api.post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site_id}),
        );
        let resource_id = string(&resource["data"], "id");
        api.post(
            "/v1/policies",
            json!({"group_id": group_id, "resource_id": resource_id}),
        );
        Some(World {
            portal: Some(portal),
            api,
            db,
            root: tempfile::tempdir().expect("temp dir"),
            group_id,
            site_id,
            gateway_secret: string(&gateway["data"], "secret"),
            resource_id,
        })
    }

    fn url(&self) -> String {
        self.portal.as_ref().expect("the portal runs").url.clone()
    }

    /// A service account in the group: (actor id, token id, token secret).
    fn service_account(&self, name: &str) -> (String, String, String) {
        let created = self.api.post(
            "/v1/actors",
            json!({"type": "service_account", "name": name, "group_ids": [self.group_id]}),
        );
        (
            string(&created["data"], "id"),
            string(&created["token"], "id"),
            string(&created["token"], "secret"),
        )
    }

    /// Stops the portal and starts it again on the same port and database.
    fn restart_portal(&mut self) {
        let portal = self.portal.take().expect("the portal runs");
        self.portal = Some(portal.restart(&self.db.args()));
    }
}

/// The client devices the gateway holds authorizations for, as its `status --json` says.
fn authorized_devices(gateway: &Device) -> Vec<String> {
    let status = gateway.status();
    let mut devices: Vec<String> = status["authorizations"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|a| a["client_device_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    devices.sort();
    devices
}

/// Waits until the gateway's authorizations are exactly those of `devices` (one each).
#[track_caller]
fn wait_for_authorizations(gateway: &mut Device, devices: &[&str]) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let have = authorized_devices(gateway);
        if have == devices {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway holds authorizations for {have:?}, expected {devices:?}:\n{}",
            gateway.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client speaking the control protocol itself, for what a test must send on purpose.
struct ProtocolClient {
    runtime: tokio::runtime::Runtime,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl ProtocolClient {
    fn connect(url: &str, token: &str, device: &str) -> ProtocolClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // A well-formed WireGuard key, distinct per device.
        let key = format!("{:A<43}=", device.replace(['-', '_'], ""));
        let ws = format!(
            "{}{CLIENT_PATH}?id={device}&name={device}&version=test&public_key={}",
            url.replace("http://", "ws://"),
            key.replace('=', "%3D")
        );
        let mut request = ws.into_client_request().expect("request");
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert(PROTOCOL_HEADER, "1".parse().unwrap());
        let socket = runtime
            .block_on(tokio_tungstenite::connect_async(request))
            .unwrap_or_else(|err| panic!("{device} connects: {err}"))
            .0;
        let mut client = ProtocolClient { runtime, socket };
        assert!(
            matches!(client.next(), PortalToClient::Init(_)),
            "Init comes first"
        );
        client
    }

    fn request_access(&mut self, resource_id: &str) {
        let message = encode(&ClientToPortal::RequestAccess {
            resource_id: resource_id.parse().expect("a uuid"),
            dns: None,
        });
        self.runtime
            .block_on(self.socket.send(Message::text(message)))
            .expect("sent");
    }

    /// The next message that is not a heartbeat.
    fn next(&mut self) -> PortalToClient {
        self.runtime.block_on(async {
            tokio::time::timeout(PROPAGATION, async {
                loop {
                    match self.socket.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let message: PortalToClient = decode(text.as_str()).expect("decodes");
                            if message != PortalToClient::Heartbeat {
                                return message;
                            }
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("the session ended: {other:?}"),
                    }
                }
            })
            .await
            .expect("a message in time")
        })
    }
}

/// The first two findings, as a user meets them. Client A floods the portal with 300
/// access requests for one resource: it gets answers, the gateway one grant. Client B (another
/// service account) gets its own. A's token is revoked: the gateway drops A's grant. The portal
/// restarts and the gateway reconnects: its fresh `Init` holds B's grant (tunnels survive a
/// restart) and not A's — before the fix it held A's again, preshared key included.
fn revoked_grants_stay_gone_after_a_portal_restart_and_a_flood_leaves_one_grant(backend: Backend) {
    let Some(mut w) = World::new(backend) else {
        return;
    };
    let (actor_a, token_a, secret_a) = w.service_account("runner-a");
    let (_, _, secret_b) = w.service_account("runner-b");
    let mut gateway = Device::gateway(w.root.path(), &w.url(), "gw-1", &w.gateway_secret);
    wait_for_all(
        std::slice::from_mut(&mut gateway),
        START,
        "connected",
        connected,
    );

    let mut a = ProtocolClient::connect(&w.url(), &secret_a, "client-a");
    for _ in 0..300 {
        a.request_access(&w.resource_id);
    }
    // The first requests are answered with the one grant; then the session is throttled and
    // told so once (not 280 times).
    let mut authorization_ids = Vec::new();
    loop {
        match a.next() {
            PortalToClient::AccessGranted {
                authorization_id, ..
            } => authorization_ids.push(authorization_id),
            PortalToClient::AccessDenied { reason, .. } => {
                assert!(reason.contains("too many access requests"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (1..=20).contains(&authorization_ids.len()),
        "{} grants answered",
        authorization_ids.len()
    );
    authorization_ids.dedup();
    assert_eq!(authorization_ids.len(), 1, "one grant, given again");
    let mut b = ProtocolClient::connect(&w.url(), &secret_b, "client-b");
    b.request_access(&w.resource_id);
    assert!(matches!(b.next(), PortalToClient::AccessGranted { .. }));
    wait_for_authorizations(&mut gateway, &["client-a", "client-b"]);

    w.api
        .delete(&format!("/v1/actors/{actor_a}/tokens/{token_a}"));
    match a.next() {
        PortalToClient::Disconnect { reason, .. } => {
            assert_eq!(reason, DisconnectReason::TokenRevoked)
        }
        other => panic!("expected the disconnect, got {other:?}"),
    }
    wait_for_authorizations(&mut gateway, &["client-b"]);

    let sessions_before = gateway.log().matches("session ready").count();
    w.restart_portal();
    let deadline = Instant::now() + START;
    while gateway.log().matches("session ready").count() <= sessions_before {
        assert!(
            Instant::now() < deadline,
            "the gateway did not reconnect:\n{}",
            gateway.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        authorized_devices(&gateway),
        ["client-b"],
        "after the restart the gateway holds B's grant only:\n{}",
        gateway.describe()
    );
    let last_init = gateway
        .log()
        .lines()
        .rfind(|line| line.contains("session ready"))
        .unwrap_or_default()
        .to_string();
    assert!(
        last_init.contains("session ready: 1 authorization(s)"),
        "{last_init}\n{}",
        gateway.describe()
    );
}

/// A device id is bound to the service account (or site) that first used it: another one
/// claiming it is refused with the reason, and the device exits 2 instead of retrying; the
/// first device keeps its session and its tunnel addresses.
fn device_ids_stay_bound_to_their_service_account_and_site(backend: Backend) {
    let Some(w) = World::new(backend) else {
        return;
    };
    let (_, _, first_secret) = w.service_account("first");
    let (_, _, second_secret) = w.service_account("second");
    let mut owner = [Device::client(
        w.root.path(),
        &w.url(),
        "shared-id",
        &first_secret,
        &[],
    )];
    wait_for_all(&mut owner, START, "connected", connected);
    let addresses = owner[0].status()["addresses"].clone();

    let claimer_root = tempfile::tempdir().expect("temp dir");
    let mut claimer = Device::client(
        claimer_root.path(),
        &w.url(),
        "shared-id",
        &second_secret,
        &[],
    );
    let status = claimer
        .wait_exit(START)
        .unwrap_or_else(|| panic!("the claimer keeps running:\n{}", claimer.describe()));
    assert_eq!(status.code(), Some(BAD_CONFIG), "{}", claimer.describe());
    assert!(
        claimer
            .log()
            .contains("is registered to another service account"),
        "{}",
        claimer.describe()
    );
    assert!(owner[0].running(), "{}", owner[0].describe());
    assert!(connected(&owner[0].status()));
    assert_eq!(owner[0].status()["addresses"], addresses);

    // The same for gateways: a gateway of another site cannot take this site's gateway id.
    let mut gateways = [Device::gateway(
        w.root.path(),
        &w.url(),
        "gw-1",
        &w.gateway_secret,
    )];
    wait_for_all(&mut gateways, START, "connected", connected);
    let other_site = w.api.post("/v1/sites", json!({"name": "elsewhere"}));
    let other_site_id = string(&other_site["data"], "id");
    assert_ne!(other_site_id, w.site_id);
    let other_token = w.api.post(
        &format!("/v1/sites/{other_site_id}/gateway_tokens"),
        json!({}),
    );
    let impostor_root = tempfile::tempdir().expect("temp dir");
    let mut impostor = Device::gateway(
        impostor_root.path(),
        &w.url(),
        "gw-1",
        &string(&other_token["data"], "secret"),
    );
    let status = impostor
        .wait_exit(START)
        .unwrap_or_else(|| panic!("the impostor keeps running:\n{}", impostor.describe()));
    assert_eq!(status.code(), Some(BAD_CONFIG), "{}", impostor.describe());
    assert!(
        impostor
            .log()
            .contains("is registered to a gateway of another site"),
        "{}",
        impostor.describe()
    );
    assert!(gateways[0].running(), "{}", gateways[0].describe());
}
