//! The store operations, with etcd v2's semantics and error causes.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oxcd_api::v2::{Action, Error, ErrorCode, Event, NodeExtern};

use crate::history::EventHistory;
use crate::node::{clamp_expiry, list_children, visit_paths, Node};
use crate::snapshot;
use crate::watcher::{WatchOutcome, WatchSink, Watcher, WatcherHub, WatcherId};
use crate::Result;

/// TTL options of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlOptions {
    /// Absolute expiry; `None` = permanent.
    pub expire_time: Option<SystemTime>,
    /// Refresh the TTL only: keep the value, do not wake watchers.
    pub refresh: bool,
}

/// A snapshot that cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("v2store: cannot recover from snapshot: {0}")]
pub struct RecoveryError(String);

/// Expiries before this are treated as permanent (etcd's minimum expire time, 2000-01-01).
fn min_expire_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

#[derive(Default)]
struct Stats {
    gets_success: AtomicU64,
    gets_fail: AtomicU64,
    sets_success: AtomicU64,
    sets_fail: AtomicU64,
    delete_success: AtomicU64,
    delete_fail: AtomicU64,
    update_success: AtomicU64,
    update_fail: AtomicU64,
    create_success: AtomicU64,
    create_fail: AtomicU64,
    cas_success: AtomicU64,
    cas_fail: AtomicU64,
    cad_success: AtomicU64,
    cad_fail: AtomicU64,
    expire_count: AtomicU64,
}

fn count<T>(res: &Result<T>, ok: &AtomicU64, fail: &AtomicU64) {
    match res {
        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
        Err(_) => fail.fetch_add(1, Ordering::Relaxed),
    };
}

/// The v2 store.
pub struct Store {
    root: Node,
    index: u64,
    /// (expiry, path) of every node with a TTL.
    ttl: BTreeSet<(SystemTime, String)>,
    history: EventHistory,
    hub: WatcherHub,
    /// Watcher notifications held back until [`Store::flush_notifications`], in order;
    /// `None` = watchers are notified as each change happens.
    deferred: Option<Vec<Deferred>>,
    stats: Stats,
    /// The root and the namespace directories: no operation may change them.
    readonly: BTreeSet<String>,
    /// The size of the last snapshot [`Store::save`] encoded: the next one's buffer is sized
    /// from it, so it is not grown (and copied) a dozen times while applying waits.
    last_save_len: AtomicUsize,
    /// Distinct for every store and every restore: a snapshot's reusable runs (see
    /// [`RunCache`]) describe nodes of one generation only.
    generation: u64,
}

/// The next store generation (from 1: a default [`RunCache`] matches none).
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A held-back notification: an event for its key's watchers, or a path removed with a
/// deleted directory.
enum Deferred {
    Event(Arc<Event>),
    Removed(Arc<Event>, String),
}

/// Go's `path.Clean(path.Join("/", p))`.
fn clean(p: &str) -> Cow<'_, str> {
    if is_clean_path(p) {
        // The common case: no copy.
        return Cow::Borrowed(p);
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    Cow::Owned(format!("/{}", parts.join("/")))
}

/// Whether `p` is already a clean path (Go's `path.Clean` would return it unchanged):
/// rooted, and no empty, `.` or `..` segment (so no doubled or trailing slash). Every
/// request's key is checked, so this walks the bytes once instead of splitting.
pub fn is_clean_path(p: &str) -> bool {
    let b = p.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut start = 1;
    loop {
        let end = b[start..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(b.len(), |i| start + i);
        match &b[start..end] {
            b"" if b.len() == 1 => return true,
            b"" | b"." | b".." => return false,
            _ => {}
        }
        if end == b.len() {
            return true;
        }
        start = end + 1;
    }
}

/// The segments of a path with, for each, the end of the path prefix it completes (so
/// an error can name the prefix without building it on every step).
fn segments(path: &str) -> impl Iterator<Item = (&str, usize)> {
    path.split('/')
        .scan(0usize, |at, seg| {
            let start = *at;
            *at += seg.len() + 1;
            Some((seg, start + seg.len()))
        })
        .filter(|(seg, _)| !seg.is_empty())
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

impl Store {
    /// A store with the given top-level directories (etcd: "/0" and "/1").
    pub fn new(namespaces: &[&str]) -> Store {
        let mut root = Node::new_dir("", 0, None);
        if let Some(children) = root.children.as_mut() {
            for ns in namespaces {
                let name = ns.trim_start_matches('/');
                children.insert(Node::new_dir(name, 0, None));
            }
        }
        Store {
            root,
            index: 0,
            ttl: BTreeSet::new(),
            history: EventHistory::default(),
            hub: WatcherHub::default(),
            deferred: None,
            stats: Stats::default(),
            readonly: std::iter::once("/".to_string())
                .chain(namespaces.iter().map(|ns| clean(ns).into_owned()))
                .collect(),
            last_save_len: AtomicUsize::new(0),
            generation: next_generation(),
        }
    }

    /// Current store index.
    pub fn index(&self) -> u64 {
        self.index
    }

    fn walk(&self, path: &str) -> Result<&Node> {
        let mut node = &self.root;
        // The path walked so far: `path[..walked]` ("/" at the root).
        let mut walked = 0;
        for (seg, end) in segments(path) {
            let Some(children) = &node.children else {
                let curr = if walked == 0 { "/" } else { &path[..walked] };
                return Err(Error::new(ErrorCode::NotDir, curr, self.index));
            };
            match children.get(seg) {
                Some(child) => node = child,
                None => return Err(Error::new(ErrorCode::KeyNotFound, &path[..end], self.index)),
            }
            walked = end;
        }
        Ok(node)
    }

    fn walk_mut(&mut self, path: &str) -> Option<&mut Node> {
        let mut node = &mut self.root;
        for (seg, _) in segments(path) {
            node = node.children.as_mut()?.get_mut(seg)?;
        }
        Some(node)
    }

    /// Reads a node.
    pub fn get(&self, path: &str, recursive: bool, sorted: bool, now: SystemTime) -> Result<Event> {
        let path = clean(path);
        let res = self.walk(&path).map(|n| {
            let mut ext = n.repr(&path, false, sorted, now);
            if let Some(children) = &n.children {
                let list = list_children(&path, children, recursive, sorted, now);
                ext.nodes = if list.is_empty() { None } else { Some(list) };
            }
            Event {
                action: Action::Get,
                node: Some(ext),
                prev_node: None,
                etcd_index: self.index,
            }
        });
        count(&res, &self.stats.gets_success, &self.stats.gets_fail);
        res
    }

    fn notify(&mut self, event: Event, refresh: bool) -> Event {
        let arc = Arc::new(event);
        self.history.add(Arc::clone(&arc), refresh);
        if !refresh {
            match &mut self.deferred {
                // With no watcher now, none is owed this event: one registering before the
                // flush starts past it or finds it in the history.
                Some(_) if self.hub.count() == 0 => {}
                Some(held) => held.push(Deferred::Event(Arc::clone(&arc))),
                None => self.hub.notify(&arc),
            }
        }
        Arc::try_unwrap(arc).unwrap_or_else(|a| (*a).clone())
    }

    fn set_ttl(&mut self, path: &str, old: Option<SystemTime>, new: Option<SystemTime>) {
        if let Some(t) = old {
            self.ttl.remove(&(t, path.to_string()));
        }
        if let Some(t) = new {
            self.ttl.insert((t, path.to_string()));
        }
    }

    /// Removes the TTL entries of a subtree being deleted and offers the event to the
    /// watchers of every removed path (deepest first, as etcd's post-order removal).
    ///
    /// Only watched paths are looked at: the removed subtree may be a chain so deep that
    /// building (or hashing) each of its paths would cost the square of its depth.
    fn on_removed(&mut self, path: &str, node: &Node, event: &Arc<Event>) {
        let ttl = &mut self.ttl;
        visit_paths(path, node, |path, node| {
            if let Some(t) = node.expire() {
                ttl.remove(&(t, path.to_string()));
            }
        });
        for watched in self.hub.watched_in_subtree(path, node) {
            match &mut self.deferred {
                // A watcher registering before the flush finds the event in the history:
                // holding back the paths watched now loses nothing.
                Some(held) => held.push(Deferred::Removed(Arc::clone(event), watched)),
                None => self.hub.notify_watchers(event, &watched, true),
            }
        }
    }

    /// From now on, changes notify their watchers only when [`Store::flush_notifications`]
    /// is called. The server applies a batch of writes, answers their writers, then wakes
    /// the watchers: a write storm's fan-out to thousands of watchers then does not sit
    /// between the writers and their answers. Nothing is lost or doubled meanwhile: a
    /// watcher registering in between finds the changes in the history, and a held-back
    /// event reaches only watchers whose start index it has reached.
    pub fn defer_notifications(&mut self) {
        self.deferred.get_or_insert_with(Vec::new);
    }

    /// Whether changes are held back for [`Store::flush_notifications`] (only ever while
    /// someone watches).
    pub fn has_held_notifications(&self) -> bool {
        self.deferred.as_ref().is_some_and(|held| !held.is_empty())
    }

    /// Notifies the watchers of every change held back since the last call, in order.
    pub fn flush_notifications(&mut self) {
        let Some(held) = self.deferred.as_mut() else {
            return;
        };
        if held.is_empty() {
            return;
        }
        let held = std::mem::take(held);
        for d in held {
            match d {
                Deferred::Event(ev) => self.hub.notify(&ev),
                Deferred::Removed(ev, path) => self.hub.notify_watchers(&ev, &path, true),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        replace: bool,
        expire: Option<SystemTime>,
        action: Action,
        now: SystemTime,
    ) -> Result<Event> {
        let curr = self.index + 1;
        let joined;
        let path = if unique {
            joined = format!("{path}/{curr:020}");
            clean(&joined)
        } else {
            clean(path)
        };
        if self.readonly.contains(&*path) {
            return Err(Error::new(ErrorCode::RootROnly, "/", self.index));
        }
        let expire = expire.filter(|t| *t >= min_expire_time()).map(clamp_expiry);
        let (dir_path, name) = split(&path);
        // Walk to the parent, creating missing directories; a file on the way is an error.
        let index = self.index;
        let mut prev: Option<(NodeExtern, Option<SystemTime>)> = None;
        let ext;
        {
            let mut node = &mut self.root;
            for (seg, end) in segments(dir_path) {
                let children = node
                    .children
                    .as_mut()
                    .expect("walk only enters directories");
                let child = children.get_or_insert_with(seg, || Node::new_dir(seg, curr, None));
                if !child.is_dir() {
                    return Err(Error::new(ErrorCode::NotFile, &dir_path[..end], index));
                }
                node = child;
            }
            let children = node.children.as_mut().expect("parent is a directory");
            if let Some(existing) = children.get(name) {
                if !replace {
                    return Err(Error::new(ErrorCode::NodeExist, path, index));
                }
                if existing.is_dir() {
                    return Err(Error::new(ErrorCode::NotFile, path, index));
                }
                prev = Some((existing.repr(&path, false, false, now), existing.expire()));
            }
            let new = if dir {
                Node::new_dir(name, curr, expire)
            } else {
                Node::new_file(name, value, curr, expire)
            };
            // A new node has no children: its view is the same before and after insertion.
            ext = new.repr(&path, false, false, now);
            children.insert(new);
        }
        let prev_expire = prev.as_ref().and_then(|(_, e)| *e);
        self.set_ttl(&path, prev_expire, expire);
        self.index = curr;
        Ok(Event {
            action,
            node: Some(ext),
            prev_node: prev.map(|(p, _)| p),
            etcd_index: curr,
        })
    }

    /// Creates or replaces a key (or creates a directory).
    pub fn set(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self.set_inner(path, dir, value, ttl, now);
        count(&res, &self.stats.sets_success, &self.stats.sets_fail);
        res
    }

    fn set_inner(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let path = clean(path);
        // The current value: a refresh keeps it. (A failed walk other than "not found" —
        // a file on the way — is the error etcd reports.)
        let current = match self.walk(&path) {
            // Copied only for a refresh, which writes it back.
            Ok(n) if ttl.refresh => Some(n.value().to_string()),
            Ok(_) => None,
            Err(e) if e.code == ErrorCode::KeyNotFound => None,
            Err(e) => return Err(e),
        };
        let value: &str = if ttl.refresh {
            match &current {
                Some(v) => v,
                None => {
                    return Err(Error::new(ErrorCode::KeyNotFound, path, self.index));
                }
            }
        } else {
            value
        };
        // `internal_create` with `replace` reports the replaced node as `prevNode`.
        let mut ev = self.internal_create(
            &path,
            dir,
            value,
            false,
            true,
            ttl.expire_time,
            Action::Set,
            now,
        )?;
        ev.etcd_index = self.index;
        Ok(self.notify(ev, ttl.refresh))
    }

    /// Creates a key or directory that must not exist; `unique` appends an in-order name.
    pub fn create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self
            .internal_create(
                path,
                dir,
                value,
                unique,
                false,
                ttl.expire_time,
                Action::Create,
                now,
            )
            .map(|mut ev| {
                ev.etcd_index = self.index;
                self.notify(ev, false)
            });
        count(&res, &self.stats.create_success, &self.stats.create_fail);
        res
    }

    /// Updates an existing node's value and/or TTL.
    pub fn update(
        &mut self,
        path: &str,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self.update_inner(path, value, ttl, now);
        count(&res, &self.stats.update_success, &self.stats.update_fail);
        res
    }

    fn update_inner(
        &mut self,
        path: &str,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let path = clean(path);
        if self.readonly.contains(&*path) {
            return Err(Error::new(ErrorCode::RootROnly, "/", self.index));
        }
        let node = self.walk(&path)?;
        if node.is_dir() && !value.is_empty() {
            return Err(Error::new(ErrorCode::NotFile, path, self.index));
        }
        Ok(self.rewrite(&path, Action::Update, value, ttl, now))
    }

    fn compare_fail_cause(node: &Node, prev_value: &str, prev_index: u64) -> Option<String> {
        let index_ok = prev_index == 0 || node.modified_index == prev_index;
        let value_ok = prev_value.is_empty() || node.value() == prev_value;
        match (value_ok, index_ok) {
            (true, true) => None,
            (true, false) => Some(format!("[{prev_index} != {}]", node.modified_index)),
            (false, true) => Some(format!("[{prev_value} != {}]", node.value())),
            (false, false) => Some(format!(
                "[{prev_value} != {}] [{prev_index} != {}]",
                node.value(),
                node.modified_index
            )),
        }
    }

    /// Swaps a key's value if it matches `prev_value` and/or `prev_index`.
    pub fn compare_and_swap(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self.cas_inner(path, prev_value, prev_index, value, ttl, now);
        count(&res, &self.stats.cas_success, &self.stats.cas_fail);
        res
    }

    fn cas_inner(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Result<Event> {
        let path = clean(path);
        if self.readonly.contains(&*path) {
            return Err(Error::new(ErrorCode::RootROnly, "/", self.index));
        }
        let node = self.walk(&path)?;
        if node.is_dir() {
            return Err(Error::new(ErrorCode::NotFile, path, self.index));
        }
        if let Some(cause) = Self::compare_fail_cause(node, prev_value, prev_index) {
            return Err(Error::new(ErrorCode::TestFailed, cause, self.index));
        }
        Ok(self.rewrite(&path, Action::CompareAndSwap, value, ttl, now))
    }

    /// Writes a new value (unless refreshing) and expiry into an existing node at the next
    /// index, and records and announces the change (update and compare-and-swap).
    fn rewrite(
        &mut self,
        path: &str,
        action: Action,
        value: &str,
        ttl: TtlOptions,
        now: SystemTime,
    ) -> Event {
        let next = self.index + 1;
        let node = self.walk_mut(path).expect("callers walked to the node");
        let prev = node.repr(path, false, false, now);
        let old_expire = node.expire();
        // etcd's node write is refused for a directory (the error is ignored): a directory
        // keeps its modifiedIndex in the store, while the event reports the new index.
        let is_dir = node.is_dir();
        if !is_dir {
            if !ttl.refresh {
                node.set_value(value);
            }
            node.modified_index = next;
        }
        let expire = ttl.expire_time.map(clamp_expiry);
        node.set_expire(expire);
        let mut ext = node.repr(path, false, false, now);
        ext.modified_index = next;
        self.set_ttl(path, old_expire, expire);
        self.index = next;
        let ev = Event {
            action,
            node: Some(ext),
            prev_node: Some(prev),
            etcd_index: next,
        };
        self.notify(ev, ttl.refresh)
    }

    /// Removes a node from the tree and returns it.
    fn detach(&mut self, path: &str) -> Option<Node> {
        let (dir, name) = split(path);
        self.walk_mut(dir)?.children.as_mut()?.remove(name)
    }

    /// Deletes a key, or a directory with `dir` (empty) or `recursive`.
    pub fn delete(
        &mut self,
        path: &str,
        dir: bool,
        recursive: bool,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self.delete_inner(path, dir, recursive, now);
        count(&res, &self.stats.delete_success, &self.stats.delete_fail);
        res
    }

    fn delete_inner(
        &mut self,
        path: &str,
        dir: bool,
        recursive: bool,
        now: SystemTime,
    ) -> Result<Event> {
        let path = clean(path);
        if self.readonly.contains(&*path) {
            return Err(Error::new(ErrorCode::RootROnly, "/", self.index));
        }
        let dir = dir || recursive;
        let node = self.walk(&path)?;
        if let Some(children) = &node.children {
            if !dir {
                return Err(Error::new(ErrorCode::NotFile, path, self.index));
            }
            if !children.is_empty() && !recursive {
                return Err(Error::new(ErrorCode::DirNotEmpty, path, self.index));
            }
        }
        let next = self.index + 1;
        let ev = Event {
            action: Action::Delete,
            node: Some(removed_view(&path, node.is_dir(), next, node.created_index)),
            prev_node: Some(node.repr(&path, false, false, now)),
            etcd_index: next,
        };
        Ok(self.remove_with_event(&path, ev))
    }

    fn remove_with_event(&mut self, path: &str, ev: Event) -> Event {
        let arc = Arc::new(ev);
        if let Some(node) = self.detach(path) {
            self.on_removed(path, &node, &arc);
        }
        self.index = arc.etcd_index;
        let ev = Arc::try_unwrap(arc).unwrap_or_else(|a| (*a).clone());
        self.notify(ev, false)
    }

    /// Deletes a key if it matches `prev_value` and/or `prev_index`.
    pub fn compare_and_delete(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        now: SystemTime,
    ) -> Result<Event> {
        let res = self.cad_inner(path, prev_value, prev_index, now);
        count(&res, &self.stats.cad_success, &self.stats.cad_fail);
        res
    }

    fn cad_inner(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        now: SystemTime,
    ) -> Result<Event> {
        let path = clean(path);
        let node = self.walk(&path)?;
        if node.is_dir() {
            return Err(Error::new(ErrorCode::NotFile, path, self.index));
        }
        if let Some(cause) = Self::compare_fail_cause(node, prev_value, prev_index) {
            return Err(Error::new(ErrorCode::TestFailed, cause, self.index));
        }
        let next = self.index + 1;
        let ev = Event {
            action: Action::CompareAndDelete,
            node: Some(removed_view(&path, false, next, node.created_index)),
            prev_node: Some(node.repr(&path, false, false, now)),
            etcd_index: next,
        };
        Ok(self.remove_with_event(&path, ev))
    }

    /// Watches `key` for changes from `since_index` (0 = the next change).
    pub fn watch(
        &mut self,
        key: &str,
        recursive: bool,
        stream: bool,
        since_index: u64,
        sink: Box<dyn WatchSink>,
    ) -> Result<WatchOutcome> {
        let key = clean(key);
        let since = if since_index == 0 {
            self.index + 1
        } else {
            since_index
        };
        match self.history.scan(&key, recursive, since) {
            Err(mut e) => {
                e.index = self.index;
                Err(e)
            }
            Ok(Some(ev)) => {
                let mut ev = (*ev).clone();
                ev.etcd_index = self.index;
                Ok(WatchOutcome::Ready(Arc::new(ev)))
            }
            Ok(None) => {
                let id = self.hub.add(
                    key.into_owned(),
                    Watcher {
                        recursive,
                        stream,
                        since_index: since,
                        sink,
                    },
                );
                Ok(WatchOutcome::Registered {
                    id,
                    start_index: self.index,
                })
            }
        }
    }

    /// Forgets a watcher (its client left). Idempotent.
    pub fn remove_watcher(&mut self, id: WatcherId) {
        self.hub.remove(id);
    }

    /// Expires every node whose expiry is at or before `cutoff`.
    pub fn delete_expired_keys(&mut self, cutoff: SystemTime) {
        while let Some((t, path)) = self.ttl.first().cloned() {
            if t > cutoff {
                break;
            }
            self.ttl.remove(&(t, path.clone()));
            let Ok(node) = self.walk(&path) else {
                continue;
            };
            let next = self.index + 1;
            let ev = Event {
                action: Action::Expire,
                node: Some(removed_view(&path, node.is_dir(), next, node.created_index)),
                prev_node: Some(node.repr(&path, false, false, cutoff)),
                etcd_index: next,
            };
            self.remove_with_event(&path, ev);
            self.stats.expire_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether any node has a TTL (the leader proposes SYNC only then).
    pub fn has_ttl_keys(&self) -> bool {
        !self.ttl.is_empty()
    }

    /// The state for a snapshot: index and tree (not watchers, not the history).
    ///
    /// A flat binary encoding, one record per node (format 2, described in the `snapshot`
    /// module): neither writing nor reading it recurses, whatever the depth of the tree.
    /// Encoding takes about what copying the tree would (the record is the name and value
    /// plus a few bytes), so callers encode under the read lock instead of copying the tree
    /// to encode elsewhere: one pass instead of two, and no second tree in memory.
    pub fn save(&self) -> Vec<u8> {
        let last = self.last_save_len.load(Ordering::Relaxed);
        let data = snapshot::encode(self.index, &self.root, last + last / 8);
        self.last_save_len.store(data.len(), Ordering::Relaxed);
        data
    }

    /// The state as a compressed snapshot (format 4), what a member writes to disk and
    /// sends: [`Store::save`]'s bytes, compressed while they are encoded.
    pub fn save_compressed(&self) -> Vec<u8> {
        snapshot::encode_compressed(self.generation, self.index, &self.root, None, 0).data
    }

    /// [`Store::save_compressed`], copying from `cache` the blocks of key runs that did not
    /// change since the snapshot it holds (see [`RunCache`](crate::RunCache)); what this one encoded is
    /// handed to [`RunCache::remember`](crate::RunCache::remember) for the next. `epoch` is
    /// what [`begin_snapshot`](crate::begin_snapshot) returned when this state was fixed: the
    /// spans of big directories changed since the cached snapshot are found from it, and
    /// only their nodes are read.
    pub fn save_reusing(&self, cache: &crate::RunCache, epoch: u64) -> crate::Saved {
        snapshot::encode_compressed(self.generation, self.index, &self.root, Some(cache), epoch)
    }

    /// Checks that `state` is a snapshot `recovery` would accept, without touching the store
    /// (a member refuses a snapshot it cannot read before raft commits to it).
    pub fn check_snapshot(state: &[u8]) -> std::result::Result<(), RecoveryError> {
        let (_, root) = snapshot::decode(state).map_err(RecoveryError)?;
        if !root.is_dir() {
            return Err(RecoveryError("root is not a directory".into()));
        }
        Ok(())
    }

    /// Replaces the state with a snapshot's (format 2 or 3, or format 1 or the old nested
    /// JSON that earlier versions wrote). Watchers stay registered. A damaged snapshot is an
    /// error and leaves the store as it was.
    pub fn recovery(&mut self, state: &[u8]) -> std::result::Result<(), RecoveryError> {
        let (index, root) = snapshot::decode(state).map_err(RecoveryError)?;
        if !root.is_dir() {
            return Err(RecoveryError("root is not a directory".into()));
        }
        let mut ttl = BTreeSet::new();
        collect_ttl("/", &root, &mut ttl);
        self.root = root;
        self.index = index;
        self.generation = next_generation();
        self.ttl = ttl;
        self.history = EventHistory::default();
        Ok(())
    }

    /// Body of `/v2/stats/store`.
    pub fn json_stats(&self) -> Vec<u8> {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
            l(&s.gets_success), l(&s.gets_fail), l(&s.sets_success), l(&s.sets_fail),
            l(&s.delete_success), l(&s.delete_fail), l(&s.update_success), l(&s.update_fail),
            l(&s.create_success), l(&s.create_fail), l(&s.cas_success), l(&s.cas_fail),
            l(&s.cad_success), l(&s.cad_fail), l(&s.expire_count), self.hub.count()
        )
        .into_bytes()
    }
}

fn collect_ttl(path: &str, node: &Node, out: &mut BTreeSet<(SystemTime, String)>) {
    visit_paths(path, node, |path, node| {
        if let Some(t) = node.expire() {
            out.insert((t, path.to_string()));
        }
    });
}

/// The view of a node that a delete or an expiry leaves (`node` of the event).
fn removed_view(key: &str, dir: bool, modified_index: u64, created_index: u64) -> NodeExtern {
    NodeExtern {
        key: key.to_string(),
        value: None,
        dir,
        expiration: None,
        ttl: 0,
        nodes: None,
        modified_index,
        created_index,
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Store>();
}
