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
//! - a record is acknowledged only after it is synced; a crash can only tear the writes
//!   after the last sync, at the tail of the last file. `open` cuts a damaged tail off at
//!   the last good record (and reports it in [`WalContents::repaired`]) only when it is
//!   provably such a torn write: the damage is whole unwritten sectors or a file cut short,
//!   and no intact record of a later write follows a synced one after it (the rule and its
//!   limits are in `torn.rs`);
//! - a bad record anywhere else is corruption: `open` refuses with [`Error::Corrupt`],
//!   naming the file and the offset of the first bad record. So does a flipped bit
//!   anywhere, a length field included;
//! - a file's name is durable only once its directory is synced: the WAL directory is
//!   synced after the WAL is created, after every cut and after a purge, the snapshot
//!   directory after a snapshot's rename and after a purge, and every directory this crate
//!   creates is synced into its parent. The server does the same for the directories it
//!   makes with [`create_dir_all_durable`] and [`fsync_dir`];
//! - a crash can leave temporaries (`*.wal.tmp`: a preallocated segment of a cut that was
//!   not renamed yet; `*.snap.tmp`: a snapshot not renamed yet). They are never part of
//!   the state: [`Wal::open`] and [`Snapshotter::open`] remove them and return the list
//!   ([`WalContents::removed_temporaries`]) for the server to log;
//! - a snapshot file is written before its WAL marker, and only the newest snapshot whose
//!   marker is synced ([`Wal::durable_snapshot_index`]) is one a restart can use: purges
//!   ([`Snapshotter::purge`], [`Wal::purge`]) never remove it or anything newer;
//! - readers that must not change anything (a backup of a running member, the dump tool)
//!   use [`segments`], [`WalVerifier`] (the checks of [`Wal::open`] on bytes the caller
//!   read, reporting a damaged tail instead of cutting it) and
//!   [`Snapshotter::read_file`]: `Wal::open` and `Snapshotter::load_newest` repair.

#![forbid(unsafe_code)]

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
pub use wal::{
    dump, segments, start_segment, Segment, SegmentCheck, TailDamage, Wal, WalContents,
    WalVerifier, DEFAULT_SEGMENT_SIZE,
};

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
