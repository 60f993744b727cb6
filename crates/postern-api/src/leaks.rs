//! Leaked tokens: `POST /v1/tokens/revoke-presented` (whoever holds a token revokes it with it)
//! and `POST /v1/secret-scanning/github` (GitHub's secret-scanning partner endpoint). Neither
//! takes an API token: holding the leaked token, or GitHub's signature, is the credential.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use postern_secret_scanning::{Label, SigningKeys, Verdict};
use postern_store::{PresentedToken, RevocationCause};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::client_addr::source_ip;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::shapes::Data;
use crate::AppState;

/// Who reported a token found by GitHub, in its audit event.
const GITHUB_REPORTER: &str = "github_secret_scanning";

/// The longest URL or source kept from a report (the audit entry holds it).
const MAX_REPORTED_TEXT: usize = 2048;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens/revoke-presented", post(revoke_presented))
        .route("/v1/secret-scanning/github", post(github_secret_scanning))
}

/// GitHub's secret-scanning signing keys, read from the operator's file and read again when
/// the file changes (checked on each report: a report is rare, a `stat` cheap).
pub struct GithubKeysFile {
    path: PathBuf,
    loaded: parking_lot::Mutex<(Option<SystemTime>, Arc<SigningKeys>)>,
}

/// Why the keys file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read the GitHub secret-scanning keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the GitHub secret-scanning keys file {path}: {source}")]
    Keys {
        path: String,
        source: postern_secret_scanning::KeysError,
    },
}

impl GithubKeysFile {
    /// Reads the file once; fails when it is not GitHub's public-keys JSON.
    pub fn load(path: PathBuf) -> Result<Self, KeysFileError> {
        let modified = modified(&path);
        let keys = read_keys(&path)?;
        Ok(Self {
            path,
            loaded: parking_lot::Mutex::new((modified, Arc::new(keys))),
        })
    }

    /// The keys, read again first if the file changed. A file that became unreadable or
    /// invalid keeps the previous keys (logged): a bad edit must not open or close the door.
    pub fn current(&self) -> Arc<SigningKeys> {
        let modified = modified(&self.path);
        let mut loaded = self.loaded.lock();
        if loaded.0 == modified {
            return loaded.1.clone();
        }
        loaded.0 = modified;
        match read_keys(&self.path) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "read the GitHub secret-scanning keys again");
                loaded.1 = Arc::new(keys);
            }
            Err(err) => {
                tracing::error!(error = %err, "keeping the previous GitHub secret-scanning keys")
            }
        }
        loaded.1.clone()
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_keys(path: &std::path::Path) -> Result<SigningKeys, KeysFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
        path: display.clone(),
        source,
    })?;
    SigningKeys::from_json(&text).map_err(|source| KeysFileError::Keys {
        path: display,
        source,
    })
}

/// A token presented to be revoked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresentedTokenRequest {
    /// The whole token, as issued (`postern_client_…`, `postern_gateway_…` or `postern_api_…`).
    #[schema(max_length = 256)]
    pub token: String,
}

/// The token revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresentedTokenRevoked {
    pub token_id: Uuid,
    /// `client`, `gateway` or `api`.
    pub kind: String,
    /// `false` when it had been revoked before (nothing changed).
    pub newly_revoked: bool,
}

#[utoipa::path(post, path = "/v1/tokens/revoke-presented", tag = "tokens",
    request_body = PresentedTokenRequest, security(()),
    responses((status = 200, description = "The token is revoked (or was already)", body = Data<PresentedTokenRevoked>),
        (status = 404, description = "The text is not a token of this portal", body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
/// Revokes the token given in the body: whoever holds a token may revoke it, with no other
/// credential (holding it is already the compromise). Unknown texts count as failed
/// authentications of the caller's address and are limited like them. Audited as
/// `token.revoke` with `revoked_because: presented`; every node ends the token's sessions at
/// once.
pub(crate) async fn revoke_presented(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<PresentedTokenRequest>,
) -> Result<Json<Data<PresentedTokenRevoked>>, ApiError> {
    let ip = source_ip(&parts);
    if let Some(retry_after) = state.auth_limiter.check(ip) {
        return Err(ApiError::too_many_requests(retry_after));
    }
    let outcome = state
        .store
        .revoke_presented(
            body.token.trim(),
            RevocationCause::Presented,
            ip.map(|ip| ip.to_string()),
        )
        .await?;
    match outcome {
        PresentedToken::Revoked {
            token_id,
            kind,
            newly_revoked,
            ..
        } => {
            tracing::info!(%token_id, newly_revoked, "a token was revoked by presenting it");
            Ok(Data::new(PresentedTokenRevoked {
                token_id,
                kind: kind.as_str().to_string(),
                newly_revoked,
            }))
        }
        PresentedToken::Unknown => {
            state.auth_limiter.record_failure(ip);
            Err(ApiError::not_found_because(
                "no token of this portal matches the presented text",
            ))
        }
    }
}

#[utoipa::path(post, path = "/v1/secret-scanning/github", tag = "tokens",
    request_body(content = String, description = "GitHub's report: a JSON array of `{token, type, url, source}`", content_type = "application/json"),
    security(()),
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "Which of GitHub's keys signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 of the DER ECDSA P-256 / SHA-256 signature of the raw body"),
    ),
    responses((status = 200, description = "One verdict per match, in GitHub's format", body = Vec<Verdict>),
        (status = 401, description = "The signature is missing, from an unknown key, or wrong; nothing was revoked", body = Problem),
        (status = 404, description = "Secret scanning is not enabled on this portal", body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
/// GitHub's secret-scanning partner endpoint: every match that is a token of this portal is
/// revoked at once (audited as `token.leaked` with the URL) and labelled `true_positive`;
/// anything else is `false_positive`. Enabled by `postern serve --github-secret-scanning-keys`.
pub(crate) async fn github_secret_scanning(
    State(state): State<AppState>,
    parts: Parts,
    body: Bytes,
) -> Result<Json<Vec<Verdict>>, ApiError> {
    let Some(keys_file) = state.github_keys.clone() else {
        return Err(ApiError::not_found_because(
            "GitHub secret scanning is not enabled on this portal (postern serve \
             --github-secret-scanning-keys FILE)",
        ));
    };
    let ip = source_ip(&parts);
    if let Some(retry_after) = state.auth_limiter.check(ip) {
        return Err(ApiError::too_many_requests(retry_after));
    }
    let headers = &parts.headers;
    let signed = keys_file.current().verify(
        header(headers, "github-public-key-identifier"),
        header(headers, "github-public-key-signature"),
        &body,
    );
    if let Err(err) = signed {
        state.auth_limiter.record_failure(ip);
        metrics::counter!(postern_metrics::AUTH_FAILURES, "surface" => "github_secret_scanning", "reason" => "signature").increment(1);
        tracing::warn!(error = %err, source_ip = ?ip, "refused a GitHub secret-scanning report");
        return Err(ApiError::unauthorized(err.to_string()));
    }
    let matches = postern_secret_scanning::parse_report(&body)
        .map_err(|err| ApiError::validation("body", err.to_string()))?;
    let mut verdicts = Vec::with_capacity(matches.len());
    for found in &matches {
        let outcome = state
            .store
            .revoke_presented(
                found.token.trim(),
                RevocationCause::Leaked {
                    reporter: GITHUB_REPORTER,
                    url: truncated(&found.url),
                    source: truncated(&found.source),
                },
                ip.map(|ip| ip.to_string()),
            )
            .await?;
        let label = match outcome {
            PresentedToken::Revoked {
                account_id,
                token_id,
                newly_revoked,
                ..
            } => {
                tracing::warn!(%account_id, %token_id, newly_revoked, url = truncated(&found.url), "GitHub found a token of this portal in public; revoked");
                Label::TruePositive
            }
            PresentedToken::Unknown => Label::FalsePositive,
        };
        verdicts.push(Verdict::new(found, label));
    }
    Ok(Json(verdicts))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn truncated(text: &str) -> &str {
    match text.char_indices().nth(MAX_REPORTED_TEXT) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
