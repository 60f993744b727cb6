#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use postern_protocol::connection::{Action, ConnectFailure, Connection, Phase};
use postern_protocol::DisconnectReason;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Arbitrary, Debug)]
enum Event {
    Advance(u16),
    Connected,
    Received,
    Sent,
    Timeout,
    Unauthorized,
    Transient(Option<u8>),
    Dropped,
    Fatal,
    Shutdown,
}

// Any sequence of events keeps the connection state machine consistent: it never panics, a
// stopped machine stays stopped and asks for nothing, reconnect delays stay within 60 s, and
// when the machine reports a deadline it lies in the future of the last event.
fuzz_target!(|input: (Option<u16>, Vec<Event>)| {
    let (max_partition, events) = input;
    let start = Instant::now();
    let mut now = start;
    let mut rng = StdRng::seed_from_u64(0);
    let mut conn = Connection::new(now, max_partition.map(|s| Duration::from_secs(u64::from(s))));
    for event in events {
        let stopped = matches!(conn.phase(), Phase::Stopped { .. });
        let action = match event {
            Event::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
                None
            }
            Event::Connected if !stopped => {
                conn.on_connected(now);
                None
            }
            Event::Received => {
                conn.on_received(now);
                None
            }
            Event::Sent => {
                conn.on_sent(now);
                None
            }
            Event::Timeout => conn.handle_timeout(now, &mut rng),
            Event::Unauthorized if !stopped => Some(conn.on_connect_failed(now, ConnectFailure::Unauthorized("x".into()), &mut rng)),
            Event::Transient(after) if !stopped => Some(conn.on_connect_failed(
                now,
                ConnectFailure::Transient { message: "x".into(), retry_after: after.map(|s| Duration::from_secs(u64::from(s))) },
                &mut rng,
            )),
            Event::Dropped if !stopped => Some(conn.on_disconnected(now, None, &mut rng)),
            Event::Fatal if !stopped => Some(conn.on_disconnected(now, Some((DisconnectReason::TokenRevoked, "x".into())), &mut rng)),
            Event::Shutdown if !stopped => Some(conn.on_disconnected(now, Some((DisconnectReason::ServerShutdown, "x".into())), &mut rng)),
            _ => None,
        };
        if stopped {
            assert!(matches!(conn.phase(), Phase::Stopped { .. }), "a stopped machine stays stopped");
            assert!(action.is_none() || matches!(event, Event::Timeout) && action.is_none());
        }
        if let Some(Action::Reconnect { after, .. }) = &action {
            assert!(*after <= Duration::from_secs(60));
        }
        if let Some(Action::Exit { code, .. }) = &action {
            assert!([1, 2, 3].contains(code));
            assert_eq!(conn.poll_timeout(), None);
        }
    }
});
