//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/v1/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::{
    account, actors, audit, devices, groups, identity_providers, leaks, policies, resources, sites,
    tokens, webhooks, workload_identity, AppState,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/openapi.json", get(|| async { Json(openapi_json()) }))
}

/// The document as served: the derived one with its links spelled right and the rules of
/// [`crate::schema_rules`].
pub fn openapi_json() -> serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(build_openapi_json).clone()
}

/// utoipa 5.5 writes a link's fields in snake case (`operation_id`); OpenAPI spells them
/// `operationId`, `operationRef`, `requestBody`.
fn build_openapi_json() -> serde_json::Value {
    let mut document = serde_json::to_value(openapi_document()).unwrap_or_default();
    if let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let links = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links")?.as_object_mut())
            .flat_map(|links| links.values_mut())
            .filter_map(|link| link.as_object_mut());
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_string(), value);
                }
            }
        }
    }
    crate::schema_rules::apply(&mut document);
    document
}

/// The document as utoipa derives it, before the fixes of [`openapi_json`].
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Postern API", description = "Manage service accounts, tokens, groups, sites, resources, policies and the audit log of a Postern account. Authenticate with `Authorization: Bearer <API token>`."),
    modifiers(&BearerAuth, &PathParameters, &StandardResponses, &CreationLinks, &ProblemMediaType),
    security(("bearer" = [])),
    paths(
        actors::list_actors, actors::create_actor, actors::get_actor,
        actors::update_actor, actors::delete_actor,
        tokens::list_account_tokens,
        tokens::list_actor_tokens, tokens::create_actor_token,
        tokens::revoke_all_actor_tokens, tokens::get_actor_token,
        tokens::update_actor_token, tokens::revoke_actor_token, tokens::rotate_actor_token,
        tokens::list_gateway_tokens,
        tokens::create_gateway_token, tokens::revoke_gateway_token,
        groups::list_groups, groups::create_group, groups::get_group,
        groups::update_group, groups::delete_group, groups::list_memberships,
        groups::change_memberships,
        sites::list_sites, sites::create_site, sites::get_site,
        sites::update_site, sites::delete_site,
        resources::list_resources, resources::create_resource,
        resources::get_resource, resources::update_resource,
        resources::delete_resource,
        policies::list_policies, policies::create_policy, policies::get_policy,
        policies::update_policy, policies::delete_policy,
        account::get_account, account::update_account,
        audit::list_audit_events,
        devices::list_clients, devices::list_gateways, devices::block_client, devices::unblock_client,
        devices::approve_client,
        leaks::revoke_presented, leaks::github_secret_scanning,
        webhooks::list_webhooks, webhooks::create_webhook, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::send_test_event,
        webhooks::list_deliveries,
        workload_identity::list_workload_identities, workload_identity::create_workload_identity,
        workload_identity::get_workload_identity, workload_identity::delete_workload_identity,
        workload_identity::exchange,
        identity_providers::list_identity_providers, identity_providers::create_identity_provider,
        identity_providers::get_identity_provider, identity_providers::delete_identity_provider,
        identity_providers::create_scim_token, identity_providers::update_identity_provider,
    ),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The operations of a path, each with whether it changes something (PUT, POST, PATCH).
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (bool, &mut utoipa::openapi::path::Operation)> {
    [
        (false, &mut item.get),
        (true, &mut item.put),
        (true, &mut item.post),
        (false, &mut item.delete),
        (true, &mut item.patch),
    ]
    .into_iter()
    .filter_map(|(changes, operation)| operation.as_mut().map(|op| (changes, op)))
}

/// Declares each `{name}` of a path template as a required path parameter, as OpenAPI requires:
/// the handlers take ids as `Path<String>`, which the annotations do not see.
struct PathParameters;

impl Modify for PathParameters {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let segments: Vec<&str> = path.split('/').collect();
            let names: Vec<(&str, String)> = segments
                .iter()
                .enumerate()
                .filter_map(|(index, segment)| {
                    let name = segment.strip_prefix('{')?.strip_suffix('}')?;
                    let what = match name {
                        "token_id" => "token",
                        "workload_identity_id" => "workload identity",
                        _ => match segments[index - 1] {
                            "policies" => "policy",
                            collection => collection.trim_end_matches('s'),
                        },
                    };
                    Some((name, format!("The {what}'s id")))
                })
                .collect();
            if names.is_empty() {
                continue;
            }
            for (_, operation) in operations_mut(item) {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for (index, (name, description)) in names.iter().enumerate() {
                    let declared = parameters
                        .iter()
                        .any(|p| p.name == *name && p.parameter_in == ParameterIn::Path);
                    if !declared {
                        let parameter = ParameterBuilder::new()
                            .name(*name)
                            .parameter_in(ParameterIn::Path)
                            .required(Required::True)
                            .description(Some(description.clone()))
                            .schema(Some(
                                ObjectBuilder::new()
                                    .schema_type(Type::String)
                                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                            ))
                            .build();
                        parameters.insert(index.min(parameters.len()), parameter);
                    }
                }
            }
        }
    }
}

/// The problem answers every operation can give, declared once: 401 (no or a bad token), 429
/// (too many failed authentications from the address), 503 (the database is unavailable);
/// with an id in the path 404; with query parameters 400 (malformed) and 422 (out of range);
/// with a body 400 (not JSON), 413 (over 1 MiB) and 422 (a field is invalid); creating and
/// changing operations 409 (a name or binding is taken).
struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_id = path.contains('{');
            for (changes, operation) in operations_mut(item) {
                let has_query = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == ParameterIn::Query);
                let has_body = operation.request_body.is_some();
                let mut statuses = vec![
                    ("401", "No API token, or one that is not valid"),
                    ("429", "Too many failed authentications from this address: retry after Retry-After seconds"),
                    ("503", "The portal cannot use its database right now: retry after Retry-After seconds"),
                ];
                if has_path_id {
                    statuses.push(("404", "No such object in this account"));
                }
                if has_query || has_body {
                    statuses.push(("400", "The query or body cannot be read"));
                    statuses.push(("422", "A parameter or field is invalid (named in `field`)"));
                }
                if has_body {
                    statuses.push(("413", "The body is over 1 MiB"));
                }
                if changes {
                    statuses.push(("409", "The change conflicts with what exists"));
                }
                for (status, description) in statuses {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(problem(description)));
                }
            }
        }
    }
}

/// Links from each creating operation to the operations that take the new object's id, so
/// clients and API fuzzers can follow them: `POST /v1/groups` → `/v1/groups/{id}`, and for
/// nested collections (`POST /v1/actors/{id}/tokens`) the parent's id comes from the request.
struct CreationLinks;

impl Modify for CreationLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        let paths: Vec<String> = openapi.paths.paths.keys().cloned().collect();
        for collection in &paths {
            if openapi.paths.paths[collection].post.is_none() {
                continue;
            }
            let parent_params: Vec<String> = collection
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}').map(str::to_string))
                .collect();
            let mut links = Vec::new();
            for item_path in &paths {
                let Some(rest) = item_path.strip_prefix(&format!("{collection}/")) else {
                    continue;
                };
                let Some(id_name) = rest
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .filter(|name| !name.contains(['/', '{', '}']))
                else {
                    continue;
                };
                let item = &openapi.paths.paths[item_path];
                for operation in [&item.get, &item.patch, &item.delete] {
                    let Some(operation_id) =
                        operation.as_ref().and_then(|op| op.operation_id.clone())
                    else {
                        continue;
                    };
                    let mut link = LinkBuilder::new()
                        .operation_id(operation_id.clone())
                        .parameter(id_name, "$response.body#/data/id");
                    for parent in &parent_params {
                        link = link.parameter(parent, format!("$request.path.{parent}"));
                    }
                    links.push((pascal(&operation_id), link.build()));
                }
            }
            if links.is_empty() {
                continue;
            }
            let Some(item) = openapi.paths.paths.get_mut(collection) else {
                continue;
            };
            let Some(post) = item.post.as_mut() else {
                continue;
            };
            if let Some(RefOr::T(created)) = post.responses.responses.get_mut("201") {
                for (name, link) in links {
                    created.links.insert(name, RefOr::T(link));
                }
            }
        }
    }
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Problem responses are served as `application/problem+json` (see `error.rs`); the annotations'
/// `body = Problem` documents them as `application/json`.
struct ProblemMediaType;

impl Modify for ProblemMediaType {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (_, operation) in operations_mut(item) {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let is_problem = response.content.get("application/json").is_some_and(|c| {
                        matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/Problem")
                    });
                    if is_problem {
                        if let Some(content) = response.content.shift_remove("application/json") {
                            response
                                .content
                                .insert("application/problem+json".to_string(), content);
                        }
                    }
                }
            }
        }
    }
}
