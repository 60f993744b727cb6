//! `application/problem+json` errors (RFC 9457) with stable `type` URIs and human `detail`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use postern_store::{AuthError, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem document. `type` is stable for scripts; `detail` is for people; `field` names the
/// request field at fault when there is one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(field: Option<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
        .with_field(field)
    }

    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid field",
            detail,
        )
        .with_field(Some(field.into()))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("{what} not found"),
        )
    }

    /// Not found, with a sentence that says what is missing and why.
    pub fn not_found_because(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication failed",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// The token works, but the device may not use it: the problem type is
    /// [`postern_protocol::DEVICE_REFUSED_PROBLEM`], on which devices exit without retrying.
    pub fn device_refused(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "device-refused",
            "Device refused",
            detail,
        )
    }

    /// The token serves as many devices as its `max_clients` allows: the problem type is
    /// [`postern_protocol::TOKEN_LIMIT_PROBLEM`], on which clients exit without retrying.
    pub fn token_limit(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "token-limit",
            "Token at its device limit",
            detail,
        )
    }

    /// A request body over the portal's limit (`HttpLimits::body_limit`).
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            "the request body is larger than the portal accepts (1 MiB by default)".to_string(),
        )
    }

    /// Why a body could not be read: too large (413) or cut short (400).
    pub fn body(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::payload_too_large();
        }
        Self::bad_request(Some("body".to_string()), rejection.body_text())
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many failed authentications",
            format!(
                "too many failed authentications from this address; retry in {retry_after_secs} s"
            ),
        );
        err.retry_after = Some(retry_after_secs);
        err
    }

    pub fn upgrade_required(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "Upgrade required",
            detail,
        )
    }

    /// 503 with `Retry-After`: a passing condition; clients retry.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        err.retry_after = Some(retry_after_secs);
        err
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the portal could not complete the request; see its log",
        )
    }

    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    fn with_field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The last part of the problem type, such as `token-limit`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Validation(v) => ApiError::validation(v.field, v.message),
            StoreError::Conflict(detail) => ApiError::conflict(detail),
            StoreError::Database(err) => {
                // The database's words stay in the log; the caller learns only to retry.
                tracing::error!(error = %err, "database error");
                ApiError::unavailable("the portal cannot use its database right now; retry", 1)
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::internal()
            }
        }
    }
}

impl From<postern_domain::ValidationError> for ApiError {
    fn from(err: postern_domain::ValidationError) -> Self {
        ApiError::validation(err.field, err.message)
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Store(store) => store.into(),
            other => ApiError::unauthorized(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            problem_type: format!("urn:postern:problem:{}", self.kind),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let mut response = (self.status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) async fn not_found_fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such endpoint; see /v1/openapi.json",
    )
}
