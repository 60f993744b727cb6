//! One account's API token can neither see nor touch another account's objects: every endpoint
//! that takes an id answers 404 for a foreign id, lists never show foreign objects, and bodies
//! cannot reference foreign objects (422). Afterwards the other account is exactly as it was.
//! On SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeMap;

use chrono::Utc;
use common::Portal;
use postern_domain::Acting;
use postern_token::TokenKind;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(foreign_objects_are_invisible_and_untouchable);

/// Every endpoint that takes an id, called with account A's token on account B's objects.
/// `{name}` placeholders are ids of B's objects (`{actor}`, `{actor_token}`, `{group}`, `{site}`,
/// `{gateway_token}`, `{resource}`, `{policy}`) or of A's own objects (`{own_...}`), also inside
/// bodies. Each body is valid: the control run sends the same table with A's own ids and
/// expects success, so every 404 of the attack run is due to the foreign id alone.
///
/// Ordered so the control run can succeed: dependants are deleted before what they depend on.
const FOREIGN_ID_ENDPOINTS: &[(&str, &str, Option<&str>)] = &[
    // Policies.
    ("GET", "/v1/policies/{policy}", None),
    (
        "PATCH",
        "/v1/policies/{policy}",
        Some(r#"{"disabled": true, "description": "hijacked"}"#),
    ),
    ("DELETE", "/v1/policies/{policy}", None),
    // Resources.
    ("GET", "/v1/resources/{resource}", None),
    (
        "PATCH",
        "/v1/resources/{resource}",
        Some(r#"{"address": "10.99.0.0/16", "description": null}"#),
    ),
    ("DELETE", "/v1/resources/{resource}", None),
    // Sites and gateway tokens.
    ("GET", "/v1/sites/{site}", None),
    (
        "PATCH",
        "/v1/sites/{site}",
        Some(r#"{"name": "hijacked-site"}"#),
    ),
    ("GET", "/v1/sites/{site}/gateway_tokens", None),
    (
        "POST",
        "/v1/sites/{site}/gateway_tokens",
        Some(r#"{"name": "backdoor"}"#),
    ),
    (
        "DELETE",
        "/v1/sites/{site}/gateway_tokens/{gateway_token}",
        None,
    ),
    (
        "DELETE",
        "/v1/sites/{own_site}/gateway_tokens/{gateway_token}",
        None,
    ),
    ("DELETE", "/v1/sites/{site}", None),
    // Groups and memberships.
    ("GET", "/v1/groups/{group}", None),
    (
        "PATCH",
        "/v1/groups/{group}",
        Some(r#"{"name": "hijacked-group"}"#),
    ),
    ("GET", "/v1/groups/{group}/memberships", None),
    (
        "PATCH",
        "/v1/groups/{group}/memberships",
        Some(r#"{"add": ["{own_actor}"]}"#),
    ),
    ("DELETE", "/v1/groups/{group}", None),
    // Actors and their tokens.
    ("GET", "/v1/actors/{actor}", None),
    (
        "PATCH",
        "/v1/actors/{actor}",
        Some(r#"{"name": "hijacked", "disabled": true}"#),
    ),
    ("GET", "/v1/actors/{actor}/tokens", None),
    (
        "POST",
        "/v1/actors/{actor}/tokens",
        Some(r#"{"name": "backdoor"}"#),
    ),
    ("POST", "/v1/actors/{actor}/tokens", None),
    ("GET", "/v1/actors/{actor}/tokens/{actor_token}", None),
    ("GET", "/v1/actors/{own_actor}/tokens/{actor_token}", None),
    ("DELETE", "/v1/actors/{actor}/tokens/{actor_token}", None),
    (
        "DELETE",
        "/v1/actors/{own_actor}/tokens/{actor_token}",
        None,
    ),
    ("DELETE", "/v1/actors/{actor}/tokens", None),
    ("DELETE", "/v1/actors/{actor}", None),
];

/// One account's objects, one of each kind, created through the API with that account's token.
struct Objects {
    account_id: String,
    ids: BTreeMap<&'static str, String>,
    /// The service account's token secret.
    client_secret: String,
}

impl Objects {
    async fn create(portal: &Portal, token: &str, account_id: String, tag: &str) -> Objects {
        let call = |method: Method, path: String, body: Value| async move {
            let (status, response) = portal
                .call_as(token, method.clone(), &path, Some(body))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{method} {path}: {response}");
            response
        };
        let group = call(
            Method::POST,
            "/v1/groups".into(),
            json!({"name": format!("{tag}-group")}),
        )
        .await;
        let group_id = id(&group["data"]);
        let actor = call(
            Method::POST,
            "/v1/actors".into(),
            json!({"type": "service_account", "name": format!("{tag}-robot"), "group_ids": [group_id],
                   "token": {"name": format!("{tag}-token")}}),
        )
        .await;
        let site = call(
            Method::POST,
            "/v1/sites".into(),
            json!({"name": format!("{tag}-site")}),
        )
        .await;
        let site_id = id(&site["data"]);
        let gateway = call(
            Method::POST,
            format!("/v1/sites/{site_id}/gateway_tokens"),
            json!({"name": format!("{tag}-gw")}),
        )
        .await;
        let resource = call(
            Method::POST,
            "/v1/resources".into(),
            json!({"type": "cidr", "name": format!("{tag}-net"), "address": "10.1.0.0/24",
                   "description": format!("{tag} network"), "site_id": site_id,
                   "filters": [{"protocol": "tcp", "ports": "22,443"}]}),
        )
        .await;
        let resource_id = id(&resource["data"]);
        let policy = call(
            Method::POST,
            "/v1/policies".into(),
            json!({"group_id": group_id, "resource_id": resource_id, "description": format!("{tag} policy"),
                   "conditions": [{"property": "source_ip", "operator": "in", "values": ["192.0.2.0/24"]}]}),
        )
        .await;
        let ids = BTreeMap::from([
            ("group", group_id),
            ("actor", id(&actor["data"])),
            ("actor_token", id(&actor["token"])),
            ("site", site_id),
            ("gateway_token", id(&gateway["data"])),
            ("resource", resource_id),
            ("policy", id(&policy["data"])),
        ]);
        Objects {
            account_id,
            ids,
            client_secret: actor["token"]["secret"].as_str().unwrap().to_string(),
        }
    }

    fn get(&self, name: &str) -> &str {
        &self.ids[name]
    }

    /// Everything this account can read about its objects, as its own token sees it.
    async fn snapshot(&self, portal: &Portal, token: &str) -> BTreeMap<String, Value> {
        let paths = [
            format!("/v1/actors/{}", self.get("actor")),
            format!("/v1/actors/{}/tokens", self.get("actor")),
            format!(
                "/v1/actors/{}/tokens/{}",
                self.get("actor"),
                self.get("actor_token")
            ),
            format!("/v1/groups/{}", self.get("group")),
            format!("/v1/groups/{}/memberships", self.get("group")),
            format!("/v1/sites/{}", self.get("site")),
            format!("/v1/sites/{}/gateway_tokens", self.get("site")),
            format!("/v1/resources/{}", self.get("resource")),
            format!("/v1/policies/{}", self.get("policy")),
            "/v1/account".to_string(),
            "/v1/actors?limit=500".to_string(),
            "/v1/groups?limit=500".to_string(),
            "/v1/sites?limit=500".to_string(),
            "/v1/resources?limit=500".to_string(),
            "/v1/policies?limit=500".to_string(),
        ];
        let mut snapshot = BTreeMap::new();
        for path in paths {
            let (status, mut body) = portal.call_as(token, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "GET {path} as the owner: {body}");
            // The API client taking the snapshot is seen with each of its own calls.
            if let Some(actors) = body["data"].as_array_mut() {
                for actor in actors.iter_mut().filter(|a| a["type"] == "api_client") {
                    actor["last_seen_at"] = Value::Null;
                }
            }
            snapshot.insert(path, body);
        }
        snapshot
    }
}

fn id(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {value}"))
        .to_string()
}

/// Replaces `{name}` with `foreign[name]` and `{own_name}` with `own[name]`.
fn fill(template: &str, foreign: &Objects, own: &Objects) -> String {
    let mut out = template.to_string();
    for (name, value) in &own.ids {
        out = out.replace(&format!("{{own_{name}}}"), value);
    }
    for (name, value) in &foreign.ids {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    let placeholder = leftover_placeholder(&out);
    assert!(
        placeholder.is_none(),
        "unfilled placeholder {placeholder:?} in {template}"
    );
    out
}

/// The first `{word}` left in `text` (JSON braces are never followed by a lowercase letter here).
fn leftover_placeholder(text: &str) -> Option<&str> {
    let start = text.match_indices('{').map(|(i, _)| i).find(|&i| {
        text[i + 1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
    })?;
    let end = text[start..].find('}')? + start;
    Some(&text[start..=end])
}

async fn foreign_objects_are_invisible_and_untouchable(portal: &Portal) {
    // Account A: the portal's default account and token. Account B: a second account.
    let account_b = portal
        .store
        .create_account("other", "Other", &Acting::local_cli())
        .await
        .expect("second account");
    let token_b = common::api_token(&portal.store, account_b.id, "other-admin").await;
    let b = Objects::create(portal, &token_b, account_b.id.to_string(), "b").await;
    let a = Objects::create(portal, &portal.token, portal.account_id.to_string(), "a").await;
    let b_before = b.snapshot(portal, &token_b).await;
    let (_, b_everyone) = portal
        .call_as(&token_b, Method::GET, "/v1/groups", None)
        .await;
    let mut b_ids: Vec<String> = b.ids.values().cloned().collect();
    b_ids.push(b.account_id.clone());
    b_ids.extend(b_everyone["data"].as_array().unwrap().iter().map(id));

    // 1. Every endpoint that takes an id: 404 for B's ids, with A's token.
    for (method, template, body) in FOREIGN_ID_ENDPOINTS {
        let path = fill(template, &b, &a);
        let body = body.map(|b_| serde_json::from_str::<Value>(&fill(b_, &b, &a)).unwrap());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, problem) = portal.call(method.clone(), &path, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {template} with account B's ids and body {body:?}: {problem}"
        );
        assert_eq!(
            problem["type"], "urn:postern:problem:not-found",
            "{method} {template}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains("no such endpoint"),
            "{method} {template} is not routed: {problem}"
        );
        for foreign in &b_ids {
            assert!(
                !problem.to_string().contains(foreign.as_str()),
                "{method} {template}: the problem echoes a foreign id: {problem}"
            );
        }
    }

    // 2. A's lists show none of B's objects.
    let mut list_paths = vec![
        "/v1/actors?limit=500".to_string(),
        "/v1/groups?limit=500".to_string(),
        "/v1/sites?limit=500".to_string(),
        "/v1/resources?limit=500".to_string(),
        "/v1/policies?limit=500".to_string(),
        "/v1/audit-events?limit=500".to_string(),
        format!("/v1/actors/{}/tokens", a.get("actor")),
        format!("/v1/groups/{}/memberships", a.get("group")),
        format!("/v1/sites/{}/gateway_tokens", a.get("site")),
    ];
    list_paths.push(format!(
        "/v1/audit-events?limit=500&actor_id={}",
        b.get("actor")
    ));
    for path in &list_paths {
        let listed = portal.get(path).await;
        let items = listed["data"].as_array().expect("a list");
        assert!(
            !items.is_empty() || path.contains("actor_id="),
            "GET {path} lists A's own objects"
        );
        let text = listed.to_string();
        for foreign in &b_ids {
            assert!(
                !text.contains(foreign.as_str()),
                "GET {path} shows B's {foreign}: {listed}"
            );
        }
        for item in items {
            if let Some(account) = item.get("account_id").and_then(Value::as_str) {
                assert_eq!(account, a.account_id, "GET {path}: {item}");
            }
        }
    }

    // 3. Bodies cannot reference B's objects: 422 naming the field, and nothing is created.
    let references: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            "/v1/actors".into(),
            json!({"type": "service_account", "name": "smuggler", "group_ids": [b.get("group")]}),
            "group_ids",
        ),
        (
            Method::POST,
            "/v1/resources".into(),
            json!({"type": "cidr", "name": "smuggled", "address": "10.9.0.0/24", "site_id": b.get("site")}),
            "site_id",
        ),
        (
            Method::POST,
            "/v1/policies".into(),
            json!({"group_id": b.get("group"), "resource_id": a.get("resource")}),
            "group_id",
        ),
        (
            Method::POST,
            "/v1/policies".into(),
            json!({"group_id": a.get("group"), "resource_id": b.get("resource")}),
            "resource_id",
        ),
        (
            Method::POST,
            "/v1/policies".into(),
            json!({"group_id": b.get("group"), "resource_id": b.get("resource")}),
            "group_id",
        ),
        (
            Method::PATCH,
            format!("/v1/groups/{}/memberships", a.get("group")),
            json!({"add": [b.get("actor")]}),
            "add",
        ),
        (
            Method::PATCH,
            format!("/v1/groups/{}/memberships", a.get("group")),
            json!({"remove": [b.get("actor")]}),
            "remove",
        ),
        (
            Method::PATCH,
            format!("/v1/resources/{}", a.get("resource")),
            json!({"site_id": b.get("site")}),
            "site_id",
        ),
        (
            Method::PATCH,
            format!("/v1/policies/{}", a.get("policy")),
            json!({"group_id": b.get("group")}),
            "group_id",
        ),
        (
            Method::PATCH,
            format!("/v1/policies/{}", a.get("policy")),
            json!({"resource_id": b.get("resource")}),
            "resource_id",
        ),
    ];
    let a_before = a.snapshot(portal, &portal.token).await;
    for (method, path, body, field) in references {
        let (status, problem) = portal.call(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path} referencing B's object {body}: {problem}"
        );
        assert_eq!(problem["field"], field, "{method} {path}: {problem}");
    }
    assert_eq!(
        a.snapshot(portal, &portal.token).await,
        a_before,
        "a rejected body changed account A"
    );

    // 4. Control: the same table with A's own ids succeeds, so the bodies and paths are valid
    //    and the 404s above came from the foreign ids alone.
    for (method, template, body) in FOREIGN_ID_ENDPOINTS {
        let path = fill(template, &a, &a);
        let body = body.map(|b_| serde_json::from_str::<Value>(&fill(b_, &a, &a)).unwrap());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, response) = portal.call(method.clone(), &path, body.clone()).await;
        assert!(
            status.is_success(),
            "control: {method} {template} on A's own objects with {body:?}: {status} {response}"
        );
    }

    // 5. B is exactly as it was, and its service-account token still works.
    let b_after = b.snapshot(portal, &token_b).await;
    for (path, before) in &b_before {
        assert_eq!(&b_after[path], before, "B's GET {path} changed");
    }
    let principal = portal
        .store
        .verify_token(&b.client_secret, TokenKind::Client, Utc::now())
        .await
        .expect("B's service-account token still verifies");
    assert_eq!(principal.account_id.to_string(), b.account_id);
    assert_eq!(
        principal.actor_id.map(|id| id.to_string()).as_deref(),
        Some(b.get("actor"))
    );
    let (status, _) = portal
        .call_as(&token_b, Method::GET, "/v1/account", None)
        .await;
    assert_eq!(status, StatusCode::OK, "B's API token still works");
    // B's audit log records nothing done by A's token.
    let (_, b_events) = portal
        .call_as(&token_b, Method::GET, "/v1/audit-events?limit=500", None)
        .await;
    let a_api_token_id = portal
        .store
        .verify_token(&portal.token, TokenKind::Api, Utc::now())
        .await
        .unwrap()
        .token_id
        .to_string();
    for event in b_events["data"].as_array().unwrap() {
        assert_ne!(
            event["token_id"],
            a_api_token_id.as_str(),
            "A acted in B: {event}"
        );
    }
}
