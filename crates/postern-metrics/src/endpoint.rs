//! The recorder (`metrics-exporter-prometheus`) and the `/metrics` listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::describe;
#[cfg(test)]
use crate::{REVOCATION_FANOUT, SESSIONS, SESSION_CONNECTS};

/// Latency buckets, in seconds: from a tenth of a millisecond to half a minute.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the Prometheus recorder: {0}")]
    Recorder(String),
    #[error("cannot listen for metrics on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// The process's recorder: installed once, however many times asked for.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

impl Exporter {
    /// Installs the recorder (the first call) and describes every metric.
    pub fn install() -> Result<Exporter, MetricsError> {
        if let Some(exporter) = EXPORTER.get() {
            return Ok(exporter.clone());
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .map_err(|err| MetricsError::Recorder(err.to_string()))?
            .build_recorder();
        let handle = recorder.handle();
        // Another thread may have won the race: its recorder stays, this one is dropped.
        if metrics::set_global_recorder(recorder).is_err() {
            return EXPORTER
                .get()
                .cloned()
                .ok_or_else(|| MetricsError::Recorder("another recorder is installed".into()));
        }
        describe();
        Ok(EXPORTER.get_or_init(|| Exporter { handle }).clone())
    }

    /// The Prometheus text format of every metric recorded so far.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Binds `address` for the metrics endpoint (separate from the API, so it can stay private).
pub async fn bind(address: &str) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind {
            address: address.to_string(),
            source,
        })
}

/// Serves `GET /metrics` on `listener` until the process ends; `refresh` runs before each
/// scrape (gauges read from elsewhere, such as the database).
pub fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    refresh: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let address: Option<SocketAddr> = listener.local_addr().ok();
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let (exporter, refresh) = (exporter.clone(), refresh.clone());
            async move {
                refresh().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    exporter.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(?address, error = %err, "the metrics endpoint failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_endpoint_serves_what_was_recorded_in_the_text_format() {
        let exporter = Exporter::install().expect("a recorder");
        assert!(Exporter::install().is_ok(), "a second install is the same");
        metrics::counter!(SESSION_CONNECTS, "kind" => "client").increment(3);
        metrics::gauge!(SESSIONS, "kind" => "client", "account" => "acme").set(2.0);
        metrics::histogram!(REVOCATION_FANOUT).record(0.003);
        let listener = bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        serve(listener, exporter, || async {});
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        let body = response.split("\r\n\r\n").nth(1).expect("a body");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value(SESSION_CONNECTS),
            Some(prometheus_parse::Value::Counter(3.0))
        );
        assert_eq!(value(SESSIONS), Some(prometheus_parse::Value::Gauge(2.0)));
        assert!(
            matches!(
                value(REVOCATION_FANOUT),
                Some(prometheus_parse::Value::Histogram(_))
            ),
            "{body}"
        );
        assert!(body.contains("# HELP postern_sessions "), "{body}");
    }
}
