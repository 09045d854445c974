//! The request/response workloads (put, get, mixed, ttl): the untimed population of the key
//! space, then the timed run of `--clients` tasks sharing `--conns` connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use http::Method;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{Config, Stop, Workload};
use crate::client::{status_error, Conn, Endpoint, ReqError};
use crate::keys::{get_query, put_body, random_put_body, ttl_refresh_query, KeySpace, Rng};
use crate::progress::{Limiter, Progress};
use crate::stats::{Errors, Recorder, Report};

/// What every client task shares.
struct Ctx {
    conns: Vec<Mutex<Conn>>,
    keys: KeySpace,
    put_body: Bytes,
    /// A fresh random value per PUT (`--random-values`) instead of `put_body`.
    random_values: Option<usize>,
    workload: Workload,
    stop: Stop,
    deadline: OnceLock<Instant>,
    limiter: Option<Limiter>,
    issued: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    rec: std::sync::Mutex<Recorder>,
}

impl Ctx {
    /// Claims the next request's sequence number, or None when the run is over.
    fn claim(&self) -> Option<u64> {
        match self.stop {
            Stop::Total(n) => {
                let s = self.issued.fetch_add(1, Ordering::Relaxed);
                (s < n).then_some(s)
            }
            Stop::Duration(_) => {
                let over = self.deadline.get().is_some_and(|&d| Instant::now() >= d);
                (!over).then(|| self.issued.fetch_add(1, Ordering::Relaxed))
            }
        }
    }

    /// A PUT's body.
    fn body(&self, rng: &mut Rng) -> Bytes {
        match self.random_values {
            Some(len) => random_put_body(len, rng),
            None => self.put_body.clone(),
        }
    }

    /// The `seq`-th request: method, path, body, and whether it is a write.
    fn request(&self, seq: u64, rng: &mut Rng) -> (Method, String, Option<Bytes>, bool) {
        let read = |quorum, rng: &mut Rng| {
            let path = self.keys.pick(seq, false, rng) + get_query(quorum);
            (Method::GET, path, None, false)
        };
        match self.workload {
            Workload::Put { sequential_keys } => {
                let path = self.keys.pick(seq, sequential_keys, rng);
                (Method::PUT, path, Some(self.body(rng)), true)
            }
            Workload::Get { quorum } => read(quorum, rng),
            Workload::Mixed { read_ratio, quorum } => {
                if rng.unit() < read_ratio {
                    read(quorum, rng)
                } else {
                    let path = self.keys.pick(seq, false, rng);
                    (Method::PUT, path, Some(self.body(rng)), true)
                }
            }
            Workload::Ttl { ttl } => {
                let path = self.keys.pick(seq, false, rng) + &ttl_refresh_query(ttl);
                (Method::PUT, path, None, true)
            }
            Workload::Watch { .. } => unreachable!("watch has its own driver"),
        }
    }
}

/// Whether a status counts as success: 200/201 for writes, any 2xx for reads.
pub fn accepted(write: bool, status: u16) -> bool {
    if write {
        status == 200 || status == 201
    } else {
        (200..300).contains(&status)
    }
}

/// Runs a put, get, mixed or ttl workload.
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    let endpoints: Arc<[Endpoint]> = cfg.endpoints.clone().into();
    let ctx = Arc::new(Ctx {
        conns: (0..cfg.conns)
            .map(|j| Mutex::new(Conn::new(endpoints.clone(), j, cfg.timeout)))
            .collect(),
        keys: KeySpace::new(&cfg.prefix, cfg.key_size, cfg.key_space),
        put_body: put_body(cfg.val_size),
        random_values: cfg.random_values.then_some(cfg.val_size),
        workload: cfg.workload.clone(),
        stop: cfg.stop,
        deadline: OnceLock::new(),
        limiter: cfg.rate.map(Limiter::new),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rec: std::sync::Mutex::new(Recorder::default()),
    });
    match cfg.workload {
        Workload::Get { .. } | Workload::Mixed { .. } => populate(&ctx, String::new()).await?,
        Workload::Ttl { ttl } => populate(&ctx, format!("?ttl={ttl}")).await?,
        _ => {}
    }
    let start = Instant::now();
    if let Stop::Duration(d) = cfg.stop {
        let _ = ctx.deadline.set(start + d);
    }

    let p = ctx.clone();
    let target = match cfg.stop {
        Stop::Total(n) => n.to_string(),
        Stop::Duration(d) => format!("{:.0}s", d.as_secs_f64()),
    };
    let mut last = (0u64, Instant::now());
    let progress = Progress::start(move || {
        let done = p.done.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (done - last.0) as f64 / (now - last.1).as_secs_f64();
        last = (done, now);
        let elapsed = (now - start).as_secs_f64();
        let errors = p.errors.load(Ordering::Relaxed);
        format!("{done}/{target}  {rate:.0} req/s  {errors} errors  {elapsed:.0}s")
    });

    let mut set = JoinSet::new();
    for id in 0..cfg.clients {
        set.spawn(client(id, ctx.clone()));
    }
    while let Some(r) = set.join_next().await {
        r?;
    }
    let elapsed = start.elapsed();
    progress.stop();
    let rec = ctx.rec.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Report::from_recorder(cfg.workload.name(), &rec, elapsed))
}

async fn client(id: usize, ctx: Arc<Ctx>) {
    let mut rng = Rng::new(seed() ^ (id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let conn = &ctx.conns[id % ctx.conns.len()];
    while let Some(seq) = ctx.claim() {
        if let Some(l) = &ctx.limiter {
            l.wait().await;
            if ctx.deadline.get().is_some_and(|&d| Instant::now() >= d) {
                break;
            }
        }
        let (method, path, body, write) = ctx.request(seq, &mut rng);
        let t0 = Instant::now();
        let result = conn.lock().await.request(method, &path, body).await;
        let latency = t0.elapsed();
        let failure = match &result {
            Ok(r) if accepted(write, r.status) => None,
            Ok(r) => Some(status_error(r.status, &r.body)),
            Err(e) => Some(e.kind()),
        };
        if failure.is_some() {
            ctx.errors.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut rec = ctx.rec.lock().unwrap_or_else(|e| e.into_inner());
            match failure {
                None => rec.ok(latency),
                Some(kind) => rec.error(kind),
            }
        }
        if matches!(result, Err(ReqError::Connect(_))) {
            // Do not spin on a dead endpoint.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ctx.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes every key of the key space once (untimed), `query` appended to each path.
async fn populate(ctx: &Arc<Ctx>, query: String) -> anyhow::Result<()> {
    let n = ctx.keys.size();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for j in 0..ctx.conns.len() {
        let (ctx, query) = (ctx.clone(), query.clone());
        set.spawn(async move {
            let mut errors = Errors::default();
            let mut conn = ctx.conns[j].lock().await;
            let mut i = j as u64;
            while i < n {
                let path = ctx.keys.path(i) + &query;
                match conn
                    .request(Method::PUT, &path, Some(ctx.put_body.clone()))
                    .await
                {
                    Ok(r) if accepted(true, r.status) => {}
                    Ok(r) => errors.add(status_error(r.status, &r.body)),
                    Err(e) => errors.add(e.kind()),
                }
                i += ctx.conns.len() as u64;
            }
            errors
        });
    }
    let mut errors = Errors::default();
    while let Some(r) = set.join_next().await {
        errors.merge(&r?);
    }
    if errors.total() > 0 {
        bail!(
            "populating {n} keys: {} of them failed: {:?}",
            errors.total(),
            errors.0
        );
    }
    eprintln!(
        "populated {n} keys in {:.2}s (untimed)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_statuses() {
        assert!(accepted(true, 200) && accepted(true, 201));
        assert!(!accepted(true, 204) && !accepted(true, 412));
        assert!(accepted(false, 200) && accepted(false, 204));
        assert!(!accepted(false, 404) && !accepted(false, 307));
    }
}
