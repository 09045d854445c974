//! The v2 keys API on the wire: events, nodes, and the error-code table.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every v2 error code etcd defines. The numeric value is the `errorCode` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    KeyNotFound = 100,
    TestFailed = 101,
    NotFile = 102,
    NoMorePeer = 103,
    NotDir = 104,
    NodeExist = 105,
    KeyIsPreserved = 106,
    RootROnly = 107,
    DirNotEmpty = 108,
    ExistingPeerAddr = 109,
    Unauthorized = 110,
    ValueRequired = 200,
    PrevValueRequired = 201,
    TTLNaN = 202,
    IndexNaN = 203,
    ValueOrTTLRequired = 204,
    TimeoutNaN = 205,
    NameRequired = 206,
    IndexOrValueRequired = 207,
    IndexValueMutex = 208,
    InvalidField = 209,
    InvalidForm = 210,
    RefreshValue = 211,
    RefreshTTLRequired = 212,
    RaftInternal = 300,
    LeaderElect = 301,
    WatcherCleared = 400,
    EventIndexCleared = 401,
    StandbyInternal = 402,
    InvalidActiveSize = 403,
    InvalidRemoveDelay = 404,
    ClientInternal = 500,
}

impl ErrorCode {
    /// etcd's message for the code.
    pub fn message(self) -> &'static str {
        use ErrorCode::*;
        match self {
            KeyNotFound => "Key not found",
            TestFailed => "Compare failed",
            NotFile => "Not a file",
            NoMorePeer => "Reached the max number of peers in the cluster",
            NotDir => "Not a directory",
            NodeExist => "Key already exists",
            KeyIsPreserved => "The prefix of given key is a keyword in etcd",
            RootROnly => "Root is read only",
            DirNotEmpty => "Directory not empty",
            ExistingPeerAddr => "Peer address has existed",
            Unauthorized => "The request requires user authentication",
            ValueRequired => "Value is Required in POST form",
            PrevValueRequired => "PrevValue is Required in POST form",
            TTLNaN => "The given TTL in POST form is not a number",
            IndexNaN => "The given index in POST form is not a number",
            ValueOrTTLRequired => "Value or TTL is required in POST form",
            TimeoutNaN => "The given timeout in POST form is not a number",
            NameRequired => "Name is required in POST form",
            IndexOrValueRequired => "Index or value is required",
            IndexValueMutex => "Index and value cannot both be specified",
            InvalidField => "Invalid field",
            InvalidForm => "Invalid POST form",
            RefreshValue => "Value provided on refresh",
            RefreshTTLRequired => "A TTL must be provided on refresh",
            RaftInternal => "Raft Internal Error",
            LeaderElect => "During Leader Election",
            WatcherCleared => "watcher is cleared due to etcd recovery",
            EventIndexCleared => "The event in requested index is outdated and cleared",
            StandbyInternal => "Standby Internal Error",
            InvalidActiveSize => "Invalid active size",
            InvalidRemoveDelay => "Standby remove delay",
            ClientInternal => "Client Internal Error",
        }
    }

    /// etcd's HTTP status for the code (400 unless listed).
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            KeyNotFound => 404,
            NotFile | DirNotEmpty => 403,
            Unauthorized => 401,
            TestFailed | NodeExist => 412,
            RaftInternal | LeaderElect => 500,
            _ => 400,
        }
    }
}

/// A v2 API error: etcd's `{"errorCode","message","cause","index"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code_num}: {msg} ({cause}) [{index}]", code_num = *code as u32, msg = code.message())]
pub struct Error {
    /// The error code.
    pub code: ErrorCode,
    /// What the error is about (a key, a comparison, a parse failure).
    pub cause: String,
    /// The store index when the error happened.
    pub index: u64,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    #[serde(rename = "errorCode")]
    code: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cause: &'a str,
    index: u64,
}

impl Error {
    /// A new error.
    pub fn new(code: ErrorCode, cause: impl Into<String>, index: u64) -> Error {
        Error {
            code,
            cause: cause.into(),
            index,
        }
    }

    /// etcd's message for the code.
    pub fn message(&self) -> &'static str {
        self.code.message()
    }

    /// The HTTP status of the response carrying this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The JSON body etcd writes (without the trailing newline).
    pub fn to_json(&self) -> String {
        crate::json::to_string(&ErrorJson {
            code: self.code as u32,
            message: self.message(),
            cause: &self.cause,
            index: self.index,
        })
    }

    /// Removes a store namespace prefix from the cause (`/1/foo` → `/foo`).
    pub fn trim_prefix(&mut self, prefix: &str) {
        if let Some(rest) = self.cause.strip_prefix(prefix) {
            self.cause = rest.to_string();
        }
    }
}

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "get")]
    Get,
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compareAndSwap")]
    CompareAndSwap,
    #[serde(rename = "compareAndDelete")]
    CompareAndDelete,
    #[serde(rename = "expire")]
    Expire,
}

impl Action {
    /// The name etcd uses for the action in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::CompareAndSwap => "compareAndSwap",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// A node as the API shows it (etcd's `NodeExtern`).
///
/// A listing nests as deep as the tree, and a key may have any number of segments: what
/// walks the nesting here — [`NodeExtern::write_json`], [`NodeExtern::trim_prefix`],
/// `clone` and `drop` — uses an explicit stack, never recursion, so a 100,000-deep listing
/// does not overflow a thread's stack. (Because of the `Drop`, fields cannot be moved out
/// of a node: `take` them. The derived `Debug`, `PartialEq` and serde impls do recurse;
/// serde_json's recursion limit bounds what `Deserialize` accepts.)
#[derive(Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeExtern {
    /// Full key path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Value of a key (absent for directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<std::sync::Arc<str>>,
    /// Whether the node is a directory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir: bool,
    /// When the node expires.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_time",
        deserialize_with = "de_time"
    )]
    pub expiration: Option<SystemTime>,
    /// Seconds left until expiry (rounded up).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ttl: i64,
    /// Children of a directory, when listed. Like Go's `omitempty`, an empty list is not
    /// written (etcd never sends `"nodes":[]`).
    #[serde(default, skip_serializing_if = "no_nodes")]
    pub nodes: Option<Vec<NodeExtern>>,
    /// Index of the last change.
    #[serde(rename = "modifiedIndex", default, skip_serializing_if = "is_zero_u64")]
    pub modified_index: u64,
    /// Index of the creation.
    #[serde(rename = "createdIndex", default, skip_serializing_if = "is_zero_u64")]
    pub created_index: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn ser_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::time::format_rfc3339_nano(*t)),
        None => s.serialize_none(),
    }
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => crate::time::parse_rfc3339(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}"))),
    }
}

impl NodeExtern {
    /// Removes a store namespace prefix from this node's key and its children's.
    pub fn trim_prefix(&mut self, prefix: &str) {
        fn trim_one(n: &mut NodeExtern, prefix: &str) {
            if n.key.starts_with(prefix) {
                // In place: no new string per node of every response.
                n.key.drain(..prefix.len());
            }
        }
        trim_one(self, prefix);
        let Some(nodes) = &mut self.nodes else {
            return;
        };
        // Depth-first with an explicit stack: listings can nest as deep as keys go.
        let mut stack: Vec<&mut NodeExtern> = nodes.iter_mut().collect();
        while let Some(n) = stack.pop() {
            trim_one(n, prefix);
            if let Some(nodes) = &mut n.nodes {
                stack.extend(nodes.iter_mut());
            }
        }
    }

    /// A copy of the node without its children (`nodes` is `None`).
    fn clone_shallow(&self) -> NodeExtern {
        NodeExtern {
            key: self.key.clone(),
            value: self.value.clone(),
            dir: self.dir,
            expiration: self.expiration,
            ttl: self.ttl,
            nodes: None,
            modified_index: self.modified_index,
            created_index: self.created_index,
        }
    }
}

impl Clone for NodeExtern {
    /// Copies the whole listing, with an explicit stack (no recursion).
    fn clone(&self) -> NodeExtern {
        let mut top = self.clone_shallow();
        let Some(nodes) = &self.nodes else {
            return top;
        };
        // Each frame: a source list, how far it is copied, and the copy so far; a finished
        // frame's copy becomes the `nodes` of the last copied node of the frame below.
        let mut stack: Vec<(&[NodeExtern], usize, Vec<NodeExtern>)> =
            vec![(nodes, 0, Vec::with_capacity(nodes.len()))];
        while let Some(frame) = stack.last_mut() {
            let src: &[NodeExtern] = frame.0;
            if let Some(n) = src.get(frame.1) {
                frame.1 += 1;
                frame.2.push(n.clone_shallow());
                if let Some(children) = n.nodes.as_deref() {
                    stack.push((children, 0, Vec::with_capacity(children.len())));
                }
                continue;
            }
            let Some((_, _, done)) = stack.pop() else {
                break;
            };
            let parent = match stack.last_mut() {
                Some((_, _, out)) => out.last_mut(),
                None => Some(&mut top),
            };
            if let Some(parent) = parent {
                parent.nodes = Some(done);
            }
        }
        top
    }
}

impl Drop for NodeExtern {
    /// Frees the children with an explicit stack: the default drop recurses once per level.
    fn drop(&mut self) {
        let Some(nodes) = self.nodes.take() else {
            return;
        };
        if nodes.iter().all(|n| n.nodes.is_none()) {
            // The common case: leaves only, whose drops do not go further down.
            return;
        }
        let mut stack = vec![nodes];
        while let Some(mut list) = stack.pop() {
            for mut n in list.drain(..) {
                if let Some(children) = n.nodes.take() {
                    stack.push(children);
                }
                // `n` has no children left: dropping it does not recurse.
            }
        }
    }
}

/// The result of an operation, and what watchers receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub action: Action,
    /// The node after the change (or the node read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeExtern>,
    /// The node before the change.
    #[serde(rename = "prevNode", default, skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<NodeExtern>,
    /// Store index when the event was produced (the `X-Etcd-Index` header, not in the body).
    #[serde(skip)]
    pub etcd_index: u64,
}

impl Event {
    /// Removes a store namespace prefix from every key in the event.
    pub fn trim_prefix(&mut self, prefix: &str) {
        if let Some(n) = &mut self.node {
            n.trim_prefix(prefix);
        }
        if let Some(n) = &mut self.prev_node {
            n.trim_prefix(prefix);
        }
    }

    /// The index the event happened at (the node's modified index).
    pub fn index(&self) -> u64 {
        self.node.as_ref().map(|n| n.modified_index).unwrap_or(0)
    }
}

/// Whether `nodes` is left out of the JSON (Go's `omitempty` on a slice).
fn no_nodes(nodes: &Option<Vec<NodeExtern>>) -> bool {
    nodes.as_ref().is_none_or(|n| n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_matches_etcd() {
        let e = Error::new(ErrorCode::KeyNotFound, "/foo", 3);
        assert_eq!(
            e.to_json(),
            r#"{"errorCode":100,"message":"Key not found","cause":"/foo","index":3}"#
        );
        assert_eq!(e.http_status(), 404);
        let e = Error::new(ErrorCode::RaftInternal, "", 0);
        assert_eq!(
            e.to_json(),
            r#"{"errorCode":300,"message":"Raft Internal Error","index":0}"#
        );
        assert_eq!(ErrorCode::NodeExist.http_status(), 412);
        assert_eq!(ErrorCode::TTLNaN.http_status(), 400);
    }

    #[test]
    fn event_json_matches_etcd() {
        let mut ev = Event {
            action: Action::Set,
            node: Some(NodeExtern {
                key: "/1/message".into(),
                value: Some("Hello world".into()),
                dir: false,
                expiration: None,
                ttl: 0,
                nodes: None,
                modified_index: 4,
                created_index: 4,
            }),
            prev_node: None,
            etcd_index: 4,
        };
        ev.trim_prefix("/1");
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"action":"set","node":{"key":"/message","value":"Hello world","modifiedIndex":4,"createdIndex":4}}"#
        );
        let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(back.node, ev.node);
    }
}
