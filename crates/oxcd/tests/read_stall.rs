//! Long recursive reads on the leader must not cost it its leadership.
//!
//! A recursive GET of a large key space holds the store's read lock for as long as it
//! takes to copy the tree (over a second for a few ten thousand keys in a debug build). If
//! the raft thread waited for the store lock (to apply, to copy a snapshot, to look for TTL
//! keys), the leader would miss its heartbeats behind such readers and the followers would
//! elect another leader. Entries keep coming while the readers run (a client's writes, the
//! SYNC proposals a TTL key brings), so there is store work to wait for. The raft thread hands the store work to the apply thread instead,
//! as etcd's raft goroutine leaves the store to its apply goroutine.
//!
//! etcd's default timing on purpose (100 ms heartbeat, 1 s election timeout): that is
//! what a stalled raft thread has to beat.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_tests::cluster::Cluster;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const WAIT: Duration = Duration::from_secs(30);
/// Keys loaded: enough that one recursive GET takes about a second in a debug build.
const KEYS: usize = 120_000;
const WRITERS: usize = 32;
const READERS: usize = 2;
const READ_FOR: Duration = Duration::from_secs(10);

/// The sum of `etcd_server_leader_changes_seen_total` over the members.
fn leader_changes_seen(c: &Cluster) -> u64 {
    c.members
        .iter()
        .map(|m| {
            let body = oxcd_tests::ureq::get(&format!("{}/metrics", m.client_url))
                .timeout(Duration::from_secs(10))
                .call()
                .expect("/metrics answers")
                .into_string()
                .expect("metrics are text");
            body.lines()
                .find_map(|l| l.strip_prefix("etcd_server_leader_changes_seen_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("the leader changes metric is exported") as u64
        })
        .sum()
}

#[test]
fn long_recursive_reads_on_the_leader_do_not_depose_it() {
    let mut c = Cluster::start(oxcd(), 3, &[], false);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let url = c.members[leader].client_url.clone();

    let loaded = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = oxcd_tests::ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                for k in (w..KEYS).step_by(WRITERS) {
                    agent
                        .put(&format!("{url}/v2/keys/d{}/k{k}", k % 100))
                        .send_form(&[("value", &"v".repeat(64))])
                        .unwrap_or_else(|e| panic!("loading key {k}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer failed");
    }
    eprintln!("loaded {KEYS} keys in {:?}", loaded.elapsed());

    // A key with a TTL makes the leader propose its clock (SYNC) every 500 ms, and a client
    // keeps writing: both are entries to apply while the readers hold the store.
    oxcd_tests::ureq::put(&format!("{url}/v2/keys/lease"))
        .send_form(&[("value", "held"), ("ttl", "3600")])
        .expect("a TTL key is set");

    let before = leader_changes_seen(&c);
    let stop = Instant::now() + READ_FOR;
    let writer = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while Instant::now() < stop {
                // Failures are allowed (a leader change is what the assertion reports).
                let _ = oxcd_tests::ureq::put(&format!("{url}/v2/keys/during/k{}", n % 10))
                    .timeout(Duration::from_secs(30))
                    .send_form(&[("value", &n.to_string())]);
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (url, reads) = (url.clone(), Arc::clone(&reads));
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                while Instant::now() < stop {
                    let t = Instant::now();
                    let r = oxcd_tests::ureq::get(&format!(
                        "{url}/v2/keys/?recursive=true&sorted=true"
                    ))
                    .timeout(Duration::from_secs(60))
                    .call()
                    .expect("a recursive GET answers");
                    // Larger than `into_string` takes.
                    let mut body = Vec::new();
                    r.into_reader()
                        .read_to_end(&mut body)
                        .expect("a recursive GET's body");
                    assert!(
                        body.len() > KEYS * 64,
                        "a whole listing: {} bytes",
                        body.len()
                    );
                    slowest = slowest.max(t.elapsed());
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                slowest
            })
        })
        .collect();
    let slowest = readers
        .into_iter()
        .map(|r| r.join().expect("a reader failed"))
        .max()
        .unwrap_or_default();
    writer.join().expect("the writer failed");
    let after = leader_changes_seen(&c);
    eprintln!(
        "{} recursive GETs in {READ_FOR:?}, slowest {slowest:?}; leader changes seen: {before} -> {after}",
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(
        after, before,
        "the members saw leader changes while recursive reads ran on the leader"
    );
}
