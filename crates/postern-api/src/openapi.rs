//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/v1/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{account, actors, audit, groups, policies, resources, sites, tokens, AppState};

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
    modifiers(&BearerAuth),
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
