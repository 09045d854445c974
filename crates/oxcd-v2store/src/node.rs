//! Nodes of the tree and their API representation.
//!
//! A key may have any number of segments, so the tree may be as deep as a request is long:
//! nothing here walks it by recursion. Dropping, listing and visiting every path
//! use an explicit stack (on the heap), so a 100,000-deep tree needs no more thread stack
//! than a flat one.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::hash_table::{self, HashTable};
use oxcd_api::v2::NodeExtern;

/// One key or directory.
///
/// Laid out for a million keys: 56 bytes, an 8-byte slot in its parent's table, and one
/// allocation holding the node's name and its value (the floor is those bytes themselves).
/// A directory's table is boxed (8 bytes in every key instead of a 48-byte empty map) and
/// holds the nodes by the names they carry (no separate key string per child); the expiry is
/// 8 bytes of Unix nanoseconds (what a replicated request carries).
pub struct Node {
    pub created_index: u64,
    pub modified_index: u64,
    /// Expiry in Unix nanoseconds; [`NO_EXPIRY`] = permanent.
    expire_nanos: i64,
    /// The node's name in its parent (empty for the root), then a key's value.
    text: Box<str>,
    /// Where the name ends in `text`.
    name_len: usize,
    /// `Some` for directories.
    /// Children by name (unordered, as etcd's map: `sorted=true` listings sort them).
    pub children: Option<Box<Children>>,
}

/// `expire_nanos` of a permanent node.
const NO_EXPIRY: i64 = i64::MIN;

/// The expiry a node can hold: Unix nanoseconds in an `i64` (1677 to 2262, what a replicated
/// request carries), so later times are the last representable instant. Callers that index
/// expiries use the clamped time, so the index and the node agree.
pub fn clamp_expiry(t: SystemTime) -> SystemTime {
    from_nanos(to_nanos(Some(t)))
}

fn to_nanos(t: Option<SystemTime>) -> i64 {
    let Some(t) = t else {
        return NO_EXPIRY;
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // NO_EXPIRY itself is one below the earliest expiry.
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(NO_EXPIRY + 1, |n| -n),
    }
}

fn from_nanos(n: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Whether a node has no children to walk into (a key or an empty directory).
fn is_leaf(node: &Node) -> bool {
    node.children.as_ref().is_none_or(|c| c.is_empty())
}

/// One name followed by one value, as one allocation.
fn name_and_value(name: &str, value: &str) -> Box<str> {
    let mut text = String::with_capacity(name.len() + value.len());
    text.push_str(name);
    text.push_str(value);
    text.into_boxed_str()
}

impl Node {
    pub fn new_file(name: &str, value: &str, index: u64, expire: Option<SystemTime>) -> Node {
        Node {
            created_index: index,
            modified_index: index,
            expire_nanos: to_nanos(expire),
            text: name_and_value(name, value),
            name_len: name.len(),
            children: None,
        }
    }

    pub fn new_dir(name: &str, index: u64, expire: Option<SystemTime>) -> Node {
        Node {
            created_index: index,
            modified_index: index,
            expire_nanos: to_nanos(expire),
            text: name.into(),
            name_len: name.len(),
            children: Some(Box::default()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.children.is_some()
    }

    /// Expiry; `None` = permanent.
    pub fn expire(&self) -> Option<SystemTime> {
        (self.expire_nanos != NO_EXPIRY).then(|| from_nanos(self.expire_nanos))
    }

    /// Sets the expiry (see [`clamp_expiry`] for its range).
    pub fn set_expire(&mut self, expire: Option<SystemTime>) {
        self.expire_nanos = to_nanos(expire);
    }

    /// The node's name in its parent directory (empty for the root).
    /// The bytes of the name and the value together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    pub fn name(&self) -> &str {
        &self.text[..self.name_len]
    }

    /// A key's value (empty for a directory).
    pub fn value(&self) -> &str {
        &self.text[self.name_len..]
    }

    /// Replaces a key's value.
    pub fn set_value(&mut self, value: &str) {
        self.text = name_and_value(self.name(), value);
    }

    /// Expiration and remaining TTL in whole seconds, rounded up (etcd's ceiling).
    pub fn expiration_and_ttl(&self, now: SystemTime) -> (Option<SystemTime>, i64) {
        match self.expire() {
            None => (None, 0),
            Some(t) => {
                let ttl = match t.duration_since(now) {
                    Ok(d) => {
                        let secs = d.as_secs() as i64;
                        if d.subsec_nanos() > 0 {
                            secs + 1
                        } else {
                            secs
                        }
                    }
                    Err(e) => {
                        // Past expiry not yet applied: Go's integer division truncates to zero.
                        -(e.duration().as_secs() as i64)
                    }
                };
                (Some(t), ttl)
            }
        }
    }

    /// The API view of this node alone at `key` (no `nodes`).
    fn repr_shallow(&self, key: String, now: SystemTime) -> NodeExtern {
        let (expiration, ttl) = self.expiration_and_ttl(now);
        NodeExtern {
            key,
            value: (!self.is_dir()).then(|| Arc::from(self.value())),
            dir: self.is_dir(),
            expiration,
            ttl,
            nodes: None,
            modified_index: self.modified_index,
            created_index: self.created_index,
        }
    }

    /// The API view of this node at `path`.
    pub fn repr(&self, path: &str, recursive: bool, sorted: bool, now: SystemTime) -> NodeExtern {
        let mut ext = self.repr_shallow(path.to_string(), now);
        if let Some(children) = &self.children {
            if recursive {
                ext.nodes = Some(list_children(path, children, true, sorted, now));
            }
        }
        ext
    }
}

impl Drop for Node {
    /// Frees the subtree with an explicit stack: the default drop of nested maps recurses
    /// once per level.
    fn drop(&mut self) {
        let Some(children) = self.children.take() else {
            return;
        };
        if children.iter().all(is_leaf) {
            // Dropping the table drops leaves only, which go no further down.
            return;
        }
        let mut stack = vec![children];
        while let Some(mut table) = stack.pop() {
            for mut child in table.drain() {
                if let Some(grandchildren) = child.children.take() {
                    if !grandchildren.is_empty() {
                        stack.push(grandchildren);
                    }
                }
                // `child` has no children left: dropping it does not recurse.
            }
        }
    }
}

impl fmt::Debug for Node {
    /// The node itself and its number of children (not the subtree, which may be deep).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("created_index", &self.created_index)
            .field("modified_index", &self.modified_index)
            .field("name", &self.name())
            .field("value", &self.value())
            .field("expire", &self.expire())
            .field("children", &self.children.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// Whether a node is hidden from listings (its name starts with `_`).
fn is_hidden(node: &Node) -> bool {
    node.name().starts_with('_')
}

/// Visible (non-hidden) children of a directory as API nodes; with `recursive`, each
/// directory with its own visible children, to any depth (built with an explicit stack).
pub fn list_children(
    path: &str,
    children: &Children,
    recursive: bool,
    sorted: bool,
    now: SystemTime,
) -> Vec<NodeExtern> {
    let visible = |children: &Children| children.iter().filter(|c| !is_hidden(c)).count();
    let sort = |list: &mut Vec<NodeExtern>| {
        if sorted {
            list.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
    };
    if !recursive {
        let mut list: Vec<NodeExtern> = children
            .iter()
            .filter(|c| !is_hidden(c))
            .map(|child| child.repr_shallow(join(path, child.name()), now))
            .collect();
        sort(&mut list);
        return list;
    }
    // The directories being listed: the children still to visit, the directory's own view
    // (`None` for the one listed at `path`) and its list so far.
    struct Frame<'a> {
        rest: ChildIter<'a>,
        owner: Option<NodeExtern>,
        list: Vec<NodeExtern>,
    }
    let mut stack = vec![Frame {
        rest: children.iter(),
        owner: None,
        list: Vec::with_capacity(visible(children)),
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            // Unreachable: the bottom frame returns below.
            return Vec::new();
        };
        if let Some(child) = top.rest.next() {
            if is_hidden(child) {
                continue;
            }
            let parent = top.owner.as_ref().map_or(path, |o| o.key.as_str());
            let ext = child.repr_shallow(join(parent, child.name()), now);
            match &child.children {
                Some(grandchildren) => stack.push(Frame {
                    rest: grandchildren.iter(),
                    owner: Some(ext),
                    list: Vec::with_capacity(visible(grandchildren)),
                }),
                None => top.list.push(ext),
            }
            continue;
        }
        let Some(mut done) = stack.pop() else {
            continue;
        };
        sort(&mut done.list);
        match (done.owner, stack.last_mut()) {
            (Some(mut owner), Some(parent)) => {
                owner.nodes = Some(done.list);
                parent.list.push(owner);
            }
            _ => return done.list,
        }
    }
}

/// Calls `visit` with the path and node of `node` (at `path`) and of every node below it,
/// parents before children. One path buffer serves the whole walk, so visiting a deep
/// chain costs its length, not the sum of its paths' lengths.
pub fn visit_paths(path: &str, node: &Node, mut visit: impl FnMut(&str, &Node)) {
    visit(path, node);
    let Some(children) = node.children.as_ref().filter(|c| !c.is_empty()) else {
        return;
    };
    let mut buf = path.to_string();
    // Each frame: the children still to visit and the length of their parent's path.
    let mut stack: Vec<(ChildIter<'_>, usize)> = vec![(children.iter(), buf.len())];
    while let Some((rest, parent_len)) = stack.last_mut() {
        let parent_len = *parent_len;
        let Some(child) = rest.next() else {
            stack.pop();
            continue;
        };
        buf.truncate(parent_len);
        if buf != "/" {
            buf.push('/');
        }
        buf.push_str(child.name());
        visit(&buf, child);
        if let Some(grandchildren) = child.children.as_ref().filter(|c| !c.is_empty()) {
            stack.push((grandchildren.iter(), buf.len()));
        }
    }
}

/// `path.Join(dir, name)` for a rooted clean `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The hasher of every directory's table: one random key per process, as `HashMap`'s
/// default (names are chosen by clients, so the hash must not be predictable), without
/// the 16 bytes of a `RandomState` in every directory.
fn hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

fn hash_name(name: &str) -> u64 {
    hasher().hash_one(name)
}

/// A directory's children, found by the names they carry.
///
/// The table holds boxed nodes: a slot is 8 bytes, not a node's 56, and a table is between
/// 44% and 88% full, so the slots left empty cost little.
#[derive(Default)]
pub struct Children {
    table: HashTable<Box<Node>>,
    /// Where children changed, once the directory is big (see [`Touched`]).
    touched: Option<Box<Touched>>,
}

/// The memory spans of a big directory's children, with the last snapshot epoch in which a
/// child there was added, removed or handed out to be changed (every change to a child goes
/// through [`Children`]'s `&mut` methods). A snapshot copies the blocks of spans untouched
/// since the last one without reading their nodes (`snapshot::RunCache`).
pub struct Touched {
    /// The epoch tracking began in: changes before it were not recorded.
    pub since: u64,
    /// Span (address / [`SPAN`]) → last epoch touched.
    pub spans: std::collections::HashMap<usize, u64>,
    /// Addresses of the children that are directories (as added; a child changed in
    /// place is in a touched span, and a reader checks what it finds).
    pub dirs: std::collections::BTreeMap<usize, Box<str>>,
}

/// The span of memory that snapshot runs group keys by.
pub const SPAN: usize = 64 * 1024;
/// Directories with at least this many children track touched spans (and are snapshotted in
/// runs).
pub const TRACKED_LEN: usize = 4096;

/// The current snapshot epoch: changes record it; [`begin_snapshot`] ends it.
static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Ends the current snapshot epoch and returns it: call where the snapshot's state is fixed
/// (before the fork). Every change before the call recorded an epoch at most the returned
/// one, every change after it a later one.
pub fn begin_snapshot() -> u64 {
    EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The children of a directory, in no particular order.
pub struct ChildIter<'a>(hash_table::Iter<'a, Box<Node>>);

impl<'a> Iterator for ChildIter<'a> {
    type Item = &'a Node;

    fn next(&mut self) -> Option<&'a Node> {
        self.0.next().map(|n| &**n)
    }
}

impl Children {
    pub fn with_capacity(capacity: usize) -> Children {
        Children {
            table: HashTable::with_capacity(capacity),
            touched: None,
        }
    }

    /// Where children changed, if this directory tracks it.
    pub fn touched(&self) -> Option<&Touched> {
        self.touched.as_deref()
    }

    /// Starts tracking once the directory is about to be big.
    fn track(&mut self) {
        if self.touched.is_none() && self.table.len() + 1 >= TRACKED_LEN {
            self.touched = Some(Box::new(Touched {
                since: EPOCH.load(std::sync::atomic::Ordering::Relaxed),
                spans: std::collections::HashMap::new(),
                dirs: self
                    .table
                    .iter()
                    .filter(|n| n.is_dir())
                    .map(|n| (std::ptr::from_ref::<Node>(&**n).addr(), n.name().into()))
                    .collect(),
            }));
        }
    }

    /// Records a change to the child at `at`; `now`: what is there now, if known (a
    /// directory and its name, or gone or a key).
    fn touch(touched: &mut Option<Box<Touched>>, at: *const Node, now: Option<Option<&str>>) {
        let Some(t) = touched else {
            return;
        };
        let epoch = EPOCH.load(std::sync::atomic::Ordering::Relaxed);
        t.spans.insert(at.addr() / SPAN, epoch);
        match now {
            Some(Some(dir_name)) => {
                t.dirs.insert(at.addr(), dir_name.into());
            }
            Some(None) => {
                t.dirs.remove(&at.addr());
            }
            None => {}
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.table
            .find(hash_name(name), |n| n.name() == name)
            .map(|n| &**n)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.track();
        let node = self
            .table
            .find_mut(hash_name(name), |n| n.name() == name)
            .map(|n| &mut **n)?;
        Self::touch(&mut self.touched, node, None);
        Some(node)
    }

    /// Adds `node` under its name, returning the node it replaced.
    pub fn insert(&mut self, node: Node) -> Option<Node> {
        self.track();
        let hash = hash_name(node.name());
        let dir_name: Option<Box<str>> = node.is_dir().then(|| node.name().into());
        let entry = self
            .table
            .entry(hash, |n| n.name() == node.name(), |n| hash_name(n.name()));
        let (at, replaced) = match entry {
            hash_table::Entry::Occupied(mut slot) => {
                let replaced = std::mem::replace(&mut **slot.get_mut(), node);
                (std::ptr::from_ref::<Node>(slot.get()), Some(replaced))
            }
            hash_table::Entry::Vacant(slot) => {
                let slot = slot.insert(Box::new(node));
                (std::ptr::from_ref::<Node>(slot.get()), None)
            }
        };
        Self::touch(&mut self.touched, at, Some(dir_name.as_deref()));
        replaced
    }

    /// The child named `name`, or a new one made by `make`.
    pub fn get_or_insert_with(&mut self, name: &str, make: impl FnOnce() -> Node) -> &mut Node {
        self.track();
        let entry = self.table.entry(
            hash_name(name),
            |n| n.name() == name,
            |n| hash_name(n.name()),
        );
        let node = &mut **entry.or_insert_with(|| Box::new(make())).into_mut();
        let dir_name = node.is_dir().then_some(name);
        Self::touch(&mut self.touched, node, Some(dir_name));
        node
    }

    pub fn remove(&mut self, name: &str) -> Option<Node> {
        let node = self
            .table
            .find_entry(hash_name(name), |n| n.name() == name)
            .ok()
            .map(|slot| slot.remove().0)?;
        Self::touch(&mut self.touched, &*node, Some(None));
        Some(*node)
    }

    /// The children, in no particular order.
    pub fn iter(&self) -> ChildIter<'_> {
        ChildIter(self.table.iter())
    }

    /// Takes every child out (the table stays allocated).
    fn drain(&mut self) -> impl Iterator<Item = Node> + '_ {
        self.table.drain().map(|n| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_costs_fifty_six_bytes_plus_its_name_and_value() {
        // The budget of the memory-per-key work: keep it from creeping back.
        assert!(
            std::mem::size_of::<Node>() <= 56,
            "{}",
            std::mem::size_of::<Node>()
        );
        let mut key = Node::new_file("k1", "value", 3, None);
        assert_eq!((key.name(), key.value()), ("k1", "value"));
        key.set_value("");
        assert_eq!((key.name(), key.value()), ("k1", ""));
        let dir = Node::new_dir("d", 4, None);
        assert_eq!((dir.name(), dir.value(), dir.is_dir()), ("d", "", true));
    }

    #[test]
    fn expiries_round_trip_within_the_range_of_i64_nanoseconds() {
        let mut key = Node::new_file("k", "v", 1, None);
        assert_eq!(key.expire(), None);
        let exact = [
            UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(1, 999_999_995),
            UNIX_EPOCH,
        ];
        for t in exact {
            key.set_expire(Some(t));
            assert_eq!(key.expire(), Some(t));
            assert_eq!(clamp_expiry(t), t);
        }
        // Beyond 2262: the last representable instant, as the node holds it.
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
        key.set_expire(Some(far));
        let last = UNIX_EPOCH + Duration::from_nanos(i64::MAX as u64);
        assert_eq!((key.expire(), clamp_expiry(far)), (Some(last), last));
        key.set_expire(None);
        assert_eq!(key.expire(), None);
    }

    #[test]
    fn children_are_found_replaced_and_removed_by_name() {
        let mut c = Children::default();
        assert!(c.insert(Node::new_file("a", "1", 1, None)).is_none());
        assert!(c.insert(Node::new_file("b", "2", 2, None)).is_none());
        let old = c
            .insert(Node::new_file("a", "3", 3, None))
            .expect("replaced");
        assert_eq!(old.value(), "1");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("a").map(Node::value), Some("3"));
        c.get_or_insert_with("d", || Node::new_dir("d", 4, None));
        assert!(c.get_or_insert_with("d", || unreachable!()).is_dir());
        assert_eq!(c.remove("b").map(|n| n.created_index), Some(2));
        assert!(c.get("b").is_none());
        let mut names: Vec<&str> = c.iter().map(Node::name).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "d"]);
    }
}
