//! `/v1/actors`: users, admins, service accounts and API clients.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postern_domain::{validate, Actor, ActorType, TokenGuardrails};
use postern_policy::json::Whole;
use postern_store::{ActorFilter, ActorPatch, NewActor, NewTokenRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List, TokenWithSecret};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/actors", get(list_actors).post(create_actor))
        .route(
            "/v1/actors/{id}",
            get(get_actor).patch(update_actor).delete(delete_actor),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateActor {
    #[serde(rename = "type")]
    pub actor_type: ActorType,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// Users and admins only.
    pub email: Option<String>,
    #[serde(default)]
    pub group_ids: Vec<Uuid>,
    /// The initial token of a service account or API client; omitted fields take the defaults
    /// (name `default`, expiry in 365 days).
    #[serde(default, deserialize_with = "postern_policy::json::optional_object")]
    pub token: Option<TokenRequest>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// RFC 3339; in the future and within the account's longest token lifetime.
    pub expires_at: Option<DateTime<Utc>>,
    /// Service-account tokens: at most this many devices connected with the token at once;
    /// the next is refused and its client exits with code 5. Omitted: no limit.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub max_clients: Option<Whole<u32>>,
    /// Service-account tokens: sessions only from these networks (CIDR ranges or addresses,
    /// at most 64); others are refused and their client exits with code 4. Omitted or empty:
    /// from anywhere.
    #[schema(max_items = 64)]
    pub allowed_source_cidrs: Option<Vec<String>>,
    /// Service-account tokens: a device new to the portal is granted nothing until an
    /// administrator approves it (`POST /v1/clients/{id}/approve`).
    pub require_approval: Option<bool>,
    /// Service-account tokens: every device using the token is ephemeral (removed when it
    /// stops, or the account's `ephemeral_device_timeout_seconds` after it vanished).
    pub ephemeral: Option<bool>,
}

impl TryFrom<TokenRequest> for NewTokenRequest {
    type Error = ApiError;

    fn try_from(request: TokenRequest) -> Result<Self, ApiError> {
        let allowed_source_cidrs = validate::source_networks(
            "allowed_source_cidrs",
            request.allowed_source_cidrs.as_deref().unwrap_or_default(),
        )?;
        Ok(NewTokenRequest {
            name: request.name,
            expires_at: request.expires_at,
            guardrails: TokenGuardrails {
                max_clients: request.max_clients.map(|Whole(n)| n),
                allowed_source_cidrs,
                require_approval: request.require_approval.unwrap_or(false),
                ephemeral: request.ephemeral.unwrap_or(false),
            },
            rotated_from: None,
            workload_identity_id: None,
        })
    }
}

/// A gateway token: a name and an expiry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayTokenRequest {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// RFC 3339; in the future and within the account's longest token lifetime.
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<GatewayTokenRequest> for NewTokenRequest {
    fn from(request: GatewayTokenRequest) -> Self {
        NewTokenRequest {
            name: request.name,
            expires_at: request.expires_at,
            guardrails: TokenGuardrails::default(),
            rotated_from: None,
            workload_identity_id: None,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateActor {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// `true` disables the actor: its tokens stop working at once. `false` enables it again.
    pub disabled: Option<bool>,
}

/// The created actor, and for a service account or API client its initial token, with the
/// secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedActor {
    pub data: Actor,
    pub token: Option<TokenWithSecret>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActorQuery {
    /// Only actors of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<ActorType>)]
    pub actor_type: Option<ActorType>,
    /// Only actors whose name contains this text (case-insensitive).
    pub name: Option<String>,
    /// Items per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (an id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/actors", tag = "actors", params(ActorQuery),
    responses((status = 200, body = List<Actor>), (status = 401, body = Problem)))]
pub(crate) async fn list_actors(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<ActorQuery>,
) -> Result<Json<List<Actor>>, ApiError> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .page()?;
    let filter = ActorFilter {
        actor_type: query.actor_type,
        name_contains: query.name,
    };
    let actors = state
        .store
        .list_actors(auth.account_id(), &filter, page)
        .await?;
    Ok(List::from_page(actors, page.limit))
}

#[utoipa::path(post, path = "/v1/actors", tag = "actors", request_body = CreateActor,
    responses((status = 201, body = CreatedActor), (status = 422, body = Problem)))]
pub(crate) async fn create_actor(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(body): ApiJson<CreateActor>,
) -> Result<(StatusCode, Json<CreatedActor>), ApiError> {
    let machine = body.actor_type.token_kind().is_some();
    if !machine && body.token.is_some() {
        return Err(ApiError::validation(
            "token",
            format!(
                "{} signs in and holds no tokens",
                body.actor_type.described()
            ),
        ));
    }
    let new = NewActor {
        actor_type: body.actor_type,
        name: body.name,
        email: body.email,
        password_hash: None,
        group_ids: body.group_ids,
        token: match machine {
            true => Some(body.token.unwrap_or_default().try_into()?),
            false => None,
        },
    };
    let (actor, token) = state
        .store
        .create_actor(auth.account_id(), new, &auth.acting)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedActor {
            data: actor,
            token: token.map(Into::into),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/actors/{id}", tag = "actors",
    responses((status = 200, body = Data<Actor>), (status = 404, body = Problem)))]
pub(crate) async fn get_actor(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<Actor>>, ApiError> {
    let id = parse_id("actor", &id)?;
    Ok(Data::new(
        state.store.get_actor(auth.account_id(), id).await?,
    ))
}

#[utoipa::path(patch, path = "/v1/actors/{id}", tag = "actors", request_body = UpdateActor,
    responses((status = 200, body = Data<Actor>), (status = 404, body = Problem)))]
pub(crate) async fn update_actor(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateActor>,
) -> Result<Json<Data<Actor>>, ApiError> {
    let id = parse_id("actor", &id)?;
    let patch = ActorPatch {
        name: body.name,
        disabled: body.disabled,
        email: None,
    };
    if auth.principal.actor_id == Some(id) && patch.disabled == Some(true) {
        return Err(ApiError::conflict(
            "an API client cannot disable itself: use another API token",
        ));
    }
    let actor = state
        .store
        .update_actor(auth.account_id(), id, patch, &auth.acting)
        .await?;
    Ok(Data::new(actor))
}

#[utoipa::path(delete, path = "/v1/actors/{id}", tag = "actors",
    responses((status = 204, description = "Deleted with its tokens and memberships"), (status = 404, body = Problem)))]
pub(crate) async fn delete_actor(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("actor", &id)?;
    state
        .store
        .delete_actor(auth.account_id(), id, &auth.acting)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
