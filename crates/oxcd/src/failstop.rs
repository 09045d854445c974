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

/// This member was removed from the cluster (it applied its own removal, or a peer answered
/// 410 Gone): as etcd, it stops after a second (time for the answer to the request that
/// removed it to leave), logs why and that its data dir must go, and exits with status 0 —
/// an operator's decision, not a failure. A restart on the same data dir comes back here.
pub fn removed_from_cluster() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stop = || {
            std::thread::sleep(std::time::Duration::from_secs(1));
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
