//! Test harness: starts real `etcd` and `oxcd` processes on free loopback ports and talks to
//! them over HTTP, so the same script can be sent to both and the answers compared.
//!
//! Owns process lifetime (killed on drop, SIGKILL), port allocation, a small HTTP client
//! (ureq) and the normalisation that makes two servers' answers comparable: absolute
//! indexes become offsets from the index the server had when the script started, and
//! expiration timestamps are masked.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of Debian's etcd server, the oracle.
pub const ETCD: &str = "/usr/bin/etcd";

/// The flags of a member on `data_dir` with one client and one peer URL, each both listened
/// on and advertised (a test adds its name, cluster and timing flags).
pub fn member_url_args(data_dir: &Path, client: &str, peer: &str) -> Vec<String> {
    [
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A free loopback port for a server to listen on.
///
/// Taken below Linux's ephemeral range (32768–60999): a port the kernel picked for us
/// (`bind :0`) is also one it hands out for outgoing connections, and members open many, so
/// between our check and the server's bind another socket could take it. Below the range
/// only listeners compete; each test process starts at its own offset and checks each port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 500) * 24;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base - 20_000 + n) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000")
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a unique directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "oxcd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One running member (etcd or oxcd), killed on drop.
pub struct Member {
    child: Option<Child>,
    /// Client URL (`http://127.0.0.1:P`).
    pub client_url: String,
    /// Data and log directory.
    pub dir: TempDir,
    binary: PathBuf,
    args: Vec<String>,
    /// Extra environment of the process (e.g. `OXCD_FAILPOINTS`); kept across restarts
    /// until changed.
    pub env: Vec<(String, String)>,
    /// `curl` arguments that reach an `https` client URL (CA, client certificate).
    pub curl_args: Vec<String>,
}

impl Member {
    /// Starts a one-member cluster of `binary` with etcd's flags (plus `extra`) and waits
    /// until it serves.
    pub fn start(binary: &Path, extra: &[&str]) -> Member {
        Self::start_with_env(binary, extra, &[])
    }

    /// [`Member::start`] with extra environment variables for the process.
    pub fn start_with_env(binary: &Path, extra: &[&str], env: &[(&str, &str)]) -> Member {
        Self::start_tls(binary, "http", "http", extra, env, &[])
    }

    /// A one-member cluster whose client URL has scheme `client` and peer URL `peer`
    /// (`http` or `https`; the TLS flags go in `extra`). An `https` member is probed with
    /// `curl` and `curl_args` (e.g. `--cacert`, `--cert`, `--key`, or `-k`), which
    /// [`Member::curl`] then reuses.
    pub fn start_tls(
        binary: &Path,
        client: &str,
        peer: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        curl_args: &[&str],
    ) -> Member {
        let dir = TempDir::new("member");
        let (cp, pp) = (free_port(), free_port());
        let client = format!("{client}://127.0.0.1:{cp}");
        let peer = format!("{peer}://127.0.0.1:{pp}");
        let mut args = member_url_args(&dir.0.join("data"), &client, &peer);
        args.extend(
            [
                "--name",
                "default",
                "--enable-v2=true",
                "--initial-cluster",
                &format!("default={peer}"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut m = Member::new(binary, dir, client, args);
        m.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.curl_args = curl_args.iter().map(|s| s.to_string()).collect();
        m.spawn();
        m
    }

    /// A member that is not started yet: `args` are its whole command line.
    pub fn new(binary: &Path, dir: TempDir, client_url: String, args: Vec<String>) -> Member {
        Member {
            child: None,
            client_url,
            dir,
            binary: binary.to_path_buf(),
            args,
            env: Vec::new(),
            curl_args: Vec::new(),
        }
    }

    /// Starts the process and waits until it serves.
    pub fn spawn(&mut self) {
        self.spawn_no_wait();
        self.wait_ready();
    }

    /// Starts the process without waiting (members of a cluster serve only once a majority
    /// runs).
    pub fn spawn_no_wait(&mut self) {
        // Appends, so a restarted member's log keeps what happened before the kill.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("server.log"))
            .expect("log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// `curl -sS` with [`Member::curl_args`] and `args` (URLs relative to the client URL
    /// are written `{c}/path`).
    pub fn curl(&self, args: &[&str]) -> Curl {
        let mut all: Vec<String> = self.curl_args.clone();
        all.extend(args.iter().map(|a| a.replace("{c}", &self.client_url)));
        curl(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Waits until a write goes through (a leader exists and the API serves).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        if self.client_url.starts_with("https://") {
            while Instant::now() < deadline {
                let r = self.curl(&["--max-time", "2", "{c}/health"]);
                if r.ok() && r.stdout.contains("\"health\":\"true\"") {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!(
                "{} did not become ready over https; log:\n{}",
                self.binary.display(),
                self.log()
            );
        }
        while Instant::now() < deadline {
            if let Ok(r) = ureq::get(&format!("{}/health", self.client_url))
                .timeout(Duration::from_secs(2))
                .call()
            {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not become ready; log:\n{}",
            self.binary.display(),
            self.log()
        );
    }

    /// The member's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `timeout` for the process to exit on its own: its exit status, or `None`
    /// if it is still running.
    pub fn wait_exit_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits up to `timeout` for the process to exit on its own (a crash point); true if
    /// it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_alive() {
                if let Some(mut c) = self.child.take() {
                    let _ = c.wait();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process ID, while a process is running (or stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends the signal `name` (`STOP`, `CONT`, ...) with kill(1); true if it was delivered.
    /// A stopped member is still killed by drop (SIGKILL ends stopped processes too).
    pub fn signal(&self, name: &str) -> bool {
        let Some(pid) = self.pid() else { return false };
        Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sets `flag` on the command line of the next start: every earlier occurrence (`--f v`
    /// or `--f=v`) goes, then `flag` is appended with `value` (alone when `None`, for a
    /// boolean flag).
    pub fn set_flag(&mut self, flag: &str, value: Option<&str>) {
        let mut args = Vec::with_capacity(self.args.len() + 2);
        let mut it = std::mem::take(&mut self.args).into_iter().peekable();
        while let Some(a) = it.next() {
            if a == flag {
                // The value, unless the next argument is another flag (a bare boolean).
                if it.peek().is_some_and(|v| !v.starts_with("--")) {
                    it.next();
                }
            } else if !a.starts_with(&format!("{flag}=")) {
                args.push(a);
            }
        }
        args.push(flag.to_string());
        args.extend(value.map(str::to_string));
        self.args = args;
    }

    /// Starts the process again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a `curl` run gave.
#[derive(Debug, Clone)]
pub struct Curl {
    /// curl's exit code (0: a response was received; 35, 56, 58, 60: TLS failures).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Curl {
    /// Whether curl got an answer.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// `ETCDCTL_API=2 etcdctl --endpoints <endpoints> args...` (Debian's etcd-client): whether it
/// succeeded, its stdout and its stderr.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .expect("etcdctl runs (Debian etcd-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`etcdctl`] with stdout and stderr in one string (what a failed assertion shows).
pub fn etcdctl_combined(endpoints: &str, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = etcdctl(endpoints, args);
    (ok, out + &err)
}

/// Runs `curl -sS args...` (the system's curl: it speaks TLS with the test's fixtures
/// without a TLS stack in the harness).
pub fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl): {e}"));
    Curl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub etcd_index: Option<u64>,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (Null if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends one request; `form` becomes an `application/x-www-form-urlencoded` body.
pub fn request(base: &str, method: &str, path: &str, form: Option<&str>) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build();
    let req = agent.request(method, &format!("{base}{path}"));
    let res = match form {
        Some(f) => req
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(f),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: transport error {e}"),
    };
    let status = resp.status();
    let etcd_index = resp.header("X-Etcd-Index").and_then(|v| v.parse().ok());
    let content_type = resp.header("Content-Type").unwrap_or("").to_string();
    let body = resp.into_string().unwrap_or_default();
    Reply {
        status,
        etcd_index,
        content_type,
        body,
    }
}

/// Rewrites absolute indexes as offsets from `base`, masks timestamps and orders listings
/// by key, in place.
pub fn normalize(v: &mut Value, base: u64) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "modifiedIndex" | "createdIndex" | "index" => {
                        if let Some(n) = val.as_u64() {
                            *val = Value::from(n as i64 - base as i64);
                        }
                    }
                    "expiration" => *val = Value::from("<time>"),
                    "key" => {
                        if let Some(s) = val.as_str() {
                            *val = Value::from(normalize_key(s, base));
                        }
                    }
                    "nodes" => {
                        // Unsorted listings come in map order on both servers (random in
                        // etcd): compare them as sets.
                        normalize(val, base);
                        if let Some(items) = val.as_array_mut() {
                            items.sort_by(|a, b| a["key"].to_string().cmp(&b["key"].to_string()));
                        }
                    }
                    _ => normalize(val, base),
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                normalize(i, base);
            }
        }
        _ => {}
    }
}

/// In-order keys are 20-digit createdIndexes: make them relative too.
fn normalize_key(key: &str, base: u64) -> String {
    key.split('/')
        .map(|seg| {
            if seg.len() == 20 && seg.bytes().all(|b| b.is_ascii_digit()) {
                let n: u64 = seg.parse().unwrap_or(0);
                format!("<seq{}>", n as i64 - base as i64)
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A fresh Debian etcd (the oracle) and a fresh oxcd side by side for differential tests,
/// with each one's index before the test's requests and the differences found so far.
pub struct Pair {
    pub etcd: Member,
    pub oxcd: Member,
    pub etcd_base: u64,
    pub oxcd_base: u64,
    pub mismatches: Vec<String>,
}

impl Pair {
    /// Starts both servers with default flags (`oxcd` is the binary under test).
    pub fn start(oxcd: &Path) -> Pair {
        assert!(
            Path::new(ETCD).exists(),
            "Debian etcd-server is required: apt-get install etcd-server etcd-client"
        );
        let etcd = Member::start(Path::new(ETCD), &[]);
        let oxcd = Member::start(oxcd, &[]);
        let (etcd_base, oxcd_base) = (base_index(&etcd), base_index(&oxcd));
        Pair {
            etcd,
            oxcd,
            etcd_base,
            oxcd_base,
            mismatches: Vec::new(),
        }
    }

    /// Fails the test with every difference recorded.
    pub fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} mismatches:\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
    }
}

/// The server's index before a test's requests: `X-Etcd-Index` of `GET /v2/keys/`.
pub fn base_index(m: &Member) -> u64 {
    request(&m.client_url, "GET", "/v2/keys/", None)
        .etcd_index
        .expect("X-Etcd-Index on GET /v2/keys/")
}

/// Replaces absolute indexes in etcdctl's error lines (`[12]`) so two servers compare.
pub fn mask_etcdctl_index(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let masked = match (line.rfind('['), line.ends_with(']')) {
            (Some(i), true)
                if line[i + 1..line.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
            {
                format!("{}[N]", &line[..i])
            }
            _ => line.to_string(),
        };
        out.push_str(&masked);
        out.push('\n');
    }
    out
}

/// A normalized reply, comparable across servers.
pub fn normalized(reply: &Reply, base: u64) -> (u16, Option<i64>, String, Value) {
    let mut body = reply.json();
    if body.is_null() {
        body = Value::from(reply.body.clone());
    }
    normalize(&mut body, base);
    (
        reply.status,
        reply.etcd_index.map(|i| i as i64 - base as i64),
        reply.content_type.clone(),
        body,
    )
}

/// The HTTP client, re-exported for tests that stream.
pub use ureq;

pub mod cluster;
pub mod linearizability;
pub mod proxy;
