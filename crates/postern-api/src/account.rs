//! `/v1/account`: the caller's account and its settings.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::{Account, AccountSettings};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, Authed};
use crate::shapes::Data;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/account", get(get_account).patch(update_account))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "postern_policy::json::optional_object")]
    pub settings: Option<AccountSettings>,
}

#[utoipa::path(get, path = "/v1/account", tag = "account",
    responses((status = 200, body = Data<Account>), (status = 401, body = Problem)))]
pub(crate) async fn get_account(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<Data<Account>>, ApiError> {
    Ok(Data::new(state.store.get_account(auth.account_id()).await?))
}

#[utoipa::path(patch, path = "/v1/account", tag = "account", request_body = UpdateAccount,
    responses((status = 200, body = Data<Account>), (status = 422, body = Problem)))]
pub(crate) async fn update_account(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<UpdateAccount>,
) -> Result<Json<Data<Account>>, ApiError> {
    let account = state
        .store
        .update_account(
            auth.account_id(),
            body.name.as_deref(),
            body.settings,
            &auth.acting,
        )
        .await?;
    Ok(Data::new(account))
}
