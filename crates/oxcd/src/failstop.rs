//! Fail-stop: errors after which this member can no longer guarantee durability or
//! consensus end the process, as etcd's do.
//!
//! Owns the one way out for such errors ([`fatal`]) and the process-wide panic hook
//! ([`install_panic_hook`]). Invariants:
//! - a member never keeps answering clients after its raft thread, WAL or snapshot writer
//!   failed: it logs one `fatal:` line and exits non-zero before any further acknowledgement;
//! - a panic on any thread ends the process (after the usual panic message), so no thread can
//!   die alone and leave a member that answers reads with no raft behind it. Because the process
//!   ends inside the hook, before unwinding, no other thread ever sees a poisoned lock.

/// Exit status of a fail-stop (etcd's `Fatal` exits with 1).
pub const FATAL_EXIT: i32 = 1;
/// Exit status after a panic (Go's runtime exits with 2 on an unrecovered panic).
pub const PANIC_EXIT: i32 = 2;

/// Logs one fatal line and ends the process with a non-zero status.
pub fn fatal(what: std::fmt::Arguments<'_>) -> ! {
    tracing::error!("fatal: {what}");
    std::process::exit(FATAL_EXIT)
}

/// Makes a panic on any thread end the process (the binary installs it; in-process tests
/// keep the default behaviour so a failing assertion fails only its test).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            "fatal: panic: {info}; stopping the member"
        );
        std::process::exit(PANIC_EXIT);
    }));
}

/// When a message from a peer last arrived (ms since the Unix epoch): a removed member
/// lingers while its peers still need it.
static LAST_PEER_MESSAGE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Set once this member knows it was removed: only then is peer traffic timed.
static REMOVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that a raft message from a peer arrived (one atomic load per message until this
/// member is removed).
pub fn peer_message_arrived() {
    if REMOVED.load(std::sync::atomic::Ordering::Relaxed) {
        LAST_PEER_MESSAGE_MS.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// This member was removed from the cluster (it applied its own removal, or a peer answered
/// 410 Gone): as etcd, it stops and says why and that its data dir must go, with exit
/// status 0 — an operator's decision, not a failure. It lingers first, as etcd's waits a
/// second, until peers have sent it nothing for three seconds (at most a
/// minute): a leader that removed itself may still owe the others the commit of its removal
/// or a vote for its successor. A restart on the same data dir comes back here.
pub fn removed_from_cluster() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        REMOVED.store(true, std::sync::atomic::Ordering::Relaxed);
        let stop = || {
            // Longer than two default election timeouts: a successor that missed the
            // commit of the removal campaigns within that and still gets our vote.
            const QUIET_MS: u64 = 3000;
            let started = now_ms();
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let now = now_ms();
                let last = LAST_PEER_MESSAGE_MS.load(std::sync::atomic::Ordering::Relaxed);
                let quiet = now.saturating_sub(last.max(started)) >= QUIET_MS;
                if quiet || now.saturating_sub(started) >= 60_000 {
                    break;
                }
            }
            tracing::error!("the member has been permanently removed from the cluster");
            tracing::warn!("the data-dir used by this member must be removed");
            std::process::exit(0)
        };
        if std::thread::Builder::new()
            .name("removed".into())
            .spawn(stop)
            .is_err()
        {
            stop();
        }
    });
}
