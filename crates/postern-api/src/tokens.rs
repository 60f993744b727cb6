//! Tokens: `/v1/actors/{id}/tokens` (service accounts, API clients) and
//! `/v1/sites/{id}/gateway_tokens` (gateways).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postern_domain::validate;
use postern_domain::{HolderType, Token};
use postern_policy::json::Whole;
use postern_store::{NewTokenRequest, TokenFilter, TokenHolder, TokenPatch};
use postern_token::TokenKind;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::actors::{GatewayTokenRequest, TokenRequest};
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, MaybeJson, PageQuery};
use crate::shapes::{Data, List, RevokedCount, TokenWithSecret};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", get(list_account_tokens))
        .route(
            "/v1/actors/{id}/tokens",
            get(list_actor_tokens)
                .post(create_actor_token)
                .delete(revoke_all_actor_tokens),
        )
        .route(
            "/v1/actors/{id}/tokens/{token_id}",
            get(get_actor_token)
                .patch(update_actor_token)
                .delete(revoke_actor_token),
        )
        .route(
            "/v1/actors/{id}/tokens/{token_id}/rotate",
            post(rotate_actor_token),
        )
        .route(
            "/v1/sites/{id}/gateway_tokens",
            get(list_gateway_tokens).post(create_gateway_token),
        )
        .route(
            "/v1/sites/{id}/gateway_tokens/{token_id}",
            delete(revoke_gateway_token),
        )
}

/// A token with what only the live sessions know: how many clients or gateways use it now.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenStatus {
    #[serde(flatten)]
    pub token: Token,
    /// Sessions open with this token right now, on every live portal node.
    pub online_sessions: u32,
    /// A rotated token only: the client devices that moved to its successor (their last
    /// session used it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients_moved: Option<u64>,
}

impl TokenStatus {
    async fn of_all(
        tokens: Vec<Token>,
        account_id: Uuid,
        state: &AppState,
    ) -> Result<Vec<Self>, ApiError> {
        let ids: Vec<Uuid> = tokens.iter().map(|t| t.id).collect();
        let sessions = state.hub.token_sessions(account_id, &ids).await;
        let mut statuses = Vec::with_capacity(tokens.len());
        for token in tokens {
            let clients_moved = match token.successor_id {
                Some(successor) => Some(state.store.clients_on_token(account_id, successor).await?),
                None => None,
            };
            statuses.push(Self {
                online_sessions: sessions.get(&token.id).copied().unwrap_or(0),
                clients_moved,
                token,
            });
        }
        Ok(statuses)
    }

    async fn of_one(token: Token, account_id: Uuid, state: &AppState) -> Result<Self, ApiError> {
        let status = Self::of_all(vec![token], account_id, state).await?;
        status.into_iter().next().ok_or_else(ApiError::internal)
    }
}

/// Which tokens `GET /v1/tokens` lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountTokensQuery {
    /// Only tokens expiring before this instant (RFC 3339).
    pub expires_before: Option<DateTime<Utc>>,
    /// `true`: only tokens expiring within the account's warning period
    /// (`settings.token_expiry_warning_days`, 30 days by default). With `expires_before`, the
    /// earlier of the two holds.
    pub expiring: Option<bool>,
    /// Only tokens of this kind.
    pub kind: Option<KindParam>,
    /// Also revoked tokens (left out by default).
    pub include_revoked: Option<bool>,
    /// Also tokens that have expired (left out by default).
    pub include_expired: Option<bool>,
    /// Also rotated tokens within their overlap window (left out by default: their end is
    /// planned, their successor carries on).
    pub include_rotated: Option<bool>,
    /// Items per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (an id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// A token kind in a query.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindParam {
    Client,
    Gateway,
    Api,
}

impl From<KindParam> for TokenKind {
    fn from(kind: KindParam) -> Self {
        match kind {
            KindParam::Client => TokenKind::Client,
            KindParam::Gateway => TokenKind::Gateway,
            KindParam::Api => TokenKind::Api,
        }
    }
}

/// A token of any holder in the account, with its holder and how soon it expires.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct AccountToken {
    #[serde(flatten)]
    pub token: TokenStatus,
    pub holder_type: HolderType,
    /// The service account's, API client's, person's or site's name.
    pub holder_name: String,
    /// Whole days until it expires (0 on its last day; negative once expired).
    pub expires_in_days: i64,
    /// It expires within the account's warning period and is neither expired, revoked, rotated
    /// (its successor carries on) nor exchanged for an ID token (its workload renews it).
    pub expiring_soon: bool,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(AccountTokensQuery),
    responses((status = 200, body = List<AccountToken>), (status = 422, body = Problem)))]
/// Every token of the account, whoever holds it: by default the live ones (neither revoked nor
/// expired), in creation order. `?expiring=true` lists those within the account's warning
/// period; `?expires_before=` any other horizon.
pub(crate) async fn list_account_tokens(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<AccountTokensQuery>,
) -> Result<Json<List<AccountToken>>, ApiError> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .page()?;
    let now = Utc::now();
    let settings = state.store.get_account(auth.account_id()).await?.settings;
    let warning = chrono::Duration::days(i64::from(settings.token_expiry_warning_days));
    // Every filter narrows: with both, the earlier horizon holds.
    let expiring = (query.expiring == Some(true)).then_some(now + warning);
    let expires_before = match (query.expires_before, expiring) {
        (Some(before), Some(horizon)) => Some(before.min(horizon)),
        (before, horizon) => before.or(horizon),
    };
    let filter = TokenFilter {
        now,
        expires_before,
        kind: query.kind.map(TokenKind::from),
        include_revoked: query.include_revoked.unwrap_or(false),
        include_expired: query.include_expired.unwrap_or(false),
        include_rotated: query.include_rotated.unwrap_or(false),
    };
    let held = state
        .store
        .list_account_tokens(auth.account_id(), &filter, page)
        .await?;
    let (tokens, holders): (Vec<Token>, Vec<(HolderType, String)>) = held
        .items
        .into_iter()
        .map(|held| (held.token, (held.holder_type, held.holder_name)))
        .unzip();
    let items = TokenStatus::of_all(tokens, auth.account_id(), &state)
        .await?
        .into_iter()
        .zip(holders)
        .map(|(status, (holder_type, holder_name))| {
            let expires_in_days = (status.token.expires_at - now).num_days();
            let live = status.token.revoked_at.is_none() && status.token.expires_at > now;
            AccountToken {
                expiring_soon: live
                    && status.token.successor_id.is_none()
                    && status.token.workload_identity_id.is_none()
                    && status.token.expires_at <= now + warning,
                expires_in_days,
                holder_type,
                holder_name,
                token: status,
            }
        })
        .collect();
    let page_of = postern_store::Paged {
        next_cursor: held.next_cursor,
        items,
    };
    Ok(List::from_page(page_of, page.limit))
}

fn actor(id: &str) -> Result<TokenHolder, ApiError> {
    Ok(TokenHolder::Actor(parse_id("actor", id)?))
}

fn site(id: &str) -> Result<TokenHolder, ApiError> {
    Ok(TokenHolder::Site(parse_id("site", id)?))
}

#[utoipa::path(get, path = "/v1/actors/{id}/tokens", tag = "tokens", params(PageQuery),
    responses((status = 200, body = List<TokenStatus>), (status = 404, body = Problem)))]
pub(crate) async fn list_actor_tokens(
    state: State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    query: ApiQuery<PageQuery>,
) -> Result<Json<List<TokenStatus>>, ApiError> {
    list(state, auth, actor(&id)?, query).await
}

#[utoipa::path(post, path = "/v1/actors/{id}/tokens", tag = "tokens", request_body(content = Option<TokenRequest>, description = "Optional: without a body the token is named `default` and lives the default 365 days"),
    responses((status = 201, body = Data<TokenWithSecret>), (status = 422, body = Problem)))]
pub(crate) async fn create_actor_token(
    state: State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    MaybeJson(body): MaybeJson<TokenRequest>,
) -> Result<(StatusCode, Json<Data<TokenWithSecret>>), ApiError> {
    let request = body.unwrap_or_default().try_into()?;
    create(state, auth, actor(&id)?, request).await
}

#[utoipa::path(delete, path = "/v1/actors/{id}/tokens", tag = "tokens",
    responses((status = 200, body = Data<RevokedCount>), (status = 404, body = Problem)))]
pub(crate) async fn revoke_all_actor_tokens(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Data<RevokedCount>>, ApiError> {
    let revoked = state
        .store
        .revoke_all_tokens(auth.account_id(), actor(&id)?, &auth.acting)
        .await?;
    Ok(Data::new(RevokedCount { revoked }))
}

#[utoipa::path(get, path = "/v1/actors/{id}/tokens/{token_id}", tag = "tokens",
    responses((status = 200, body = Data<TokenStatus>), (status = 404, body = Problem)))]
pub(crate) async fn get_actor_token(
    State(state): State<AppState>,
    auth: Authed,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<Data<TokenStatus>>, ApiError> {
    let token_id = parse_id("token", &token_id)?;
    let token = state
        .store
        .get_token(auth.account_id(), actor(&id)?, token_id)
        .await?;
    Ok(Data::new(
        TokenStatus::of_one(token, auth.account_id(), &state).await?,
    ))
}

/// How to rotate a token.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateToken {
    /// How long the rotated token keeps working beside its successor, such as `24h`, `90m`
    /// or `7d` (default `24h`; at most the account's longest token lifetime).
    #[schema(example = "24h", pattern = r"^[0-9]+(s|m|min|h|d|w|y)$")]
    pub overlap: Option<String>,
}

/// A rotation: the successor with its secret (shown once) and the rotated token, which now
/// expires at the end of the overlap window.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Rotation {
    pub successor: TokenWithSecret,
    pub rotated: Token,
}

#[utoipa::path(post, path = "/v1/actors/{id}/tokens/{token_id}/rotate", tag = "tokens",
    request_body(content = Option<RotateToken>, description = "Optional: without a body the overlap window is 24 hours"),
    responses((status = 201, body = Data<Rotation>), (status = 404, body = Problem), (status = 409, description = "The token is revoked, expired or already rotated", body = Problem), (status = 422, body = Problem)))]
/// Rotates a service account's (or API client's) token without downtime: a successor is
/// created (the same guardrails, the name with a `(rotated DATE)` suffix, as long a life as the
/// rotated token had, within the account's cap) and the rotated token keeps working until the
/// end of the overlap window. Meanwhile every portal node hands the successor to the clients
/// connected with the rotated token; they write it to their token file and reconnect with it,
/// keeping their tunnels. Audited as `token.create` and `token.rotate`.
pub(crate) async fn rotate_actor_token(
    State(state): State<AppState>,
    auth: Authed,
    Path((id, token_id)): Path<(String, String)>,
    MaybeJson(body): MaybeJson<RotateToken>,
) -> Result<(StatusCode, Json<Data<Rotation>>), ApiError> {
    let token_id = parse_id("token", &token_id)?;
    let overlap = body
        .unwrap_or_default()
        .overlap
        .map(|text| postern_domain::rules::parse_duration_of("overlap", &text))
        .transpose()?;
    let rotated = state
        .store
        .rotate_token(
            auth.account_id(),
            actor(&id)?,
            token_id,
            overlap,
            &auth.acting,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Data::new(Rotation {
            successor: rotated.successor.into(),
            rotated: rotated.predecessor,
        }),
    ))
}

/// What `PATCH` changes on a service account's token; omitted fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// At most this many devices connected with the token at once; `null` removes the limit.
    /// Lowering it refuses new sessions and leaves the connected devices be.
    #[serde(default, deserialize_with = "crate::shapes::double_option")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub max_clients: Option<Option<Whole<u32>>>,
    /// Sessions only from these networks; `[]` lifts the restriction. Connected devices outside
    /// the new networks are disconnected at once (their clients exit with code 4).
    #[schema(max_items = 64)]
    pub allowed_source_cidrs: Option<Vec<String>>,
    /// `true`: devices new to the portal wait for approval. `false` lets waiting devices in.
    pub require_approval: Option<bool>,
    /// `true`: every device using the token is ephemeral from its next session on.
    pub ephemeral: Option<bool>,
}

#[utoipa::path(patch, path = "/v1/actors/{id}/tokens/{token_id}", tag = "tokens",
    request_body = UpdateToken,
    responses((status = 200, body = Data<TokenStatus>), (status = 404, body = Problem), (status = 422, body = Problem)))]
/// Renames a token or changes its guardrails, live: every portal node applies them to the
/// token's sessions at once. Audited as `token.update`.
pub(crate) async fn update_actor_token(
    State(state): State<AppState>,
    auth: Authed,
    Path((id, token_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateToken>,
) -> Result<Json<Data<TokenStatus>>, ApiError> {
    let token_id = parse_id("token", &token_id)?;
    let allowed_source_cidrs = body
        .allowed_source_cidrs
        .map(|values| validate::source_networks("allowed_source_cidrs", &values))
        .transpose()?;
    let patch = TokenPatch {
        name: body.name,
        max_clients: body.max_clients.map(|max| max.map(|Whole(n)| n)),
        allowed_source_cidrs,
        require_approval: body.require_approval,
        ephemeral: body.ephemeral,
    };
    let token = state
        .store
        .update_token(
            auth.account_id(),
            actor(&id)?,
            token_id,
            patch,
            &auth.acting,
        )
        .await?;
    Ok(Data::new(
        TokenStatus::of_one(token, auth.account_id(), &state).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/actors/{id}/tokens/{token_id}", tag = "tokens",
    responses((status = 200, description = "The revoked token", body = Data<Token>), (status = 404, body = Problem)))]
pub(crate) async fn revoke_actor_token(
    state: State<AppState>,
    auth: Authed,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<Data<Token>>, ApiError> {
    revoke(state, auth, actor(&id)?, &token_id).await
}

#[utoipa::path(get, path = "/v1/sites/{id}/gateway_tokens", tag = "sites", params(PageQuery),
    responses((status = 200, body = List<TokenStatus>), (status = 404, body = Problem)))]
pub(crate) async fn list_gateway_tokens(
    state: State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    query: ApiQuery<PageQuery>,
) -> Result<Json<List<TokenStatus>>, ApiError> {
    list(state, auth, site(&id)?, query).await
}

#[utoipa::path(post, path = "/v1/sites/{id}/gateway_tokens", tag = "sites", request_body(content = Option<GatewayTokenRequest>, description = "Optional: without a body the token is named `default` and lives the default 365 days"),
    responses((status = 201, body = Data<TokenWithSecret>), (status = 422, body = Problem)))]
pub(crate) async fn create_gateway_token(
    state: State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    MaybeJson(body): MaybeJson<GatewayTokenRequest>,
) -> Result<(StatusCode, Json<Data<TokenWithSecret>>), ApiError> {
    create(state, auth, site(&id)?, body.unwrap_or_default().into()).await
}

#[utoipa::path(delete, path = "/v1/sites/{id}/gateway_tokens/{token_id}", tag = "sites",
    responses((status = 200, description = "The revoked token", body = Data<Token>), (status = 404, body = Problem)))]
pub(crate) async fn revoke_gateway_token(
    state: State<AppState>,
    auth: Authed,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<Data<Token>>, ApiError> {
    revoke(state, auth, site(&id)?, &token_id).await
}

async fn list(
    State(state): State<AppState>,
    auth: Authed,
    holder: TokenHolder,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<TokenStatus>>, ApiError> {
    let page = query.page()?;
    let tokens = state
        .store
        .list_tokens(auth.account_id(), holder, page)
        .await?;
    let statuses = postern_store::Paged {
        next_cursor: tokens.next_cursor,
        items: TokenStatus::of_all(tokens.items, auth.account_id(), &state).await?,
    };
    Ok(List::from_page(statuses, page.limit))
}

async fn create(
    State(state): State<AppState>,
    auth: Authed,
    holder: TokenHolder,
    request: NewTokenRequest,
) -> Result<(StatusCode, Json<Data<TokenWithSecret>>), ApiError> {
    let created = state
        .store
        .create_token(auth.account_id(), holder, request, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(created.into())))
}

async fn revoke(
    State(state): State<AppState>,
    auth: Authed,
    holder: TokenHolder,
    token_id: &str,
) -> Result<Json<Data<Token>>, ApiError> {
    let token_id = parse_id("token", token_id)?;
    let token = state
        .store
        .revoke_token(auth.account_id(), holder, token_id, &auth.acting)
        .await?;
    Ok(Data::new(token))
}
