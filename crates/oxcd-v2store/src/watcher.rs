//! Watchers: who waits for changes under which key, and how they are woken.

use std::collections::HashMap;
use std::sync::Arc;

use oxcd_api::v2::Event;

use crate::node::Node;

/// Where a watcher's events go (the server wraps a bounded channel).
pub trait WatchSink: Send + Sync {
    /// Delivers an event; false when the buffer is full or the receiver is gone, which
    /// removes the watcher (a watcher must never block the store).
    fn try_send(&self, event: Arc<Event>) -> bool;
}

/// Identifies a registered watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatcherId(pub u64);

/// The result of a watch request.
pub enum WatchOutcome {
    /// A matching event was already in the history.
    Ready(Arc<Event>),
    /// Registered; events arrive through the sink.
    Registered { id: WatcherId, start_index: u64 },
}

pub struct Watcher {
    pub recursive: bool,
    pub stream: bool,
    pub since_index: u64,
    pub sink: Box<dyn WatchSink>,
}

/// Watchers by watched path.
#[derive(Default)]
pub struct WatcherHub {
    by_path: HashMap<String, Vec<(WatcherId, Watcher)>>,
    paths: HashMap<WatcherId, String>,
    next_id: u64,
}

impl WatcherHub {
    pub fn count(&self) -> usize {
        self.paths.len()
    }

    pub fn add(&mut self, path: String, w: Watcher) -> WatcherId {
        self.next_id += 1;
        let id = WatcherId(self.next_id);
        self.paths.insert(id, path.clone());
        self.by_path.entry(path).or_default().push((id, w));
        id
    }

    pub fn remove(&mut self, id: WatcherId) {
        if let Some(path) = self.paths.remove(&id) {
            if let Some(list) = self.by_path.get_mut(&path) {
                list.retain(|(wid, _)| *wid != id);
                if list.is_empty() {
                    self.by_path.remove(&path);
                }
            }
        }
    }

    /// Offers `event` to the watchers of `node_path`; `deleted` when that path itself
    /// disappeared as part of the event (a deleted directory's children).
    pub fn notify_watchers(&mut self, event: &Arc<Event>, node_path: &str, deleted: bool) {
        let Some(list) = self.by_path.get_mut(node_path) else {
            return;
        };
        let key = event.node.as_ref().map(|n| n.key.as_str()).unwrap_or("");
        let original = key == node_path;
        if !original && is_hidden(node_path, key) {
            return;
        }
        let index = event.index();
        let mut removed = Vec::new();
        list.retain(|(id, w)| {
            if (w.recursive || original || deleted) && index >= w.since_index {
                let delivered = w.sink.try_send(Arc::clone(event));
                if !delivered || !w.stream {
                    removed.push(*id);
                    return false;
                }
            }
            true
        });
        if list.is_empty() {
            self.by_path.remove(node_path);
        }
        for id in removed {
            self.paths.remove(&id);
        }
    }

    /// Offers `event` to watchers of its key and of every parent directory.
    pub fn notify(&mut self, event: &Arc<Event>) {
        if self.by_path.is_empty() {
            // Nobody watches anything: the common case for a write.
            return;
        }
        let key = event.node.as_ref().map(|n| n.key.as_str()).unwrap_or("");
        if key.bytes().filter(|&b| b == b'/').count() > self.by_path.len() {
            // More prefixes than watched paths: test each watched path instead of looking
            // up each prefix (hashing every prefix of a deep key costs the square of its
            // length). Shorter first, as below.
            let mut watched: Vec<String> = self
                .by_path
                .keys()
                .filter(|w| is_segment_prefix(w, key))
                .cloned()
                .collect();
            watched.sort_unstable_by_key(|w| w.len());
            for w in watched {
                self.notify_watchers(event, &w, false);
            }
            return;
        }
        self.notify_watchers(event, "/", false);
        // The watched paths are the key's prefixes that end a segment: slices of the key
        // (store keys are clean: rooted, single slashes).
        let ends = key
            .char_indices()
            .skip(1)
            .filter(|&(_, c)| c == '/')
            .map(|(i, _)| i)
            .chain((key.len() > 1).then_some(key.len()));
        for end in ends {
            self.notify_watchers(event, &key[..end], false);
        }
    }
}

impl WatcherHub {
    /// The watched paths among `path` and the paths below it in `node` (the subtree that
    /// was at `path`), deepest first (descendants before their ancestors).
    ///
    /// Costs a lookup for a key, and for a directory a pass over the watched paths (not
    /// over the subtree, which may be huge or very deep).
    pub fn watched_in_subtree(&self, path: &str, node: &Node) -> Vec<String> {
        if self.by_path.is_empty() {
            return Vec::new();
        }
        if node.children.as_ref().is_none_or(|c| c.is_empty()) {
            return match self.by_path.contains_key(path) {
                true => vec![path.to_string()],
                false => Vec::new(),
            };
        }
        let mut found: Vec<String> = self
            .by_path
            .keys()
            .filter(|w| is_segment_prefix(path, w) && exists_below(node, &w[path.len()..]))
            .cloned()
            .collect();
        found.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found
    }
}

/// Whether `prefix` is `key` or one of its parent directories (`/` is everyone's).
fn is_segment_prefix(prefix: &str, key: &str) -> bool {
    prefix == "/"
        || (key.starts_with(prefix)
            && (key.len() == prefix.len() || key.as_bytes()[prefix.len()] == b'/'))
}

/// Whether the relative path `rest` (empty, or `/a/b`) names a node of `node`'s subtree.
fn exists_below(node: &Node, rest: &str) -> bool {
    let mut at = node;
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        match at.children.as_ref().and_then(|c| c.get(seg)) {
            Some(child) => at = child,
            None => return false,
        }
    }
    true
}

/// Whether `key_path` is hidden from a watcher of `watch_path` (a `_` segment below it).
fn is_hidden(watch_path: &str, key_path: &str) -> bool {
    if watch_path.len() > key_path.len() {
        return false;
    }
    let after = format!("/{}", key_path.get(watch_path.len()..).unwrap_or(""));
    after.contains("/_")
}
