//! Failed authentications are limited per source address, so a token cannot be guessed online.
//! The addresses are kept in a bounded LRU (an IPv6 address by its /64, which one machine
//! usually has whole): a flood of new addresses evicts the oldest entries, it cannot grow the
//! map or make each failure scan it.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// Source addresses remembered at most.
const ADDRESSES: usize = 100_000;

/// Allows `max_failures` failed authentications per source address in each `window`.
pub struct AuthRateLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<LruCache<IpAddr, (Instant, u32)>>,
}

/// The key an address is counted under: itself, or for IPv6 its /64. Requests whose address
/// is unknown share one key.
fn key(ip: Option<IpAddr>) -> IpAddr {
    let Some(ip) = ip else {
        return IpAddr::from([0, 0, 0, 0]);
    };
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

impl Default for AuthRateLimiter {
    fn default() -> Self {
        Self::new(20, Duration::from_secs(60))
    }
}

impl AuthRateLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::with_capacity(max_failures, window, ADDRESSES)
    }

    fn with_capacity(max_failures: u32, window: Duration, addresses: usize) -> Self {
        let capacity = NonZeroUsize::new(addresses).unwrap_or(NonZeroUsize::MIN);
        Self {
            max_failures,
            window,
            failures: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// `Some(seconds)` to wait when the address has used up its failures for this window.
    pub fn check(&self, ip: impl Into<Option<IpAddr>>) -> Option<u64> {
        let failures = self.failures.lock();
        let (started, count) = failures.peek(&key(ip.into()))?;
        let elapsed = started.elapsed();
        if elapsed >= self.window || *count < self.max_failures {
            return None;
        }
        Some((self.window - elapsed).as_secs().max(1))
    }

    pub fn record_failure(&self, ip: impl Into<Option<IpAddr>>) {
        let mut failures = self.failures.lock();
        let entry = failures.get_or_insert_mut(key(ip.into()), || (Instant::now(), 0));
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
    fn an_ipv6_machine_counts_as_its_64() {
        let limiter = AuthRateLimiter::new(2, Duration::from_secs(60));
        limiter.record_failure("2001:db8:1:2::1".parse::<IpAddr>().unwrap());
        limiter.record_failure("2001:db8:1:2:ffff::9".parse::<IpAddr>().unwrap());
        assert!(limiter
            .check("2001:db8:1:2::77".parse::<IpAddr>().unwrap())
            .is_some());
        assert!(limiter
            .check("2001:db8:1:3::1".parse::<IpAddr>().unwrap())
            .is_none());
    }

    #[test]
    fn requests_of_unknown_address_share_one_count() {
        let limiter = AuthRateLimiter::new(2, Duration::from_secs(60));
        limiter.record_failure(None);
        limiter.record_failure(None);
        assert!(limiter.check(None).is_some());
        assert!(limiter.check(IpAddr::from([192, 0, 2, 1])).is_none());
    }

    #[test]
    fn a_flood_of_addresses_stays_within_the_bound() {
        let limiter = AuthRateLimiter::with_capacity(1, Duration::from_secs(60), 1000);
        for n in 0..50_000u32 {
            limiter.record_failure(IpAddr::from(n.to_be_bytes()));
        }
        assert_eq!(limiter.failures.lock().len(), 1000);
        // The newest are remembered.
        assert!(limiter
            .check(IpAddr::from(49_999u32.to_be_bytes()))
            .is_some());
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
