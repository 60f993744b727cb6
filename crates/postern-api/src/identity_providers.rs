//! `/v1/identity-providers`: the OpenID Connect providers people of the account sign in
//! through (the client secret is write-only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_domain::identity::{
    apply_patch, validate_provider, IdentityProvider, IdentityProviderPatch, NewIdentityProvider,
};

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/identity-providers",
            get(list_identity_providers).post(create_identity_provider),
        )
        .route(
            "/v1/identity-providers/{id}",
            get(get_identity_provider)
                .patch(update_identity_provider)
                .delete(delete_identity_provider),
        )
        .route(
            "/v1/identity-providers/{id}/scim-token",
            axum::routing::post(create_scim_token),
        )
}

/// A provider's SCIM token, in the one answer that carries it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ScimToken {
    /// The bearer token the directory sends. Shown once; a new one replaces it.
    pub token: String,
    /// The SCIM base path under the portal's URL.
    pub base_path: &'static str,
}

#[utoipa::path(post, path = "/v1/identity-providers/{id}/scim-token", tag = "identity providers",
    responses((status = 201, body = Data<ScimToken>), (status = 404, body = Problem)))]
/// Gives the provider a SCIM token for directory sync (`<portal>/scim/v2`, SCIM 2.0 Users); the
/// previous one stops working. The directory then creates, changes, deactivates (their
/// sessions end) and deletes the people it brings — only those. Audited as
/// `identity_provider.scim_token`.
pub(crate) async fn create_scim_token(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Data<ScimToken>>), ApiError> {
    let id = parse_id("identity provider", &id)?;
    let token = state
        .store
        .create_scim_token(auth.account_id(), id, &auth.acting)
        .await?;
    Ok((
        StatusCode::CREATED,
        Data::new(ScimToken {
            token,
            base_path: "/scim/v2",
        }),
    ))
}

#[utoipa::path(get, path = "/v1/identity-providers", tag = "identity providers", params(PageQuery),
    responses((status = 200, body = List<IdentityProvider>)))]
/// The account's identity providers (at most 10).
pub(crate) async fn list_identity_providers(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<IdentityProvider>>, ApiError> {
    let page = query.page()?;
    let providers = state
        .store
        .list_identity_providers(auth.account_id())
        .await?;
    Ok(List::page_of(providers, page, |provider| provider.id))
}

#[utoipa::path(post, path = "/v1/identity-providers", tag = "identity providers",
    request_body = NewIdentityProvider,
    responses((status = 201, body = Data<IdentityProvider>), (status = 422, body = Problem)))]
/// Adds an OpenID Connect provider: people sign in through it on the portal's sign-in page
/// (authorization code flow with PKCE; register `<portal>/auth/oidc/callback` as its redirect
/// URI). Their first sign-in creates them — an admin when a group in `groups_claim` is one of
/// `admin_groups`, a user otherwise. Service accounts are never created, changed or signed in
/// through a provider. Audited as `identity_provider.create`.
pub(crate) async fn create_identity_provider(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<NewIdentityProvider>,
) -> Result<(StatusCode, Json<Data<IdentityProvider>>), ApiError> {
    let valid = validate_provider(body).map_err(postern_store::StoreError::Validation)?;
    let provider = state
        .store
        .create_identity_provider(auth.account_id(), valid, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(provider)))
}

#[utoipa::path(get, path = "/v1/identity-providers/{id}", tag = "identity providers",
    responses((status = 200, body = Data<IdentityProvider>), (status = 404, body = Problem)))]
pub(crate) async fn get_identity_provider(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<IdentityProvider>>, ApiError> {
    let id = parse_id("identity provider", &id)?;
    Ok(Data::new(
        state
            .store
            .get_identity_provider(auth.account_id(), id)
            .await?,
    ))
}

#[utoipa::path(patch, path = "/v1/identity-providers/{id}", tag = "identity providers",
    request_body = IdentityProviderPatch,
    responses((status = 200, body = Data<IdentityProvider>), (status = 404, body = Problem), (status = 422, body = Problem)))]
/// Changes a provider (not its issuer: people are recognized by its subjects). People and
/// service accounts are not touched; a new session lifetime applies to sign-ins from now on.
/// Audited as `identity_provider.update`.
pub(crate) async fn update_identity_provider(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IdentityProviderPatch>,
) -> Result<Json<Data<IdentityProvider>>, ApiError> {
    let id = parse_id("identity provider", &id)?;
    let before = state
        .store
        .get_identity_provider(auth.account_id(), id)
        .await?;
    let valid = apply_patch(&before, body).map_err(postern_store::StoreError::Validation)?;
    Ok(Data::new(
        state
            .store
            .update_identity_provider(auth.account_id(), id, valid, &auth.acting)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/identity-providers/{id}", tag = "identity providers",
    responses((status = 204, description = "Deleted: nobody signs in through it any more and the web sessions it opened end; people and service accounts stay"), (status = 404, body = Problem)))]
pub(crate) async fn delete_identity_provider(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("identity provider", &id)?;
    state
        .store
        .delete_identity_provider(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
