//! The Postern REST API: routing, authentication, JSON shapes, `application/problem+json`
//! errors and the OpenAPI document. A thin shell: every rule lives in the domain and the store.

mod account;
mod actors;
mod audit;
mod client_addr;
mod devices;
mod error;
mod extract;
mod groups;
mod identity_providers;
mod leaks;
mod openapi;
mod policies;
mod rate_limit;
mod resources;
mod schema_rules;
mod scim;
mod server;
mod shapes;
mod sites;
mod tls;
mod tokens;
mod webhooks;
mod workload_identity;
mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use postern_store::Store;

pub use error::ApiError;
pub use openapi::{openapi_document, openapi_json};

pub use client_addr::{source_ip, ClientAddr, ForwardedHeader, TrustedProxies};
pub use leaks::{GithubKeysFile, KeysFileError};
pub use rate_limit::AuthRateLimiter;
pub use server::{HttpLimits, ServerConfig};
pub use tls::{ReloadingCertificate, TlsError, TlsFiles};

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth_limiter: Arc<AuthRateLimiter>,
    pub hub: postern_sessions::Hub,
    /// GitHub's secret-scanning keys, when the portal takes GitHub's leak reports.
    pub github_keys: Option<Arc<GithubKeysFile>>,
    /// OIDC issuers' keys, for workload identity exchanges.
    pub issuer_keys: Arc<workload_identity::IssuerKeys>,
}

impl AppState {
    pub fn new(store: Store) -> Self {
        Self::with_sessions(store, postern_sessions::SessionsConfig::default())
    }

    /// With the limits and lifetimes of device sessions set (`postern serve` flags).
    pub fn with_sessions(store: Store, sessions: postern_sessions::SessionsConfig) -> Self {
        Self {
            hub: postern_sessions::Hub::with_config(store.clone(), sessions),
            store,
            auth_limiter: Arc::new(AuthRateLimiter::default()),
            github_keys: None,
            issuer_keys: Arc::new(workload_identity::IssuerKeys::default()),
        }
    }
}

/// Readiness for a load balancer: 200 while the database answers within 2 s, else 503 (the
/// node cannot authenticate anyone nor write anything, so traffic should go elsewhere).
/// `/healthz` says only that the process serves HTTP.
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, error::ApiError> {
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.store.ping_database(),
    )
    .await;
    match ping {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "not ready: the database does not answer");
            Err(error::ApiError::unavailable(
                "the database does not answer",
                5,
            ))
        }
        Err(_) => Err(error::ApiError::unavailable(
            "the database does not answer within 2 s",
            5,
        )),
    }
}

/// The portal's HTTP routes: `/v1/...`, `/healthz` and `/readyz`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(account::routes())
        .merge(actors::routes())
        .merge(tokens::routes())
        .merge(leaks::routes())
        .merge(groups::routes())
        .merge(identity_providers::routes())
        .merge(scim::routes())
        .merge(sites::routes())
        .merge(resources::routes())
        .merge(policies::routes())
        .merge(audit::routes())
        .merge(openapi::routes())
        .merge(ws::routes())
        .merge(devices::routes())
        .merge(webhooks::routes())
        .merge(workload_identity::routes())
        .fallback(error::not_found_fallback)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the router on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = state.hub.clone();
    let shutdown = async move {
        shutdown.await;
        hub.shutdown(std::time::Duration::from_secs(2)).await;
    };
    serve_with(listener, router(state), shutdown).await
}

/// Serves any router (for example the API merged with the web portal) on `listener` until
/// `shutdown` completes, with the peer address available to extractors and the default
/// [`HttpLimits`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, router, shutdown, ServerConfig::default()).await
}

/// The same with chosen limits, trusted proxies and TLS.
pub async fn serve_with_config(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ServerConfig,
) -> std::io::Result<()> {
    server::serve(listener, router, shutdown, config).await
}
