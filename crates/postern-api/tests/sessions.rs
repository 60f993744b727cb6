//! Client and gateway sessions over real WebSockets: the initial state, live changes,
//! authorizations, and revocation reaching every session at once.

mod common;

use std::time::Duration;

use common::Portal;
use futures_util::{SinkExt, StreamExt};
use postern_protocol::{
    decode, encode, ClientToPortal, DisconnectReason, PortalToClient, PortalToGateway, CLIENT_PATH,
    GATEWAY_PATH, PROTOCOL_HEADER,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

on_both_backends!(
    a_client_gets_its_resources_and_live_changes,
    access_requests_reach_a_gateway_and_revocation_ends_everything,
    the_database_does_not_rebind_a_device_to_another_service_account,
    a_blocked_device_is_ended_and_refused_while_its_token_serves_the_others,
    a_tokens_guardrails_limit_place_and_hold_its_sessions_live,
    a_rotated_token_hands_its_successor_over_and_stops_at_the_end_of_its_window,
);

struct World {
    group_id: String,
    actor_id: String,
    token_id: String,
    secret: String,
    site_id: String,
    gateway_secret: String,
    resource_id: String,
}

async fn world(portal: &Portal) -> World {
    let group = portal.post("/v1/groups", json!({"name": "fleet"})).await["data"].clone();
    let sa = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner", "group_ids": [group["id"]]}),
        )
        .await;
    let site = portal.post("/v1/sites", json!({"name": "dc"})).await["data"].clone();
    let site_id = site["id"].as_str().unwrap().to_string();
    let gateway = portal
        .post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}))
        .await;
    let resource = portal
        .post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site_id}),
        )
        .await["data"]
        .clone();
    portal
        .post(
            "/v1/policies",
            json!({"group_id": group["id"], "resource_id": resource["id"]}),
        )
        .await;
    World {
        group_id: group["id"].as_str().unwrap().to_string(),
        actor_id: sa["data"]["id"].as_str().unwrap().to_string(),
        token_id: sa["token"]["id"].as_str().unwrap().to_string(),
        secret: sa["token"]["secret"].as_str().unwrap().to_string(),
        site_id,
        gateway_secret: gateway["data"]["secret"].as_str().unwrap().to_string(),
        resource_id: resource["id"].as_str().unwrap().to_string(),
    }
}

async fn connect(
    portal: &Portal,
    path: &str,
    token: &str,
    device: &str,
) -> Result<Socket, StatusCode> {
    connect_to(&portal.addr(), path, token, device).await
}

/// A second portal process's worth of state (a new session hub) on the same database.
async fn restarted_portal(portal: &Portal) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = postern_api::AppState::new(portal.store.clone());
    tokio::spawn(async move {
        let _ = postern_api::serve(listener, state, std::future::pending()).await;
    });
    addr
}

async fn connect_to(
    addr: &std::net::SocketAddr,
    path: &str,
    token: &str,
    device: &str,
) -> Result<Socket, StatusCode> {
    match tokio_tungstenite::connect_async(upgrade_request(addr, path, token, device)).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(err) => panic!("connect: {err}"),
    }
}

fn upgrade_request(
    addr: &std::net::SocketAddr,
    path: &str,
    token: &str,
    device: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!("ws://{addr}{path}?id={device}&name={device}&version=test");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert(PROTOCOL_HEADER, "1".parse().unwrap());
    request
}

/// The id of the client with this device id, once its row is written (its session may be told
/// `Init` a moment before).
async fn listed_client_id(portal: &Portal, device_id: &str) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let listed = portal
                .get(&format!("/v1/clients?device_id={device_id}"))
                .await;
            if let Some(id) = listed["data"][0]["id"].as_str() {
                return id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{device_id} is not listed"))
}

/// The status and problem body of a client upgrade the portal refuses.
async fn refusal(portal: &Portal, token: &str, device: &str) -> (StatusCode, Value) {
    let request = upgrade_request(&portal.addr(), CLIENT_PATH, token, device);
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("{device} was not refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let problem = serde_json::from_slice(body).unwrap_or(Value::Null);
            (response.status(), problem)
        }
        Err(err) => panic!("connect: {err}"),
    }
}

/// Everything the database holds, as text: the SQLite files' bytes, or every PostgreSQL row.
async fn stored_data(portal: &Portal) -> String {
    if let Some(rows) = portal.postgres_rows().await {
        return rows.into_iter().map(|(_, row)| row).collect();
    }
    let bytes: Vec<u8> = portal
        .sqlite_files()
        .iter()
        .flat_map(|file| std::fs::read(file).unwrap_or_default())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The next message that is not a heartbeat, within 5 s.
async fn next<T: serde::de::DeserializeOwned>(socket: &mut Socket) -> T {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    if text.as_str().contains("\"heartbeat\"") {
                        continue;
                    }
                    return decode::<T>(text.as_str()).expect("decodes");
                }
                Some(Ok(_)) => continue,
                other => panic!("session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a message within 5 s")
}

async fn a_client_gets_its_resources_and_live_changes(portal: &Portal) {
    let w = world(portal).await;
    let mut client = connect(portal, CLIENT_PATH, &w.secret, "laptop-1")
        .await
        .expect("connects");
    let PortalToClient::Init(init) = next(&mut client).await else {
        panic!("Init first")
    };
    assert_eq!(init.actor_id.to_string(), w.actor_id);
    assert_eq!(init.token_id.to_string(), w.token_id);
    assert_eq!(init.resources.len(), 1);
    assert_eq!(init.resources[0].address, "10.20.0.0/24");
    assert_eq!(init.addresses.ipv4.octets()[0], 100);

    // A new resource granted to the group arrives live.
    let extra = portal
        .post("/v1/resources", json!({"type": "dns", "name": "git", "address": "git.corp.example", "site_id": w.site_id}))
        .await["data"]
        .clone();
    portal
        .post(
            "/v1/policies",
            json!({"group_id": w.group_id, "resource_id": extra["id"]}),
        )
        .await;
    let PortalToClient::ResourceUpserted { resource } = next(&mut client).await else {
        panic!("upsert")
    };
    assert_eq!(resource.address, "git.corp.example");

    // The client is listed as online with its token.
    let clients = portal
        .get(&format!("/v1/clients?token_id={}", w.token_id))
        .await;
    let listed = &clients["data"][0];
    assert_eq!(listed["device_id"], "laptop-1");
    assert_eq!(listed["online"], true);
    assert_eq!(listed["actor_id"].as_str().unwrap(), w.actor_id);

    // Leaving the group withdraws both resources.
    portal
        .call(
            Method::PATCH,
            &format!("/v1/groups/{}/memberships", w.group_id),
            Some(json!({"remove": [w.actor_id]})),
        )
        .await;
    let mut removed = Vec::new();
    for _ in 0..2 {
        let PortalToClient::ResourceRemoved { id } = next(&mut client).await else {
            panic!("removed")
        };
        removed.push(id.to_string());
    }
    removed.sort();
    let mut expected = vec![
        w.resource_id.clone(),
        extra["id"].as_str().unwrap().to_string(),
    ];
    expected.sort();
    assert_eq!(removed, expected);

    // A malformed message ends this one session with a protocol error.
    client
        .send(Message::Text("{\"type\":\"nonsense\"}".into()))
        .await
        .unwrap();
    let PortalToClient::Disconnect { reason, .. } = next(&mut client).await else {
        panic!("disconnect")
    };
    assert_eq!(reason, DisconnectReason::ProtocolError);
}

async fn access_requests_reach_a_gateway_and_revocation_ends_everything(portal: &Portal) {
    let w = world(portal).await;
    // Refusals before the upgrade: bad token 401, client token on the gateway path 401,
    // missing protocol header 426.
    assert_eq!(
        connect(portal, CLIENT_PATH, "postern_client_nope", "x")
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        connect(portal, GATEWAY_PATH, &w.secret, "x").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let mut request = format!("ws://{}{CLIENT_PATH}?id=x&name=x&version=0", portal.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", w.secret).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED)
        }
        other => panic!("expected 426, got {other:?}"),
    }

    let resource_id: uuid::Uuid = w.resource_id.parse().unwrap();
    let mut first = connect(portal, CLIENT_PATH, &w.secret, "runner-a")
        .await
        .unwrap();
    let mut second = connect(portal, CLIENT_PATH, &w.secret, "runner-b")
        .await
        .unwrap();
    let _: PortalToClient = next(&mut first).await;
    let _: PortalToClient = next(&mut second).await;
    let tokens = portal
        .get(&format!("/v1/actors/{}/tokens", w.actor_id))
        .await;
    assert_eq!(
        tokens["data"][0]["online_sessions"], 2,
        "one token, two machines: {tokens}"
    );

    // No gateway online yet: denied, with the reason.
    first
        .send(Message::Text(
            encode(&ClientToPortal::RequestAccess {
                resource_id,
                dns: None,
            })
            .into(),
        ))
        .await
        .unwrap();
    let PortalToClient::AccessDenied { reason, .. } = next(&mut first).await else {
        panic!("denied")
    };
    assert!(reason.contains("no gateway"), "{reason}");

    let mut gateway = connect(portal, GATEWAY_PATH, &w.gateway_secret, "gw-1")
        .await
        .unwrap();
    let PortalToGateway::Init(init) = next(&mut gateway).await else {
        panic!("gateway Init")
    };
    assert_eq!(init.site_id.to_string(), w.site_id);
    // The gateway's row is written while its session already runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gateways = portal
            .get(&format!("/v1/sites/{}/gateways", w.site_id))
            .await;
        if gateways["data"][0]["online"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{gateways}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    first
        .send(Message::Text(
            encode(&ClientToPortal::RequestAccess {
                resource_id,
                dns: None,
            })
            .into(),
        ))
        .await
        .unwrap();
    let PortalToClient::AccessGranted {
        gateway: info,
        authorization_id,
        ..
    } = next(&mut first).await
    else {
        panic!("granted")
    };
    assert_eq!(info.id, "gw-1");
    let PortalToGateway::Authorize { authorization } = next(&mut gateway).await else {
        panic!("authorize")
    };
    assert_eq!(authorization.id, authorization_id);
    assert_eq!(authorization.client_device_id, "runner-a");
    assert_eq!(authorization.resource.address, "10.20.0.0/24");
    let psk = authorization
        .preshared_key
        .as_ref()
        .expect("a preshared key per pair");
    assert_ne!(psk.as_bytes(), &[0; 32], "a random key");

    // A restarted portal (a new hub on the same database) still knows the authorization: the
    // gateway's Init carries it, so tunnels survive the restart.
    let restarted = restarted_portal(portal).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_to(&restarted, GATEWAY_PATH, &w.gateway_secret, "gw-1")
            .await
            .unwrap();
        let PortalToGateway::Init(init) = next(&mut again).await else {
            panic!("gateway Init")
        };
        if init.authorizations.iter().any(|a| a.id == authorization_id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the authorization was not kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It was read back from the database, where the preshared key is sealed (SQLite files with
    // their WAL, every PostgreSQL row including the change feed).
    let stored = stored_data(portal).await;
    assert!(
        stored.contains(&authorization_id.to_string()),
        "the authorization is stored"
    );
    let psk_text = serde_json::to_string(psk).unwrap();
    assert!(
        !stored.contains(psk_text.trim_matches('"')),
        "the preshared key is stored in plain text"
    );

    // Revoking the token ends both client sessions and withdraws the authorization; the
    // gateway stays.
    let (status, _) = portal
        .call(
            Method::DELETE,
            &format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for client in [&mut first, &mut second] {
        let PortalToClient::Disconnect { reason, .. } = next(client).await else {
            panic!("disconnect")
        };
        assert_eq!(reason, DisconnectReason::TokenRevoked);
    }
    let PortalToGateway::Revoke {
        authorization_ids, ..
    } = next(&mut gateway).await
    else {
        panic!("revoke")
    };
    assert_eq!(authorization_ids, vec![authorization_id]);
    assert_eq!(
        connect(portal, CLIENT_PATH, &w.secret, "runner-a")
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // Offline once the sessions are gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let clients = portal
        .get(&format!("/v1/clients?actor_id={}", w.actor_id))
        .await;
    let rows: &Vec<Value> = clients["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|c| c["online"] == false), "{clients}");
}

/// The next client message that `pick` takes, skipping others (grant updates), within 5 s.
async fn next_such<T>(socket: &mut Socket, pick: impl Fn(PortalToClient) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(found) = pick(next::<PortalToClient>(socket).await) {
                return found;
            }
        }
    })
    .await
    .expect("the message within 5 s")
}

async fn request_access(socket: &mut Socket, resource_id: uuid::Uuid) -> uuid::Uuid {
    let request = encode(&ClientToPortal::RequestAccess {
        resource_id,
        dns: None,
    });
    socket.send(Message::Text(request.into())).await.unwrap();
    next_such(socket, |message| match message {
        PortalToClient::AccessGranted {
            authorization_id, ..
        } => Some(authorization_id),
        PortalToClient::AccessDenied { reason, .. } => panic!("denied: {reason}"),
        _ => None,
    })
    .await
}

async fn a_rotated_token_hands_its_successor_over_and_stops_at_the_end_of_its_window(
    portal: &Portal,
) {
    let w = world(portal).await;
    let resource_id: uuid::Uuid = w.resource_id.parse().unwrap();
    let tokens = format!("/v1/actors/{}/tokens", w.actor_id);
    portal
        .call(
            Method::PATCH,
            &format!("{tokens}/{}", w.token_id),
            Some(json!({"max_clients": 10, "allowed_source_cidrs": ["127.0.0.0/8"]})),
        )
        .await;
    let mut gateway = connect(portal, GATEWAY_PATH, &w.gateway_secret, "gw-1")
        .await
        .unwrap();
    let _: PortalToGateway = next(&mut gateway).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while portal
        .get(&format!("/v1/sites/{}/gateways", w.site_id))
        .await["data"][0]["online"]
        != true
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway is not online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut moving = connect(portal, CLIENT_PATH, &w.secret, "runner-a")
        .await
        .unwrap();
    let _: PortalToClient = next(&mut moving).await;
    let granted = request_access(&mut moving, resource_id).await;

    // Bad windows and unknown tokens change nothing.
    let rotate = format!("{tokens}/{}/rotate", w.token_id);
    for bad in ["0s", "soon", "3651d"] {
        let (status, problem) = portal
            .call(Method::POST, &rotate, Some(json!({"overlap": bad})))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
        assert!(problem.to_string().contains("overlap"), "{problem}");
    }
    let (status, _) = portal
        .call(
            Method::POST,
            &format!("{tokens}/{}/rotate", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, rotation) = portal
        .call(Method::POST, &rotate, Some(json!({"overlap": "3s"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotation}");
    let successor = &rotation["data"]["successor"];
    let rotated = &rotation["data"]["rotated"];
    let successor_id = successor["id"].as_str().unwrap().to_string();
    let successor_secret = successor["secret"].as_str().unwrap().to_string();
    assert!(successor_secret.starts_with("postern_client_"));
    assert_eq!(rotated["successor_id"], successor["id"]);
    assert_eq!(successor["rotated_from"], rotated["id"]);
    assert!(
        successor["name"]
            .as_str()
            .unwrap()
            .starts_with("default (rotated 20"),
        "{successor}"
    );
    assert_eq!(successor["max_clients"], 10, "the guardrails are kept");
    assert_eq!(successor["allowed_source_cidrs"], json!(["127.0.0.0/8"]));
    let window_end: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotated["expires_at"].clone()).unwrap();
    let left = window_end - chrono::Utc::now();
    assert!(left > chrono::Duration::zero() && left <= chrono::Duration::seconds(3));
    let (status, problem) = portal.call(Method::POST, &rotate, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "rotated twice: {problem}");
    // Its end is planned: not among the tokens expiring soon unless asked for.
    let expiring = portal.get("/v1/tokens?expiring=true").await;
    assert_eq!(expiring["data"], json!([]), "{expiring}");
    let listed = portal
        .get("/v1/tokens?expiring=true&include_rotated=true")
        .await;
    assert_eq!(listed["data"][0]["id"], rotated["id"], "{listed}");
    assert_eq!(listed["data"][0]["expiring_soon"], false, "{listed}");
    assert!(problem.to_string().contains(&successor_id), "{problem}");

    // The connected client is handed the successor; so is one connecting with the old token
    // during the window.
    let pick_successor = |message| match message {
        PortalToClient::TokenRotated {
            token_id,
            secret,
            replaced_token_expires_at,
            ..
        } => Some((
            token_id,
            secret.expose().to_string(),
            replaced_token_expires_at,
        )),
        _ => None,
    };
    let (token_id, secret, ends) = next_such(&mut moving, pick_successor).await;
    assert_eq!(token_id.to_string(), successor_id);
    assert_eq!(secret, successor_secret);
    assert_eq!(ends, window_end);
    let mut staying = connect(portal, CLIENT_PATH, &w.secret, "runner-b")
        .await
        .unwrap();
    let (token_id, _, _) = next_such(&mut staying, pick_successor).await;
    assert_eq!(token_id.to_string(), successor_id);

    // runner-a moves: its grant goes with it.
    drop(moving);
    let mut moved = connect(portal, CLIENT_PATH, &successor_secret, "runner-a")
        .await
        .unwrap();
    let PortalToClient::Init(init) = next(&mut moved).await else {
        panic!("Init")
    };
    assert_eq!(init.token_id.to_string(), successor_id);

    // The window ends: runner-b (still on the old token) is ended, the old token refused;
    // runner-a's grant lives on under the successor (the same authorization, renewed).
    let reason = next_such(&mut staying, |message| match message {
        PortalToClient::Disconnect { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::TokenExpired);
    assert_eq!(
        connect(portal, CLIENT_PATH, &w.secret, "runner-c")
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(request_access(&mut moved, resource_id).await, granted);
    let status = portal.get(&format!("{tokens}/{}", w.token_id)).await;
    let clients = portal.get("/v1/clients?device_id=runner-a").await;
    assert_eq!(status["data"]["clients_moved"], 1, "{status} {clients}");
    let audit = portal.get("/v1/audit-events?action=token.rotate").await;
    assert_eq!(audit["data"][0]["object_id"], rotated["id"], "{audit}");
    assert_eq!(
        audit["data"][0]["after"]["successor_id"], successor["id"],
        "{audit}"
    );
    let moves = portal
        .get("/v1/audit-events?action=client.move_to_successor")
        .await;
    let moves = moves["data"].as_array().unwrap();
    assert_eq!(
        moves.len(),
        1,
        "runner-a moved, runner-b did not: {moves:?}"
    );
    assert_eq!(moves[0]["before"]["token_id"], rotated["id"]);
    assert_eq!(moves[0]["after"]["token_id"], successor["id"]);
    assert_eq!(moves[0]["after"]["device_id"], "runner-a");
    // The successor's secret is not kept once the window is over, nor anywhere in plain text.
    portal
        .store
        .clear_ended_rotations(chrono::Utc::now())
        .await
        .unwrap();
    assert!(!stored_data(portal).await.contains(&successor_secret));
}

/// The database decides device ids and tunnel addresses between portal nodes: a claim on a
/// taken id finds the row, a claim on a taken address is told so, and a sighting that names
/// another service account than the row's is not written over it.
async fn the_database_does_not_rebind_a_device_to_another_service_account(portal: &Portal) {
    let w = world(portal).await;
    let other = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "other"}),
        )
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    let owner: uuid::Uuid = w.actor_id.parse().unwrap();
    let now = chrono::Utc::now();
    let device = postern_domain::Device {
        id: uuid::Uuid::now_v7(),
        account_id: portal.account_id,
        kind: postern_domain::DeviceKind::Client,
        device_id: "box-1".into(),
        actor_id: Some(owner),
        site_id: None,
        token_id: None,
        name: "box-1".into(),
        version: None,
        public_key: Some(postern_domain::WireGuardKey::from_bytes([1; 32])),
        ipv4: "100.64.0.9".parse().unwrap(),
        ipv6: "fd70:6f73:7465:726e::6440:9".parse().unwrap(),
        last_seen_ip: None,
        last_seen_at: now,
        created_at: now,
        approved_at: Some(now),
        ephemeral: false,
    };
    let claimed = portal
        .store
        .claim_devices(std::slice::from_ref(&device))
        .await
        .unwrap();
    assert_eq!(claimed, vec![postern_store::DeviceClaim::Claimed]);
    // Another holder's claim on the id finds the row; its sighting does not rebind it.
    let claimer = postern_domain::Device {
        id: uuid::Uuid::now_v7(),
        actor_id: Some(other),
        ipv4: "100.64.0.10".parse().unwrap(),
        ..device.clone()
    };
    let again = portal
        .store
        .claim_devices(std::slice::from_ref(&claimer))
        .await
        .unwrap();
    assert!(
        matches!(&again[..], [postern_store::DeviceClaim::IdTaken(row)] if row.actor_id == Some(owner)),
        "{again:?}"
    );
    // Another device claiming the same address is told so.
    let squatter = postern_domain::Device {
        id: uuid::Uuid::now_v7(),
        device_id: "box-2".into(),
        ..device.clone()
    };
    let taken = portal
        .store
        .claim_devices(std::slice::from_ref(&squatter))
        .await
        .unwrap();
    assert_eq!(taken, vec![postern_store::DeviceClaim::AddressTaken]);
    portal.store.record_device(postern_domain::Device {
        id: uuid::Uuid::now_v7(),
        actor_id: Some(other),
        public_key: Some(postern_domain::WireGuardKey::from_bytes([2; 32])),
        ..device
    });
    portal.store.flush_devices().await.unwrap();
    let stored = portal.store.load_devices(portal.account_id).await.unwrap();
    let row = stored.iter().find(|d| d.device_id == "box-1").unwrap();
    assert_eq!(
        row.actor_id,
        Some(owner),
        "the row keeps its service account"
    );
    assert_eq!(
        row.public_key,
        Some(postern_domain::WireGuardKey::from_bytes([1; 32]))
    );
}

async fn a_blocked_device_is_ended_and_refused_while_its_token_serves_the_others(portal: &Portal) {
    let w = world(portal).await;
    let mut a = connect(portal, CLIENT_PATH, &w.secret, "box-a")
        .await
        .unwrap();
    assert!(matches!(
        next::<PortalToClient>(&mut a).await,
        PortalToClient::Init(_)
    ));
    let mut b = connect(portal, CLIENT_PATH, &w.secret, "box-b")
        .await
        .unwrap();
    assert!(matches!(
        next::<PortalToClient>(&mut b).await,
        PortalToClient::Init(_)
    ));
    let a_id = listed_client_id(portal, "box-a").await;

    let (status, blocked) = portal
        .call(Method::POST, &format!("/v1/clients/{a_id}/block"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{blocked}");
    assert_eq!(blocked["data"]["blocked"], true);
    match next::<PortalToClient>(&mut a).await {
        PortalToClient::Disconnect { reason, message } => {
            assert_eq!(reason, DisconnectReason::DeviceBlocked);
            assert!(message.contains("blocked"), "{message}");
        }
        other => panic!("not ended: {other:?}"),
    }
    let (status, problem) = refusal(portal, &w.secret, "box-a").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "refused on reconnect");
    assert_eq!(
        problem["type"],
        postern_protocol::DEVICE_REFUSED_PROBLEM,
        "devices recognise the refusal by its type: {problem}"
    );

    // The token still serves the other devices, and new ones.
    b.send(Message::text(encode(&ClientToPortal::RequestAccess {
        resource_id: w.resource_id.parse().unwrap(),
        dns: None,
    })))
    .await
    .unwrap();
    assert!(
        matches!(
            next::<PortalToClient>(&mut b).await,
            PortalToClient::AccessDenied { .. }
        ),
        "box-b's session goes on (no gateway is online: a denial, not a disconnect)"
    );
    let mut c = connect(portal, CLIENT_PATH, &w.secret, "box-c")
        .await
        .unwrap();
    assert!(matches!(
        next::<PortalToClient>(&mut c).await,
        PortalToClient::Init(_)
    ));

    let listed = portal.get("/v1/clients?blocked=true").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["box-a"]);
    let others = portal.get("/v1/clients?blocked=false").await;
    assert_eq!(others["data"].as_array().unwrap().len(), 2);
    let audit = portal.get("/v1/audit-events?limit=500").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "client.block"),
        "audited"
    );

    let (status, unblocked) = portal
        .call(Method::POST, &format!("/v1/clients/{a_id}/unblock"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{unblocked}");
    assert_eq!(unblocked["data"]["blocked"], false);
    let mut again = connect(portal, CLIENT_PATH, &w.secret, "box-a")
        .await
        .expect("connects once unblocked");
    assert!(matches!(
        next::<PortalToClient>(&mut again).await,
        PortalToClient::Init(_)
    ));
    let (status, _) = portal
        .call(
            Method::POST,
            &format!("/v1/clients/{}/block", uuid::Uuid::now_v7()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A block goes with its service account: none is left that nobody can see or lift, and
    // the device id is free for another service account.
    let (status, _) = portal
        .call(Method::POST, &format!("/v1/clients/{a_id}/block"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    drop((again, b, c));
    let (status, body) = portal
        .call(Method::DELETE, &format!("/v1/actors/{}", w.actor_id), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let listed = portal.get("/v1/clients?blocked=true").await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");
    let other = portal
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "successor"}),
        )
        .await;
    let successor = other["token"]["secret"].as_str().unwrap();
    let mut reused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match connect(portal, CLIENT_PATH, successor, "box-a").await {
                Ok(socket) => break socket,
                // The deletion reaches the sessions a moment after the call returns.
                Err(
                    StatusCode::CONFLICT | StatusCode::FORBIDDEN | StatusCode::SERVICE_UNAVAILABLE,
                ) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(other) => panic!("box-a under another service account: {other}"),
            }
        }
    })
    .await
    .expect("the id is free once its service account is deleted");
    assert!(matches!(
        next::<PortalToClient>(&mut reused).await,
        PortalToClient::Init(_)
    ));
}

async fn a_tokens_guardrails_limit_place_and_hold_its_sessions_live(portal: &Portal) {
    let w = world(portal).await;
    let tokens = format!("/v1/actors/{}/tokens", w.actor_id);
    let created = portal
        .post(&tokens, json!({"name": "fleet", "max_clients": 2}))
        .await["data"]
        .clone();
    assert_eq!(created["max_clients"], 2, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let token = format!("{tokens}/{}", created["id"].as_str().unwrap());

    // max_clients: two devices, the third refused with its own problem type.
    let mut a = connect(portal, CLIENT_PATH, &secret, "box-a")
        .await
        .unwrap();
    assert!(matches!(
        next::<PortalToClient>(&mut a).await,
        PortalToClient::Init(_)
    ));
    let mut b = connect(portal, CLIENT_PATH, &secret, "box-b")
        .await
        .unwrap();
    assert!(matches!(
        next::<PortalToClient>(&mut b).await,
        PortalToClient::Init(_)
    ));
    let (status, problem) = refusal(portal, &secret, "box-c").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(
        problem["type"],
        postern_protocol::TOKEN_LIMIT_PROBLEM,
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("allows 2"),
        "{problem}"
    );
    let (status, listed) = portal.call(Method::GET, &token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["data"]["online_sessions"], 2,
        "the first two stay connected"
    );

    // allowed_source_cidrs, changed live: the connected devices (from 127.0.0.1) are ended.
    let (status, updated) = portal
        .call(
            Method::PATCH,
            &token,
            Some(json!({"allowed_source_cidrs": ["10.1.2.3/8", "192.0.2.7"], "max_clients": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["data"]["allowed_source_cidrs"],
        json!(["10.0.0.0/8", "192.0.2.7/32"]),
        "kept in canonical form"
    );
    assert_eq!(updated["data"]["max_clients"], Value::Null);
    for socket in [&mut a, &mut b] {
        match next::<PortalToClient>(socket).await {
            PortalToClient::Disconnect { reason, message } => {
                assert_eq!(reason, DisconnectReason::SourceNotAllowed);
                assert!(message.contains("10.0.0.0/8"), "{message}");
            }
            other => panic!("not ended: {other:?}"),
        }
    }
    let (status, problem) = refusal(portal, &secret, "box-a").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        problem["type"],
        postern_protocol::DEVICE_REFUSED_PROBLEM,
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{problem}"
    );

    // require_approval: a new device waits with nothing until approved; a known one does not.
    let (status, updated) = portal
        .call(
            Method::PATCH,
            &token,
            Some(json!({"allowed_source_cidrs": [], "require_approval": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let mut known = connect(portal, CLIENT_PATH, &secret, "box-a")
        .await
        .unwrap();
    let PortalToClient::Init(init) = next(&mut known).await else {
        panic!("Init first")
    };
    assert!(
        !init.awaiting_approval && init.resources.len() == 1,
        "{init:?}"
    );
    let mut kiosk = connect(portal, CLIENT_PATH, &secret, "kiosk")
        .await
        .unwrap();
    let PortalToClient::Init(init) = next(&mut kiosk).await else {
        panic!("Init first")
    };
    assert!(init.awaiting_approval, "{init:?}");
    assert!(
        init.resources.is_empty(),
        "shown nothing while waiting: {init:?}"
    );
    kiosk
        .send(Message::text(encode(&ClientToPortal::RequestAccess {
            resource_id: w.resource_id.parse().unwrap(),
            dns: None,
        })))
        .await
        .unwrap();
    match next::<PortalToClient>(&mut kiosk).await {
        PortalToClient::AccessDenied { reason, .. } => {
            assert!(reason.contains("approv"), "{reason}")
        }
        other => panic!("not denied: {other:?}"),
    }
    let kiosk_id = listed_client_id(portal, "kiosk").await;
    let waiting = portal.get("/v1/clients?awaiting_approval=true").await;
    let ids: Vec<&str> = waiting["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["kiosk"]);
    let (status, approved) = portal
        .call(
            Method::POST,
            &format!("/v1/clients/{kiosk_id}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert!(approved["data"]["approved_at"].is_string(), "{approved}");
    assert!(matches!(
        next::<PortalToClient>(&mut kiosk).await,
        PortalToClient::Approval {
            awaiting_approval: false
        }
    ));
    match next::<PortalToClient>(&mut kiosk).await {
        PortalToClient::ResourceUpserted { resource } => {
            assert_eq!(resource.id.to_string(), w.resource_id)
        }
        other => panic!("its resources follow the approval: {other:?}"),
    }

    // Guardrails are for service-account tokens, within their bounds, and audited.
    let (status, problem) = portal
        .call(Method::PATCH, &token, Some(json!({"max_clients": 0})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "max_clients");
    let (status, problem) = portal
        .call(
            Method::PATCH,
            &token,
            Some(json!({"allowed_source_cidrs": ["10.0.0.300/8"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, _) = portal
        .call(
            Method::POST,
            &format!("/v1/sites/{}/gateway_tokens", w.site_id),
            Some(json!({"max_clients": 3})),
        )
        .await;
    assert!(
        status.is_client_error(),
        "gateway tokens have no guardrails: {status}"
    );
    let audit = portal.get("/v1/audit-events?limit=500").await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"token.update"), "{actions:?}");
    assert!(actions.contains(&"client.approve"), "{actions:?}");
}
