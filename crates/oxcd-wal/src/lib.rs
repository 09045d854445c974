//! The write-ahead log of an oxcd member: pure synchronous `std::fs`, no raft-rs types.
//!
//! # On-disk format
//!
//! A WAL is a directory of segment files named `{seq:016x}-{index:016x}.wal`: `seq` counts
//! files from 0, `index` is the raft index the file's first entry may have. Each file is a
//! sequence of records:
//!
//! ```text
//! +---------+------+---------+------------------+
//! | len u32 | type | crc u32 | payload (len)    |    little-endian
//! +---------+------+---------+------------------+
//!   4 bytes  1 byte  4 bytes
//! ```
//!
//! `crc` is CRC-32C of the payload *chained* from the previous record's crc (across files:
//! every file starts with a `Crc` record carrying the running crc of the file before), so a
//! torn, reordered or foreign record is detected. Types: 1 metadata (opaque bytes: member
//! and cluster ID), 2 entry, 3 hard state, 4 crc, 5 snapshot marker. A file starts with crc,
//! metadata and the current hard state.
//!
//! # Invariants
//! - `save` writes all records of one raft Ready with one `write` and one `fdatasync` (none
//!   when only the commit index changed: a lost commit index is learned again); where the
//!   file system offers direct I/O the two are one `O_DIRECT | O_DSYNC` write;
//! - a record is acknowledged only after it is synced; a crash can only tear the tail of the
//!   last file, which `open` truncates at the last good record and reports;
//! - a bad record anywhere else is corruption: `open` refuses with the file and offset.

mod direct;
pub mod failpoint;
mod fsutil;
#[cfg(test)]
mod proptests;
mod record;
mod snap;
mod torn;
mod wal;

pub use fsutil::{create_dir_all_durable, fsync_dir};
pub use record::{Entry, EntryRef, HardState, SnapshotMarker};
pub use snap::{Snapshot, Snapshotter};
pub use wal::{dump, Wal, WalContents, DEFAULT_SEGMENT_SIZE};

/// Errors of the WAL layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("wal: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A record failed its check somewhere other than the torn tail.
    #[error("wal: corrupt record in {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// The snapshot the caller restarts from is not recorded in the log.
    #[error("wal: snapshot marker {index}@{term} not found")]
    SnapshotNotFound { index: u64, term: u64 },
    /// No WAL in the directory.
    #[error("wal: no wal files in {0}")]
    NotFound(String),
    /// A WAL already exists where a new one should be created.
    #[error("wal: {0} already exists")]
    Exists(String),
}

/// Result of the WAL layer.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
