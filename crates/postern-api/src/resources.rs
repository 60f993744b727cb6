//! `/v1/resources`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::{Resource, ResourceType};
use postern_policy::Filter;
use postern_store::{NewResource, ResourcePatch};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{double_option, Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/resources", get(list_resources).post(create_resource))
        .route(
            "/v1/resources/{id}",
            get(get_resource)
                .patch(update_resource)
                .delete(delete_resource),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateResource {
    #[serde(rename = "type")]
    pub resource_type: ResourceType,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// A CIDR range (`10.0.0.0/24`), an IP address, or a DNS name or pattern:
    /// `git.corp.example`; `*.corp.example` (exactly one label in front: `git.corp.example`, not
    /// `a.git.corp.example` or `corp.example`); `**.corp.example` (any depth, `corp.example`
    /// included); `web-?.corp.example` (`?` is one character, never a dot: `web-1`, not
    /// `web-10`). When several resources match a name, the most specific wins: exact, then `?`,
    /// then `*`, then `**`. Refused (422): every address (`0.0.0.0/0`, `::/0`), and anything
    /// overlapping loopback, link-local (`169.254.0.0/16`, `fe80::/10`), the cloud metadata
    /// service (`fd00:ec2::254`), the devices' tunnel addresses (`100.64.0.0/10`,
    /// `fd70:6f73:7465:726e::/64`) or the clients' DNS resolver and proxy addresses
    /// (`198.18.0.0/15`, `fd70:6f73:7465:726f::/64`). Required, except for an `internet`
    /// resource (the full tunnel: every other address, one per account, used by clients
    /// started with `--internet`), whose address is always `0.0.0.0/0, ::/0`.
    #[serde(default)]
    pub address: Option<String>,
    pub description: Option<String>,
    pub site_id: Uuid,
    /// Allowed traffic; none means all traffic.
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateResource {
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    #[schema(min_length = 1)]
    pub address: Option<String>,
    /// `null` clears the description.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub site_id: Option<Uuid>,
    pub filters: Option<Vec<Filter>>,
}

#[utoipa::path(get, path = "/v1/resources", tag = "resources", params(PageQuery),
    responses((status = 200, body = List<Resource>), (status = 401, body = Problem)))]
pub(crate) async fn list_resources(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Resource>>, ApiError> {
    let page = query.page()?;
    let resources = state.store.list_resources(auth.account_id(), page).await?;
    Ok(List::from_page(resources, page.limit))
}

#[utoipa::path(post, path = "/v1/resources", tag = "resources", request_body = CreateResource,
    responses((status = 201, body = Data<Resource>), (status = 422, body = Problem)))]
pub(crate) async fn create_resource(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<CreateResource>,
) -> Result<(StatusCode, Json<Data<Resource>>), ApiError> {
    let new = NewResource {
        resource_type: body.resource_type,
        name: body.name,
        address: body.address.unwrap_or_default(),
        description: body.description,
        site_id: body.site_id,
        filters: body.filters,
    };
    let resource = state
        .store
        .create_resource(auth.account_id(), new, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(resource)))
}

#[utoipa::path(get, path = "/v1/resources/{id}", tag = "resources",
    responses((status = 200, body = Data<Resource>), (status = 404, body = Problem)))]
pub(crate) async fn get_resource(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Resource>>, ApiError> {
    let id = parse_id("resource", &id)?;
    Ok(Data::new(
        state.store.get_resource(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/resources/{id}", tag = "resources", request_body = UpdateResource,
    responses((status = 200, body = Data<Resource>), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update_resource(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateResource>,
) -> Result<Json<Data<Resource>>, ApiError> {
    let id = parse_id("resource", &id)?;
    let patch = ResourcePatch {
        resource_type: body.resource_type,
        name: body.name,
        address: body.address,
        description: body.description,
        site_id: body.site_id,
        filters: body.filters,
    };
    let resource = state
        .store
        .update_resource(auth.account_id(), id, patch, &auth.acting)
        .await?;
    Ok(Data::new(resource))
}

#[utoipa::path(delete, path = "/v1/resources/{id}", tag = "resources",
    responses((status = 204, description = "Deleted with the policies that grant it"), (status = 404, body = Problem)))]
pub(crate) async fn delete_resource(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("resource", &id)?;
    state
        .store
        .delete_resource(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
