//! Crash points for the crash tests (a small version of etcd's gofail failpoints).
//!
//! `OXCD_FAILPOINTS=name@n[,name@n...]` makes the process abort — as abruptly as SIGKILL, no
//! cleanup, nothing flushed that was not already written — the `n`th time (default 1) it
//! reaches the point `name`. Without the variable a point costs one atomic load. The points
//! sit between the steps whose order durability depends on: before a batch is durable (after
//! its write, before its fdatasync; before the one write where appends are direct), around a
//! segment cut, between a snapshot file and its WAL marker.
//!
//! A test that runs members in its own thread can instead arm a point for that thread only
//! ([`arm_in_thread`]): the hit then panics with a [`Crash`] payload, which the test catches
//! to drop the member as if its process had died there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every point, for tests and the docs.
pub const POINTS: &[&str] = &[
    "wal_before_sync",
    "wal_cut_before_rename",
    "wal_cut_after_rename",
    "snap_file_before_rename",
    "snap_after_file_before_marker",
    "snap_after_marker_before_purge",
];

struct Armed {
    points: HashMap<String, (u64, AtomicU64)>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("OXCD_FAILPOINTS").ok()?;
            let points = spec
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|p| {
                    let (name, n) = p.trim().split_once('@').unwrap_or((p.trim(), "1"));
                    (
                        name.to_string(),
                        (n.parse().unwrap_or(1).max(1), AtomicU64::new(0)),
                    )
                })
                .collect();
            Some(Armed { points })
        })
        .as_ref()
}

/// The panic payload of a point armed with [`arm_in_thread`]: the name of the point.
#[derive(Debug)]
pub struct Crash(pub String);

/// Whether any thread ever armed a point for itself (so `hit` stays one atomic load).
static IN_THREAD_USED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The point armed for this thread, and how many more hits until it fires.
    static IN_THREAD: RefCell<Option<(String, u64)>> = const { RefCell::new(None) };
}

/// Arms `name` for the calling thread only, replacing what was armed there: its `n`th hit
/// (from now, on this thread) panics with a [`Crash`] payload instead of aborting, and
/// disarms it.
pub fn arm_in_thread(name: &str, n: u64) {
    IN_THREAD_USED.store(true, Ordering::Relaxed);
    IN_THREAD.with(|a| *a.borrow_mut() = Some((name.to_string(), n.max(1))));
}

/// Disarms what [`arm_in_thread`] armed for the calling thread.
pub fn disarm_in_thread() {
    IN_THREAD.with(|a| *a.borrow_mut() = None);
}

fn hit_in_thread(name: &str) {
    let fire = IN_THREAD.with(|a| {
        let mut a = a.borrow_mut();
        match a.as_mut() {
            Some((armed, left)) if armed == name => {
                *left -= 1;
                let fire = *left == 0;
                if fire {
                    *a = None;
                }
                fire
            }
            _ => false,
        }
    });
    if fire {
        std::panic::panic_any(Crash(name.to_string()));
    }
}

/// Aborts the process if `name` is armed and this is its `n`th hit (or panics, if it is
/// armed for this thread: [`arm_in_thread`]).
pub fn hit(name: &str) {
    if IN_THREAD_USED.load(Ordering::Relaxed) {
        hit_in_thread(name);
    }
    let Some(armed) = armed() else { return };
    if let Some((n, count)) = armed.points.get(name) {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("failpoint {name}@{n} reached: aborting the process");
            std::process::abort();
        }
    }
}
