//! Nodes of the tree and their API representation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use oxcd_api::v2::NodeExtern;
use serde::{Deserialize, Serialize};

/// One key or directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

    /// The API view of this node at `path`.
    pub fn repr(&self, path: &str, recursive: bool, sorted: bool, now: SystemTime) -> NodeExtern {
        let (expiration, ttl) = self.expiration_and_ttl(now);
        let mut ext = NodeExtern {
            key: path.to_string(),
            value: None,
            dir: self.is_dir(),
            expiration,
            ttl,
            nodes: None,
            modified_index: self.modified_index,
            created_index: self.created_index,
        };
        match &self.children {
            None => ext.value = Some(Arc::clone(&self.value)),
            Some(children) if recursive => {
                ext.nodes = Some(list_children(path, children, true, sorted, now));
            }
            Some(_) => {}
        }
        ext
    }
}

/// Visible (non-hidden) children of a directory as API nodes.
pub fn list_children(
    path: &str,
    children: &HashMap<String, Node>,
    recursive: bool,
    sorted: bool,
    now: SystemTime,
) -> Vec<NodeExtern> {
    let mut list: Vec<NodeExtern> = children
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(name, child)| child.repr(&join(path, name), recursive, sorted, now))
        .collect();
    if sorted {
        list.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    }
    list
}

/// `path.Join(dir, name)` for a rooted clean `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}
