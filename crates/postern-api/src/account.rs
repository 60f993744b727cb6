//! `/v1/account`: the caller's account and its settings.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::{Account, AccountSettings};
use postern_policy::json::Whole;
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
    pub settings: Option<UpdateSettings>,
}

/// The settings to change; omitted ones stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// The longest lifetime, in days, that a new token of this account may have.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 36500)]
    pub max_token_lifetime_days: Option<Whole<u32>>,
    /// Seconds after its last session ended that an ephemeral device that did not say goodbye
    /// is removed.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2592000)]
    pub ephemeral_device_timeout_seconds: Option<Whole<u32>>,
    /// Days after which a device (not ephemeral) that was not seen is removed.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 3650)]
    pub stale_device_days: Option<Whole<u32>>,
    /// Tokens expiring within this many days are shown as expiring soon.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 365)]
    pub token_expiry_warning_days: Option<Whole<u32>>,
}

impl UpdateSettings {
    fn applied_to(self, current: AccountSettings) -> AccountSettings {
        AccountSettings {
            max_token_lifetime_days: self
                .max_token_lifetime_days
                .map_or(current.max_token_lifetime_days, |Whole(n)| n),
            ephemeral_device_timeout_seconds: self
                .ephemeral_device_timeout_seconds
                .map_or(current.ephemeral_device_timeout_seconds, |Whole(n)| n),
            stale_device_days: self
                .stale_device_days
                .map_or(current.stale_device_days, |Whole(n)| n),
            token_expiry_warning_days: self
                .token_expiry_warning_days
                .map_or(current.token_expiry_warning_days, |Whole(n)| n),
        }
    }
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
    let settings = match body.settings {
        Some(patch) => {
            let current = state.store.get_account(auth.account_id()).await?.settings;
            Some(patch.applied_to(current))
        }
        None => None,
    };
    let account = state
        .store
        .update_account(
            auth.account_id(),
            body.name.as_deref(),
            settings,
            &auth.acting,
        )
        .await?;
    Ok(Data::new(account))
}
