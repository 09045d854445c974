//! etcd's own v2 CLI against oxcd's auth API: `ETCDCTL_API=2 etcdctl user ...`,
//! `role ...`, `auth ...` and `--username`, run against Debian's etcd and against oxcd,
//! must print the same output and exit with the same code.

use std::path::Path;
use std::process::{Command, Stdio};

use oxcd_tests::{mask_etcdctl_index, Member, ETCD};

const ETCDCTL: &str = "/usr/bin/etcdctl";

fn etcdctl(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `user passwd` reads the new password from a terminal: run it under `script`'s pty.
fn etcdctl_passwd(endpoint: &str, extra: &str, user: &str, password: &str) -> (i32, String) {
    let cmd = format!("ETCDCTL_API=2 {ETCDCTL} --endpoints {endpoint} {extra} user passwd {user}");
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script");
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{password}").expect("write password");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for script");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    // The pty echoes the typed password: keep etcdctl's own lines.
    let lines: Vec<&str> = text.lines().filter(|l| *l != password).collect();
    (out.status.code().unwrap_or(-1), lines.join("\n"))
}

#[test]
fn ctl_v2_users_roles_and_auth_behave_as_against_etcd() {
    assert!(
        Path::new(ETCDCTL).exists(),
        "Debian etcd-client is required"
    );
    let etcd = Member::start(Path::new(ETCD), &[]);
    let oxcd = Member::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), &[]);
    let root = ["--username", "root:rootpw"];
    let script: Vec<Vec<&str>> = vec![
        vec!["role", "list"],
        vec!["user", "list"],
        vec!["role", "add", "foo"],
        vec!["role", "add", "foo"],
        vec!["role", "add", "root"],
        vec!["role", "list"],
        vec!["role", "get", "foo"],
        vec!["role", "get", "nope"],
        vec!["role", "grant", "--read", "--path", "/foo/*", "foo"],
        vec!["role", "grant", "--readwrite", "--path", "/bar", "foo"],
        vec!["role", "grant", "--read", "--path", "/foo/*", "foo"],
        vec!["role", "get", "foo"],
        vec!["role", "revoke", "--write", "--path", "/bar", "foo"],
        vec!["role", "revoke", "--write", "--path", "/never", "foo"],
        vec!["role", "get", "foo"],
        vec!["user", "add", "alice:pw"],
        vec!["user", "add", "alice:pw"],
        vec!["user", "list"],
        vec!["user", "get", "alice"],
        vec!["user", "get", "nobody"],
        vec!["user", "grant", "--roles", "foo", "alice"],
        vec!["user", "grant", "--roles", "foo", "alice"],
        vec!["user", "get", "alice"],
        vec!["user", "revoke", "--roles", "foo", "alice"],
        vec!["user", "revoke", "--roles", "foo", "alice"],
        vec!["user", "grant", "--roles", "foo", "alice"],
        vec!["set", "/foo/x", "1"],
        vec!["set", "/other", "2"],
        vec!["auth", "enable"],
        vec!["user", "add", "root:rootpw"],
        vec!["user", "get", "root"],
        vec!["auth", "enable"],
        vec!["auth", "enable"],
        // Auth on: the guest may still read and write; listings need root.
        vec!["get", "/foo/x"],
        vec!["user", "list"],
        vec!["--username", "root:wrong", "user", "list"],
        vec!["--username", "alice:pw", "user", "list"],
        [&root[..], &["user", "list"]].concat(),
        [&root[..], &["role", "list"]].concat(),
        [&root[..], &["role", "get", "guest"]].concat(),
        [
            &root[..],
            &["role", "revoke", "--readwrite", "--path", "/*", "guest"],
        ]
        .concat(),
        vec!["get", "/foo/x"],
        vec!["set", "/foo/x", "guest"],
        vec!["--username", "alice:pw", "get", "/foo/x"],
        vec!["--username", "alice:pw", "set", "/foo/x", "alice"],
        vec!["--username", "alice:pw", "get", "/other"],
        vec!["--username", "alice:bad", "get", "/foo/x"],
        [&root[..], &["get", "/other"]].concat(),
        [&root[..], &["user", "remove", "root"]].concat(),
        [&root[..], &["role", "remove", "root"]].concat(),
        vec!["auth", "disable"],
        vec!["--username", "alice:pw", "auth", "disable"],
        [&root[..], &["auth", "disable"]].concat(),
        vec!["auth", "disable"],
        vec!["role", "remove", "foo"],
        vec!["role", "remove", "foo"],
        vec!["user", "get", "alice"],
        vec!["user", "remove", "alice"],
        vec!["user", "remove", "alice"],
        vec!["user", "remove", "root"],
        vec!["user", "list"],
    ];
    let mut diffs = Vec::new();
    for args in &script {
        let e = etcdctl(&etcd.client_url, args);
        let o = etcdctl(&oxcd.client_url, args);
        let norm =
            |r: &(i32, String, String)| (r.0, mask_etcdctl_index(&r.1), mask_etcdctl_index(&r.2));
        let (ne, no) = (norm(&e), norm(&o));
        if ne != no {
            diffs.push(format!("etcdctl {args:?}\n  etcd: {ne:?}\n  oxcd: {no:?}"));
        }
    }
    // Password changes through the terminal prompt, then the new password works.
    for (extra, user, pw) in [("", "bob", "newpw"), ("", "nobody", "x")] {
        for m in [&etcd, &oxcd] {
            etcdctl(&m.client_url, &["user", "add", "bob:old"]);
        }
        let e = etcdctl_passwd(&etcd.client_url, extra, user, pw);
        let o = etcdctl_passwd(&oxcd.client_url, extra, user, pw);
        if e != o {
            diffs.push(format!("user passwd {user}\n  etcd: {e:?}\n  oxcd: {o:?}"));
        }
    }
    for m in [&etcd, &oxcd] {
        etcdctl(&m.client_url, &["user", "grant", "--roles", "root", "bob"]);
        etcdctl(&m.client_url, &["user", "add", "root:rootpw"]);
        etcdctl(&m.client_url, &["auth", "enable"]);
    }
    for args in [
        vec!["--username", "bob:old", "set", "/b", "1"],
        vec!["--username", "bob:newpw", "set", "/b", "1"],
    ] {
        let e = etcdctl(&etcd.client_url, &args);
        let o = etcdctl(&oxcd.client_url, &args);
        let norm =
            |r: &(i32, String, String)| (r.0, mask_etcdctl_index(&r.1), mask_etcdctl_index(&r.2));
        if norm(&e) != norm(&o) {
            diffs.push(format!("etcdctl {args:?}\n  etcd: {e:?}\n  oxcd: {o:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
