//! `--config-file`: a member configured only by etcd 3.4's YAML file serves, logs etcd's
//! "Loading server configuration" line, and ignores every other flag and `ETCD_*`
//! variable; a file it cannot read ends the process with status 1, as etcd's does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use oxcd_tests::{free_port, request, Member, TempDir, ETCD};

const OXCD: &str = env!("CARGO_BIN_EXE_oxcd");

/// etcd's words (etcdmain, capnslog) for a configuration read from a file.
fn loading_line(path: &str) -> String {
    format!("Loading server configuration from {path:?}. Other configuration command line flags and environment variables will be ignored if provided.")
}

#[test]
fn a_member_configured_only_by_its_file_serves() {
    let dir = TempDir::new("config-file");
    let (cp, pp) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let path = dir.0.join("etcd.conf.yml");
    let data = dir.0.join("data");
    std::fs::write(
        &path,
        format!(
            "# etcd 3.4's format: milliseconds, comma-separated URL lists, TLS sections.
name: 'infra0'
data-dir: {data}
snapshot-count: 10000
heartbeat-interval: 50
election-timeout: 500
listen-peer-urls: {peer}
listen-client-urls: {client}
initial-advertise-peer-urls: {peer}
advertise-client-urls: {client}
initial-cluster: infra0={peer}
initial-cluster-token: 'file-cluster'
initial-cluster-state: 'new'
enable-v2: true
proxy: 'off'
client-transport-security:
  client-cert-auth: false
  auto-tls: false
log-outputs: [stderr]
",
            data = data.display()
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    let mut m = Member::new(
        Path::new(OXCD),
        dir,
        client.clone(),
        vec![
            "--config-file".into(),
            path.clone(),
            // Ignored, as etcd ignores them: honoured, they would stop the start.
            "--heartbeat-interval".into(),
            "1".into(),
        ],
    );
    m.env = vec![
        ("ETCD_NAME".into(), "other".into()),
        (
            "ETCD_LISTEN_CLIENT_URLS".into(),
            "http://127.0.0.1:1".into(),
        ),
        ("ETCD_ELECTION_TIMEOUT".into(), "bogus".into()),
    ];
    m.spawn();

    let r = request(&client, "PUT", "/v2/keys/from-file", Some("value=yes"));
    assert_eq!(r.status, 201, "{r:?}");
    let r = request(&client, "GET", "/v2/keys/from-file", None);
    assert_eq!(r.json()["node"]["value"], "yes", "{r:?}");
    // The member's name and data dir are the file's.
    let r = request(&client, "GET", "/v2/members", None);
    assert_eq!(r.json()["members"][0]["name"], "infra0", "{r:?}");
    assert!(data.join("member").join("wal").is_dir());

    let log = m.log();
    assert!(log.contains(&loading_line(&path)), "log:\n{log}");
}

#[test]
fn an_unreadable_file_exits_1_after_etcds_loading_line() {
    let dir = TempDir::new("config-file-missing");
    let missing = dir.0.join("missing.yml");
    let missing = missing.to_str().unwrap();
    let bad = dir.0.join("bad.yml");
    std::fs::write(&bad, "name: [unclosed\n").unwrap();
    let bad = bad.to_str().unwrap();
    for (path, error) in [
        (
            missing,
            format!("open {missing}: no such file or directory"),
        ),
        (bad, "error converting YAML to JSON: yaml: line".to_string()),
    ] {
        let out = Command::new(OXCD)
            .args(["--config-file", path])
            .current_dir(&dir.0)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&loading_line(path)), "{stderr}");
        assert!(stderr.contains(&error), "{stderr}");
        // etcd prints the same two things for the same file.
        if Path::new(ETCD).exists() {
            let out = Command::new(ETCD)
                .args(["--config-file", path])
                .current_dir(&dir.0)
                .output()
                .unwrap();
            let etcd = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{etcd}");
            assert!(etcd.contains(&loading_line(path)), "{etcd}");
            assert!(etcd.contains(&error), "{etcd}");
        }
    }
}

#[test]
fn zap_logs_etcds_structured_loading_message() {
    let dir = TempDir::new("config-file-zap");
    let (cp, pp) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let path = dir.0.join("zap.yml");
    std::fs::write(
        &path,
        format!(
            "name: z\ndata-dir: {}\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\nlogger: zap\nlog-outputs: [stderr]\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    let m = Member::new(
        Path::new(OXCD),
        dir,
        client,
        vec!["--config-file".into(), path.clone()],
    );
    let mut m = m;
    m.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = m.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("loaded server configuration"))
        {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // etcd's zap message, with the path as a field.
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["message"],
        "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
    );
    assert_eq!(v["path"], path.as_str());
}
