//! Bootstrap through a discovery service (`--discovery`), as etcd 3.4's `v2discovery`: real
//! `oxcd` processes register with a discovery token kept by Debian's etcd or by an `oxcd`
//! member, form a cluster with etcd's member and cluster IDs, and fail with etcd's messages
//! (exit 1) when the token has no size, a bad size, or is full; an unreachable service is
//! retried with etcd's backoff, each try logged; a restarted member does not contact the
//! service again; `--discovery-proxy` sends the traffic through an HTTP forward proxy.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxcd_tests::cluster::FAST_TIMING;
use oxcd_tests::{free_port, member_url_args, request, Member, TempDir, ETCD};
use serde_json::Value;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const WAIT: Duration = Duration::from_secs(20);

/// A member to bootstrap with `--discovery durl` (and `extra`), not started yet; its peer
/// URL is returned too.
fn discovery_member(name: &str, durl: &str, extra: &[&str]) -> (Member, String) {
    let dir = TempDir::new("disc");
    let (cp, pp) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let mut args = member_url_args(&dir.0.join("data"), &client, &peer);
    args.extend(["--name", name, "--discovery", durl].map(String::from));
    args.extend(FAST_TIMING.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    (Member::new(oxcd(), dir, client, args), peer)
}

/// Waits until `m`'s log contains `needle`.
fn wait_log(m: &Member, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if m.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Creates a token of `size` on the service at `service` (a client URL); its discovery URL.
fn new_token(service: &str, token: &str, size: &str) -> String {
    let r = request(
        service,
        "PUT",
        &format!("/v2/keys/discovery/{token}/_config/size"),
        Some(&format!("value={size}")),
    );
    assert!(r.status == 201 || r.status == 200, "{}", r.body);
    format!("{service}/v2/keys/discovery/{token}")
}

/// The members as `GET /v2/members` on `m` lists them: (id, name, peer URLs).
fn members(m: &Member) -> Vec<(String, String, Vec<String>)> {
    let r = request(&m.client_url, "GET", "/v2/members", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut out: Vec<(String, String, Vec<String>)> = r.json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
                m["peerURLs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A key's value on `m` once it is there (a follower applies a write shortly after the
/// leader acknowledged it).
fn read_eventually(m: &Member, key: &str) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let r = request(&m.client_url, "GET", &format!("/v2/keys/{key}"), None);
        if r.status == 200 {
            return r.json()["node"]["value"].as_str().map(str::to_string);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts three members on `durl` (`extra[i]` for member i), waits until each serves, and
/// checks the cluster: every member lists all three, with the IDs etcd derives for
/// discovery (peer URL and the discovery URL as token) and registered under the token, the
/// cluster ID derived from them; a write on one is read on the others.
fn form_cluster(service: &str, durl: &str, extra: [&[&str]; 3]) -> Vec<(Member, String)> {
    let mut ms: Vec<(Member, String)> = (0..3)
        .map(|i| discovery_member(&format!("infra{i}"), durl, extra[i]))
        .collect();
    for (m, _) in ms.iter_mut() {
        m.spawn_no_wait();
    }
    for (m, _) in &ms {
        m.wait_ready();
    }
    let mut expected: Vec<(String, String, Vec<String>)> = ms
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| {
            let id = oxcd::membership::compute_member_id(std::slice::from_ref(peer), durl, None);
            (
                oxcd::membership::id_to_string(id),
                format!("infra{i}"),
                vec![peer.clone()],
            )
        })
        .collect();
    expected.sort();
    for (m, _) in &ms {
        assert_eq!(members(m), expected, "member list on {}", m.client_url);
    }
    // The registrations: one key per member ID, `name=peerURL`.
    let token_path = durl.strip_prefix(service).unwrap();
    let r = request(service, "GET", &format!("{token_path}?sorted=true"), None);
    let mut registered: Vec<(String, String)> = r.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["key"].as_str().unwrap().ends_with("/_config"))
        .map(|n| {
            let key = n["key"].as_str().unwrap();
            (
                key.rsplit('/').next().unwrap().to_string(),
                n["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    registered.sort();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(id, name, peers)| (id.clone(), format!("{name}={}", peers[0])))
        .collect();
    assert_eq!(registered, want);
    let ids: Vec<u64> = expected
        .iter()
        .map(|(id, _, _)| u64::from_str_radix(id, 16).unwrap())
        .collect();
    let cluster_id = oxcd::membership::id_to_string(oxcd::membership::compute_cluster_id(&ids));
    let r = request(
        &ms[0].0.client_url,
        "PUT",
        "/v2/keys/greeting",
        Some("value=hello"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    for (m, _) in &ms {
        assert_eq!(read_eventually(m, "greeting").as_deref(), Some("hello"));
        let r = ureq_cluster_id(&m.client_url);
        assert_eq!(r, cluster_id, "X-Etcd-Cluster-Id of {}", m.client_url);
    }
    ms
}

fn ureq_cluster_id(base: &str) -> String {
    oxcd_tests::ureq::get(&format!("{base}/v2/keys/greeting"))
        .call()
        .ok()
        .and_then(|r| r.header("X-Etcd-Cluster-Id").map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn etcd_as_discovery_service_full_cluster_and_restart_without_service() {
    assert!(
        Path::new(ETCD).exists(),
        "Debian etcd-server is required: apt-get install etcd-server etcd-client"
    );
    let mut service = Member::start(Path::new(ETCD), &[]);
    let durl = new_token(&service.client_url, "etcd-token", "3");
    let mut ms = form_cluster(&service.client_url, &durl, [&[], &[], &[]]);

    // A fourth member finds the cluster full: with --discovery-fallback exit it exits 1
    // with etcd's message, without registering.
    let (mut fourth, _) = discovery_member("infra3", &durl, &["--discovery-fallback", "exit"]);
    fourth.spawn_no_wait();
    let status = fourth
        .wait_exit_status(WAIT)
        .expect("the fourth member exits");
    assert_eq!(status.code(), Some(1), "{}", fourth.log());
    let log = fourth.log();
    assert!(
        log.contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "discovery token {durl} was used, but failed to bootstrap the cluster."
        )),
        "{log}"
    );
    // With the default fallback (proxy), etcd's line, and it serves as a proxy of the
    // discovered cluster on its client URL.
    let (mut fifth, _) = discovery_member("infra4", &durl, &[]);
    fifth.spawn();
    let log = fifth.log();
    assert!(
        log.contains("discovery cluster full, falling back to proxy"),
        "{log}"
    );
    assert_eq!(
        read_eventually(&fifth, "greeting").as_deref(),
        Some("hello")
    );
    let r = request(
        &fifth.client_url,
        "PUT",
        "/v2/keys/through-proxy",
        Some("value=p"),
    );
    assert_eq!(
        r.status, 201,
        "a write through the fallback proxy: {}",
        r.body
    );
    assert_eq!(
        read_eventually(&ms[0].0, "through-proxy").as_deref(),
        Some("p")
    );
    let r = request(
        &service.client_url,
        "GET",
        "/v2/keys/discovery/etcd-token",
        None,
    );
    assert_eq!(
        r.json()["node"]["nodes"].as_array().unwrap().len(),
        3,
        "only the three members (`_config` is hidden): {}",
        r.body
    );

    // The service goes away; a member restarted on its data dir does not need it.
    service.kill();
    let (m, _) = &mut ms[2];
    m.restart();
    assert!(
        m.log()
            .contains("discovery token ignored since a cluster has already been initialized"),
        "{}",
        m.log()
    );
    let r = request(
        &ms[0].0.client_url,
        "PUT",
        "/v2/keys/after",
        Some("value=restart"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        read_eventually(&ms[2].0, "after").as_deref(),
        Some("restart")
    );
    assert_eq!(members(&ms[2].0).len(), 3);
    // The fallback proxy restarts from its cluster file, without the discovery service.
    fifth.restart();
    assert!(fifth.log().contains("from cluster file"), "{}", fifth.log());
    assert_eq!(read_eventually(&fifth, "after").as_deref(), Some("restart"));
}

/// A tiny HTTP forward proxy: takes absolute-URI requests, forwards them to the named host
/// in origin form and relays the answer; records every request line it received.
fn forward_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let _ = relay(conn, &log);
            });
        }
    });
    (url, seen)
}

fn relay(mut client: TcpStream, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let (line, rest) = head.split_once("\r\n").unwrap();
    log.lock().unwrap().push(line.to_string());
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Some(after) = target.strip_prefix("http://") else {
        client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let mut upstream = TcpStream::connect(authority)?;
    upstream.write_all(format!("{method} {path} {version}\r\n{rest}").as_bytes())?;
    let mut from_client = client.try_clone()?;
    let mut to_upstream = upstream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(std::net::Shutdown::Write);
    });
    std::io::copy(&mut upstream, &mut client)?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

#[test]
fn oxcd_as_discovery_service_and_discovery_proxy() {
    let service = Member::start(oxcd(), &[]);
    let durl = new_token(&service.client_url, "oxcd-token", "3");
    let (proxy, seen) = forward_proxy();
    // The third member talks to the service only through the proxy.
    let ms = form_cluster(
        &service.client_url,
        &durl,
        [&[], &[], &["--discovery-proxy", &proxy]],
    );
    let id = oxcd::membership::id_to_string(oxcd::membership::compute_member_id(
        &[ms[2].1.clone()],
        &durl,
        None,
    ));
    let seen = seen.lock().unwrap().clone();
    let token_path = durl.strip_prefix(&service.client_url).unwrap();
    let origin = &service.client_url;
    for want in [
        format!("GET {origin}{token_path}/_config/size?"),
        format!("PUT {origin}{token_path}/{id}?prevExist=false HTTP/1.1"),
    ] {
        assert!(
            seen.iter().any(|l| l.starts_with(&want)),
            "{want} not among the proxied requests: {seen:?}"
        );
    }
    assert!(
        ms[2].0.log().contains(&format!("using proxy \"{proxy}\"")),
        "{}",
        ms[2].0.log()
    );
    // The others went straight to the service: every proxied request is the third's.
    let other = oxcd::membership::id_to_string(oxcd::membership::compute_member_id(
        &[ms[0].1.clone()],
        &durl,
        None,
    ));
    assert!(seen.iter().all(|l| !l.contains(&other)), "{seen:?}");
}

#[test]
fn tokens_without_size_or_with_a_bad_size_exit_1() {
    let service = Member::start(oxcd(), &[]);
    let base = &service.client_url;
    let cases: [(String, &str); 2] = [
        (
            format!("{base}/v2/keys/discovery/no-size"),
            // etcd 3.4's client error (its "size key not found" check never matches).
            "failed to join discovery cluster (100: Key not found (/discovery",
        ),
        (
            new_token(base, "bad-size", "three"),
            "failed to join discovery cluster (discovery: size key is bad)",
        ),
    ];
    for (durl, message) in cases {
        let (mut m, _) = discovery_member("infra0", &durl, &[]);
        m.spawn_no_wait();
        let status = m.wait_exit_status(WAIT).expect("the member exits");
        assert_eq!(status.code(), Some(1), "{}", m.log());
        let log = m.log();
        assert!(log.contains(message), "{message}: {log}");
        assert!(
            log.contains("please generate a new discovery token and try to bootstrap again."),
            "{log}"
        );
        assert!(
            !m.dir.0.join("data").join("member").join("wal").exists(),
            "no WAL after a failed discovery"
        );
    }
    // Nothing was registered under either token (`_config` is a hidden key).
    let r = request(base, "GET", "/v2/keys/discovery/bad-size", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["node"]["nodes"], Value::Null, "{}", r.body);
    let r = request(base, "GET", "/v2/keys/discovery/no-size", None);
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn unreachable_service_is_retried_with_etcds_backoff() {
    // Nothing listens on this port.
    let port = free_port();
    let durl = format!("http://127.0.0.1:{port}/v2/keys/discovery/gone");
    let (mut m, _) = discovery_member("infra0", &durl, &[]);
    m.spawn_no_wait();
    let started = Instant::now();
    let first = format!(
        "cluster status check: error connecting to http://127.0.0.1:{port}, retrying in 2s"
    );
    assert!(wait_log(&m, &first, WAIT), "{}", m.log());
    assert!(
        m.log().contains(&format!(
            "error #0: dial tcp 127.0.0.1:{port}: connect: connection refused"
        )),
        "{}",
        m.log()
    );
    let second = format!(
        "cluster status check: error connecting to http://127.0.0.1:{port}, retrying in 4s"
    );
    assert!(wait_log(&m, &second, WAIT), "{}", m.log());
    // The second try came after the first backoff (2 s), not at once.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(m.is_alive(), "still retrying, as etcd: {}", m.log());
    // etcd's retries (2^32 of them, at most 256 s apart) outlast any test: stop it here.
    m.kill();
    assert!(!m.dir.0.join("data").join("member").join("wal").exists());
}
