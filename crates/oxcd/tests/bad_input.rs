//! Bad input never stops the server: after each malformed request the server must still be
//! alive and serve a normal write and read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use oxcd_tests::{request, Member};

fn still_serves(m: &mut Member, tag: &str) {
    assert!(m.is_alive(), "server died after {tag}; log:\n{}", m.log());
    let r = request(&m.client_url, "PUT", "/v2/keys/alive", Some("value=yes"));
    assert!(r.status == 200 || r.status == 201, "after {tag}: {r:?}");
    let r = request(&m.client_url, "GET", "/v2/keys/alive", None);
    assert_eq!(r.json()["node"]["value"], "yes", "after {tag}");
}

fn raw(m: &Member, bytes: &[u8]) -> String {
    let addr = m.client_url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_requests_get_errors_and_the_server_keeps_serving() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--max-request-bytes", "4096"],
    );
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("PUT", "/v2/keys/a?ttl=abc", Some("value=x"), 400),
        ("PUT", "/v2/keys/a?ttl=-3", Some("value=x"), 400),
        ("PUT", "/v2/keys/a?prevIndex=-1", Some("value=x"), 400),
        ("GET", "/v2/keys/a?wait=true&waitIndex=xyz", None, 400),
        ("PUT", "/v2/keys/a", Some("value=%zz"), 400),
        ("PUT", "/v2/keys/a", Some("value=a;b"), 400),
        ("PUT", "/v2/keys/%ff%fe", Some("value=%ff"), 201),
    ];
    for (method, path, form, status) in cases {
        let r = request(&m.client_url, method, path, *form);
        assert_eq!(r.status, *status, "{method} {path}: {r:?}");
        still_serves(&mut m, path);
    }
    // A body over --max-request-bytes.
    let big = format!("value={}", "x".repeat(10_000));
    let r = request(&m.client_url, "PUT", "/v2/keys/big", Some(&big));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["errorCode"], 210);
    still_serves(&mut m, "oversized body");
    // A very deep path.
    let deep = format!("/v2/keys{}", "/d".repeat(5_000));
    let r = request(&m.client_url, "PUT", &deep, Some("value=deep"));
    assert_eq!(r.status, 201);
    still_serves(&mut m, "deep path");
    // Garbage instead of HTTP.
    raw(&m, b"\x00\x01\x02garbage\r\n\r\n");
    raw(
        &m,
        b"GET /v2/keys/a HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    );
    still_serves(&mut m, "garbage bytes");
}

#[test]
fn many_watchers_that_disconnect_do_not_hurt() {
    let mut m = Member::start(Path::new(env!("CARGO_BIN_EXE_oxcd")), &[]);
    let addr = m.client_url.trim_start_matches("http://").to_string();
    // Thousands of watchers, within the file-descriptor limit both processes share.
    let watchers = open_files_limit().saturating_sub(100).clamp(100, 2000);
    let mut conns = Vec::new();
    for i in 0..watchers {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let req = format!(
            "GET /v2/keys/watched{}?wait=true HTTP/1.1\r\nHost: x\r\n\r\n",
            i % 10
        );
        s.write_all(req.as_bytes()).unwrap();
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(conns); // abrupt disconnects
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        request(
            &m.client_url,
            "PUT",
            &format!("/v2/keys/watched{i}"),
            Some("value=v"),
        );
    }
    still_serves(&mut m, "watchers disconnecting");
    let stats = request(&m.client_url, "GET", "/v2/stats/store", None).json();
    assert_eq!(stats["watchers"], 0, "watchers left behind: {stats}");
}

/// The soft limit on open files of this process (Linux), 1024 if unknown.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}
