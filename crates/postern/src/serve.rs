//! `postern serve`: opens the database, serves the REST API and the admin web portal on one
//! listener, shuts down gracefully.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ipnet::IpNet;
use postern_api::{ForwardedHeader, ReloadingCertificate, ServerConfig, TlsFiles, TrustedProxies};
use postern_domain::ActorType;
use postern_store::{ActorFilter, Page, Store};

use crate::local::DbOpts;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free port)
    #[arg(
        long,
        env = "POSTERN_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: String,
    /// How long an administrator stays signed in to the web portal (e.g. 12h, 7d)
    #[arg(
        long,
        env = "POSTERN_WEB_SESSION_LIFETIME",
        default_value = "12h",
        value_name = "DURATION"
    )]
    web_session_lifetime: String,
    /// The URL people reach the portal at (e.g. https://postern.example.com, behind a proxy):
    /// the OIDC redirect URI and the SCIM base URL are built on it (else on the request's
    /// Host); https://… marks the session cookie Secure
    #[arg(long, env = "POSTERN_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// The longest an authorization at a gateway lasts before the portal must renew it (it
    /// also ends with the token and the allowing time window). Renewed while the client's
    /// session and policy hold; bounds how long a withdrawal lost in a partition can live,
    /// and how long tunnels survive a portal outage (5m to 30d)
    #[arg(
        long,
        env = "POSTERN_AUTHORIZATION_LIFETIME",
        default_value = "24h",
        value_name = "DURATION"
    )]
    authorization_lifetime: String,
    /// Serve HTTPS and WSS with this PEM certificate chain (with --tls-key). Replaced without
    /// dropping sessions when the file changes or on SIGHUP
    #[arg(
        long,
        env = "POSTERN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(
        long,
        env = "POSTERN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A reverse proxy (address or CIDR, repeatable) whose --forwarded-header is believed: the
    /// client address it names then drives policy conditions, rate limits, audit and last use.
    /// Requests from any other peer are attributed to that peer, whatever headers they carry
    #[arg(
        long = "trusted-proxy",
        env = "POSTERN_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_network
    )]
    trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies set: x-forwarded-for (nginx, HAProxy, Caddy) or forwarded
    /// (RFC 7239). Only this one is read: the other may come from the client untouched
    #[arg(
        long,
        env = "POSTERN_FORWARDED_HEADER",
        default_value = "x-forwarded-for",
        value_name = "HEADER"
    )]
    forwarded_header: ForwardedHeader,
    /// Failed API and device authentications allowed per source address (IPv6: per /64) in a
    /// minute; the next ones get 429 with Retry-After until the minute ends
    #[arg(
        long,
        env = "POSTERN_FAILED_AUTH_LIMIT",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    failed_auth_limit: u32,
    /// Take GitHub's secret-scanning reports at POST /v1/secret-scanning/github: a token of this
    /// portal that GitHub finds in public is revoked at once. FILE is GitHub's signing keys in
    /// the JSON of https://api.github.com/meta/public_keys/secret_scanning (saved by the
    /// operator: the portal makes no outbound call); read again when it changes
    #[arg(long, env = "POSTERN_GITHUB_SECRET_SCANNING_KEYS", value_name = "FILE")]
    github_secret_scanning_keys: Option<PathBuf>,
    /// How often the portal removes vanished ephemeral devices and devices unseen for long
    /// (the timeouts are account settings; every node may sweep, each device goes once)
    #[arg(
        long,
        env = "POSTERN_DEVICE_SWEEP_INTERVAL",
        default_value = "1m",
        value_name = "DURATION"
    )]
    device_sweep_interval: String,
    /// How long after a webhook delivery's first failure it is tried again; each next retry
    /// waits twice as long, up to 1 h, for a day in all
    #[arg(
        long,
        env = "POSTERN_WEBHOOK_FIRST_RETRY",
        default_value = "10s",
        value_name = "DURATION"
    )]
    webhook_first_retry: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (a listener of its own: keep it
    /// private). Off by default. The metrics are listed in docs/metrics.md
    #[arg(long, env = "POSTERN_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    db: DbOpts,
}

/// An address or a network: `10.0.0.5`, `10.0.0.0/8`, `fd00::/8`.
fn parse_network(value: &str) -> Result<IpNet, String> {
    if let Ok(address) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    value
        .parse::<IpNet>()
        .map(|network| network.trunc())
        .map_err(|_| format!("'{value}' is not an IP address or a CIDR such as 10.0.0.0/8"))
}

impl ServeArgs {
    fn sessions_config(&self) -> anyhow::Result<postern_sessions::SessionsConfig> {
        let lifetime = postern_domain::rules::parse_duration(&self.authorization_lifetime)
            .map_err(|err| anyhow!("--authorization-lifetime: {}", err.message))?;
        if lifetime < chrono::Duration::minutes(5) || lifetime > chrono::Duration::days(30) {
            return Err(anyhow!(
                "--authorization-lifetime must be between 5m and 30d, got {}",
                self.authorization_lifetime
            ));
        }
        Ok(postern_sessions::SessionsConfig {
            authorization_lifetime: lifetime,
            ..Default::default()
        })
    }

    fn web_config(&self) -> anyhow::Result<postern_web::WebConfig> {
        let lifetime = postern_domain::rules::parse_duration(&self.web_session_lifetime)
            .map_err(|err| anyhow!("--web-session-lifetime: {}", err.message))?
            .to_std()
            .context("--web-session-lifetime is out of range")?;
        let public_url = self.public_url.as_deref().map(public_url).transpose()?;
        Ok(postern_web::WebConfig {
            session_lifetime: lifetime,
            secure_cookies: self.tls_cert.is_some()
                || public_url
                    .as_deref()
                    .is_some_and(|url| url.starts_with("https://")),
            public_url,
            ..Default::default()
        })
    }
}

/// `--public-url` as the portal's links are built on it: `http(s)://host[:port][/path]`,
/// lower-case scheme and host, no trailing slash, no query or fragment.
fn public_url(value: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(value)
        .map_err(|err| anyhow!("--public-url '{value}' is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(anyhow!(
            "--public-url '{value}' must be http:// or https:// with a host, such as https://postern.example.com"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(anyhow!(
            "--public-url '{value}' must not carry credentials, a query or a fragment"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl ServeArgs {
    fn tls(&self) -> anyhow::Result<Option<Arc<ReloadingCertificate>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        Ok(Some(ReloadingCertificate::load(files)?))
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.web_config()?;
    args.sessions_config()?;
    let tls = args.tls()?;
    let store = args.db.open().await?;
    let result = serve(&args, &store, tls).await;
    store.close().await;
    result
}

async fn serve(
    args: &ServeArgs,
    store: &Store,
    tls: Option<Arc<ReloadingCertificate>>,
) -> anyhow::Result<()> {
    let (account, created) = store.ensure_default_account().await?;
    if created || !has_administrators(store, account.id).await? {
        tracing::info!(
            "no administrators yet: create an API token with 'postern api-token create --name admin-cli {}'",
            args.db.flags_for_display()
        );
    }
    let _flusher = store.spawn_usage_flusher(Duration::from_secs(2));
    let _change_listener = store.spawn_change_listener();
    let _heartbeat = store.spawn_node_heartbeat();
    let shutdown = shutdown_signal()?;
    let listener = bind(&args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address the portal listens on")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let _reloader = match &tls {
        Some(certificate) => Some(
            certificate
                .spawn_reloader()
                .context("cannot listen for SIGHUP")?,
        ),
        None => None,
    };
    tracing::info!("listening on {scheme}://{address}");
    if !args.trusted_proxies.is_empty() {
        tracing::info!(
            proxies = ?args.trusted_proxies,
            header = ?args.forwarded_header,
            "client addresses from trusted proxies"
        );
    }
    let mut state = postern_api::AppState::with_sessions(store.clone(), args.sessions_config()?);
    state.auth_limiter = Arc::new(postern_api::AuthRateLimiter::new(
        args.failed_auth_limit,
        Duration::from_secs(60),
    ));
    if let Some(path) = &args.github_secret_scanning_keys {
        let keys = postern_api::GithubKeysFile::load(path.clone())?;
        tracing::info!(path = %path.display(), "taking GitHub secret-scanning reports at /v1/secret-scanning/github");
        state.github_keys = Some(Arc::new(keys));
    }
    let hub = state.hub.clone();
    let sweep_interval = postern_domain::rules::parse_duration(&args.device_sweep_interval)
        .map_err(|err| anyhow!("--device-sweep-interval: {}", err.message))?
        .to_std()
        .ok()
        .filter(|period| !period.is_zero())
        .context("--device-sweep-interval must be longer than 0")?;
    let _sweep = hub.spawn_device_sweep(sweep_interval);
    let first_retry = postern_domain::rules::parse_duration(&args.webhook_first_retry)
        .map_err(|err| anyhow!("--webhook-first-retry: {}", err.message))?;
    let _webhooks =
        crate::webhooks::Deliverer::new(store.clone(), first_retry)?.spawn(Duration::from_secs(1));
    let _metrics = match &args.metrics_listen {
        Some(address) => Some(serve_metrics(address, store.clone()).await?),
        None => None,
    };
    let router =
        postern_api::router(state.clone()).merge(postern_web::router(state, args.web_config()?));
    tracing::info!("admin web portal on {scheme}://{address}/");
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: telling connected clients and gateways");
        hub.shutdown(Duration::from_secs(2)).await;
    };
    let tls = match &tls {
        Some(certificate) => Some(certificate.server_config()?),
        None => None,
    };
    let config = ServerConfig {
        trusted_proxies: TrustedProxies::new(args.trusted_proxies.clone(), args.forwarded_header),
        tls,
        ..Default::default()
    };
    postern_api::serve_with_config(listener, router, shutdown, config)
        .await
        .context("the HTTP server failed")?;
    tracing::info!("shut down");
    Ok(())
}

async fn has_administrators(store: &Store, account_id: uuid::Uuid) -> anyhow::Result<bool> {
    for actor_type in [ActorType::ApiClient, ActorType::Admin] {
        let filter = ActorFilter {
            actor_type: Some(actor_type),
            name_contains: None,
        };
        let page = Page {
            limit: 1,
            cursor: None,
        };
        if !store
            .list_actors(account_id, &filter, page)
            .await?
            .items
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow!(
            "cannot listen on {listen}: address in use — is another portal running? use --listen"
        )),
        Err(err) => Err(anyhow!("cannot listen on {listen}: {err}")),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed before this returns, so a signal
/// sent right after "listening on" is already seen as a shutdown request.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}

/// Starts the metrics endpoint; the gauges read from the database are refreshed at each scrape.
async fn serve_metrics(address: &str, store: Store) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let exporter = postern_metrics::Exporter::install()?;
    let listener = postern_metrics::bind(address).await?;
    let bound = listener
        .local_addr()
        .context("cannot read the metrics listener's address")?;
    tracing::info!("metrics on http://{bound}/metrics");
    let reported = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    Ok(postern_metrics::serve(listener, exporter, move || {
        let (store, reported) = (store.clone(), reported.clone());
        async move { refresh_gauges(&store, &reported).await }
    }))
}

/// The database pool and the tokens expiring within 7 and 30 days, per account; an account
/// whose count fell to none is set to 0 rather than left at its last value.
async fn refresh_gauges(
    store: &Store,
    reported: &parking_lot::Mutex<std::collections::HashSet<(String, &'static str)>>,
) {
    let (open, idle) = store.pool_connections();
    let in_use = f64::from(open) - idle as f64;
    metrics::gauge!(postern_metrics::DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    metrics::gauge!(postern_metrics::DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use.max(0.0));
    let now = chrono::Utc::now();
    let mut seen = std::collections::HashSet::new();
    for (within, days) in [("7d", 7), ("30d", 30)] {
        let counts = match store
            .count_tokens_expiring(now, now + chrono::Duration::days(days))
            .await
        {
            Ok(counts) => counts,
            Err(err) => {
                tracing::warn!(error = %err, "cannot count the tokens expiring soon");
                return;
            }
        };
        for (account, count) in counts {
            metrics::gauge!(postern_metrics::TOKENS_EXPIRING, "account" => account.clone(), "within" => within)
                .set(count as f64);
            seen.insert((account, within));
        }
    }
    let mut reported = reported.lock();
    for (account, within) in reported.difference(&seen) {
        metrics::gauge!(postern_metrics::TOKENS_EXPIRING, "account" => account.clone(), "within" => *within)
            .set(0.0);
    }
    *reported = seen;
}

#[cfg(test)]
mod public_url_tests {
    use super::public_url;

    #[test]
    fn public_urls_are_normalised_and_bad_ones_named() {
        assert_eq!(
            public_url("HTTPS://Postern.Example.com/").unwrap(),
            "https://postern.example.com"
        );
        assert_eq!(
            public_url("https://example.com:8443/postern/").unwrap(),
            "https://example.com:8443/postern"
        );
        for bad in [
            "postern.example.com",
            "ftp://example.com",
            "https://example.com/?a=1",
            "https://user:pw@example.com",
            "https://example.com/#x",
        ] {
            let err = public_url(bad).unwrap_err().to_string();
            assert!(err.contains("--public-url"), "{bad}: {err}");
        }
    }
}
