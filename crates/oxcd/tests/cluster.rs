//! Three real `oxcd` processes on loopback ports: replication, follower writes, leader
//! failure under load, catch-up by snapshot, partitions through a peer proxy, watches across
//! a leader change, and Debian's etcdctl against the whole cluster.
//!
//! Every test ends by comparing the recursive sorted listing of all members and checking
//! every acknowledged write (`oxcd_tests::cluster::check_converged`).

use std::path::Path;
use std::time::{Duration, Instant};

use oxcd_tests::cluster::{check_converged, get_json, try_put, Cluster, Load, FAST_TIMING};
use oxcd_tests::etcdctl_combined as etcdctl;
use oxcd_tests::request;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const WAIT: Duration = Duration::from_secs(20);

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = FAST_TIMING.to_vec();
    a.extend_from_slice(extra);
    a
}

#[test]
fn any_member_serves_writes_reads_and_cluster_endpoints() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    // Writes through every member, followers included (they forward to the leader).
    let mut acked = Vec::new();
    for i in 0..9 {
        let key = format!("any/k{i}");
        let idx = try_put(&c.members[i % 3].client_url, &key, &format!("v{i}"), WAIT)
            .unwrap_or_else(|| panic!("write {i} through member {} failed", i % 3));
        acked.push((key, format!("v{i}"), idx));
    }
    let last = acked.iter().map(|a| a.2).max().unwrap();
    check_converged(&c.listings(&[0, 1, 2], last, WAIT), &acked);

    // Same cluster ID everywhere, machines lists every client URL, one leader everywhere.
    let mut cluster_ids = Vec::new();
    for m in &c.members {
        let r = oxcd_tests::ureq::get(&format!("{}/v2/keys/any/k0", m.client_url))
            .call()
            .unwrap();
        cluster_ids.push(r.header("X-Etcd-Cluster-Id").unwrap_or("").to_string());
        assert!(r.header("X-Raft-Term").is_some() && r.header("X-Raft-Index").is_some());
        // Members publish their client URLs through raft once they see a leader, so a
        // member's list may complete a moment after the writes above.
        let deadline = Instant::now() + WAIT;
        loop {
            let machines = request(&m.client_url, "GET", "/v2/machines", None).body;
            if c.members.iter().all(|o| machines.contains(&o.client_url)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "incomplete /v2/machines: {machines}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let me = get_json(&m.client_url, "/v2/stats/self").unwrap();
        assert_eq!(me["leaderInfo"]["leader"], c.ids[leader].as_str());
    }
    assert!(!cluster_ids[0].is_empty() && cluster_ids.iter().all(|c| *c == cluster_ids[0]));

    // Self stats carry etcd's rates while appends flow: sent on the leader, received on a
    // follower (written just above, so within the last second).
    for i in 0..9 {
        try_put(
            &c.members[leader].client_url,
            "any/rate",
            &i.to_string(),
            WAIT,
        )
        .unwrap();
    }
    let lead = get_json(&c.members[leader].client_url, "/v2/stats/self").unwrap();
    assert!(lead["sendPkgRate"].as_f64().unwrap_or(0.0) > 0.0, "{lead}");
    let fol = get_json(&c.members[(leader + 1) % 3].client_url, "/v2/stats/self").unwrap();
    assert!(fol["recvPkgRate"].as_f64().unwrap_or(0.0) > 0.0, "{fol}");
    assert!(
        fol["recvBandwidthRate"].as_f64().unwrap_or(0.0) > 0.0,
        "{fol}"
    );

    // The leader reports both followers with successful deliveries; followers refuse.
    let stats = request(
        &c.members[leader].client_url,
        "GET",
        "/v2/stats/leader",
        None,
    );
    assert_eq!(stats.status, 200);
    let followers = stats.json()["followers"].as_object().unwrap().clone();
    assert_eq!(followers.len(), 2, "{}", stats.body);
    for (_, f) in followers {
        assert!(f["counts"]["success"].as_u64().unwrap() > 0);
        assert!(f["latency"]["average"].as_f64().unwrap() >= 0.0);
    }
    let follower = (leader + 1) % 3;
    let r = request(
        &c.members[follower].client_url,
        "GET",
        "/v2/stats/leader",
        None,
    );
    assert_eq!(r.status, 403);

    // Quorum reads through a follower.
    let r = request(
        &c.members[follower].client_url,
        "GET",
        "/v2/keys/any/k1?quorum=true",
        None,
    );
    assert_eq!(r.json()["node"]["value"], "v1");

    // TTL expiry is one replicated entry: every member sees the same expire index.
    let put = request(
        &c.members[follower].client_url,
        "PUT",
        "/v2/keys/any/ttl?ttl=1",
        Some("value=x"),
    );
    let created = put.json()["node"]["modifiedIndex"].as_u64().unwrap();
    let mut expire_index = Vec::new();
    for m in &c.members {
        let r = request(
            &m.client_url,
            "GET",
            &format!("/v2/keys/any/ttl?wait=true&waitIndex={}", created + 1),
            None,
        );
        let ev = r.json();
        assert_eq!(ev["action"], "expire", "{}", r.body);
        expire_index.push(ev["node"]["modifiedIndex"].as_u64().unwrap());
    }
    assert!(expire_index.iter().all(|i| *i == expire_index[0]));

    // Peer traffic from another cluster is refused, and said so in the log.
    let r = oxcd_tests::ureq::post(&format!("{}/raft", c.peer_urls[follower]))
        .set("X-Etcd-Cluster-ID", "deadbeef")
        .set("X-Server-From", "1")
        .send_bytes(&[]);
    assert!(
        matches!(r, Err(oxcd_tests::ureq::Error::Status(412, _))),
        "{r:?}"
    );
    assert!(c.members[follower]
        .log()
        .contains("rejected peer traffic from another cluster"));
    // Garbage from a peer of our own cluster is refused without harm.
    let r = oxcd_tests::ureq::post(&format!("{}/raft", c.peer_urls[follower]))
        .set("X-Etcd-Cluster-ID", &cluster_ids[0])
        .send_bytes(&[0, 0, 0, 9, 1, 2, 3]);
    assert!(
        matches!(r, Err(oxcd_tests::ureq::Error::Status(400, _))),
        "{r:?}"
    );

    // The message stream: refused to another cluster; a garbled frame ends the stream.
    let peer = c.peer_urls[follower]
        .trim_start_matches("http://")
        .to_string();
    let open_stream = |cluster: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&peer).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            s,
            "POST /raft/stream HTTP/1.1\r\nHost: {peer}\r\nConnection: Upgrade\r\n\
             Upgrade: oxcd-raft-stream/1\r\nX-Etcd-Cluster-ID: {cluster}\r\n\
             X-Server-From: 1\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        (s, String::from_utf8_lossy(&head).to_string())
    };
    let (_, head) = open_stream("deadbeef");
    assert!(head.starts_with("HTTP/1.1 412"), "{head}");
    let (mut s, head) = open_stream(&cluster_ids[0]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    {
        use std::io::{Read, Write};
        s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest);
        assert!(
            matches!(closed, Ok(0)),
            "the member closes a garbled stream: {closed:?}"
        );
    }
    assert!(c.members[follower]
        .log()
        .contains("undecodable raft message, closing the stream"));

    // Debian's etcdctl with all three endpoints, then with one member down (listed first).
    let eps = c.endpoints();
    let (ok, out) = etcdctl(&eps, &["set", "/ctl/a", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&eps, &["get", "/any/k4"]);
    assert!(ok && out.starts_with("v4"), "{out}");
    let (ok, out) = etcdctl(&eps, &["member", "list"]);
    assert!(ok && out.lines().count() >= 3, "{out}");
    let down = (leader + 2) % 3;
    c.members[down].kill();
    let eps_down_first = std::iter::once(c.members[down].client_url.clone())
        .chain(
            (0..3)
                .filter(|&i| i != down)
                .map(|i| c.members[i].client_url.clone()),
        )
        .collect::<Vec<_>>()
        .join(",");
    let (ok, out) = etcdctl(&eps_down_first, &["set", "/ctl/b", "2"]);
    assert!(ok, "etcdctl set with a member down: {out}");
    let (ok, out) = etcdctl(&eps_down_first, &["get", "/ctl/b"]);
    assert!(ok && out.starts_with('2'), "{out}");
    let (ok, out) = etcdctl(&eps_down_first, &["ls", "--recursive", "/ctl"]);
    assert!(
        ok && out.contains("/ctl/a") && out.contains("/ctl/b"),
        "{out}"
    );
    let (_, health) = etcdctl(&eps, &["cluster-health"]);
    assert!(health.contains("cluster is degraded"), "{health}");

    let alive: Vec<usize> = (0..3).filter(|&i| i != down).collect();
    let idx = request(&c.members[alive[0]].client_url, "GET", "/v2/keys/", None)
        .etcd_index
        .unwrap();
    let l = c.listings(&alive, idx, WAIT);
    check_converged(&l, &acked);
}

#[test]
fn leader_killed_under_write_load_then_restarted() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url.clone()).collect();
    let load = Load::start(urls, 4, "load");
    std::thread::sleep(Duration::from_millis(800));
    let old = c.wait_leader(&[0, 1, 2], WAIT);
    let before = load.acked_count();
    assert!(before > 0, "no write acknowledged before the kill");
    c.members[old].kill();
    let killed_at = Instant::now();
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c.wait_leader(&others, WAIT);
    let took = killed_at.elapsed();
    // A few election timeouts (500 ms each; typically ~1 s here), with slack for a 2-core
    // machine running other process tests at the same time.
    assert!(took < Duration::from_secs(10), "new leader after {took:?}");
    // Writers whose proposals were in flight to the dead leader wait for etcd's request
    // timeout (5 s + 2 election timeouts): their outcome is unknown, so they are not retried.
    // Fresh writes go through the new leader.
    let deadline = Instant::now() + WAIT;
    while load.acked_count() <= before + 10 {
        assert!(
            Instant::now() < deadline,
            "writes did not continue after the leader died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.members[old].restart();
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    let last = acked.iter().map(|a| a.2).max().unwrap();
    let l = c.listings(&[0, 1, 2], last, WAIT);
    check_converged(&l, &acked);
    eprintln!(
        "leader {old} killed, {new} elected after {took:?}; {} writes acknowledged",
        acked.len()
    );
}

#[test]
fn lagging_member_catches_up_through_a_snapshot() {
    let mut c = Cluster::start(
        oxcd(),
        3,
        &args(&["--snapshot-count", "100", "--max-snapshots", "2"]),
        false,
    );
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let lagging = (leader + 1) % 3;
    c.members[lagging].kill();
    let mut acked = Vec::new();
    for i in 0..350 {
        let key = format!("lag/k{i}");
        let idx = try_put(&c.members[leader].client_url, &key, "x", WAIT).expect("write");
        acked.push((key, "x".to_string(), idx));
    }
    c.members[lagging].restart();
    let last = acked.last().unwrap().2;
    let l = c.listings(&[0, 1, 2], last, WAIT);
    check_converged(&l, &acked);
    let log = c.members[lagging].log();
    assert!(
        log.contains("store replaced by the leader's snapshot"),
        "the lagging member did not get a snapshot; log:\n{log}"
    );
    // And it restarts from that snapshot on its own.
    c.members[lagging].restart();
    let l = c.listings(&[lagging], last, WAIT);
    check_converged(&[l[0].clone()], &acked);
}

/// A write to an isolated member: etcd's timeout error (500, errorCode 300).
fn assert_refused(url: &str, path: &str, form: Option<&str>) {
    let started = Instant::now();
    let method = if form.is_some() { "PUT" } else { "GET" };
    let r = request(url, method, path, form);
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.json()["errorCode"], 300, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refusal took {:?}",
        started.elapsed()
    );
}

#[test]
fn partitioned_member_refuses_majority_serves_and_heals() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), true);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let term = |c: &Cluster, i: usize| {
        oxcd_tests::ureq::get(&format!("{}/v2/keys/", c.members[i].client_url))
            .call()
            .ok()
            .and_then(|r| r.header("X-Raft-Term").and_then(|t| t.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let term_before = term(&c, leader);
    let proxy = c.proxy.as_ref().unwrap();

    // 1. A follower is cut off: the majority keeps its leader and serves; the follower
    //    refuses writes and quorum reads after the request timeout, but serves local reads.
    let cut = (leader + 1) % 3;
    let majority: Vec<String> = (0..3)
        .filter(|&i| i != cut)
        .map(|i| c.members[i].client_url.clone())
        .collect();
    proxy.isolate(cut);
    let load = Load::start(majority.clone(), 2, "part1");
    assert_refused(
        &c.members[cut].client_url,
        "/v2/keys/minority",
        Some("value=x"),
    );
    assert_refused(&c.members[cut].client_url, "/v2/keys/?quorum=true", None);
    let local = request(&c.members[cut].client_url, "GET", "/v2/keys/", None);
    assert_eq!(local.status, 200);
    let during = load.acked_count();
    assert!(during > 0, "the majority did not serve writes");
    proxy.heal();
    std::thread::sleep(Duration::from_millis(1500));
    // Pre-vote and check-quorum: the returning member did not depose the leader.
    assert_eq!(c.leader_among(&[0, 1, 2]), Some(leader));
    assert_eq!(
        term(&c, leader),
        term_before,
        "the rejoining member forced a new term"
    );
    let mut acked = load.stop();

    // 2. The leader is cut off: the other two elect a new one; the old one refuses.
    let proxy = c.proxy.as_ref().unwrap();
    proxy.isolate(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let urls: Vec<String> = others
        .iter()
        .map(|&i| c.members[i].client_url.clone())
        .collect();
    let load = Load::start(urls, 2, "part2");
    let new = c.wait_leader(&others, WAIT);
    assert_ne!(new, leader);
    assert_refused(
        &c.members[leader].client_url,
        "/v2/keys/old",
        Some("value=x"),
    );
    c.proxy.as_ref().unwrap().heal();
    std::thread::sleep(Duration::from_millis(500));
    acked.extend(load.stop());
    let last = acked.iter().map(|a| a.2).max().unwrap();
    let l = c.listings(&[0, 1, 2], last, WAIT);
    check_converged(&l, &acked);
    // The refused writes never reached a leader, so they never appear.
    let keys: Vec<String> = oxcd_tests::cluster::leaves(&l[0])
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(
        !keys.contains(&"/minority".to_string()),
        "a refused write was applied"
    );
    assert!(
        !keys.contains(&"/old".to_string()),
        "a refused write was applied"
    );
}

#[test]
fn follower_watch_sees_every_event_once_in_order_across_leader_change() {
    use std::io::BufRead;
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let watcher = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let start = request(&c.members[watcher].client_url, "GET", "/v2/keys/", None)
        .etcd_index
        .unwrap();
    let url = format!(
        "{}/v2/keys/w?wait=true&recursive=true&stream=true&waitIndex={}",
        c.members[watcher].client_url,
        start + 1
    );
    let total = 60;
    let (registered_tx, registered) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let resp = oxcd_tests::ureq::get(&url)
            .timeout(Duration::from_secs(60))
            .call()
            .expect("stream watch");
        // The answer's headers come once the watcher is registered. Writing before that
        // would let it find the first event in the history, and a stream watch answered from
        // the history gets only that event (as in etcd).
        let _ = registered_tx.send(());
        let mut r = std::io::BufReader::new(resp.into_reader());
        let mut events = Vec::new();
        while events.len() < total {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                events.push(v);
            }
        }
        events
    });
    registered
        .recv_timeout(WAIT)
        .expect("the stream watch was not registered in time");
    let mut acked = Vec::new();
    for i in 0..total {
        if i == total / 2 {
            c.members[leader].kill();
            c.wait_leader(&[watcher, third], WAIT);
        }
        let via = if i < total / 2 { leader } else { third };
        let key = format!("w/k{i}");
        let idx = loop {
            if let Some(idx) = try_put(&c.members[via].client_url, &key, "x", WAIT) {
                break idx;
            }
        };
        acked.push((key, "x".to_string(), idx));
    }
    let events = reader.join().unwrap();
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["node"]["key"].as_str().unwrap_or_default().to_string(),
                e["node"]["modifiedIndex"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = acked.iter().map(|a| (format!("/{}", a.0), a.2)).collect();
    assert_eq!(
        got, want,
        "the follower's watcher missed, repeated or reordered events"
    );
    c.members[leader].restart();
    let l = c.listings(&[0, 1, 2], acked.last().unwrap().2, WAIT);
    check_converged(&l, &acked);
}
