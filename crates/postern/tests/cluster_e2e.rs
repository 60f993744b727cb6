//! Three `postern serve` processes on one fresh PostgreSQL database, with real `postern-client`
//! processes (`--no-tunnel`): a membership change of 1 000 actors made through node 1 reaches
//! clients on nodes 2 and 3; 200 clients connecting alternately to two nodes — pairs of them
//! offered the same address first — end with 200 distinct tunnel addresses. (Access and the data plane across nodes, and a node killed:
//! `dataplane_e2e.rs`, the `cluster_` tests.)
//!
//! Skipped (loudly) without PostgreSQL outside CI; under `CI=true` PostgreSQL must be there.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{string, Portal};
use e2e::{connected, shows_exactly, wait_for_all, Api, Backend, Database, Device};
use serde_json::json;

/// Deadline for processes to connect (debug builds on a busy machine), not a timing assertion.
const LIMIT: Duration = Duration::from_secs(120);

struct Cluster {
    nodes: Vec<Portal>,
    api: Api,
    database: Database,
    root: tempfile::TempDir,
}

fn cluster(nodes: usize) -> Option<Cluster> {
    let database = Database::create(Backend::Postgres)?;
    let nodes: Vec<Portal> = (0..nodes)
        .map(|_| Portal::start(&database.args()))
        .collect();
    let api = Api::new(&nodes[0].url, &database.api_token());
    Some(Cluster {
        nodes,
        api,
        database,
        root: tempfile::tempdir().expect("temp dir"),
    })
}

/// A group with a policy to a resource: (group id, resource id).
fn granted_resource(api: &Api) -> (String, String) {
    let group = string(
        &api.post("/v1/groups", json!({"name": "fleet"}))["data"],
        "id",
    );
    let site = string(&api.post("/v1/sites", json!({"name": "dc"}))["data"], "id");
    let resource = string(
        &api.post(
            "/v1/resources",
            json!({"type": "cidr", "name": "db", "address": "10.20.0.0/24", "site_id": site}),
        )["data"],
        "id",
    );
    api.post(
        "/v1/policies",
        json!({"group_id": group, "resource_id": resource}),
    );
    (group, resource)
}

#[test]
fn a_membership_change_of_1000_actors_through_node_1_reaches_nodes_2_and_3() {
    let Some(c) = cluster(3) else { return };
    let (group, resource) = granted_resource(&c.api);
    let watched = c.api.post(
        "/v1/actors",
        json!({"type": "service_account", "name": "watched", "group_ids": [group]}),
    );
    let secret = string(&watched["token"], "secret");
    let mut members = vec![string(&watched["data"], "id")];
    for n in 0..999 {
        let created = c.api.post(
            "/v1/actors",
            json!({"type": "service_account", "name": format!("runner-{n}"), "group_ids": [group]}),
        );
        members.push(string(&created["data"], "id"));
    }
    let mut clients = vec![
        Device::client(c.root.path(), &c.nodes[1].url, "watched-2", &secret, &[]),
        Device::client(c.root.path(), &c.nodes[2].url, "watched-3", &secret, &[]),
    ];
    wait_for_all(&mut clients, LIMIT, "showing the resource", |s| {
        shows_exactly(s, &[&resource])
    });

    c.api.patch(
        &format!("/v1/groups/{group}/memberships"),
        json!({"remove": members}),
    );
    wait_for_all(
        &mut clients,
        LIMIT,
        "without the resource after the change on node 1",
        |s| shows_exactly(s, &[]),
    );
}

#[test]
fn two_hundred_clients_on_two_nodes_get_two_hundred_addresses() {
    let Some(c) = cluster(2) else { return };
    granted_resource(&c.api);
    let fleet = c.api.post(
        "/v1/actors",
        json!({"type": "service_account", "name": "fleet"}),
    );
    let secret = string(&fleet["token"], "secret");
    // 100 pairs of ids that are offered the same address first, one of each pair per node:
    // only the database can keep them apart.
    let mut clients: Vec<Device> = postern_sessions::colliding_client_ids("runner", 100)
        .into_iter()
        .flat_map(|(first, second)| [(0, first), (1, second)])
        .map(|(node, id)| Device::client(c.root.path(), &c.nodes[node].url, &id, &secret, &[]))
        .collect();
    // An address is offered before the node's claim on it commits; a node that loses the race
    // tells its client to reconnect. So wait for every claim to land, then for every client to
    // show the address its row holds.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        wait_for_all(&mut clients, LIMIT, "connected with addresses", |s| {
            connected(s) && s["addresses"]["ipv4"].is_string()
        });
        let shown: Vec<String> = clients
            .iter()
            .filter_map(|d| d.status_file())
            .filter_map(|s| s["addresses"]["ipv4"].as_str().map(str::to_string))
            .collect();
        let distinct: BTreeSet<&String> = shown.iter().collect();
        let quoted: Vec<String> = distinct.iter().map(|a| format!("'{a}'")).collect();
        let rows = c.database.scalar("SELECT COUNT(*) FROM devices");
        let rows_with_shown = c.database.scalar(&format!(
            "SELECT COUNT(*) FROM devices WHERE ipv4 IN ({})",
            quoted.join(", ")
        ));
        if (shown.len(), distinct.len(), rows, rows_with_shown) == (200, 200, 200, 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {LIMIT:?}: {} addresses shown, {} distinct, {rows} device rows, {rows_with_shown} rows holding a shown address",
            shown.len(),
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.database
            .scalar("SELECT COUNT(DISTINCT ipv4) FROM devices"),
        200,
        "two rows share an address"
    );
}
