//! etcd's own v2 CLI against oxcd: the same `ETCDCTL_API=2 etcdctl` commands run against
//! Debian's etcd and against oxcd must print the same output and exit with the same code.

use std::path::Path;
use std::process::Command;

use oxcd_tests::{mask_etcdctl_index, Member, ETCD};

const ETCDCTL: &str = "/usr/bin/etcdctl";

fn etcdctl(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_v2_commands_behave_as_against_etcd() {
    assert!(
        Path::new(ETCDCTL).exists(),
        "Debian etcd-client is required"
    );
    let etcd = Member::start(Path::new(ETCD), &[]);
    let oxcd = Member::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), &[]);
    let script: &[&[&str]] = &[
        &["set", "/foo", "bar"],
        &["get", "/foo"],
        &["mk", "/foo", "again"],
        &["mk", "/new", "v"],
        &["mkdir", "/dir"],
        &["mkdir", "/dir"],
        &["set", "/dir/a", "1"],
        &["set", "/dir/b", "2"],
        &["ls"],
        &["ls", "--recursive", "--sort", "/"],
        &["update", "/foo", "baz"],
        &["update", "/missing", "x"],
        &["set", "--swap-with-value", "baz", "/foo", "qux"],
        &["set", "--swap-with-value", "nope", "/foo", "x"],
        &["rm", "/dir"],
        &["rmdir", "/dir"],
        &["rm", "--recursive", "/dir"],
        &["setdir", "/sd"],
        &["updatedir", "/sd"],
        &["rmdir", "/sd"],
        &["get", "/dir/a"],
        &["-o", "json", "get", "/foo"],
        &["rm", "/foo"],
        &["get", "/foo"],
    ];
    let mut diffs = Vec::new();
    for args in script {
        let e = etcdctl(&etcd.client_url, args);
        let o = etcdctl(&oxcd.client_url, args);
        // Unsorted listings come in Go's random map order from etcd: compare them as sets.
        let unsorted = args[0] == "ls" && !args.contains(&"--sort");
        let norm = |r: &(i32, String, String)| {
            let mut out = mask_etcdctl_index(&r.1);
            if unsorted {
                let mut lines: Vec<&str> = out.lines().collect();
                lines.sort_unstable();
                out = lines.join("\n");
            }
            (r.0, out, mask_etcdctl_index(&r.2))
        };
        let (ne, no) = (norm(&e), norm(&o));
        // JSON output carries absolute indexes; compare it parsed and normalized.
        let same = if args[0] == "-o" {
            ne.0 == no.0 && {
                let mut je: serde_json::Value = serde_json::from_str(&e.1).unwrap_or_default();
                let mut jo: serde_json::Value = serde_json::from_str(&o.1).unwrap_or_default();
                oxcd_tests::normalize(&mut je, 0);
                oxcd_tests::normalize(&mut jo, 0);
                je.get("node").map(|n| n.get("value")) == jo.get("node").map(|n| n.get("value"))
                    && je.get("action") == jo.get("action")
            }
        } else {
            ne == no
        };
        if !same {
            diffs.push(format!("etcdctl {args:?}\n  etcd: {ne:?}\n  oxcd: {no:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn ctl_v2_watch_sees_a_change() {
    let oxcd = Member::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), &[]);
    let url = oxcd.client_url.clone();
    let watcher = std::thread::spawn(move || etcdctl(&url, &["watch", "/w"]));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, _, _) = etcdctl(&oxcd.client_url, &["set", "/w", "changed"]);
    assert_eq!(code, 0);
    let (code, out, err) = watcher.join().unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "changed\n");
}
