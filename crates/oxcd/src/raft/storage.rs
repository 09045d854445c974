//! The raft log storage: raft-rs's `Storage` view of the log plus the `persist` step.
//!
//! Owns the in-memory copy of the log — entries since the last compaction, the HardState,
//! the ConfState and the latest snapshot (metadata and data, so it can be sent to a lagging
//! follower) — and the boundary where durability happens.
//!
//! Invariants:
//! - `persist` returns only after what it was given is on stable storage (the WAL, when the
//!   member has one), and only then is it visible through the `Storage` trait: raft-rs reads
//!   back exactly what was persisted;
//! - `entries` is contiguous and starts right after `snapshot.metadata.index`;
//! - the log is only compacted up to an index that is applied and covered by a snapshot.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Default)]
struct LogCore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (metadata + store data); index 0 = none yet.
    snapshot: Snapshot,
    /// Entries after the snapshot index, contiguous.
    entries: Vec<Entry>,
}

impl LogCore {
    fn first_index(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index(&self) -> u64 {
        match self.entries.last() {
            Some(e) => e.index,
            None => self.snapshot.get_metadata().index,
        }
    }

    fn append(&mut self, ents: &[Entry]) -> raft::Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first_index() || first.index > self.last_index() + 1 {
            // raft-rs never hands us such a batch; refuse instead of corrupting the log.
            return Err(raft::Error::Store(StorageError::Other(
                format!(
                    "append at {} outside log [{}, {}]",
                    first.index,
                    self.first_index(),
                    self.last_index() + 1
                )
                .into(),
            )));
        }
        let keep = (first.index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }
}

/// The log storage of one member. Cloning shares the same log (raft-rs holds one clone).
#[derive(Clone, Default)]
pub struct RaftStorage {
    core: Arc<RwLock<LogCore>>,
    /// The write-ahead log; `None` for memory-only members (tests).
    wal: Arc<Mutex<Option<oxcd_wal::Wal>>>,
    /// Snapshot files and retention (`--max-snapshots`, `--max-wals`); `None` in tests.
    snapshots: Arc<Mutex<Option<SnapshotFiles>>>,
    /// A follower needs a snapshot newer than the latest one (it was added after it, and
    /// raft refuses a snapshot whose configuration lacks the receiver): the raft thread
    /// takes one at once instead of after `--snapshot-count` entries.
    snapshot_wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// Where snapshots are written and how many files are kept.
pub struct SnapshotFiles {
    /// The snapshot directory.
    pub snapshotter: oxcd_wal::Snapshotter,
    /// `--max-snapshots` (0 = keep all).
    pub max_snapshots: usize,
    /// `--max-wals` (0 = keep all).
    pub max_wals: usize,
}

/// A raft entry as the WAL writes it, borrowing its payload.
pub fn wal_entry_ref(e: &Entry) -> oxcd_wal::EntryRef<'_> {
    oxcd_wal::EntryRef {
        term: e.term,
        index: e.index,
        entry_type: e.get_entry_type() as i32,
        data: &e.data,
        context: &e.context,
    }
}

/// Converts a WAL entry back to a raft entry.
pub fn from_wal_entry(e: oxcd_wal::Entry) -> Entry {
    let mut out = Entry::default();
    out.term = e.term;
    out.index = e.index;
    out.set_entry_type(match e.entry_type {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    });
    out.data = e.data.into();
    out.context = e.context.into();
    out
}

impl RaftStorage {
    /// An empty log for a member that will receive its state from peers.
    pub fn new_empty() -> RaftStorage {
        RaftStorage::default()
    }

    /// The log of a brand-new cluster: one `ConfChangeAddNode` entry per initial member at
    /// term 1, all committed, with the voters already in the ConfState — the same bootstrap
    /// etcd writes, so indexes line up with etcd's. Returns the storage and the entries, which
    /// the caller must also make durable.
    pub fn new_bootstrap(members: &[(u64, Vec<u8>)]) -> RaftStorage {
        let entries = bootstrap_entries(members);
        let s = RaftStorage::default();
        {
            let mut core = s.wl();
            core.entries = entries.clone();
            core.hard_state.term = 1;
            core.hard_state.commit = entries.len() as u64;
            core.conf_state.voters = members.iter().map(|(id, _)| *id).collect();
        }
        s
    }

    /// Restores a log read back from disk: the newest snapshot (or none), the HardState and
    /// the entries after the snapshot.
    pub fn restore(
        snapshot: Option<Snapshot>,
        hard_state: HardState,
        entries: Vec<Entry>,
    ) -> RaftStorage {
        let s = RaftStorage::default();
        {
            let mut core = s.wl();
            if let Some(snap) = snapshot {
                core.conf_state = snap.get_metadata().get_conf_state().clone();
                core.snapshot = snap;
            }
            let first = core.first_index();
            core.entries = entries.into_iter().filter(|e| e.index >= first).collect();
            core.hard_state = hard_state;
            // Commit-only HardState changes are not always in the WAL; a snapshot is of
            // applied, hence committed, state.
            let snap_index = core.snapshot.get_metadata().index;
            core.hard_state.commit = core.hard_state.commit.max(snap_index);
            // The configuration is the snapshot's (none without one): raft replays the
            // committed entries after it, configuration changes included, in order, so the
            // configuration is always the one of the applied index.
        }
        s
    }

    /// `--force-new-cluster`: drops the entries that were not committed and commits, after
    /// the last committed one, configuration changes that leave `me` the only voter (etcd's
    /// rule). The new entries are durable before this returns. Returns the commit index it
    /// started from and the members it removed.
    pub fn force_new_cluster(
        &mut self,
        me: u64,
        my_context: Vec<u8>,
    ) -> raft::Result<(u64, Vec<u64>)> {
        let (commit, term, mut ids) = {
            let mut core = self.wl();
            let commit = core.hard_state.commit;
            core.entries.retain(|e| e.index <= commit);
            let mut ids: Vec<u64> = core.conf_state.voters.clone();
            ids.extend(core.conf_state.learners.iter().copied());
            for e in &core.entries {
                if e.get_entry_type() != EntryType::EntryConfChange {
                    continue;
                }
                let Ok(cc) = <ConfChange as protobuf::Message>::parse_from_bytes(&e.data) else {
                    continue;
                };
                match cc.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        if cc.node_id != 0 && !ids.contains(&cc.node_id) {
                            ids.push(cc.node_id);
                        }
                    }
                    ConfChangeType::RemoveNode => ids.retain(|v| *v != cc.node_id),
                }
            }
            (commit, core.hard_state.term.max(1), ids)
        };
        ids.sort_unstable();
        let mut changes: Vec<ConfChange> = Vec::new();
        for &id in ids.iter().filter(|&&id| id != me) {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::RemoveNode);
            cc.node_id = id;
            changes.push(cc);
        }
        if !ids.contains(&me) {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = me;
            cc.context = my_context.into();
            changes.push(cc);
        }
        let removed: Vec<u64> = ids.into_iter().filter(|&id| id != me).collect();
        let entries: Vec<Entry> = changes
            .into_iter()
            .enumerate()
            .map(|(i, cc)| {
                let mut e = Entry::default();
                e.set_entry_type(EntryType::EntryConfChange);
                e.term = term;
                e.index = commit + 1 + i as u64;
                e.data = protobuf::Message::write_to_bytes(&cc)
                    .expect("encoding a ConfChange cannot fail")
                    .into();
                e
            })
            .collect();
        let mut hs = self.rl().hard_state.clone();
        hs.commit = commit + entries.len() as u64;
        hs.term = term;
        // Written even when nothing changes: the uncommitted tail is gone from the WAL too.
        self.truncate_and_persist(&entries, &hs)?;
        Ok((commit, removed))
    }

    /// Replaces every entry from the first of `entries` on (or appends them) and records
    /// `hs`, durably.
    fn truncate_and_persist(&mut self, entries: &[Entry], hs: &HardState) -> raft::Result<()> {
        self.persist(None, entries, Some(hs))
    }

    fn rl(&self) -> RwLockReadGuard<'_, LogCore> {
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    fn wl(&self) -> RwLockWriteGuard<'_, LogCore> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the snapshot directory that local snapshots are saved to.
    pub fn attach_snapshots(&self, files: SnapshotFiles) {
        *self.snapshots.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
    }

    /// Where snapshot files go, for a background snapshot (None for memory-only members).
    pub fn snapshot_writer(&self) -> Option<oxcd_wal::Snapshotter> {
        let guard = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|f| f.snapshotter.clone())
    }

    /// Makes a snapshot durable: the snapshot file first, then its marker in the WAL, then
    /// old WAL and snapshot files beyond the retention limits are purged. True when the
    /// snapshot file was written.
    fn save_snapshot_files(&self, snap: &Snapshot) -> bool {
        let Some(writer) = self.snapshot_writer() else {
            return false;
        };
        if let Err(e) = write_snapshot_file(&writer, snap) {
            // Entries after the snapshot would follow a gap in the WAL.
            crate::failstop::fatal(format_args!("snap: saving snapshot file failed: {e}"));
        }
        self.record_snapshot(snap);
        true
    }

    /// The steps after a snapshot file is on disk: its WAL marker, then purges.
    fn record_snapshot(&self, snap: &Snapshot) {
        let guard = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(files) = guard.as_ref() else {
            return;
        };
        let meta = snap.get_metadata();
        oxcd_wal::failpoint::hit("snap_after_file_before_marker");
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wal) = wal.as_mut() {
            let marker = oxcd_wal::SnapshotMarker {
                index: meta.index,
                term: meta.term,
            };
            if let Err(e) = wal.save_snapshot(marker) {
                crate::failstop::fatal(format_args!("wal: saving snapshot marker failed: {e}"));
            }
        }
        drop(wal);
        // Retention runs beside the raft thread: listing and unlinking old files never
        // delays a Ready. A crash before or during it only leaves extra files, which the next
        // purge removes.
        let job = PurgeJob {
            wal: Arc::clone(&self.wal),
            snapshotter: files.snapshotter.clone(),
            snapshot_index: meta.index,
            max_wals: files.max_wals,
            max_snapshots: files.max_snapshots,
        };
        if let Err(e) = std::thread::Builder::new()
            .name("purge".into())
            .spawn(move || job.run())
        {
            tracing::warn!(error = %e, "snap: cannot start the purge thread");
        }
    }

    /// Applies the retention limits once, now (at start: a crash may have left files that
    /// the last purge did not get to).
    pub fn purge_now(&self) {
        let guard = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(files) = guard.as_ref() else {
            return;
        };
        PurgeJob {
            wal: Arc::clone(&self.wal),
            snapshotter: files.snapshotter.clone(),
            snapshot_index: self.rl().snapshot.get_metadata().index,
            max_wals: files.max_wals,
            max_snapshots: files.max_snapshots,
        }
        .purge();
    }

    /// Attaches the write-ahead log that `persist` writes through.
    pub fn attach_wal(&self, wal: oxcd_wal::Wal) {
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = Some(wal);
    }

    /// Whether the WAL writes with direct I/O (false without a WAL).
    pub fn direct_io(&self) -> bool {
        let wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        wal.as_ref().is_some_and(|w| w.direct_io())
    }

    /// The WAL's segment being written and how much of it is on stable storage (see
    /// [`oxcd_wal::Wal::durable_tail`]); `None` without a WAL. The simulation uses it to
    /// lose what a power failure would.
    #[cfg(test)]
    pub(crate) fn wal_durable_tail(&self) -> Option<(std::path::PathBuf, u64)> {
        let wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        wal.as_ref().map(|w| w.durable_tail())
    }

    /// Makes a Ready's snapshot, entries and HardState durable (one WAL write and fdatasync)
    /// and then visible to raft, in that order.
    pub fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> raft::Result<()> {
        let snapshot = snapshot.filter(|s| s.get_metadata().index >= self.rl().first_index());
        // Set once the snapshot is in its file: memory then keeps only its metadata.
        let mut saved_snapshot = None;
        if let Some(snap) = snapshot {
            // A snapshot from the leader: its file and WAL marker go to disk before the
            // entries that follow it, so a restart finds the snapshot the WAL continues from.
            // A crash in between leaves the file without a marker; restart then falls back
            // to the older state and the leader sends the snapshot again.
            if self.save_snapshot_files(snap) {
                saved_snapshot = Some(snap.get_metadata().index);
            }
        }
        if let Some(wal) = self.wal.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let hs = hard_state.map(|h| oxcd_wal::HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            });
            let ents: Vec<oxcd_wal::EntryRef<'_>> = entries.iter().map(wal_entry_ref).collect();
            let started = std::time::Instant::now();
            wal.save_refs(hs.as_ref(), &ents)
                .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
            let took = started.elapsed();
            if let Some(sync) = wal.take_sync_time() {
                crate::metrics::observe_wal_fsync(sync);
            }
            if let Some(e) = wal.take_direct_failure() {
                tracing::warn!(error = %e, "wal: direct write failed, writing through the page cache from now on");
            }
            if took > std::time::Duration::from_secs(1) {
                tracing::warn!(took_ms = took.as_millis() as u64, "wal: slow fdatasync");
            }
        }
        let mut core = self.wl();
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            if meta.index >= core.first_index() {
                // raft-rs hands us a snapshot only when our log does not hold its last
                // entry, so nothing of the old log after it can be kept (log matching).
                core.entries.clear();
                core.conf_state = meta.get_conf_state().clone();
                core.hard_state.term = core.hard_state.term.max(meta.term);
                core.hard_state.commit = core.hard_state.commit.max(meta.index);
                core.snapshot = snap.clone();
            }
        }
        core.append(entries)?;
        if let Some(hs) = hard_state {
            core.hard_state = hs.clone();
        }
        drop(core);
        if let Some(index) = saved_snapshot {
            self.drop_snapshot_data(index);
        }
        Ok(())
    }

    /// Records a new commit index learned after `advance` (no new entries).
    ///
    /// The record goes to the WAL without waiting for the disk (etcd's MustSync rule):
    /// `--force-new-cluster` and a backup then know what was committed, not only what the
    /// last synced HardState said (a one-member cluster commits its last batch here).
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let hs = {
            let mut core = self.wl();
            if core.hard_state.commit >= commit {
                return Ok(());
            }
            core.hard_state.commit = commit;
            core.hard_state.clone()
        };
        if let Some(wal) = self.wal.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let hs = oxcd_wal::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            };
            wal.save_refs(Some(&hs), &[])
                .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        }
        Ok(())
    }

    /// Whether a follower asked for a snapshot newer than the latest (and clears it).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the ConfState after a configuration change was applied.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.wl().conf_state = cs;
    }

    /// The ConfState as of the last applied configuration change.
    pub fn conf_state(&self) -> ConfState {
        self.rl().conf_state.clone()
    }

    /// Term of the entry at `index`, if still in the log.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.term(index).ok()
    }

    /// Makes `snap` the log's snapshot and drops the entries it covers. `None` when it is
    /// stale: not newer than the log's start (e.g. the leader sent a newer one meanwhile).
    fn compact_to(&mut self, snap: Snapshot) -> Option<Snapshot> {
        let mut core = self.wl();
        let index = snap.get_metadata().index;
        if index <= core.snapshot.get_metadata().index || index > core.last_index() {
            return None;
        }
        core.entries.retain(|e| e.index > index);
        core.snapshot = snap;
        Some(core.snapshot.clone())
    }

    /// Installs a snapshot taken locally at an applied index: compacts the log, then writes
    /// the file, the WAL marker and purges.
    pub fn install_local_snapshot(&mut self, snap: Snapshot) {
        let Some(snap) = self.compact_to(snap) else {
            return;
        };
        if self.save_snapshot_files(&snap) {
            self.drop_snapshot_data(snap.get_metadata().index);
        }
    }

    /// Installs a snapshot whose file a background thread already wrote: compacts the log,
    /// records the WAL marker, purges.
    pub fn install_saved_snapshot(&mut self, mut snap: Snapshot) {
        snap.data = Default::default();
        if let Some(snap) = self.compact_to(snap) {
            self.record_snapshot(&snap);
        }
    }

    /// Once a snapshot is in its file, memory keeps only its metadata: the store state can
    /// be as large as the store itself, and is read back only for a lagging follower.
    fn drop_snapshot_data(&self, index: u64) {
        let mut core = self.wl();
        if core.snapshot.get_metadata().index == index {
            core.snapshot.data = Default::default();
        }
    }
}

/// A member's log as a restart reads it back from disk (see [`recover`]).
pub struct Recovered {
    /// The log over the reopened WAL (attached). The snapshot directory is not attached
    /// yet: the caller first checks `metadata`, then attaches it (which enables purges).
    pub storage: RaftStorage,
    /// The snapshot the log continues from, with its store data; `None` for a full replay.
    pub snapshot: Option<oxcd_wal::Snapshot>,
    /// The WAL's metadata (the server's member and cluster ID).
    pub metadata: Vec<u8>,
    /// The last HardState in the WAL.
    pub hard_state: oxcd_wal::HardState,
    /// How many entries after the snapshot the WAL held.
    pub entries: usize,
    /// Where a torn tail was cut off, if one was.
    pub repaired: Option<String>,
    /// Temporary WAL files a crash left behind, removed on opening.
    pub removed_temporaries: Vec<std::path::PathBuf>,
}

/// Reads a member's log back at a restart: the newest snapshot whose marker the WAL holds,
/// then the WAL from that marker on (a torn tail is truncated). A crash between writing a
/// snapshot file and its WAL marker leaves a snapshot the WAL does not know: the WAL still
/// holds everything since the previous one, so this falls back to that (or to a full
/// replay). Files are read one at a time, newest first: usually only the newest is read.
pub fn recover(
    wal_dir: &std::path::Path,
    snapshotter: &oxcd_wal::Snapshotter,
    segment_size: u64,
) -> oxcd_wal::Result<Recovered> {
    let mut opened = None;
    for (index, term, path) in snapshotter.newest_first() {
        let Some(cand) = oxcd_wal::Snapshotter::load_file(&path) else {
            tracing::warn!(file = %path.display(), "snap: damaged snapshot file skipped");
            continue;
        };
        let marker = oxcd_wal::SnapshotMarker { index, term };
        match oxcd_wal::Wal::open(wal_dir, marker, segment_size) {
            Ok(x) => {
                opened = Some((x, cand));
                break;
            }
            Err(oxcd_wal::Error::SnapshotNotFound { index, .. }) => {
                tracing::warn!(
                    index,
                    "snap: snapshot not recorded in the WAL, trying an older one"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let ((wal, contents), chosen) = match opened {
        Some(x) => x,
        None => (
            oxcd_wal::Wal::open(wal_dir, oxcd_wal::SnapshotMarker::default(), segment_size)?,
            oxcd_wal::Snapshot::default(),
        ),
    };
    let snapshot = (chosen.index > 0).then_some(chosen);
    let hs = contents.hard_state;
    let raft_hs = HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
        ..Default::default()
    };
    let n = contents.entries.len();
    let entries = contents.entries.into_iter().map(from_wal_entry).collect();
    let raft_snap = snapshot.as_ref().map(|s| {
        let mut rs = Snapshot::default();
        let meta = rs.mut_metadata();
        meta.index = s.index;
        meta.term = s.term;
        meta.mut_conf_state().voters = s.voters.clone();
        meta.mut_conf_state().learners = s.learners.clone();
        // The data stays on disk; a lagging follower's copy is read from the file.
        rs
    });
    let storage = RaftStorage::restore(raft_snap, raft_hs, entries);
    storage.attach_wal(wal);
    Ok(Recovered {
        storage,
        snapshot,
        metadata: contents.metadata,
        hard_state: hs,
        entries: n,
        repaired: contents.repaired,
        removed_temporaries: contents.removed_temporaries,
    })
}

/// Creates the WAL of a brand-new member in `wal_dir` with the bootstrap log (see
/// [`RaftStorage::new_bootstrap`]) durable in it, and the log storage over it.
pub fn create_on_disk(
    wal_dir: &std::path::Path,
    metadata: &[u8],
    members: &[(u64, Vec<u8>)],
    segment_size: u64,
) -> oxcd_wal::Result<RaftStorage> {
    let mut wal = oxcd_wal::Wal::create(wal_dir, metadata, segment_size)?;
    let entries = bootstrap_entries(members);
    let hs = oxcd_wal::HardState {
        term: 1,
        vote: 0,
        commit: entries.len() as u64,
    };
    let refs: Vec<oxcd_wal::EntryRef<'_>> = entries.iter().map(wal_entry_ref).collect();
    wal.save_refs(Some(&hs), &refs)?;
    let storage = RaftStorage::new_bootstrap(members);
    storage.attach_wal(wal);
    Ok(storage)
}

/// Removal of WAL files wholly before a snapshot and of snapshots beyond the limits
/// (`--max-wals`, `--max-snapshots`).
struct PurgeJob {
    wal: Arc<Mutex<Option<oxcd_wal::Wal>>>,
    snapshotter: oxcd_wal::Snapshotter,
    snapshot_index: u64,
    max_wals: usize,
    max_snapshots: usize,
}

impl PurgeJob {
    /// Runs on the purge thread, after the snapshot's WAL marker is written.
    fn run(self) {
        oxcd_wal::failpoint::hit("snap_after_marker_before_purge");
        self.purge();
    }

    fn purge(&self) {
        // Snapshot files are removed only below the newest snapshot whose WAL marker is
        // synced: a crash must always find a snapshot the WAL knows.
        let mut durable = 0;
        if let Some(wal) = self.wal.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            match wal.purge(self.snapshot_index, self.max_wals) {
                Ok(n) if n > 0 => tracing::info!(removed = n, "wal: purged old files"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "wal: purge failed"),
            }
            durable = wal.durable_snapshot_index();
        }
        let n = self.snapshotter.purge(self.max_snapshots, durable);
        if n > 0 {
            tracing::info!(removed = n, "snap: purged old snapshot files");
        }
    }
}

/// The file form of a raft snapshot's metadata with `data` (taken, not copied).
pub fn snapshot_file(meta: &SnapshotMetadata, data: Vec<u8>) -> oxcd_wal::Snapshot {
    let cs = meta.get_conf_state();
    oxcd_wal::Snapshot {
        term: meta.term,
        index: meta.index,
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        data,
    }
}

/// Writes a raft snapshot to its file (synchronously; callable from any thread).
pub fn write_snapshot_file(
    writer: &oxcd_wal::Snapshotter,
    snap: &Snapshot,
) -> oxcd_wal::Result<std::path::PathBuf> {
    writer.save(&snapshot_file(snap.get_metadata(), snap.data.to_vec()))
}

/// The bootstrap entries of a new cluster (see [`RaftStorage::new_bootstrap`]).
pub fn bootstrap_entries(members: &[(u64, Vec<u8>)]) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(members.len());
    for (i, (id, context)) in members.iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = *id;
        cc.context = context.clone().into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = protobuf::Message::write_to_bytes(&cc)
            .expect("encoding a ConfChange cannot fail")
            .into();
        entries.push(e);
    }
    entries
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.rl();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.rl();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let slice = &core.entries[(low - offset) as usize..(high - offset) as usize];
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(slice.len());
        let mut size = 0u64;
        for e in slice {
            size += protobuf::Message::compute_size(e) as u64;
            // Always return at least one entry, as raft-rs's own storage does.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.rl();
        let snap = core.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let core = self.rl();
        if core.snapshot.get_metadata().index < request_index
            || core.snapshot.get_metadata().index == 0
        {
            // The applier takes a fresh snapshot soon; raft-rs retries.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        // A member added after the snapshot was taken is not in its configuration, and
        // raft refuses to restore a snapshot that leaves it out: it needs one taken after its
        // addition (etcd sends a snapshot of the current state for the same reason). Without
        // this a member added to a one-member cluster (which then has no quorum) never
        // catches up.
        let cs = core.snapshot.get_metadata().get_conf_state();
        if to != 0
            && ![
                &cs.voters,
                &cs.learners,
                &cs.voters_outgoing,
                &cs.learners_next,
            ]
            .iter()
            .any(|set| set.contains(&to))
        {
            if !self
                .snapshot_wanted
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(
                    to = %crate::membership::id_to_string(to),
                    index = core.snapshot.get_metadata().index,
                    "snap: the last snapshot predates the member it is for; taking a new one"
                );
            }
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = core.snapshot.clone();
        drop(core);
        if snap.data.is_empty() {
            let meta = snap.get_metadata();
            let (term, index) = (meta.term, meta.index);
            let files = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            match files.as_ref().and_then(|f| f.snapshotter.load(term, index)) {
                Some(file) => snap.data = file.data.into(),
                None => {
                    // Purged or damaged since: a new snapshot comes with the next
                    // --snapshot-count entries; raft asks again.
                    tracing::warn!(index, "snap: snapshot file for a follower unreadable");
                    return Err(raft::Error::Store(
                        StorageError::SnapshotTemporarilyUnavailable,
                    ));
                }
            }
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut s = RaftStorage::new_empty();
        s.persist(None, &[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        s.persist(None, &[entry(2, 2)], None).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(s.persist(None, &[entry(5, 2)], None).is_err());
    }

    /// A member added after the last snapshot cannot restore it (raft refuses a snapshot
    /// whose configuration leaves it out): it is refused for now and a new one requested.
    #[test]
    fn snapshot_predating_a_member_is_refused_and_a_new_one_requested() {
        let s = compacted_at_6();
        assert!(!s.take_snapshot_wanted());
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 6);
        assert!(!s.take_snapshot_wanted());
        assert!(matches!(
            s.snapshot(0, 3),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted(), "the request is taken once");
    }

    /// Ten entries of members 1 and 2, compacted by a snapshot at index 6.
    fn compacted_at_6() -> RaftStorage {
        let mut s = RaftStorage::new_empty();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        s.persist(None, &ents, None).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 6;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.data = b"state".to_vec().into();
        s.install_local_snapshot(snap);
        s
    }

    #[test]
    fn snapshot_compacts_and_serves() {
        let s = compacted_at_6();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 1);
        assert!(matches!(
            s.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.snapshot(6, 2).unwrap().data.as_ref(), b"state");
        assert!(s.snapshot(8, 2).is_err());
    }

    #[test]
    fn bootstrap_log_is_committed() {
        let s = RaftStorage::new_bootstrap(&[(1, vec![]), (2, vec![])]);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 2);
        assert_eq!(st.conf_state.voters, vec![1, 2]);
        assert_eq!(s.last_index().unwrap(), 2);
    }
}
