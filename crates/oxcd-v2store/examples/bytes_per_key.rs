//! What a key costs: loads N keys (`/1/bench/<8 digits>`, 64-byte values by default) into a
//! store and prints the resident memory they added per key, the snapshot's bytes per key,
//! and the time to encode the snapshot and to restore a store from it.
//!
//! usage: cargo run --release -p oxcd-v2store --example bytes_per_key [N [VALUE_BYTES [random]]]
//!
//! Values are one repeated letter (one value for every key, as oxcd-bench writes by default),
//! or with `random` random letters and digits (no repeats for LZ4 to find: snapshot
//! compression gains nothing).
//!
//! The floor is the name and value bytes themselves (8 + VALUE_BYTES). Resident memory is
//! read from /proc/self/status (Linux), so it includes the allocator's overhead.

use std::time::{Instant, SystemTime};

use oxcd_v2store::{Store, TtlOptions};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let value_len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let random = args.next().as_deref() == Some("random");
    // xorshift64: a fixed sequence, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next_value = move || -> String {
        if !random {
            return "v".repeat(value_len);
        }
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..value_len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(ALPHABET[(state % ALPHABET.len() as u64) as usize])
            })
            .collect()
    };
    let now = SystemTime::now();
    let before = rss_kib();
    let mut store = Store::new(&["/0", "/1"]);
    let started = Instant::now();
    for i in 0..n {
        let path = format!("/1/bench/{i:08}");
        let value = next_value();
        if let Err(e) = store.set(&path, false, &value, TtlOptions::default(), now) {
            eprintln!("set {path}: {e}");
            std::process::exit(1);
        }
    }
    let loaded = started.elapsed();
    let per_key = |kib: u64| kib as f64 * 1024.0 / n as f64;
    let kind = if random { "random" } else { "repeated-letter" };
    println!(
        "keys: {n}, {kind} values, floor {} bytes a key (name + value)",
        8 + value_len
    );
    println!(
        "store: {:.0} bytes a key resident (load {loaded:.2?})",
        per_key(rss_kib().saturating_sub(before))
    );
    let started = Instant::now();
    let data = store.save();
    println!(
        "snapshot: {:.1} bytes a key, encoded in {:.2?}",
        data.len() as f64 / n as f64,
        started.elapsed()
    );
    let started = Instant::now();
    // What a member writes: format 4, compressed as it is encoded.
    let compressed = store.save_compressed();
    println!(
        "snapshot file (format 4): {:.1} bytes a key, encoded and compressed in {:.2?}",
        compressed.len() as f64 / n as f64,
        started.elapsed()
    );
    let started = Instant::now();
    if let Err(e) = Store::new(&[]).recovery(&compressed) {
        eprintln!("recovery from the compressed snapshot: {e}");
        std::process::exit(1);
    }
    println!("restore from it: {:.2?}", started.elapsed());
    let mut restored = Store::new(&["/0", "/1"]);
    let started = Instant::now();
    if let Err(e) = restored.recovery(&data) {
        eprintln!("recovery: {e}");
        std::process::exit(1);
    }
    println!("restore: {:.2?}", started.elapsed());
    let started = Instant::now();
    let again = restored.save();
    println!(
        "snapshot of the restored store ({} bytes): encoded in {:.2?}",
        again.len(),
        started.elapsed()
    );
}
