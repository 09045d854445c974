//! Property tests: WAL and snapshot files with random damage.
//!
//! Random saves are written across several small segments, one file is damaged (a bit
//! flip, a truncation, a zeroed range, garbage over or after the records) and the WAL
//! opened. It must never panic, and it must either return every acknowledged entry in
//! order, or an error naming a file and an offset (at or before the damage in the damaged
//! file), or — only where the damage may be a torn final write — the entries before the
//! damage. Snapshot files with random damage must never decode, nor panic the reader.
//!
//! Cases: 64 for the WAL and 256 for snapshots by default (a few seconds); set
//! `PROPTEST_CASES` for a longer run, e.g.
//! `PROPTEST_CASES=20000 cargo test --release -p oxcd-wal proptests`.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::record::{Entry, HardState, SnapshotMarker};
use crate::snap::{self, Snapshot, Snapshotter};
use crate::torn::{header_at, HEADER};
use crate::wal::Wal;
use crate::Error;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Where one save's records went.
struct SaveAt {
    seq: u64,
    start: usize,
    end: usize,
    entries: usize,
}

#[derive(Debug, Clone)]
enum Damage {
    /// Flip `bit` of the byte at `at` (a fraction of the records' extent, in thousandths,
    /// up to a little past it).
    Flip { at: u32, bit: u8 },
    /// Cut the file to `at`.
    Truncate { at: u32 },
    /// Zero `len` bytes from `at`.
    Zero { at: u32, len: u16 },
    /// Overwrite from `at` with `bytes`.
    Garbage { at: u32, bytes: Vec<u8> },
    /// Append `bytes` at the end of the file.
    Append { bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0u32..1100, 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        1 => (0u32..1000).prop_map(|at| Damage::Truncate { at }),
        2 => (0u32..1100, 1u16..1500).prop_map(|(at, len)| Damage::Zero { at, len }),
        1 => (0u32..1100, proptest::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(at, bytes)| Damage::Garbage { at, bytes }),
        1 => proptest::collection::vec(any::<u8>(), 1..600)
            .prop_map(|bytes| Damage::Append { bytes }),
    ]
}

/// The saves: each a batch of entries (data sizes), all with a hard state.
fn saves() -> impl Strategy<Value = Vec<Vec<usize>>> {
    proptest::collection::vec(proptest::collection::vec(0usize..400, 1..4), 3..30)
}

fn dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("oxcd-prop-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// Writes the saves; returns the entries and where each save went.
fn write(d: &Path, saves: &[Vec<usize>], seg: u64, seed: u8) -> (Vec<Entry>, Vec<SaveAt>) {
    let mut w = Wal::create(d, b"member+cluster", seg).unwrap();
    let (mut entries, mut at) = (Vec::new(), Vec::new());
    let mut index = 0u64;
    for sizes in saves {
        let batch: Vec<Entry> = sizes
            .iter()
            .map(|&n| {
                index += 1;
                Entry {
                    term: 1,
                    index,
                    entry_type: 0,
                    // Mostly non-zero bytes, with runs of zeros as binary values have.
                    data: (0..n)
                        .map(|i| {
                            let x = (i as u64 * 31 + index * 7 + seed as u64) % 97;
                            if x < 20 {
                                0
                            } else {
                                x as u8
                            }
                        })
                        .collect(),
                    context: Vec::new(),
                }
            })
            .collect();
        let (seq, start) = w.test_position();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: index,
        };
        w.save(Some(&hs), &batch).unwrap();
        let (seq_after, size_after) = w.test_position();
        let end = if seq_after == seq {
            size_after
        } else {
            // Cut after the save: the finished file holds exactly its records.
            fs::metadata(&crate::wal::test_files(d)[seq as usize])
                .unwrap()
                .len() as usize
        };
        at.push(SaveAt {
            seq,
            start,
            end,
            entries: batch.len(),
        });
        entries.extend(batch);
    }
    (entries, at)
}

/// Record offsets in `bytes` from 0 up to `until`.
fn records_before(bytes: &[u8], until: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < until {
        let Some((len, _, _)) = header_at(bytes, off) else {
            break;
        };
        out.push(off);
        off += HEADER + len;
    }
    out
}

fn apply(bytes: &[u8], extent: usize, d: &Damage) -> Vec<u8> {
    let pos = |at: u32| (extent as u64 * at as u64 / 1000) as usize;
    let mut b = bytes.to_vec();
    match d {
        Damage::Flip { at, bit } => {
            if let Some(x) = b.get_mut(pos(*at)) {
                *x ^= 1 << bit;
            }
        }
        Damage::Truncate { at } => b.truncate(pos(*at)),
        Damage::Zero { at, len } => {
            let from = pos(*at).min(b.len());
            let to = (from + *len as usize).min(b.len());
            b[from..to].fill(0);
        }
        Damage::Garbage { at, bytes } => {
            let from = pos(*at).min(b.len());
            let to = (from + bytes.len()).min(b.len());
            b[from..to].copy_from_slice(&bytes[..to - from]);
        }
        Damage::Append { bytes } => b.extend_from_slice(bytes),
    }
    b
}

/// First and last offsets where `a` and `b` differ (a length change counts from the
/// shorter length on).
fn changed(a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
    let common = a.len().min(b.len());
    let first = (0..common)
        .find(|&i| a[i] != b[i])
        .or((a.len() != b.len()).then_some(common))?;
    let last = if a.len() != b.len() {
        a.len().max(b.len()) - 1
    } else {
        (0..common).rev().find(|&i| a[i] != b[i])?
    };
    Some((first, last))
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn damaged_wal_opens_whole_or_fails_naming_file_and_offset(
        saves in saves(),
        seg in prop_oneof![Just(1536u64), Just(4096u64), Just(8192u64)],
        seed in any::<u8>(),
        which in 0u8..4,
        damage in damage(),
    ) {
        let d = dir("wal");
        let (entries, at) = write(&d, &saves, seg, seed);
        let files = crate::wal::test_files(&d);
        let last = files.len() - 1;
        // Mostly the last file, where torn writes are possible.
        let f = if which == 0 { (last as u64 * seed as u64 / 255) as usize } else { last };
        let path = files[f].clone();
        let bytes = fs::read(&path).unwrap();
        let saves_here: Vec<&SaveAt> = at.iter().filter(|s| s.seq == f as u64).collect();
        // The records' extent: damage is aimed there (and a little past it).
        let extent = saves_here.last().map_or(64, |s| s.end).max(64);
        let damaged = apply(&bytes, extent, &damage);
        fs::write(&path, &damaged).unwrap();
        let change = changed(&bytes, &damaged);

        let result = Wal::open(&d, SnapshotMarker::default(), seg);
        match result {
            Err(Error::Corrupt { file, offset, reason }) => {
                prop_assert!(change.is_some(), "undamaged WAL refused: {reason}");
                let (d0, _) = change.unwrap();
                let named = files.iter().position(|p| p.display().to_string() == file);
                prop_assert!(named.is_some(), "error names no WAL file: {file}");
                if named == Some(f) {
                    prop_assert!(offset as usize <= d0, "offset {offset} after the damage at {d0}: {reason}");
                }
            }
            Err(e) => prop_assert!(false, "unexpected error: {e}"),
            Ok((mut w, c)) => {
                let n = c.entries.len();
                prop_assert!(n <= entries.len());
                prop_assert!(c.entries[..] == entries[..n], "not a prefix of what was written");
                // The fewest entries this damage may leave.
                let floor = match change {
                    None => entries.len(),
                    Some(_) if f != last => entries.len(),
                    Some(_) if matches!(damage, Damage::Truncate { .. }) => 0,
                    Some((d0, d1)) => {
                        let before: usize = at.iter().filter(|s| (s.seq as usize) < f).map(|s| s.entries).sum();
                        let here = saves_here.iter().filter(|s| s.end <= d0).map(|s| s.entries).sum::<usize>();
                        // A write is provably durable only where the next one's first
                        // record follows its last intact: damage reaching the record
                        // before the final save may pass for a torn final write.
                        let final_start = at.last().filter(|s| s.seq == f as u64).map(|s| s.start);
                        let boundary = final_start.and_then(|s| records_before(&bytes, s).last().copied());
                        match boundary {
                            Some(b) if d1 >= b => before + here,
                            _ => entries.len(),
                        }
                    }
                };
                prop_assert!(n >= floor, "{n} entries of {} back, at least {floor} expected (damage {damage:?} at {change:?} in file {f} of {last}; repaired {:?})", entries.len(), c.repaired);
                // The repaired log takes appends and reads back the same.
                let next = Entry { term: 1, index: n as u64 + 1, ..Entry::default() };
                w.save(None, std::slice::from_ref(&next)).unwrap();
                drop(w);
                let (_, again) = Wal::open(&d, SnapshotMarker::default(), seg).unwrap();
                prop_assert!(again.repaired.is_none());
                prop_assert_eq!(again.entries.len(), n + 1);
            }
        }
        let _ = fs::remove_dir_all(&d);
    }
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..5),
        proptest::collection::vec(any::<u64>(), 0..3),
        proptest::collection::vec(any::<u8>(), 0..2000),
    )
        .prop_map(|(term, index, voters, learners, data)| Snapshot {
            term,
            index,
            voters,
            learners,
            data,
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn damaged_snapshot_never_decodes(s in snapshot(), damage in damage()) {
        let bytes = snap::encode(&s);
        prop_assert_eq!(snap::decode(bytes.clone()), Some(s.clone()));
        let damaged = apply(&bytes, bytes.len(), &damage);
        let got = snap::decode(damaged.clone());
        if damaged == bytes {
            prop_assert_eq!(got, Some(s));
        } else {
            // CRC-32C catches every burst of up to 32 bits; longer damage slips through
            // with odds of 2^-32 a case.
            prop_assert!(got.is_none(), "damaged snapshot decoded: {damage:?}");
        }
    }
}

#[test]
fn damaged_snapshot_file_falls_back_to_the_older_one() {
    let d = dir("snapfile");
    let sn = Snapshotter::new(&d);
    let old = Snapshot {
        term: 1,
        index: 10,
        voters: vec![1],
        learners: vec![],
        data: b"old".to_vec(),
    };
    sn.save(&old).unwrap();
    let new = sn
        .save(&Snapshot {
            index: 20,
            data: vec![7; 3000],
            ..old.clone()
        })
        .unwrap();
    let bytes = fs::read(&new).unwrap();
    for at in (0..bytes.len()).step_by(97) {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        fs::write(&new, &b).unwrap();
        assert!(Snapshotter::load_file(&new).is_none(), "flip at {at}");
    }
    assert_eq!(sn.load_newest(), Some(old));
    let _ = fs::remove_dir_all(&d);
}
