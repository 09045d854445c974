//! Durability: a write acknowledged by oxcd survives SIGKILL. Writers record every
//! acknowledged write (key, value, modifiedIndex); the member is killed at a random moment
//! while they write, restarted on the same data dir, and every acknowledged write must be
//! there with its index, several rounds in a row.
//!
//! The second test aims the crash: a failpoint (`OXCD_FAILPOINTS`) aborts the process at
//! each step whose order durability depends on — between a write and its fdatasync, in the
//! middle of a WAL segment cut, between a snapshot file and its WAL marker, before a purge —
//! and the restarted member must still hold every acknowledged write.

use std::path::Path;
use std::time::Duration;

use oxcd_tests::cluster::{Ack, Load};
use oxcd_tests::{request, Member};

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--snapshot-count", "50", "--max-snapshots", "2"],
    );
    let mut acked: Vec<Ack> = Vec::new();
    for round in 0..4u64 {
        let writers = Load::start(vec![m.client_url.clone()], 4, &format!("r{round}"));
        // A pseudo-random moment between 150 and 650 ms.
        let delay = 150 + (round * 7919 + std::process::id() as u64) % 500;
        std::thread::sleep(Duration::from_millis(delay));
        m.kill();
        acked.extend(writers.stop());
        m.restart();
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        assert_all_present(&m, &acked, &format!("round {round}"));
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
    let mut idx: Vec<u64> = acked.iter().map(|a| a.2).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), acked.len());
}

/// Every acknowledged write reads back with its value and index.
fn assert_all_present(m: &Member, acked: &[Ack], what: &str) {
    for (key, value, idx) in acked {
        let r = request(&m.client_url, "GET", &format!("/v2/keys/{key}"), None);
        let node = &r.json()["node"];
        assert_eq!(
            node["value"],
            value.as_str(),
            "{what}: lost {key}; log:\n{}",
            m.log()
        );
        assert_eq!(node["modifiedIndex"], *idx, "{what}: {key} changed index");
    }
}

#[test]
fn acknowledged_writes_survive_crashes_at_every_durability_step() {
    // Small segments and frequent snapshots, so every point is reached within seconds.
    let points = [
        "wal_before_sync@150",
        "wal_cut_before_rename@2",
        "wal_cut_after_rename@3",
        "snap_file_before_rename@2",
        "snap_after_file_before_marker@2",
        "snap_after_marker_before_purge@4",
    ];
    for point in points {
        let mut m = Member::start_with_env(
            Path::new(env!("CARGO_BIN_EXE_oxcd")),
            &[
                "--snapshot-count",
                "30",
                "--max-snapshots",
                "2",
                "--max-wals",
                "2",
            ],
            &[
                ("OXCD_FAILPOINTS", point),
                ("OXCD_WAL_SEGMENT_BYTES", "8192"),
            ],
        );
        let writers = Load::start(vec![m.client_url.clone()], 4, "fp");
        let stopped = m.wait_exit(Duration::from_secs(30));
        let acked = writers.stop();
        assert!(
            stopped,
            "{point}: the process did not stop at the failpoint"
        );
        let name = point.split('@').next().unwrap();
        assert!(
            m.log().contains(&format!("failpoint {name}")),
            "{point}: stopped for another reason; log:\n{}",
            m.log()
        );
        assert!(!acked.is_empty(), "{point}: nothing acknowledged");
        m.env.clear();
        m.restart();
        assert_all_present(&m, &acked, point);
        // And the member goes on writing after the repair.
        let r = request(&m.client_url, "PUT", "/v2/keys/after", Some("value=1"));
        assert_eq!(r.status, 201, "{point}: {}", r.body);
    }
}

/// The first answer a restarted member gives already includes every write it acknowledged
/// before the crash: it serves clients only once its own publish is applied, which comes
/// after everything committed before the restart (etcd's ReadyNotify).
#[test]
fn a_restarted_member_answers_only_with_every_acknowledged_write_applied() {
    let mut m = Member::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), &[]);
    for round in 0..5 {
        let mut acked = Vec::new();
        for i in 0..40 {
            let key = format!("ready/r{round}k{i}");
            let r = request(
                &m.client_url,
                "PUT",
                &format!("/v2/keys/{key}"),
                Some("value=v"),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            acked.push((key, r.etcd_index.expect("X-Etcd-Index")));
        }
        m.kill();
        m.spawn_no_wait();
        // Poll the client port with the last acknowledged key; the first answer counts.
        let (last, last_index) = acked.last().cloned().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let first = loop {
            let res = oxcd_tests::ureq::get(&format!("{}/v2/keys/{last}", m.client_url))
                .timeout(Duration::from_secs(2))
                .call();
            match res {
                Ok(r) => break r.into_string().unwrap_or_default(),
                Err(oxcd_tests::ureq::Error::Status(code, r)) => {
                    panic!(
                        "round {round}: first answer {code}: {}; log:\n{}",
                        r.into_string().unwrap_or_default(),
                        m.log()
                    )
                }
                Err(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "round {round}: the member never answered; log:\n{}",
                        m.log()
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let v: serde_json::Value = serde_json::from_str(&first).expect("JSON");
        assert_eq!(
            v["node"]["modifiedIndex"], last_index,
            "round {round}: {first}"
        );
        for (key, idx) in &acked {
            let r = request(&m.client_url, "GET", &format!("/v2/keys/{key}"), None);
            assert_eq!(
                r.json()["node"]["modifiedIndex"],
                *idx,
                "round {round}: {key}"
            );
        }
    }
}

/// A key nested far deeper than any JSON parser's recursion limit goes into a snapshot,
/// the member is killed, and it restarts from that snapshot with the key (it used to fail
/// with "recursion limit exceeded", or overflow the raft thread's stack).
#[test]
fn a_deep_key_survives_a_snapshot_and_a_restart() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--snapshot-count", "10"],
    );
    for depth in [70usize, 5_000] {
        let key: String = std::iter::once(format!("/d{depth}"))
            .chain((1..depth).map(|i| format!("/s{i}")))
            .collect();
        let r = request(
            &m.client_url,
            "PUT",
            &format!("/v2/keys{key}"),
            Some("value=deep"),
        );
        assert_eq!(r.status, 201, "depth {depth}: {}", r.body);
        for i in 0..25 {
            let r = request(
                &m.client_url,
                "PUT",
                &format!("/v2/keys/after{i}"),
                Some("value=x"),
            );
            assert!(r.status == 200 || r.status == 201, "{}", r.body);
        }
        let snaps = || {
            std::fs::read_dir(m.dir.0.join("data/member/snap"))
                .map(|rd| rd.flatten().count())
                .unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while snaps() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot was taken"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m.kill();
        m.restart();
        let r = request(&m.client_url, "GET", &format!("/v2/keys{key}"), None);
        assert_eq!(
            r.json()["node"]["value"],
            "deep",
            "depth {depth}: {}",
            r.body
        );
        // A recursive listing of the last ten levels (every node carries its full key, so
        // listing the whole chain costs the square of its depth in bytes).
        let dir: String = key.rsplitn(11, '/').last().unwrap_or_default().to_string();
        let r = request(
            &m.client_url,
            "GET",
            &format!("/v2/keys{dir}?recursive=true"),
            None,
        );
        assert_eq!(r.status, 200, "depth {depth}");
        assert!(r.body.contains("\"value\":\"deep\""), "depth {depth}");
    }
}

/// Fail-stop: when a snapshot file cannot be written (here its directory was replaced by a
/// file, which stops even root), the member must not go on acknowledging writes after a gap
/// it could not fill: it exits with a non-zero status and a `fatal:` line, and, the
/// directory restored, restarts with every write it acknowledged.
#[test]
fn a_failed_snapshot_write_stops_the_member() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--snapshot-count", "20"],
    );
    let snap = m.dir.0.join("data/member/snap");
    std::fs::remove_dir_all(&snap).unwrap();
    std::fs::write(&snap, b"not a directory").unwrap();
    let mut acked = Vec::new();
    for i in 0..200 {
        let res = oxcd_tests::ureq::put(&format!("{}/v2/keys/fs/k{i}", m.client_url))
            .timeout(Duration::from_secs(5))
            .send_form(&[("value", "v")]);
        match res {
            Ok(r) => {
                let idx = r.header("X-Etcd-Index").and_then(|v| v.parse::<u64>().ok());
                acked.push((format!("fs/k{i}"), "v".to_string(), idx.unwrap_or(0)));
            }
            Err(_) => break,
        }
    }
    let status = m
        .wait_exit_status(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the member kept running; log:\n{}", m.log()));
    assert!(!status.success(), "exit status {status:?}");
    let log = m.log();
    assert!(
        log.contains("fatal: snap: saving snapshot file"),
        "no fatal line; log:\n{log}"
    );
    assert!(
        acked.len() < 200,
        "every write was acknowledged after the failure"
    );
    std::fs::remove_file(&snap).unwrap();
    std::fs::create_dir(&snap).unwrap();
    m.restart();
    for (key, value, _) in &acked {
        let r = request(&m.client_url, "GET", &format!("/v2/keys/{key}"), None);
        assert_eq!(r.json()["node"]["value"], value.as_str(), "lost {key}");
    }
}
