//! Multi-member clusters of real processes on loopback ports, with an optional peer proxy
//! for partitions, and the checks every cluster test ends with.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proxy::PeerProxy;
use crate::{free_port, request, Member, TempDir};

/// A running cluster of `oxcd` (or `etcd`) members.
pub struct Cluster {
    /// The members, in `--initial-cluster` order (`m0`, `m1`, ...).
    pub members: Vec<Member>,
    /// Member IDs (hex), by index.
    pub ids: Vec<String>,
    /// The peer proxy, when started with one.
    pub proxy: Option<PeerProxy>,
    /// The peer URLs members listen on, by index.
    pub peer_urls: Vec<String>,
}

/// Fast timing for tests: 50 ms heartbeats, 500 ms election timeout.
pub const FAST_TIMING: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

impl Cluster {
    /// Starts `n` members with etcd's static bootstrap flags plus `extra`, waits until every
    /// member serves. With `proxy`, peer traffic goes through a [`PeerProxy`].
    pub fn start(binary: &Path, n: usize, extra: &[&str], proxy: bool) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_with(
            binary,
            n,
            "http",
            &|_| extra.clone(),
            proxy,
            &(0..n).collect::<Vec<_>>(),
        )
    }

    /// [`Cluster::start`] with peer URLs of scheme `peer_scheme` (`https` for peer TLS),
    /// each member's extra flags from `extra(i)`, waiting only until the members in
    /// `wait_for` serve (a member that cannot join is left running, not waited for).
    pub fn start_with(
        binary: &Path,
        n: usize,
        peer_scheme: &str,
        extra: &dyn Fn(usize) -> Vec<String>,
        proxy: bool,
        wait_for: &[usize],
    ) -> Cluster {
        let clients: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let listen: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let advertised: Vec<u16> = if proxy {
            (0..n).map(|_| free_port()).collect()
        } else {
            listen.clone()
        };
        let initial = (0..n)
            .map(|i| format!("m{i}={peer_scheme}://127.0.0.1:{}", advertised[i]))
            .collect::<Vec<_>>()
            .join(",");
        let proxy = proxy.then(|| PeerProxy::start(&advertised, &listen));
        let mut members = Vec::new();
        for i in 0..n {
            let dir = TempDir::new(&format!("m{i}"));
            let client = format!("http://127.0.0.1:{}", clients[i]);
            let mut args: Vec<String> = vec![
                "--name".into(),
                format!("m{i}"),
                "--data-dir".into(),
                dir.0.join("data").to_string_lossy().into_owned(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client.clone(),
                "--listen-peer-urls".into(),
                format!("{peer_scheme}://127.0.0.1:{}", listen[i]),
                "--initial-advertise-peer-urls".into(),
                format!("{peer_scheme}://127.0.0.1:{}", advertised[i]),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-token".into(),
                "test-cluster".into(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            args.extend(extra(i));
            let mut m = Member::new(binary, dir, client, args);
            m.spawn_no_wait();
            members.push(m);
        }
        for &i in wait_for {
            members[i].wait_ready();
        }
        let ids = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !wait_for.contains(&i) {
                    return String::new();
                }
                request(&m.client_url, "GET", "/v2/stats/self", None).json()["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>();
        if let Some(p) = &proxy {
            p.set_ids(&ids);
        }
        Cluster {
            members,
            ids,
            proxy,
            peer_urls: listen
                .iter()
                .map(|p| format!("{peer_scheme}://127.0.0.1:{p}"))
                .collect(),
        }
    }

    /// Client URLs of all members, comma-separated (for `etcdctl --endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member that says it leads, among the running ones in `among`.
    pub fn leader_among(&mut self, among: &[usize]) -> Option<usize> {
        among.iter().copied().find(|&i| {
            self.members[i].is_alive()
                && get_json(&self.members[i].client_url, "/v2/stats/self")
                    .is_some_and(|v| v["state"] == "StateLeader")
        })
    }

    /// Waits until one of `among` leads; panics after `timeout`.
    pub fn wait_leader(&mut self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader_among(among) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every member in `among` has applied at least `index` (its `X-Etcd-Index`
    /// on a read of the root), then returns their recursive sorted listings.
    pub fn listings(&self, among: &[usize], index: u64, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        among
            .iter()
            .map(|&i| loop {
                let r = request(
                    &self.members[i].client_url,
                    "GET",
                    "/v2/keys/?recursive=true&sorted=true",
                    None,
                );
                if r.etcd_index.unwrap_or(0) >= index {
                    return r.json();
                }
                assert!(
                    Instant::now() < deadline,
                    "member {i} stuck at index {:?}, wanted {index}",
                    r.etcd_index
                );
                std::thread::sleep(Duration::from_millis(20));
            })
            .collect()
    }
}

/// GET `path` and parse the answer, `None` on transport errors (member down).
pub fn get_json(base: &str, path: &str) -> Option<Value> {
    ureq::get(&format!("{base}{path}"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// A PUT that may fail: `Some(modifiedIndex)` when acknowledged.
pub fn try_put(base: &str, key: &str, value: &str, timeout: Duration) -> Option<u64> {
    let r = ureq::put(&format!("{base}/v2/keys/{key}"))
        .timeout(timeout)
        .send_form(&[("value", value)])
        .ok()?;
    let v: Value = serde_json::from_str(&r.into_string().ok()?).ok()?;
    v["node"]["modifiedIndex"].as_u64()
}

/// Every leaf of a recursive listing as (key, value, modifiedIndex).
pub fn leaves(listing: &Value) -> Vec<(String, String, u64)> {
    fn walk(n: &Value, out: &mut Vec<(String, String, u64)>) {
        if let Some(children) = n["nodes"].as_array() {
            for c in children {
                walk(c, out);
            }
        } else if let Some(v) = n["value"].as_str() {
            out.push((
                n["key"].as_str().unwrap_or_default().to_string(),
                v.to_string(),
                n["modifiedIndex"].as_u64().unwrap_or(0),
            ));
        }
    }
    let mut out = Vec::new();
    walk(&listing["node"], &mut out);
    out
}

/// An acknowledged write: key (under `/v2/keys`), value, modifiedIndex.
pub type Ack = (String, String, u64);

/// Writers that keep putting unique keys to a set of members, recording what was
/// acknowledged. A writer whose member fails moves on to the next one.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<std::thread::JoinHandle<()>>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<Ack>>>,
}

impl Load {
    /// Starts `writers` threads writing `prefix/w<n>/k<i>` round-robin over `urls`.
    pub fn start(urls: Vec<String>, writers: usize, prefix: &str) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let handles = (0..writers)
            .map(|w| {
                let (stop, acked, urls) = (Arc::clone(&stop), Arc::clone(&acked), urls.clone());
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    let mut at = w;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}/w{w}/k{i}");
                        let value = format!("v{w}-{i}");
                        let url = &urls[at % urls.len()];
                        match try_put(url, &key, &value, Duration::from_secs(10)) {
                            Some(idx) => acked.lock().unwrap().push((key, value, idx)),
                            None => {
                                at += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            writers: handles,
            acked,
        }
    }

    /// How many writes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers and returns every acknowledged write.
    pub fn stop(self) -> Vec<Ack> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.writers {
            let _ = w.join();
        }
        let acked = self.acked.lock().unwrap();
        acked.clone()
    }
}

/// Asserts that every member's listing is the same and holds every acknowledged write with
/// its index; returns the highest acknowledged index.
pub fn check_converged(listings: &[Value], acked: &[Ack]) -> u64 {
    for (i, l) in listings.iter().enumerate().skip(1) {
        assert!(
            l["node"] == listings[0]["node"],
            "member {i}'s listing differs from member 0's"
        );
    }
    let all: std::collections::HashMap<String, (String, u64)> = leaves(&listings[0])
        .into_iter()
        .map(|(k, v, i)| (k, (v, i)))
        .collect();
    for (key, value, idx) in acked {
        let k = format!("/{}", key.trim_start_matches('/'));
        assert_eq!(
            all.get(&k),
            Some(&(value.clone(), *idx)),
            "acknowledged write {key}={value}@{idx} lost"
        );
    }
    let mut idx: Vec<u64> = acked.iter().map(|a| a.2).collect();
    idx.sort_unstable();
    let n = idx.len();
    idx.dedup();
    assert_eq!(idx.len(), n, "two acknowledged writes share an index");
    idx.last().copied().unwrap_or(0)
}
