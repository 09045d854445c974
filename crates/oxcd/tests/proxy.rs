//! `--proxy on|readonly` with real processes: a three-member oxcd cluster, oxcd proxies in
//! front of it (and etcd 3.4's own proxy in front of the same cluster, for the error
//! answers), driven with HTTP requests, raw watch streams and Debian's `etcdctl`.
//!
//! Expected behaviour is etcd's (proxy/httpproxy, etcdmain/startProxy): every request is
//! forwarded to a member's client URL; a member that cannot be reached is skipped and the
//! request goes to the next one; with every member down the answer is 502
//! `{"message":"httpproxy: unable to get response from N endpoint(s)"}`, then, once every
//! endpoint is held failed, 503 `{"message":"httpproxy: zero endpoints currently
//! available"}`; a readonly proxy answers anything but GET with an empty 501; the peer URLs
//! are saved in `<data-dir>/proxy/cluster` so a restart needs no `--initial-cluster`.
//! Where oxcd differs on purpose: a `stream=true` watch is delivered event by event (etcd's
//! proxy buffers it).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxcd_tests::cluster::{check_converged, try_put, Cluster, FAST_TIMING};
use oxcd_tests::etcdctl_combined as etcdctl;
use oxcd_tests::{free_port, request, Member, TempDir, ETCD};
use serde_json::Value;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const WAIT: Duration = Duration::from_secs(20);

/// A proxy process (`binary`: oxcd or etcd) listening on a fresh port, not started yet.
fn proxy(binary: &Path, tag: &str, peers: &str, extra: &[&str]) -> Member {
    let dir = TempDir::new(tag);
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        dir.0.join("data").to_string_lossy().into_owned(),
        "--listen-client-urls".into(),
        url.clone(),
        "--initial-cluster".into(),
        peers.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Member::new(binary, dir, url, args)
}

/// `--initial-cluster` naming the cluster's members.
fn initial_cluster(c: &Cluster) -> String {
    c.peer_urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("m{i}={u}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The name of the member a proxy sends its requests to (`/v2/stats/self` answered there).
fn member_behind(proxy: &Member) -> usize {
    let r = request(&proxy.client_url, "GET", "/v2/stats/self", None);
    assert_eq!(r.status, 200, "{r:?}");
    let name = r.json()["name"].as_str().unwrap_or_default().to_string();
    name.strip_prefix('m')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("unexpected member name {name:?}"))
}

/// Opens a raw HTTP/1.1 request on `base` and returns the socket (for watches, read as
/// the bytes arrive).
fn open(base: &str, path: &str) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads from `s` into `got` until `want` appears; panics after `timeout`.
fn read_until(s: &mut std::net::TcpStream, got: &mut String, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !got.contains(want) {
        assert!(
            Instant::now() < deadline,
            "{want:?} did not arrive within {timeout:?}; got {got:?}"
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed before {want:?}; got {got:?}"),
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Waits until `f` holds; panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn proxy_forwards_watches_survives_a_member_kill_and_answers_as_etcd_when_all_are_down() {
    let mut c = Cluster::start(oxcd(), 3, FAST_TIMING, false);
    let peers = initial_cluster(&c);
    let mut px = proxy(oxcd(), "proxy-on", &peers, &["--proxy", "on"]);
    px.spawn();
    let mut ro = proxy(oxcd(), "proxy-ro", &peers, &["--proxy", "readonly"]);
    ro.spawn();
    let mut etcd_px = proxy(Path::new(ETCD), "etcd-proxy", &peers, &["--proxy", "on"]);
    etcd_px.spawn();
    let p = px.client_url.clone();
    assert!(
        px.log().contains("proxy: this proxy supports v2 API only!")
            && px.log().contains("endpoints found"),
        "{}",
        px.log()
    );

    // Keys through the proxy: set, get, delete; the members see the writes.
    let r = request(&p, "PUT", "/v2/keys/a", Some("value=1"));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.etcd_index.is_some(), "X-Etcd-Index is forwarded: {r:?}");
    let index = r.json()["node"]["modifiedIndex"].as_u64().unwrap();
    for m in &c.members {
        let deadline = Instant::now() + WAIT;
        loop {
            let g = request(&m.client_url, "GET", "/v2/keys/a", None);
            if g.status == 200 {
                assert_eq!(g.json()["node"]["value"], "1");
                break;
            }
            assert!(Instant::now() < deadline, "{g:?}");
        }
    }
    let g = request(&p, "GET", "/v2/keys/a", None);
    assert_eq!(
        (g.status, g.json()["node"]["value"].clone()),
        (200, "1".into())
    );
    let d = request(&p, "DELETE", "/v2/keys/a", None);
    assert_eq!(d.status, 200, "{d:?}");
    let g = request(&p, "GET", "/v2/keys/a", None);
    assert_eq!((g.status, g.json()["errorCode"].clone()), (404, 100.into()));
    assert!(g.json()["index"].as_u64().unwrap() > index);
    // Everything else a client asks is forwarded too.
    for path in [
        "/v2/members",
        "/v2/stats/self",
        "/v2/stats/store",
        "/version",
        "/v2/machines",
        "/health",
    ] {
        let r = request(&p, "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let machines = request(&p, "GET", "/v2/machines", None).body;
    for m in &c.members {
        assert!(machines.contains(&m.client_url), "{machines}");
    }
    let cfg = request(&p, "GET", "/v2/config/local/proxy", None).json();
    assert_eq!(cfg["endpoints"].as_array().map(Vec::len), Some(3), "{cfg}");

    // A long-poll watch and a stream watch, both through the proxy, from the next index.
    let next = request(&p, "GET", "/v2/keys/", None).etcd_index.unwrap() + 1;
    let long_poll = {
        let p = p.clone();
        std::thread::spawn(move || {
            request(
                &p,
                "GET",
                &format!("/v2/keys/w?wait=true&waitIndex={next}"),
                None,
            )
        })
    };
    let mut stream = open(
        &p,
        &format!("/v2/keys/s?wait=true&stream=true&waitIndex={next}"),
    );
    let mut got = String::new();
    assert_eq!(
        request(&p, "PUT", "/v2/keys/w", Some("value=x")).status,
        201
    );
    let r = long_poll.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["node"]["value"], "x");
    assert_eq!(r.json()["action"], "set");
    // Each event of the stream arrives before the next write is made.
    for (v, status) in [("s1", 201), ("s2", 200), ("s3", 200)] {
        assert_eq!(
            request(&p, "PUT", "/v2/keys/s", Some(&format!("value={v}"))).status,
            status
        );
        read_until(
            &mut stream,
            &mut got,
            &format!("\"value\":\"{v}\""),
            Duration::from_secs(5),
        );
    }
    drop(stream);

    // etcdctl (API v2) through the proxy, without and with its endpoint sync.
    let (ok, out) = etcdctl(&p, &["--no-sync", "set", "/ctl", "hello"]);
    assert!(ok && out.trim() == "hello", "{out}");
    let (ok, out) = etcdctl(&p, &["--no-sync", "get", "/ctl"]);
    assert!(ok && out.trim() == "hello", "{out}");
    let (ok, out) = etcdctl(&p, &["ls", "/"]);
    assert!(ok && out.contains("/ctl"), "{out}");

    // Readonly: GET is served, every other method gets etcd's empty 501.
    let ro_url = ro.client_url.clone();
    let g = request(&ro_url, "GET", "/v2/keys/ctl", None);
    assert_eq!(
        (g.status, g.json()["node"]["value"].clone()),
        (200, "hello".into())
    );
    for (method, form) in [
        ("PUT", Some("value=no")),
        ("POST", Some("value=no")),
        ("DELETE", None),
    ] {
        let r = request(&ro_url, method, "/v2/keys/ctl", form);
        assert_eq!((r.status, r.body.as_str()), (501, ""), "{method}: {r:?}");
    }
    assert_eq!(
        request(&p, "GET", "/v2/keys/ctl", None).json()["node"]["value"],
        "hello",
        "the readonly proxy changed nothing"
    );

    // The proxy restarts from its cluster file: no --initial-cluster needed.
    let file = px.dir.0.join("data").join("proxy").join("cluster");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut want: Vec<String> = c.peer_urls.clone();
    want.sort();
    assert_eq!(saved["PeerURLs"], serde_json::json!(want), "{saved}");
    px.kill();
    let mut restarted = Member::new(
        oxcd(),
        TempDir(px.dir.0.clone()),
        p.clone(),
        vec![
            "--proxy".into(),
            "on".into(),
            "--data-dir".into(),
            px.dir.0.join("data").to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            p.clone(),
            // Long enough that a failed member stays skipped until the test ends.
            "--proxy-failure-wait".into(),
            "60000".into(),
        ],
    );
    std::mem::forget(px); // its directory now belongs to `restarted`
    restarted.spawn();
    assert!(
        restarted.log().contains("from cluster file"),
        "{}",
        restarted.log()
    );
    assert_eq!(
        request(&p, "GET", "/v2/keys/ctl", None).json()["node"]["value"],
        "hello"
    );

    // A writer through the proxy while the member it uses is SIGKILLed: requests go on
    // succeeding (a write cut off in flight may fail once), and every acknowledged write is
    // in the cluster.
    let victim = member_behind(&restarted);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let results: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let writer = {
        let (stop, acked, results, p) = (
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&results),
            p.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/k{i}");
                let value = format!("v{i}");
                let r = try_put(&p, &key, &value, Duration::from_secs(10));
                results.lock().unwrap().push((Instant::now(), r.is_some()));
                if let Some(idx) = r {
                    acked.lock().unwrap().push((key, value, idx));
                }
                i += 1;
            }
        })
    };
    wait_for("writes before the kill", WAIT, || {
        acked.lock().unwrap().len() >= 20
    });
    let killed_at = Instant::now();
    c.members[victim].kill();
    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    // Writes resume and keep succeeding: 30 in a row after the kill.
    wait_for("30 consecutive writes after the kill", WAIT, || {
        let r = results.lock().unwrap();
        let after: Vec<bool> = r
            .iter()
            .filter(|(t, _)| *t > killed_at)
            .map(|(_, ok)| *ok)
            .collect();
        after.len() >= 30 && after[after.len() - 30..].iter().all(|ok| *ok)
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let failures = results.lock().unwrap().iter().filter(|(_, ok)| !ok).count();
    eprintln!(
        "member {victim} killed; {} writes, {failures} failed",
        results.lock().unwrap().len()
    );
    assert!(failures <= 5, "{failures} writes failed around the kill");
    assert_ne!(member_behind(&restarted), victim);
    assert!(
        restarted.log().contains(&format!(
            "marked endpoint {} unavailable",
            c.members[victim].client_url
        )),
        "{}",
        restarted.log()
    );
    let acked = acked.lock().unwrap().clone();
    let top = acked.iter().map(|a| a.2).max().unwrap();
    let listings = c.listings(&others, top, WAIT);
    check_converged(&listings, &acked);

    // Every member down: 502 with etcd's message while endpoints are tried, then 503 once
    // all are held failed. etcd's proxy answers the same.
    for &i in &others {
        c.members[i].kill();
    }
    for (name, base) in [("oxcd", &p), ("etcd", &etcd_px.client_url)] {
        let r = request(base, "GET", "/v2/keys/ctl", None);
        assert_eq!(r.status, 502, "{name}: {r:?}");
        assert_eq!(r.content_type, "application/json", "{name}");
        let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.starts_with("httpproxy: unable to get response from ")
                && msg.ends_with(" endpoint(s)"),
            "{name}: {r:?}"
        );
        let r = request(base, "PUT", "/v2/keys/ctl", Some("value=z"));
        assert_eq!(r.status, 503, "{name}: {r:?}");
        assert_eq!(
            r.body, r#"{"message":"httpproxy: zero endpoints currently available"}"#,
            "{name}"
        );
    }
    // etcd's readonly proxy refuses writes the same way.
    let mut etcd_ro = proxy(Path::new(ETCD), "etcd-ro", &peers, &["--proxy", "readonly"]);
    etcd_ro.spawn_no_wait();
    let deadline = Instant::now() + WAIT;
    let e = loop {
        let addr = etcd_ro.client_url.trim_start_matches("http://").to_string();
        if std::net::TcpStream::connect(&addr).is_ok() {
            break request(&etcd_ro.client_url, "PUT", "/v2/keys/x", Some("value=1"));
        }
        assert!(
            Instant::now() < deadline,
            "etcd's readonly proxy does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = request(&ro_url, "PUT", "/v2/keys/x", Some("value=1"));
    assert_eq!((e.status, e.body.as_str()), (o.status, o.body.as_str()));
}

#[test]
fn proxy_flags_are_validated_as_etcd_validates_them() {
    for (args, want) in [
        (
            &["--proxy", "bogus"][..],
            "invalid value \"bogus\" for flag -proxy: invalid value",
        ),
        (
            &["--proxy-failure-wait", "x"],
            "invalid value \"x\" for flag -proxy-failure-wait: parse error",
        ),
        (
            &["--proxy-read-timeout", "-1"],
            "invalid value \"-1\" for flag -proxy-read-timeout: parse error",
        ),
        (
            &["--proxy-dial-timeout", "99999999999999999999"],
            "invalid value \"99999999999999999999\" for flag -proxy-dial-timeout: value out of range",
        ),
    ] {
        for binary in [oxcd(), Path::new(ETCD)] {
            let out = Command::new(binary).args(args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{}: {args:?}", binary.display());
            assert!(err.contains(want), "{}: {args:?}: {err}", binary.display());
        }
    }
}
