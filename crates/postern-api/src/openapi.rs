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
    account, actors, audit, devices, groups, policies, resources, sites, tokens, AppState,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/openapi.json",
        get(|| async { Json(openapi_document()) }),
    )
}

/// The document as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Postern API", description = "Manage service accounts, tokens, groups, sites, resources, policies and the audit log of a Postern account. Authenticate with `Authorization: Bearer <API token>`."),
    modifiers(&BearerAuth, &PathParameters, &ProblemMediaType),
    security(("bearer" = [])),
    paths(
        actors::list_actors, actors::create_actor, actors::get_actor,
        actors::update_actor, actors::delete_actor,
        tokens::list_actor_tokens, tokens::create_actor_token,
        tokens::revoke_all_actor_tokens, tokens::get_actor_token,
        tokens::revoke_actor_token, tokens::list_gateway_tokens,
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
        devices::list_clients, devices::list_gateways,
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
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
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

/// Problem responses are served as `application/problem+json` (see `error.rs`); the annotations'
/// `body = Problem` documents them as `application/json`.
struct ProblemMediaType;

impl Modify for ProblemMediaType {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
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
