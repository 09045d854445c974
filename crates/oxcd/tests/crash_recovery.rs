//! Durability: a write acknowledged by oxcd survives SIGKILL. Writers record every
//! acknowledged write (key, value, modifiedIndex); the member is killed at a random moment
//! while they write, restarted on the same data dir, and every acknowledged write must be
//! there with its index, several rounds in a row.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxcd_tests::{request, Member};

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--snapshot-count", "50", "--max-snapshots", "2"],
    );
    let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    for round in 0..4u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (url, stop, acked) = (m.client_url.clone(), Arc::clone(&stop), Arc::clone(&acked));
            writers.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("/v2/keys/r{round}/w{w}/k{i}");
                    let value = format!("v{round}-{w}-{i}");
                    let agent = oxcd_tests::ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(2))
                        .build();
                    let res = agent
                        .put(&format!("{url}{key}"))
                        .set("Content-Type", "application/x-www-form-urlencoded")
                        .send_string(&format!("value={value}"));
                    match res {
                        Ok(r) => {
                            let body: serde_json::Value =
                                serde_json::from_str(&r.into_string().unwrap_or_default())
                                    .unwrap_or_default();
                            if let Some(idx) = body["node"]["modifiedIndex"].as_u64() {
                                acked.lock().unwrap().push((key, value, idx));
                            }
                        }
                        Err(_) => break, // server gone: unacknowledged, may or may not exist
                    }
                    i += 1;
                }
            }));
        }
        // A pseudo-random moment between 150 and 650 ms.
        let delay = 150 + (round * 7919 + std::process::id() as u64) % 500;
        std::thread::sleep(Duration::from_millis(delay));
        m.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        m.restart();
        let acked = acked.lock().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        for (key, value, idx) in acked.iter() {
            let r = request(&m.client_url, "GET", key, None);
            let node = &r.json()["node"];
            assert_eq!(
                node["value"],
                value.as_str(),
                "round {round}: lost {key}; log:\n{}",
                m.log()
            );
            assert_eq!(
                node["modifiedIndex"], *idx,
                "round {round}: {key} changed index"
            );
        }
    }
    // Snapshots were taken (every 50 entries) and old ones purged (--max-snapshots 2).
    let snaps = std::fs::read_dir(m.dir.0.join("data/member/snap"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                .count()
        })
        .unwrap_or(0);
    assert!((1..=2).contains(&snaps), "{snaps} snapshot files");
    // The index sequence of acknowledged writes has no duplicates.
    let acked = acked.lock().unwrap();
    let mut idx: Vec<u64> = acked.iter().map(|a| a.2).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), acked.len());
}
