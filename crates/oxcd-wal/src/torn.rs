//! Telling a torn final write from corruption, for the last segment file.
//!
//! What a crash can leave (the model etcd's decoder uses too): everything up to the end of
//! the last completed sync is on disk as written. After it, the bytes of the writes in
//! flight — the final synced batch and any commit-only writes before it — land sector by
//! sector: each 512-byte sector holds either its new bytes or its old ones, and the old
//! ones are zeros (the segment is preallocated and written with zeros ahead; a direct write
//! rewrites the last partial block with the same bytes). Where the file system did not
//! record a size change, the file may also end early, inside the final write.
//!
//! So a crash only ever *zeros whole sectors* or *cuts the file short*, and only after the
//! last sync. The first damaged record of the last file is cut off as a torn write only
//! when both hold:
//!
//! 1. **The damage looks torn.** Either the file ends inside the record (its header, or the
//!    payload its length announces), or a sector of the record is missing: from the
//!    record's start (or the sector's start, if later) to the end of that sector, all
//!    bytes are zero. A flipped bit, or any non-zero garbage, is neither.
//! 2. **Nothing durable follows it.** No intact write that was synced *before a later write
//!    began* lies after the damage: a crash cannot tear a write whose sync completed. The
//!    bytes after the damage are searched for a run of records that chain-verify (each
//!    record's CRC chained from the one before — the first record's stored CRC seeds the
//!    second's check, so the damaged record's own length is not trusted); in such a run, a
//!    record that ends a synced save (entries, a snapshot marker, a file head, or a
//!    hard-state change we cannot prove commit-only) followed by a record of the next save
//!    proves the damage lies in acknowledged data. So does any intact record after a
//!    damaged one whose type byte (a torn write only zeros bytes, so a non-zero type is the
//!    real one) shows it ends a synced save: a snapshot marker, or a hard state right
//!    after an entry.
//!
//! And a file's first three records (its head: crc, metadata, hard state) are synced before
//! the file is used: damage there is never a torn write.
//!
//! A length field with a flipped high bit fails (2): the length runs past the file or into
//! the preallocated zeros, but the records after the damaged one still chain-verify from
//! its stored CRC, and they show later synced saves. A zeroed range in the middle of the
//! log fails (2) the same way; a bit flip fails (1).
//!
//! Limits, inherent to the format (no record says where a write began): damage confined to
//! the last synced save, or reaching the boundary between it and the save before it, looks
//! like a torn final write and is cut off; so is a file cut short at a record boundary.
//! In the other direction, a torn write holding two commit-only hard states, whose first one
//! lost a sector while the rest reached the disk, is refused (a false alarm that needs
//! manual repair, never lost data).

use crate::record::{self, Entry, HardState};

/// Record header: len u32, type u8, crc u32.
pub(crate) const HEADER: usize = 9;
/// The unit a disk writes atomically (or not at all) in the torn-write model.
const SECTOR: usize = 512;

/// The header at `off`: payload length, type, stored crc; `None` if the file ends first.
pub(crate) fn header_at(data: &[u8], off: usize) -> Option<(usize, u8, u32)> {
    let h = data.get(off..off.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
    Some((len, h[4], crc))
}

/// Whether some sector that `[off, end)` touches reads as never written: zero from
/// `max(off, sector start)` to the sector's end (or the file's).
fn has_missing_sector(data: &[u8], off: usize, end: usize) -> bool {
    let mut start = off / SECTOR * SECTOR;
    while start < end && start < data.len() {
        let from = start.max(off);
        let to = (start + SECTOR).min(data.len());
        if data[from..to].iter().all(|&b| b == 0) {
            return true;
        }
        start += SECTOR;
    }
    false
}

/// A record found while searching after damage.
struct Found<'a> {
    off: usize,
    typ: u8,
    payload: &'a [u8],
    /// Its stored crc, which is the chain value after it.
    crc: u32,
}

/// The record at `off` if its header is plausible (a type that may follow other records,
/// a payload inside the file); its CRC is not checked here.
fn plausible_at(data: &[u8], off: usize) -> Option<Found<'_>> {
    let (len, typ, crc) = header_at(data, off)?;
    if !matches!(
        typ,
        record::METADATA | record::ENTRY | record::STATE | record::SNAPSHOT
    ) {
        return None;
    }
    let payload = data.get(off + HEADER..(off + HEADER).checked_add(len)?)?;
    Some(Found {
        off,
        typ,
        payload,
        crc,
    })
}

/// The records chained from an anchor at `off`: the anchor (header plausible, payload
/// unchecked) and every record after it whose CRC chains from the one before. `None`
/// unless at least one record verifies.
fn chain_at(data: &[u8], off: usize) -> Option<Vec<Found<'_>>> {
    let anchor = plausible_at(data, off)?;
    let mut chain = vec![anchor];
    loop {
        let prev = chain.last().expect("non-empty");
        let next_off = prev.off + HEADER + prev.payload.len();
        let Some(next) = plausible_at(data, next_off) else {
            break;
        };
        if crc32c::crc32c_append(prev.crc, next.payload) != next.crc {
            break;
        }
        chain.push(next);
    }
    (chain.len() >= 2).then_some(chain)
}

/// In a chain of records, the offset of one that ends a save whose sync completed before
/// the next save was written (see the module doc), if any.
fn durable_save_end(chain: &[Found<'_>]) -> Option<usize> {
    for i in 0..chain.len() - 1 {
        let (x, y) = (&chain[i], &chain[i + 1]);
        // Within one save: entries with consecutive indexes, then at most one hard state.
        let ends_save = match (x.typ, y.typ) {
            (record::ENTRY, record::STATE) => false,
            (record::ENTRY, record::ENTRY) => {
                match (Entry::decode(x.payload), Entry::decode(y.payload)) {
                    (Some(a), Some(b)) => b.index != a.index.wrapping_add(1),
                    // The anchor's payload is unchecked: it may be the torn part.
                    _ => i > 0,
                }
            }
            _ => true,
        };
        if !ends_save {
            continue;
        }
        // A hard state alone that keeps term and vote is written without a sync.
        let commit_only = x.typ == record::STATE
            && i > 0
            && chain[i - 1].typ == record::STATE
            && match (
                HardState::decode(chain[i - 1].payload),
                HardState::decode(x.payload),
            ) {
                (Some(a), Some(b)) => a.term == b.term && a.vote == b.vote,
                _ => false,
            };
        if !commit_only {
            return Some(x.off);
        }
    }
    None
}

/// The offset of an intact record, after `from`, that ends a save synced before a later
/// one began; `None` if the bytes after `from` hold no such thing. With
/// `from_ends_synced_save`, the record at `from` itself ends such a save, and any intact
/// record after it is a later one.
fn later_durable_write(data: &[u8], from: usize, from_ends_synced_save: bool) -> Option<usize> {
    let data_end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut p = from;
    while p < data_end {
        match chain_at(data, p) {
            Some(chain) => {
                if from_ends_synced_save {
                    return Some(from);
                }
                if let Some(at) = durable_save_end(&chain) {
                    return Some(at);
                }
                let last = chain.last().expect("non-empty");
                p = last.off + HEADER + last.payload.len();
            }
            None => p += 1,
        }
    }
    None
}

/// Judges the first damaged record of the last file, at `off`: `Ok` if it is provably the
/// torn final write (cut the file there), or why not. `good_records` counts the intact
/// records before it in the file, `prev_typ` is the type of the last of them.
pub(crate) fn judge(
    data: &[u8],
    off: usize,
    good_records: usize,
    prev_typ: Option<u8>,
) -> std::result::Result<(), String> {
    // A file's head (crc, metadata, hard state) is synced before the file is used.
    if good_records < 3 {
        return Err("damage in the file's head, which was synced when the file was made".into());
    }
    let mut ends_synced_save = false;
    if let Some((len, typ, _)) = header_at(data, off) {
        let end = off + HEADER + len;
        if end <= data.len() && !has_missing_sector(data, off, end) {
            return Err("no sector of the record is missing, so not a torn write".into());
        }
        // A torn write only zeros bytes: a type byte that is not zero is the real one. A
        // snapshot marker, or the hard state after entries, ends a synced save.
        ends_synced_save =
            typ == record::SNAPSHOT || (typ == record::STATE && prev_typ == Some(record::ENTRY));
    }
    if let Some(at) = later_durable_write(data, off, ends_synced_save) {
        return Err(format!(
            "not a torn write: intact records written after a completed sync follow \
             (a synced write ends at offset {at})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sector_needs_zeros_to_the_sector_end() {
        let mut d = vec![1u8; 2048];
        assert!(!has_missing_sector(&d, 100, 2048));
        d[600..1024].fill(0); // the tail of sector 1: missing only from 600 on
        assert!(!has_missing_sector(&d, 100, 500), "not touched");
        assert!(!has_missing_sector(&d, 100, 700), "512..600 were written");
        assert!(
            has_missing_sector(&d, 600, 610),
            "zero from the record to the end"
        );
        d[1024..1536].fill(0);
        assert!(has_missing_sector(&d, 100, 1100), "a whole sector");
        d[600..1023].fill(1);
        d[1024..1535].fill(1);
        assert!(!has_missing_sector(&d, 0, 2048), "one stray non-zero byte");
        let short = vec![0u8; 10];
        assert!(
            has_missing_sector(&short, 3, 100),
            "clipped at the file's end"
        );
    }
}
