//! Differential tests of the v2 keys API: every request goes to a fresh Debian etcd 3.4
//! (`--enable-v2=true`) and a fresh oxcd; status, normalized JSON body, Content-Type and
//! `X-Etcd-Index` must match (indexes relative to each server's index at the start).

use std::path::Path;
use std::time::Duration;

use oxcd_tests::{normalized, request, Pair, Reply};

fn pair() -> Pair {
    Pair::start(Path::new(env!("CARGO_BIN_EXE_oxcd")))
}

/// The comparisons of this file's tables.
trait Check {
    fn check(&mut self, method: &str, path: &str, form: Option<&str>);
    fn compare(&mut self, method: &str, path: &str, form: Option<&str>, e: &Reply, o: &Reply);
}

impl Check for Pair {
    /// Sends a request to both; `{n}` in the path is replaced by base+n for each server.
    fn check(&mut self, method: &str, path: &str, form: Option<&str>) {
        let pe = templ(path, self.etcd_base);
        let po = templ(path, self.oxcd_base);
        let e = request(&self.etcd.client_url, method, &pe, form);
        let o = request(&self.oxcd.client_url, method, &po, form);
        self.compare(method, path, form, &e, &o);
    }

    fn compare(&mut self, method: &str, path: &str, form: Option<&str>, e: &Reply, o: &Reply) {
        let ne = normalized(e, self.etcd_base);
        let no = normalized(o, self.oxcd_base);
        if ne != no {
            self.mismatches.push(format!(
                "{method} {path} {form:?}\n  etcd: {ne:?}\n  oxcd: {no:?}"
            ));
        }
    }
}

fn templ(path: &str, base: u64) -> String {
    let mut out = path.to_string();
    while let Some(start) = out.find('{') {
        let end = out[start..]
            .find('}')
            .map(|e| e + start)
            .expect("closing brace");
        let n: u64 = out[start + 1..end].parse().expect("number in braces");
        out.replace_range(start..=end, &(base + n).to_string());
    }
    out
}

type Step = (&'static str, &'static str, Option<&'static str>);

fn run(steps: &[Step]) {
    let mut p = pair();
    for (m, path, form) in steps {
        p.check(m, path, *form);
    }
    p.finish();
}

#[test]
fn keys_set_get_create_update_delete() {
    run(&[
        ("PUT", "/v2/keys/message", Some("value=Hello world")),
        ("GET", "/v2/keys/message", None),
        ("PUT", "/v2/keys/message", Some("value=Hello etcd")),
        ("GET", "/v2/keys/nope", None),
        ("PUT", "/v2/keys/message?prevExist=false", Some("value=x")),
        ("PUT", "/v2/keys/new?prevExist=true", Some("value=x")),
        ("PUT", "/v2/keys/new?prevExist=false", Some("value=x")),
        ("PUT", "/v2/keys/new?prevExist=true", Some("value=y")),
        ("PUT", "/v2/keys/new?prevValue=y", Some("value=z")),
        ("PUT", "/v2/keys/new?prevValue=nope", Some("value=z")),
        ("PUT", "/v2/keys/new?prevIndex=1", Some("value=z")),
        (
            "PUT",
            "/v2/keys/new?prevIndex=1&prevValue=nope",
            Some("value=z"),
        ),
        ("PUT", "/v2/keys/new?prevIndex={5}", Some("value=w")),
        ("DELETE", "/v2/keys/new?prevValue=nope", None),
        ("DELETE", "/v2/keys/new?prevValue=w", None),
        ("DELETE", "/v2/keys/message", None),
        ("DELETE", "/v2/keys/message", None),
        ("GET", "/v2/keys/message", None),
        ("PUT", "/v2/keys/a/b/c", Some("value=deep")),
        ("GET", "/v2/keys/a/b/c/d", None),
        ("PUT", "/v2/keys/a/b/c/d", Some("value=x")),
        ("GET", "/v2/keys/a?recursive=true&sorted=true", None),
        ("DELETE", "/v2/keys/a", None),
        ("DELETE", "/v2/keys/a?dir=true", None),
        ("DELETE", "/v2/keys/a?recursive=true", None),
        ("GET", "/v2/keys/?recursive=true", None),
        ("PUT", "/v2/keys/x", Some("value=1&noValueOnSuccess=true")),
        ("HEAD", "/v2/keys/x", None),
        ("GET", "/v2/keys/x?quorum=true", None),
    ]);
}

#[test]
fn directories_in_order_keys_hidden_keys() {
    run(&[
        ("PUT", "/v2/keys/dir", Some("dir=true")),
        ("PUT", "/v2/keys/dir", Some("dir=true")),
        ("PUT", "/v2/keys/dir", Some("value=x")),
        ("PUT", "/v2/keys/dir?prevExist=true", Some("value=x")),
        ("GET", "/v2/keys/dir", None),
        ("POST", "/v2/keys/queue", Some("value=Job1")),
        ("POST", "/v2/keys/queue", Some("value=Job2")),
        ("GET", "/v2/keys/queue?recursive=true&sorted=true", None),
        ("PUT", "/v2/keys/_hidden", Some("value=secret")),
        ("PUT", "/v2/keys/visible", Some("value=open")),
        ("GET", "/v2/keys/?sorted=true", None),
        ("GET", "/v2/keys/_hidden", None),
        ("DELETE", "/v2/keys/dir", None),
        ("DELETE", "/v2/keys/dir?dir=true", None),
        ("DELETE", "/v2/keys/queue?dir=true", None),
        ("DELETE", "/v2/keys/", None),
        ("PUT", "/v2/keys/", Some("value=x")),
        ("PUT", "/v2/keys/visible/child", Some("value=x")),
    ]);
}

#[test]
fn bad_parameters_get_etcds_error_codes() {
    run(&[
        ("PUT", "/v2/keys/k?ttl=abc", Some("value=x")),
        ("PUT", "/v2/keys/k?ttl=-1", Some("value=x")),
        ("PUT", "/v2/keys/k?prevIndex=abc", Some("value=x")),
        ("GET", "/v2/keys/k?waitIndex=abc&wait=true", None),
        ("GET", "/v2/keys/k?recursive=maybe", None),
        ("PUT", "/v2/keys/k?prevValue=", Some("value=x")),
        ("PUT", "/v2/keys/k?prevExist=maybe", Some("value=x")),
        ("PUT", "/v2/keys/k?wait=true", Some("value=x")),
        ("PUT", "/v2/keys/k?refresh=true", Some("value=x&ttl=5")),
        ("PUT", "/v2/keys/k?refresh=true", None),
        ("PUT", "/v2/keys/k?a=%zz", Some("value=x")),
        ("PATCH", "/v2/keys/k", Some("value=x")),
        ("GET", "/v2/nothing", None),
        ("GET", "/v2/keys//a", None),
    ]);
}

#[test]
fn ttl_refresh_and_expiry() {
    let mut p = pair();
    p.check("PUT", "/v2/keys/t", Some("value=v&ttl=100"));
    p.check("GET", "/v2/keys/t", None);
    p.check(
        "PUT",
        "/v2/keys/t?refresh=true&prevExist=true",
        Some("ttl=200"),
    );
    p.check("PUT", "/v2/keys/t?prevExist=true", Some("value=v&ttl="));
    p.check("GET", "/v2/keys/t", None);
    p.check("PUT", "/v2/keys/tdir?dir=true&ttl=100", None);
    p.check("PUT", "/v2/keys/tdir?dir=true&prevExist=true&ttl=200", None);
    // etcd's event reports the new modifiedIndex, but the directory keeps its old one in
    // the store: the directory itself and its parent's listing show it.
    p.check("GET", "/v2/keys/tdir", None);
    p.check("GET", "/v2/keys/?recursive=true&sorted=true", None);
    p.check(
        "PUT",
        "/v2/keys/tdir",
        Some("dir=true&prevExist=true&ttl=300"),
    );
    p.check("GET", "/v2/keys/?sorted=true", None);
    p.check("PUT", "/v2/keys/gone", Some("value=v&ttl=1"));
    std::thread::sleep(Duration::from_millis(2600));
    p.check("GET", "/v2/keys/gone", None);
    // The expire event is in the history.
    p.check("GET", "/v2/keys/gone?wait=true&waitIndex={7}", None);
    p.finish();
}

#[test]
fn watches_long_poll_and_history() {
    let mut p = pair();
    p.check("PUT", "/v2/keys/w", Some("value=1"));
    p.check("PUT", "/v2/keys/w", Some("value=2"));
    p.check("GET", "/v2/keys/w?wait=true&waitIndex={1}", None);
    p.check(
        "GET",
        "/v2/keys/?wait=true&recursive=true&waitIndex={2}",
        None,
    );
    // Long poll: both wait, then one write wakes both.
    let (eu, ou) = (p.etcd.client_url.clone(), p.oxcd.client_url.clone());
    let we = std::thread::spawn(move || request(&eu, "GET", "/v2/keys/w?wait=true", None));
    let wo = std::thread::spawn(move || request(&ou, "GET", "/v2/keys/w?wait=true", None));
    // Give both watchers time to register, also on a loaded machine.
    std::thread::sleep(Duration::from_millis(1200));
    p.check("PUT", "/v2/keys/w", Some("value=3"));
    let (e, o) = (we.join().unwrap(), wo.join().unwrap());
    p.compare("GET", "/v2/keys/w?wait=true (long poll)", None, &e, &o);
    // Overflow the 1000-event history: the oldest index is cleared (401).
    for i in 0..1010 {
        let f = format!("value={i}");
        request(&p.etcd.client_url, "PUT", "/v2/keys/many", Some(&f));
        request(&p.oxcd.client_url, "PUT", "/v2/keys/many", Some(&f));
    }
    p.check("GET", "/v2/keys/w?wait=true&waitIndex={1}", None);
    p.finish();
}

/// Reads `n` event lines of a `stream=true` watch.
fn stream_lines(base: String, path: String, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let resp = oxcd_tests::ureq::get(&format!("{base}{path}"))
        .timeout(Duration::from_secs(10))
        .call()
        .expect("stream watch");
    let mut reader = std::io::BufReader::new(resp.into_reader());
    let mut out = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        out.push(line);
    }
    out
}

#[test]
fn stream_watch_delivers_every_event() {
    let mut p = pair();
    let (eu, ou) = (p.etcd.client_url.clone(), p.oxcd.client_url.clone());
    let path = "/v2/keys/s?wait=true&stream=true&recursive=true".to_string();
    let (pe, po) = (path.clone(), path.clone());
    let we = std::thread::spawn(move || stream_lines(eu, pe, 3));
    let wo = std::thread::spawn(move || stream_lines(ou, po, 3));
    // Give both watchers time to register, also on a loaded machine.
    std::thread::sleep(Duration::from_millis(1200));
    p.check("PUT", "/v2/keys/s/a", Some("value=1"));
    p.check("PUT", "/v2/keys/s/b", Some("value=2"));
    p.check("DELETE", "/v2/keys/s/a", None);
    let (e, o) = (we.join().unwrap(), wo.join().unwrap());
    assert_eq!(e.len(), 3, "etcd sent {e:?}");
    let norm = |lines: &[String], base: u64| -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                oxcd_tests::normalize(&mut v, base);
                v
            })
            .collect()
    };
    assert_eq!(norm(&e, p.etcd_base), norm(&o, p.oxcd_base));
    p.finish();
}

#[test]
fn metrics_and_stats_endpoints() {
    let mut p = pair();
    p.check("PUT", "/v2/keys/m", Some("value=1"));
    p.check("GET", "/v2/keys/m", None);
    let o = request(&p.oxcd.client_url, "GET", "/metrics", None);
    assert_eq!(o.status, 200);
    for name in [
        "etcd_http_received_total",
        "etcd_http_successful_duration_seconds_bucket",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_has_leader 1",
    ] {
        assert!(o.body.contains(name), "/metrics lacks {name}");
    }
    // Same keys as etcd in /v2/stats/self and /v2/stats/store, /version, /v2/stats/leader.
    for path in [
        "/v2/stats/self",
        "/v2/stats/store",
        "/version",
        "/v2/stats/leader",
    ] {
        let e = request(&p.etcd.client_url, "GET", path, None).json();
        let o = request(&p.oxcd.client_url, "GET", path, None).json();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(keys(&e), keys(&o), "{path}: {e} vs {o}");
    }
    p.check("GET", "/health", None);
    p.check("POST", "/version", None);
    p.finish();
}

#[test]
fn json_strings_are_escaped_byte_for_byte_as_etcd_escapes_them() {
    // Go's encoder escapes <, >, &, U+2028, U+2029 and writes \b and \f as \u0008 and
    // \u000c; the bodies must be the same bytes, not only the same JSON.
    let p = pair();
    let value = "a%08b%0Cc%0Ad%0De%09f%7Fg%E2%80%A8h%E2%80%A9i%1Fj%3C%3E%26%22%5C%2F%C3%A9";
    let steps = [
        (
            "PUT",
            "/v2/keys/x%3Cy%26z".to_string(),
            Some(format!("value={value}")),
        ),
        ("GET", "/v2/keys/x%3Cy%26z".to_string(), None),
        ("GET", "/v2/keys/nokey%3C%26%3E".to_string(), None),
        (
            "PUT",
            "/v2/keys/x%3Cy%26z?prevValue=%3C".to_string(),
            Some("value=1".to_string()),
        ),
    ];
    for (method, path, form) in &steps {
        let e = request(&p.etcd.client_url, method, path, form.as_deref());
        let o = request(&p.oxcd.client_url, method, path, form.as_deref());
        // Indexes differ only by each server's starting index.
        let shift = |body: &str, base: u64| {
            body.replace(&format!(":{}", base + 1), ":BASE+1")
                .replace(&format!(":{base},"), ":BASE,")
                .replace(&format!(":{base}}}"), ":BASE}")
        };
        let (be, bo) = (shift(&e.body, p.etcd_base), shift(&o.body, p.oxcd_base));
        assert_eq!(be, bo, "{method} {path}: bodies differ");
        assert!(
            be.contains("\\u003c"),
            "{method} {path}: nothing escaped in {be}"
        );
    }
    p.finish();
}

/// One answer read off a raw connection: status, header names (sorted), and the reply.
struct RawAnswer {
    header_names: Vec<String>,
    reply: Reply,
}

/// Splits a connection's bytes into its HTTP/1.1 answers (Content-Length or chunked).
fn split_answers(mut bytes: &[u8]) -> Vec<RawAnswer> {
    let mut answers = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().expect("status line")[9..12]
            .parse()
            .expect("status code");
        let mut header_names = Vec::new();
        let (mut length, mut chunked, mut etcd_index, mut content_type) = (0, false, None, "");
        for line in lines {
            let (name, value) = line.split_once(": ").expect("a header line");
            header_names.push(name.to_string());
            match name {
                "Content-Length" => length = value.parse().expect("a length"),
                "Transfer-Encoding" => chunked = value == "chunked",
                "X-Etcd-Index" => etcd_index = value.parse().ok(),
                "Content-Type" => content_type = value,
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let eol = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size");
                let size = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).unwrap(), 16)
                    .expect("hex chunk size");
                body.extend_from_slice(&bytes[eol + 2..eol + 2 + size]);
                bytes = &bytes[eol + 2 + size + 2..];
                if size == 0 {
                    break;
                }
            }
        } else {
            body.extend_from_slice(&bytes[..length]);
            bytes = &bytes[length..];
        }
        header_names.sort();
        answers.push(RawAnswer {
            header_names,
            reply: Reply {
                status,
                etcd_index,
                content_type: content_type.to_string(),
                body: String::from_utf8_lossy(&body).into_owned(),
            },
        });
    }
    answers
}

/// Sends `requests` in one write on one connection and reads until the server closes it.
fn pipelined(client_url: &str, requests: &[u8]) -> Vec<RawAnswer> {
    use std::io::{Read, Write};
    let addr = client_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(requests).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("read until the server closes");
    split_answers(&out)
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let mut p = pair();
    let form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n";
    // Go's server refuses an HTTP/1.1 request without Host: every request names one.
    let requests = [
        "GET /v2/keys/pipe/a HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        format!("PUT /v2/keys/pipe/a HTTP/1.1\r\nHost: h\r\n{form}\r\nvalue=1"),
        "GET /v2/keys/pipe/a HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        format!("POST /v2/keys/pipe/q HTTP/1.1\r\nHost: h\r\n{form}\r\nvalue=x"),
        format!("PUT /v2/keys/pipe/a?prevValue=9 HTTP/1.1\r\nHost: h\r\n{form}\r\nvalue=2"),
        "GET /v2/keys/pipe?recursive=true&sorted=true HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        // A watch answered from the history, then more requests after it.
        "GET /v2/keys/pipe/a?wait=true&waitIndex={1} HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        "DELETE /v2/keys/pipe/a HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        "GET /v2/keys/pipe/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_string(),
    ];
    let (eb, ob) = (p.etcd_base, p.oxcd_base);
    let send = |url: &str, base: u64| {
        let all: String = requests.iter().map(|r| templ(r, base)).collect();
        pipelined(url, all.as_bytes())
    };
    let e = send(&p.etcd.client_url, eb);
    let o = send(&p.oxcd.client_url, ob);
    assert_eq!(e.len(), requests.len(), "etcd answers every request");
    assert_eq!(
        o.len(),
        requests.len(),
        "oxcd answers every request, in one connection"
    );
    for ((req, e), o) in requests.iter().zip(&e).zip(&o) {
        let line = req.lines().next().unwrap_or_default();
        p.compare("pipelined", line, None, &e.reply, &o.reply);
        if e.header_names != o.header_names {
            p.mismatches.push(format!(
                "{line}: header names\n  etcd: {:?}\n  oxcd: {:?}",
                e.header_names, o.header_names
            ));
        }
    }
    p.finish();
}
