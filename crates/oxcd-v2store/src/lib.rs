//! The v2 store: a tree of keys and directories with etcd v2's exact semantics.
//!
//! Owns the node tree, the store index, the TTL index, the 1000-event history, the watchers
//! and the operation counters. Pure: no I/O, no clock — every operation that needs the time
//! receives `now`, and expiry happens only when the caller applies a replicated SYNC through
//! [`Store::delete_expired_keys`]. That keeps every member's store identical.
//!
//! Invariants:
//! - the index grows by exactly one per successful change (set, create, update, CAS, delete,
//!   CAD, each expired key); reads and failures leave it alone;
//! - every change is recorded in the history and offered to the matching watchers once;
//! - a node with an expiry is in the TTL index, and only such nodes are;
//! - keys may have any number of segments: nothing recurses over the depth of the tree
//!   (listing, dropping, expiring, deleting, watching, snapshots), and the
//!   snapshot is a flat stream of one record per node (see `snapshot`).
//!
//! Deviations from etcd: snapshots do not carry the event history. As in etcd, children are
//! unordered (a hash map) and only `sorted=true` listings come out sorted.

#![forbid(unsafe_code)]

mod history;
mod node;
mod snapshot;
mod store;
mod watcher;

pub use node::begin_snapshot;
pub use snapshot::compress as compress_snapshot;
pub use snapshot::{RunCache, Saved};
pub use store::{is_clean_path, RecoveryError, Store, TtlOptions};
pub use watcher::{WatchOutcome, WatchSink, WatcherId};

/// Store operation result: an event, or etcd's v2 error.
pub type Result<T> = std::result::Result<T, oxcd_api::v2::Error>;
