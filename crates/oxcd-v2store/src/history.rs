//! The event history: the last 1000 events, so a watcher can ask for changes it missed.

use std::collections::VecDeque;
use std::sync::Arc;

use oxcd_api::v2::{Action, Error, ErrorCode, Event};

/// Number of events kept (etcd's window).
pub const HISTORY_CAPACITY: usize = 1000;

/// A recorded event and whether it was a TTL refresh (refreshes never wake watchers).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub event: Arc<Event>,
    pub refresh: bool,
}

#[derive(Debug, Default)]
pub struct EventHistory {
    queue: VecDeque<Recorded>,
}

impl EventHistory {
    pub fn add(&mut self, event: Arc<Event>, refresh: bool) {
        debug_assert!(
            self.queue
                .back()
                .is_none_or(|b| b.event.index() <= event.index()),
            "history indexes must not decrease (scan searches them)"
        );
        if self.queue.len() == HISTORY_CAPACITY {
            self.queue.pop_front();
        }
        self.queue.push_back(Recorded { event, refresh });
    }

    fn start_index(&self) -> u64 {
        self.queue.front().map(|r| r.event.index()).unwrap_or(0)
    }

    /// The first event at or after `index` that concerns `key`.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        index: u64,
    ) -> Result<Option<Arc<Event>>, Error> {
        let start = self.start_index();
        if index < start {
            return Err(Error::new(
                ErrorCode::EventIndexCleared,
                format!("the requested history has been cleared [{start}/{index}]"),
                0,
            ));
        }
        let prefix = if key.ends_with('/') {
            key.to_string()
        } else {
            format!("{key}/")
        };
        // Indexes increase along the queue: skip the older events by binary search (a
        // watcher catching up asks with an index near the end of a full history).
        let first = self.queue.partition_point(|r| r.event.index() < index);
        for r in self.queue.range(first..) {
            let e = &r.event;
            if r.refresh {
                continue;
            }
            let node_key = e.node.as_ref().map(|n| n.key.as_str()).unwrap_or("");
            let mut ok = node_key == key || (recursive && node_key.starts_with(&prefix));
            if matches!(e.action, Action::Delete | Action::Expire) {
                if let Some(prev) = &e.prev_node {
                    if prev.dir && key.starts_with(&prev.key) {
                        ok = true;
                    }
                }
            }
            if ok {
                return Ok(Some(Arc::clone(e)));
            }
        }
        Ok(None)
    }
}
