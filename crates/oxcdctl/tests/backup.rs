//! `oxcdctl backup` against a running `oxcd`: a one-member cluster with frequent snapshots
//! and small WAL segments takes a single writer's writes (k000000, k000001, ... in order)
//! while three backups are taken. The member is then SIGKILLed and `oxcd` started on each
//! backup with the member's own flags (so the same member and cluster ID): every write
//! acknowledged before that backup started must be there, and the keys present must be a
//! prefix of the writer's sequence. A backup of the first backup must be the same files and
//! give the same store.
//!
//! Cargo builds only this package's binaries for its tests; the server's binary is built
//! into the same target directory by `oxcd_binary` (a no-op after `cargo build
//! --workspace`, which scripts/test.sh runs first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxcd_tests::cluster::FAST_TIMING;
use oxcd_tests::{free_port, member_url_args, request, Member, TempDir};
use serde_json::Value;

/// The `oxcd` binary of this build, built if missing or stale.
fn oxcd_binary() -> PathBuf {
    let ctl = Path::new(env!("CARGO_BIN_EXE_oxcdctl"));
    let profile_dir = ctl.parent().expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "oxcd",
            "--bin",
            "oxcd",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build for the oxcd binary");
    assert!(status.success(), "cargo build -p oxcd failed");
    profile_dir.join("oxcd")
}

/// The member's command line on `data` (same name, URLs and token each time: same IDs).
fn member_args(data: &Path, client: &str, peer: &str) -> Vec<String> {
    let mut a = member_url_args(data, client, peer);
    a.extend(
        [
            "--name",
            "default",
            "--initial-cluster",
            &format!("default={peer}"),
            "--initial-cluster-token",
            "backup-test",
            "--snapshot-count",
            "100",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend(FAST_TIMING.iter().map(|s| s.to_string()));
    a
}

fn start(oxcd: &Path, dir: TempDir, data: &Path, client: &str, peer: &str) -> Member {
    let mut m = Member::new(
        oxcd,
        dir,
        client.to_string(),
        member_args(data, client, peer),
    );
    m.env = vec![("OXCD_WAL_SEGMENT_BYTES".into(), "65536".into())];
    m.spawn();
    m
}

fn count_files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
                .count()
        })
        .unwrap_or(0)
}

/// The largest index in the names (`<hex>-<index hex>.<ext>`) of the files of `dir`.
fn newest_index(dir: &Path, ext: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(ext)?.to_string();
                    u64::from_str_radix(stem.split_once('-')?.1, 16).ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Whether a WAL segment starts after the newest snapshot's index.
fn cut_since_newest_snapshot(wal: &Path, snap: &Path) -> bool {
    newest_index(wal, ".wal") > newest_index(snap, ".snap")
}

/// Every file under `dir`, relative path and bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn value(i: u64) -> String {
    format!("v{i}-{}", "x".repeat(2000))
}

/// The writer's keys in the store, sorted, with their values checked.
fn written_keys(m: &Member) -> (Vec<String>, Value) {
    let r = request(
        &m.client_url,
        "GET",
        "/v2/keys/w?recursive=true&sorted=true",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let node = r.json()["node"].clone();
    let mut keys = Vec::new();
    for n in node["nodes"].as_array().expect("a listing") {
        let key = n["key"].as_str().unwrap().to_string();
        let i: u64 = key.trim_start_matches("/w/k").parse().unwrap();
        assert_eq!(n["value"], value(i).as_str(), "{key}");
        keys.push(key);
    }
    (keys, node)
}

fn run_backup(args: &[&Path]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oxcdctl"));
    cmd.arg("backup")
        .arg("--data-dir")
        .arg(args[0])
        .arg("--backup-dir")
        .arg(args[1]);
    let out = cmd.output().expect("run oxcdctl");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "oxcdctl backup failed: {stderr}{stdout}"
    );
    assert!(stdout.contains("snapshot at index"), "{stdout}");
    eprintln!("{stderr}{stdout}");
    stdout
}

#[test]
fn backup_of_a_running_member_holds_every_write_acknowledged_before_it() {
    let oxcd = oxcd_binary();
    let (client, peer) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let dir = TempDir::new("backup-src");
    let data = dir.0.join("data");
    let mut m = start(&oxcd, dir, &data, &client, &peer);

    // One writer, keys in order; `acked` = how many of them were acknowledged.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), client.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let r = request(
                    &url,
                    "PUT",
                    &format!("/v2/keys/w/k{i:06}"),
                    Some(&format!("value={}", value(i))),
                );
                assert_eq!(r.status, 201, "k{i}: {}", r.body);
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
            i
        })
    };

    // Several snapshots and WAL segments before the backup starts, and a segment cut since
    // the newest snapshot (so the copy most likely spans segments: ~30 writes fill one).
    let (wal, snap) = (data.join("member/wal"), data.join("member/snap"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&wal, ".wal") < 3
        || count_files(&snap, ".snap") < 2
        || acked.load(Ordering::SeqCst) < 200
        || !cut_since_newest_snapshot(&wal, &snap)
    {
        assert!(
            Instant::now() < deadline,
            "no snapshots and segments after {} writes; log:\n{}",
            acked.load(Ordering::SeqCst),
            m.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Three backups in a row while the writer goes on, each with the count of writes
    // acknowledged before it started.
    let backups = TempDir::new("backups");
    let mut taken = Vec::new();
    for round in 0..3 {
        let dir = backups.0.join(format!("b{round}"));
        let before = acked.load(Ordering::SeqCst);
        let summary = run_backup(&[&data, &dir]);
        let during = acked.load(Ordering::SeqCst) - before;
        eprintln!("backup {round}: {before} writes acknowledged before it, {during} during it");
        taken.push((dir, before, summary));
        // More writes after it (which it must not need).
        let target = acked.load(Ordering::SeqCst) + 20;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the writer stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let attempted = writer.join().expect("writer");
    m.kill();
    assert!(taken[0].1 >= 200, "{}", taken[0].1);

    // The backup of the first backup: the same files.
    let (b1, b2) = (taken[0].0.clone(), backups.0.join("copy"));
    run_backup(&[&b1, &b2]);
    assert_eq!(
        tree(&b1),
        tree(&b2),
        "a backup of a backup is the same backup"
    );

    // The member on each backup: every write acknowledged before it, a prefix of the writes.
    let mut listing = Value::Null;
    for (round, (dir, before, summary)) in taken.iter().enumerate() {
        let restored = start(&oxcd, TempDir::new("restored"), dir, &client, &peer);
        let (keys, node) = written_keys(&restored);
        let n = keys.len() as u64;
        assert!(
            n >= *before,
            "backup {round}: {n} keys, {before} acknowledged before it; {summary}"
        );
        assert!(
            n <= attempted,
            "backup {round}: {n} keys but {attempted} writes"
        );
        let want: Vec<String> = (0..n).map(|i| format!("/w/k{i:06}")).collect();
        assert_eq!(
            keys, want,
            "backup {round}: the keys present are a prefix of the writes"
        );
        if round == 0 {
            listing = node;
        }
    }

    // And on the second backup: the same store, indexes included.
    let again = start(&oxcd, TempDir::new("restored2"), &b2, &client, &peer);
    let (_, listing2) = written_keys(&again);
    assert_eq!(listing2, listing);
}

/// The restore procedure of a lost cluster: a backup of one member of a three-member
/// cluster, taken while writers write, started with `oxcd --force-new-cluster` after every
/// member is gone, is a one-member cluster with every write acknowledged before the backup
/// (and applied on that member), which takes writes and can grow again.
#[test]
fn a_cluster_restores_from_a_backup_with_force_new_cluster() {
    use oxcd_tests::cluster::{check_converged, try_put, Cluster, Load};
    let oxcd = oxcd_binary();
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--snapshot-count", "200"]);
    let mut c = Cluster::start(&oxcd, 3, &args, false);
    let load = Load::start(
        c.members.iter().map(|m| m.client_url.clone()).collect(),
        2,
        "restore",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.acked_count() < 300 {
        assert!(Instant::now() < deadline, "writes are not acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The writes acknowledged so far, once member 1 has applied them, must be in its backup;
    // the writers keep writing during the copy.
    let s = 1;
    let before = load.stop();
    let last = before
        .iter()
        .map(|a| a.2)
        .max()
        .expect("acknowledged writes");
    c.listings(&[s], last, Duration::from_secs(20));
    let load = Load::start(vec![c.members[0].client_url.clone()], 2, "during");
    let backup = TempDir::new("cluster-backup");
    let backup_data = backup.0.join("data");
    let source = c.members[s].dir.0.join("data");
    let out = run_backup(&[&source, &backup_data]);
    drop(load.stop());
    assert!(out.contains(&format!("member {}", c.ids[s])), "{out}");
    for m in c.members.iter_mut() {
        m.kill();
    }

    let m = &mut c.members[s];
    m.set_flag("--data-dir", Some(&backup_data.to_string_lossy()));
    m.set_flag("--force-new-cluster", None);
    m.spawn();
    assert!(
        m.log()
            .contains(&format!("forcing restart of member {}", c.ids[s])),
        "{}",
        m.log()
    );
    let listing = c.listings(&[s], last, Duration::from_secs(20));
    check_converged(&listing, &before);
    let r = request(&c.members[s].client_url, "GET", "/v2/members", None);
    let members = r.json()["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 1, "{}", r.body);
    assert_eq!(members[0]["id"], c.ids[s].as_str(), "{}", r.body);
    try_put(
        &c.members[s].client_url,
        "restore/after",
        "x",
        Duration::from_secs(10),
    )
    .expect("the restored cluster takes writes");
}
