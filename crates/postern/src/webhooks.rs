//! The webhook delivery loop of `postern serve`: every second it claims the deliveries that
//! are due (on any node, each is claimed by one node at a time), POSTs each signed to its
//! webhook's URL, and records the outcome; every minute it queues `token.expiring` notices and
//! drops deliveries that ended more than 30 days ago.

use std::time::Duration;

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use postern_domain::webhooks::{self, DeliveryState};
use postern_store::{DeliveryOutcome, DueDelivery, Store};

/// Deliveries claimed at once (and sent concurrently).
const BATCH: u32 = 32;
/// How long a claim holds: past it another node may send the delivery (this one stopped).
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// The receiver's whole answer must come within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often expiring tokens are looked for.
const EXPIRY_SCAN: Duration = Duration::from_secs(60);
/// The most of a receiver's error body kept in the delivery log.
const MAX_ERROR: usize = 200;
/// How long ended deliveries stay in the log.
const KEEP_DELIVERIES: chrono::Duration = chrono::Duration::days(30);

pub struct Deliverer {
    store: Store,
    http: reqwest::Client,
    first_retry: chrono::Duration,
}

impl Deliverer {
    /// Retries start `first_retry` after the first failure and double from there.
    pub fn new(store: Store, first_retry: chrono::Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("postern-webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(TIMEOUT)
            // A receiver answers; it does not send the portal's requests elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            store,
            http,
            first_retry,
        })
    }

    /// Runs until the task is aborted, looking for due deliveries every `poll`.
    pub fn spawn(self, poll: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_scan: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                if last_scan.is_none_or(|at| at.elapsed() >= EXPIRY_SCAN) {
                    last_scan = Some(tokio::time::Instant::now());
                    match self.store.queue_expiry_notices(Utc::now()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tokens = n, "queued token.expiring webhook events"),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not look for expiring tokens")
                        }
                    }
                    let ended_before = Utc::now() - KEEP_DELIVERIES;
                    if let Err(err) = self.store.prune_deliveries(ended_before).await {
                        tracing::warn!(error = %err, "could not prune the webhook delivery log");
                    }
                    // Not a webhook's business, but the same minute's token housekeeping: a
                    // rotation's sealed successor is kept no longer than its window.
                    if let Err(err) = self.store.clear_ended_rotations(Utc::now()).await {
                        tracing::warn!(error = %err, "could not clear ended token rotations");
                    }
                    // And tokens exchanged for ID tokens (one per CI job) a week after they
                    // ended; the audit log keeps their record.
                    match self.store.purge_ended_exchanged_tokens(Utc::now()).await {
                        Ok(0) => {}
                        Ok(purged) => tracing::debug!(purged, "purged ended exchanged tokens"),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not purge ended exchanged tokens")
                        }
                    }
                }
                if let Err(err) = self.run_once().await {
                    tracing::warn!(error = %err, "webhook deliveries: will try again");
                }
            }
        })
    }

    /// Claims what is due now and sends it; returns how many were tried.
    pub async fn run_once(&self) -> Result<usize, postern_store::StoreError> {
        let due = self
            .store
            .claim_due_deliveries(Utc::now(), BATCH, LEASE)
            .await?;
        let tried = due.len();
        stream::iter(due)
            .for_each_concurrent(None, |delivery| async move {
                let outcome = self.send(&delivery).await;
                let finished = self
                    .store
                    .finish_delivery(&delivery, outcome, Utc::now(), self.first_retry)
                    .await;
                match finished {
                    Ok(state) => {
                        let outcome = match state {
                            DeliveryState::Delivered => "delivered",
                            DeliveryState::Pending => "retry",
                            DeliveryState::Failed => "failed",
                        };
                        metrics::counter!(postern_metrics::WEBHOOK_DELIVERIES, "outcome" => outcome)
                            .increment(1);
                        if state == DeliveryState::Failed {
                            tracing::warn!(delivery = %delivery.id, webhook = %delivery.webhook_id, "gave up a webhook delivery after a day of retries");
                        }
                    }
                    // The claim runs out and the delivery is tried again: at least once.
                    Err(err) => tracing::warn!(error = %err, delivery = %delivery.id, "could not record a webhook delivery"),
                }
            })
            .await;
        Ok(tried)
    }

    async fn send(&self, delivery: &DueDelivery) -> DeliveryOutcome {
        let body = delivery.payload.clone().into_bytes();
        let signature =
            webhooks::signature(delivery.secret.as_bytes(), Utc::now().timestamp(), &body);
        let sent = self
            .http
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhooks::EVENT_HEADER, delivery.event_type.as_str())
            .header(webhooks::DELIVERY_HEADER, delivery.id.to_string())
            .header(webhooks::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                let error = if err.is_timeout() {
                    format!("no answer within {} s", TIMEOUT.as_secs())
                } else if err.is_connect() {
                    "could not connect".to_string()
                } else {
                    format!("the request failed: {}", without_url(&err))
                };
                return DeliveryOutcome::Failed {
                    status: None,
                    error,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return DeliveryOutcome::Delivered {
                status: status.as_u16(),
            };
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(MAX_ERROR).collect();
        DeliveryOutcome::Failed {
            status: Some(status.as_u16()),
            error: if excerpt.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {excerpt}")
            },
        }
    }
}

fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "the URL");
    }
    text
}
