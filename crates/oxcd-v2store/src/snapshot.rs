//! The snapshot encoding of the store: flat, so that neither its size nor the work to read
//! it depends on how deep the tree is.
//!
//! Format 2 (written since the memory-per-key work) is binary: the text line
//! `oxcd-v2store snapshot 2`, then
//!
//! ```text
//! index                 varint: the store index
//! record …              the root, then every node in pre-order
//! crc                   4 bytes, little-endian: CRC-32C of every byte before it
//! ```
//!
//! and a record is
//!
//! ```text
//! name                  varint length + UTF-8 bytes (empty for the root, no '/')
//! created               varint createdIndex
//! modified              varint (modifiedIndex - createdIndex), wrapping
//! flags                 1 byte: 1 = directory, 2 = has an expiry
//! [expire]              zigzag varint seconds since the Unix epoch (negative before it)
//!                       + varint nanoseconds (always forward, < 10^9)
//! payload               a key: varint length + UTF-8 value; a directory: varint number of
//!                       children, whose records follow it, each with its own subtree,
//!                       before the directory's next sibling
//! ```
//!
//! Varints are LEB128 (7 bits a byte, least significant first). A record is about its
//! name and value plus 6 bytes, against ~30 in format 1, and reading it does no parsing
//! beyond lengths: a reader streams `(path, node)` pairs by keeping the path of the open
//! directories.
//!
//! Format 3 is format 2 compressed: the text line `oxcd-v2store snapshot 3`, the length of
//! the format 2 bytes after their first line (varint), then those bytes as one LZ4 block
//! ([`compress`]; format 2's checksum, inside, covers the decompressed bytes). Keys and
//! values are mostly text, paths share prefixes and indexes grow by one, so files shrink
//! several times; LZ4 costs ~0.1 s per 100 MB to write and less to read, on the snapshot
//! thread, not where entries are applied.
//!
//! Format 4 is what a member writes ([`encode_compressed`]): the text line
//! `oxcd-v2store snapshot 4`, then blocks, each
//!
//! ```text
//! length                varint: the block's bytes decompressed (never 0)
//! crc                   4 bytes, little-endian: CRC-32C of those bytes
//! compressed            varint length + one LZ4 block
//! ```
//!
//! and a varint 0 after the last. The blocks decompressed, one after another, are format 2
//! between its first line and its checksum (each block has its own). A block holds about
//! 256 KiB, so the encoder never holds the whole of format 2, and each block is compressed
//! from the cache right after it is written: a third less work than format 3 and a tenth of
//! the memory.
//!
//! Within a directory, keys come before subdirectories (siblings' order is free), in the
//! order they lie in memory; a directory with many keys has them cut into runs, the keys in
//! one 64 KiB span of memory, each run one block. A [`RunCache`] keeps the last snapshot's
//! run blocks, and the next snapshot copies a run's block where none of its keys changed
//! (the argument is on [`RunCache`]): under a load that adds keys, a snapshot encodes what
//! was added since the last one, and walks the rest only to check it.
//!
//! Still read: format 3, format 1 (text, one JSON array a node: `[name, created, modified, expire,
//! payload]` with `expire` as `null` or `[seconds, nanoseconds]`, after a `{"index":N}`
//! line and before a `crc32c <8 hex digits>` line), and the oldest format — `{"index":…,
//! "root":{…}}`, the whole tree as one nested JSON value — within serde_json's nesting
//! limit (what it could always read).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::node::{Children, Node, SPAN, TRACKED_LEN};

/// The first line's text, before the version number.
const MAGIC: &str = "oxcd-v2store snapshot ";
/// Format 1's last line's text, before the checksum.
const TRAILER_V1: &str = "crc32c ";
/// Record flags (format 2).
const FLAG_DIR: u8 = 1;
const FLAG_EXPIRE: u8 = 2;

/// Encodes the store's index and tree (format 2) into a buffer of at least `capacity` bytes.
pub fn encode(index: u64, root: &Node, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity.max(4096));
    out.extend_from_slice(FORMAT_2_LINE.as_bytes());
    write_varint(&mut out, index);
    walk(root, &mut Plain(&mut out));
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes the store's index and tree as format 4: format 2's body in LZ4 blocks of about
/// [`BLOCK`] bytes, each compressed as soon as it is written. The whole body is never held
/// (at 5 million keys it is 400 MB, against 30 MB compressed) and each block is compressed
/// while it is still in the cache. The blocks of key runs that are as `cache` saw them are
/// copied from it instead of encoded again; the result says what the next call may reuse.
pub fn encode_compressed(
    generation: u64,
    index: u64,
    root: &Node,
    cache: Option<&RunCache>,
    epoch: u64,
) -> Saved {
    let mut out = Vec::with_capacity(BLOCK);
    out.extend_from_slice(MAGIC.as_bytes());
    out.extend_from_slice(b"4\n");
    let cache = cache.filter(|c| c.generation == generation && c.index <= index);
    let mut enc = Blocks {
        out,
        scratch: Vec::new(),
        pending: Vec::with_capacity(BLOCK + BLOCK / 4),
        cache,
        runs: Vec::new(),
        spliced: Vec::new(),
        spliced_len: 0,
        reused_keys: 0,
        keys_read: 0,
    };
    write_varint(&mut enc.pending, index);
    walk(root, &mut enc);
    enc.flush();
    write_varint(&mut enc.out, 0);
    Saved {
        generation,
        index,
        epoch,
        data: enc.out,
        runs: enc.runs,
        spliced: enc.spliced,
        base: cache.map_or(0, |c| c.epoch),
        reused_keys: enc.reused_keys,
        keys_read: enc.keys_read,
    }
}

/// Format 4's block size: past LZ4's 64 KiB window, so blocks compress as one stream would.
const BLOCK: usize = 256 * 1024;

/// A run whose names and values exceed this is encoded as plain records, not kept.
const RUN_MAX_BYTES: usize = 4 << 20;

/// One format 4 block: its length and checksum, its compressed length, the LZ4 block.
fn write_block(out: &mut Vec<u8>, scratch: &mut Vec<u8>, block: &[u8]) {
    scratch.resize(lz4_flex::block::get_maximum_output_size(block.len()), 0);
    // The output is sized for the worst case: compression cannot run out of room.
    let len = lz4_flex::block::compress_into(block, scratch).unwrap_or(0);
    write_varint(out, block.len() as u64);
    out.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    write_varint(out, len as u64);
    out.extend_from_slice(&scratch[..len]);
}

fn addr(node: &Node) -> usize {
    std::ptr::from_ref::<Node>(node).addr()
}

/// Which run of keys: the directory (by address and creation) and the span of memory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct RunKey {
    dir: u64,
    dir_created: u64,
    span: u64,
}

/// Keys of a directory with at least [`TRACKED_LEN`] children that lie in one [`SPAN`] of
/// memory, in address order: one block, which a later snapshot can copy as it is if none of
/// its keys changed.
struct Run<'a> {
    key: RunKey,
    keys: &'a [&'a Node],
    /// The highest created or modified index among them.
    newest: u64,
    /// Their names and values, in bytes.
    text_bytes: usize,
}

impl<'a> Run<'a> {
    /// The run of `dir`'s `keys` (all in one span).
    fn new(dir: &Node, keys: &'a [&'a Node]) -> Run<'a> {
        Run {
            key: RunKey {
                dir: addr(dir) as u64,
                dir_created: dir.created_index,
                span: (addr(keys[0]) / SPAN) as u64,
            },
            keys,
            newest: keys
                .iter()
                .map(|n| n.created_index.max(n.modified_index))
                .max()
                .unwrap_or(0),
            text_bytes: keys.iter().map(|n| n.text_len()).sum(),
        }
    }
}

/// Where the walk puts the records.
trait Sink {
    fn record(&mut self, node: &Node);
    fn run(&mut self, run: Run<'_>);
    /// Writes a big directory's keys from the last snapshot's runs and the spans the store
    /// saw change, reading only the nodes in those; returns its subdirectories in address
    /// order, or `None`, having written nothing, when the directory must be walked.
    fn keys_from_cache<'a>(
        &mut self,
        _dir: &'a Node,
        _children: &'a Children,
    ) -> Option<Vec<&'a Node>> {
        None
    }
}

/// Format 2: every record, one after another.
struct Plain<'a>(&'a mut Vec<u8>);

impl Sink for Plain<'_> {
    fn record(&mut self, node: &Node) {
        write_record(self.0, node);
    }
    fn run(&mut self, run: Run<'_>) {
        for node in run.keys {
            write_record(self.0, node);
        }
    }
}

/// The tree in pre-order: a directory's record, its keys, then each subdirectory with its
/// subtree (the order of siblings is free; keys first lets them be grouped in runs). An
/// explicit stack of the open directories' remaining subdirectories: depth costs heap.
fn walk(root: &Node, sink: &mut dyn Sink) {
    sink.record(root);
    let mut stack = vec![keys_then_subdirectories(root, sink)];
    while let Some(subdirectories) = stack.last_mut() {
        let Some(dir) = subdirectories.next() else {
            stack.pop();
            continue;
        };
        sink.record(dir);
        stack.push(keys_then_subdirectories(dir, sink));
    }
}

/// Writes a directory's keys (in runs when it has many) and returns its subdirectories, all
/// in the order they lie in memory. One pass over the nodes, in address order: each is read
/// once, sequentially.
fn keys_then_subdirectories<'a>(
    dir: &'a Node,
    sink: &mut dyn Sink,
) -> std::vec::IntoIter<&'a Node> {
    let Some(children) = dir.children.as_ref().filter(|c| !c.is_empty()) else {
        return Vec::new().into_iter();
    };
    let in_runs = children.len() >= TRACKED_LEN;
    if in_runs {
        if let Some(subdirectories) = sink.keys_from_cache(dir, children) {
            return subdirectories.into_iter();
        }
    }
    let mut nodes = in_memory_order(children);
    let mut subdirectories = Vec::new();
    // The current run's keys are compacted to nodes[start..end].
    let (mut start, mut end) = (0, 0);
    for i in 0..nodes.len() {
        let node = nodes[i];
        if node.is_dir() {
            subdirectories.push(node);
            continue;
        }
        if !in_runs {
            sink.record(node);
            continue;
        }
        if end > start && addr(nodes[start]) / SPAN != addr(node) / SPAN {
            sink.run(Run::new(dir, &nodes[start..end]));
            start = end;
        }
        nodes[end] = node;
        end += 1;
    }
    if end > start {
        sink.run(Run::new(dir, &nodes[start..end]));
    }
    subdirectories.into_iter()
}

/// Format 4's blocks, with runs copied from a cache where they did not change.
struct Blocks<'c> {
    out: Vec<u8>,
    /// Records not yet compressed.
    pending: Vec<u8>,
    scratch: Vec<u8>,
    cache: Option<&'c RunCache>,
    runs: Vec<RunRecord>,
    /// Cached blocks that belong between the bytes of `out`, in order.
    spliced: Vec<Splice>,
    spliced_len: u64,
    reused_keys: u64,
    keys_read: u64,
}

/// A cached block that goes at offset `at` of the bytes written (before the byte there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Splice {
    at: u64,
    start: u64,
    end: u64,
}

impl Blocks<'_> {
    /// Compresses the pending records as one block.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        write_block(&mut self.out, &mut self.scratch, &self.pending);
        self.pending.clear();
    }

    /// Where the next byte goes in the assembled snapshot.
    fn position(&self) -> u64 {
        self.out.len() as u64 + self.spliced_len
    }

    /// Takes a run's block from the cache: recorded, not copied (the parent, which holds
    /// the same cache, splices it in: [`RunCache::remember`]).
    fn splice(&mut self, cached: &RunRecord) {
        self.flush();
        let start = self.position();
        self.spliced.push(Splice {
            at: self.out.len() as u64,
            start: cached.start,
            end: cached.end,
        });
        self.spliced_len += cached.end - cached.start;
        self.reused_keys += cached.count;
        self.runs.push(RunRecord {
            start,
            end: self.position(),
            ..*cached
        });
    }
}

impl Sink for Blocks<'_> {
    fn keys_from_cache<'a>(
        &mut self,
        dir: &'a Node,
        children: &'a Children,
    ) -> Option<Vec<&'a Node>> {
        let cache = self.cache?;
        let touched = children.touched()?;
        // Changes before tracking began are unknown.
        if touched.since > cache.epoch {
            return None;
        }
        let first = RunKey {
            dir: addr(dir) as u64,
            dir_created: dir.created_index,
            span: 0,
        };
        let last = RunKey {
            span: u64::MAX,
            ..first
        };
        let cached: Vec<&RunRecord> = cache.runs.range(first..=last).map(|(_, r)| r).collect();
        if cached.is_empty() {
            return None;
        }
        let span_of = |n: &Node| addr(n) / SPAN;
        // The changed spans as a bitmap over their range (a hash lookup per child would
        // cost more than the rest of this).
        let changed_spans: Vec<usize> = touched
            .spans
            .iter()
            .filter(|(_, &e)| e > cache.epoch)
            .map(|(&s, _)| s)
            .collect();
        let lo = changed_spans.iter().copied().min().unwrap_or(0);
        let hi = changed_spans.iter().copied().max().unwrap_or(0);
        if hi - lo > 1 << 24 {
            return None;
        }
        let mut bitmap = vec![false; hi - lo + 1];
        for s in changed_spans {
            bitmap[s - lo] = true;
        }
        let changed = |span: usize| span >= lo && span <= hi && bitmap[span - lo];
        // The children in changed spans, found by address alone (no node is read).
        let mut fresh: Vec<&Node> = children.iter().filter(|n| changed(span_of(n))).collect();
        fresh.sort_unstable_by_key(|n| addr(n));
        let clean: Vec<&RunRecord> = cached
            .into_iter()
            .filter(|r| !changed(r.key.span as usize))
            .collect();
        // Subdirectories in unchanged spans are where they were (read to check). Every child
        // must then be in a clean run, a changed span or among those subdirectories; if the
        // count says otherwise, the directory is walked.
        let mut subdirectories = Vec::new();
        for (&at, name) in &touched.dirs {
            if changed(at / SPAN) {
                continue;
            }
            let dir = children.get(name).filter(|n| addr(n) == at && n.is_dir())?;
            subdirectories.push(dir);
        }
        let clean_keys: u64 = clean.iter().map(|r| r.count).sum();
        if clean_keys + (fresh.len() + subdirectories.len()) as u64 != children.len() as u64 {
            return None;
        }
        fresh.retain(|n| {
            if n.is_dir() {
                subdirectories.push(*n);
            }
            !n.is_dir()
        });
        // Runs in span order, as the walk writes them: clean ones copied, changed ones
        // encoded (or copied after all, if nothing in them really changed).
        subdirectories.sort_unstable_by_key(|n| addr(n));
        let mut clean = clean.into_iter().peekable();
        let mut rest: &[&Node] = &fresh;
        loop {
            let fresh_span = rest.first().map(|n| span_of(n));
            match (clean.peek(), fresh_span) {
                (Some(r), f) if f.is_none_or(|f| (r.key.span as usize) < f) => {
                    self.splice(r);
                    clean.next();
                }
                (_, Some(span)) => {
                    let len = rest.iter().take_while(|n| span_of(n) == span).count();
                    let (run, tail) = rest.split_at(len);
                    rest = tail;
                    self.run(Run::new(dir, run));
                }
                // (The first arm takes every clean run once nothing fresh is left.)
                (_, None) => break,
            }
        }
        Some(subdirectories)
    }

    fn record(&mut self, node: &Node) {
        write_record(&mut self.pending, node);
        if self.pending.len() >= BLOCK {
            self.flush();
        }
    }

    fn run(&mut self, run: Run<'_>) {
        self.keys_read += run.keys.len() as u64;
        if run.text_bytes > RUN_MAX_BYTES {
            for node in run.keys {
                self.record(node);
            }
            return;
        }
        if let Some(cached) = self.cache.and_then(|c| c.reusable(&run)) {
            self.splice(cached);
            return;
        }
        self.flush();
        let start = self.position();
        for node in run.keys {
            write_record(&mut self.pending, node);
        }
        write_block(&mut self.out, &mut self.scratch, &self.pending);
        self.pending.clear();
        self.runs.push(RunRecord {
            key: run.key,
            count: run.keys.len() as u64,
            start,
            end: self.position(),
        });
    }
}

/// A run as a snapshot encoded it: how many keys, and where its block lies in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunRecord {
    key: RunKey,
    count: u64,
    start: u64,
    end: u64,
}

/// A format 4 snapshot as encoded against a [`RunCache`] — its own bytes, with the cached
/// blocks it reuses named rather than copied — and what its runs encoded to, for the next
/// snapshot. [`RunCache::remember`] assembles the bytes.
#[derive(Debug)]
pub struct Saved {
    generation: u64,
    index: u64,
    /// The snapshot epoch it was taken at the end of ([`crate::begin_snapshot`]).
    epoch: u64,
    /// The epoch of the cache it reuses blocks of (0: none).
    base: u64,
    /// The bytes written; complete when nothing is spliced.
    pub(crate) data: Vec<u8>,
    spliced: Vec<Splice>,
    runs: Vec<RunRecord>,
    /// Keys whose block was copied from the previous snapshot rather than encoded.
    pub reused_keys: u64,
    /// Keys of big directories (in runs) whose nodes were read: every one unless the store
    /// said which spans changed.
    pub keys_read: u64,
}

/// Words after the data in [`Saved::into_bytes`]: per run, per splice, then the trailer.
const RUN_WORDS: usize = 6;
const SPLICE_WORDS: usize = 3;
const TRAILER_WORDS: usize = 9;

impl Saved {
    /// The store index the snapshot holds.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The snapshot and its runs as one buffer (to cross a pipe): the data, each run's
    /// fields, each splice's, then generation, index, epoch, base, reused keys, keys read,
    /// number of runs, number of splices and data length, all as little-endian u64s.
    pub fn into_bytes(self) -> Vec<u8> {
        let Saved {
            generation,
            index,
            epoch,
            base,
            mut data,
            spliced,
            runs,
            reused_keys,
            keys_read,
        } = self;
        let len = data.len() as u64;
        let mut put = |w: u64| data.extend_from_slice(&w.to_le_bytes());
        for r in &runs {
            for w in [
                r.key.dir,
                r.key.dir_created,
                r.key.span,
                r.count,
                r.start,
                r.end,
            ] {
                put(w);
            }
        }
        for sp in &spliced {
            for w in [sp.at, sp.start, sp.end] {
                put(w);
            }
        }
        for w in [
            generation,
            index,
            epoch,
            base,
            reused_keys,
            keys_read,
            runs.len() as u64,
            spliced.len() as u64,
            len,
        ] {
            put(w);
        }
        data
    }

    /// Reads what [`Saved::into_bytes`] wrote.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<Saved, String> {
        let bad = || "malformed snapshot and runs".to_string();
        let word = |b: &[u8], i: usize| -> u64 {
            b.get(i * 8..i * 8 + 8)
                .and_then(|w| w.try_into().ok())
                .map_or(u64::MAX, u64::from_le_bytes)
        };
        let trailer_at = bytes.len().checked_sub(TRAILER_WORDS * 8).ok_or_else(bad)?;
        let trailer = &bytes[trailer_at..];
        let [generation, index, epoch, base, reused_keys, keys_read, runs, splices, len] =
            std::array::from_fn(|i| word(trailer, i));
        let [runs, splices, len] =
            [runs, splices, len].map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let words = runs
            .checked_mul(RUN_WORDS)
            .and_then(|r| splices.checked_mul(SPLICE_WORDS)?.checked_add(r))
            .and_then(|w| w.checked_mul(8))
            .filter(|n| len.checked_add(*n) == Some(trailer_at))
            .ok_or_else(bad)?;
        let table = &bytes[len..len + words];
        let runs: Vec<RunRecord> = (0..runs)
            .map(|i| {
                let w = |j: usize| word(table, i * RUN_WORDS + j);
                RunRecord {
                    key: RunKey {
                        dir: w(0),
                        dir_created: w(1),
                        span: w(2),
                    },
                    count: w(3),
                    start: w(4),
                    end: w(5),
                }
            })
            .collect();
        let at = runs.len() * RUN_WORDS;
        let spliced: Vec<Splice> = (0..splices)
            .map(|i| {
                let w = |j: usize| word(table, at + i * SPLICE_WORDS + j);
                Splice {
                    at: w(0),
                    start: w(1),
                    end: w(2),
                }
            })
            .collect();
        let ordered = spliced.windows(2).all(|p| p[0].at <= p[1].at)
            && spliced
                .iter()
                .all(|sp| sp.at <= len as u64 && sp.start <= sp.end);
        if !ordered || runs.iter().any(|r| r.start > r.end) {
            return Err(bad());
        }
        bytes.truncate(len);
        Ok(Saved {
            generation,
            index,
            epoch,
            base,
            data: bytes,
            spliced,
            runs,
            reused_keys,
            keys_read,
        })
    }
}

/// The runs of the last snapshot taken: blocks the next one copies for runs whose keys did
/// not change since. A run is reusable when its directory and span are the same, it has as
/// many keys, and none was created or modified after the cached snapshot's index: nodes do
/// not move, every change to a key gives it a new modified index (a replaced key is a new
/// node with a new created index), and a key created before that index at this address was
/// in the run then — so the run holds the same keys with the same contents, in the same
/// (address) order. A big directory also records which spans of its children changed in
/// which snapshot epoch (`node::Touched`); a span untouched since the cached snapshot is
/// copied without reading its nodes, once the directory's child count confirms that every
/// child is in a copied run, a changed span or a known subdirectory. A store restored from
/// a snapshot has a new generation: nothing of an earlier one is reused.
#[derive(Default)]
pub struct RunCache {
    generation: u64,
    index: u64,
    /// The snapshot epoch the cached snapshot ended.
    epoch: u64,
    /// The snapshot the runs' blocks lie in.
    data: Vec<u8>,
    runs: BTreeMap<RunKey, RunRecord>,
}

impl RunCache {
    /// Assembles `saved`'s bytes (its own, with the blocks it reuses from this cache),
    /// keeps its runs for the next snapshot and returns the bytes. An error (blocks of a
    /// cache this is not) leaves the cache as it was.
    pub fn remember(&mut self, saved: Saved) -> Result<Vec<u8>, String> {
        let data = if saved.spliced.is_empty() {
            saved.data
        } else {
            if saved.base != self.epoch || saved.generation != self.generation {
                return Err("snapshot reuses blocks of another cache".into());
            }
            let total = saved.data.len()
                + saved
                    .spliced
                    .iter()
                    .map(|sp| (sp.end - sp.start) as usize)
                    .sum::<usize>();
            let mut data = Vec::with_capacity(total);
            let mut from = 0;
            for sp in &saved.spliced {
                let block = self
                    .data
                    .get(sp.start as usize..sp.end as usize)
                    .ok_or("snapshot reuses blocks the cache does not have")?;
                data.extend_from_slice(&saved.data[from..sp.at as usize]);
                data.extend_from_slice(block);
                from = sp.at as usize;
            }
            data.extend_from_slice(&saved.data[from..]);
            data
        };
        if saved.runs.iter().any(|r| r.end as usize > data.len()) {
            return Err("snapshot runs beyond its bytes".into());
        }
        self.generation = saved.generation;
        self.index = saved.index;
        self.epoch = saved.epoch;
        self.data.clear();
        self.data.extend_from_slice(&data);
        self.runs = saved.runs.iter().map(|r| (r.key, *r)).collect();
        Ok(data)
    }

    /// The cached block of `run`, if its keys are as they were.
    fn reusable(&self, run: &Run<'_>) -> Option<&RunRecord> {
        let cached = self.runs.get(&run.key)?;
        if cached.count != run.keys.len() as u64 || run.newest > self.index {
            return None;
        }
        Some(cached)
    }
}

/// A directory's children in the order they lie in memory. The order of siblings in a
/// snapshot is free, and the table's order is its hash order: walking the nodes (and their
/// names and values, allocated beside them) by address instead turns a cache and TLB miss
/// per key into a sequential read, which makes encoding a large store several times faster.
///
/// Sorted in two steps, both linear in practice: spread into buckets of neighbouring
/// addresses (a counting pass and a scatter), then each bucket — a few nodes — sorted.
fn in_memory_order(children: &Children) -> Vec<&Node> {
    let Some(first) = children.iter().next() else {
        return Vec::new();
    };
    if children.len() < 1024 {
        let mut nodes: Vec<&Node> = children.iter().collect();
        nodes.sort_unstable_by_key(|n| addr(n));
        return nodes;
    }
    // Three passes over the table (its slots are contiguous): the range, the counts and
    // the scatter, with no list of the nodes in hash order in between.
    let (min, max) = children.iter().fold((usize::MAX, 0), |(lo, hi), n| {
        (lo.min(addr(n)), hi.max(addr(n)))
    });
    // At most 64Ki buckets, so that the counts stay in the cache (the nodes come in hash
    // order: every count touched is a random one); far-apart regions make fuller buckets.
    let buckets = (children.len() / 16)
        .next_power_of_two()
        .clamp(256, 1 << 16);
    let span_bits = usize::BITS - (max - min).leading_zeros();
    let shift = span_bits.saturating_sub(buckets.trailing_zeros());
    let bucket_of = |n: &Node| (addr(n) - min) >> shift;
    let mut starts = vec![0usize; buckets + 1];
    for n in children.iter() {
        starts[bucket_of(n) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![first; children.len()];
    for n in children.iter() {
        let slot = &mut next[bucket_of(n)];
        sorted[*slot] = n;
        *slot += 1;
    }
    for bounds in starts.windows(2) {
        sorted[bounds[0]..bounds[1]].sort_unstable_by_key(|n| addr(n));
    }
    sorted
}

/// Format 2 bytes (what `encode` wrote) as format 3, or as they are if that is no smaller.
pub fn compress(encoded: Vec<u8>) -> Vec<u8> {
    let Some(body) = encoded.strip_prefix(FORMAT_2_LINE.as_bytes()) else {
        return encoded;
    };
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    out.extend_from_slice(MAGIC.as_bytes());
    out.extend_from_slice(b"3\n");
    write_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&lz4_flex::block::compress(body));
    if out.len() >= encoded.len() {
        return encoded;
    }
    out
}

/// The first line of format 2.
const FORMAT_2_LINE: &str = "oxcd-v2store snapshot 2\n";

/// LZ4 expands a block at most about 255 times: a claimed length beyond that is damage, not
/// a reason to allocate.
const LZ4_MAX_RATIO: u64 = 255;

/// Format 3: decompressed, then read as format 2.
fn decode_v3(data: &[u8]) -> Result<(u64, Node), String> {
    let header_len = MAGIC.len() + "3\n".len();
    let mut r = Reader {
        data: data.get(header_len..).ok_or("truncated snapshot")?,
    };
    let len = r
        .varint()
        .map_err(|e| format!("bad snapshot header: {e}"))?;
    let block = r.data;
    if len > (block.len() as u64).saturating_mul(LZ4_MAX_RATIO) {
        return Err("corrupted snapshot (impossible decompressed length)".into());
    }
    // Format 2's first line, then the block decompressed in place behind it.
    let line = FORMAT_2_LINE.len();
    let mut plain = vec![0; line + len as usize];
    plain[..line].copy_from_slice(FORMAT_2_LINE.as_bytes());
    let n = lz4_flex::block::decompress_into(block, &mut plain[line..])
        .map_err(|e| format!("corrupted snapshot (LZ4: {e})"))?;
    if n as u64 != len {
        return Err("corrupted snapshot (decompressed length differs)".into());
    }
    decode_v2(&plain)
}

/// Format 4: every block decompressed behind format 2's first line, then read as format 2.
fn decode_v4(data: &[u8]) -> Result<(u64, Node), String> {
    let header_len = MAGIC.len() + "4\n".len();
    let mut r = Reader {
        data: data.get(header_len..).ok_or("truncated snapshot")?,
    };
    let mut plain = Vec::new();
    loop {
        let bad = |e: &str| format!("bad snapshot block: {e}");
        let len = r.varint().map_err(bad)?;
        if len == 0 {
            break;
        }
        let want = u32::from_le_bytes(r.array::<4>().map_err(bad)?);
        let compressed = r.bytes().map_err(bad)?;
        if len > (compressed.len() as u64).saturating_mul(LZ4_MAX_RATIO) {
            return Err("corrupted snapshot (impossible decompressed length)".into());
        }
        let start = plain.len();
        plain.resize(start + len as usize, 0);
        let n = lz4_flex::block::decompress_into(compressed, &mut plain[start..])
            .map_err(|e| format!("corrupted snapshot (LZ4: {e})"))?;
        if n as u64 != len {
            return Err("corrupted snapshot (decompressed length differs)".into());
        }
        let got = crc32c::crc32c(&plain[start..]);
        if got != want {
            return Err(format!(
                "corrupted snapshot (block checksum {got:08x}, expected {want:08x})"
            ));
        }
    }
    if !r.data.is_empty() {
        return Err("corrupted snapshot (bytes after the last block)".into());
    }
    decode_v2_body(&plain)
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn write_record(out: &mut Vec<u8>, node: &Node) {
    write_bytes(out, node.name().as_bytes());
    write_varint(out, node.created_index);
    write_varint(out, node.modified_index.wrapping_sub(node.created_index));
    let mut flags = 0;
    if node.is_dir() {
        flags |= FLAG_DIR;
    }
    if node.expire().is_some() {
        flags |= FLAG_EXPIRE;
    }
    out.push(flags);
    if let Some(t) = node.expire() {
        let (secs, nanos) = split_time(t);
        // Zigzag: small magnitudes of either sign stay short.
        write_varint(out, ((secs << 1) ^ (secs >> 63)) as u64);
        write_varint(out, u64::from(nanos));
    }
    match &node.children {
        Some(children) => write_varint(out, children.len() as u64),
        None => write_bytes(out, node.value().as_bytes()),
    }
}

/// Seconds (floored) and nanoseconds since the epoch.
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs().min(i64::MAX as u64) as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = d.as_secs().min(i64::MAX as u64 - 1) as i64;
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn join_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// Decodes a snapshot, in any format: the store index and the tree.
pub fn decode(data: &[u8]) -> Result<(u64, Node), String> {
    if let Some(rest) = data.strip_prefix(MAGIC.as_bytes()) {
        // The version first: another format's checksum may be elsewhere.
        let version = rest
            .split(|&b| b == b'\n')
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or("bad snapshot version line")?;
        return match version {
            4 => decode_v4(data),
            3 => decode_v3(data),
            2 => decode_v2(data),
            1 => decode_v1(data),
            _ => Err(format!(
                "snapshot format {version} is not supported (this build reads 1 to 4)"
            )),
        };
    }
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return decode_old(data);
    }
    Err("not a v2 store snapshot (unknown format)".into())
}

/// Builds the tree from nodes given in pre-order, each directory with its number of
/// children: an explicit stack of the open directories, so depth costs heap, not stack.
#[derive(Default)]
struct TreeBuilder {
    /// Open directories and how many children each still expects.
    stack: Vec<(Node, u64)>,
    root: Option<Node>,
}

impl TreeBuilder {
    /// Adds the next node (a directory announces `children`, a key 0).
    fn push(&mut self, node: Node, children: u64) -> Result<(), &'static str> {
        if self.root.is_some() {
            return Err("after the end of the tree");
        }
        let name = node.name();
        if self.stack.is_empty() {
            if !name.is_empty() {
                return Err("the root has a name");
            }
        } else if name.is_empty() || name.contains('/') {
            return Err("invalid name");
        }
        if let Some((_, remaining)) = self.stack.last_mut() {
            // A parent with nothing remaining was closed below.
            *remaining -= 1;
        }
        // Close every directory that is complete, this node first.
        let mut open = (node, children);
        loop {
            if open.1 > 0 {
                self.stack.push(open);
                return Ok(());
            }
            let Some((parent, remaining)) = self.stack.last_mut() else {
                self.root = Some(open.0);
                return Ok(());
            };
            let Some(siblings) = parent.children.as_mut() else {
                return Err("a key with children");
            };
            if siblings.insert(open.0).is_some() {
                return Err("duplicate name");
            }
            if *remaining > 0 {
                return Ok(());
            }
            match self.stack.pop() {
                Some(done) => open = done,
                None => return Ok(()),
            }
        }
    }

    fn finish(self) -> Result<Node, String> {
        self.root
            .ok_or_else(|| "truncated snapshot (the tree is incomplete)".into())
    }
}

/// A key or a directory (sized for `children`, within what the rest of the data could hold).
fn make_node(
    name: &str,
    created_index: u64,
    modified_index: u64,
    expire: Option<SystemTime>,
    payload: Result<&str, u64>,
    room: usize,
) -> Node {
    let mut node = match payload {
        Ok(value) => Node::new_file(name, value, created_index, expire),
        Err(children) => {
            let mut dir = Node::new_dir(name, created_index, expire);
            dir.children = Some(Box::new(Children::with_capacity(
                children.min(room as u64) as usize
            )));
            dir
        }
    };
    node.modified_index = modified_index;
    node
}

/// Format 2: see the module documentation.
fn decode_v2(data: &[u8]) -> Result<(u64, Node), String> {
    let (body, crc) = data
        .split_last_chunk::<4>()
        .ok_or("truncated snapshot (no checksum)")?;
    let want = u32::from_le_bytes(*crc);
    let got = crc32c::crc32c(body);
    if got != want {
        return Err(format!(
            "corrupted snapshot (checksum {got:08x}, expected {want:08x})"
        ));
    }
    let header_len = MAGIC.len() + "2\n".len();
    decode_v2_body(body.get(header_len..).ok_or("truncated snapshot")?)
}

/// Format 2 between its first line and its checksum: the index and the records.
fn decode_v2_body(body: &[u8]) -> Result<(u64, Node), String> {
    let mut r = Reader { data: body };
    let index = r
        .varint()
        .map_err(|e| format!("bad snapshot header: {e}"))?;
    let mut tree = TreeBuilder::default();
    let mut n = 0u64;
    while !r.data.is_empty() {
        let bad = |what: &str| format!("bad snapshot record {n}: {what}");
        let name = r.str().map_err(bad)?;
        let created = r.varint().map_err(bad)?;
        let modified = created.wrapping_add(r.varint().map_err(bad)?);
        let flags = r.byte().map_err(bad)?;
        if flags & !(FLAG_DIR | FLAG_EXPIRE) != 0 {
            return Err(bad("unknown flags"));
        }
        let expire = if flags & FLAG_EXPIRE != 0 {
            let zigzag = r.varint().map_err(bad)?;
            let secs = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
            let nanos = u32::try_from(r.varint().map_err(bad)?).map_err(|_| bad("expiry"))?;
            Some(join_time(secs, nanos).ok_or_else(|| bad("expiry"))?)
        } else {
            None
        };
        // Each child takes at least 6 bytes.
        let room = r.data.len() / 6;
        let (node, children) = if flags & FLAG_DIR != 0 {
            let count = r.varint().map_err(bad)?;
            let node = make_node(name, created, modified, expire, Err(count), room);
            (node, count)
        } else {
            let value = r.str().map_err(bad)?;
            (make_node(name, created, modified, expire, Ok(value), 0), 0)
        };
        tree.push(node, children).map_err(bad)?;
        n += 1;
    }
    Ok((index, tree.finish()?))
}

/// Reads format 2's fields, never past the end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.data.split_first().ok_or("truncated")?;
        self.data = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("varint overflow");
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("varint overflow")
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (a, rest) = self.data.split_first_chunk::<N>().ok_or("truncated")?;
        self.data = rest;
        Ok(*a)
    }

    /// A varint length, then that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| "truncated")?;
        if len > self.data.len() {
            return Err("truncated");
        }
        let (b, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "not UTF-8")
    }
}

/// The oldest format: the tree as one nested JSON value.
fn decode_old(data: &[u8]) -> Result<(u64, Node), String> {
    /// A node as that format wrote it.
    #[derive(Deserialize)]
    struct OldNode {
        created_index: u64,
        modified_index: u64,
        value: String,
        expire: Option<SystemTime>,
        children: Option<HashMap<String, OldNode>>,
    }
    #[derive(Deserialize)]
    struct Saved {
        index: u64,
        root: OldNode,
    }
    // Recursion is bounded by serde_json's nesting limit, which bounded the parse above.
    fn convert(name: &str, old: OldNode) -> Node {
        let payload = match &old.children {
            Some(c) => Err(c.len() as u64),
            None => Ok(old.value.as_str()),
        };
        let room = old.children.as_ref().map_or(0, HashMap::len);
        let mut node = make_node(
            name,
            old.created_index,
            old.modified_index,
            old.expire,
            payload,
            room,
        );
        if let (Some(children), Some(table)) = (old.children, node.children.as_mut()) {
            for (child_name, child) in children {
                table.insert(convert(&child_name, child));
            }
        }
        node
    }
    let saved: Saved = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Ok((saved.index, convert("", saved.root)))
}

/// A format 1 record's last field.
enum Payload {
    Value(String),
    Children(u64),
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct PayloadVisitor;
        impl Visitor<'_> for PayloadVisitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value (string) or a number of children")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Payload, E> {
                Ok(Payload::Children(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Payload, E> {
                Ok(Payload::Value(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Payload, E> {
                Ok(Payload::Value(s))
            }
        }
        d.deserialize_any(PayloadVisitor)
    }
}

#[derive(Deserialize)]
struct Record<'a>(
    #[serde(borrow)] Cow<'a, str>,
    u64,
    u64,
    Option<(i64, u32)>,
    Payload,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    index: u64,
}

/// Format 1: text, one JSON array a node (see the module documentation).
fn decode_v1(data: &[u8]) -> Result<(u64, Node), String> {
    // The trailer: the checksum of everything before it.
    let body_end = data
        .strip_suffix(b"\n")
        .and_then(|d| d.iter().rposition(|&b| b == b'\n'))
        .map(|i| i + 1)
        .ok_or("truncated snapshot (no trailer)")?;
    let (body, trailer) = data.split_at(body_end);
    let want = trailer
        .strip_prefix(TRAILER_V1.as_bytes())
        .and_then(|t| t.strip_suffix(b"\n"))
        .and_then(|t| std::str::from_utf8(t).ok())
        // Exactly as written: 8 lowercase hex digits.
        .filter(|t| t.len() == 8 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or("truncated snapshot (bad trailer)")?;
    let got = crc32c::crc32c(body);
    if got != want {
        return Err(format!(
            "corrupted snapshot (checksum {got:08x}, expected {want:08x})"
        ));
    }
    // `body` ends with a newline: every line is complete.
    let mut lines = body[..body.len() - 1].split(|&b| b == b'\n');
    lines.next(); // The version line, read above.
    let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| format!("bad snapshot header: {e}"))?;
    let mut tree = TreeBuilder::default();
    for (n, line) in lines.enumerate() {
        let bad = |what: &str| format!("bad snapshot record {n}: {what}");
        let Record(name, created_index, modified_index, expire, payload) =
            serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
        let expire = match expire {
            None => None,
            Some((secs, nanos)) => Some(join_time(secs, nanos).ok_or_else(|| bad("expiry"))?),
        };
        // Each record takes at least 16 bytes.
        let room = data.len() / 16;
        let (node, children) = match &payload {
            Payload::Value(v) => (
                make_node(&name, created_index, modified_index, expire, Ok(v), 0),
                0,
            ),
            Payload::Children(count) => (
                make_node(
                    &name,
                    created_index,
                    modified_index,
                    expire,
                    Err(*count),
                    room,
                ),
                *count,
            ),
        };
        tree.push(node, children).map_err(bad)?;
    }
    Ok((header.index, tree.finish()?))
}
