//! Webhooks: which events an account can subscribe to, which audited action raises which
//! event, the URL rule, the retry schedule and the signature receivers check. Pure: the caller
//! passes the instant.
//!
//! A delivery is signed like Stripe's and GitHub's: the header
//! `Postern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256>` where the MAC is keyed with the
//! webhook's secret over `"<t>.<raw body>"`. A receiver recomputes it, compares in constant
//! time and refuses a timestamp older than a few minutes (replays).

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::validate::ValidationError;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Postern-Signature";
/// The header that names the event type.
pub const EVENT_HEADER: &str = "Postern-Event";
/// The header that carries the delivery's id (the same on every retry: receivers deduplicate).
pub const DELIVERY_HEADER: &str = "Postern-Delivery";

/// How long a delivery is retried before it is given up.
pub const RETRY_FOR: Duration = Duration::hours(24);
/// The first retry's delay; each next one doubles, up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::seconds(10);
pub const MAX_RETRY_DELAY: Duration = Duration::hours(1);
/// The most webhooks one account may have.
pub const MAX_WEBHOOKS_PER_ACCOUNT: usize = 20;
/// Days before a token's expiry at which `token.expiring` is sent, once each.
pub const EXPIRY_NOTICE_DAYS: [u32; 3] = [30, 7, 1];

/// What a webhook can be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum WebhookEvent {
    #[serde(rename = "token.created")]
    TokenCreated,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    /// A token was rotated: `data` is the rotated token, with its successor and the end of
    /// the overlap window (its new `expires_at`).
    #[serde(rename = "token.rotated")]
    TokenRotated,
    /// A secret scanner found a token in public (it is revoked).
    #[serde(rename = "token.leaked")]
    TokenLeaked,
    /// A token expires in 30, 7 or 1 days (`data.days_before`).
    #[serde(rename = "token.expiring")]
    TokenExpiring,
    #[serde(rename = "device.blocked")]
    DeviceBlocked,
    #[serde(rename = "device.approved")]
    DeviceApproved,
    #[serde(rename = "device.removed")]
    DeviceRemoved,
    /// Sent only by "send test event", to the webhook it was asked for.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 9] = [
        WebhookEvent::TokenCreated,
        WebhookEvent::TokenRevoked,
        WebhookEvent::TokenRotated,
        WebhookEvent::TokenLeaked,
        WebhookEvent::TokenExpiring,
        WebhookEvent::DeviceBlocked,
        WebhookEvent::DeviceApproved,
        WebhookEvent::DeviceRemoved,
        WebhookEvent::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::TokenCreated => "token.created",
            WebhookEvent::TokenRevoked => "token.revoked",
            WebhookEvent::TokenRotated => "token.rotated",
            WebhookEvent::TokenLeaked => "token.leaked",
            WebhookEvent::TokenExpiring => "token.expiring",
            WebhookEvent::DeviceBlocked => "device.blocked",
            WebhookEvent::DeviceApproved => "device.approved",
            WebhookEvent::DeviceRemoved => "device.removed",
            WebhookEvent::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == text)
    }

    /// The event an audited action raises, if any.
    pub fn of_audit_action(action: &str) -> Option<Self> {
        match action {
            "token.create" => Some(WebhookEvent::TokenCreated),
            "token.revoke" => Some(WebhookEvent::TokenRevoked),
            "token.rotate" => Some(WebhookEvent::TokenRotated),
            "token.leaked" => Some(WebhookEvent::TokenLeaked),
            "client.block" => Some(WebhookEvent::DeviceBlocked),
            "client.approve" => Some(WebhookEvent::DeviceApproved),
            "client.remove" => Some(WebhookEvent::DeviceRemoved),
            _ => None,
        }
    }

    /// Whether a webhook may subscribe to it (the test event goes to whoever asks).
    pub fn subscribable(self) -> bool {
        self != WebhookEvent::WebhookTest
    }

    /// The names of the events a webhook may subscribe to, in the canonical order.
    pub fn subscribable_names() -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(|event| event.subscribable())
            .map(WebhookEvent::as_str)
    }
}

/// An account's webhook (its secret is shown once, at creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Webhook {
    pub id: uuid::Uuid,
    pub account_id: uuid::Uuid,
    pub url: String,
    pub description: Option<String>,
    /// The events it is sent.
    pub events: Vec<WebhookEvent>,
    /// A disabled webhook is sent nothing (deliveries already queued wait).
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet accepted by the receiver; tried again at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after a day of retries.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// One event sent (or to be sent) to one webhook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct WebhookDelivery {
    pub id: uuid::Uuid,
    pub webhook_id: uuid::Uuid,
    /// The event's id (the audit event's, for events that come from the audit log): the same
    /// in every webhook's delivery of it.
    pub event_id: uuid::Uuid,
    pub event_type: WebhookEvent,
    pub state: DeliveryState,
    /// Tries so far.
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last try failed (a status, a timeout, a refused connection).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The JSON body sent.
    pub payload: serde_json::Value,
}

/// Checks a webhook's URL: `https://`, or `http://` to this machine only (a receiver on the
/// portal's host); no credentials in it; at most 2048 characters.
pub fn validate_url(field: &str, text: &str) -> Result<url::Url, ValidationError> {
    let text = text.trim();
    if text.len() > 2048 {
        return Err(ValidationError::new(
            field,
            "must be at most 2048 characters",
        ));
    }
    let url = url::Url::parse(text)
        .map_err(|err| ValidationError::new(field, format!("is not a URL ({err})")))?;
    let Some(host) = url.host() else {
        return Err(ValidationError::new(field, "must name a host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValidationError::new(
            field,
            "must not carry credentials: deliveries are signed with the webhook's secret",
        ));
    }
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(ValidationError::new(
            field,
            "must be https:// (plain http:// only to this machine)",
        )),
        _ => Err(ValidationError::new(field, "must start with https://")),
    }
}

/// Checks a webhook's event list: not empty, known, subscribable; returns it without repeats
/// in the canonical order.
pub fn validate_events(
    field: &str,
    names: &[String],
) -> Result<Vec<WebhookEvent>, ValidationError> {
    if names.is_empty() {
        return Err(ValidationError::new(field, "must name at least one event"));
    }
    let mut events = Vec::new();
    for name in names {
        let event = WebhookEvent::parse(name.trim())
            .filter(|event| event.subscribable())
            .ok_or_else(|| {
                let known: Vec<&str> = WebhookEvent::subscribable_names().collect();
                ValidationError::new(
                    field,
                    format!(
                        "'{}' is not an event (events: {})",
                        name.trim(),
                        known.join(", ")
                    ),
                )
            })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    events.sort_by_key(|event| WebhookEvent::ALL.iter().position(|e| e == event));
    Ok(events)
}

/// When a delivery that has failed `attempts` times is tried next — `first_delay` after the
/// first failure, doubling up to [`MAX_RETRY_DELAY`] — or `None` when it is given up (its next
/// try would fall more than [`RETRY_FOR`] after it was created).
pub fn next_attempt(
    created_at: DateTime<Utc>,
    attempts: u32,
    now: DateTime<Utc>,
    first_delay: Duration,
) -> Option<DateTime<Utc>> {
    let doublings = attempts.saturating_sub(1).min(16);
    let delay = (first_delay * 2_i32.pow(doublings)).min(MAX_RETRY_DELAY);
    let next = now + delay;
    (next <= created_at + RETRY_FOR).then_some(next)
}

/// The value of the [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex_mac(secret, timestamp, body))
}

/// Checks a [`SIGNATURE_HEADER`] value, as a receiver does: the MAC in constant time, and the
/// timestamp within `tolerance` of `now`.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> bool {
    let mut timestamp = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => macs.push(value),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if (now.timestamp() - timestamp).abs() > tolerance.num_seconds() {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    macs.iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|bytes| mac.clone().verify_slice(&bytes).is_ok())
    })
}

fn hex_mac(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length: new_from_slice cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_and_time_only() {
        let now = Utc::now();
        let body = br#"{"type":"token.revoked"}"#;
        let header = signature(b"whsec", now.timestamp(), body);
        assert!(header.starts_with(&format!("t={},v1=", now.timestamp())));
        let minutes = Duration::minutes(5);
        assert!(verify_signature(b"whsec", &header, body, now, minutes));
        assert!(!verify_signature(b"other", &header, body, now, minutes));
        assert!(!verify_signature(b"whsec", &header, b"{}", now, minutes));
        let later = now + Duration::minutes(6);
        assert!(
            !verify_signature(b"whsec", &header, body, later, minutes),
            "a replay"
        );
        assert!(!verify_signature(b"whsec", "v1=00", body, now, minutes));
        assert!(!verify_signature(b"whsec", "t=x,v1=zz", body, now, minutes));
    }

    #[test]
    fn retries_double_from_ten_seconds_to_an_hour_for_a_day() {
        let created = Utc::now();
        let delays: Vec<i64> = (1..=12)
            .map(|n| {
                let next = next_attempt(created, n, created, FIRST_RETRY_DELAY).unwrap();
                (next - created).num_seconds()
            })
            .collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
        );
        let almost_a_day = created + Duration::hours(23) + Duration::minutes(30);
        assert_eq!(
            next_attempt(created, 20, almost_a_day, FIRST_RETRY_DELAY),
            None
        );
        let earlier = created + Duration::hours(22);
        assert!(next_attempt(created, 20, earlier, FIRST_RETRY_DELAY).is_some());
    }

    #[test]
    fn urls_must_be_https_or_this_machine() {
        assert!(validate_url("url", "https://hooks.example.com/postern").is_ok());
        assert!(validate_url("url", "http://127.0.0.1:9000/hook").is_ok());
        assert!(validate_url("url", "http://localhost/hook").is_ok());
        assert!(validate_url("url", "http://[::1]:9000/").is_ok());
        for bad in [
            "http://hooks.example.com/",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
            "https://",
        ] {
            assert!(validate_url("url", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_are_known_and_kept_once_in_order() {
        let names = ["token.revoked", "token.created", "token.revoked"].map(String::from);
        assert_eq!(
            validate_events("events", &names).unwrap(),
            [WebhookEvent::TokenCreated, WebhookEvent::TokenRevoked]
        );
        let err = validate_events("events", &["token.exploded".to_string()]).unwrap_err();
        assert!(err.message.contains("token.expiring"), "{}", err.message);
        assert!(validate_events("events", &[]).is_err());
        assert!(validate_events("events", &["webhook.test".to_string()]).is_err());
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
            assert_eq!(
                serde_json::to_value(event).unwrap(),
                serde_json::Value::String(event.as_str().into())
            );
        }
    }
}
