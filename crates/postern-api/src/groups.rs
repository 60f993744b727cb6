//! `/v1/groups` and their memberships.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::{Group, Membership};
use postern_store::MembershipChange;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/groups", get(list_groups).post(create_group))
        .route(
            "/v1/groups/{id}",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route(
            "/v1/groups/{id}/memberships",
            get(list_memberships).patch(change_memberships),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupBody {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipPatch {
    /// Actor ids to add (already a member: no change).
    #[serde(default)]
    pub add: Vec<Uuid>,
    /// Actor ids to remove (not a member: no change).
    #[serde(default)]
    pub remove: Vec<Uuid>,
}

#[utoipa::path(get, path = "/v1/groups", tag = "groups", params(PageQuery),
    responses((status = 200, body = List<Group>), (status = 401, body = Problem)))]
pub(crate) async fn list_groups(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Group>>, ApiError> {
    let page = query.page()?;
    let groups = state.store.list_groups(auth.account_id(), page).await?;
    Ok(List::from_page(groups, page.limit))
}

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupBody,
    responses((status = 201, body = Data<Group>), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create_group(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<GroupBody>,
) -> Result<(StatusCode, Json<Data<Group>>), ApiError> {
    let group = state
        .store
        .create_group(auth.account_id(), &body.name, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(group)))
}

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    responses((status = 200, body = Data<Group>), (status = 404, body = Problem)))]
pub(crate) async fn get_group(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Group>>, ApiError> {
    let id = parse_id("group", &id)?;
    Ok(Data::new(
        state.store.get_group(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/groups/{id}", tag = "groups", request_body = GroupBody,
    responses((status = 200, body = Data<Group>), (status = 404, body = Problem)))]
pub(crate) async fn update_group(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GroupBody>,
) -> Result<Json<Data<Group>>, ApiError> {
    let id = parse_id("group", &id)?;
    let group = state
        .store
        .rename_group(auth.account_id(), id, &body.name, &auth.acting)
        .await?;
    Ok(Data::new(group))
}

#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "groups",
    responses((status = 204, description = "Deleted with its memberships and policies"), (status = 404, body = Problem)))]
pub(crate) async fn delete_group(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("group", &id)?;
    state
        .store
        .delete_group(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/groups/{id}/memberships", tag = "groups", params(PageQuery),
    responses((status = 200, body = List<Membership>), (status = 404, body = Problem)))]
pub(crate) async fn list_memberships(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Membership>>, ApiError> {
    let id = parse_id("group", &id)?;
    let page = query.page()?;
    let members = state
        .store
        .list_memberships(auth.account_id(), id, page)
        .await?;
    Ok(List::from_page(members, page.limit))
}

#[utoipa::path(patch, path = "/v1/groups/{id}/memberships", tag = "groups", request_body = MembershipPatch,
    responses((status = 200, description = "The group's members after the change (first 500)", body = Data<Vec<Membership>>),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn change_memberships(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MembershipPatch>,
) -> Result<Json<Data<Vec<Membership>>>, ApiError> {
    let id = parse_id("group", &id)?;
    let change = MembershipChange {
        add: body.add,
        remove: body.remove,
    };
    let members = state
        .store
        .change_memberships(auth.account_id(), id, change, &auth.acting)
        .await?;
    Ok(Data::new(members))
}
