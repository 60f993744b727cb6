//! The life of a device's session with the portal, without I/O: when to connect, when to send a
//! heartbeat, when the portal is taken for dead, how long to wait before reconnecting, and when
//! to give up. The binaries feed it events and the current instant and carry out its actions.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::backoff::Backoff;
use crate::messages::DisconnectReason;
use crate::{HEARTBEAT_INTERVAL, PEER_TIMEOUT};

/// Process exit codes, documented for supervisors.
pub mod exit_code {
    /// Stopped by SIGTERM or SIGINT.
    pub const STOPPED: i32 = 0;
    /// Anything else: the portal unreachable for longer than allowed, a protocol error.
    pub const FAILURE: i32 = 1;
    /// Bad configuration: missing or unreadable token, bad flags.
    pub const BAD_CONFIG: i32 = 2;
    /// The token was refused (unknown, expired, revoked, holder disabled or deleted): restarting
    /// will not help.
    pub const TOKEN_REJECTED: i32 = 3;
    /// The token works, but not for this device: an administrator blocked it, or it connects
    /// from outside the token's allowed networks. Restarting will not help until that changes.
    pub const DEVICE_REFUSED: i32 = 4;
    /// The token already serves as many devices as its `max_clients` allows. Restarting will
    /// not help until one of them stops or the limit is raised.
    pub const TOKEN_LIMIT: i32 = 5;
}

/// Why a connection attempt did not become a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// HTTP 401/403: the token was refused.
    Unauthorized(String),
    /// HTTP 403 with the problem type `…:device-refused`: the token works, this device may not
    /// use it.
    DeviceRefused(String),
    /// HTTP 403 with the problem type `…:token-limit`: the token serves as many devices as it
    /// may.
    TokenLimit(String),
    /// HTTP 426: this device speaks a protocol version the portal no longer accepts.
    UpgradeRequired(String),
    /// HTTP 400: the device's own parameters are wrong.
    BadRequest(String),
    /// Anything that may pass: network errors, 5xx, 429/503 (with `Retry-After`).
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection now.
    Connect,
    SendHeartbeat,
    /// Close the current connection (if any); a `Connect` follows after the delay.
    Reconnect {
        after: Duration,
        why: String,
    },
    /// Stop the process with this code.
    Exit {
        code: i32,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Connected,
    Waiting { until: Instant },
    Stopped { code: i32, message: String },
}

#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    backoff: Backoff,
    last_received: Instant,
    last_sent: Instant,
    offline_since: Option<Instant>,
    max_partition: Option<Duration>,
}

impl Connection {
    /// A session that starts by connecting. `max_partition` ends it after that long without a
    /// session.
    pub fn new(now: Instant, max_partition: Option<Duration>) -> Self {
        Self {
            phase: Phase::Connecting,
            backoff: Backoff::default(),
            last_received: now,
            last_sent: now,
            offline_since: Some(now),
            max_partition,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The WebSocket is open.
    pub fn on_connected(&mut self, now: Instant) {
        self.phase = Phase::Connected;
        self.backoff.reset();
        self.last_received = now;
        self.last_sent = now;
        self.offline_since = None;
    }

    pub fn on_received(&mut self, now: Instant) {
        self.last_received = now;
    }

    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// A connection attempt failed.
    pub fn on_connect_failed(
        &mut self,
        now: Instant,
        failure: ConnectFailure,
        rng: &mut impl Rng,
    ) -> Action {
        match failure {
            ConnectFailure::Unauthorized(message) => self.stop(
                exit_code::TOKEN_REJECTED,
                format!("the portal refused the token: {message}"),
            ),
            ConnectFailure::DeviceRefused(message) => self.stop(
                exit_code::DEVICE_REFUSED,
                format!("the portal refused this device: {message}"),
            ),
            ConnectFailure::TokenLimit(message) => self.stop(
                exit_code::TOKEN_LIMIT,
                format!("the token is at its limit of devices: {message}"),
            ),
            ConnectFailure::UpgradeRequired(message) => {
                self.stop(exit_code::FAILURE, format!("upgrade required: {message}"))
            }
            ConnectFailure::BadRequest(message) => self.stop(
                exit_code::BAD_CONFIG,
                format!("the portal refused this device's settings: {message}"),
            ),
            ConnectFailure::Transient {
                message,
                retry_after,
            } => self.schedule_reconnect(now, message, retry_after, rng),
        }
    }

    /// The session ended: the portal said why (`reason`), or the connection dropped (`None`).
    pub fn on_disconnected(
        &mut self,
        now: Instant,
        reason: Option<(DisconnectReason, String)>,
        rng: &mut impl Rng,
    ) -> Action {
        match reason {
            Some((
                DisconnectReason::DeviceBlocked | DisconnectReason::SourceNotAllowed,
                message,
            )) => self.stop(
                exit_code::DEVICE_REFUSED,
                format!("the portal ended the session: {message}"),
            ),
            Some((reason, message)) if reason.is_fatal() => self.stop(
                exit_code::TOKEN_REJECTED,
                format!("the portal ended the session: {message}"),
            ),
            Some((_, message)) => self.schedule_reconnect(now, message, None, rng),
            None => self.schedule_reconnect(
                now,
                "the connection to the portal was lost".to_string(),
                None,
                rng,
            ),
        }
    }

    /// The device was handed a new token (its token was rotated) and closed the session to
    /// open one with it: connect again at once.
    pub fn on_token_replaced(&mut self, now: Instant) -> Action {
        self.phase = Phase::Connecting;
        self.offline_since.get_or_insert(now);
        Action::Connect
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connected => Some(std::cmp::min(
                self.last_sent + HEARTBEAT_INTERVAL,
                self.last_received + PEER_TIMEOUT,
            )),
            Phase::Waiting { until } => Some(*until),
            Phase::Connecting | Phase::Stopped { .. } => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) -> Option<Action> {
        match self.phase.clone() {
            Phase::Connected if now >= self.last_received + PEER_TIMEOUT => {
                Some(self.schedule_reconnect(
                    now,
                    format!("no word from the portal for {} s", PEER_TIMEOUT.as_secs()),
                    None,
                    rng,
                ))
            }
            Phase::Connected if now >= self.last_sent + HEARTBEAT_INTERVAL => {
                self.last_sent = now;
                Some(Action::SendHeartbeat)
            }
            Phase::Waiting { until } if now >= until => {
                self.phase = Phase::Connecting;
                Some(Action::Connect)
            }
            _ => None,
        }
    }

    fn schedule_reconnect(
        &mut self,
        now: Instant,
        why: String,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Action {
        let offline_since = *self.offline_since.get_or_insert(now);
        if let Some(max) = self.max_partition {
            if now.duration_since(offline_since) >= max {
                return self.stop(
                    exit_code::FAILURE,
                    format!(
                        "no session with the portal for {} s (--max-partition-time): {why}",
                        max.as_secs()
                    ),
                );
            }
        }
        let after = self.backoff.next_delay(retry_after, rng);
        self.phase = Phase::Waiting { until: now + after };
        Action::Reconnect { after, why }
    }

    fn stop(&mut self, code: i32, message: String) -> Action {
        self.phase = Phase::Stopped {
            code,
            message: message.clone(),
        };
        Action::Exit { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(3)
    }

    #[test]
    fn heartbeats_every_interval_and_detects_a_dead_peer_within_30s() {
        let start = Instant::now();
        let mut rng = rng();
        let mut conn = Connection::new(start, None);
        conn.on_connected(start);
        assert_eq!(conn.poll_timeout(), Some(start + HEARTBEAT_INTERVAL));
        let at = start + HEARTBEAT_INTERVAL;
        assert_eq!(
            conn.handle_timeout(at, &mut rng),
            Some(Action::SendHeartbeat)
        );
        // The portal stays silent: at 30 s the session is taken for dead.
        let mut reconnect = None;
        while reconnect.is_none() {
            let now = conn.poll_timeout().unwrap();
            if let Some(Action::Reconnect { .. }) = conn.handle_timeout(now, &mut rng) {
                reconnect = Some(now);
            }
        }
        assert_eq!(reconnect.unwrap(), start + PEER_TIMEOUT);
        assert!(matches!(conn.phase(), Phase::Waiting { .. }));
        let until = conn.poll_timeout().unwrap();
        assert_eq!(conn.handle_timeout(until, &mut rng), Some(Action::Connect));
    }

    #[test]
    fn messages_keep_the_session_alive() {
        let start = Instant::now();
        let mut rng = rng();
        let mut conn = Connection::new(start, None);
        conn.on_connected(start);
        for step in 1..10u64 {
            let now = start + Duration::from_secs(step * 10);
            conn.on_received(now);
            let action = conn.handle_timeout(now, &mut rng);
            assert!(!matches!(action, Some(Action::Reconnect { .. })));
        }
    }

    #[test]
    fn a_replaced_token_connects_again_at_once() {
        let start = Instant::now();
        let mut conn = Connection::new(start, None);
        conn.on_connected(start);
        assert_eq!(conn.on_token_replaced(start), Action::Connect);
        assert_eq!(conn.phase(), &Phase::Connecting);
        assert_eq!(conn.poll_timeout(), None, "no backoff, no heartbeat");
    }

    #[test]
    fn a_refused_token_stops_with_code_3() {
        let now = Instant::now();
        let mut conn = Connection::new(now, None);
        let action = conn.on_connect_failed(
            now,
            ConnectFailure::Unauthorized("revoked".into()),
            &mut rng(),
        );
        assert!(matches!(action, Action::Exit { code: 3, .. }));
        assert_eq!(conn.poll_timeout(), None);
    }

    #[test]
    fn fatal_disconnects_stop_and_others_reconnect() {
        let now = Instant::now();
        let mut conn = Connection::new(now, None);
        conn.on_connected(now);
        let action = conn.on_disconnected(
            now,
            Some((DisconnectReason::ServerShutdown, "bye".into())),
            &mut rng(),
        );
        assert!(matches!(action, Action::Reconnect { .. }));
        conn.on_connected(now);
        let action = conn.on_disconnected(
            now,
            Some((DisconnectReason::TokenRevoked, "revoked".into())),
            &mut rng(),
        );
        assert!(matches!(action, Action::Exit { code: 3, .. }));
    }

    #[test]
    fn upgrade_required_and_bad_settings_are_not_retried() {
        let now = Instant::now();
        let mut conn = Connection::new(now, None);
        assert!(matches!(
            conn.on_connect_failed(
                now,
                ConnectFailure::UpgradeRequired("speak v2".into()),
                &mut rng()
            ),
            Action::Exit { code: 1, .. }
        ));
        let mut conn = Connection::new(now, None);
        assert!(matches!(
            conn.on_connect_failed(now, ConnectFailure::BadRequest("id".into()), &mut rng()),
            Action::Exit { code: 2, .. }
        ));
    }

    #[test]
    fn gives_up_after_the_max_partition_time() {
        let start = Instant::now();
        let mut rng = rng();
        let mut conn = Connection::new(start, Some(Duration::from_secs(60)));
        conn.on_connected(start);
        let lost = start + Duration::from_secs(5);
        let transient = |m: &str| ConnectFailure::Transient {
            message: m.into(),
            retry_after: None,
        };
        assert!(matches!(
            conn.on_disconnected(lost, None, &mut rng),
            Action::Reconnect { .. }
        ));
        loop {
            let now = conn.poll_timeout().unwrap();
            assert_eq!(conn.handle_timeout(now, &mut rng), Some(Action::Connect));
            match conn.on_connect_failed(now, transient("refused"), &mut rng) {
                Action::Reconnect { .. } => assert!(now < lost + Duration::from_secs(60)),
                Action::Exit { code, .. } => {
                    assert_eq!(code, 1);
                    assert!(now >= lost + Duration::from_secs(60));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        let now = Instant::now();
        let mut conn = Connection::new(now, None);
        let action = conn.on_connect_failed(
            now,
            ConnectFailure::Transient {
                message: "busy".into(),
                retry_after: Some(Duration::from_secs(9)),
            },
            &mut rng(),
        );
        assert_eq!(
            action,
            Action::Reconnect {
                after: Duration::from_secs(9),
                why: "busy".into()
            }
        );
    }
}
