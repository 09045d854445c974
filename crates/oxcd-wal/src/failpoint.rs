//! Crash points for the crash tests (a small version of etcd's gofail failpoints).
//!
//! `OXCD_FAILPOINTS=name@n[,name@n...]` makes the process abort — as abruptly as SIGKILL, no
//! cleanup, nothing flushed that was not already written — the `n`th time (default 1) it
//! reaches the point `name`. Without the variable a point costs one atomic load. The points
//! sit between the steps whose order durability depends on: before a batch is durable (after
//! its write, before its fdatasync; before the one write where appends are direct), around a
//! segment cut, between a snapshot file and its WAL marker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Aborts the process if `name` is armed and this is its `n`th hit.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if let Some((n, count)) = armed.points.get(name) {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("failpoint {name}@{n} reached: aborting the process");
            std::process::abort();
        }
    }
}
