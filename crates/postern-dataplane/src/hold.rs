//! A bounded queue of packets waiting for something, by key: the gateway's packets waiting for
//! an authorization or a DNS translation that is on its way. Bounded per key and in all, and
//! each entry only for so long.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct HoldQueue<K, T> {
    queues: HashMap<K, VecDeque<(Instant, T)>>,
    total: usize,
    max_per_key: usize,
    max_total: usize,
    timeout: Duration,
}

impl<K: Hash + Eq + Clone, T> HoldQueue<K, T> {
    pub fn new(max_per_key: usize, max_total: usize, timeout: Duration) -> Self {
        Self {
            queues: HashMap::new(),
            total: 0,
            max_per_key,
            max_total,
            timeout,
        }
    }

    /// Keeps `item` under `key`; `false` (and nothing kept) past a bound.
    pub fn push(&mut self, key: &K, item: T, now: Instant) -> bool {
        let waiting = self.queues.get(key).map_or(0, VecDeque::len);
        if waiting >= self.max_per_key || self.total >= self.max_total {
            return false;
        }
        self.queues
            .entry(key.clone())
            .or_default()
            .push_back((now, item));
        self.total += 1;
        true
    }

    /// Everything waiting under `key`, oldest first, that has not timed out.
    pub fn take(&mut self, key: &K, now: Instant) -> Vec<T> {
        self.take_timed(key, now)
            .into_iter()
            .map(|(_, item)| item)
            .collect()
    }

    /// The same, each with when it was pushed (to push it back with [`Self::push`] and that
    /// instant, keeping its deadline).
    pub fn take_timed(&mut self, key: &K, now: Instant) -> Vec<(Instant, T)> {
        let Some(queue) = self.queues.remove(key) else {
            return Vec::new();
        };
        self.total -= queue.len();
        let timeout = self.timeout;
        queue
            .into_iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < timeout)
            .collect()
    }

    /// The keys something waits under.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.queues.keys()
    }

    /// Drops what waited too long; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let mut dropped = 0;
        self.queues.retain(|_, queue| {
            while queue
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= timeout)
            {
                queue.pop_front();
                dropped += 1;
            }
            !queue.is_empty()
        });
        self.total -= dropped;
        dropped
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_key_and_in_all_and_in_time() {
        let now = Instant::now();
        let mut queue: HoldQueue<u8, u32> = HoldQueue::new(2, 3, Duration::from_secs(1));
        assert!(queue.push(&1, 10, now));
        assert!(queue.push(&1, 11, now));
        assert!(!queue.push(&1, 12, now), "per key");
        assert!(queue.push(&2, 20, now + Duration::from_millis(500)));
        assert!(!queue.push(&3, 30, now), "in all");
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.take(&1, now), vec![10, 11]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.expire(now + Duration::from_millis(900)), 0);
        assert_eq!(queue.expire(now + Duration::from_millis(1500)), 1);
        assert!(queue.is_empty() && queue.keys().next().is_none());
        queue.push(&4, 40, now);
        assert!(
            queue.take(&4, now + Duration::from_secs(2)).is_empty(),
            "too old to release"
        );
        assert!(queue.is_empty());
    }
}
