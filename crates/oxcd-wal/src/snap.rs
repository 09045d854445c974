//! Snapshot files: `{term:016x}-{index:016x}.snap`, written atomically, checked by CRC.
//!
//! Format: `crc32c u32 | term u64 | index u64 | voters (u32 count, u64 each) |
//! learners (same) | data (u32 length, bytes)`, little-endian; the CRC covers everything
//! after it. A file that fails its check is renamed `.broken` and the next older one is used.
//!
//! A snapshot is written to `{name}.tmp`, synced, renamed into place and the directory
//! synced; a crash before the rename leaves the `.tmp`, which [`Snapshotter::open`] removes.
//! Its WAL marker is written after the file: until that marker is synced the snapshot is
//! not the one a restart uses, so [`Snapshotter::purge`] keeps the newest snapshot whose
//! marker is durable and everything newer.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir_all_durable, fsync_dir};
use crate::record::Reader;
use crate::{io_err, Result};

/// A snapshot of the replicated state at `index`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub term: u64,
    pub index: u64,
    /// Voters of the configuration at `index`.
    pub voters: Vec<u64>,
    /// Learners of the configuration at `index`.
    pub learners: Vec<u64>,
    /// The state machine's serialized state.
    pub data: Vec<u8>,
}

/// Everything before the data (after the CRC): term, index, voters, learners, data length.
fn header(s: &Snapshot) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&s.term.to_le_bytes());
    p.extend_from_slice(&s.index.to_le_bytes());
    for list in [&s.voters, &s.learners] {
        p.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            p.extend_from_slice(&id.to_le_bytes());
        }
    }
    p.extend_from_slice(&(s.data.len() as u32).to_le_bytes());
    p
}

/// Writes the file's bytes without copying the data (it can be as large as the store):
/// the CRC is computed over the header and the data in place.
fn write_encoded(s: &Snapshot, out: &mut impl Write) -> std::io::Result<()> {
    if s.data.len() > u32::MAX as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "snapshot data of {} bytes exceeds the 4 GiB format limit",
                s.data.len()
            ),
        ));
    }
    let head = header(s);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &s.data);
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(&head)?;
    out.write_all(&s.data)
}

/// Bytes a snapshot file takes to the disk at a time.
const SYNC_CHUNK: usize = 1 << 20;

/// A file written in chunks of [`SYNC_CHUNK`], each flushed to stable storage before the next:
/// the snapshot reaches the disk as a stream of small writes that the WAL's synced appends
/// (every acknowledged write waits on one) can pass, not as one burst at the final fsync that
/// they would queue behind — tens of megabytes at a million keys.
struct PacedFile {
    file: File,
    unsynced: usize,
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = SYNC_CHUNK - self.unsynced;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.unsynced += n;
        if self.unsynced >= SYNC_CHUNK {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
pub(crate) fn encode(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    write_encoded(s, &mut out).expect("writing to memory");
    out
}

/// Decodes a whole file, reusing its buffer for the data (no second copy of a state that
/// can be as large as the store).
pub(crate) fn decode(mut b: Vec<u8>) -> Option<Snapshot> {
    let mut r = Reader(&b);
    let crc = r.u32()?;
    if crc32c::crc32c(r.0) != crc {
        return None;
    }
    let term = r.u64()?;
    let index = r.u64()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let n = r.u32()? as usize;
        for _ in 0..n {
            list.push(r.u64()?);
        }
    }
    let len = r.u32()? as usize;
    if r.0.len() != len {
        return None;
    }
    let offset = b.len() - len;
    b.drain(..offset);
    let [voters, learners] = lists;
    Some(Snapshot {
        term,
        index,
        voters,
        learners,
        data: b,
    })
}

/// Reads and writes the snapshot files of one directory.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    dir: PathBuf,
}

impl Snapshotter {
    /// Snapshots in `dir` (created if missing on first save). Touches nothing on disk: for
    /// readers such as the dump tool; a server opens with [`Snapshotter::open`].
    pub fn new(dir: &Path) -> Snapshotter {
        Snapshotter {
            dir: dir.to_path_buf(),
        }
    }

    /// Opens the snapshot directory of a starting member: creates `dir` durably if missing,
    /// and removes the `*.snap.tmp` files a crash before a snapshot's rename left (never
    /// renamed into place, so never a snapshot), syncing the directory after. Returns the
    /// removed files, to log. Call it before any snapshot is saved: a `.tmp` being written
    /// at the time would be removed.
    pub fn open(dir: &Path) -> Result<(Snapshotter, Vec<PathBuf>)> {
        create_dir_all_durable(dir)?;
        let ctx = || format!("read dir {}", dir.display());
        let mut removed = Vec::new();
        for ent in fs::read_dir(dir).map_err(io_err(ctx()))? {
            let ent = ent.map_err(io_err(ctx()))?;
            if ent.file_name().to_string_lossy().ends_with(".snap.tmp") {
                let path = ent.path();
                fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            fsync_dir(dir)?;
        }
        Ok((Snapshotter::new(dir), removed))
    }

    fn names(&self) -> Vec<(u64, u64, PathBuf)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".snap") else {
                    continue;
                };
                if let Some((t, i)) = stem.split_once('-') {
                    if let (Ok(t), Ok(i)) = (u64::from_str_radix(t, 16), u64::from_str_radix(i, 16))
                    {
                        out.push((i, t, ent.path()));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Writes a snapshot atomically: temp file, fsync, rename, directory fsync.
    pub fn save(&self, s: &Snapshot) -> Result<PathBuf> {
        create_dir_all_durable(&self.dir)?;
        let name = format!("{:016x}-{:016x}.snap", s.term, s.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let mut paced = PacedFile {
            file: f,
            unsynced: 0,
        };
        write_encoded(s, &mut paced)
            .and_then(|_| paced.file.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        crate::failpoint::hit("snap_file_before_rename");
        fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", tmp.display())))?;
        fsync_dir(&self.dir)?;
        Ok(path)
    }

    /// The newest snapshot that passes its check; damaged ones are renamed `.broken`.
    pub fn load_newest(&self) -> Option<Snapshot> {
        for (_, _, path) in self.names().into_iter().rev() {
            match fs::read(&path).ok().and_then(decode) {
                Some(s) => return Some(s),
                None => {
                    if fs::rename(&path, path.with_extension("snap.broken")).is_ok() {
                        let _ = fsync_dir(&self.dir);
                    }
                }
            }
        }
        None
    }

    /// Every snapshot file with its decoded contents, or `None` if it fails its check.
    pub fn list(&self) -> Vec<(PathBuf, Option<Snapshot>)> {
        self.names()
            .into_iter()
            .map(|(_, _, p)| {
                let s = fs::read(&p).ok().and_then(decode);
                (p, s)
            })
            .collect()
    }

    /// Snapshot files as (index, term, path), newest first, without reading them.
    pub fn newest_first(&self) -> Vec<(u64, u64, PathBuf)> {
        let mut names = self.names();
        names.reverse();
        names
    }

    /// Reads one snapshot file; `None` if it is missing or fails its check.
    pub fn load_file(path: &Path) -> Option<Snapshot> {
        fs::read(path).ok().and_then(decode)
    }

    /// Reads one snapshot file and changes nothing: `Ok(None)` if it fails its check, an
    /// error if it cannot be read (a missing file included: `Error::Io`, kind `NotFound`).
    pub fn read_file(path: &Path) -> Result<Option<Snapshot>> {
        let bytes = fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
        Ok(decode(bytes))
    }

    /// Reads the snapshot at `term`/`index`; `None` if it is missing or fails its check.
    pub fn load(&self, term: u64, index: u64) -> Option<Snapshot> {
        Self::load_file(&self.dir.join(format!("{term:016x}-{index:016x}.snap")))
    }

    /// Deletes the oldest snapshots while more than `max` remain (0 = keep all), but only
    /// those older than `durable_index`: the index of the newest snapshot whose WAL marker
    /// is synced ([`crate::Wal::durable_snapshot_index`]). That snapshot is the one a
    /// restart falls back to while a newer one's marker is not yet on disk, so it and every
    /// newer file stay even beyond `max`. Returns how many were removed; the directory is
    /// synced after removing any.
    pub fn purge(&self, max: usize, durable_index: u64) -> usize {
        let names = self.names();
        if max == 0 || names.len() <= max {
            return 0;
        }
        let extra = names.len() - max;
        let removed = names[..extra]
            .iter()
            .filter(|(index, _, _)| *index < durable_index)
            .filter(|(_, _, p)| fs::remove_file(p).is_ok())
            .count();
        if removed > 0 {
            let _ = fsync_dir(&self.dir);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(index: u64) -> Snapshot {
        Snapshot {
            term: 1,
            index,
            voters: vec![1],
            learners: vec![],
            data: format!("state at {index}").into_bytes(),
        }
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxcd-snap-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_snapshot_of_several_sync_chunks_is_saved_whole() {
        let d = tmp_dir("chunks");
        let sn = Snapshotter::new(&d);
        let mut big = snap(7);
        // Not a multiple of the chunk, with the header in front of it.
        big.data = (0..SYNC_CHUNK * 3 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = sn.save(&big).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            encode(&big).len()
        );
        let back = sn.load_newest().expect("the saved snapshot");
        assert_eq!((back.index, back.data == big.data), (7, true));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn purge_keeps_the_durable_snapshot_and_everything_newer() {
        // --max-snapshots 1: snapshot 20's file is written, its WAL marker is not yet
        // synced. A purge then must not take 10, the snapshot a restart would use.
        let d = tmp_dir("purge-order");
        let sn = Snapshotter::new(&d);
        sn.save(&snap(10)).unwrap();
        sn.save(&snap(20)).unwrap();
        assert_eq!(sn.purge(1, 10), 0);
        assert_eq!(sn.newest_first().len(), 2);
        // Marker for 20 synced: now 10 may go.
        crate::fsutil::take_synced();
        assert_eq!(sn.purge(1, 20), 1);
        assert_eq!(crate::fsutil::take_synced(), vec![d.clone()]);
        let left: Vec<u64> = sn.newest_first().iter().map(|n| n.0).collect();
        assert_eq!(left, vec![20]);
        // Newer than the durable one, beyond the limit: kept all the same.
        sn.save(&snap(30)).unwrap();
        sn.save(&snap(40)).unwrap();
        assert_eq!(sn.purge(1, 20), 0);
        assert_eq!(sn.purge(1, 40), 2);
        assert_eq!(sn.load_newest().unwrap().index, 40);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn save_syncs_every_new_directory_and_the_snap_dir() {
        let base = tmp_dir("dirs");
        fs::create_dir_all(&base).unwrap();
        let d = base.join("member/snap");
        crate::fsutil::take_synced();
        Snapshotter::new(&d).save(&snap(5)).unwrap();
        let synced = crate::fsutil::take_synced();
        assert_eq!(synced, vec![base.clone(), base.join("member"), d.clone()]);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn open_removes_leftover_temporaries_and_reports_them() {
        let d = tmp_dir("tmp");
        let sn = Snapshotter::new(&d);
        let kept = sn.save(&snap(7)).unwrap();
        // A crash before the rename leaves the temporary file.
        let tmp = d.join(format!("{:016x}-{:016x}.snap.tmp", 1, 9));
        fs::write(&tmp, b"half a snapshot").unwrap();
        let (sn, removed) = Snapshotter::open(&d).unwrap();
        assert_eq!(removed, vec![tmp.clone()]);
        assert!(!tmp.exists() && kept.exists());
        assert_eq!(sn.load_newest().unwrap().index, 7);
        assert!(Snapshotter::open(&d).unwrap().1.is_empty());
        // A missing directory is created.
        let (_, removed) = Snapshotter::open(&d.join("sub")).unwrap();
        assert!(removed.is_empty() && d.join("sub").is_dir());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn read_file_tells_damage_from_a_missing_file_and_renames_nothing() {
        let d = tmp_dir("read");
        let p = Snapshotter::new(&d).save(&snap(3)).unwrap();
        assert_eq!(Snapshotter::read_file(&p).unwrap(), Some(snap(3)));
        let mut bytes = fs::read(&p).unwrap();
        bytes[10] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert_eq!(Snapshotter::read_file(&p).unwrap(), None);
        assert!(p.exists(), "a damaged file stays where it is");
        match Snapshotter::read_file(&d.join("gone.snap")) {
            Err(crate::Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn encoding_round_trips_and_detects_damage() {
        let s = Snapshot {
            term: 3,
            index: 42,
            voters: vec![1, 2, 3],
            learners: vec![9],
            data: b"{\"state\":true}".to_vec(),
        };
        let mut bytes = encode(&s);
        assert_eq!(decode(bytes.clone()), Some(s));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode(bytes), None);
    }

    #[test]
    fn newest_valid_snapshot_wins_and_damage_falls_back() {
        let d = std::env::temp_dir().join(format!("oxcd-snap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let sn = Snapshotter::new(&d);
        assert!(sn.load_newest().is_none());
        let s1 = Snapshot {
            term: 1,
            index: 10,
            voters: vec![1, 2],
            learners: vec![],
            data: b"one".to_vec(),
        };
        let s2 = Snapshot {
            term: 2,
            index: 20,
            voters: vec![1],
            learners: vec![3],
            data: b"two".to_vec(),
        };
        sn.save(&s1).unwrap();
        let p2 = sn.save(&s2).unwrap();
        assert_eq!(sn.load_newest(), Some(s2.clone()));
        // Truncated newest: fall back to the older one, the broken file is set aside.
        let bytes = fs::read(&p2).unwrap();
        fs::write(&p2, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(sn.load_newest(), Some(s1.clone()));
        assert!(p2.with_extension("snap.broken").exists());
        // Empty file: same.
        let p3 = sn
            .save(&Snapshot {
                index: 30,
                ..s1.clone()
            })
            .unwrap();
        fs::write(&p3, b"").unwrap();
        assert_eq!(sn.load_newest(), Some(s1.clone()));
        for i in 40..45 {
            sn.save(&Snapshot {
                index: i,
                ..s1.clone()
            })
            .unwrap();
        }
        assert_eq!(sn.purge(3, 44), 3);
        assert_eq!(sn.load_newest().unwrap().index, 44);
        let _ = fs::remove_dir_all(&d);
    }
}
