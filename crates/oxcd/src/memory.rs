//! Handing memory the process freed back to the system.
//!
//! glibc's allocator gives freed memory back only from the top of its heaps: after a large
//! transient — a restart's snapshot decode and log replay, a recursive listing of a big
//! directory (millions of small copies), a snapshot's buffers — the freed pages under
//! live allocations stay resident. At a million keys that is 12 MB after a restart and
//! 150 MB after one listing of the whole store. `malloc_trim(0)` returns them.
//!
//! Callers only say that a large transient ended ([`release_soon`]); one thread trims, a
//! second after the last such call (the answer of a listing is still being sent when its
//! copy is dropped), so bursts cost one trim. Trimming walks the allocator's arenas under
//! their locks: a thread allocating meanwhile waits for the walk of its arena (milliseconds
//! for hundreds of MB), which is why it is not done after every request.
//!
//! `malloc_trim` is a foreign call that takes no pointers (one of the two modules with
//! `unsafe` blocks; the other is `snapshot_child`).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

/// How long the trimmer waits after the last request before trimming.
const SETTLE: Duration = Duration::from_secs(1);

static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();

/// Asks for freed memory to be returned to the system shortly (coalesced; never blocks).
pub fn release_soon() {
    let tx = TRIMMER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("trim".into())
            .spawn(move || trim_loop(rx))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = tx {
        // Full means a trim is already pending: this request is covered by it.
        let _ = tx.try_send(());
    }
}

fn trim_loop(rx: Receiver<()>) {
    while rx.recv().is_ok() {
        // Wait until the requests stop for SETTLE, then trim once.
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let started = std::time::Instant::now();
        let released = release_now();
        tracing::debug!(
            released,
            took_ms = started.elapsed().as_millis() as u64,
            "memory: freed pages returned to the system"
        );
    }
}

/// Returns the allocator's free pages to the system now; true when it gave any back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_now() -> bool {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc locks each arena
    // while it walks it, so it is safe to call while other threads allocate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries return large blocks themselves and have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_now() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_transient_freed_is_returned() {
        // Many small blocks below a live one: freeing them leaves glibc's heap top in use,
        // so only a trim returns their pages.
        let blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 200]).collect();
        // A heap block allocated after them, still live.
        let keep: Box<[u8]> = vec![1u8; 200].into_boxed_slice();
        let rss_full = rss_kb();
        drop(blocks);
        release_now();
        let rss_trimmed = rss_kb();
        assert_eq!(keep[0], 1);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            // 200,000 blocks of 200 bytes are ~45 MB; at least half of it must go back.
            assert!(
                rss_full > rss_trimmed + 20_000,
                "RSS {rss_full} kB before, {rss_trimmed} kB after"
            );
        }
        // Coalesced requests never block the caller.
        for _ in 0..100 {
            release_soon();
        }
    }

    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}
