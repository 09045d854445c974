//! Linearizability under faults: concurrent clients read (quorum), write and
//! compare-and-swap a few keys through random members of a three-member cluster while a
//! nemesis SIGKILLs and restarts, SIGSTOPs and SIGCONTs, and partitions members; the
//! recorded history must pass `oxcd_tests::linearizability::check`.
//!
//! `OXCD_LINZ_SECONDS` sets how long the load runs (default 20), `OXCD_LINZ_SEED` the seed
//! of the nemesis and the clients (printed; otherwise taken from the clock). A long run:
//!
//! ```sh
//! OXCD_LINZ_SECONDS=600 cargo test -p oxcd --test linearizability -- --nocapture
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oxcd_tests::cluster::{Cluster, FAST_TIMING};
use oxcd_tests::linearizability::{check, Call, Operation, Outcome, Verdict};
use oxcd_tests::ureq;
use serde_json::Value;

fn oxcd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

const KEYS: u64 = 3;
const CLIENTS: usize = 6;
/// Shorter than the server's own request timeout (6 s with the fast timing), so a stopped
/// or cut-off member's requests end as unknown outcomes rather than hanging a client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(20);

/// splitmix64: a small seeded generator for the nemesis and the clients.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed() -> u64 {
    env_u64("OXCD_LINZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (t ^ u64::from(std::process::id())) % 1_000_000_000
    })
}

/// What became of one request.
enum Answer {
    /// An HTTP answer: status and JSON body (Null if unreadable).
    Status(u16, Value),
    /// The connection was refused: the request never reached the member.
    Unsent,
    /// Sent, but no answer (timeout, connection reset): it may or may not have applied.
    Lost,
}

fn send(agent: &ureq::Agent, url: &str, method: &str, form: Option<&str>) -> Answer {
    let req = agent.request(method, url);
    let res = match form {
        Some(f) => req
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(f),
        None => req.call(),
    };
    match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            let body = r
                .into_string()
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null);
            Answer::Status(status, body)
        }
        Err(e) if e.kind() == ureq::ErrorKind::ConnectionFailed => Answer::Unsent,
        Err(_) => Answer::Lost,
    }
}

/// Performs one operation on `/v2/keys/linz/<key>` through `member` and returns its outcome,
/// or `None` when it can be left out of the history (a read that failed: reads have no
/// effect; a request that never left the client).
fn perform(
    agent: &ureq::Agent,
    member: &str,
    key: &str,
    call: &Call,
    quorum: bool,
) -> Option<Outcome> {
    let path = format!("{member}/v2/keys/{key}");
    let code = |body: &Value| body["errorCode"].as_u64();
    match call {
        Call::Read => {
            let url = if quorum {
                format!("{path}?quorum=true")
            } else {
                path
            };
            match send(agent, &url, "GET", None) {
                Answer::Status(200, body) => body["node"]["value"]
                    .as_str()
                    .map(|v| Outcome::Read(Some(v.to_string()))),
                Answer::Status(404, body) if code(&body) == Some(100) => Some(Outcome::Read(None)),
                _ => None,
            }
        }
        Call::Write(value) => match send(agent, &path, "PUT", Some(&format!("value={value}"))) {
            Answer::Status(200 | 201, _) => Some(Outcome::Written),
            Answer::Unsent => None,
            Answer::Status(..) | Answer::Lost => Some(Outcome::Unknown),
        },
        Call::Cas { from, to } => {
            let url = format!("{path}?prevValue={from}");
            match send(agent, &url, "PUT", Some(&format!("value={to}"))) {
                Answer::Status(200, _) => Some(Outcome::Cas(true)),
                // Compare failed, or no such key: definitely not applied.
                Answer::Status(412, body) if code(&body) == Some(101) => Some(Outcome::Cas(false)),
                Answer::Status(404, body) if code(&body) == Some(100) => Some(Outcome::Cas(false)),
                Answer::Unsent => None,
                Answer::Status(..) | Answer::Lost => Some(Outcome::Unknown),
            }
        }
    }
}

/// Records operations against one clock.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Performs `call` and records it; returns the outcome (`None` if left out).
    fn run(
        &self,
        agent: &ureq::Agent,
        client: usize,
        member: &str,
        key: &str,
        call: Call,
        quorum: bool,
    ) -> Option<Outcome> {
        let invoked = self.now();
        let outcome = perform(agent, member, key, &call, quorum)?;
        let returned = self.now();
        self.ops.lock().unwrap().push(Operation {
            client,
            key: key.to_string(),
            call,
            outcome: outcome.clone(),
            invoked,
            returned,
        });
        Some(outcome)
    }

    fn history(&self) -> Vec<Operation> {
        self.ops.lock().unwrap().clone()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(CLIENT_TIMEOUT)
        .redirects(0)
        .build()
}

/// Client threads; stopped and joined on drop (also when the test panics).
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    fn start(urls: Vec<String>, recorder: &Recorder, seed: u64) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|c| {
                let (stop, rec, urls) = (Arc::clone(&stop), recorder.clone(), urls.clone());
                let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x1000_0000_01b3));
                std::thread::spawn(move || {
                    let agent = agent();
                    // The last value this client saw per key: what its CASes expect.
                    let mut seen: Vec<Option<String>> = vec![None; KEYS as usize];
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = rng.below(KEYS) as usize;
                        let key = format!("linz/k{k}");
                        let member = &urls[rng.below(urls.len() as u64) as usize];
                        n += 1;
                        let value = format!("c{c}-{n}");
                        let call = match rng.below(10) {
                            0..=3 => Call::Read,
                            4..=6 => Call::Write(value.clone()),
                            _ => Call::Cas {
                                from: seen[k].clone().unwrap_or_else(|| "none".into()),
                                to: value.clone(),
                            },
                        };
                        match rec.run(&agent, c, member, &key, call, true) {
                            Some(Outcome::Read(v)) => seen[k] = v,
                            Some(Outcome::Written | Outcome::Cas(true)) => seen[k] = Some(value),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        Clients { stop, threads }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One fault at a time, each undone before the next: SIGKILL and restart on the data dir,
/// SIGSTOP then SIGCONT, or a partition of one member from the others, then heal. Half the
/// faults aim at the leader. Returns a log line per fault.
fn nemesis(c: &mut Cluster, rng: &mut Rng, until: Instant, rec: &Recorder) -> Vec<String> {
    let mut log = Vec::new();
    let ms = |rec: &Recorder| rec.now() as f64 / 1e6;
    loop {
        let quiet = rng.millis(500, 2000);
        if Instant::now() + quiet >= until {
            break;
        }
        std::thread::sleep(quiet);
        let all: Vec<usize> = (0..c.members.len()).collect();
        let leader = c.leader_among(&all);
        let target = match leader {
            Some(l) if rng.below(2) == 0 => l,
            _ => rng.below(all.len() as u64) as usize,
        };
        let role = if Some(target) == leader {
            "leader"
        } else {
            "follower"
        };
        let hold = rng.millis(500, 3000);
        let kind = rng.below(3);
        let start = ms(rec);
        match kind {
            0 => {
                c.members[target].kill();
                std::thread::sleep(hold);
                c.members[target].spawn_no_wait();
                // Polls /health with a deadline: back once it serves.
                c.members[target].wait_ready();
            }
            1 => {
                assert!(c.members[target].signal("STOP"), "SIGSTOP m{target}");
                std::thread::sleep(hold);
                assert!(c.members[target].signal("CONT"), "SIGCONT m{target}");
            }
            _ => {
                let proxy = c.proxy.as_ref().expect("cluster started with the proxy");
                proxy.isolate(target);
                std::thread::sleep(hold);
                proxy.heal();
            }
        }
        let what = ["SIGKILL+restart", "SIGSTOP/SIGCONT", "partition/heal"][kind as usize];
        let line = format!(
            "{start:>10.3} .. {:>10.3} ms  {what} m{target} ({role})",
            ms(rec)
        );
        eprintln!("nemesis: {line}");
        log.push(line);
    }
    log
}

/// Fails the test with the offending key's history (the whole of it in a file).
fn fail(verdict: Verdict, seed: u64, faults: &[String]) -> ! {
    let faults = faults.join("\n  ");
    match verdict {
        Verdict::Violation(v) => {
            let file = std::env::temp_dir()
                .join(format!("oxcd-linz-{seed}-{}.txt", v.key.replace('/', "_")));
            let _ = std::fs::write(&file, v.full_report());
            panic!(
                "seed {seed}: history not linearizable\n{v}\nfull history of the key: {}\n\
                 faults:\n  {faults}",
                file.display()
            )
        }
        Verdict::GaveUp { key, steps } => {
            panic!("seed {seed}: the checker gave up on key {key} after {steps} steps")
        }
        Verdict::Linearizable => unreachable!(),
    }
}

/// Injects a read of a value that two completed writes ago was current, issued after the
/// newer write completed: no linearization can have it, and the checker must say so.
fn inject_stale_read(history: &[Operation]) -> Option<(String, Vec<Operation>)> {
    let written =
        |o: &&Operation| matches!(o.call, Call::Write(_)) && o.outcome == Outcome::Written;
    for old in history.iter().filter(written) {
        let Call::Write(value) = &old.call else {
            continue;
        };
        if let Some(newer) = history
            .iter()
            .filter(written)
            .find(|n| n.key == old.key && n.invoked > old.returned)
        {
            let mut h = history.to_vec();
            h.push(Operation {
                client: 999,
                key: old.key.clone(),
                call: Call::Read,
                outcome: Outcome::Read(Some(value.clone())),
                invoked: newer.returned + 1,
                returned: newer.returned + 2,
            });
            return Some((old.key.clone(), h));
        }
    }
    None
}

#[test]
fn quorum_reads_writes_and_cas_under_faults_are_linearizable() {
    let seed = seed();
    let seconds = env_u64("OXCD_LINZ_SECONDS").unwrap_or(20);
    eprintln!(
        "linearizability: seed {seed}, {seconds} s of load (rerun with OXCD_LINZ_SEED={seed} \
         OXCD_LINZ_SECONDS={seconds})"
    );
    let mut c = Cluster::start(oxcd(), 3, FAST_TIMING, true);
    c.wait_leader(&[0, 1, 2], WAIT);
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url.clone()).collect();
    let rec = Recorder::new();
    let mut rng = Rng(seed);
    let mut clients = Clients::start(urls, &rec, rng.next());
    let until = Instant::now() + Duration::from_secs(seconds);
    // The last seconds run without new faults, so the history ends with a healthy cluster.
    let faults = nemesis(&mut c, &mut rng, until - Duration::from_secs(3), &rec);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    clients.stop();
    let history = rec.history();

    let count = |f: &dyn Fn(&Operation) -> bool| history.iter().filter(|o| f(o)).count();
    let reads = count(&|o| o.call == Call::Read);
    let writes = count(&|o| o.outcome == Outcome::Written);
    let cas_ok = count(&|o| o.outcome == Outcome::Cas(true));
    let cas_failed = count(&|o| o.outcome == Outcome::Cas(false));
    let unknown = count(&|o| o.outcome == Outcome::Unknown);
    eprintln!(
        "linearizability: {} operations: {reads} reads, {writes} writes, {cas_ok} CAS applied, \
         {cas_failed} CAS refused, {unknown} unknown outcomes; {} faults",
        history.len(),
        faults.len()
    );
    assert!(
        reads >= 20 && writes >= 20 && cas_ok >= 5,
        "seed {seed}: too little load went through to test anything"
    );

    let started = Instant::now();
    let verdict = check(&history);
    eprintln!("linearizability: checked in {:?}", started.elapsed());
    if !verdict.is_linearizable() {
        fail(verdict, seed, &faults);
    }

    // Negative control on the real history: one stale read must be caught.
    let (key, tampered) = inject_stale_read(&history).expect("two sequential writes to a key");
    match check(&tampered) {
        Verdict::Violation(v) => assert_eq!(v.key, key),
        other => panic!("seed {seed}: an injected stale read was not caught: {other:?}"),
    }
}

/// Negative control against real processes: local (`quorum=false`) reads from a member cut
/// off from the others are stale once the majority moves on, and the checker must catch
/// the history that records them.
#[test]
fn stale_local_reads_from_a_partitioned_member_are_caught() {
    let mut c = Cluster::start(oxcd(), 3, FAST_TIMING, true);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let cut = (leader + 1) % 3;
    let (lead_url, cut_url) = (
        c.members[leader].client_url.clone(),
        c.members[cut].client_url.clone(),
    );
    let rec = Recorder::new();
    let agent = agent();
    let key = "linz/stale";
    let write = |v: &str| {
        let out = rec.run(&agent, 0, &lead_url, key, Call::Write(v.into()), true);
        assert_eq!(out, Some(Outcome::Written), "write {v}");
    };
    write("v1");
    // Wait until the follower applied v1 (its local reads are part of the history too).
    let deadline = Instant::now() + WAIT;
    while rec.run(&agent, 1, &cut_url, key, Call::Read, false)
        != Some(Outcome::Read(Some("v1".into())))
    {
        assert!(Instant::now() < deadline, "m{cut} never applied v1");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.proxy.as_ref().unwrap().isolate(cut);
    write("v2");
    let stale = rec.run(&agent, 1, &cut_url, key, Call::Read, false);
    assert_eq!(
        stale,
        Some(Outcome::Read(Some("v1".into()))),
        "m{cut} is cut off"
    );
    c.proxy.as_ref().unwrap().heal();

    match check(&rec.history()) {
        Verdict::Violation(v) => {
            assert_eq!(v.key, key);
            let report = v.to_string();
            assert!(report.contains("read => \"v1\""), "{report}");
            eprintln!("caught, as it must be:\n{report}");
        }
        other => panic!("stale reads not caught: {other:?}"),
    }
}
