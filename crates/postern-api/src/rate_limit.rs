//! Failed authentications are limited per source address, so a token cannot be guessed online.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Allows `max_failures` failed authentications per source address in each `window`.
pub struct AuthRateLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Default for AuthRateLimiter {
    fn default() -> Self {
        Self::new(20, Duration::from_secs(60))
    }
}

impl AuthRateLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds)` to wait when the address has used up its failures for this window.
    pub fn check(&self, ip: IpAddr) -> Option<u64> {
        let failures = self.failures.lock();
        let (started, count) = failures.get(&ip)?;
        let elapsed = started.elapsed();
        if elapsed >= self.window || *count < self.max_failures {
            return None;
        }
        Some((self.window - elapsed).as_secs().max(1))
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock();
        if failures.len() > 100_000 {
            let window = self.window;
            failures.retain(|_, (started, _)| started.elapsed() < window);
        }
        let entry = failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_only_that_address() {
        let limiter = AuthRateLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_none());
            limiter.record_failure(a);
        }
        assert!(limiter.check(a).is_some_and(|s| (1..=60).contains(&s)));
        assert!(limiter.check(b).is_none());
    }

    #[test]
    fn the_window_resets() {
        let limiter = AuthRateLimiter::new(1, Duration::from_millis(20));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        limiter.record_failure(a);
        assert!(limiter.check(a).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check(a).is_none());
    }
}
