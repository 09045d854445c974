//! The wait registry: proposal ID → the client waiting for that proposal's result.
//!
//! A request registers before it is proposed; the apply step triggers the ID with the result
//! when the entry is applied on this member. A request that gives up (timeout, client gone)
//! removes its registration itself, so nothing accumulates. Triggering an unknown ID is a no-op:
//! entries proposed by other members, or whose client gave up, have nobody waiting.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Registry of waiting requests, generic over the result type.
pub struct Wait<T> {
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Wait<T> {
    fn default() -> Self {
        Wait {
            waiters: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Wait<T> {
    /// Registers `id`; the receiver resolves when `trigger(id, ..)` is called.
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Delivers the result for `id` if somebody waits for it.
    pub fn trigger(&self, id: u64, value: T) {
        // Release the lock before waking the requester: it may run at once on this core
        // and would block on the lock (two extra context switches per request).
        let tx = self.lock().remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(value);
        }
    }

    /// Delivers several results, taking the lock once.
    pub fn trigger_all(&self, results: Vec<(u64, T)>) {
        let mut ready = Vec::with_capacity(results.len());
        {
            let mut waiters = self.lock();
            for (id, value) in results {
                if let Some(tx) = waiters.remove(&id) {
                    ready.push((tx, value));
                }
            }
        }
        for (tx, value) in ready {
            let _ = tx.send(value);
        }
    }

    /// Forgets `id` (its requester gave up).
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Whether anybody waits for `id`.
    pub fn is_registered(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Number of waiting requests (for metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_delivers_once() {
        let w = Wait::default();
        let rx = w.register(1);
        w.trigger(1, "done");
        w.trigger(1, "again");
        assert_eq!(rx.await.unwrap(), "done");
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_and_unknown_ids() {
        let w: Wait<u32> = Wait::default();
        let _rx = w.register(5);
        assert!(w.is_registered(5));
        w.cancel(5);
        assert!(!w.is_registered(5));
        w.trigger(9, 1);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn trigger_all_delivers_to_the_waiting_ones() {
        let w = Wait::default();
        let (a, b) = (w.register(1), w.register(2));
        w.cancel(2);
        w.trigger_all(vec![(1, "one"), (2, "two"), (3, "three")]);
        assert_eq!(a.await.unwrap(), "one");
        assert!(b.await.is_err(), "a cancelled waiter gets nothing");
        assert!(w.is_empty());
    }
}
