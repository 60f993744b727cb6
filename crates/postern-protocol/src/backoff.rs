//! Reconnect delays: exponential from 0.5 s by ×1.5 up to 60 s, with jitter, and a server's
//! `Retry-After` taking precedence.

use std::time::Duration;

use rand::Rng;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(60);
const FACTOR: f64 = 1.5;

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt: the current step with ±25 % jitter (so a fleet that
    /// lost the portal at once does not come back at once), or `retry_after` when the server
    /// asked for it.
    pub fn next_delay(&mut self, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = Duration::from_secs_f64((base.as_secs_f64() * FACTOR).min(MAX.as_secs_f64()));
        if let Some(retry_after) = retry_after {
            return retry_after.min(MAX);
        }
        let jitter = rng.gen_range(0.75..=1.25);
        Duration::from_secs_f64((base.as_secs_f64() * jitter).min(MAX.as_secs_f64()))
    }

    /// A session was established: start again from the first step.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::default();
        let first = backoff.next_delay(None, &mut rng);
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(625));
        let mut last = first;
        for _ in 0..40 {
            last = backoff.next_delay(None, &mut rng);
            assert!(last <= MAX);
        }
        assert!(last >= Duration::from_secs(45), "reaches the cap: {last:?}");
        backoff.reset();
        assert!(backoff.next_delay(None, &mut rng) <= Duration::from_millis(625));
    }

    #[test]
    fn retry_after_wins() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::default();
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(7)), &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(600)), &mut rng),
            MAX
        );
    }
}
