//! Request extractors: the authenticated caller, JSON bodies and queries whose errors are
//! problem documents, ids in paths, and pagination.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use axum::http::request::Parts;
use postern_domain::Acting;
use postern_store::{Page, Principal, TokenUse};
use postern_token::TokenKind;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use crate::client_addr::source_ip;
use crate::error::ApiError;
use crate::AppState;

pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 500;

/// The caller, authenticated with an API token of the account it acts in.
pub struct Authed {
    pub principal: Principal,
    pub acting: Acting,
}

impl Authed {
    pub fn account_id(&self) -> Uuid {
        self.principal.account_id
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (principal, ip) = authenticate(parts, state, TokenKind::Api).await?;
        Ok(Authed {
            acting: Acting {
                actor_id: principal.actor_id,
                token_id: Some(principal.token_id),
                source_ip: ip.map(|ip| ip.to_string()),
            },
            principal,
        })
    }
}

/// Authenticates the request's bearer token as a token of `kind`: rate limits failures per
/// source address and records them in the audit log. Returns the principal and source address.
pub async fn authenticate(
    parts: &Parts,
    state: &AppState,
    kind: TokenKind,
) -> Result<(Principal, Option<IpAddr>), ApiError> {
    let ip = source_ip(parts);
    // No token at all is a 401 whatever the limit: it costs no lookup.
    let token = bearer_token(parts)?;
    if let Some(retry_after) = state.auth_limiter.check(ip) {
        return Err(ApiError::too_many_requests(retry_after));
    }
    let usage = TokenUse {
        ip: ip.map(|ip| ip.to_string()),
        user_agent: parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect()),
    };
    match state.store.authenticate(token, kind, usage).await {
        Ok(principal) => Ok((principal, ip)),
        Err(postern_store::AuthError::Store(err)) => Err(err.into()),
        Err(err) => {
            state.auth_limiter.record_failure(ip);
            metrics::counter!(
                postern_metrics::AUTH_FAILURES,
                "surface" => kind.as_str(),
                "reason" => err.reason()
            )
            .increment(1);
            let (account_id, token_id) = err.attribution();
            tracing::info!(reason = err.reason(), ?token_id, source_ip = ?ip, kind = kind.as_str(), "authentication failed");
            if let Err(audit_err) = state
                .store
                .record_failed_auth(
                    account_id,
                    token_id,
                    ip.map(|ip| ip.to_string()),
                    err.reason(),
                )
                .await
            {
                tracing::warn!(error = %audit_err, "could not record a failed authentication");
            }
            Err(err.into())
        }
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("send an API token in the header 'Authorization: Bearer <token>'")
    })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))
}

/// A JSON body whose errors name the field at fault.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match MaybeJson::<T>::from_request(req, state).await? {
            MaybeJson(Some(value)) => Ok(ApiJson(value)),
            MaybeJson(None) => Err(ApiError::bad_request(
                Some("body".to_string()),
                "send a JSON body with 'Content-Type: application/json'",
            )),
        }
    }
}

/// A JSON body that may be left out entirely or sent as `null` (every field has a default).
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_content = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(ApiError::body)?;
        let text = bytes.trim_ascii();
        if text.is_empty() || (json_content && text == b"null") {
            return Ok(MaybeJson(None));
        }
        if !json_content {
            return Err(ApiError::bad_request(
                Some("body".to_string()),
                "send the body as JSON with 'Content-Type: application/json'",
            ));
        }
        // Every body of this API is an object; serde would also read a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::validation("body", "must be a JSON object"));
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(deserializer) {
            Ok(value) => Ok(MaybeJson(Some(value))),
            Err(err) => {
                let path = err.path().to_string();
                let inner = err.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    return Err(ApiError::bad_request(
                        Some("body".to_string()),
                        format!("the body is not valid JSON: {inner}"),
                    ));
                }
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Err(ApiError::validation(
                    field,
                    strip_position(&inner.to_string()),
                ))
            }
        }
    }
}

/// serde_json appends " at line 1 column 42" to its messages: noise for an API caller.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

/// A query string whose errors are problem documents.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => {
                let text = err.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_string();
                Err(ApiError::bad_request(Some("query".to_string()), detail))
            }
            Err(other) => Err(ApiError::bad_request(None, other.body_text())),
        }
    }
}

/// `?limit=` and `?cursor=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page: 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (an id).
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("must be between 1 and {MAX_PAGE_LIMIT}"),
            ));
        }
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                Uuid::parse_str(c).map_err(|_| {
                    ApiError::validation("cursor", "is not a cursor returned by this API")
                })
            })
            .transpose()?;
        Ok(Page { limit, cursor })
    }
}

/// Parses an id from the path. A malformed id cannot name anything: 404.
pub fn parse_id(what: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| ApiError::not_found(what))
}
