//! The portal's HTTP listener: hyper's connection handling with the limits an internet-facing
//! server needs, which `axum::serve` does not set (it runs without a timer). A connection must
//! send a request's headers within the header-read timeout — also the longest an idle
//! keep-alive connection waits for its next request — so connections trickling bytes cannot
//! hold the portal; at most `max_connections` are served at once (more are closed as they are
//! accepted, before the process runs out of file descriptors); request bodies are limited.
//! A WebSocket session keeps its connection's place until it ends; once upgraded, its timing is
//! the session layer's (heartbeats, write timeouts). With a certificate, every connection is
//! TLS (HTTPS and WSS), its handshake bounded by the header-read timeout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::client_addr::{ClientAddr, TrustedProxies};

/// File descriptors kept for everything but client connections (database, files, logs).
const RESERVED_FDS: usize = 512;
/// How long a stopping portal waits for open requests to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// A connection's place among the `max_connections`, held by the connection and by a
/// WebSocket session it was upgraded to: freed when both have ended.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// Limits of the portal's HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request's headers must have arrived by then; an idle keep-alive connection is closed
    /// after as long without a new request.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// The largest request body, in bytes.
    pub body_limit: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: open_file_limit().saturating_sub(RESERVED_FDS).max(64),
            body_limit: 1 << 20,
        }
    }
}

/// The process's open-file limit (soft), or 1024 when it cannot be read.
fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if read != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(1024)
}

/// How the portal's listener serves: its limits, the proxies in front of it, TLS.
#[derive(Clone, Default)]
pub struct ServerConfig {
    pub limits: HttpLimits,
    pub trusted_proxies: TrustedProxies,
    /// HTTPS and WSS with this configuration (`ReloadingCertificate::server_config`, whose
    /// certificate follows its files); plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `router` on `listener` with `config` until `shutdown` completes, then waits a few
/// seconds for open requests to finish. Extractors see the TCP peer as
/// `ConnectInfo<SocketAddr>` and the client, as trusted proxies tell it, as [`ClientAddr`].
/// Records each request's duration by method, route template (not the path: ids would make a
/// series each) and status.
async fn time_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || "unmatched".to_string(),
            |path| route_label(path.as_str()),
        );
    let response = next.run(request).await;
    metrics::histogram!(
        postern_metrics::HTTP_REQUEST_DURATION,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// A route template as a label: `/v1/actors/:id` rather than axum's `/v1/actors/{id}`, since
/// some text-format parsers trip over braces inside label values.
fn route_label(template: &str) -> String {
    template
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => segment.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ServerConfig,
) -> std::io::Result<()> {
    let ServerConfig {
        limits,
        trusted_proxies,
        tls,
    } = config;
    let trusted_proxies = Arc::new(trusted_proxies);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let router = router
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .layer(axum::middleware::from_fn(time_request));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let mut refused_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(%peer, max = limits.max_connections, "closing new connections: the portal serves as many as it may");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = ConnectionSlot(Arc::new(permit));
        let router = router.clone();
        let connection_slot = slot.clone();
        let proxies = trusted_proxies.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                let client = proxies.client_address(peer.ip(), request.headers());
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(ClientAddr(client));
                request.extensions_mut().insert(connection_slot.clone());
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(
                        router
                            .oneshot(request)
                            .await
                            .unwrap_or_else(|never| match never {}),
                    )
                }
            });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection).await
                    }
                    Some(acceptor) => {
                        // The handshake is bounded like a request's headers.
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(err)) => {
                                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection).await
                    }
                };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("stopped waiting for open connections");
    }
    Ok(())
}
