//! Runtime reconfiguration of real `oxcd` processes, driven as an operator drives etcd 3.4:
//! Debian's `etcdctl member add|remove|update|list` (API v2) and `curl` on `/v2/members`,
//! while writers keep writing. A cluster grows 1→3→5 and shrinks 5→3 (a follower, then the
//! leader), a member moves to a new peer URL, a failed member is replaced, the survivor of a
//! lost majority restarts with `--force-new-cluster`, and a member removed while it was down
//! is turned away by its peers (410 Gone). The members API's answers are compared with etcd's.
//!
//! Expected outputs are etcd's: etcdctl's lines (`Added member named ... with ID ... to
//! cluster` and the `ETCD_*` lines to start the new member with, `Removed member ...`,
//! `Updated member with ID ...`, `member list`'s format), a removed member stopping with
//! status 0 after logging that it was removed and that its data dir must go.
//!
//! With `--strict-reconfig-check` (on by default, as in etcd) a change is refused (500) until
//! the receiving member has been connected to every peer for 5 s and enough members have
//! started: every change is retried until it goes through, with a deadline, as an operator
//! would. Every test ends by comparing the listings of the live members and checking every
//! acknowledged write (`check_converged`).

use std::path::Path;
use std::time::{Duration, Instant};

use oxcd_tests::cluster::{check_converged, try_put, Ack, Cluster, Load, FAST_TIMING};
use oxcd_tests::etcdctl;
use oxcd_tests::{curl, free_port, member_url_args, Member, Pair, TempDir};
use serde_json::Value;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const WAIT: Duration = Duration::from_secs(20);
/// How long an operator retries a change the strict reconfiguration check refuses (5 s of
/// connection to every peer, a new member starting) before the test fails.
const CHANGE_WAIT: Duration = Duration::from_secs(30);
/// etcd's lines when a member finds it was removed (it then exits with status 0).
const REMOVED: &str = "the member has been permanently removed from the cluster";
const DATA_DIR_MUST_GO: &str = "the data-dir used by this member must be removed";
/// What a member logs when it installs a snapshot sent by the leader.
const GOT_SNAPSHOT: &str = "store replaced by the leader's snapshot";

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = FAST_TIMING.to_vec();
    a.extend_from_slice(extra);
    a
}

/// Runs `etcdctl args` until it succeeds (an operator retrying a refused change); its stdout.
fn etcdctl_until_ok(endpoint: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + CHANGE_WAIT;
    loop {
        let (ok, out, err) = etcdctl(endpoint, args);
        if ok {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} via {endpoint} still refused after {CHANGE_WAIT:?}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn new_peer_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// `name=peerURL` of member `i` of `c` (members are named `m<i>`).
fn entry(c: &Cluster, i: usize) -> String {
    format!("m{i}={}", c.peer_urls[i])
}

/// `etcdctl member add <name> <peer>` (retried while refused), checked against etcd's
/// output: the new member's ID and the environment to start it with. `existing` are the
/// `name=peerURL` entries of the current members, which `ETCD_INITIAL_CLUSTER` must list
/// with the new one.
fn member_add(
    endpoint: &str,
    name: &str,
    peer: &str,
    existing: &[String],
) -> (String, Vec<(String, String)>) {
    let out = etcdctl_until_ok(endpoint, &["member", "add", name, peer]);
    let mut lines = out.lines();
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix(&format!("Added member named {name} with ID ")))
        .and_then(|l| l.strip_suffix(" to cluster"))
        .unwrap_or_else(|| panic!("unexpected `member add` output:\n{out}"))
        .to_string();
    assert!(
        !id.is_empty() && u64::from_str_radix(&id, 16).is_ok(),
        "{out}"
    );
    let env: Vec<(String, String)> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not a KEY=\"value\" line: {l}\n{out}"));
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted value: {l}\n{out}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ETCD_NAME",
            "ETCD_INITIAL_CLUSTER",
            "ETCD_INITIAL_CLUSTER_STATE"
        ],
        "{out}"
    );
    assert_eq!(env[0].1, name, "{out}");
    let mut cluster: Vec<&str> = env[1].1.split(',').collect();
    cluster.sort_unstable();
    let mut want: Vec<String> = existing.to_vec();
    want.push(format!("{name}={peer}"));
    want.sort();
    assert_eq!(cluster, want, "ETCD_INITIAL_CLUSTER of\n{out}");
    assert_eq!(env[2].1, "existing", "{out}");
    (id, env)
}

/// Starts a member joining the running cluster with the environment `member add` printed
/// and its own URLs and data dir as flags; waits until it serves.
fn start_joining(env: &[(String, String)], peer: &str, extra: &[&str]) -> Member {
    let name = &env[0].1;
    let dir = TempDir::new(name);
    let client = format!("http://127.0.0.1:{}", free_port());
    let mut args = member_url_args(&dir.0.join("data"), &client, peer);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut m = Member::new(oxcd(), dir, client, args);
    m.env = env.to_vec();
    m.spawn();
    m
}

/// Adds member `m<n>` (n = the next index of `c`) through `via` and starts it; its index.
fn grow(c: &mut Cluster, via: usize, live: &[usize], extra: &[&str]) -> usize {
    let n = c.members.len();
    let peer = new_peer_url();
    let existing: Vec<String> = live.iter().map(|&i| entry(c, i)).collect();
    let (id, env) = member_add(
        &c.members[via].client_url,
        &format!("m{n}"),
        &peer,
        &existing,
    );
    let m = start_joining(&env, &peer, extra);
    c.members.push(m);
    c.ids.push(id);
    c.peer_urls.push(peer);
    n
}

/// Waits until `what` writes were acknowledged in total.
fn wait_acked(load: &Load, count: usize) {
    let deadline = Instant::now() + WAIT;
    while load.acked_count() < count {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged, waited for {count}",
            load.acked_count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn urls(c: &Cluster, live: &[usize]) -> Vec<String> {
    live.iter()
        .map(|&i| c.members[i].client_url.clone())
        .collect()
}

/// The live members agree, and hold every acknowledged write.
fn check_all(c: &Cluster, live: &[usize], acked: &[Ack]) {
    assert!(!acked.is_empty(), "no write was acknowledged");
    let last = acked.iter().map(|a| a.2).max().unwrap();
    check_converged(&c.listings(live, last, WAIT), acked);
}

/// `etcdctl member list` as the member at `endpoint` alone answers it (`--no-sync`).
fn member_list(endpoint: &str) -> String {
    let (ok, out, err) = etcdctl(endpoint, &["--no-sync", "member", "list"]);
    if ok {
        out
    } else {
        format!("(failed) {err}")
    }
}

/// Waits until member `at` lists exactly the members `live` in etcdctl's format
/// (`<id>: name=<name> peerURLs=<urls> clientURLs=<urls> isLeader=<bool>`), one of them the
/// leader.
fn wait_member_list(c: &Cluster, at: usize, live: &[usize]) {
    let mut want: Vec<String> = live
        .iter()
        .map(|&i| {
            format!(
                "{}: name=m{i} peerURLs={} clientURLs={}",
                c.ids[i], c.peer_urls[i], c.members[i].client_url
            )
        })
        .collect();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = member_list(&c.members[at].client_url);
        let mut leaders = 0;
        let mut got: Vec<String> = out
            .lines()
            .map(|l| match l.rsplit_once(" isLeader=") {
                Some((rest, flag)) => {
                    leaders += usize::from(flag == "true");
                    rest.to_string()
                }
                None => l.to_string(),
            })
            .collect();
        got.sort();
        if got == want && leaders == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {at}'s `member list`:\n{out}\nwanted (one leader):\n{}",
            want.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `m` to stop on its own after its removal: status 0, and etcd's two lines in
/// what it logged after the byte offset `from`.
fn assert_stops_as_removed(m: &mut Member, from: usize, what: &str) {
    let Some(status) = m.wait_exit_status(WAIT) else {
        panic!(
            "{what}: still running {WAIT:?} after its removal; log:\n{}",
            m.log()
        );
    };
    let log = m.log();
    assert!(
        status.success(),
        "{what}: exit status {status}; log:\n{log}"
    );
    let since = log.get(from..).unwrap_or_default();
    assert!(
        since.contains(REMOVED) && since.contains(DATA_DIR_MUST_GO),
        "{what}: the removal lines are missing; log:\n{since}"
    );
}

/// The member that leads, among `live`.
fn leader(c: &mut Cluster, live: &[usize]) -> usize {
    c.wait_leader(live, WAIT)
}

#[test]
fn grow_one_to_three_to_five_with_etcdctl() {
    let extra = args(&["--snapshot-count", "50"]);
    let mut c = Cluster::start(oxcd(), 1, &extra, false);
    let mut acked = Vec::new();
    let mut load = Load::start(urls(&c, &[0]), 2, "grow0");
    // A snapshot every 50 entries, and the log compacted up to it: after 150 writes the
    // first member to join can only catch up from a snapshot.
    wait_acked(&load, 150);
    let mut live = vec![0];
    for step in 1..5 {
        let n = grow(&mut c, 0, &live.clone(), &extra);
        live.push(n);
        // Writes go on, now through the new member too.
        acked.extend(load.stop());
        load = Load::start(urls(&c, &live), 2, &format!("grow{step}"));
        wait_acked(&load, 10);
        if n == 1 {
            let log = c.members[1].log();
            assert!(
                log.contains(GOT_SNAPSHOT),
                "m1 joined after compaction but got no snapshot; log:\n{log}"
            );
        }
    }
    acked.extend(load.stop());
    check_all(&c, &live, &acked);
    for &i in &live {
        wait_member_list(&c, i, &live);
    }
    // A member that joined, SIGKILLed and started again with the same environment
    // (`ETCD_INITIAL_CLUSTER_STATE=existing` and all) is who its data dir says: it rejoins
    // without asking the cluster again, and takes writes.
    c.members[3].kill();
    c.members[3].spawn();
    let idx = try_put(&c.members[3].client_url, "grow/rejoined", "x", WAIT)
        .expect("a write through the restarted joiner");
    acked.push(("grow/rejoined".into(), "x".into(), idx));
    check_all(&c, &live, &acked);
}

#[test]
fn shrink_five_to_three_removing_a_follower_and_the_leader() {
    let mut c = Cluster::start(oxcd(), 5, &args(&[]), false);
    let all = [0, 1, 2, 3, 4];
    let load = Load::start(urls(&c, &all), 3, "shrink");
    wait_acked(&load, 20);
    let lead = leader(&mut c, &all);
    let follower = (lead + 1) % 5;
    let via = (lead + 2) % 5;
    let out = etcdctl_until_ok(
        &c.members[via].client_url,
        &["member", "remove", &c.ids[follower]],
    );
    assert_eq!(
        out.trim(),
        format!("Removed member {} from cluster", c.ids[follower])
    );
    assert_stops_as_removed(&mut c.members[follower], 0, "removed follower");

    let four: Vec<usize> = all.iter().copied().filter(|&i| i != follower).collect();
    let lead = leader(&mut c, &four);
    let via = four
        .iter()
        .copied()
        .find(|&i| i != lead && i != via)
        .unwrap();
    let out = etcdctl_until_ok(
        &c.members[via].client_url,
        &["member", "remove", &c.ids[lead]],
    );
    assert_eq!(
        out.trim(),
        format!("Removed member {} from cluster", c.ids[lead])
    );
    assert_stops_as_removed(&mut c.members[lead], 0, "removed leader");

    // The three others elect a leader and go on serving.
    let three: Vec<usize> = four.iter().copied().filter(|&i| i != lead).collect();
    let new_lead = leader(&mut c, &three);
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    let acked = load.stop();
    check_all(&c, &three, &acked);
    for &i in &three {
        wait_member_list(&c, i, &three);
    }
    eprintln!(
        "removed m{follower}, then leader m{lead}; m{new_lead} leads; {} writes",
        acked.len()
    );
    // The new leader's /v2/stats/leader follows the membership: the two other survivors,
    // not the removed members.
    let stats = oxcd_tests::cluster::get_json(&c.members[new_lead].client_url, "/v2/stats/leader")
        .expect("/v2/stats/leader on the leader");
    let mut followers: Vec<String> = stats["followers"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default();
    followers.sort();
    let mut want: Vec<String> = three
        .iter()
        .filter(|&&i| i != new_lead)
        .map(|&i| c.ids[i].clone())
        .collect();
    want.sort();
    assert_eq!(followers, want, "{stats}");

    // The removed leader, restarted on its old data dir, finds its removal and stops again.
    let from = c.members[lead].log().len();
    c.members[lead].spawn_no_wait();
    assert_stops_as_removed(&mut c.members[lead], from, "restarted removed leader");
}

#[test]
fn update_peer_url_and_restart() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let all = [0, 1, 2];
    let load = Load::start(urls(&c, &all), 2, "update");
    wait_acked(&load, 20);
    let t = (leader(&mut c, &all) + 1) % 3;
    let (old, new) = (c.peer_urls[t].clone(), new_peer_url());
    let out = etcdctl_until_ok(
        &c.members[(t + 1) % 3].client_url,
        &["member", "update", &c.ids[t], &new],
    );
    assert_eq!(
        out.trim(),
        format!("Updated member with ID {} in cluster", c.ids[t])
    );
    // Restarted on the new peer URL (and the same data dir), it rejoins.
    let m = &mut c.members[t];
    m.kill();
    m.set_flag("--listen-peer-urls", Some(&new));
    m.set_flag("--initial-advertise-peer-urls", Some(&new));
    m.spawn();
    c.peer_urls[t] = new.clone();
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    let idx = try_put(&c.members[t].client_url, "update/through-t", "x", WAIT)
        .expect("a write through the moved member");
    let mut acked = load.stop();
    acked.push(("update/through-t".into(), "x".into(), idx));
    check_all(&c, &all, &acked);
    for i in all {
        wait_member_list(&c, i, &all);
        let r = c.members[i].curl(&["{c}/v2/members"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let moved = members.iter().find(|m| m["id"] == c.ids[t].as_str());
        assert_eq!(
            moved.map(|m| m["peerURLs"].clone()),
            Some(serde_json::json!([new])),
            "member {i}: {}",
            r.stdout
        );
        assert!(!r.stdout.contains(&old), "member {i}: {}", r.stdout);
    }
}

#[test]
fn replace_a_failed_member() {
    let extra = args(&["--snapshot-count", "50"]);
    let mut c = Cluster::start(oxcd(), 3, &extra, false);
    let all = [0, 1, 2];
    let load = Load::start(urls(&c, &all), 2, "replace");
    wait_acked(&load, 20);
    let lead = leader(&mut c, &all);
    let failed = (lead + 1) % 3;
    // The member's machine is lost: process and data.
    c.members[failed].kill();
    std::fs::remove_dir_all(c.members[failed].dir.0.join("data")).expect("remove data dir");
    let out = etcdctl_until_ok(
        &c.members[lead].client_url,
        &["member", "remove", &c.ids[failed]],
    );
    assert_eq!(
        out.trim(),
        format!("Removed member {} from cluster", c.ids[failed])
    );
    let two: Vec<usize> = all.iter().copied().filter(|&i| i != failed).collect();
    // Enough writes since that the log the new member would need is compacted away.
    let before = load.acked_count();
    wait_acked(&load, before + 150);
    let n = grow(&mut c, lead, &two, &extra);
    let live = [two[0], two[1], n];
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    let acked = load.stop();
    let log = c.members[n].log();
    assert!(
        log.contains(GOT_SNAPSHOT),
        "the replacement caught up without a snapshot; log:\n{log}"
    );
    check_all(&c, &live, &acked);
    for i in live {
        wait_member_list(&c, i, &live);
    }
}

#[test]
fn force_new_cluster_after_losing_the_majority() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let all = [0, 1, 2];
    let cluster_id = oxcd_tests::ureq::get(&format!("{}/v2/keys/", c.members[0].client_url))
        .call()
        .expect("GET /v2/keys/")
        .header("X-Etcd-Cluster-Id")
        .unwrap_or_default()
        .to_string();
    let load = Load::start(urls(&c, &all), 2, "force");
    wait_acked(&load, 50);
    let s = 2;
    // One member lost while writes go on: every write acknowledged from now on is on `s`.
    c.members[0].kill();
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    let acked = load.stop();
    let last = acked.iter().map(|a| a.2).max().unwrap();
    // What the other survivor acknowledged, `s` has too (it applied up to the last write).
    c.listings(&[s], last, WAIT);
    c.members[1].kill();
    c.members[s].kill();

    let m = &mut c.members[s];
    m.set_flag("--force-new-cluster", None);
    m.spawn();
    let log = m.log();
    let line = format!(
        "forcing restart of member {} in cluster {cluster_id} at commit index ",
        c.ids[s]
    );
    assert!(log.contains(&line), "no `{line}` in the log:\n{log}");
    check_all(&c, &[s], &acked);
    let mut acked = acked;
    let idx = try_put(&c.members[s].client_url, "force/after", "x", WAIT)
        .expect("a write to the one-member cluster");
    acked.push(("force/after".into(), "x".into(), idx));
    wait_member_list(&c, s, &[s]);

    // And it grows again.
    let load = Load::start(urls(&c, &[s]), 2, "force-grow");
    let n = grow(&mut c, s, &[s], &args(&[]));
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    acked.extend(load.stop());
    check_all(&c, &[s, n], &acked);
    for i in [s, n] {
        wait_member_list(&c, i, &[s, n]);
    }
}

/// A `curl` answer: status, Content-Type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// `curl -X method url` with a JSON `body` sent as `content_type` (`None`: no Content-Type).
fn send(base: &str, method: &str, path: &str, content_type: Option<&str>, body: &str) -> Answer {
    let header = format!("Content-Type: {}", content_type.unwrap_or(""));
    let url = format!("{base}{path}");
    let mut a = vec!["-X", method, "-w", "\n%{http_code}\n%{content_type}"];
    if method != "GET" && method != "DELETE" {
        a.extend(["-H", &header, "--data-binary", body]);
    }
    a.push(&url);
    let r = curl(&a);
    assert!(r.ok(), "curl {a:?}: {}", r.stderr);
    let mut parts = r.stdout.rsplitn(3, '\n');
    let content_type = parts.next().unwrap_or_default().to_string();
    let status = parts.next().unwrap_or_default().parse().unwrap_or(0);
    let body = parts.next().unwrap_or_default().to_string();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Member IDs and loopback URLs masked: what differs between two clusters.
fn masked(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match k.as_str() {
                    "id" => (k.clone(), Value::from("<id>")),
                    _ => (k.clone(), masked(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        Value::String(s) if s.starts_with("http://127.0.0.1:") => Value::from("<url>"),
        _ => v.clone(),
    }
}

/// The peer URL of a one-member cluster.
fn own_peer_url(base: &str) -> String {
    let r = send(base, "GET", "/v2/members", None, "");
    let v: Value = serde_json::from_str(&r.body).expect("member list");
    v["members"][0]["peerURLs"][0]
        .as_str()
        .expect("a peer URL")
        .to_string()
}

#[test]
fn members_api_errors_match_etcd() {
    let mut p = Pair::start(oxcd());
    let (e, o) = (p.etcd.client_url.clone(), p.oxcd.client_url.clone());
    let (e_peer, o_peer) = (own_peer_url(&e), own_peer_url(&o));
    let json = Some("application/json");
    let unknown = "1234abcd";
    let new_peer = new_peer_url();
    let good = format!(r#"{{"peerURLs":["{new_peer}"]}}"#);
    // (method, path, Content-Type, body, compare the body exactly); `{peer}` is each
    // server's own peer URL.
    let cases: &[(&str, &str, Option<&str>, &str, bool)] = &[
        ("GET", "/v2/members", None, "", true),
        ("GET", "/v2/members/leader", None, "", true),
        ("GET", "/v2/members/", None, "", true),
        (
            "POST",
            "/v2/members",
            json,
            r#"{"peerURLs":["{peer}"]}"#,
            true,
        ),
        ("DELETE", &format!("/v2/members/{unknown}"), None, "", true),
        ("DELETE", "/v2/members/not-hex", None, "", true),
        ("PUT", &format!("/v2/members/{unknown}"), json, &good, true),
        // Go's and serde's JSON errors are worded differently: the status must match.
        ("POST", "/v2/members", json, "{not json", false),
        ("POST", "/v2/members", json, r#"{"peerURLs":["foo"]}"#, true),
        ("POST", "/v2/members", json, r#"{"peerURLs":[]}"#, true),
        (
            "POST",
            "/v2/members",
            json,
            r#"{"peerURLs":["http://127.0.0.1:1/path"]}"#,
            true,
        ),
        ("POST", "/v2/members", None, &good, true),
        (
            "POST",
            "/v2/members",
            Some("application/x-www-form-urlencoded"),
            &good,
            true,
        ),
        (
            "POST",
            "/v2/members",
            Some("text/plain; charset=utf-8"),
            &good,
            true,
        ),
        ("PUT", &format!("/v2/members/{unknown}"), None, &good, true),
        // Parameters make the media type case-insensitive, and only they.
        (
            "PUT",
            &format!("/v2/members/{unknown}"),
            Some("Application/JSON"),
            &good,
            true,
        ),
        (
            "PUT",
            &format!("/v2/members/{unknown}"),
            Some("APPLICATION/JSON; x"),
            &good,
            true,
        ),
        // The ID is looked at before the body; no ID at all is another method's path.
        ("PUT", "/v2/members/not-hex", None, &good, true),
        ("PUT", "/v2/members", json, &good, true),
        ("DELETE", "/v2/members", None, "", true),
    ];
    for (method, path, ctype, body, exact) in cases {
        let be = body.replace("{peer}", &e_peer);
        let bo = body.replace("{peer}", &o_peer);
        let ae = send(&e, method, path, *ctype, &be);
        let ao = send(&o, method, path, *ctype, &bo);
        let what = format!("{method} {path} {ctype:?} {body}");
        // A JSON body with IDs and URLs masked, any other as it is.
        let norm = |body: &str| {
            serde_json::from_str::<Value>(body)
                .map(|v| masked(&v))
                .unwrap_or_else(|_| Value::from(body))
        };
        let same = ae.status == ao.status
            && ae.content_type == ao.content_type
            && (!exact || norm(&ae.body) == norm(&ao.body));
        if !same {
            p.mismatches.push(format!(
                "{what}\n  etcd: {} {} {}\n  oxcd: {} {} {}",
                ae.status, ae.content_type, ae.body, ao.status, ao.content_type, ao.body
            ));
        }
    }
    // The refusals named in etcd 3.4.23's answers, on oxcd.
    let r = send(
        &o,
        "POST",
        "/v2/members",
        json,
        &format!(r#"{{"peerURLs":["{o_peer}"]}}"#),
    );
    assert_eq!(
        (r.status, r.body.trim()),
        (409, r#"{"message":"membership: peerURL exists"}"#)
    );
    let r = send(&o, "DELETE", &format!("/v2/members/{unknown}"), None, "");
    assert_eq!(
        (r.status, r.body.trim()),
        (404, r#"{"message":"No such member: 1234abcd"}"#)
    );
    assert_eq!(
        send(&o, "POST", "/v2/members", None, &good).status,
        415,
        "POST without Content-Type"
    );
    let leader = send(&o, "GET", "/v2/members/leader", None, "");
    let lv: Value = serde_json::from_str(&leader.body).unwrap_or(Value::Null);
    assert_eq!(
        (
            leader.status,
            lv["name"].as_str(),
            lv["clientURLs"][0].as_str()
        ),
        (200, Some("default"), Some(o.as_str())),
        "{}",
        leader.body
    );

    // A member added with curl (201 and the new member, unnamed until it starts) on both;
    // etcd's cluster has then lost its quorum (one of two started), so it is done.
    let load = Load::start(vec![o.clone()], 1, "api");
    let ae = send(&e, "POST", "/v2/members", json, &good);
    let ao = send(&o, "POST", "/v2/members", json, &good);
    for (who, a) in [("etcd", &ae), ("oxcd", &ao)] {
        let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
        assert_eq!(a.status, 201, "{who}: {}", a.body);
        assert_eq!(
            masked(&v),
            serde_json::json!({"id": "<id>", "name": "", "peerURLs": ["<url>"], "clientURLs": []}),
            "{who}: {}",
            a.body
        );
        assert!(v["id"]
            .as_str()
            .is_some_and(|id| u64::from_str_radix(id, 16).is_ok()));
        assert_eq!(v["peerURLs"][0], new_peer.as_str(), "{who}");
    }
    assert_eq!(ae.content_type, ao.content_type);

    // On oxcd the new member starts, joins, and is removed with DELETE (204, no body): it
    // stops as a removed member does.
    let added: Value = serde_json::from_str(&ao.body).unwrap();
    let id = added["id"].as_str().unwrap().to_string();
    let env = vec![
        ("ETCD_NAME".to_string(), "joiner".to_string()),
        (
            "ETCD_INITIAL_CLUSTER".to_string(),
            format!("default={o_peer},joiner={new_peer}"),
        ),
        (
            "ETCD_INITIAL_CLUSTER_STATE".to_string(),
            "existing".to_string(),
        ),
    ];
    let mut joiner = start_joining(&env, &new_peer, &[]);
    let deadline = Instant::now() + CHANGE_WAIT;
    loop {
        let r = send(&o, "DELETE", &format!("/v2/members/{id}"), None, "");
        if r.status == 204 {
            assert_eq!(r.body, "", "DELETE answered a body");
            break;
        }
        // Refused by the strict check until the two have been connected for 5 s.
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(
            Instant::now() < deadline,
            "DELETE still refused: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_stops_as_removed(&mut joiner, 0, "member removed with DELETE");
    let acked = load.stop();
    let r = send(&o, "GET", "/v2/members", None, "");
    assert!(!r.body.contains(&id), "{}", r.body);
    assert!(!acked.is_empty(), "no write acknowledged");
    let listing =
        oxcd_tests::cluster::get_json(&o, "/v2/keys/?recursive=true&sorted=true").expect("listing");
    check_converged(&[listing], &acked);
    p.finish();
}

#[test]
fn a_removed_member_gets_410_from_peers() {
    let mut c = Cluster::start(oxcd(), 3, &args(&[]), false);
    let all = [0, 1, 2];
    let load = Load::start(urls(&c, &all), 2, "gone");
    wait_acked(&load, 20);
    let lead = leader(&mut c, &all);
    let r = (lead + 1) % 3;
    let cluster_id = oxcd_tests::ureq::get(&format!("{}/v2/keys/", c.members[lead].client_url))
        .call()
        .expect("GET /v2/keys/")
        .header("X-Etcd-Cluster-Id")
        .unwrap_or_default()
        .to_string();
    // Removed while it is down: it cannot apply its own removal.
    c.members[r].kill();
    let out = etcdctl_until_ok(
        &c.members[lead].client_url,
        &["member", "remove", &c.ids[r]],
    );
    assert_eq!(
        out.trim(),
        format!("Removed member {} from cluster", c.ids[r])
    );
    let two: Vec<usize> = all.iter().copied().filter(|&i| i != r).collect();
    // Its peers answer its traffic 410 Gone.
    for &i in &two {
        let a = curl(&[
            "-X",
            "POST",
            "-H",
            &format!("X-Etcd-Cluster-ID: {cluster_id}"),
            "-H",
            &format!("X-Server-From: {}", c.ids[r]),
            "--data-binary",
            "",
            "-w",
            "\n%{http_code}",
            &format!("{}/raft", c.peer_urls[i]),
        ]);
        assert!(a.stdout.ends_with("\n410"), "member {i}: {}", a.stdout);
    }
    let from = c.members[r].log().len();
    c.members[r].spawn_no_wait();
    assert_stops_as_removed(&mut c.members[r], from, "member removed while down");
    let before = load.acked_count();
    wait_acked(&load, before + 20);
    let acked = load.stop();
    check_all(&c, &two, &acked);
    for &i in &two {
        wait_member_list(&c, i, &two);
    }
}

/// A member joining with `--initial-cluster-state existing` checks the running cluster's
/// members against its `--initial-cluster` (etcd's `ValidateClusterAndAssignIDs`) and
/// refuses to start on a mismatch, writing nothing.
#[test]
fn joining_with_a_mismatched_initial_cluster_is_refused() {
    let c = Cluster::start(oxcd(), 1, &args(&[]), false);
    let peer = new_peer_url();
    let (_, env) = member_add(&c.members[0].client_url, "m1", &peer, &[entry(&c, 0)]);
    // The printed ETCD_INITIAL_CLUSTER with a member the cluster does not have.
    let ghost = new_peer_url();
    let wrong: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            if k == "ETCD_INITIAL_CLUSTER" {
                (k.clone(), format!("{v},m9={ghost}"))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let dir = TempDir::new("mismatch");
    let data = dir.0.join("data");
    let client = format!("http://127.0.0.1:{}", free_port());
    let args = member_url_args(&data, &client, &peer);
    let mut m = Member::new(oxcd(), dir, client, args);
    m.env = wrong;
    m.spawn_no_wait();
    let status = m
        .wait_exit_status(WAIT)
        .expect("a mismatched join stops by itself");
    assert!(!status.success(), "{status:?}");
    let log = m.log();
    assert!(log.contains("member count is unequal"), "{log}");
    assert!(
        !data.join("member").join("wal").exists(),
        "a refused join wrote a WAL"
    );
}
