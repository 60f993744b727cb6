//! Errors of a page request, rendered as a page of their own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use postern_store::StoreError;

use crate::ui;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No valid session: go and sign in.
    #[error("not signed in")]
    SignIn,
    /// Signed in, but not as an admin: a person's own page instead.
    #[error("not an admin")]
    NotAdmin,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The form's CSRF token is missing or is not this session's.
    #[error("the form has expired")]
    Csrf,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            WebError::SignIn => return Redirect::to("/login").into_response(),
            WebError::NotAdmin => return Redirect::to("/me").into_response(),
            WebError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "Not found",
                format!("This {what} does not exist in your account, or it was deleted."),
            ),
            WebError::Store(StoreError::NotFound(what)) => (
                StatusCode::NOT_FOUND,
                "Not found",
                format!("This {what} does not exist in your account, or it was deleted."),
            ),
            WebError::Csrf => (
                StatusCode::FORBIDDEN,
                "The form has expired",
                "The form was not sent from this session. Go back, reload the page and try again."
                    .to_string(),
            ),
            WebError::BadRequest(detail) => {
                (StatusCode::BAD_REQUEST, "Bad request", detail.clone())
            }
            WebError::Store(StoreError::Validation(err)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid input",
                format!("{}: {}", err.field, err.message),
            ),
            WebError::Store(StoreError::Conflict(detail)) => {
                (StatusCode::CONFLICT, "Conflict", detail.clone())
            }
            WebError::Store(err) => {
                tracing::error!(error = %err, "web request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The portal could not complete the request. The details are in its log."
                        .to_string(),
                )
            }
        };
        (status, ui::bare_page(title, &ui::message(title, &detail))).into_response()
    }
}

pub type WebResult<T> = Result<T, WebError>;
