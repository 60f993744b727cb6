//! The Postern admin web portal: server-rendered HTML pages (maud) on the same listener as the
//! REST API. Administrators sign in with email and password; every page acts on the signed-in
//! administrator's account through the same `Store` calls as the API, so the same rules, the
//! same account scoping and the same audit log apply.

mod actors;
mod assets;
mod audit;
mod auth;
mod clients;
mod error;
mod form;
mod groups;
mod identity_providers;
mod oidc;
mod once;
mod policies;
mod resources;
mod settings;
mod sites;
mod tokens;
mod ui;
mod webhooks;
mod workload_identities;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use postern_api::AppState;

pub use error::WebError;

/// How the portal serves its pages.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// How long a sign-in lasts.
    pub session_lifetime: Duration,
    /// Mark the session cookie `Secure` (the portal is reached over HTTPS).
    pub secure_cookies: bool,
    /// Password checks (argon2id, ~19 MiB each) run at once; sign-ins beyond get 503.
    pub password_checks: usize,
    /// The URL people reach the portal at (`--public-url`, scheme and host, no trailing
    /// slash): the OIDC redirect URI and the SCIM base URL are built on it. Without it they
    /// follow the request's `Host`.
    pub public_url: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            session_lifetime: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            password_checks: 4,
            public_url: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct WebState {
    pub app: AppState,
    pub config: Arc<WebConfig>,
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// Sign-ins started through identity providers, per address: each one stores a pending
    /// sign-in and asks the provider for its discovery document.
    pub sign_in_starts: Arc<postern_api::AuthRateLimiter>,
}

impl WebState {
    pub fn store(&self) -> &postern_store::Store {
        &self.app.store
    }
}

/// The portal's pages and assets. Merge it with `postern_api::router`: the paths do not overlap
/// (`/v1/…` and `/healthz` belong to the API).
pub fn router(app: AppState, config: WebConfig) -> Router {
    let state = WebState {
        app,
        password_checks: Arc::new(tokio::sync::Semaphore::new(config.password_checks.max(1))),
        sign_in_starts: Arc::new(postern_api::AuthRateLimiter::new(
            oidc::STARTS_PER_MINUTE,
            Duration::from_secs(60),
        )),
        config: Arc::new(config),
    };
    spawn_session_sweeper(state.clone());
    Router::new()
        .route("/", get(|| async { Redirect::to("/actors") }))
        .route("/assets/{name}", get(assets::serve))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .merge(actors::routes())
        .merge(clients::routes())
        .merge(tokens::routes())
        .merge(settings::routes())
        .merge(groups::routes())
        .merge(resources::routes())
        .merge(sites::routes())
        .merge(policies::routes())
        .merge(audit::routes())
        .merge(webhooks::routes())
        .merge(workload_identities::routes())
        .merge(oidc::routes())
        .merge(identity_providers::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Deletes expired sessions now and then; an expired session is refused anyway.
fn spawn_session_sweeper(state: WebState) {
    let store = state.app.store.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(600));
        loop {
            ticker.tick().await;
            if let Err(err) = store.delete_expired_web_sessions(chrono::Utc::now()).await {
                tracing::warn!(error = %err, "could not delete expired web sessions");
            }
        }
    });
}

/// Headers for every page: no framing, no inline script, nothing from another origin, and no
/// caching of pages that show account data.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{self, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
