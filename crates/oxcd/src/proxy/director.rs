//! Which endpoint a proxied request goes to (etcd's `httpproxy` director).
//!
//! The endpoints are the members' client URLs, in an order shuffled when the list changes
//! (so that proxies do not all pile onto one member) and kept otherwise (so that a proxy keeps
//! its connections). A request tries the available endpoints in that order. An endpoint whose
//! connection failed is skipped for `--proxy-failure-wait`, then tried again. Pure state: the
//! caller passes the time, so the rules are tested without waiting.

use std::time::{Duration, Instant};

/// One endpoint and, while it is held failed, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    url: String,
    failed_until: Option<Instant>,
}

/// What a refresh changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// The list before, when it changed (in the old order).
    pub changed_from: Option<Vec<String>>,
}

/// The endpoints and their failure state.
#[derive(Debug)]
pub struct Director {
    endpoints: Vec<Endpoint>,
    failure_wait: Duration,
}

impl Director {
    /// No endpoints yet; failed ones are held for `failure_wait`.
    pub fn new(failure_wait: Duration) -> Director {
        Director {
            endpoints: Vec::new(),
            failure_wait,
        }
    }

    /// How long a failed endpoint is skipped.
    pub fn failure_wait(&self) -> Duration {
        self.failure_wait
    }

    /// Every known endpoint, in order.
    pub fn all(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// The endpoints a request may try now, in order.
    pub fn available(&self, now: Instant) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| e.failed_until.is_none_or(|t| now >= t))
            .map(|e| e.url.clone())
            .collect()
    }

    /// Replaces the list by `urls` (a member's view of the cluster). An unchanged set keeps
    /// its order and failure state; a changed one is shuffled with `seed`, and endpoints that
    /// stay keep their failure state.
    pub fn refresh(&mut self, urls: &[String], seed: u64) -> Refreshed {
        let mut wanted: Vec<String> = urls.to_vec();
        wanted.sort();
        wanted.dedup();
        let mut current = self.all();
        current.sort();
        if current == wanted {
            return Refreshed::default();
        }
        let before = self.all();
        shuffle(&mut wanted, seed);
        self.endpoints = wanted
            .into_iter()
            .map(|url| {
                let failed_until = self
                    .endpoints
                    .iter()
                    .find(|e| e.url == url)
                    .and_then(|e| e.failed_until);
                Endpoint { url, failed_until }
            })
            .collect();
        Refreshed {
            changed_from: Some(before),
        }
    }

    /// A connection to `url` failed at `now`: it is skipped until `now + failure_wait`.
    /// True when it was available until now (etcd logs "marked endpoint ... unavailable"
    /// once per failure, not once per request that finds it down).
    pub fn failed(&mut self, url: &str, now: Instant) -> bool {
        let wait = self.failure_wait;
        match self.endpoints.iter_mut().find(|e| e.url == url) {
            Some(e) if e.failed_until.is_none_or(|t| now >= t) => {
                e.failed_until = Some(now + wait);
                true
            }
            _ => false,
        }
    }

    /// Endpoints whose failure wait is over at `now`: available again, returned once each
    /// (for the "marked endpoint ... available" line).
    pub fn recover(&mut self, now: Instant) -> Vec<String> {
        let mut back = Vec::new();
        for e in &mut self.endpoints {
            if e.failed_until.is_some_and(|t| now >= t) {
                e.failed_until = None;
                back.push(e.url.clone());
            }
        }
        back
    }
}

/// Fisher-Yates with a small xorshift generator: the order only spreads load.
fn shuffle(v: &mut [String], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// A seed that differs between processes and calls.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_failed_endpoint_is_skipped_for_the_failure_wait_then_retried() {
        let t0 = Instant::now();
        let mut d = Director::new(Duration::from_secs(5));
        assert!(d.available(t0).is_empty());
        d.refresh(&urls(&["http://a", "http://b", "http://c"]), 7);
        let order = d.available(t0);
        assert_eq!(order.len(), 3);
        let first = order[0].clone();
        assert!(d.failed(&first, t0));
        // Marked once: a second request finding it down does not mark it again.
        assert!(!d.failed(&first, t0 + Duration::from_secs(1)));
        let during = d.available(t0 + Duration::from_millis(4999));
        assert_eq!(during, order[1..].to_vec());
        assert!(d.recover(t0 + Duration::from_millis(4999)).is_empty());
        // The wait counts from the first failure.
        assert_eq!(d.available(t0 + Duration::from_secs(5)), order);
        assert_eq!(d.recover(t0 + Duration::from_secs(5)), vec![first.clone()]);
        assert!(d.recover(t0 + Duration::from_secs(6)).is_empty());
        // Failing again after recovery marks it again.
        assert!(d.failed(&first, t0 + Duration::from_secs(6)));
    }

    #[test]
    fn every_endpoint_failed_leaves_none_available() {
        let t0 = Instant::now();
        let mut d = Director::new(Duration::from_millis(100));
        d.refresh(&urls(&["http://a", "http://b"]), 1);
        for u in d.all() {
            assert!(d.failed(&u, t0));
        }
        assert!(d.available(t0).is_empty());
        assert_eq!(d.available(t0 + Duration::from_millis(100)).len(), 2);
        // Unknown URLs are ignored.
        assert!(!d.failed("http://z", t0));
    }

    #[test]
    fn refresh_keeps_order_and_failures_of_an_unchanged_set() {
        let t0 = Instant::now();
        let mut d = Director::new(Duration::from_secs(5));
        let r = d.refresh(&urls(&["http://a", "http://b", "http://c"]), 3);
        assert_eq!(r.changed_from, Some(vec![]));
        let order = d.all();
        d.failed(&order[0], t0);
        // The same set in another order, with a duplicate: nothing changes.
        let r = d.refresh(&urls(&["http://c", "http://a", "http://b", "http://a"]), 99);
        assert_eq!(r, Refreshed::default());
        assert_eq!(d.all(), order);
        assert_eq!(d.available(t0), order[1..].to_vec());
        // A member leaves: the others keep their state, the list is reported changed.
        let gone = order[2].clone();
        let left: Vec<String> = order[..2].to_vec();
        let r = d.refresh(&left, 5);
        assert_eq!(r.changed_from, Some(order.clone()));
        let mut now = d.all();
        now.sort();
        let mut expect = left.clone();
        expect.sort();
        assert_eq!(now, expect);
        assert!(!d.all().contains(&gone));
        assert_eq!(d.available(t0), vec![order[1].clone()]);
        // An empty view empties the list (etcd's refresh does the same).
        d.refresh(&[], 1);
        assert!(d.available(t0).is_empty());
    }

    #[test]
    fn shuffling_spreads_the_first_endpoint() {
        let list = urls(&["http://a", "http://b", "http://c"]);
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..64u64 {
            let mut d = Director::new(Duration::ZERO);
            d.refresh(&list, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            firsts.insert(d.all()[0].clone());
            let mut all = d.all();
            all.sort();
            assert_eq!(all, list);
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }
}
