//! The raft driver: one thread owns the raft-rs `RawNode` and runs the classic loop
//! tick → step → ready → persist → send → apply → advance.
//!
//! Owns: the `RawNode`, the log storage, the tick clock, the shared [`RaftStatus`].
//! Does not own: what entries mean (the [`Applier`] decides, on the apply thread), how messages travel (the
//! [`Transport`] does), who waits for results (the server's wait registry).
//!
//! Invariants:
//! - only the raft thread touches the `RawNode`; everybody else talks to it through
//!   [`RaftInput`] messages;
//! - a `Ready`'s entries and HardState are persisted before the messages that depend on them
//!   (`persisted_messages`) are sent, and committed entries are applied in log order, each
//!   exactly once;
//! - many proposals are stepped before one `Ready` is taken, so one persist (one fsync once
//!   the WAL is in) covers the whole batch.

// raft-rs's protobuf messages are built field by field after `default()`: they carry private
// bookkeeping fields that struct literals cannot name.
#![allow(clippy::field_reassign_with_default)]

pub mod logger;
pub mod node;
pub mod storage;
pub mod validate;

pub use node::{
    Applier, ConfDecision, Proposer, RaftConfig, RaftHandle, RaftInput, RaftNode, RaftStatus,
    SnapshotJob, Transport,
};
#[cfg(test)]
mod sim_tests;
