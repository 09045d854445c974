//! `oxcdctl backup`: a consistent copy of a member's data directory, taken while the member
//! may be running.
//!
//! What is copied: the newest snapshot file that passes its CRC check and whose marker the
//! WAL holds (a damaged one falls back to the next older, as a restart does), and the WAL
//! from that snapshot on, every record checked by [`oxcd_wal::WalVerifier`] — the rules
//! `Wal::open` reads with — up to the last intact record.
//!
//! Nothing in the source is opened for writing, locked, renamed or repaired: the files are
//! read, checked in memory, and only the checked bytes are written to the backup. The member
//! may append to its last WAL file, cut new ones and purge old files and snapshots meanwhile:
//! - a file purged before it was read starts the copy again from a fresh listing;
//! - finished WAL files (any file that is not the last) never change, and must be intact;
//! - the last file ends where its records end. A damaged record there is either a write in
//!   progress (or torn by a crash: dropped, as a restart would drop it — entries are
//!   acknowledged only after their write is synced, so every write acknowledged before the
//!   backup began lies before it) or corruption: when the record does not look like a torn
//!   write, the file is read again until [`BackupOptions::settle`] passes; a record that
//!   becomes intact was being written, one that stays damaged is corruption and an error
//!   naming the file and the offset.
//!
//! The backup is built so that its WAL directory appears only when it is complete: segment
//! files go to `<backup-wal-dir>.tmp`, synced, then the snapshot is written (synced, by
//! `Snapshotter::save`), then the directory is renamed into place and its parent synced.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oxcd_wal::{Segment, SnapshotMarker, Snapshotter, WalVerifier};

/// How often the copy starts again when the member removes files under it.
const MAX_ATTEMPTS: usize = 10;

/// What to back up and where.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The member's snapshot directory (`<data-dir>/member/snap`).
    pub snap_dir: PathBuf,
    /// The member's WAL directory (`<data-dir>/member/wal` or `--wal-dir`).
    pub wal_dir: PathBuf,
    /// Where the backup goes: must not exist or be empty.
    pub backup_dir: PathBuf,
    /// The backup's WAL directory (`<backup-dir>/member/wal` unless given).
    pub backup_wal_dir: PathBuf,
    /// How long a damaged record at the end of the last WAL file must stay unchanged
    /// before it counts as corruption rather than a write in progress.
    pub settle: Duration,
}

impl BackupOptions {
    /// etcdctl's defaults: the WAL under `<data-dir>/member/wal`, the backup's under
    /// `<backup-dir>/member/wal`.
    pub fn new(
        data_dir: &Path,
        wal_dir: Option<&Path>,
        backup_dir: &Path,
        backup_wal_dir: Option<&Path>,
    ) -> BackupOptions {
        let member = data_dir.join("member");
        BackupOptions {
            snap_dir: member.join("snap"),
            wal_dir: wal_dir.map_or_else(|| member.join("wal"), Path::to_path_buf),
            backup_dir: backup_dir.to_path_buf(),
            backup_wal_dir: backup_wal_dir
                .map_or_else(|| backup_dir.join("member/wal"), Path::to_path_buf),
            settle: Duration::from_millis(500),
        }
    }

    fn backup_snap_dir(&self) -> PathBuf {
        self.backup_dir.join("member/snap")
    }

    /// Where the WAL is built before it is renamed into place.
    fn tmp_wal_dir(&self) -> PathBuf {
        let name = self
            .backup_wal_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "wal".into());
        self.backup_wal_dir.with_file_name(format!("{name}.tmp"))
    }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The snapshot copied: (index, term); `None` when the WAL is copied from its start.
    pub snapshot: Option<(u64, u64)>,
    /// WAL segment files written.
    pub wal_files: usize,
    /// Entries after the snapshot in the copied WAL.
    pub entries: u64,
    /// The index of the last entry copied.
    pub last_index: u64,
    /// Bytes written (snapshot file and WAL files).
    pub bytes: u64,
    /// Member and cluster ID from the WAL's metadata, when it has oxcd's layout.
    pub ids: Option<(u64, u64)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.snapshot {
            Some((index, term)) => write!(f, "snapshot at index {index} (term {term})")?,
            None => write!(f, "no snapshot")?,
        }
        write!(
            f,
            ", {} WAL entries after it up to index {}, {} WAL files, {} bytes",
            self.entries, self.last_index, self.wal_files, self.bytes
        )?;
        if let Some((member, cluster)) = self.ids {
            write!(f, "; member {member:x} of cluster {cluster:x}")?;
        }
        Ok(())
    }
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup directory {0} is not empty (refusing to overwrite it; choose a new or empty directory)")]
    NotEmpty(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("no WAL files in {0} (is --data-dir, or --wal-dir, a member's directory?)")]
    NoWal(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A record or file of the source that fails its checks (names the file and offset).
    #[error("{0}")]
    Wal(#[from] oxcd_wal::Error),
    #[error("no snapshot can be used with the WAL ({tried}); without one: {error}")]
    NoUsableSnapshot {
        tried: String,
        error: Box<BackupError>,
    },
    #[error(
        "the member kept removing files during the copy; gave up after {MAX_ATTEMPTS} attempts ({last})"
    )]
    KeptChanging { last: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// How one attempt at a copy ended, short of success.
enum Stop {
    /// The member removed or replaced a file under the copy: start again.
    Retry(String),
    /// The snapshot's marker is not in the WAL: try an older snapshot.
    MarkerMissing,
    Fail(BackupError),
}

impl From<BackupError> for Stop {
    fn from(e: BackupError) -> Stop {
        Stop::Fail(e)
    }
}

impl From<oxcd_wal::Error> for Stop {
    fn from(e: oxcd_wal::Error) -> Stop {
        Stop::Fail(e.into())
    }
}

/// Called with each source file's path before it is read (tests: the member's moves).
#[cfg(test)]
type ReadHook = Box<dyn FnMut(&Path)>;

#[cfg(test)]
thread_local! {
    static BEFORE_READ: std::cell::RefCell<Option<ReadHook>> = std::cell::RefCell::new(None);
}

/// Reads a source file; a file that is gone was purged by the member meanwhile.
fn read_source(path: &Path, what: &str) -> Result<Vec<u8>, Stop> {
    #[cfg(test)]
    BEFORE_READ.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f(path)
        }
    });
    fs::read(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Stop::Retry(format!("{what} {} was removed", path.display()))
        } else {
            Stop::Fail(io(format!("read {}", path.display()))(e))
        }
    })
}

/// Fails unless `dir` is missing or an empty directory.
fn refuse_non_empty(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::NotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => {
            Err(BackupError::NotADirectory(dir.to_path_buf()))
        }
        Err(e) => Err(io(format!("read dir {}", dir.display()))(e)),
    }
}

/// Takes the backup; `log` receives warnings (fallbacks, dropped records, retries).
pub fn run(opts: &BackupOptions, log: &mut dyn FnMut(&str)) -> Result<Summary, BackupError> {
    refuse_non_empty(&opts.backup_dir)?;
    refuse_non_empty(&opts.backup_wal_dir)?;
    let tmp = opts.tmp_wal_dir();
    refuse_non_empty(&tmp)?;
    if oxcd_wal::segments(&opts.wal_dir)?.is_empty() {
        return Err(BackupError::NoWal(opts.wal_dir.clone()));
    }
    // Directories this run creates, removed again if it fails (so a failed backup leaves
    // nothing that makes the next run refuse the directory).
    let mut created = oxcd_wal::create_dir_all_durable(&opts.backup_dir)?;
    let result = (|| {
        created.extend(oxcd_wal::create_dir_all_durable(&tmp)?);
        created.extend(oxcd_wal::create_dir_all_durable(&opts.backup_snap_dir())?);
        let mut last = String::new();
        for _ in 0..MAX_ATTEMPTS {
            match attempt(opts, &tmp, log) {
                Ok(s) => return Ok(s),
                Err(Stop::Retry(why)) => {
                    log(&format!(
                        "{why} during the copy; starting again from a fresh listing"
                    ));
                    clear_dir(&tmp)?;
                    last = why;
                }
                Err(Stop::MarkerMissing) => unreachable!("handled by attempt"),
                Err(Stop::Fail(e)) => return Err(e),
            }
        }
        Err(BackupError::KeptChanging { last })
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
        for dir in created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// Removes the files of the WAL being built, for another attempt.
fn clear_dir(dir: &Path) -> Result<(), BackupError> {
    for ent in fs::read_dir(dir).map_err(io(format!("read dir {}", dir.display())))? {
        let path = ent
            .map_err(io(format!("read dir {}", dir.display())))?
            .path();
        fs::remove_file(&path).map_err(io(format!("remove {}", path.display())))?;
    }
    Ok(())
}

/// One copy from a fresh listing: the newest usable snapshot and the WAL after it.
fn attempt(opts: &BackupOptions, tmp: &Path, log: &mut dyn FnMut(&str)) -> Result<Summary, Stop> {
    let mut tried = Vec::new();
    for (index, term, path) in Snapshotter::new(&opts.snap_dir).newest_first() {
        let snap = match Snapshotter::read_file(&path) {
            Ok(Some(s)) if s.index == index && s.term == term => s,
            Ok(Some(s)) => {
                let why = format!(
                    "{} holds index {} term {}, not what its name says",
                    path.display(),
                    s.index,
                    s.term
                );
                log(&format!("{why}; falling back to an older snapshot"));
                tried.push(why);
                continue;
            }
            Ok(None) => {
                let why = format!("{} is damaged (fails its CRC check)", path.display());
                log(&format!("{why}; falling back to an older snapshot"));
                tried.push(why);
                continue;
            }
            Err(oxcd_wal::Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Err(Stop::Retry(format!(
                    "snapshot {} was removed",
                    path.display()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        match copy_wal(opts, tmp, SnapshotMarker { index, term }, log) {
            Ok(wal) => return commit(opts, tmp, Some(snap), wal),
            Err(Stop::MarkerMissing) => {
                let why = format!(
                    "the WAL holds no marker for snapshot {} (index {index})",
                    path.display()
                );
                log(&format!("{why}; falling back to an older snapshot"));
                tried.push(why);
                clear_dir(tmp)?;
            }
            Err(e) => return Err(e),
        }
    }
    // No usable snapshot: the whole log, as a restart would read it.
    match copy_wal(opts, tmp, SnapshotMarker::default(), log) {
        Ok(wal) => commit(opts, tmp, None, wal),
        Err(Stop::Fail(e)) if !tried.is_empty() => Err(Stop::Fail(BackupError::NoUsableSnapshot {
            tried: tried.join("; "),
            error: Box::new(e),
        })),
        Err(Stop::MarkerMissing) => unreachable!("the default marker is always found"),
        Err(e) => Err(e),
    }
}

/// The WAL as copied into the temporary directory.
struct WalCopy {
    files: usize,
    bytes: u64,
    entries: u64,
    last_index: u64,
    metadata: Vec<u8>,
}

/// Copies the WAL from the snapshot marker on into `tmp`, each file's checked bytes synced.
fn copy_wal(
    opts: &BackupOptions,
    tmp: &Path,
    marker: SnapshotMarker,
    log: &mut dyn FnMut(&str),
) -> Result<WalCopy, Stop> {
    let all = oxcd_wal::segments(&opts.wal_dir)?;
    if all.is_empty() {
        return Err(Stop::Fail(BackupError::NoWal(opts.wal_dir.clone())));
    }
    let segs = &all[oxcd_wal::start_segment(&all, marker.index)..];
    let mut verifier = WalVerifier::new(marker);
    let mut bytes = 0;
    for (i, seg) in segs.iter().enumerate() {
        let data = read_source(&seg.path, "WAL file")?;
        let len = if i + 1 < segs.len() {
            verifier.check(seg, &data, false)?.valid_len
        } else {
            check_last(&mut verifier, seg, &data, opts.settle, log)?
        };
        let name = seg.path.file_name().expect("a listed file has a name");
        let out = tmp.join(name);
        let mut f = File::create(&out).map_err(io(format!("create {}", out.display())))?;
        f.write_all(&data[..len as usize])
            .and_then(|_| f.sync_all())
            .map_err(io(format!("write {}", out.display())))?;
        bytes += len;
    }
    if !verifier.snapshot_found() {
        return Err(Stop::MarkerMissing);
    }
    oxcd_wal::fsync_dir(tmp)?;
    Ok(WalCopy {
        files: segs.len(),
        bytes,
        entries: verifier.entries(),
        last_index: verifier.last_index(),
        metadata: verifier.metadata().to_vec(),
    })
}

/// Checks the last WAL file, which the member may be appending to; returns how many of its
/// bytes to copy (see the module doc).
fn check_last(
    verifier: &mut WalVerifier,
    seg: &Segment,
    data: &[u8],
    settle: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<u64, Stop> {
    let base = verifier.clone();
    let first = verifier.check(seg, data, true)?;
    let Some(damage) = first.damage else {
        return Ok(first.valid_len);
    };
    let dropped = |log: &mut dyn FnMut(&str)| {
        log(&format!(
            "the last WAL record, {} at offset {}, is incomplete ({}): a write in progress, \
             or torn by a crash; the copy ends before it",
            damage.file.display(),
            damage.offset,
            damage.reason
        ))
    };
    if damage.not_torn.is_none() {
        dropped(log);
        return Ok(first.valid_len);
    }
    // Not what a crash leaves: corruption, or a write caught in progress (a read racing a
    // write can see later bytes of it, or of the next one, before earlier ones). A write in
    // progress completes; corruption stays.
    let deadline = Instant::now() + settle;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
        let again = read_source(&seg.path, "WAL file")?;
        let recheck = base.clone().check(seg, &again, true)?;
        if recheck.valid_len > damage.offset {
            // The record is intact now: it was being written when the file was first
            // read, so the records before it are all that was complete then.
            dropped(log);
            return Ok(first.valid_len);
        }
        if recheck.valid_len < damage.offset {
            return Err(Stop::Retry(format!(
                "WAL file {} lost records",
                seg.path.display()
            )));
        }
    }
    Err(Stop::Fail(damage.to_error().into()))
}

/// Writes the snapshot and moves the WAL into place: the backup is complete once its WAL
/// directory exists.
fn commit(
    opts: &BackupOptions,
    tmp: &Path,
    snap: Option<oxcd_wal::Snapshot>,
    wal: WalCopy,
) -> Result<Summary, Stop> {
    let mut bytes = wal.bytes;
    let snapshot = match snap {
        Some(s) => {
            let path = Snapshotter::new(&opts.backup_snap_dir()).save(&s)?;
            bytes += fs::metadata(&path)
                .map_err(io(format!("stat {}", path.display())))?
                .len();
            Some((s.index, s.term))
        }
        None => None,
    };
    fs::rename(tmp, &opts.backup_wal_dir).map_err(io(format!(
        "rename {} to {}",
        tmp.display(),
        opts.backup_wal_dir.display()
    )))?;
    let parent = match opts.backup_wal_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    oxcd_wal::fsync_dir(&parent)?;
    let ids = (wal.metadata.len() == 16).then(|| {
        let id = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        (id(&wal.metadata[..8]), id(&wal.metadata[8..]))
    });
    Ok(Summary {
        snapshot,
        wal_files: wal.files,
        entries: wal.entries,
        last_index: wal.last_index,
        bytes,
        ids,
    })
}

#[cfg(test)]
mod tests;
