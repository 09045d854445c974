//! Nodes of the tree and their API representation.
//!
//! A key may have any number of segments, so the tree may be as deep as a request is long:
//! nothing here walks it by recursion. Copying, dropping, listing and visiting every path
//! use an explicit stack (on the heap), so a 100,000-deep tree needs no more thread stack
//! than a flat one.

use std::collections::hash_map;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use oxcd_api::v2::NodeExtern;
use serde::Deserialize;

/// One key or directory.
///
/// `Deserialize` reads the tree of the old JSON snapshot format (see `snapshot`); serde_json
/// bounds its nesting.
#[derive(Deserialize)]
pub struct Node {
    pub created_index: u64,
    pub modified_index: u64,
    /// Value of a key; empty for directories. Shared, so the copy a snapshot takes
    /// (`Store::clone_state`) does not copy the values.
    pub value: Arc<str>,
    /// Expiry; `None` = permanent.
    pub expire: Option<SystemTime>,
    /// `Some` for directories.
    /// Children by name (unordered, as etcd's map: `sorted=true` listings sort them).
    pub children: Option<HashMap<String, Node>>,
}

/// Whether a node has no children to walk into (a key or an empty directory).
fn is_leaf(node: &Node) -> bool {
    node.children.as_ref().is_none_or(HashMap::is_empty)
}

impl Node {
    pub fn new_file(value: &str, index: u64, expire: Option<SystemTime>) -> Node {
        Node {
            created_index: index,
            modified_index: index,
            value: Arc::from(value),
            expire,
            children: None,
        }
    }

    pub fn new_dir(index: u64, expire: Option<SystemTime>) -> Node {
        Node {
            created_index: index,
            modified_index: index,
            value: Arc::from(""),
            expire,
            children: Some(HashMap::new()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.children.is_some()
    }

    /// A copy without the children (a directory's copy has an empty map).
    fn clone_shallow(&self, capacity: usize) -> Node {
        Node {
            created_index: self.created_index,
            modified_index: self.modified_index,
            value: Arc::clone(&self.value),
            expire: self.expire,
            children: self
                .children
                .as_ref()
                .map(|_| HashMap::with_capacity(capacity)),
        }
    }

    /// Expiration and remaining TTL in whole seconds, rounded up (etcd's ceiling).
    pub fn expiration_and_ttl(&self, now: SystemTime) -> (Option<SystemTime>, i64) {
        match self.expire {
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
            value: (!self.is_dir()).then(|| Arc::clone(&self.value)),
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

impl Clone for Node {
    /// Copies the subtree with an explicit stack. A directory holding no directories with
    /// children is copied by its map's own clone (no rehashing): the bulk of most trees.
    fn clone(&self) -> Node {
        let Some(children) = &self.children else {
            return self.clone_shallow(0);
        };
        if children.values().all(is_leaf) {
            let mut copy = self.clone_shallow(0);
            copy.children = Some(children.clone());
            return copy;
        }
        // The directories being copied: the source's children still to copy, the name of
        // the directory in its parent and the copy so far.
        struct Frame<'a> {
            rest: hash_map::Iter<'a, String, Node>,
            name: &'a str,
            copy: Node,
        }
        let mut stack = vec![Frame {
            rest: children.iter(),
            name: "",
            copy: self.clone_shallow(children.len()),
        }];
        loop {
            let Some(top) = stack.last_mut() else {
                // Unreachable: the bottom frame returns below.
                return self.clone_shallow(0);
            };
            if let Some((name, child)) = top.rest.next() {
                match &child.children {
                    Some(grandchildren) if !grandchildren.values().all(is_leaf) => {
                        stack.push(Frame {
                            rest: grandchildren.iter(),
                            name,
                            copy: child.clone_shallow(grandchildren.len()),
                        });
                    }
                    // Its own clone goes one level down only.
                    _ => insert_child(&mut top.copy, name, child.clone()),
                }
                continue;
            }
            let Some(done) = stack.pop() else {
                continue;
            };
            match stack.last_mut() {
                Some(parent) => insert_child(&mut parent.copy, done.name, done.copy),
                None => return done.copy,
            }
        }
    }
}

fn insert_child(dir: &mut Node, name: &str, child: Node) {
    if let Some(children) = dir.children.as_mut() {
        children.insert(name.to_string(), child);
    }
}

impl Drop for Node {
    /// Frees the subtree with an explicit stack: the default drop of nested maps recurses
    /// once per level.
    fn drop(&mut self) {
        let Some(children) = self.children.take() else {
            return;
        };
        if children.values().all(is_leaf) {
            // Dropping the map drops leaves only, which go no further down.
            return;
        }
        let mut stack = vec![children];
        while let Some(mut map) = stack.pop() {
            for (_, mut child) in map.drain() {
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
            .field("value", &self.value)
            .field("expire", &self.expire)
            .field("children", &self.children.as_ref().map(HashMap::len))
            .finish()
    }
}

/// Visible (non-hidden) children of a directory as API nodes; with `recursive`, each
/// directory with its own visible children, to any depth (built with an explicit stack).
pub fn list_children(
    path: &str,
    children: &HashMap<String, Node>,
    recursive: bool,
    sorted: bool,
    now: SystemTime,
) -> Vec<NodeExtern> {
    let visible = |children: &'_ HashMap<String, Node>| {
        children
            .iter()
            .filter(|(name, _)| !name.starts_with('_'))
            .count()
    };
    let sort = |list: &mut Vec<NodeExtern>| {
        if sorted {
            list.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
    };
    if !recursive {
        let mut list: Vec<NodeExtern> = children
            .iter()
            .filter(|(name, _)| !name.starts_with('_'))
            .map(|(name, child)| child.repr_shallow(join(path, name), now))
            .collect();
        sort(&mut list);
        return list;
    }
    // The directories being listed: the children still to visit, the directory's own view
    // (`None` for the one listed at `path`) and its list so far.
    struct Frame<'a> {
        rest: hash_map::Iter<'a, String, Node>,
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
        if let Some((name, child)) = top.rest.next() {
            if name.starts_with('_') {
                continue;
            }
            let parent = top.owner.as_ref().map_or(path, |o| o.key.as_str());
            let ext = child.repr_shallow(join(parent, name), now);
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
    let mut stack: Vec<(hash_map::Iter<'_, String, Node>, usize)> =
        vec![(children.iter(), buf.len())];
    while let Some((rest, parent_len)) = stack.last_mut() {
        let parent_len = *parent_len;
        let Some((name, child)) = rest.next() else {
            stack.pop();
            continue;
        };
        buf.truncate(parent_len);
        if buf != "/" {
            buf.push('/');
        }
        buf.push_str(name);
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
