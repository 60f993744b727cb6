//! Workload identity federation: a service account's trust rules
//! (`/v1/actors/{id}/workload-identities`) and the exchange of a workload's ID token for a
//! short-lived client token (`POST /v1/workload-identity/exchange`, JSON or RFC 8693 form),
//! which takes no API token: the ID token, signed by a trusted issuer, is the credential.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postern_domain::workload_identity::{MatchedClaims, NewWorkloadIdentity};
use postern_domain::WorkloadIdentity;
use postern_store::{RuleScope, TokenUse, DEFAULT_ACCOUNT_SLUG, MAX_RULES_CONSIDERED};
use postern_token::TokenKind;
use postern_workload_identity::{self as wi, DocumentError, KeySet, Refusal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::client_addr::source_ip;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_id, ApiJson, ApiQuery, Authed, PageQuery};
use crate::shapes::{Data, List};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/actors/{id}/workload-identities",
            get(list_workload_identities).post(create_workload_identity),
        )
        .route(
            "/v1/actors/{id}/workload-identities/{workload_identity_id}",
            get(get_workload_identity).delete(delete_workload_identity),
        )
        .route("/v1/workload-identity/exchange", post(exchange))
}

#[utoipa::path(post, path = "/v1/actors/{id}/workload-identities", tag = "workload identity",
    request_body = NewWorkloadIdentity,
    responses((status = 201, body = Data<WorkloadIdentity>), (status = 404, body = Problem),
        (status = 409, description = "The actor is not a service account", body = Problem), (status = 422, body = Problem)))]
/// Trusts ID tokens from an OIDC issuer for this service account: a token for `audience`
/// whose subject and claims match is exchanged for a short-lived client token. Audited as
/// `workload_identity.create`.
pub(crate) async fn create_workload_identity(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewWorkloadIdentity>,
) -> Result<(StatusCode, Json<Data<WorkloadIdentity>>), ApiError> {
    let actor_id = parse_id("actor", &id)?;
    // The service account first: an unknown one is a 404 whatever the body.
    state.store.get_actor(auth.account_id(), actor_id).await?;
    let valid = wi::validate_rule(body).map_err(postern_store::StoreError::Validation)?;
    let rule = state
        .store
        .create_workload_identity(auth.account_id(), actor_id, valid, &auth.acting)
        .await?;
    Ok((StatusCode::CREATED, Data::new(rule)))
}

#[utoipa::path(get, path = "/v1/actors/{id}/workload-identities", tag = "workload identity", params(PageQuery),
    responses((status = 200, body = List<WorkloadIdentity>), (status = 404, body = Problem)))]
/// The service account's trust rules (at most 50).
pub(crate) async fn list_workload_identities(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<List<WorkloadIdentity>>, ApiError> {
    let actor_id = parse_id("actor", &id)?;
    let page = query.page()?;
    // At most 50 per service account: one read, paged here.
    let rules = state
        .store
        .list_workload_identities(auth.account_id(), actor_id)
        .await?;
    Ok(List::page_of(rules, page, |rule| rule.id))
}

#[utoipa::path(get, path = "/v1/actors/{id}/workload-identities/{workload_identity_id}", tag = "workload identity",
    responses((status = 200, body = Data<WorkloadIdentity>), (status = 404, body = Problem)))]
pub(crate) async fn get_workload_identity(
    State(state): State<AppState>,
    auth: Authed,
    Path((id, rule_id)): Path<(String, String)>,
) -> Result<Json<Data<WorkloadIdentity>>, ApiError> {
    let actor_id = parse_id("actor", &id)?;
    let rule_id = parse_id("workload identity", &rule_id)?;
    Ok(Data::new(
        state
            .store
            .get_workload_identity(auth.account_id(), actor_id, rule_id)
            .await?,
    ))
}

/// What deleting a trust rule did.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkloadIdentityDeleted {
    /// Tokens exchanged under the rule that were not revoked yet, now revoked.
    pub revoked_tokens: usize,
}

#[utoipa::path(delete, path = "/v1/actors/{id}/workload-identities/{workload_identity_id}", tag = "workload identity",
    responses((status = 200, body = Data<WorkloadIdentityDeleted>), (status = 404, body = Problem)))]
/// Deletes a trust rule and revokes the tokens exchanged under it: their clients are cut at
/// once on every node. Audited as `workload_identity.delete` and `token.revoke`.
pub(crate) async fn delete_workload_identity(
    State(state): State<AppState>,
    auth: Authed,
    Path((id, rule_id)): Path<(String, String)>,
) -> Result<Json<Data<WorkloadIdentityDeleted>>, ApiError> {
    let actor_id = parse_id("actor", &id)?;
    let rule_id = parse_id("workload identity", &rule_id)?;
    let revoked_tokens = state
        .store
        .delete_workload_identity(auth.account_id(), actor_id, rule_id, &auth.acting)
        .await?;
    Ok(Data::new(WorkloadIdentityDeleted { revoked_tokens }))
}

/// An exchange, as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The workload's OIDC ID token (a JWT).
    #[schema(max_length = 16384)]
    pub id_token: String,
    /// The trust rule to use; needed only when the token matches several. Named, it may be
    /// any account's.
    pub workload_identity_id: Option<Uuid>,
    /// The account whose trust rules are looked at (its slug; default `default`). Ignored
    /// with `workload_identity_id`.
    #[schema(max_length = 63, example = "default")]
    pub account: Option<String>,
    /// The client token the workload holds now, when it renews: the new token takes over
    /// from it (the device keeps its grants).
    pub actor_token: Option<String>,
}

/// The same in RFC 8693's form encoding.
#[derive(Debug, Deserialize)]
struct TokenExchangeForm {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    /// The trust rule's id (RFC 8693's `audience`: the token is for this service account).
    audience: Option<String>,
    /// The account whose trust rules are looked at (its slug), as in JSON.
    account: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The token an exchange issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExchangedToken {
    /// A client token for `postern-client` (`POSTERN_TOKEN`). Shown once.
    pub secret: String,
    pub token_id: Uuid,
    /// The service account it belongs to.
    pub actor_id: Uuid,
    pub workload_identity_id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// The token it took over from (a renewal), if any.
    pub replaces: Option<Uuid>,
}

/// RFC 8693's answer.
#[derive(Debug, Serialize)]
struct TokenExchangeResponse {
    access_token: String,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: i64,
}

struct Exchange {
    id_token: String,
    workload_identity_id: Option<Uuid>,
    account: Option<String>,
    actor_token: Option<String>,
}

/// How the exchange failed, answered as problem+json (JSON) or RFC 6749 errors (form).
enum ExchangeFailure {
    /// The request is malformed.
    Request(String),
    /// The ID token does not earn a token.
    Refused(String),
    /// The token matches several rules (or the account has too many to look at): the caller
    /// must name one.
    Ambiguous(String),
    /// The issuer's keys cannot be had.
    Unavailable(String),
    Api(ApiError),
}

impl From<ApiError> for ExchangeFailure {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<postern_store::StoreError> for ExchangeFailure {
    fn from(err: postern_store::StoreError) -> Self {
        Self::Api(err.into())
    }
}

impl ExchangeFailure {
    fn api_error(self) -> ApiError {
        match self {
            Self::Request(detail) => ApiError::bad_request(None, detail),
            Self::Refused(detail) => ApiError::unauthorized(detail),
            Self::Ambiguous(detail) => ApiError::conflict(detail),
            Self::Unavailable(detail) => ApiError::unavailable(detail, 10),
            Self::Api(err) => err,
        }
    }

    fn oauth_error(self) -> Response {
        let (status, error, description) = match self {
            Self::Request(detail) => (StatusCode::BAD_REQUEST, "invalid_request", detail),
            Self::Refused(detail) => (StatusCode::BAD_REQUEST, "invalid_grant", detail),
            Self::Ambiguous(detail) => (StatusCode::BAD_REQUEST, "invalid_target", detail),
            Self::Unavailable(detail) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                detail,
            ),
            Self::Api(err) => return err.into_response(),
        };
        (
            status,
            Json(serde_json::json!({ "error": error, "error_description": description })),
        )
            .into_response()
    }
}

/// How to name the rule, said by every refusal that asks for it.
const NAME_ONE: &str = "name one with workload_identity_id (postern-client --workload-identity, \
                        or `audience` in the form)";

#[utoipa::path(post, path = "/v1/workload-identity/exchange", tag = "workload identity",
    request_body(content = ExchangeRequest, description = "JSON; or `application/x-www-form-urlencoded` with RFC 8693's `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, `subject_token`, `subject_token_type=urn:ietf:params:oauth:token-type:id_token` (or `…:jwt`), optional `audience` (the workload identity's id), `account` (the account's slug) and `actor_token`, answered as RFC 8693 (`access_token`, `issued_token_type`, `token_type`, `expires_in`) or RFC 6749 errors"),
    security(()),
    responses((status = 201, body = Data<ExchangedToken>),
        (status = 400, body = Problem),
        (status = 401, description = "The ID token is refused; `detail` says why (signature, key id, algorithm, issuer, audience, expiry, subject or a claim)", body = Problem),
        (status = 409, description = "It matches several workload identities: name one, or the service account is disabled", body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem),
        (status = 503, description = "The issuer's keys cannot be fetched", body = Problem)))]
/// Exchanges a workload's OIDC ID token (GitHub Actions, GitLab CI, a Kubernetes service
/// account, a cloud's instance identity) for a short-lived client token of the service
/// account whose trust rule it matches: the signature is checked against the issuer's keys
/// (discovery and JWKS, cached; or the rule's own key set), then the issuer, audience, expiry,
/// subject and claims. Refusals count against the caller's address like failed sign-ins.
/// Audited as `token.create` and `token.exchange`, with the claims that matched.
pub(crate) async fn exchange(State(state): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let result = run_exchange(&state, &parts, &body, form).await;
    let outcome = match &result {
        Ok(token) if token.replaces.is_some() => "renewed",
        Ok(_) => "issued",
        Err(ExchangeFailure::Unavailable(_)) => "unavailable",
        Err(_) => "refused",
    };
    metrics::counter!(postern_metrics::WORKLOAD_IDENTITY_EXCHANGES, "outcome" => outcome)
        .increment(1);
    match (result, form) {
        (Ok(token), false) => (StatusCode::CREATED, Data::new(token)).into_response(),
        (Ok(token), true) => Json(TokenExchangeResponse {
            access_token: token.secret,
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: (token.expires_at - Utc::now()).num_seconds().max(0),
        })
        .into_response(),
        (Err(failure), false) => failure.api_error().into_response(),
        (Err(failure), true) => failure.oauth_error(),
    }
}

fn parse_request(body: &Bytes, form: bool) -> Result<Exchange, ExchangeFailure> {
    if !form {
        let request: ExchangeRequest = serde_json::from_slice(body).map_err(|err| {
            ExchangeFailure::Api(ApiError::bad_request(
                None,
                format!("the body is not an exchange request: {err}"),
            ))
        })?;
        return Ok(Exchange {
            id_token: request.id_token,
            workload_identity_id: request.workload_identity_id,
            account: request.account,
            actor_token: request.actor_token,
        });
    }
    let request: TokenExchangeForm = serde_urlencoded::from_bytes(body)
        .map_err(|err| ExchangeFailure::Request(format!("the form is incomplete: {err}")))?;
    if request.grant_type != GRANT_TYPE {
        return Err(ExchangeFailure::Request(format!(
            "grant_type must be {GRANT_TYPE}"
        )));
    }
    if !ID_TOKEN_TYPES.contains(&request.subject_token_type.as_str()) {
        return Err(ExchangeFailure::Request(format!(
            "subject_token_type must be {} or {}",
            ID_TOKEN_TYPES[0], ID_TOKEN_TYPES[1]
        )));
    }
    if request.actor_token.is_some()
        && request.actor_token_type.as_deref() != Some(ACCESS_TOKEN_TYPE)
    {
        return Err(ExchangeFailure::Request(format!(
            "actor_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    let workload_identity_id = request
        .audience
        .as_deref()
        .map(|text| {
            Uuid::parse_str(text).map_err(|_| {
                ExchangeFailure::Request("audience must be a workload identity's id".into())
            })
        })
        .transpose()?;
    Ok(Exchange {
        id_token: request.subject_token,
        workload_identity_id,
        account: request.account,
        actor_token: request.actor_token,
    })
}

async fn run_exchange(
    state: &AppState,
    parts: &Parts,
    body: &Bytes,
    form: bool,
) -> Result<ExchangedToken, ExchangeFailure> {
    let ip = source_ip(parts);
    if let Some(retry_after) = state.auth_limiter.check(ip) {
        return Err(ApiError::too_many_requests(retry_after).into());
    }
    let request = parse_request(body, form)?;
    let refused = |reason: String| {
        state.auth_limiter.record_failure(ip);
        tracing::info!(source_ip = ?ip, %reason, "a workload identity exchange was refused");
        ExchangeFailure::Refused(reason)
    };
    let claimed = wi::peek(&request.id_token).map_err(|err| refused(err.to_string()))?;
    let (scope, looked_at) = match (request.workload_identity_id, &request.account) {
        (Some(id), _) => (
            RuleScope::Rule(id),
            "under the workload identity named".to_string(),
        ),
        (None, account) => {
            let slug = account.as_deref().unwrap_or(DEFAULT_ACCOUNT_SLUG);
            match state.store.account_by_slug(slug).await {
                Ok(found) => (
                    RuleScope::Account(found.id),
                    format!("in the account '{slug}'"),
                ),
                Err(postern_store::StoreError::NotFound(_)) => {
                    return Err(refused(format!("there is no account '{slug}'")))
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    let candidates: Vec<WorkloadIdentity> = state
        .store
        .workload_identities_for_issuer(&claimed.issuer, &claimed.audiences, scope)
        .await?;
    if candidates.is_empty() {
        return Err(refused(format!(
            "no workload identity trusts ID tokens from '{}' for the audience {:?} {looked_at}",
            claimed.issuer, claimed.audiences,
        )));
    }
    if candidates.len() > MAX_RULES_CONSIDERED {
        return Err(ExchangeFailure::Ambiguous(format!(
            "more than {MAX_RULES_CONSIDERED} workload identities {looked_at} trust ID tokens \
             from '{}' for these audiences: {NAME_ONE}",
            claimed.issuer
        )));
    }
    let now = Utc::now().timestamp();
    let mut matched: Vec<(WorkloadIdentity, MatchedClaims)> = Vec::new();
    let mut first_refusal = None;
    for rule in candidates {
        match state.issuer_keys.check(&request.id_token, &rule, now).await {
            Ok(claims) => matched.push((rule, claims)),
            Err(KeysOrRefusal::Refused(refusal)) => {
                first_refusal.get_or_insert(refusal);
            }
            Err(KeysOrRefusal::Keys(why)) => return Err(ExchangeFailure::Unavailable(why)),
        }
    }
    let (rule, claims) = match matched.len() {
        0 => {
            let reason = first_refusal
                .map(|refusal| refusal.to_string())
                .unwrap_or_else(|| "the ID token is refused".into());
            return Err(refused(reason));
        }
        1 => matched.remove(0),
        count => {
            return Err(ExchangeFailure::Ambiguous(format!(
                "the ID token matches {count} workload identities: {NAME_ONE}"
            )))
        }
    };
    let replaces = match request.actor_token.as_deref() {
        Some(secret) => current_token(state, secret, &rule, ip).await,
        None => None,
    };
    let exchanged = state
        .store
        .exchange_workload_token(&rule, &claims, replaces, ip.map(|ip| ip.to_string()))
        .await?;
    tracing::info!(
        token_id = %exchanged.created.token.id,
        workload_identity = %rule.id,
        subject = claims.get("sub").map(String::as_str).unwrap_or_default(),
        "an ID token was exchanged for a client token"
    );
    Ok(ExchangedToken {
        secret: exchanged.created.secret.expose().to_string(),
        token_id: exchanged.created.token.id,
        actor_id: rule.actor_id,
        workload_identity_id: rule.id,
        expires_at: exchanged.created.token.expires_at,
        replaces: exchanged.replaced,
    })
}

/// The id of the token a renewing workload presented, if it is a live client token of the
/// rule's service account (anything else: the new token starts afresh).
async fn current_token(
    state: &AppState,
    secret: &str,
    rule: &WorkloadIdentity,
    ip: Option<std::net::IpAddr>,
) -> Option<Uuid> {
    let usage = TokenUse {
        ip: ip.map(|ip| ip.to_string()),
        user_agent: None,
    };
    let principal = state
        .store
        .authenticate(secret.trim(), TokenKind::Client, usage)
        .await
        .ok()?;
    (principal.account_id == rule.account_id && principal.actor_id == Some(rule.actor_id))
        .then_some(principal.token_id)
}

/// How long fetched keys are used before they are fetched again.
const KEYS_FRESH_FOR: Duration = Duration::from_secs(3600);
/// How soon keys may be fetched again when a token names a key id they lack.
const REFETCH_AFTER: Duration = Duration::from_secs(60);
/// The most issuers whose keys are kept.
const MAX_ISSUERS: usize = 1000;
/// How long one fetch (discovery or key set) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a rule could not check a token.
pub(crate) enum KeysOrRefusal {
    Refused(Refusal),
    /// The issuer's keys cannot be had.
    Keys(String),
}

struct CachedKeys {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    /// When a token naming a key the set lacked last made it fetched again.
    refetched_at: Option<Instant>,
}

/// Issuers' key sets, fetched through OIDC discovery and kept for an hour (fetched again at
/// most once a minute when a token names a key the set lacks: the issuer rotated its keys).
pub struct IssuerKeys {
    http: reqwest::Client,
    cache: parking_lot::Mutex<HashMap<String, CachedKeys>>,
    /// One fetch per issuer at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Default for IssuerKeys {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .user_agent("postern-portal")
            .build()
            .unwrap_or_default();
        Self {
            http,
            cache: parking_lot::Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

impl IssuerKeys {
    /// Checks `id_token` against `rule` with the issuer's keys (the rule's own, or fetched).
    pub(crate) async fn check(
        &self,
        id_token: &str,
        rule: &WorkloadIdentity,
        now: i64,
    ) -> Result<MatchedClaims, KeysOrRefusal> {
        if let Some(inline) = &rule.jwks {
            let keys = KeySet::from_value(inline)
                .map_err(|err| KeysOrRefusal::Keys(format!("the rule's key set {err}")))?;
            return wi::check(id_token, rule, &keys, now).map_err(KeysOrRefusal::Refused);
        }
        let keys = self.keys(&rule.issuer, false).await?;
        match wi::check(id_token, rule, &keys, now) {
            Err(Refusal::UnknownKey { kid, .. }) if !keys.has_key(&kid) => {
                let keys = self.keys(&rule.issuer, true).await?;
                wi::check(id_token, rule, &keys, now).map_err(KeysOrRefusal::Refused)
            }
            other => other.map_err(KeysOrRefusal::Refused),
        }
    }

    /// The cached keys if they will do: fresh, or (`refetch`) fetched again for a missing
    /// key id within the last minute.
    fn cached(&self, issuer: &str, refetch: bool) -> Option<Arc<KeySet>> {
        let cache = self.cache.lock();
        let cached = cache.get(issuer)?;
        let usable = if refetch {
            cached
                .refetched_at
                .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
        } else {
            cached.fetched_at.elapsed() < KEYS_FRESH_FOR
        };
        usable.then(|| cached.keys.clone())
    }

    /// The issuer's keys: cached ones while fresh; with `refetch` (a key id was missing),
    /// fetched again unless that was done within the last minute.
    async fn keys(&self, issuer: &str, refetch: bool) -> Result<Arc<KeySet>, KeysOrRefusal> {
        if let Some(keys) = self.cached(issuer, refetch) {
            return Ok(keys);
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(keys) = self.cached(issuer, refetch) {
            return Ok(keys);
        }
        match self.fetch(issuer).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                let mut cache = self.cache.lock();
                if cache.len() >= MAX_ISSUERS && !cache.contains_key(issuer) {
                    let oldest = cache
                        .iter()
                        .min_by_key(|(_, cached)| cached.fetched_at)
                        .map(|(issuer, _)| issuer.clone());
                    if let Some(oldest) = oldest {
                        cache.remove(&oldest);
                    }
                }
                let now = Instant::now();
                cache.insert(
                    issuer.to_string(),
                    CachedKeys {
                        keys: keys.clone(),
                        fetched_at: now,
                        refetched_at: refetch.then_some(now),
                    },
                );
                Ok(keys)
            }
            Err(why) => {
                tracing::warn!(%issuer, "cannot fetch the issuer's keys: {why}");
                // Stale keys beat none while the issuer is unreachable; not again at once.
                let mut cache = self.cache.lock();
                match cache.get_mut(issuer) {
                    Some(cached) => {
                        if refetch {
                            cached.refetched_at = Some(Instant::now());
                        }
                        Ok(cached.keys.clone())
                    }
                    None => Err(KeysOrRefusal::Keys(format!(
                        "cannot fetch the keys of the issuer '{issuer}': {why}"
                    ))),
                }
            }
        }
    }

    async fn fetch(&self, issuer: &str) -> Result<KeySet, String> {
        let discovery_url = wi::discovery_url(issuer);
        let document = self.get(&discovery_url).await?;
        let keys_url = wi::keys_url(&document, issuer)
            .map_err(|err: DocumentError| format!("its discovery document {err}"))?;
        let keys = self.get(keys_url.as_str()).await?;
        KeySet::parse(&keys).map_err(|err| format!("its key set at {keys_url} {err}"))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| format!("GET {url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| format!("GET {url}: {err}"))?
        {
            if body.len() + chunk.len() > wi::MAX_DOCUMENT_BYTES {
                return Err(format!(
                    "GET {url}: larger than {} bytes",
                    wi::MAX_DOCUMENT_BYTES
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
