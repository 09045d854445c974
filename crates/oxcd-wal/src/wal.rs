//! Segment files: create, open (read then append), save, cut, purge.
//!
//! The file being appended to is preallocated to the segment size (etcd preallocates its
//! 64 MB segments too): writes land inside the file instead of growing it, so an fdatasync
//! does not also have to commit a new file size to the journal on every write. The zeros
//! after the last record read as the end of the log; a finished segment is truncated to its
//! records when the next one is cut.
//!
//! The preallocated blocks are allocated (`fallocate`, as etcd; a hole where the file system
//! cannot) but unwritten: the first write to each block still changes the file's extent
//! map, and that change is flushed by the fdatasync of the record that needed it. So the
//! writer also writes zeros ahead of its records, [`ZERO_AHEAD`] bytes at a time, in the same
//! write-then-fdatasync as the record that crossed into the unwritten part: most fdatasyncs
//! then only overwrite blocks already on disk (measured on this project's ext4 machines:
//! 0.09–0.10 ms instead of 0.14–0.18 ms per fdatasync, and about a third less CPU).
//!
//! Where the file system offers direct I/O, appends skip the page cache: one
//! `O_DIRECT | O_DSYNC` write per synced batch instead of write + fdatasync ([`crate::direct`]
//! has how and why). Anywhere else — or after a direct write fails — the same records go
//! through the page cache as above.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct::{DirectWriter, BLOCK};
use crate::fsutil::{create_dir_all_durable, fsync_dir, fsync_parent};
use crate::record::{self, Entry, EntryRef, HardState, SnapshotMarker};
use crate::torn::{self, HEADER};
use crate::{io_err, Error, Result};

/// Cut to a new file once the current one passes this size (etcd: 64 MB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// How far ahead of the records the segment is written with zeros (see the module doc).
const ZERO_AHEAD: u64 = 64 * 1024;

/// What a WAL holds after the snapshot it was opened at.
#[derive(Debug, Default)]
pub struct WalContents {
    /// The metadata written at creation.
    pub metadata: Vec<u8>,
    /// The last hard state.
    pub hard_state: HardState,
    /// Entries after the snapshot index, later writes winning over earlier ones.
    pub entries: Vec<Entry>,
    /// Where a torn tail was cut off, if one was (to log): the file, the offset and why.
    pub repaired: Option<String>,
    /// Leftover temporary segments (`*.wal.tmp`, from a crash during a cut) that `open`
    /// removed, to log.
    pub removed_temporaries: Vec<PathBuf>,
}

/// A WAL open for appending.
pub struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
    crc: u32,
    size: u64,
    segment_size: u64,
    last_index: u64,
    metadata: Vec<u8>,
    hard_state: HardState,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// How long the last `save` that synced spent in fdatasync (for the fsync histogram).
    last_sync: Option<std::time::Duration>,
    /// The segment is written (records or zeros) up to here; beyond it may be a hole.
    written: u64,
    /// The segment's records up to here are on stable storage (the end of the last synced
    /// write); later ones were written without a sync (commit-only hard states).
    synced: u64,
    /// The segment being written.
    path: PathBuf,
    /// Direct writes to the current segment, where the file system has them.
    direct: Option<DirectWriter>,
    /// Whether new segments try direct writes: off for good once one failed.
    try_direct: bool,
    /// Why direct writes were turned off, until the caller takes it (to log).
    direct_failure: Option<std::io::Error>,
    /// Index of the newest snapshot whose marker is durable in this log: the one it was
    /// opened at, or a later one saved (and synced) since.
    snapshot_index: u64,
}

fn file_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}.wal")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// WAL files in `dir` as (seq, first index, path), by seq.
fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("read dir {}", dir.display()))(e)),
    };
    for ent in rd {
        let ent = ent.map_err(io_err(format!("read dir {}", dir.display())))?;
        if let Some((seq, index)) = ent.file_name().to_str().and_then(parse_name) {
            out.push((seq, index, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the `*.wal.tmp` segments a crash during a cut left in `dir` (never renamed into
/// place, so never part of the log), then syncs the directory. Returns what it removed.
fn remove_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let ctx = || format!("read dir {}", dir.display());
    let mut removed = Vec::new();
    for ent in fs::read_dir(dir).map_err(io_err(ctx()))? {
        let ent = ent.map_err(io_err(ctx()))?;
        let name = ent.file_name();
        let is_tmp = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(parse_name)
            .is_some();
        if is_tmp {
            let path = ent.path();
            fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Opens a segment for writing and extends it to `segment_size` (never shrinks it).
///
/// The blocks are allocated, as etcd allocates its segments (`fallocate`): the space is
/// taken when a segment is cut, so a full disk fails a cut instead of an append in the
/// middle of a segment. A file system that cannot allocate ahead gets a hole of that
/// length instead, as etcd falls back to.
fn open_preallocated(path: &Path, segment_size: u64) -> Result<File> {
    let ctx = || format!("open {}", path.display());
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(ctx()))?;
    let len = file.metadata().map_err(io_err(ctx()))?.len();
    if len < segment_size {
        let allocated = match rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            segment_size,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                file.set_len(segment_size)
            }
            Err(e) => Err(std::io::Error::from(e)),
        };
        allocated
            .and_then(|_| file.sync_all())
            .map_err(io_err(format!("preallocate {}", path.display())))?;
    }
    Ok(file)
}

/// Direct writes for the segment at `path`, appending at `size`, where the file system
/// offers them and the segment size keeps every write block-aligned; `None` writes through
/// the page cache instead.
fn open_direct(path: &Path, size: u64, segment_size: u64) -> Option<DirectWriter> {
    if !segment_size.is_multiple_of(BLOCK) {
        return None;
    }
    DirectWriter::open(path, size).ok()
}

fn push_record(buf: &mut Vec<u8>, crc: &mut u32, typ: u8, payload: &[u8]) {
    let c = if typ == record::CRC {
        *crc
    } else {
        *crc = crc32c::crc32c_append(*crc, payload);
        *crc
    };
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.push(typ);
    buf.extend_from_slice(&c.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The records every file starts with: the chained crc, metadata, the hard state.
fn file_head(crc: &mut u32, metadata: &[u8], hs: &HardState) -> Vec<u8> {
    let mut buf = Vec::new();
    push_record(&mut buf, crc, record::CRC, &crc.to_le_bytes());
    push_record(&mut buf, crc, record::METADATA, metadata);
    let mut p = Vec::new();
    hs.encode_into(&mut p);
    push_record(&mut buf, crc, record::STATE, &p);
    buf
}

/// One line per record of every WAL file in `dir`, for the dump tool: offset, type,
/// decoded fields, and whether the chained CRC holds. Never fails on bad bytes.
pub fn dump(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut crc: Option<u32> = None;
    for (seq, index, path) in list(dir)? {
        out.push(format!(
            "file {} (seq {seq}, first index {index})",
            path.display()
        ));
        let data = fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
        let mut off = 0usize;
        while off < data.len() {
            let rest = &data[off..];
            if rest.len() < HEADER || rest.iter().all(|&b| b == 0) {
                out.push(format!("  {off:>10}  end ({} trailing bytes)", rest.len()));
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let typ = rest[4];
            let rec_crc = u32::from_le_bytes(rest[5..9].try_into().expect("4 bytes"));
            let Some(payload) = rest.get(HEADER..HEADER + len) else {
                out.push(format!("  {off:>10}  torn record (len {len})"));
                break;
            };
            let ok = if typ == record::CRC {
                let prev = record::Reader(payload).u32();
                let ok = crc.is_none() || crc == prev;
                crc = prev;
                ok
            } else {
                let computed = crc32c::crc32c_append(crc.unwrap_or(0), payload);
                crc = Some(computed);
                computed == rec_crc
            };
            let what = match typ {
                record::METADATA => format!("metadata {} bytes", payload.len()),
                record::ENTRY => match Entry::decode(payload) {
                    Some(e) => format!(
                        "entry index={} term={} type={} data={}B",
                        e.index,
                        e.term,
                        e.entry_type,
                        e.data.len()
                    ),
                    None => "entry (undecodable)".to_string(),
                },
                record::STATE => match HardState::decode(payload) {
                    Some(h) => format!(
                        "state term={} vote={:x} commit={}",
                        h.term, h.vote, h.commit
                    ),
                    None => "state (undecodable)".to_string(),
                },
                record::CRC => format!("crc {:08x}", crc.unwrap_or(0)),
                record::SNAPSHOT => match SnapshotMarker::decode(payload) {
                    Some(m) => format!("snapshot index={} term={}", m.index, m.term),
                    None => "snapshot (undecodable)".to_string(),
                },
                t => format!("unknown type {t}"),
            };
            let flag = if ok { "" } else { "  CRC MISMATCH" };
            out.push(format!("  {off:>10}  {what}{flag}"));
            off += HEADER + len;
        }
    }
    Ok(out)
}

/// What reading a WAL has gathered so far, carried from one file to the next: the chained
/// CRC and what the records say. [`Wal::open`] and [`WalVerifier`] read with it, so a copy
/// is checked exactly as a restart reads.
#[derive(Debug, Clone)]
struct Scan {
    snap: SnapshotMarker,
    crc: Option<u32>,
    found_snap: bool,
    metadata: Vec<u8>,
    hard_state: HardState,
    /// Entries after the snapshot, later writes winning (kept only with `keep_entries`).
    entries: Vec<Entry>,
    keep_entries: bool,
    /// How many entries after the snapshot the log holds so far.
    n_entries: usize,
}

/// How far one file's records check out.
struct FileScan {
    /// The end of the last intact record (where zeros or the damage begin).
    end: usize,
    /// Intact records, and the type of the last one.
    good: usize,
    prev_typ: Option<u8>,
    /// The first record that fails its header or CRC check, and why.
    damage: Option<(usize, &'static str)>,
}

impl Scan {
    fn new(snap: SnapshotMarker, keep_entries: bool) -> Scan {
        Scan {
            snap,
            crc: None,
            found_snap: snap.index == 0,
            metadata: Vec::new(),
            hard_state: HardState::default(),
            entries: Vec::new(),
            keep_entries,
            n_entries: 0,
        }
    }

    /// Reads the records of file `seq` (`data`, read from `path`) up to the zeros after
    /// them or the first record that fails its header or CRC check ([`FileScan::damage`]:
    /// torn or corrupt, [`FileScan::judge`] decides). An intact record that says
    /// something impossible — a crc record inside a file, a chain broken between files,
    /// metadata that changes, an entry index gap, a payload that does not decode — is
    /// corruption wherever it is: [`Error::Corrupt`].
    fn file(&mut self, seq: u64, path: &Path, data: &[u8]) -> Result<FileScan> {
        let corrupt = |offset: usize, reason: &str| Error::Corrupt {
            file: path.display().to_string(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        let mut off = 0usize;
        let mut damage: Option<(usize, &'static str)> = None;
        let (mut good, mut prev_typ) = (0usize, None);
        while off < data.len() {
            // Zeros after the last record: the end of the log (preallocated space).
            if data[off..].iter().all(|&b| b == 0) {
                break;
            }
            let Some((len, typ, rec_crc)) = torn::header_at(data, off) else {
                damage = Some((off, "record header cut short by the end of the file"));
                break;
            };
            let Some(payload) = data.get(off + HEADER..off + HEADER + len) else {
                damage = Some((off, "record length runs past the end of the file"));
                break;
            };
            if typ == record::CRC {
                if off != 0 {
                    return Err(corrupt(off, "crc record inside a file"));
                }
                // Its header carries the same value as its payload (the chain so far; 0
                // before the first file).
                let Some(prev) = record::Reader(payload)
                    .u32()
                    .filter(|&prev| len == 4 && prev == rec_crc && (seq > 0 || prev == 0))
                else {
                    damage = Some((off, "bad crc record"));
                    break;
                };
                if let Some(c) = self.crc {
                    if c != prev {
                        return Err(corrupt(off, "crc chain broken between files"));
                    }
                }
                self.crc = Some(prev);
            } else {
                if !matches!(
                    typ,
                    record::METADATA | record::ENTRY | record::STATE | record::SNAPSHOT
                ) {
                    damage = Some((off, "unknown record type"));
                    break;
                }
                let computed = crc32c::crc32c_append(self.crc.unwrap_or(0), payload);
                if computed != rec_crc {
                    damage = Some((off, "crc mismatch"));
                    break;
                }
                // The record is intact (as written): a payload that does not decode is
                // corruption wherever it is.
                self.crc = Some(computed);
                match typ {
                    record::METADATA => {
                        if !self.metadata.is_empty() && self.metadata != payload {
                            return Err(corrupt(off, "metadata differs between files"));
                        }
                        self.metadata = payload.to_vec();
                    }
                    record::ENTRY => {
                        let e = Entry::decode(payload).ok_or_else(|| corrupt(off, "bad entry"))?;
                        if e.index > self.snap.index {
                            let keep = (e.index - (self.snap.index + 1)) as usize;
                            if keep > self.n_entries {
                                return Err(corrupt(off, "entry index gap"));
                            }
                            self.n_entries = keep + 1;
                            if self.keep_entries {
                                self.entries.truncate(keep);
                                self.entries.push(e);
                            }
                        }
                    }
                    record::STATE => {
                        self.hard_state =
                            HardState::decode(payload).ok_or_else(|| corrupt(off, "bad state"))?;
                    }
                    _ => {
                        let m = SnapshotMarker::decode(payload)
                            .ok_or_else(|| corrupt(off, "bad snapshot marker"))?;
                        if m == self.snap {
                            self.found_snap = true;
                        }
                    }
                }
            }
            off += HEADER + len;
            good += 1;
            prev_typ = Some(typ);
        }
        Ok(FileScan {
            end: off,
            good,
            prev_typ,
            damage,
        })
    }
}

impl FileScan {
    /// Judges what follows the file's intact records. A finished file (not the last) was
    /// synced and truncated to its records at the cut: nothing about it can be torn, so
    /// damage or zeros after its records are [`Error::Corrupt`]. The last file's first
    /// damaged record is returned, judged torn or not ([`TailDamage::not_torn`]).
    fn judge(&self, path: &Path, data: &[u8], is_last: bool) -> Result<Option<TailDamage>> {
        let corrupt = |offset: usize, reason: &str| Error::Corrupt {
            file: path.display().to_string(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        if !is_last {
            if let Some((at, why)) = self.damage {
                return Err(corrupt(at, why));
            }
            if self.end < data.len() {
                return Err(corrupt(
                    self.end,
                    "zeros after the records of a finished file",
                ));
            }
            return Ok(None);
        }
        Ok(self.damage.map(|(at, why)| TailDamage {
            file: path.to_path_buf(),
            offset: at as u64,
            reason: why.to_string(),
            not_torn: torn::judge(data, at, self.good, self.prev_typ).err(),
        }))
    }
}

/// The first damaged record of a WAL's last file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailDamage {
    pub file: PathBuf,
    /// Where the record starts; the records before it are intact.
    pub offset: u64,
    /// What fails: its header, its length, its CRC.
    pub reason: String,
    /// `None` when the damage is provably a torn final write (what a crash during the
    /// last write leaves; [`Wal::open`] cuts it off); otherwise why it is not, and the
    /// damage is corruption.
    pub not_torn: Option<String>,
}

impl TailDamage {
    /// The damage as [`Error::Corrupt`], naming the file and the offset.
    pub fn to_error(&self) -> Error {
        Error::Corrupt {
            file: self.file.display().to_string(),
            offset: self.offset,
            reason: match &self.not_torn {
                Some(why) => format!("{}; {why}", self.reason),
                None => self.reason.clone(),
            },
        }
    }
}

/// A segment file of a WAL directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file's sequence number (files count from 0, without gaps).
    pub seq: u64,
    /// The raft index the file's first entry may have.
    pub first_index: u64,
    pub path: PathBuf,
}

/// The segment files of the WAL in `dir`, by sequence number, without opening any (empty
/// if `dir` does not exist).
pub fn segments(dir: &Path) -> Result<Vec<Segment>> {
    Ok(list(dir)?
        .into_iter()
        .map(|(seq, first_index, path)| Segment {
            seq,
            first_index,
            path,
        })
        .collect())
}

/// The position in `segments` of the file that replay from a snapshot at `snapshot_index`
/// starts with (as [`Wal::open`] chooses it): the last one whose first index is at or
/// before the snapshot, or the first file.
pub fn start_segment(segments: &[Segment], snapshot_index: u64) -> usize {
    segments
        .iter()
        .rposition(|s| s.first_index <= snapshot_index)
        .unwrap_or(0)
}

/// Checks a WAL read-only, segment by segment, with exactly the rules of [`Wal::open`] —
/// for copying the log of a member that may be running (a backup).
///
/// The caller lists the segments ([`segments`], [`start_segment`]), reads each file's
/// bytes and hands them over in order; nothing is opened, locked or changed here. Each
/// [`WalVerifier::check`] says how many of the file's bytes are intact records. A finished
/// file must be intact to its end; the last file may end in a damaged record
/// ([`SegmentCheck::damage`]), which the caller judges: a torn final write
/// ([`TailDamage::not_torn`] is `None`) is dropped, as a restart would drop it. A verifier
/// whose `check` returned an error is not to be used further (clone it first to retry a
/// file).
#[derive(Debug, Clone)]
pub struct WalVerifier {
    scan: Scan,
    next_seq: Option<u64>,
}

/// What [`WalVerifier::check`] found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The length of the file's intact records from its start: the bytes a copy keeps.
    pub valid_len: u64,
    /// The last file's first damaged record, right after them, if it has one.
    pub damage: Option<TailDamage>,
}

impl WalVerifier {
    /// A verifier for a replay from the snapshot marker `snapshot` (the default marker: from
    /// the beginning of the log).
    pub fn new(snapshot: SnapshotMarker) -> WalVerifier {
        WalVerifier {
            scan: Scan::new(snapshot, false),
            next_seq: None,
        }
    }

    /// Checks the next segment, `data` being its bytes; `last` says whether it is the last
    /// file of the log. Errors: [`Error::Corrupt`] (file and offset) for a sequence gap, an
    /// intact record that breaks the log's rules, and any damage in a finished file.
    pub fn check(&mut self, segment: &Segment, data: &[u8], last: bool) -> Result<SegmentCheck> {
        if let Some(want) = self.next_seq {
            if segment.seq != want {
                return Err(Error::Corrupt {
                    file: segment.path.display().to_string(),
                    offset: 0,
                    reason: format!("sequence gap after file {}", want - 1),
                });
            }
        }
        let scanned = self.scan.file(segment.seq, &segment.path, data)?;
        let damage = scanned.judge(&segment.path, data, last)?;
        self.next_seq = Some(segment.seq + 1);
        Ok(SegmentCheck {
            valid_len: scanned.end as u64,
            damage,
        })
    }

    /// Whether the snapshot's marker was among the records checked (always true for the
    /// default marker). A copy without it cannot be replayed from that snapshot.
    pub fn snapshot_found(&self) -> bool {
        self.scan.found_snap
    }

    /// The metadata the files carry (empty before the first file).
    pub fn metadata(&self) -> &[u8] {
        &self.scan.metadata
    }

    /// The last hard state checked.
    pub fn hard_state(&self) -> HardState {
        self.scan.hard_state
    }

    /// How many entries after the snapshot the records checked hold (later writes
    /// replacing earlier ones, as replay counts them).
    pub fn entries(&self) -> u64 {
        self.scan.n_entries as u64
    }

    /// The index of the last entry checked (the snapshot's if none follows it).
    pub fn last_index(&self) -> u64 {
        self.scan.snap.index + self.scan.n_entries as u64
    }
}

impl Wal {
    /// Whether `dir` holds a WAL.
    pub fn exists(dir: &Path) -> bool {
        list(dir).map(|l| !l.is_empty()).unwrap_or(false)
    }

    /// Creates a new WAL atomically: written in a temp dir, synced, renamed into place.
    pub fn create(dir: &Path, metadata: &[u8], segment_size: u64) -> Result<Wal> {
        if Self::exists(dir) {
            return Err(Error::Exists(dir.display().to_string()));
        }
        // The directory the WAL goes into, durably (each new component synced into its
        // parent); the WAL itself is built beside it and renamed into place.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir_all_durable(parent)?;
        }
        let tmp = dir.with_extension("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let name = file_name(0, 0);
        let mut crc = 0;
        let mut buf = file_head(&mut crc, metadata, &HardState::default());
        let mut p = Vec::new();
        SnapshotMarker::default().encode_into(&mut p);
        push_record(&mut buf, &mut crc, record::SNAPSHOT, &p);
        let path = tmp.join(&name);
        let mut f = File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        f.write_all(&buf)
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("write {}", path.display())))?;
        fsync_dir(&tmp)?;
        let _ = fs::remove_dir(dir); // an empty directory may stand where the WAL goes
        fs::rename(&tmp, dir).map_err(io_err(format!("rename {} into place", tmp.display())))?;
        fsync_parent(dir)?;
        let path = dir.join(&name);
        let file = open_preallocated(&path, segment_size)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq: 0,
            crc,
            size: buf.len() as u64,
            segment_size,
            last_index: 0,
            metadata: metadata.to_vec(),
            hard_state: HardState::default(),
            buf: Vec::new(),
            scratch: Vec::new(),
            last_sync: None,
            written: buf.len() as u64,
            synced: buf.len() as u64,
            direct: open_direct(&path, buf.len() as u64, segment_size),
            path,
            try_direct: true,
            direct_failure: None,
            snapshot_index: 0,
        })
    }

    /// Reads the WAL from the snapshot marker `snap` on and returns the WAL switched to
    /// append mode with what it held.
    ///
    /// A damaged last file is cut at its last good record only when the damage is provably
    /// a torn final write ([`WalContents::repaired`] says where); any other bad record is
    /// [`Error::Corrupt`] with its file and offset, and nothing is changed on disk. On
    /// success the last file is synced (what was read may have been only in the page cache
    /// of a process that died) and leftover `*.wal.tmp` segments are removed
    /// ([`WalContents::removed_temporaries`]).
    pub fn open(dir: &Path, snap: SnapshotMarker, segment_size: u64) -> Result<(Wal, WalContents)> {
        let files = list(dir)?;
        if files.is_empty() {
            return Err(Error::NotFound(dir.display().to_string()));
        }
        for w in files.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                return Err(Error::Corrupt {
                    file: w[1].2.display().to_string(),
                    offset: 0,
                    reason: format!("sequence gap after file {}", w[0].0),
                });
            }
        }
        let start = files.iter().rposition(|f| f.1 <= snap.index).unwrap_or(0);
        let selected = &files[start..];
        let mut out = WalContents::default();
        let mut scan = Scan::new(snap, true);
        let mut last_len = 0u64;
        let mut cut_at = None;
        for (i, &(seq, _, ref path)) in selected.iter().enumerate() {
            let is_last = i + 1 == selected.len();
            let mut data = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_err(format!("read {}", path.display())))?;
            let scanned = scan.file(seq, path, &data)?;
            if let Some(damage) = scanned.judge(path, &data, is_last)? {
                if damage.not_torn.is_some() {
                    return Err(damage.to_error());
                }
                out.repaired = Some(format!(
                    "{} at offset {} ({}; {} bytes of a torn final write dropped)",
                    path.display(),
                    damage.offset,
                    damage.reason,
                    data.len() - scanned.end
                ));
            }
            if is_last {
                cut_at = (scanned.end < data.len()).then_some(scanned.end);
                last_len = scanned.end as u64;
            }
        }
        if !scan.found_snap {
            return Err(Error::SnapshotNotFound {
                index: snap.index,
                term: snap.term,
            });
        }
        let crc = scan.crc;
        out.metadata = scan.metadata;
        out.hard_state = scan.hard_state;
        out.entries = scan.entries;
        // Only now change the directory, once the log is known good: a caller that tries
        // another snapshot after an error opens the same files again.
        let (seq, _, path) = files.last().expect("non-empty").clone();
        if let Some(at) = cut_at {
            // Cut the last file at its last good record: a torn write's remains go, and
            // the space after the records reads as zeros again (re-extended below).
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(format!("open {}", path.display())))?;
            f.set_len(at as u64)
                .and_then(|_| f.sync_all())
                .map_err(io_err(format!("truncate {}", path.display())))?;
        }
        out.removed_temporaries = remove_temporaries(dir)?;
        let file = open_preallocated(&path, segment_size)?;
        // What was read may still be only in the page cache (the previous process died
        // between a write and its sync): make it durable before raft acts on it.
        file.sync_all()
            .map_err(io_err(format!("sync {}", path.display())))?;
        let last_index = out.entries.last().map(|e| e.index).unwrap_or(snap.index);
        let wal = Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            crc: crc.unwrap_or(0),
            size: last_len,
            segment_size,
            last_index,
            metadata: out.metadata.clone(),
            hard_state: out.hard_state,
            buf: Vec::new(),
            scratch: Vec::new(),
            last_sync: None,
            written: last_len,
            synced: last_len,
            direct: open_direct(&path, last_len, segment_size),
            path,
            try_direct: true,
            direct_failure: None,
            snapshot_index: snap.index,
        };
        Ok((wal, out))
    }

    /// Appends one Ready's entries and hard state: one write, and one fdatasync unless only
    /// the commit index changed.
    pub fn save(&mut self, hard_state: Option<&HardState>, entries: &[Entry]) -> Result<()> {
        let refs: Vec<EntryRef<'_>> = entries.iter().map(Entry::as_ref).collect();
        self.save_refs(hard_state, &refs)
    }

    /// [`Wal::save`] with borrowed entries: their payloads are encoded from where they are.
    pub fn save_refs(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[EntryRef<'_>],
    ) -> Result<()> {
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for e in entries {
            self.scratch.clear();
            e.encode_into(&mut self.scratch);
            push_record(&mut self.buf, &mut self.crc, record::ENTRY, &self.scratch);
            self.last_index = e.index;
        }
        // Only new entries, a new term or a new vote must be on disk before raft acts on
        // them; a commit index alone can be learned again after a crash (from the leader, or
        // by the next election's commit), so it is written without waiting for the disk —
        // etcd's MustSync rule. It reaches the disk with the next synced write.
        let mut must_sync = !entries.is_empty();
        if let Some(hs) = hard_state {
            must_sync |= hs.term != self.hard_state.term || hs.vote != self.hard_state.vote;
            self.scratch.clear();
            hs.encode_into(&mut self.scratch);
            push_record(&mut self.buf, &mut self.crc, record::STATE, &self.scratch);
            self.hard_state = *hs;
        }
        self.write_buf(must_sync)?;
        if self.size >= self.segment_size {
            self.cut()?;
        }
        Ok(())
    }

    /// The time the last synced write spent in fdatasync, once (None if nothing synced
    /// since the previous call).
    pub fn take_sync_time(&mut self) -> Option<std::time::Duration> {
        self.last_sync.take()
    }

    /// Records that a snapshot was taken at `marker`.
    pub fn save_snapshot(&mut self, marker: SnapshotMarker) -> Result<()> {
        self.buf.clear();
        self.scratch.clear();
        marker.encode_into(&mut self.scratch);
        push_record(
            &mut self.buf,
            &mut self.crc,
            record::SNAPSHOT,
            &self.scratch,
        );
        self.last_index = self.last_index.max(marker.index);
        self.write_buf(true)?;
        self.snapshot_index = self.snapshot_index.max(marker.index);
        Ok(())
    }

    /// Index of the newest snapshot whose marker this log holds durably: the snapshot it
    /// was opened at, or the newest one [`Wal::save_snapshot`] has synced since (0 for
    /// none). Snapshot files at or after it must be kept: pass it to
    /// [`crate::Snapshotter::purge`].
    pub fn durable_snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    fn write_buf(&mut self, sync: bool) -> Result<()> {
        let ctx = || format!("append to {}", self.dir.display());
        let end = self.size + self.buf.len() as u64;
        // Zeros after the records, never over them: they read as the end of the log.
        let zeros_to = if end > self.written && end < self.segment_size {
            (end.div_ceil(BLOCK) * BLOCK + ZERO_AHEAD).min(self.segment_size)
        } else {
            0
        };
        if let Some(direct) = &mut self.direct {
            if sync {
                crate::failpoint::hit("wal_before_sync");
            }
            let started = std::time::Instant::now();
            match direct.append(&self.buf, sync, zeros_to) {
                Ok(()) => {
                    if sync {
                        self.last_sync = Some(started.elapsed());
                        self.synced = end;
                    }
                    self.written = self.written.max(zeros_to);
                    self.size = end;
                    return Ok(());
                }
                // Nothing counts as written; the page cache path writes it all again, and
                // keeps doing so for later segments too.
                Err(e) => {
                    self.direct = None;
                    self.try_direct = false;
                    self.direct_failure = Some(e);
                }
            }
        }
        self.file
            .write_all_at(&self.buf, self.size)
            .map_err(io_err(ctx()))?;
        if zeros_to > end {
            let zeros = vec![0u8; (zeros_to - end) as usize];
            self.file.write_all_at(&zeros, end).map_err(io_err(ctx()))?;
            self.written = zeros_to;
        }
        if sync {
            crate::failpoint::hit("wal_before_sync");
            let started = std::time::Instant::now();
            self.file.sync_data().map_err(io_err(ctx()))?;
            self.last_sync = Some(started.elapsed());
            self.synced = end;
        }
        self.size += self.buf.len() as u64;
        Ok(())
    }

    /// Starts the next segment file; it is durable (file and directory synced) before use.
    fn cut(&mut self) -> Result<()> {
        let seq = self.seq + 1;
        let name = file_name(seq, self.last_index + 1);
        let tmp = self.dir.join(format!("{name}.tmp"));
        // The finished segment keeps only its records (no preallocated zeros).
        self.file
            .set_len(self.size)
            .and_then(|_| self.file.sync_all())
            .map_err(io_err(format!(
                "truncate the finished segment in {}",
                self.dir.display()
            )))?;
        self.synced = self.size;
        let head = file_head(&mut self.crc, &self.metadata, &self.hard_state);
        let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        f.write_all(&head)
            .and_then(|_| f.set_len(self.segment_size.max(head.len() as u64)))
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        let path = self.dir.join(&name);
        crate::failpoint::hit("wal_cut_before_rename");
        fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", tmp.display())))?;
        crate::failpoint::hit("wal_cut_after_rename");
        fsync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        self.path = path.clone();
        self.seq = seq;
        self.size = head.len() as u64;
        self.written = self.size;
        self.synced = self.size;
        self.direct = self
            .try_direct
            .then(|| open_direct(&path, self.size, self.segment_size))
            .flatten();
        Ok(())
    }

    /// Deletes the oldest files that hold only entries at or before `snapshot_index`, while
    /// more than `max_files` remain (0 = keep all). Returns how many were removed.
    ///
    /// `snapshot_index` is capped at [`Wal::durable_snapshot_index`]: replay must be able
    /// to start from a snapshot whose marker is on disk, so nothing after that marker's
    /// file goes.
    pub fn purge(&self, snapshot_index: u64, max_files: usize) -> Result<usize> {
        if max_files == 0 {
            return Ok(0);
        }
        let snapshot_index = snapshot_index.min(self.snapshot_index);
        let files = list(&self.dir)?;
        let mut removed = 0;
        for i in 0..files.len().saturating_sub(1) {
            if files.len() - removed <= max_files {
                break;
            }
            // File i is fully covered when the next file starts at or before the snapshot.
            if files[i + 1].1 > snapshot_index + 1 || files[i].0 == self.seq {
                break;
            }
            fs::remove_file(&files[i].2)
                .map_err(io_err(format!("remove {}", files[i].2.display())))?;
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Whether appends go straight to the disk (`O_DIRECT`) rather than through the page
    /// cache; the server logs it.
    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
    }

    /// The error that turned direct writes off, once (None if they never failed).
    pub fn take_direct_failure(&mut self) -> Option<std::io::Error> {
        self.direct_failure.take()
    }

    /// The segment being written and how many of its bytes are on stable storage: a power
    /// failure may lose (or tear) what lies after, never what lies before, nor any earlier
    /// segment (a cut syncs the finished one).
    pub fn durable_tail(&self) -> (PathBuf, u64) {
        (self.path.clone(), self.synced)
    }

    /// Index of the last entry written.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
}

/// The segment being written and the end of its records (tests only).
#[cfg(test)]
impl Wal {
    pub(crate) fn test_position(&self) -> (u64, usize) {
        (self.seq, self.size as usize)
    }
}

/// The segment files of `dir`, by seq (tests only).
#[cfg(test)]
pub(crate) fn test_files(dir: &Path) -> Vec<PathBuf> {
    list(dir).unwrap().into_iter().map(|f| f.2).collect()
}

#[cfg(test)]
mod tests {
    /// Small segments keep the preallocated files (and the tests) small.
    const SEG: u64 = 64 * 1024;
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxcd-wal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            entry_type: 0,
            data: format!("data-{index}").into_bytes(),
            context: Vec::new(),
        }
    }

    fn hs(commit: u64) -> HardState {
        HardState {
            term: 1,
            vote: 1,
            commit,
        }
    }

    #[test]
    fn round_trip_with_overwrite() {
        let d = dir("rt");
        let mut w = Wal::create(&d, b"meta", SEG).unwrap();
        w.save(Some(&hs(2)), &[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        w.save(Some(&hs(3)), &[entry(3, 2), entry(4, 2)]).unwrap();
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.metadata, b"meta");
        assert_eq!(c.hard_state, hs(3));
        let got: Vec<(u64, u64)> = c.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert!(c.repaired.is_none());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn direct_and_page_cache_appends_leave_identical_files() {
        // Same saves (synced, commit-only, across two cuts) through both write paths.
        let saves = |w: &mut Wal| {
            for i in 1..=400u64 {
                let e = Entry {
                    data: vec![b'a' + (i % 26) as u8; (i * 7 % 900) as usize],
                    ..entry(i, 1)
                };
                w.save(Some(&hs(i)), &[e]).unwrap();
                w.save(Some(&hs(i + 1)), &[]).unwrap(); // commit only: not synced
            }
        };
        let (da, db) = (dir("direct-a"), dir("direct-b"));
        let mut a = Wal::create(&da, b"m", SEG).unwrap();
        let mut b = Wal::create(&db, b"m", SEG).unwrap();
        if !a.direct_io() {
            eprintln!("no direct I/O under {}: skipped", da.display());
            return;
        }
        (b.direct, b.try_direct) = (None, false);
        saves(&mut a);
        saves(&mut b);
        assert!(a.direct_io(), "a direct write failed and fell back");
        assert!(a.take_direct_failure().is_none());
        assert!(a.seq >= 2, "the saves cross at least two cuts");
        drop((a, b));
        let (fa, fb) = (list(&da).unwrap(), list(&db).unwrap());
        assert_eq!(fa.len(), fb.len());
        for (x, y) in fa.iter().zip(&fb) {
            let (bx, by) = (fs::read(&x.2).unwrap(), fs::read(&y.2).unwrap());
            assert!(bx == by, "{} and {} differ", x.2.display(), y.2.display());
        }
        let (_, c) = Wal::open(&da, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 400);
        assert_eq!(c.hard_state, hs(401));
        let _ = fs::remove_dir_all(&da);
        let _ = fs::remove_dir_all(&db);
    }

    #[test]
    fn a_failed_direct_write_falls_back_to_the_page_cache_and_loses_nothing() {
        let d = dir("direct-fail");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        let path = list(&d).unwrap()[0].2.clone();
        let Ok(failing) = DirectWriter::failing(&path, w.size) else {
            eprintln!("no direct I/O under {}: skipped", d.display());
            return;
        };
        w.direct = Some(failing);
        w.save(Some(&hs(2)), &[entry(2, 1), entry(3, 1)]).unwrap();
        assert!(!w.direct_io(), "still on the failing direct path");
        assert!(w.take_direct_failure().is_some(), "the failure is reported");
        assert!(w.take_direct_failure().is_none(), "once");
        w.save(Some(&hs(3)), &[entry(4, 1)]).unwrap();
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        let got: Vec<u64> = c.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert_eq!(c.hard_state, hs(3));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn zeros_ahead_never_cover_records_and_reopen_appends_after_them() {
        // A 1 MB segment and ~300-byte entries: the zeroed region is extended many times.
        let seg = 1024 * 1024;
        let d = dir("zero");
        let big = |index| Entry {
            data: vec![b'v'; 300],
            ..entry(index, 1)
        };
        let mut w = Wal::create(&d, b"m", seg).unwrap();
        for i in 1..=1000 {
            w.save(Some(&hs(i)), &[big(i)]).unwrap();
            assert!(w.written >= w.size, "records end inside the written region");
            assert!(w.written <= seg);
        }
        let written = w.written;
        assert!(written > w.size && written - w.size <= ZERO_AHEAD + BLOCK);
        drop(w);
        let path = &list(&d).unwrap()[0].2;
        let bytes = fs::read(path).unwrap();
        assert!(bytes[bytes.len() - 16..].iter().all(|&b| b == 0));
        let (mut w, c) = Wal::open(&d, SnapshotMarker::default(), seg).unwrap();
        assert_eq!(c.entries.len(), 1000);
        assert!(c.entries.iter().all(|e| e.data.len() == 300));
        assert!(c.repaired.is_none());
        // Reopened: appends land after the records, over the zeros written before.
        for i in 1001..=1300 {
            w.save(Some(&hs(i)), &[big(i)]).unwrap();
        }
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), seg).unwrap();
        let idx: Vec<u64> = c.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, (1..=1300).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn crc_chain_across_cuts_and_purge() {
        let d = dir("cut");
        let mut w = Wal::create(&d, b"m", 200).unwrap();
        for i in 1..=50 {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
        let n = list(&d).unwrap().len();
        assert!(n > 5, "small segments cut often: {n}");
        w.save_snapshot(SnapshotMarker { index: 40, term: 1 })
            .unwrap();
        let removed = w.purge(40, 3).unwrap();
        assert!(removed > 0);
        drop(w);
        let (mut w, c) = Wal::open(&d, SnapshotMarker { index: 40, term: 1 }, 200).unwrap();
        let idx: Vec<u64> = c.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, (41..=50).collect::<Vec<_>>());
        w.save(None, &[entry(51, 1)]).unwrap();
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker { index: 40, term: 1 }, 200).unwrap();
        assert_eq!(c.entries.last().unwrap().index, 51);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_tail_at_every_offset_is_repaired() {
        let d = dir("torn");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        let good = w.size;
        // The last record alone: every cut inside it tears exactly this record.
        w.save(None, &[entry(2, 1)]).unwrap();
        let full = w.size;
        drop(w);
        let path = list(&d).unwrap()[0].2.clone();
        let bytes = fs::read(&path).unwrap();
        for cut in good..full {
            fs::write(&path, &bytes[..cut as usize]).unwrap();
            let (mut w, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
            assert_eq!(c.entries.len(), 1, "cut at {cut}");
            assert_eq!(c.hard_state, hs(1));
            w.save(None, &[entry(2, 1)]).unwrap();
            drop(w);
            let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
            assert_eq!(c.entries.len(), 2, "append after repair at {cut}");
        }
        // A zeroed tail (preallocation) is not data.
        let mut z = bytes.clone();
        z.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &z).unwrap();
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    /// Offsets of the records of a segment file's bytes, up to the zeros after them.
    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut off = 0;
        while let Some((len, _, _)) = torn::header_at(bytes, off) {
            if bytes[off..].iter().all(|&b| b == 0) {
                break;
            }
            out.push(off);
            off += HEADER + len;
        }
        out
    }

    /// `n` synced saves of one entry and a hard state each, as the server writes them.
    fn write_saves(d: &Path, n: u64, seg: u64) {
        let mut w = Wal::create(d, b"meta", seg).unwrap();
        for i in 1..=n {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
    }

    fn expect_corrupt_at(d: &Path, file: &Path, offset: usize) {
        match Wal::open(d, SnapshotMarker::default(), SEG) {
            Err(Error::Corrupt {
                file: f, offset: o, ..
            }) => {
                assert_eq!(f, file.display().to_string());
                assert_eq!(o, offset as u64);
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok((_, c)) => panic!(
                "opened with {} entries (repaired: {:?})",
                c.entries.len(),
                c.repaired
            ),
        }
    }

    #[test]
    fn flipped_length_bit_in_the_last_segment_is_refused_not_truncated() {
        // The measured bug: one flipped high bit in a length field in the last segment read
        // as a torn tail, and half of the acknowledged records were dropped.
        let d = dir("lenflip");
        write_saves(&d, 200, SEG);
        let path = list(&d).unwrap()[0].2.clone();
        let bytes = fs::read(&path).unwrap();
        let offs = record_offsets(&bytes);
        assert_eq!(
            offs.len(),
            4 + 400,
            "head, then an entry and a state per save"
        );
        for &rec in &[offs[offs.len() / 2], offs[10], offs[offs.len() - 3]] {
            for bit in [31, 30, 28, 24, 20, 16, 12, 9, 6] {
                let mut b = bytes.clone();
                b[rec + bit / 8] ^= 1 << (bit % 8);
                fs::write(&path, &b).unwrap();
                expect_corrupt_at(&d, &path, rec);
                assert_eq!(fs::read(&path).unwrap(), b, "left as it was (bit {bit})");
            }
        }
        fs::write(&path, &bytes).unwrap();
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 200);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn flipped_length_bit_in_a_middle_segment_is_refused() {
        let d = dir("lenflip-mid");
        let seg = 1024;
        write_saves(&d, 100, seg);
        let files = list(&d).unwrap();
        assert!(files.len() >= 4, "{} files", files.len());
        let path = files[files.len() / 2].2.clone();
        let bytes = fs::read(&path).unwrap();
        let offs = record_offsets(&bytes);
        for &rec in &offs {
            for bit in [31, 23, 10, 2] {
                let mut b = bytes.clone();
                b[rec + bit / 8] ^= 1 << (bit % 8);
                fs::write(&path, &b).unwrap();
                let err = Wal::open(&d, SnapshotMarker::default(), seg).err().unwrap();
                let Error::Corrupt { file, offset, .. } = err else {
                    panic!("{err}")
                };
                assert_eq!(file, path.display().to_string());
                assert_eq!(offset, rec as u64, "bit {bit} of the record at {rec}");
            }
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn zeroed_sector_inside_acknowledged_records_is_refused() {
        // A whole sector of zeros looks like an unwritten one, but later saves that were
        // synced after it follow intact: not a torn final write.
        let d = dir("zerosector");
        write_saves(&d, 200, SEG);
        let path = list(&d).unwrap()[0].2.clone();
        let bytes = fs::read(&path).unwrap();
        let offs = record_offsets(&bytes);
        let end = offs[offs.len() - 1] + HEADER + 24; // the last hard state's end
        for sector in (512..end - 1024).step_by(512) {
            let mut b = bytes.clone();
            b[sector..sector + 512].fill(0);
            fs::write(&path, &b).unwrap();
            // The first record the zeros changed (some bytes of it may have been zero).
            let i = (0..offs.len())
                .find(|&i| {
                    let next = offs.get(i + 1).copied().unwrap_or(end);
                    b[offs[i]..next] != bytes[offs[i]..next]
                })
                .unwrap();
            let first_bad = offs[i];
            let err = Wal::open(&d, SnapshotMarker::default(), SEG).err().unwrap();
            let Error::Corrupt { file, offset, .. } = err else {
                panic!("{err}")
            };
            assert_eq!(file, path.display().to_string());
            assert_eq!(offset, first_bad as u64, "sector at {sector}");
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn every_torn_sector_pattern_of_the_final_write_is_repaired() {
        // The final write: a commit-only hard state, then a synced batch of entries and a
        // hard state spanning several sectors. A crash leaves any of its sectors unwritten
        // (zeros) and the file possibly cut short; the saves before it are all kept.
        let d = dir("tornsectors");
        let mut w = Wal::create(&d, b"meta", SEG).unwrap();
        for i in 1..=20 {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
        let start = w.size as usize;
        w.save(Some(&hs(21)), &[]).unwrap(); // commit only: not synced
        let batch: Vec<Entry> = (21..=30)
            .map(|i| Entry {
                data: vec![b'x'; 150],
                ..entry(i, 1)
            })
            .collect();
        w.save(Some(&hs(30)), &batch).unwrap();
        let end = w.size as usize;
        drop(w);
        let path = list(&d).unwrap()[0].2.clone();
        let bytes = fs::read(&path).unwrap();
        let check = |b: &[u8], what: &str| {
            fs::write(&path, b).unwrap();
            let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(c.entries.len() >= 20, "{what}");
            assert_eq!(c.entries[19].index, 20, "{what}");
            fs::write(&path, &bytes).unwrap();
        };
        let first = start / 512 * 512;
        for sector in (first..end).step_by(512) {
            let from = sector.max(start);
            // One sector missing, the rest of the write on disk.
            let mut b = bytes.clone();
            b[from..sector + 512].fill(0);
            check(&b, &format!("sector {sector} missing"));
            // That sector and every later one missing.
            let mut b = bytes.clone();
            b[from..].fill(0);
            check(&b, &format!("sectors from {sector} missing"));
            // Only that sector reached the disk.
            let mut b = bytes.clone();
            b[start..].fill(0);
            b[from..sector + 512].copy_from_slice(&bytes[from..sector + 512]);
            check(&b, &format!("only sector {sector} written"));
        }
        // (Every offset of one record: torn_tail_at_every_offset_is_repaired.)
        for cut in (start..end).step_by(7) {
            check(&bytes[..cut], &format!("file cut at {cut}"));
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn directories_are_synced_on_create_cut_and_purge() {
        use crate::fsutil::take_synced;
        let base = dir("dirsync");
        fs::create_dir_all(&base).unwrap();
        let d = base.join("x/y/wal");
        take_synced();
        let mut w = Wal::create(&d, b"m", 200).unwrap();
        let synced = take_synced();
        for want in [base.clone(), base.join("x"), base.join("x/y")] {
            assert!(
                synced.contains(&want),
                "{} not synced: {synced:?}",
                want.display()
            );
        }
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        for i in 2..=30 {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
        assert!(w.seq > 2);
        assert!(take_synced().iter().filter(|p| **p == d).count() as u64 >= w.seq);
        w.save_snapshot(SnapshotMarker { index: 25, term: 1 })
            .unwrap();
        assert!(w.purge(25, 2).unwrap() > 0);
        assert_eq!(take_synced(), vec![d.clone()], "after removing segments");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn open_removes_leftover_temporary_segments_and_reports_them() {
        let d = dir("tmpfiles");
        write_saves(&d, 3, SEG);
        // A crash during a cut leaves the next segment, preallocated, under a .tmp name.
        let tmp = d.join(format!("{}.tmp", file_name(1, 4)));
        fs::write(&tmp, vec![0u8; SEG as usize]).unwrap();
        let other = d.join("notes.tmp");
        fs::write(&other, b"not ours").unwrap();
        crate::fsutil::take_synced();
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.removed_temporaries, vec![tmp.clone()]);
        assert!(!tmp.exists());
        assert!(other.exists(), "only our own temporaries go");
        assert!(crate::fsutil::take_synced().contains(&d));
        assert_eq!(c.entries.len(), 3);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert!(c.removed_temporaries.is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn durable_snapshot_index_tracks_synced_markers_and_caps_purge() {
        let d = dir("durable-snap");
        let mut w = Wal::create(&d, b"m", 200).unwrap();
        assert_eq!(w.durable_snapshot_index(), 0);
        for i in 1..=50 {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
        let files = list(&d).unwrap().len();
        // No marker synced yet: whatever index the caller names, nothing goes.
        assert_eq!(w.purge(40, 1).unwrap(), 0);
        w.save_snapshot(SnapshotMarker { index: 20, term: 1 })
            .unwrap();
        assert_eq!(w.durable_snapshot_index(), 20);
        // Capped at 20: files holding entries after 20 stay.
        w.purge(40, 1).unwrap();
        let left = list(&d).unwrap();
        assert!(left.len() < files);
        assert!(
            left[0].1 <= 21,
            "every entry after the snapshot at 20 is kept"
        );
        drop(w);
        let (w, _) = Wal::open(&d, SnapshotMarker { index: 20, term: 1 }, 200).unwrap();
        assert_eq!(w.durable_snapshot_index(), 20, "the snapshot opened at");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn commit_only_hard_state_is_written_and_read_back() {
        // Written without an fdatasync (etcd's MustSync), but written: a clean restart
        // sees it, and entries synced later carry it to the disk.
        let d = dir("commit");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(0)), &[entry(1, 1), entry(2, 1)]).unwrap();
        w.save(Some(&hs(2)), &[]).unwrap();
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.hard_state, hs(2));
        assert_eq!(c.entries.len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn preallocated_segment_reads_zeros_as_end_and_keeps_appending() {
        let d = dir("prealloc");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        let path = list(&d).unwrap()[0].2.clone();
        assert_eq!(fs::metadata(&path).unwrap().len(), SEG, "preallocated");
        // Its blocks are allocated too (etcd's fallocate), where the file system can.
        let probe = d.join("probe");
        let can = File::create(&probe).map(|f| {
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 4096).is_ok()
        });
        if can.unwrap_or(false) {
            use std::os::unix::fs::MetadataExt;
            let allocated = fs::metadata(&path).unwrap().blocks() * 512;
            assert!(allocated >= SEG, "{allocated} bytes allocated of {SEG}");
        }
        drop(w);
        let (mut w, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 1);
        assert!(c.repaired.is_none(), "zeros are the end, not damage");
        w.save(None, &[entry(2, 1)]).unwrap();
        drop(w);
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_write_with_a_missing_sector_is_repaired() {
        // A crash mid-write in a preallocated file: some sectors of the last record reached
        // the disk, one did not (still zeros), and later bytes of the same write did.
        let d = dir("sector");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        let good = w.size as usize;
        let mut big = entry(2, 1);
        big.data = vec![7u8; 3000];
        let mut next = entry(3, 1);
        next.data = vec![9u8; 100];
        w.save(None, &[big, next]).unwrap();
        drop(w);
        let path = list(&d).unwrap()[0].2.clone();
        let mut bytes = fs::read(&path).unwrap();
        let sector = (good + 1024) & !511;
        bytes[sector..sector + 512].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (_, c) = Wal::open(&d, SnapshotMarker::default(), SEG).unwrap();
        assert_eq!(c.entries.len(), 1, "the torn write is dropped");
        assert!(c.repaired.is_some());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn flipped_bit_in_the_middle_is_refused_with_file_and_offset() {
        let d = dir("flip");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        for i in 1..=5 {
            w.save(Some(&hs(i)), &[entry(i, 1)]).unwrap();
        }
        let written = w.size as usize;
        drop(w);
        let path = list(&d).unwrap()[0].2.clone();
        let mut bytes = fs::read(&path).unwrap();
        let mid = written / 2;
        bytes[mid] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(&d, SnapshotMarker::default(), SEG).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("corrupt record") && msg.contains(".wal at offset"),
            "{msg}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn dump_lists_records_and_flags_bad_crc() {
        let d = dir("dump");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        drop(w);
        let lines = dump(&d).unwrap();
        assert!(lines.iter().any(|l| l.contains("entry index=1 term=1")));
        assert!(!lines.iter().any(|l| l.contains("CRC MISMATCH")));
        let path = list(&d).unwrap()[0].2.clone();
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1; // inside the last record's payload
        fs::write(&path, &bytes).unwrap();
        assert!(dump(&d).unwrap().iter().any(|l| l.contains("CRC MISMATCH")));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_snapshot_marker_is_an_error() {
        let d = dir("snap");
        let mut w = Wal::create(&d, b"m", SEG).unwrap();
        w.save(Some(&hs(1)), &[entry(1, 1)]).unwrap();
        drop(w);
        let err = Wal::open(&d, SnapshotMarker { index: 1, term: 1 }, SEG).err();
        assert!(matches!(err, Some(Error::SnapshotNotFound { .. })));
        assert!(matches!(
            Wal::create(&d, b"m", SEG).err(),
            Some(Error::Exists(_))
        ));
        let _ = fs::remove_dir_all(&d);
    }
}

#[cfg(test)]
mod verifier_tests {
    use super::*;

    const SEG: u64 = 1024;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxcd-walv-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(index: u64) -> Entry {
        Entry {
            term: 1,
            index,
            entry_type: 0,
            data: format!("data-{index}").into_bytes(),
            context: Vec::new(),
        }
    }

    fn hs(commit: u64) -> HardState {
        HardState {
            term: 1,
            vote: 1,
            commit,
        }
    }

    /// A WAL over many small segments: 100 saves, a snapshot marker at 60, 20 more saves.
    fn build(d: &Path) -> SnapshotMarker {
        let mut w = Wal::create(d, b"meta", SEG).unwrap();
        for i in 1..=100 {
            w.save(Some(&hs(i)), &[entry(i)]).unwrap();
        }
        let marker = SnapshotMarker { index: 60, term: 1 };
        w.save_snapshot(marker).unwrap();
        for i in 101..=120 {
            w.save(Some(&hs(i)), &[entry(i)]).unwrap();
        }
        marker
    }

    /// Every segment from the snapshot's on, checked in order: (check, file length) each.
    fn verify(d: &Path, marker: SnapshotMarker) -> Result<(WalVerifier, Vec<(SegmentCheck, u64)>)> {
        let segs = segments(d)?;
        let segs = &segs[start_segment(&segs, marker.index)..];
        let mut v = WalVerifier::new(marker);
        let mut out = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let data = fs::read(&s.path).unwrap();
            out.push((v.check(s, &data, i + 1 == segs.len())?, data.len() as u64));
        }
        Ok((v, out))
    }

    fn snapshot_of_files(d: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        segments(d)
            .unwrap()
            .into_iter()
            .map(|s| {
                let b = fs::read(&s.path).unwrap();
                (s.path, b)
            })
            .collect()
    }

    #[test]
    fn verifier_reads_what_open_reads_and_changes_nothing() {
        let d = dir("same");
        let marker = build(&d);
        // A torn tail too: the last save cut in half, and a leftover temporary segment
        // (both of which `open` would change).
        let last = segments(&d).unwrap().last().unwrap().path.clone();
        let bytes = fs::read(&last).unwrap();
        // The last entry record, cut 5 bytes into it (the file is past its head).
        let mut off = 0;
        let mut last_entry = None;
        while let Some((len, typ, _)) = torn::header_at(&bytes, off).filter(|h| h.1 != 0) {
            if typ == record::ENTRY {
                last_entry = Some(off);
            }
            off += HEADER + len;
        }
        let cut = last_entry.expect("an entry in the last file") + 5;
        fs::write(&last, &bytes[..cut]).unwrap();
        fs::write(d.join(format!("{}.tmp", file_name(99, 999))), b"x").unwrap();
        let before = snapshot_of_files(&d);
        assert!(before.len() >= 5, "{} segments", before.len());
        let (v, checks) = verify(&d, marker).unwrap();
        assert_eq!(snapshot_of_files(&d), before, "the files are untouched");
        assert!(d.join(format!("{}.tmp", file_name(99, 999))).exists());
        let (finished, tail) = checks.split_at(checks.len() - 1);
        for (c, len) in finished {
            assert_eq!((c.valid_len, &c.damage), (*len, &None));
        }
        let damage = tail[0].0.damage.clone().expect("torn tail reported");
        assert_eq!(damage.not_torn, None, "{damage:?}");
        assert_eq!(damage.offset, tail[0].0.valid_len);
        assert_eq!(damage.file, last);
        assert!(v.snapshot_found());
        let (_, c) = Wal::open(&d, marker, SEG).unwrap();
        assert!(c.repaired.is_some());
        assert_eq!(v.metadata(), c.metadata.as_slice());
        assert_eq!(v.hard_state(), c.hard_state);
        assert_eq!(v.entries(), c.entries.len() as u64);
        assert_eq!(v.last_index(), c.entries.last().unwrap().index);
        assert_eq!(v.last_index(), 119, "the torn entry 120 is dropped");
        assert_eq!(tail[0].0.valid_len, cut as u64 - 5);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn verifier_refuses_corruption_with_file_and_offset() {
        let d = dir("corrupt");
        let marker = build(&d);
        let segs = segments(&d).unwrap();
        // A flipped bit in a finished file: an error, whatever the file.
        let mid = &segs[segs.len() - 3].path;
        let good = fs::read(mid).unwrap();
        let mut b = good.clone();
        b[200] ^= 4;
        fs::write(mid, &b).unwrap();
        match verify(&d, marker) {
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file, mid.display().to_string());
                assert!(offset <= 200 && offset > 0, "offset {offset}");
            }
            other => panic!("{:?}", other.map(|r| r.1)),
        }
        fs::write(mid, &good).unwrap();
        // A flipped bit in the last file, followed by later synced saves: damage that is
        // not torn.
        let last = &segs.last().unwrap().path;
        let mut b = fs::read(last).unwrap();
        b[120] ^= 4;
        fs::write(last, &b).unwrap();
        let (_, checks) = verify(&d, marker).unwrap();
        let damage = checks.last().unwrap().0.damage.clone().unwrap();
        assert!(damage.not_torn.is_some(), "{damage:?}");
        let msg = damage.to_error().to_string();
        assert!(
            msg.contains(&last.display().to_string())
                && msg.contains(&format!("offset {}", damage.offset)),
            "{msg}"
        );
        // A missing file in the middle: a sequence gap.
        fs::remove_file(mid).unwrap();
        let Err(Error::Corrupt { reason, .. }) = verify(&d, marker) else {
            panic!("gap not reported")
        };
        assert!(reason.contains("sequence gap"), "{reason}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn verifier_reports_a_missing_snapshot_marker() {
        let d = dir("marker");
        build(&d);
        let (v, _) = verify(&d, SnapshotMarker { index: 70, term: 1 }).unwrap();
        assert!(!v.snapshot_found());
        let (v, _) = verify(&d, SnapshotMarker::default()).unwrap();
        assert!(v.snapshot_found());
        assert_eq!(v.entries(), 120);
        let _ = fs::remove_dir_all(&d);
    }
}
