//! Several portal nodes on one PostgreSQL database: a change on one reaches the others at once.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Backend, Portal};
use postern_store::Store;
use postern_token::TokenKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_node_reaches_the_others_cache() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let node_b = Store::connect(&url).await.expect("second node");
    let listener = node_b.spawn_change_listener().expect("postgres listens");
    let mut events_on_b = node_b.subscribe();
    let (created, secret) = cached_on(&node_a, &node_b).await;

    let actor_id = created["data"]["id"].as_str().unwrap();
    let token_id = created["token"]["id"].as_str().unwrap();
    let (status, _) = node_a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert!(status.is_success());

    // Inside the cache's 10 s lifetime, B must refuse the token: only the notification from
    // node A can have told it. (A bound for a loaded machine, not a timing figure.)
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match node_b
            .verify_token(&secret, TokenKind::Client, Utc::now())
            .await
        {
            Err(err) => {
                assert_eq!(err.reason(), "revoked");
                break;
            }
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(_) => panic!("node B still accepts a token revoked on node A"),
        }
    }
    // And B's subscribers (later: its connected clients) hear of it.
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(postern_domain::ChangeEvent::TokensRevoked { token_ids, .. }) =
                events_on_b.recv().await
            {
                return token_ids;
            }
        }
    })
    .await
    .expect("event reaches node B");
    assert_eq!(event[0].to_string(), token_id);

    listener.abort();
    node_b.close().await;
    node_a.stop().await;
}

/// A service account created through node A whose token node B has verified once, so that its
/// record sits in B's cache (trusted for 10 s): the creation's answer and the token.
async fn cached_on(node_a: &Portal, node_b: &Store) -> (serde_json::Value, String) {
    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let secret = created["token"]["secret"].as_str().unwrap().to_string();
    node_b
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await
        .expect("valid on node B");
    (created, secret)
}

/// A second portal node on the database at `url`: its own store (listening to the feed), hub
/// and HTTP server on a fresh port.
async fn second_node(url: &str) -> (Store, std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let store = Store::connect(url).await.expect("second node");
    let listener_task = store.spawn_change_listener().expect("postgres listens");
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let state = postern_api::AppState::new(store.clone());
    tokio::spawn(async move {
        let _ = postern_api::serve(socket, state, std::future::pending()).await;
    });
    (store, addr, listener_task)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn client_session(addr: std::net::SocketAddr, token: &str, device: &str) -> Socket {
    session(addr, postern_protocol::CLIENT_PATH, token, device, "").await
}

async fn gateway_session(addr: std::net::SocketAddr, token: &str, device: &str) -> Socket {
    let path = postern_protocol::GATEWAY_PATH;
    session(addr, path, token, device, "&endpoint=192.0.2.7:51820").await
}

/// A device session at `path` on the node at `addr`; `extra` is appended to the query.
async fn session(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    device: &str,
    extra: &str,
) -> Socket {
    try_session(addr, path, token, device, extra)
        .await
        .unwrap_or_else(|err| panic!("{device} connects to {addr}: {err}"))
}

/// The same, with the portal's refusal as an error.
async fn try_session(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    device: &str,
    extra: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{addr}{path}?id={device}&name={device}&version=test{extra}");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert(postern_protocol::PROTOCOL_HEADER, "1".parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next protocol message that is not `heartbeat`, within `limit`.
async fn next_of<T>(socket: &mut Socket, limit: Duration, heartbeat: T) -> T
where
    T: serde::de::DeserializeOwned + PartialEq,
{
    use futures_util::StreamExt;
    tokio::time::timeout(limit, async {
        loop {
            match socket.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    let message: T = postern_protocol::decode(text.as_str()).expect("decodes");
                    if message != heartbeat {
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
}

async fn next_message(socket: &mut Socket, limit: Duration) -> postern_protocol::PortalToClient {
    next_of(socket, limit, postern_protocol::PortalToClient::Heartbeat).await
}

async fn next_gateway_message(
    socket: &mut Socket,
    limit: Duration,
) -> postern_protocol::PortalToGateway {
    next_of(socket, limit, postern_protocol::PortalToGateway::Heartbeat).await
}

/// A change of any size reaches the other nodes: removing 1 000 service accounts from a group
/// on node A (one event of about 40 KB, far over PostgreSQL's 8 000-byte notification limit)
/// withdraws the resource from a client whose session is on node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_of_a_thousand_actors_reaches_the_other_node() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let (node_b, addr_b, listener) = second_node(&url).await;

    let group = node_a.post("/v1/groups", json!({"name": "fleet"})).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let site = node_a.post("/v1/sites", json!({"name": "dc"})).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resource = node_a
        .post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site}),
        )
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    node_a
        .post(
            "/v1/policies",
            json!({"group_id": group, "resource_id": resource}),
        )
        .await;
    let mut members = Vec::new();
    let watched = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "watched", "group_ids": [group]}),
        )
        .await;
    members.push(watched["data"]["id"].as_str().unwrap().to_string());
    let secret = watched["token"]["secret"].as_str().unwrap().to_string();
    for n in 0..999 {
        let created = node_a
            .store
            .create_actor(
                node_a.account_id,
                postern_store::NewActor {
                    actor_type: postern_domain::ActorType::ServiceAccount,
                    name: format!("runner-{n}"),
                    email: None,
                    password_hash: None,
                    group_ids: vec![group.parse().unwrap()],
                    token: None,
                },
                &postern_domain::Acting::local_cli(),
            )
            .await
            .expect("actor");
        members.push(created.0.id.to_string());
    }

    let mut client = client_session(addr_b, &secret, "watched-1").await;
    let postern_protocol::PortalToClient::Init(init) =
        next_message(&mut client, Duration::from_secs(5)).await
    else {
        panic!("Init first");
    };
    assert_eq!(init.resources.len(), 1, "the member sees the resource");

    let (status, _) = node_a
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/groups/{group}/memberships"),
            Some(json!({"remove": members})),
        )
        .await;
    assert!(status.is_success(), "{status}");
    match next_message(&mut client, Duration::from_secs(10)).await {
        postern_protocol::PortalToClient::ResourceRemoved { id } => {
            assert_eq!(id.to_string(), resource)
        }
        other => panic!("expected the resource to be withdrawn on node B, got {other:?}"),
    }

    listener.abort();
    node_b.close().await;
    node_a.stop().await;
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection through it is
/// dropped and new ones are refused) and restore.
struct Cuttable {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Cuttable {
        use std::sync::atomic::Ordering;
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (open_, generation_) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = socket.accept().await else {
                    return;
                };
                if !open_.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let born = generation_.load(Ordering::SeqCst);
                let (open, generation) = (open_.clone(), generation_.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let cut = async {
                        while open.load(Ordering::SeqCst)
                            && generation.load(Ordering::SeqCst) == born
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut => {}
                    }
                });
            }
        });
        Cuttable {
            addr,
            open,
            generation,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Changes made while a node's listener is cut off are not lost: node B reaches the database
/// through a proxy the test cuts; a token is revoked on node A meanwhile (its notification
/// reaches no listener of B); once the proxy is back, B catches up from the feed, drops the
/// token from its cache and tells its subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_listener_was_cut_off_catches_up_from_the_feed() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    if !url.contains("127.0.0.1:5432") {
        eprintln!("skipped: the proxy test needs PostgreSQL at 127.0.0.1:5432, not {url}");
        return;
    }
    let proxy = Cuttable::start(target).await;
    let via_proxy = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let node_b = Store::connect(&via_proxy)
        .await
        .expect("node B through the proxy");
    let listener = node_b.spawn_change_listener().expect("postgres listens");
    let mut events_on_b = node_b.subscribe();
    let (created, secret) = cached_on(&node_a, &node_b).await;
    // Let B's listener hear something first (its own ping), so that it is surely up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let actor_id = created["data"]["id"].as_str().unwrap();
    let token_id = created["token"]["id"].as_str().unwrap();
    let (status, _) = node_a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert!(status.is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    let revoked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(postern_domain::ChangeEvent::TokensRevoked { token_ids, .. }) =
                events_on_b.recv().await
            {
                return token_ids;
            }
        }
    })
    .await
    .expect("node B catches up with the revocation it missed");
    assert_eq!(revoked[0].to_string(), token_id);
    let err = node_b
        .verify_token(&secret, TokenKind::Client, Utc::now())
        .await
        .expect_err("node B refuses the token now");
    assert_eq!(err.reason(), "revoked");

    listener.abort();
    node_b.close().await;
    node_a.stop().await;
}

/// Tunnel addresses are unique in an account whichever node hands them out: 100 pairs of
/// device ids whose first-choice addresses collide, each pair's devices connecting to different
/// nodes (both of which read the account before). A device that lost the race is told to
/// reconnect; in the end the 200 devices hold 200 distinct addresses, as do the database's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_nodes_get_distinct_tunnel_addresses() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let (node_b, addr_b, listener) = second_node(&url).await;
    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let secret = created["token"]["secret"].as_str().unwrap().to_string();

    // Pairs of ids offered the same address first.
    let pairs = postern_sessions::colliding_client_ids("runner", 100);

    // Both nodes read the account before the pairs arrive.
    let mut held = vec![
        client_session(node_a.addr(), &secret, "warm-a").await,
        client_session(addr_b, &secret, "warm-b").await,
    ];
    for socket in &mut held {
        assert!(matches!(
            next_message(socket, Duration::from_secs(5)).await,
            postern_protocol::PortalToClient::Init(_)
        ));
    }
    // Every device connects; one that lost the race for its address is told to reconnect
    // (its session was admitted on the reserved address, granted nothing), and does.
    let mut sessions: Vec<(std::net::SocketAddr, String, Socket, std::net::Ipv4Addr)> = Vec::new();
    for (on_a, on_b) in &pairs {
        for (addr, device) in [(node_a.addr(), on_a), (addr_b, on_b)] {
            let mut socket = client_session(addr, &secret, device).await;
            let postern_protocol::PortalToClient::Init(init) =
                next_message(&mut socket, Duration::from_secs(10)).await
            else {
                panic!("Init first");
            };
            sessions.push((addr, device.clone(), socket, init.addresses.ipv4));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut reconnected = 0;
    for (addr, device, socket, address) in &mut sessions {
        use futures_util::StreamExt;
        let told = tokio::time::timeout(Duration::from_millis(50), socket.next()).await;
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) = told else {
            continue;
        };
        let message: postern_protocol::PortalToClient =
            postern_protocol::decode(text.as_str()).expect("decodes");
        let postern_protocol::PortalToClient::Disconnect { reason, message } = message else {
            panic!("{device}: unexpected {message:?}");
        };
        assert_eq!(
            reason,
            postern_protocol::DisconnectReason::ServerShutdown,
            "{message}"
        );
        assert!(message.contains("reconnect"), "{message}");
        let mut again = client_session(*addr, &secret, device).await;
        let postern_protocol::PortalToClient::Init(init) =
            next_message(&mut again, Duration::from_secs(10)).await
        else {
            panic!("Init first");
        };
        *socket = again;
        *address = init.addresses.ipv4;
        reconnected += 1;
    }
    assert!(
        reconnected > 0,
        "no device lost the race: the test did not make two nodes offer one address"
    );
    let addresses: std::collections::HashSet<_> = sessions.iter().map(|s| s.3).collect();
    assert_eq!(addresses.len(), 200);
    // The last reconnected devices' claims may still be on their way to the database.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rows = loop {
        node_a.store.flush_devices().await.unwrap();
        let rows = node_a.store.load_devices(node_a.account_id).await.unwrap();
        if rows.len() >= 202 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let distinct: std::collections::HashSet<_> = rows.iter().map(|d| d.ipv4).collect();
    assert_eq!(
        distinct.len(),
        rows.len(),
        "the database holds one row per address"
    );
    assert_eq!(rows.len(), 202);

    drop(held);
    drop(sessions);
    listener.abort();
    node_b.close().await;
    node_a.stop().await;
}

/// An HTTP call with the portal's API token to another node.
async fn call_node(
    portal: &Portal,
    addr: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> serde_json::Value {
    let response = portal
        .http
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(&portal.token)
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

/// Access across nodes: a client whose session is on node A is authorized through the site's
/// only gateway, whose session is on node B; presence is counted on every node; revoking the
/// token through node C withdraws the grant from the gateway, ends the client's session and
/// deletes the grant from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_node_reaches_a_gateway_on_another_and_a_third_revokes() {
    across_nodes(Cut::RevokeToken).await;
}

/// The same, with the client device blocked through node C instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_node_reaches_a_gateway_on_another_and_a_third_blocks_it() {
    across_nodes(Cut::BlockDevice).await;
}

/// How node C cuts the client off.
#[derive(Clone, Copy)]
enum Cut {
    RevokeToken,
    BlockDevice,
}

async fn across_nodes(cut: Cut) {
    use futures_util::SinkExt;
    use postern_protocol::{ClientToPortal, PortalToClient, PortalToGateway};
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let listener_a = node_a.store.spawn_change_listener().expect("listens");
    let heartbeat_a = node_a.store.spawn_node_heartbeat().expect("heartbeats");
    let (node_b, addr_b, listener_b) = second_node(&url).await;
    let heartbeat_b = node_b.spawn_node_heartbeat().expect("heartbeats");
    let (node_c, addr_c, listener_c) = second_node(&url).await;
    let heartbeat_c = node_c.spawn_node_heartbeat().expect("heartbeats");

    let group = node_a.post("/v1/groups", json!({"name": "fleet"})).await["data"].clone();
    let sa = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner", "group_ids": [group["id"]]}),
        )
        .await;
    let (actor_id, token_id) = (
        sa["data"]["id"].as_str().unwrap().to_string(),
        sa["token"]["id"].as_str().unwrap().to_string(),
    );
    let secret = sa["token"]["secret"].as_str().unwrap().to_string();
    let site = node_a.post("/v1/sites", json!({"name": "dc"})).await["data"].clone();
    let site_id = site["id"].as_str().unwrap().to_string();
    let gateway_token = node_a
        .post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}))
        .await["data"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let resource = node_a
        .post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site_id}),
        )
        .await["data"]
        .clone();
    let resource_id: uuid::Uuid = resource["id"].as_str().unwrap().parse().unwrap();
    node_a
        .post(
            "/v1/policies",
            json!({"group_id": group["id"], "resource_id": resource["id"]}),
        )
        .await;

    let mut client = client_session(node_a.addr(), &secret, "runner-1").await;
    assert!(matches!(
        next_message(&mut client, Duration::from_secs(5)).await,
        PortalToClient::Init(_)
    ));
    let mut gateway = gateway_session(addr_b, &gateway_token, "gw-1").await;
    assert!(matches!(
        next_gateway_message(&mut gateway, Duration::from_secs(5)).await,
        PortalToGateway::Init(_)
    ));

    // Node A hears of the gateway on node B through the feed and grants through it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (gateway_info, authorization_id) = loop {
        let request = postern_protocol::encode(&ClientToPortal::RequestAccess {
            resource_id,
            dns: None,
        });
        client
            .send(tokio_tungstenite::tungstenite::Message::Text(
                request.into(),
            ))
            .await
            .unwrap();
        match next_message(&mut client, Duration::from_secs(5)).await {
            PortalToClient::AccessGranted {
                gateway,
                authorization_id,
                ..
            } => break (gateway, authorization_id),
            PortalToClient::AccessDenied { reason, .. } if Instant::now() < deadline => {
                assert!(reason.contains("no gateway"), "{reason}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("node A does not route access to node B's gateway: {other:?}"),
        }
    };
    assert_eq!(gateway_info.id, "gw-1");
    assert_eq!(gateway_info.endpoint.as_deref(), Some("192.0.2.7:51820"));
    let PortalToGateway::Authorize { authorization } =
        next_gateway_message(&mut gateway, Duration::from_secs(5)).await
    else {
        panic!("the gateway on node B hears of the grant");
    };
    assert_eq!(authorization.id, authorization_id);
    assert_eq!(authorization.client_device_id, "runner-1");
    let stored = node_a
        .store
        .load_authorizations(node_a.account_id, Utc::now())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);

    // Presence on every node: C sees the gateway online and the token's session.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gateways = call_node(
            &node_a,
            addr_c,
            reqwest::Method::GET,
            &format!("/v1/sites/{site_id}/gateways"),
        )
        .await;
        let tokens = call_node(
            &node_a,
            addr_c,
            reqwest::Method::GET,
            &format!("/v1/actors/{actor_id}/tokens"),
        )
        .await;
        if gateways["data"][0]["online"] == true && tokens["data"][0]["online_sessions"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node C does not count the other nodes' sessions: {gateways} {tokens}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Cut off through node C: the gateway on B drops the grant, the client on A is ended.
    let expected = match cut {
        Cut::RevokeToken => {
            call_node(
                &node_a,
                addr_c,
                reqwest::Method::DELETE,
                &format!("/v1/actors/{actor_id}/tokens/{token_id}"),
            )
            .await;
            postern_protocol::DisconnectReason::TokenRevoked
        }
        Cut::BlockDevice => {
            let listed = call_node(
                &node_a,
                addr_c,
                reqwest::Method::GET,
                "/v1/clients?device_id=runner-1",
            )
            .await;
            let client_id = listed["data"][0]["id"].as_str().expect("runner-1 listed");
            call_node(
                &node_a,
                addr_c,
                reqwest::Method::POST,
                &format!("/v1/clients/{client_id}/block"),
            )
            .await;
            postern_protocol::DisconnectReason::DeviceBlocked
        }
    };
    let PortalToGateway::Revoke {
        authorization_ids, ..
    } = next_gateway_message(&mut gateway, Duration::from_secs(5)).await
    else {
        panic!("the gateway hears the withdrawal");
    };
    assert_eq!(authorization_ids, vec![authorization_id]);
    let PortalToClient::Disconnect { reason, .. } =
        next_message(&mut client, Duration::from_secs(5)).await
    else {
        panic!("the client's session ends");
    };
    assert_eq!(reason, expected);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node_a
        .store
        .load_authorizations(node_a.account_id, Utc::now())
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the grant stays in the database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for task in [
        listener_a,
        heartbeat_a,
        listener_b,
        heartbeat_b,
        listener_c,
        heartbeat_c,
    ] {
        task.abort();
    }
    node_b.close().await;
    node_c.close().await;
    node_a.stop().await;
}

/// `max_clients` counts the sessions on every live node: with a limit of one and a device
/// connected to node A, node B refuses a second device once A's presence is written (a second
/// or so), with the token-limit problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_max_clients_holds_across_nodes() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let (node_b, addr_b, _listener) = second_node(&url).await;
    // The nodes' heartbeats: presence counts only from live nodes.
    let _heartbeats = [
        node_a.store.spawn_node_heartbeat().expect("heartbeats"),
        node_b.spawn_node_heartbeat().expect("heartbeats"),
    ];
    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet", "token": {"max_clients": 1}}),
        )
        .await;
    assert_eq!(created["token"]["max_clients"], 1, "{created}");
    let secret = created["token"]["secret"].as_str().unwrap().to_string();
    let mut first = client_session(node_a.addr(), &secret, "box-1").await;
    assert!(matches!(
        next_message(&mut first, Duration::from_secs(5)).await,
        postern_protocol::PortalToClient::Init(_)
    ));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = postern_protocol::CLIENT_PATH;
        match try_session(addr_b, path, &secret, "box-2", "").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
                let problem: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                        .unwrap_or_default();
                assert_eq!(
                    problem["type"],
                    postern_protocol::TOKEN_LIMIT_PROBLEM,
                    "{problem}"
                );
                break;
            }
            Ok(mut accepted) => {
                assert!(
                    Instant::now() < deadline,
                    "node B still accepts a second device on a token of one"
                );
                let _ = accepted.close(None).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("connect: {err}"),
        }
    }
}

/// A token rotated through node A: the client connected to node B is handed the successor
/// (B reads it from the database), and B cuts the rotated token's session at the end of the
/// window it heard of from A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_node_hands_the_successor_to_a_client_on_another() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let (_node_b, addr_b, _listener) = second_node(&url).await;
    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let secret = created["token"]["secret"].as_str().unwrap().to_string();
    let rotate = format!(
        "/v1/actors/{}/tokens/{}/rotate",
        created["data"]["id"].as_str().unwrap(),
        created["token"]["id"].as_str().unwrap()
    );
    let mut on_b = client_session(addr_b, &secret, "box-b").await;
    assert!(matches!(
        next_message(&mut on_b, Duration::from_secs(5)).await,
        postern_protocol::PortalToClient::Init(_)
    ));
    let (status, rotation) = node_a
        .call(
            reqwest::Method::POST,
            &rotate,
            Some(json!({"overlap": "2s"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{rotation}");
    let successor = &rotation["data"]["successor"];
    match next_message(&mut on_b, Duration::from_secs(5)).await {
        postern_protocol::PortalToClient::TokenRotated {
            token_id, secret, ..
        } => {
            assert_eq!(successor["id"], token_id.to_string());
            assert_eq!(successor["secret"], secret.expose());
        }
        other => panic!("expected the successor, got {other:?}"),
    }
    match next_message(&mut on_b, Duration::from_secs(5)).await {
        postern_protocol::PortalToClient::Disconnect { reason, .. } => {
            assert_eq!(reason, postern_protocol::DisconnectReason::TokenExpired)
        }
        other => panic!("expected the end of the window, got {other:?}"),
    }
    let moved = client_session(addr_b, successor["secret"].as_str().unwrap(), "box-b").await;
    drop(moved);
}

/// Two nodes sweep at the same moment: a device unseen for longer than the account's
/// `stale_device_days` is removed once (one audit entry, one node reports it), and both nodes'
/// lists lose it; a device seen lately stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_device_is_removed_once_when_two_nodes_sweep() {
    let Some(node_a) = Portal::start(Backend::Postgres).await else {
        return;
    };
    let url = node_a.postgres_url().await.expect("postgres url");
    let (node_b, _addr_b, _listener) = second_node(&url).await;
    let created = node_a
        .post(
            "/v1/actors",
            json!({"type": "service_account", "name": "fleet"}),
        )
        .await;
    let actor_id: uuid::Uuid = created["data"]["id"].as_str().unwrap().parse().unwrap();
    let now = Utc::now();
    let device = |n: u8, seen_days_ago: i64| postern_domain::Device {
        id: uuid::Uuid::now_v7(),
        account_id: node_a.account_id,
        kind: postern_domain::DeviceKind::Client,
        device_id: format!("box-{n}"),
        actor_id: Some(actor_id),
        site_id: None,
        token_id: None,
        name: format!("box-{n}"),
        version: None,
        public_key: None,
        ipv4: format!("100.64.1.{n}").parse().unwrap(),
        ipv6: format!("fd70:6f73:7465:726e::1:{n}").parse().unwrap(),
        last_seen_ip: None,
        last_seen_at: now - chrono::Duration::days(seen_days_ago),
        created_at: now - chrono::Duration::days(200),
        approved_at: Some(now),
        ephemeral: false,
    };
    node_a
        .store
        .claim_devices(&[device(1, 120), device(2, 3)])
        .await
        .unwrap();
    let hub_a = postern_sessions::Hub::new(node_a.store.clone());
    let hub_b = postern_sessions::Hub::new(node_b.clone());
    let (a, b) = tokio::join!(hub_a.sweep_devices(), hub_b.sweep_devices());
    let (a, b) = (a.expect("sweeps"), b.expect("sweeps"));
    assert_eq!(a + b, 1, "removed once between the two nodes ({a} + {b})");
    let listed = node_a.get("/v1/clients").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["box-2"], "the device seen 3 days ago stays");
    let audit = node_a
        .get("/v1/audit-events?action=client.remove&limit=10")
        .await;
    let entries = audit["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert!(
        entries[0]["before"]["removed_because"]
            .as_str()
            .unwrap()
            .contains("stale_device_days"),
        "{audit}"
    );
}
