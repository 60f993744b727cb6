//! The OpenAPI document served at `/v1/openapi.json` against the router and real responses:
//! every served route is documented, and real response bodies validate against the schema the
//! document declares for their path, method, status and content type.

mod common;

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use common::{Backend, Portal};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Every (method, path) the router serves under `/v1`, in the document's path template syntax.
/// Adding a route to the router without adding it here (and to the document) fails
/// `every_route_is_documented`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/account"),
    ("patch", "/v1/account"),
    ("get", "/v1/actors"),
    ("post", "/v1/actors"),
    ("get", "/v1/actors/{id}"),
    ("patch", "/v1/actors/{id}"),
    ("delete", "/v1/actors/{id}"),
    ("get", "/v1/actors/{id}/tokens"),
    ("post", "/v1/actors/{id}/tokens"),
    ("delete", "/v1/actors/{id}/tokens"),
    ("get", "/v1/actors/{id}/tokens/{token_id}"),
    ("patch", "/v1/actors/{id}/tokens/{token_id}"),
    ("delete", "/v1/actors/{id}/tokens/{token_id}"),
    ("post", "/v1/actors/{id}/tokens/{token_id}/rotate"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens/revoke-presented"),
    ("post", "/v1/secret-scanning/github"),
    ("get", "/v1/webhooks"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("patch", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("post", "/v1/webhooks/{id}/test"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    ("get", "/v1/actors/{id}/workload-identities"),
    ("post", "/v1/actors/{id}/workload-identities"),
    (
        "get",
        "/v1/actors/{id}/workload-identities/{workload_identity_id}",
    ),
    (
        "delete",
        "/v1/actors/{id}/workload-identities/{workload_identity_id}",
    ),
    ("post", "/v1/workload-identity/exchange"),
    ("get", "/v1/identity-providers"),
    ("post", "/v1/identity-providers"),
    ("get", "/v1/identity-providers/{id}"),
    ("delete", "/v1/identity-providers/{id}"),
    ("patch", "/v1/identity-providers/{id}"),
    ("post", "/v1/identity-providers/{id}/scim-token"),
    ("get", "/v1/groups"),
    ("post", "/v1/groups"),
    ("get", "/v1/groups/{id}"),
    ("patch", "/v1/groups/{id}"),
    ("delete", "/v1/groups/{id}"),
    ("get", "/v1/groups/{id}/memberships"),
    ("patch", "/v1/groups/{id}/memberships"),
    ("get", "/v1/sites"),
    ("post", "/v1/sites"),
    ("get", "/v1/sites/{id}"),
    ("patch", "/v1/sites/{id}"),
    ("delete", "/v1/sites/{id}"),
    ("get", "/v1/sites/{id}/gateway_tokens"),
    ("post", "/v1/sites/{id}/gateway_tokens"),
    ("delete", "/v1/sites/{id}/gateway_tokens/{token_id}"),
    ("get", "/v1/resources"),
    ("post", "/v1/resources"),
    ("get", "/v1/resources/{id}"),
    ("patch", "/v1/resources/{id}"),
    ("delete", "/v1/resources/{id}"),
    ("get", "/v1/policies"),
    ("post", "/v1/policies"),
    ("get", "/v1/policies/{id}"),
    ("patch", "/v1/policies/{id}"),
    ("delete", "/v1/policies/{id}"),
    ("get", "/v1/audit-events"),
    ("get", "/v1/clients"),
    ("post", "/v1/clients/{id}/block"),
    ("post", "/v1/clients/{id}/unblock"),
    ("post", "/v1/clients/{id}/approve"),
    ("get", "/v1/sites/{id}/gateways"),
];

/// Served but deliberately not part of the API document: liveness and readiness, the document itself, and the
/// WebSocket endpoints of clients and gateways (their protocol is `postern-protocol`).
const INFRASTRUCTURE_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/client/websocket"),
    ("get", "/v1/gateway/websocket"),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn start() -> Portal {
    Portal::start(Backend::Sqlite).await.expect("sqlite portal")
}

async fn fetch_document(portal: &Portal) -> Value {
    let response = portal
        .http
        .get(format!("{}/v1/openapi.json", portal.base))
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(media_type(&response).starts_with("application/json"));
    response.json().await.expect("the document is JSON")
}

fn media_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `/v1/actors/{id}` → `/v1/actors/<id>` with the given values in order.
fn fill(template: &str, values: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut values = values.iter();
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("closing brace") + start;
        out.push_str(&rest[..start]);
        out.push_str(values.next().expect("a value for each parameter"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn template_params(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1() {
    let portal = start().await;
    let doc = fetch_document(&portal).await;
    let version = doc["openapi"].as_str().expect("openapi version string");
    assert!(version.starts_with("3.1."), "OpenAPI version {version}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the bearer scheme is declared"
    );
    // The served document is the library's document.
    assert_eq!(doc, postern_api::openapi_json());
    // Every operation declares the problems any request can meet, and creating operations link
    // to the ones that take the new id.
    let mut links = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = &operation["responses"];
            for status in ["401", "429", "503"] {
                assert!(
                    responses[status]["content"]["application/problem+json"].is_object(),
                    "{method} {path} declares {status}"
                );
            }
            if path.contains('{') {
                assert!(responses["404"].is_object(), "{method} {path} declares 404");
            }
            if operation["requestBody"].is_object() {
                for status in ["400", "413", "422"] {
                    assert!(
                        responses[status].is_object(),
                        "{method} {path} declares {status}"
                    );
                }
            }
            for link in responses["201"]["links"].as_object().into_iter().flatten() {
                assert!(link.1["operationId"].is_string(), "{path}: {link:?}");
                links += 1;
            }
        }
    }
    assert!(
        links >= 10,
        "creating operations link to the new object's operations"
    );
    portal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented() {
    let portal = start().await;
    let doc = fetch_document(&portal).await;

    // The list above and the document agree exactly.
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES has duplicates");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in HTTP_METHODS {
            if item.get(*method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unlisted: Vec<_> = documented.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "documented but missing from ROUTES (or not served): {unlisted:?}"
    );

    // Each listed route is really served: a request reaches a handler, not the router's
    // fallback (404 "no such endpoint") or a 405. Ids are unknown, bodies are missing, so
    // nothing changes.
    let unknown = Uuid::now_v7().to_string();
    for (method, template) in ROUTES.iter().chain(INFRASTRUCTURE_ROUTES) {
        let params = template_params(template);
        let path = fill(template, &vec![unknown.as_str(); params.len()]);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = portal
            .http
            .request(method.clone(), format!("{}{path}", portal.base))
            .bearer_auth(&portal.token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is not routed"
        );
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} reaches the router's fallback: {status} {body}"
        );
    }

    // Every path template's parameters are declared as required path parameters, as OpenAPI
    // requires (client generators depend on it).
    for (method, template) in ROUTES {
        let operation = &doc["paths"][*template][*method];
        let declared: Vec<&Value> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                doc["paths"][*template]["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .filter(|p| p["in"] == "path")
            .collect();
        for name in template_params(template) {
            let parameter = declared
                .iter()
                .find(|p| p["name"] == name.as_str())
                .unwrap_or_else(|| {
                    panic!("{method} {template}: path parameter '{name}' is not declared")
                });
            assert_eq!(
                parameter["required"], true,
                "{method} {template}: '{name}' must be required"
            );
        }
        assert_eq!(
            declared.len(),
            template_params(template).len(),
            "{method} {template}: declares path parameters that are not in the path"
        );
        // Every other parameter is an optional query parameter (filters and pagination), or a
        // header of a protocol defined elsewhere (GitHub's signature headers).
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            if parameter["in"] == "header" {
                assert_eq!(*template, "/v1/secret-scanning/github", "{parameter}");
                continue;
            }
            if parameter["in"] != "path" {
                assert_eq!(parameter["in"], "query", "{method} {template}: {parameter}");
                assert_ne!(
                    parameter["required"], true,
                    "{method} {template}: {parameter}"
                );
            }
        }
        // Lists document their pagination.
        let list_schema = operation
            .pointer("/responses/200/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .is_some_and(|r| r.starts_with("#/components/schemas/List_"));
        if list_schema {
            for name in ["limit", "cursor"] {
                assert!(
                    operation["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == name && p["in"] == "query"),
                    "{method} {template}: the query parameter '{name}' is not documented"
                );
            }
        }
    }
    portal.stop().await;
}

/// Validates real responses against the document.
struct Checker {
    doc: Value,
    /// The document with every object schema closed (`unevaluatedProperties: false`), so a
    /// response field the document does not declare is a disagreement too.
    closed: Value,
    checked: Vec<String>,
}

impl Checker {
    fn new(doc: Value) -> Self {
        let closed = close_object_schemas(&doc);
        Self {
            doc,
            closed,
            checked: vec![],
        }
    }

    /// Sends the request (the portal's API token, `params` filled into `template`) and validates
    /// the response; returns the body.
    async fn call(
        &mut self,
        portal: &Portal,
        method: Method,
        template: &str,
        params: &[&str],
        body: Option<Value>,
        expected: StatusCode,
    ) -> Value {
        // `template` may end in a query string, which is not part of the documented path.
        let (template, query) = match template.split_once('?') {
            Some((template, query)) => (template, format!("?{query}")),
            None => (template, String::new()),
        };
        let path = format!("{}{query}", fill(template, params));
        let mut request = portal
            .http
            .request(method.clone(), format!("{}{path}", portal.base))
            .bearer_auth(&portal.token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let media = media_type(&response);
        let text = response.text().await.expect("body");
        assert_eq!(status, expected, "{method} {path}: {text}");
        let json: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        let method_key = method.as_str().to_lowercase();
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                media, "application/problem+json",
                "{method} {path}: errors are problem documents"
            );
        }
        self.validate(&method_key, template, status.as_u16(), &media, &json, &text);
        self.checked.push(format!(
            "{} {template} {}",
            method.as_str(),
            status.as_u16()
        ));
        json
    }

    fn validate(
        &self,
        method: &str,
        template: &str,
        status: u16,
        media: &str,
        json: &Value,
        text: &str,
    ) {
        let response_pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            escape_pointer(template)
        );
        let declared = self.doc.pointer(&response_pointer).unwrap_or_else(|| {
            panic!(
                "{method} {template} answered {status}, which the document does not declare: {}",
                self.doc["paths"][template][method]["responses"]
            )
        });
        let content = declared.get("content").and_then(Value::as_object);
        if text.is_empty() {
            assert!(
                content.is_none_or(|c| c.is_empty()),
                "{method} {template} {status}: empty body, but the document declares content {declared}"
            );
            return;
        }
        let content = content.unwrap_or_else(|| {
            panic!("{method} {template} {status}: a body, but the document declares no content: {text}")
        });
        assert!(
            content.contains_key(media),
            "{method} {template} {status}: served as '{media}', documented as {:?}",
            content.keys().collect::<Vec<_>>()
        );
        let schema_pointer = format!(
            "{response_pointer}/content/{}/schema",
            escape_pointer(media)
        );
        assert!(
            self.doc.pointer(&schema_pointer).is_some(),
            "{method} {template} {status}: no schema for {media}"
        );
        for (label, doc) in [("open", &self.doc), ("closed", &self.closed)] {
            let errors = validation_errors(doc, &schema_pointer, json);
            assert!(
                errors.is_empty(),
                "{method} {template} {status}: the body does not match the documented schema \
                 ({label} objects) {schema_pointer}:\n  {}\nbody: {json:#}",
                errors.join("\n  ")
            );
        }
    }
}

/// The whole document as the root schema, plus a `$ref` to the response schema, so that
/// `#/components/schemas/...` resolves; draft 2020-12, formats checked.
fn validation_errors(doc: &Value, schema_pointer: &str, instance: &Value) -> Vec<String> {
    let mut root = doc.clone();
    let object = root.as_object_mut().unwrap();
    object.insert(
        "$schema".to_string(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    object.insert(
        "$ref".to_string(),
        json!(format!("#{}", uri_fragment(schema_pointer))),
    );
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| {
            panic!("the document does not compile as a schema at {schema_pointer}: {e}")
        });
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at '{}', schema '{}')", e.instance_path, e.schema_path))
        .collect()
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment: `{` and `}` of path templates are percent-encoded.
fn uri_fragment(pointer: &str) -> String {
    pointer.replace('{', "%7B").replace('}', "%7D")
}

/// Adds `unevaluatedProperties: false` to every object schema under `components/schemas` and in
/// the paths' response schemas, except the schemas `allOf` composes (their siblings add
/// properties that a nested closed schema would not see).
fn close_object_schemas(doc: &Value) -> Value {
    let mut composed = BTreeSet::new();
    collect_all_of_refs(doc, &mut composed);
    let mut closed = doc.clone();
    if let Some(schemas) = closed
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            if !composed.contains(&format!("#/components/schemas/{name}")) {
                close(schema);
            }
        }
    }
    closed
}

fn collect_all_of_refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(parts)) = map.get("allOf") {
                for part in parts {
                    if let Some(reference) = part.get("$ref").and_then(Value::as_str) {
                        out.insert(reference.to_string());
                    }
                }
            }
            map.values().for_each(|v| collect_all_of_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_all_of_refs(v, out)),
        _ => {}
    }
}

fn close(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    if (map.contains_key("properties") || map.contains_key("allOf"))
        && !map.contains_key("additionalProperties")
        && !map.contains_key("unevaluatedProperties")
    {
        map.insert("unevaluatedProperties".to_string(), json!(false));
    }
    for (key, child) in map.iter_mut() {
        match (key.as_str(), child) {
            ("properties", Value::Object(props)) => props.values_mut().for_each(close),
            ("items" | "additionalProperties", child) => close(child),
            ("oneOf" | "anyOf", Value::Array(parts)) => parts.iter_mut().for_each(close),
            // allOf members stay open: the composing schema above is closed instead.
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_the_document() {
    let portal = start().await;
    let doc = fetch_document(&portal).await;
    let mut c = Checker::new(doc);
    let p = &portal;
    let none = None;

    // Account.
    c.call(
        p,
        Method::GET,
        "/v1/account",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;

    // Groups.
    let group = c
        .call(
            p,
            Method::POST,
            "/v1/groups",
            &[],
            Some(json!({"name": "ops"})),
            StatusCode::CREATED,
        )
        .await;
    let group_id = group["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::GET,
        "/v1/groups",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/groups/{id}",
        &[&group_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;

    // Actors: a service account with its initial token and a group; a user without a token.
    let expires = (Utc::now() + Duration::days(30)).to_rfc3339();
    let created = c
        .call(
            p,
            Method::POST,
            "/v1/actors",
            &[],
            Some(
                json!({"type": "service_account", "name": "ci", "group_ids": [group_id],
                        "token": {"name": "fleet", "expires_at": expires}}),
            ),
            StatusCode::CREATED,
        )
        .await;
    assert!(created["token"]["secret"].is_string());
    let actor_id = created["data"]["id"].as_str().unwrap().to_string();
    let user = c
        .call(
            p,
            Method::POST,
            "/v1/actors",
            &[],
            Some(json!({"type": "user", "name": "Ada", "email": "ada@example.com"})),
            StatusCode::CREATED,
        )
        .await;
    let user_id = user["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::GET,
        "/v1/actors",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/actors?type=service_account&name=c&limit=10",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/actors/{id}",
        &[&actor_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::PATCH,
        "/v1/actors/{id}",
        &[&user_id],
        Some(json!({"disabled": true})),
        StatusCode::OK,
    )
    .await;

    // Memberships.
    c.call(
        p,
        Method::PATCH,
        "/v1/groups/{id}/memberships",
        &[&group_id],
        Some(json!({"add": [user_id]})),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/groups/{id}/memberships",
        &[&group_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;

    // Tokens: create (with and without a body), list — after a use, so last_used_* are set —
    // get, revoke one, revoke all.
    let token = c
        .call(
            p,
            Method::POST,
            "/v1/actors/{id}/tokens",
            &[&actor_id],
            Some(json!({"name": "second"})),
            StatusCode::CREATED,
        )
        .await;
    let token_id = token["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::POST,
        "/v1/actors/{id}/tokens",
        &[&actor_id],
        none.clone(),
        StatusCode::CREATED,
    )
    .await;
    let api_client = c
        .call(
            p,
            Method::POST,
            "/v1/actors",
            &[],
            Some(json!({"type": "api_client", "name": "automation"})),
            StatusCode::CREATED,
        )
        .await;
    let api_client_id = api_client["data"]["id"].as_str().unwrap().to_string();
    let (status, _) = p
        .call_as(
            api_client["token"]["secret"].as_str().unwrap(),
            Method::GET,
            "/v1/account",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let used = c
        .call(
            p,
            Method::GET,
            "/v1/actors/{id}/tokens",
            &[&api_client_id],
            none.clone(),
            StatusCode::OK,
        )
        .await;
    assert!(used["data"][0]["last_used_at"].is_string(), "{used}");
    c.call(
        p,
        Method::GET,
        "/v1/actors/{id}/tokens?limit=2",
        &[&actor_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/actors/{id}/tokens/{token_id}",
        &[&actor_id, &token_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::POST,
        "/v1/actors/{id}/tokens/{token_id}/rotate",
        &[&actor_id, &token_id],
        Some(json!({"overlap": "1h"})),
        StatusCode::CREATED,
    )
    .await;
    c.call(
        p,
        Method::POST,
        "/v1/actors/{id}/tokens/{token_id}/rotate",
        &[&actor_id, &token_id],
        none.clone(),
        StatusCode::CONFLICT,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/actors/{id}/tokens/{token_id}",
        &[&actor_id, &token_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::DELETE,
        "/v1/actors/{id}/tokens/{token_id}",
        &[&actor_id, &token_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    let revoked = c
        .call(
            p,
            Method::DELETE,
            "/v1/actors/{id}/tokens",
            &[&actor_id],
            none.clone(),
            StatusCode::OK,
        )
        .await;
    // The original token, the one created later, and the rotated one's successor.
    assert_eq!(revoked["data"]["revoked"], 3);

    // Sites and gateway tokens.
    let site = c
        .call(
            p,
            Method::POST,
            "/v1/sites",
            &[],
            Some(json!({"name": "hq"})),
            StatusCode::CREATED,
        )
        .await;
    let site_id = site["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::GET,
        "/v1/sites",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    let gateway = c
        .call(
            p,
            Method::POST,
            "/v1/sites/{id}/gateway_tokens",
            &[&site_id],
            Some(json!({"name": "gw-1"})),
            StatusCode::CREATED,
        )
        .await;
    let gateway_token_id = gateway["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::GET,
        "/v1/sites/{id}/gateway_tokens",
        &[&site_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::DELETE,
        "/v1/sites/{id}/gateway_tokens/{token_id}",
        &[&site_id, &gateway_token_id],
        none.clone(),
        StatusCode::OK,
    )
    .await;

    // Resources, with filters of every shape.
    let resource = c
        .call(
            p,
            Method::POST,
            "/v1/resources",
            &[],
            Some(
                json!({"type": "cidr", "name": "db net", "address": "10.20.0.0/24",
                        "description": "databases", "site_id": site_id,
                        "filters": [{"protocol": "tcp", "ports": "5432, 8000-8100"},
                                    {"protocol": "udp"}, {"protocol": "icmp"}]}),
            ),
            StatusCode::CREATED,
        )
        .await;
    let resource_id = resource["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::POST,
        "/v1/resources",
        &[],
        Some(
            json!({"type": "dns", "name": "corp", "address": "*.corp.example", "site_id": site_id}),
        ),
        StatusCode::CREATED,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/resources",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::PATCH,
        "/v1/resources/{id}",
        &[&resource_id],
        Some(json!({"description": null})),
        StatusCode::OK,
    )
    .await;

    // Policies with both condition kinds.
    let policy = c
        .call(
            p,
            Method::POST,
            "/v1/policies",
            &[],
            Some(json!({"group_id": group_id, "resource_id": resource_id, "description": "office",
                        "conditions": [
                            {"property": "source_ip", "operator": "not_in", "values": ["203.0.113.0/24", "2001:db8::1"]},
                            {"property": "time_window", "values": ["Mon-Fri 09:00-17:00 Europe/Berlin"]}
                        ]})),
            StatusCode::CREATED,
        )
        .await;
    let policy_id = policy["data"]["id"].as_str().unwrap().to_string();
    c.call(
        p,
        Method::GET,
        "/v1/policies",
        &[],
        none.clone(),
        StatusCode::OK,
    )
    .await;
    c.call(
        p,
        Method::PATCH,
        "/v1/policies/{id}",
        &[&policy_id],
        Some(json!({"disabled": true})),
        StatusCode::OK,
    )
    .await;

    // The audit log (with token.create, token.revoke, group.memberships, ... events) and a
    // failed authentication in it.
    let (status, _) = p
        .call_as("postern_api_garbage", Method::GET, "/v1/account", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let events = c
        .call(
            p,
            Method::GET,
            "/v1/audit-events?limit=500",
            &[],
            none.clone(),
            StatusCode::OK,
        )
        .await;
    assert!(events["data"].as_array().unwrap().len() > 10);

    // Problems: 404, 422, 409, and a 204 without a body.
    let unknown = Uuid::now_v7().to_string();
    let problem = c
        .call(
            p,
            Method::GET,
            "/v1/actors/{id}",
            &[&unknown],
            none.clone(),
            StatusCode::NOT_FOUND,
        )
        .await;
    assert_eq!(problem["type"], "urn:postern:problem:not-found");
    let problem = c
        .call(
            p,
            Method::POST,
            "/v1/actors",
            &[],
            Some(json!({"type": "service_account", "name": " "})),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_eq!(problem["field"], "name");
    c.call(
        p,
        Method::POST,
        "/v1/groups",
        &[],
        Some(json!({"name": "ops"})),
        StatusCode::CONFLICT,
    )
    .await;
    c.call(
        p,
        Method::DELETE,
        "/v1/policies/{id}",
        &[&policy_id],
        none.clone(),
        StatusCode::NO_CONTENT,
    )
    .await;
    c.call(
        p,
        Method::GET,
        "/v1/policies/{id}",
        &[&policy_id],
        none.clone(),
        StatusCode::NOT_FOUND,
    )
    .await;

    eprintln!(
        "validated {} responses:\n  {}",
        c.checked.len(),
        c.checked.join("\n  ")
    );
    portal.stop().await;
}

/// A 401 (no token, wrong token) is a problem document as documented for the list endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_a_documented_problem() {
    let portal = start().await;
    let doc = fetch_document(&portal).await;
    let checker = Checker::new(doc);
    for token in [None, Some("postern_api_nope")] {
        let mut request = portal.http.get(format!("{}/v1/actors", portal.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let media = media_type(&response);
        assert_eq!(media, "application/problem+json");
        let text = response.text().await.unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        checker.validate("get", "/v1/actors", 401, &media, &json, &text);
    }
    portal.stop().await;
}

/// The validator itself rejects what it should, so the checks above cannot pass vacuously.
#[test]
fn the_checker_rejects_disagreements() {
    let doc = serde_json::to_value(postern_api::openapi_document()).unwrap();
    let checker = Checker::new(doc);
    let pointer = "/paths/~1v1~1actors~1{id}/get/responses/200/content/application~1json/schema";
    let good = json!({"data": {
        "id": "0190b6a0-0000-7000-8000-000000000000", "account_id": "0190b6a0-0000-7000-8000-000000000001",
        "type": "service_account", "name": "x", "email": null, "disabled_at": null, "last_seen_at": null,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}});
    assert_eq!(
        validation_errors(&checker.doc, pointer, &good),
        Vec::<String>::new()
    );
    assert_eq!(
        validation_errors(&checker.closed, pointer, &good),
        Vec::<String>::new()
    );
    let mut wrong_type = good.clone();
    wrong_type["data"]["type"] = json!("robot");
    assert!(!validation_errors(&checker.doc, pointer, &wrong_type).is_empty());
    let mut missing = good.clone();
    missing["data"].as_object_mut().unwrap().remove("name");
    assert!(!validation_errors(&checker.doc, pointer, &missing).is_empty());
    let mut bad_format = good.clone();
    bad_format["data"]["created_at"] = json!("yesterday");
    assert!(!validation_errors(&checker.doc, pointer, &bad_format).is_empty());
    let mut extra = good.clone();
    extra["data"]["secret"] = json!("postern_client_...");
    assert!(validation_errors(&checker.doc, pointer, &extra).is_empty());
    assert!(
        !validation_errors(&checker.closed, pointer, &extra).is_empty(),
        "an undocumented field is a disagreement"
    );
    // allOf composition (a token with its secret) stays valid when closed, and still rejects
    // fields neither part declares.
    let created =
        "/paths/~1v1~1actors~1{id}~1tokens/post/responses/201/content/application~1json/schema";
    let token = json!({"data": {
        "id": "0190b6a0-0000-7000-8000-000000000000", "account_id": "0190b6a0-0000-7000-8000-000000000001",
        "kind": "client", "actor_id": null, "site_id": null, "name": "t",
        "created_at": "2026-01-01T00:00:00Z", "created_by": null, "expires_at": "2027-01-01T00:00:00Z",
        "last_used_at": null, "last_used_ip": null, "last_used_user_agent": null,
        "revoked_at": null, "revoked_by": null, "secret": "postern_client_x"}});
    assert_eq!(
        validation_errors(&checker.closed, created, &token),
        Vec::<String>::new()
    );
    let mut token_extra = token.clone();
    token_extra["data"]["hash"] = json!("abc");
    assert!(!validation_errors(&checker.closed, created, &token_extra).is_empty());
}

/// The rules that tie one field to another are in the document, and the server agrees with it
/// on each side of every rule: what the request schema allows is accepted, what it refuses is
/// refused. Nested objects sent as arrays (serde's sequence form of a struct) are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_follow_the_documents_cross_field_rules() {
    let portal = start().await;
    let doc = fetch_document(&portal).await;
    let site = portal.post("/v1/sites", json!({"name": "rules"})).await;
    let site_id = site["data"]["id"].as_str().unwrap().to_string();
    let group = portal.post("/v1/groups", json!({"name": "rules"})).await;
    let group_id = group["data"]["id"].as_str().unwrap().to_string();
    let resource = |address: &str, kind: &str, filters: Value| json!({"type": kind, "name": "r", "address": address, "site_id": site_id, "filters": filters});
    let condition = |property: &str, operator: Value, values: Value| {
        let mut condition = json!({"property": property, "values": values});
        if !operator.is_null() {
            condition["operator"] = operator;
        }
        json!({"group_id": group_id, "resource_id": Value::Null, "conditions": [condition]})
    };
    let resource_id = portal
        .post("/v1/resources", resource("10.9.0.0/24", "cidr", json!([])))
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let with_resource = |mut policy: Value| {
        policy["resource_id"] = json!(resource_id);
        policy
    };
    let cases: Vec<(&str, &str, Value, bool)> = vec![
        (
            "/v1/actors",
            "CreateActor",
            json!({"type": "admin", "name": "a", "email": "a@b.example"}),
            true,
        ),
        (
            "/v1/actors",
            "CreateActor",
            json!({"type": "admin", "name": "a"}),
            false,
        ),
        (
            "/v1/actors",
            "CreateActor",
            json!({"type": "service_account", "name": "s", "email": "s@b.example"}),
            false,
        ),
        (
            "/v1/actors",
            "CreateActor",
            json!({"type": "user", "name": "u", "email": "u@b.example", "token": {}}),
            false,
        ),
        (
            "/v1/actors",
            "CreateActor",
            json!({"type": "api_client", "name": "c", "token": ["t", null]}),
            false,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource(
                "10.8.0.0/24",
                "cidr",
                json!([{"protocol": "tcp", "ports": "80,8000-8100"}]),
            ),
            true,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource(
                "10.8.1.0/24",
                "cidr",
                json!([{"protocol": "icmp", "ports": "80"}]),
            ),
            false,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource("10.8.2.0/24", "cidr", json!([["tcp", "80"]])),
            false,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource("10.8.3.7", "ip", json!([])),
            true,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource("10.8.3.0/24", "ip", json!([])),
            false,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource("db.corp.example", "dns", json!([])),
            true,
        ),
        (
            "/v1/resources",
            "CreateResource",
            resource("10.8.4.7", "cidr", json!([])),
            false,
        ),
        (
            "/v1/policies",
            "CreatePolicy",
            with_resource(condition("source_ip", json!("in"), json!(["10.0.0.0/8"]))),
            true,
        ),
        (
            "/v1/policies",
            "CreatePolicy",
            with_resource(condition("source_ip", Value::Null, json!(["10.0.0.0/8"]))),
            false,
        ),
        (
            "/v1/policies",
            "CreatePolicy",
            with_resource(condition(
                "source_ip",
                json!("in"),
                json!(["Mon-Fri 09:00-17:00 UTC"]),
            )),
            false,
        ),
        (
            "/v1/policies",
            "CreatePolicy",
            with_resource(condition(
                "time_window",
                Value::Null,
                json!(["Mon-Fri 09:00-17:00 UTC"]),
            )),
            true,
        ),
        (
            "/v1/policies",
            "CreatePolicy",
            with_resource(condition(
                "time_window",
                json!("in"),
                json!(["Mon-Fri 09:00-17:00 UTC"]),
            )),
            false,
        ),
    ];
    for (path, schema, body, valid) in cases {
        let pointer = format!("/components/schemas/{schema}");
        let errors = validation_errors(&doc, &pointer, &body);
        assert_eq!(
            errors.is_empty(),
            valid,
            "the document on {body}: {errors:?}"
        );
        let (status, response) = portal
            .call(reqwest::Method::POST, path, Some(body.clone()))
            .await;
        if valid {
            assert_eq!(
                status,
                StatusCode::CREATED,
                "POST {path} {body}: {response}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "POST {path} {body}: {response}"
            );
        }
    }
    let (status, response) = portal
        .call(
            reqwest::Method::PATCH,
            "/v1/account",
            Some(json!({"settings": [30]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{response}");
    let (status, response) = portal
        .call(
            reqwest::Method::PATCH,
            "/v1/account",
            Some(json!({"settings": {"max_token_lifetime_days": 30.0}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an integer with a zero fraction: {response}"
    );
    portal.stop().await;
}
