use super::*;

use oxcd_wal::{Entry, HardState, Snapshot, Wal};

/// Small segments: the test WAL spans many files.
const SEG: u64 = 1024;

struct Dirs {
    base: PathBuf,
    data: PathBuf,
    backup: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn dirs(tag: &str) -> Dirs {
    let base = std::env::temp_dir().join(format!("oxcdctl-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    Dirs {
        data: base.join("data"),
        backup: base.join("backup"),
        base,
    }
}

fn opts(d: &Dirs) -> BackupOptions {
    BackupOptions {
        settle: Duration::from_millis(50),
        ..BackupOptions::new(&d.data, None, &d.backup, None)
    }
}

fn metadata() -> Vec<u8> {
    let mut m = 0x1234_u64.to_be_bytes().to_vec();
    m.extend_from_slice(&0xabcd_u64.to_be_bytes());
    m
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

fn snapshot(index: u64) -> Snapshot {
    Snapshot {
        term: 1,
        index,
        voters: vec![0x1234],
        learners: vec![],
        data: format!("state at {index}").into_bytes(),
    }
}

/// A member's directory as the server leaves it: 120 entries over many segments, snapshots
/// (file, then WAL marker) at 40 and 80, the last segment preallocated.
fn member(d: &Dirs) {
    member_with(d, true)
}

/// [`member`], the marker of the snapshot at 80 written only with `marker80` (its file is:
/// the member is between the two).
fn member_with(d: &Dirs, marker80: bool) {
    let member = d.data.join("member");
    let snaps = Snapshotter::new(&member.join("snap"));
    let mut w = Wal::create(&member.join("wal"), &metadata(), SEG).unwrap();
    for i in 1..=120 {
        w.save(Some(&hs(i)), &[entry(i)]).unwrap();
        if i == 40 || i == 80 {
            snaps.save(&snapshot(i)).unwrap();
            if i == 40 || marker80 {
                w.save_snapshot(SnapshotMarker { index: i, term: 1 })
                    .unwrap();
            }
        }
    }
}

fn wal_dir(d: &Dirs) -> PathBuf {
    d.data.join("member/wal")
}

fn snap_file(d: &Dirs, index: u64) -> PathBuf {
    d.data
        .join("member/snap")
        .join(format!("{:016x}-{index:016x}.snap", 1))
}

/// Every file under `dir` with its bytes, by path.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for ent in fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let b = fs::read(&p).unwrap();
                out.push((p, b));
            }
        }
    }
    out.sort();
    out
}

/// Offsets and types of the records of a WAL file, up to the zeros after them.
fn records(bytes: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 9 <= bytes.len() && bytes[off + 4] != 0 {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        out.push((off, bytes[off + 4]));
        off += 9 + len;
    }
    out
}

fn run_logged(o: &BackupOptions) -> (Result<Summary, BackupError>, Vec<String>) {
    let mut lines = Vec::new();
    let r = run(o, &mut |m: &str| lines.push(m.to_string()));
    (r, lines)
}

#[test]
fn copies_the_newest_snapshot_and_every_segment_after_it() {
    let d = dirs("copy");
    member(&d);
    let before = tree(&d.data);
    let src = oxcd_wal::segments(&wal_dir(&d)).unwrap();
    let from = oxcd_wal::start_segment(&src, 80);
    assert!(
        src.len() - from >= 4,
        "{} segments after the snapshot",
        src.len() - from
    );

    let (r, log) = run_logged(&opts(&d));
    let s = r.unwrap();
    assert!(log.is_empty(), "{log:?}");
    assert_eq!(tree(&d.data), before, "the source is untouched");
    assert_eq!(s.snapshot, Some((80, 1)));
    assert_eq!((s.entries, s.last_index), (40, 120));
    assert_eq!(s.wal_files, src.len() - from);
    assert_eq!(s.ids, Some((0x1234, 0xabcd)));

    // The snapshot file byte for byte, and the segments from the snapshot's on, each the
    // source's records (the last one without its preallocated zeros).
    let copy = tree(&d.backup);
    let snap = d
        .backup
        .join("member/snap")
        .join(snap_file(&d, 80).file_name().unwrap());
    assert!(copy.contains(&(snap.clone(), fs::read(snap_file(&d, 80)).unwrap())));
    assert_eq!(
        copy.len(),
        1 + s.wal_files,
        "the snapshot and the segments, nothing else"
    );
    let copied = oxcd_wal::segments(&d.backup.join("member/wal")).unwrap();
    assert_eq!(copied.len(), s.wal_files);
    let mut bytes = fs::metadata(&snap).unwrap().len();
    for (c, o) in copied.iter().zip(&src[from..]) {
        assert_eq!(c.path.file_name(), o.path.file_name());
        let (cb, ob) = (fs::read(&c.path).unwrap(), fs::read(&o.path).unwrap());
        assert_eq!(cb, ob[..cb.len()]);
        assert!(ob[cb.len()..].iter().all(|&b| b == 0));
        bytes += cb.len() as u64;
    }
    assert_eq!(s.bytes, bytes);
    assert!(!d.backup.join("member/wal.tmp").exists());

    // What the server reads back from it.
    let back = Snapshotter::new(&d.backup.join("member/snap"));
    assert_eq!(back.newest_first().len(), 1);
    let (_, c) = Wal::open(
        &d.backup.join("member/wal"),
        SnapshotMarker { index: 80, term: 1 },
        SEG,
    )
    .unwrap();
    assert_eq!(c.metadata, metadata());
    assert_eq!(c.hard_state, hs(120));
    let idx: Vec<u64> = c.entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, (81..=120).collect::<Vec<_>>());
    assert!(c.repaired.is_none());
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let d = dirs("snapfall");
    member(&d);
    let newest = snap_file(&d, 80);
    let mut b = fs::read(&newest).unwrap();
    let n = b.len();
    b[n - 2] ^= 0x20;
    fs::write(&newest, &b).unwrap();

    let (r, log) = run_logged(&opts(&d));
    let s = r.unwrap();
    assert_eq!(s.snapshot, Some((40, 1)));
    assert_eq!((s.entries, s.last_index), (80, 120));
    assert!(
        log.iter()
            .any(|l| l.contains(&newest.display().to_string()) && l.contains("damaged")),
        "{log:?}"
    );
    assert_eq!(fs::read(&newest).unwrap(), b, "left as it was, not renamed");
    let names: Vec<_> = fs::read_dir(d.backup.join("member/snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![snap_file(&d, 40).file_name().unwrap().to_owned()]
    );
    let (_, c) = Wal::open(
        &d.backup.join("member/wal"),
        SnapshotMarker { index: 40, term: 1 },
        SEG,
    )
    .unwrap();
    assert_eq!(c.entries.len(), 80);
}

#[test]
fn a_damaged_record_in_the_middle_is_an_error_naming_file_and_offset() {
    let d = dirs("midcorrupt");
    member(&d);
    let src = oxcd_wal::segments(&wal_dir(&d)).unwrap();
    let victim = &src[src.len() - 2].path;
    let good = fs::read(victim).unwrap();
    let recs = records(&good);
    let (at, _) = recs[recs.len() / 2];
    let mut b = good.clone();
    b[at + 12] ^= 0x01; // inside the payload: a CRC mismatch
    fs::write(victim, &b).unwrap();

    let (r, _) = run_logged(&opts(&d));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&victim.display().to_string()) && msg.contains(&format!("offset {at}")),
        "{msg}"
    );
    assert!(!d.backup.exists(), "a failed backup leaves nothing behind");
    assert_eq!(fs::read(victim).unwrap(), b, "nothing repaired");
}

#[test]
fn damage_that_stays_in_the_last_file_is_an_error_but_a_write_in_progress_is_not() {
    let d = dirs("lastcorrupt");
    member(&d);
    let src = oxcd_wal::segments(&wal_dir(&d)).unwrap();
    let last = src.last().unwrap().clone();
    let full = fs::read(&last.path).unwrap();
    let recs = records(&full);
    assert!(recs.len() >= 6, "{} records in the last file", recs.len());
    // Zeros where a record was, later records intact: what a read racing the writer can
    // see (a page of the write not there yet), and what corruption looks like too.
    let (at, _) = recs[3];
    let end = recs[4].0;
    let mut seen = full.clone();
    seen[at..end].fill(0);

    // The file on disk is whole: the write was in progress when `seen` was read.
    // Checked alone, from the entries it starts with.
    let mut v = WalVerifier::new(SnapshotMarker {
        index: last.first_index - 1,
        term: 1,
    });
    let mut log = Vec::new();
    let settle = Duration::from_secs(5);
    let len = check_last(&mut v, &last, &seen, settle, &mut |m: &str| {
        log.push(m.to_string())
    });
    assert_eq!(
        len.map_err(|_| ()),
        Ok(at as u64),
        "cut before the record in progress"
    );
    assert!(log[0].contains("incomplete"), "{log:?}");

    // The damage is on disk: it stays, and is corruption.
    fs::write(&last.path, &seen).unwrap();
    let (r, _) = run_logged(&opts(&d));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&last.path.display().to_string()) && msg.contains(&format!("offset {at}")),
        "{msg}"
    );
    assert_eq!(fs::read(&last.path).unwrap(), seen, "nothing repaired");
    assert!(!d.backup.exists());
}

#[test]
fn a_torn_final_record_is_dropped() {
    let d = dirs("torn");
    member(&d);
    let last = oxcd_wal::segments(&wal_dir(&d)).unwrap().pop().unwrap();
    let full = fs::read(&last.path).unwrap();
    let (at, typ) = *records(&full)
        .iter()
        .rev()
        .find(|r| r.1 == 2)
        .expect("an entry in the last file");
    assert_eq!(typ, 2);
    // The crash left half of the entry 120's record: the file ends inside it.
    fs::write(&last.path, &full[..at + 20]).unwrap();
    let before = tree(&d.data);

    let (r, log) = run_logged(&opts(&d));
    let s = r.unwrap();
    assert_eq!(s.last_index, 119);
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("offset {at}")) && l.contains("incomplete")),
        "{log:?}"
    );
    assert_eq!(tree(&d.data), before, "the torn tail stays in the source");
    let copy = d
        .backup
        .join("member/wal")
        .join(last.path.file_name().unwrap());
    assert_eq!(fs::read(&copy).unwrap(), full[..at]);
    let (_, c) = Wal::open(
        &d.backup.join("member/wal"),
        SnapshotMarker { index: 80, term: 1 },
        SEG,
    )
    .unwrap();
    assert!(
        c.repaired.is_none(),
        "the copy has no torn tail: {:?}",
        c.repaired
    );
    assert_eq!(c.entries.last().unwrap().index, 119);
}

#[test]
fn a_non_empty_backup_directory_is_refused() {
    let d = dirs("nonempty");
    member(&d);
    fs::create_dir_all(&d.backup).unwrap();
    fs::write(d.backup.join("keep.txt"), b"mine").unwrap();
    let (r, _) = run_logged(&opts(&d));
    let e = r.unwrap_err();
    assert!(
        matches!(e, BackupError::NotEmpty(ref p) if *p == d.backup),
        "{e}"
    );
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(
        tree(&d.backup),
        vec![(d.backup.join("keep.txt"), b"mine".to_vec())]
    );

    // A separate backup WAL directory that is not empty: the same, and nothing written.
    let other = d.base.join("backup2");
    let wal = d.base.join("wal2");
    fs::create_dir_all(&wal).unwrap();
    fs::write(wal.join("x.wal"), b"old").unwrap();
    let o = BackupOptions::new(&d.data, None, &other, Some(&wal));
    let (r, _) = run_logged(&o);
    assert!(matches!(r, Err(BackupError::NotEmpty(ref p)) if *p == wal));
    assert!(!other.exists());

    // An empty one is fine, and the WAL goes there.
    fs::remove_file(wal.join("x.wal")).unwrap();
    let (r, _) = run_logged(&o);
    assert_eq!(r.unwrap().last_index, 120);
    assert!(!oxcd_wal::segments(&wal).unwrap().is_empty());
    assert!(!other.join("member/wal").exists());
    assert_eq!(fs::read_dir(other.join("member/snap")).unwrap().count(), 1);
}

#[test]
fn a_directory_without_a_wal_is_an_error() {
    let d = dirs("nowal");
    fs::create_dir_all(&d.data).unwrap();
    let (r, _) = run_logged(&opts(&d));
    assert!(matches!(r, Err(BackupError::NoWal(_))), "{r:?}");
    assert!(!d.backup.exists());
}

#[test]
fn files_purged_during_the_copy_start_it_again_from_a_fresh_listing() {
    // The snapshot at 80 is on disk but its WAL marker is not yet: the copy falls back to
    // the snapshot at 40. As it starts reading the WAL from there, the member writes the
    // marker for 80 and purges the files before it.
    let d = dirs("purged");
    member_with(&d, false);
    let src = oxcd_wal::segments(&wal_dir(&d)).unwrap();
    let start40 = src[oxcd_wal::start_segment(&src, 40)].path.clone();
    let wal = wal_dir(&d);
    let mut purged = 0;
    BEFORE_READ.with(|h| {
        *h.borrow_mut() = Some(Box::new(move |path: &Path| {
            if path == start40 && purged == 0 {
                let (mut w, _) =
                    Wal::open(&wal, SnapshotMarker { index: 40, term: 1 }, SEG).unwrap();
                w.save_snapshot(SnapshotMarker { index: 80, term: 1 })
                    .unwrap();
                purged = w.purge(80, 1).unwrap();
                assert!(purged > 0 && !path.exists());
                fs::remove_file(snap_file_at(&wal, 40)).unwrap();
            }
        }))
    });
    let (r, log) = run_logged(&opts(&d));
    BEFORE_READ.with(|h| h.borrow_mut().take());
    let s = r.unwrap();
    assert!(
        log.iter().any(|l| l.contains("no marker for snapshot")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("was removed") && l.contains("starting again")),
        "{log:?}"
    );
    assert_eq!(s.snapshot, Some((80, 1)), "{log:?}");
    assert_eq!(s.last_index, 120);
    let (_, c) = Wal::open(
        &d.backup.join("member/wal"),
        SnapshotMarker { index: 80, term: 1 },
        SEG,
    )
    .unwrap();
    assert_eq!(c.entries.len(), 40);
}

/// The snapshot file at `index` of the member whose WAL directory is `wal`.
fn snap_file_at(wal: &Path, index: u64) -> PathBuf {
    wal.with_file_name("snap")
        .join(format!("{:016x}-{index:016x}.snap", 1))
}
