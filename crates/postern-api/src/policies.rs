//! `/v1/policies`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::Policy;
use postern_policy::Condition;
use postern_store::{NewPolicy, PolicyPatch};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{double_option, Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/policies", get(list_policies).post(create_policy))
        .route(
            "/v1/policies/{id}",
            get(get_policy).patch(update_policy).delete(delete_policy),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    pub group_id: Uuid,
    pub resource_id: Uuid,
    pub description: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// All must hold for access: source IP in / not in ranges, time windows.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    pub group_id: Option<Uuid>,
    pub resource_id: Option<Uuid>,
    /// `null` clears the description.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub disabled: Option<bool>,
    pub conditions: Option<Vec<Condition>>,
}

#[utoipa::path(get, path = "/v1/policies", tag = "policies", params(PageQuery),
    responses((status = 200, body = List<Policy>), (status = 401, body = Problem)))]
pub(crate) async fn list_policies(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Policy>>, ApiError> {
    let page = query.page()?;
    let policies = state.store.list_policies(auth.account_id(), page).await?;
    Ok(List::from_page(policies, page.limit))
}

#[utoipa::path(post, path = "/v1/policies", tag = "policies", request_body = CreatePolicy,
    responses((status = 201, body = Data<Policy>), (status = 422, body = Problem)))]
pub(crate) async fn create_policy(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<CreatePolicy>,
) -> Result<(StatusCode, Json<Data<Policy>>), ApiError> {
    let new = NewPolicy {
        group_id: body.group_id,
        resource_id: body.resource_id,
        description: body.description,
        conditions: body.conditions,
        disabled: body.disabled,
    };
    let policy = state
        .store
        .create_policy(auth.account_id(), new, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(policy)))
}

#[utoipa::path(get, path = "/v1/policies/{id}", tag = "policies",
    responses((status = 200, body = Data<Policy>), (status = 404, body = Problem)))]
pub(crate) async fn get_policy(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Policy>>, ApiError> {
    let id = parse_id("policy", &id)?;
    Ok(Data::new(
        state.store.get_policy(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/policies/{id}", tag = "policies", request_body = UpdatePolicy,
    responses((status = 200, body = Data<Policy>), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update_policy(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdatePolicy>,
) -> Result<Json<Data<Policy>>, ApiError> {
    let id = parse_id("policy", &id)?;
    let patch = PolicyPatch {
        group_id: body.group_id,
        resource_id: body.resource_id,
        description: body.description,
        conditions: body.conditions,
        disabled: body.disabled,
    };
    let policy = state
        .store
        .update_policy(auth.account_id(), id, patch, &auth.acting)
        .await?;
    Ok(Data::new(policy))
}

#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies",
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
pub(crate) async fn delete_policy(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("policy", &id)?;
    state
        .store
        .delete_policy(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
