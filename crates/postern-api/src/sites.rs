//! `/v1/sites`. Gateway tokens live in `tokens.rs`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::Site;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sites", get(list_sites).post(create_site))
        .route(
            "/v1/sites/{id}",
            get(get_site).patch(update_site).delete(delete_site),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
}

#[utoipa::path(get, path = "/v1/sites", tag = "sites", params(PageQuery),
    responses((status = 200, body = List<Site>), (status = 401, body = Problem)))]
pub(crate) async fn list_sites(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<Site>>, ApiError> {
    let page = query.page()?;
    let sites = state.store.list_sites(auth.account_id(), page).await?;
    Ok(List::from_page(sites, page.limit))
}

#[utoipa::path(post, path = "/v1/sites", tag = "sites", request_body = SiteBody,
    responses((status = 201, body = Data<Site>), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn create_site(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<SiteBody>,
) -> Result<(StatusCode, Json<Data<Site>>), ApiError> {
    let site = state
        .store
        .create_site(auth.account_id(), &body.name, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(site)))
}

#[utoipa::path(get, path = "/v1/sites/{id}", tag = "sites",
    responses((status = 200, body = Data<Site>), (status = 404, body = Problem)))]
pub(crate) async fn get_site(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Site>>, ApiError> {
    let id = parse_id("site", &id)?;
    Ok(Data::new(
        state.store.get_site(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/sites/{id}", tag = "sites", request_body = SiteBody,
    responses((status = 200, body = Data<Site>), (status = 404, body = Problem)))]
pub(crate) async fn update_site(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SiteBody>,
) -> Result<Json<Data<Site>>, ApiError> {
    let id = parse_id("site", &id)?;
    let site = state
        .store
        .rename_site(auth.account_id(), id, &body.name, &auth.acting)
        .await?;
    Ok(Data::new(site))
}

#[utoipa::path(delete, path = "/v1/sites/{id}", tag = "sites",
    responses((status = 204, description = "Deleted with its gateway tokens"), (status = 404, body = Problem),
        (status = 409, description = "The site still serves resources", body = Problem)))]
pub(crate) async fn delete_site(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("site", &id)?;
    state
        .store
        .delete_site(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
