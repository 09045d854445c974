//! Direct appends to the segment being written: `O_DIRECT`, and `O_DSYNC` for the writes
//! that must be durable.
//!
//! A buffered write followed by fdatasync copies the records into the page cache, then
//! has the kernel find the dirty pages, write them back and flush the disk's cache: three
//! steps and two system calls per synced batch. A direct write with `O_DSYNC` does it in
//! one call from our buffer (measured on this project's ext4/virtio machines: about a
//! fifth less CPU and 10% less time per synced write than write + fdatasync).
//!
//! Direct I/O moves whole aligned blocks from aligned memory, so this writer keeps the
//! segment's last partial block in memory and writes it again, with the new records after
//! it and zeros up to the next block boundary, every time. Rewriting those bytes is safe:
//! they are the same bytes, so a torn write leaves each sector either as it was or as it
//! should be — records already acknowledged never change.
//!
//! Invariants:
//! - `window()` holds the file's bytes from `base` (block-aligned) to the end of the
//!   records; `base` is at or below the end of the last synced write, so a synced write
//!   always covers every byte written since the previous one. A disk with FUA writes only
//!   what a synced write names to stable storage, without flushing earlier unsynced ones.
//! - A write never ends inside a block: zeros pad it, which the reader takes as the end.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The alignment of file offsets, lengths and memory for direct I/O (the largest logical
/// block size in common use).
pub(crate) const BLOCK: u64 = 4096;
const ALIGN: usize = BLOCK as usize;

pub(crate) struct DirectWriter {
    /// Writes that must be durable when they return.
    synced: File,
    /// Writes that may wait in the disk's cache (a commit index only).
    unsynced: File,
    /// Backing memory; the aligned window starts at `start`.
    mem: Vec<u8>,
    start: usize,
    /// Bytes of the file held in the window, from `base`.
    len: usize,
    /// File offset of the window's first byte; a multiple of [`BLOCK`].
    base: u64,
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

impl DirectWriter {
    /// Opens `path` for direct writes appending at `size`, whose last partial block is read
    /// back from the file. Fails (`InvalidInput` on tmpfs and other file systems without
    /// direct I/O) when the caller should write through the page cache instead.
    pub(crate) fn open(path: &Path, size: u64) -> io::Result<DirectWriter> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT | flags)
                .open(path)
        };
        let synced = open(libc::O_DSYNC)?;
        let unsynced = open(0)?;
        let base = size / BLOCK * BLOCK;
        let mut w = DirectWriter {
            synced,
            unsynced,
            mem: Vec::new(),
            start: 0,
            len: 0,
            base,
        };
        let tail = (size - base) as usize;
        w.reserve(BLOCK as usize);
        if tail > 0 {
            // Read through a buffered handle: a direct read would need the same alignment
            // games, and this happens once per open.
            let mut bytes = vec![0u8; tail];
            File::open(path)?.read_exact_at(&mut bytes, base)?;
            w.mem[w.start..w.start + tail].copy_from_slice(&bytes);
            w.len = tail;
        }
        Ok(w)
    }

    /// A writer whose writes all fail (descriptors opened read-only), for the fallback test.
    #[cfg(test)]
    pub(crate) fn failing(path: &Path, size: u64) -> io::Result<DirectWriter> {
        let mut w = DirectWriter::open(path, size)?;
        w.synced = File::open(path)?;
        w.unsynced = File::open(path)?;
        Ok(w)
    }

    /// Makes the window at least `cap` bytes long (rounded up to whole blocks).
    fn reserve(&mut self, cap: usize) {
        let cap = round_up(cap as u64) as usize;
        if self.mem.len() >= self.start + cap {
            return;
        }
        let mut mem = vec![0u8; cap + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        mem[start..start + self.len].copy_from_slice(&self.mem[self.start..self.start + self.len]);
        self.mem = mem;
        self.start = start;
    }

    /// Appends `records` (which start at the file offset `base + len`), padding the write
    /// with zeros up to `zeros_to` when that lies further (already block-aligned), and syncs
    /// it when `sync`. On an error nothing is assumed written: the caller may retry the same
    /// records another way.
    pub(crate) fn append(&mut self, records: &[u8], sync: bool, zeros_to: u64) -> io::Result<()> {
        let end = self.base + (self.len + records.len()) as u64;
        let write_end = round_up(end).max(zeros_to);
        let write_len = (write_end - self.base) as usize;
        self.reserve(write_len);
        let window = &mut self.mem[self.start..self.start + write_len];
        window[self.len..self.len + records.len()].copy_from_slice(records);
        window[self.len + records.len()..].fill(0);
        let file = if sync { &self.synced } else { &self.unsynced };
        file.write_all_at(window, self.base)?;
        self.len += records.len();
        if sync {
            // Everything up to the last whole block is durable: keep only the partial one.
            let keep_from = (end - self.base) / BLOCK * BLOCK;
            let keep_from = keep_from as usize;
            self.mem
                .copy_within(self.start + keep_from..self.start + self.len, self.start);
            self.len -= keep_from;
            self.base += keep_from as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("oxcd-direct-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn appends_read_back_byte_for_byte_with_zeros_after() {
        let d = dir("appends");
        let path = d.join("seg");
        std::fs::write(&path, b"head").unwrap();
        let Ok(mut w) = DirectWriter::open(&path, 4) else {
            eprintln!("no direct I/O on {}: skipped", d.display());
            return;
        };
        let mut expect = b"head".to_vec();
        for i in 0..300u32 {
            let rec: Vec<u8> = (0..(i * 37 % 5000) + 1)
                .map(|b| (b % 251 + 1) as u8)
                .collect();
            let sync = i % 3 != 0;
            let zeros_to = if i == 7 {
                round_up(expect.len() as u64) + 3 * BLOCK
            } else {
                0
            };
            w.append(&rec, sync, zeros_to).unwrap();
            expect.extend_from_slice(&rec);
            assert!(w.base <= expect.len() as u64 && w.base % BLOCK == 0);
        }
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..expect.len()], &expect[..]);
        assert!(got[expect.len()..].iter().all(|&b| b == 0));
        assert_eq!(got.len() as u64 % BLOCK, 0);
        // Reopened in the middle of a block: appends continue after the same bytes.
        let mut w = DirectWriter::open(&path, expect.len() as u64).unwrap();
        w.append(b"tail", true, 0).unwrap();
        expect.extend_from_slice(b"tail");
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..expect.len()], &expect[..]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
