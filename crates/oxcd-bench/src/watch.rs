//! The watch workload: N long-poll watchers (one connection each, spread over the endpoints)
//! on one key or, recursively, on the prefix; W PUTs issued on a fixed schedule (open loop).
//! Delivery latency = when a watcher received the event − when that PUT was acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::Method;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{Config, Workload};
use crate::client::{modified_index, status_error, Conn, Endpoint, ReqError};
use crate::keys::put_body;
use crate::progress::Progress;
use crate::stats::{summarize, Errors, Recorder, Report, WatchFigures};
use crate::workload::accepted;

/// At most this many watchers connect and register at once.
const CONNECT_GATE: usize = 128;

/// What the driver tells the watchers.
#[derive(Debug, Clone, Copy)]
struct Ctl {
    /// Index of the last acknowledged write, once the writer is done.
    final_index: u64,
    cancel: bool,
}

#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    writes: AtomicU64,
    emfile: AtomicBool,
}

/// What one watcher saw: (modifiedIndex, receipt time) per event, and its errors.
struct Seen {
    events: Vec<(u64, Instant)>,
    errors: Errors,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    let Workload::Watch {
        watchers,
        writes,
        watch_prefix,
    } = cfg.workload
    else {
        unreachable!("not a watch workload")
    };
    warn_fd_limit(watchers);
    let endpoints: Arc<[Endpoint]> = cfg.endpoints.clone().into();
    let key = format!("/v2/keys/{}/watchkey", cfg.prefix);
    let watch_path = if watch_prefix {
        format!("/v2/keys/{}?wait=true&recursive=true", cfg.prefix)
    } else {
        format!("{key}?wait=true")
    };
    let body = put_body(cfg.val_size);

    // The initial write tells where to start watching.
    let mut writer = Conn::new(endpoints.clone(), 0, cfg.timeout);
    let r = writer
        .request(Method::PUT, &key, Some(body.clone()))
        .await
        .map_err(|e| anyhow!("initial write to {key}: {}", e.kind()))?;
    if !accepted(true, r.status) {
        bail!(
            "initial write to {key}: {}",
            status_error(r.status, &r.body)
        );
    }
    let first = modified_index(&r.body).context("initial write: no node.modifiedIndex")? + 1;

    let (ctl_tx, ctl_rx) = watch::channel(Ctl {
        final_index: u64::MAX,
        cancel: false,
    });
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(CONNECT_GATE));
    let mut set = JoinSet::new();
    for i in 0..watchers {
        let conn = Conn::new(endpoints.clone(), i, cfg.timeout);
        let path = watch_path.clone();
        let (ctl, counters, gate) = (ctl_rx.clone(), counters.clone(), gate.clone());
        set.spawn(watcher(conn, path, first, cfg.timeout, ctl, gate, counters));
    }
    let expected = watchers as u64 * writes;
    let c = counters.clone();
    let progress = Progress::start(move || {
        let reg = c.registered.load(Ordering::Relaxed);
        let w = c.writes.load(Ordering::Relaxed);
        let errors = c.errors.load(Ordering::Relaxed);
        if w == 0 {
            format!("registered {reg}/{watchers} watchers  {errors} errors")
        } else {
            let got = c.received.load(Ordering::Relaxed);
            format!("writes {w}/{writes}  events {got}/{expected}  {errors} errors")
        }
    });

    // Wait until every watcher is registered (the response head arrives on registration).
    let t0 = Instant::now();
    while counters.registered.load(Ordering::Relaxed) < watchers as u64 {
        if counters.emfile.load(Ordering::Relaxed) {
            ctl_tx.send_modify(|c| c.cancel = true);
            progress.stop();
            bail!(
                "too many open files (EMFILE) while opening {watchers} watcher connections: \
                 raise the limit, e.g. `ulimit -n {}`",
                watchers + 1024
            );
        }
        if t0.elapsed() > cfg.timeout {
            eprintln!(
                "\nwarning: only {}/{watchers} watchers registered after {:.0}s; writing anyway",
                counters.registered.load(Ordering::Relaxed),
                cfg.timeout.as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let registered = counters.registered.load(Ordering::Relaxed);
    eprintln!(
        "\r{registered}/{watchers} watchers registered in {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    // The writer: W PUTs on a fixed schedule, spaced by --rate (else 10 ms, etcd's
    // watch-latency default of 100 puts/s). The schedule is open-loop: a PUT that is slow to
    // be acknowledged does not delay the next one (it goes out on another connection), so
    // every server gets the same offered load. (A closed-loop writer lets the server's write
    // latency set the write rate: a server that acknowledges writes quickly under the
    // watch storm would be handed more events per second than one that stalls the writer.)
    let spacing = cfg.rate.map_or(Duration::from_millis(10), |r| {
        Duration::from_secs_f64(1.0 / r)
    });
    let mut acks: HashMap<u64, (Instant, Instant)> = HashMap::new();
    let mut rec = Recorder::default();
    let start = Instant::now();
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel::<Conn>();
    let _ = idle_tx.send(writer);
    let mut puts = JoinSet::new();
    for w in 0..writes {
        tokio::time::sleep_until(start + spacing.mul_f64(w as f64)).await;
        let mut conn = idle_rx
            .try_recv()
            .unwrap_or_else(|_| Conn::new(endpoints.clone(), w as usize, cfg.timeout));
        let (key, body, idle_tx, counters) =
            (key.clone(), body.clone(), idle_tx.clone(), counters.clone());
        puts.spawn(async move {
            let sent = Instant::now();
            let result = conn.request(Method::PUT, &key, Some(body)).await;
            let acked = Instant::now();
            let _ = idle_tx.send(conn);
            counters.writes.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(r) if accepted(true, r.status) => match modified_index(&r.body) {
                    Some(m) => Ok((m, sent, acked)),
                    None => Err("writer: reply without node.modifiedIndex".to_string()),
                },
                Ok(r) => Err(format!("writer {}", status_error(r.status, &r.body))),
                Err(e) => Err(format!("writer {}", e.kind())),
            }
        });
    }
    while let Some(put) = puts.join_next().await {
        match put.context("writer task")? {
            Ok((m, sent, acked)) => {
                acks.insert(m, (sent, acked));
            }
            Err(kind) => rec.error(kind),
        }
    }
    let writer_done = Instant::now();
    let last = acks.keys().copied().max().unwrap_or(0);
    ctl_tx.send_modify(|c| c.final_index = last);

    // Drain: wait for the watchers to see the last write, at most --timeout.
    let mut seen = Vec::with_capacity(watchers);
    let drain = tokio::time::timeout(cfg.timeout, async {
        while let Some(r) = set.join_next().await {
            seen.push(r);
        }
    })
    .await;
    if drain.is_err() {
        ctl_tx.send_modify(|c| c.cancel = true);
        while let Some(r) = set.join_next().await {
            seen.push(r);
        }
    }
    progress.stop();

    let mut delivered = 0u64;
    let mut negative = 0u64;
    let mut from_send = Recorder::default();
    let mut end = writer_done;
    for s in seen {
        let s = s?;
        rec.errors.merge(&s.errors);
        for (m, t) in s.events {
            let Some(&(sent, ack)) = acks.get(&m) else {
                continue;
            };
            delivered += 1;
            from_send.ok(t - sent);
            end = end.max(t);
            if t < ack {
                negative += 1;
                rec.ok(Duration::ZERO);
            } else {
                rec.ok(t - ack);
            }
        }
    }
    let elapsed = end - start;
    let mut report = Report::from_recorder("watch", &rec, elapsed);
    report.total = writes;
    report.ok = acks.len() as u64;
    report.watch = Some(WatchFigures {
        delivered,
        expected,
        negative_latencies: negative,
        watchers: watchers as u64,
        registered,
        from_send_ms: summarize(&from_send.hist),
    });
    Ok(report)
}

/// Returns once the run is cancelled or the watcher has seen the last write.
async fn ended(ctl: &mut watch::Receiver<Ctl>, last_seen: u64) {
    loop {
        let c = *ctl.borrow_and_update();
        if c.cancel || last_seen >= c.final_index {
            return;
        }
        if ctl.changed().await.is_err() {
            return;
        }
    }
}

async fn watcher(
    mut conn: Conn,
    base: String,
    first: u64,
    timeout: Duration,
    mut ctl: watch::Receiver<Ctl>,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
) -> Seen {
    let mut seen = Seen {
        events: Vec::new(),
        errors: Errors::default(),
    };
    let mut permit = Some(gate.acquire_owned().await.expect("gate is never closed"));
    let (mut index, mut last_seen) = (first, 0u64);
    loop {
        let path = format!("{base}&waitIndex={index}");
        let exchange = async {
            let head = tokio::time::timeout(timeout, conn.start(Method::GET, &path, None)).await;
            let resp = head.unwrap_or(Err(ReqError::Timeout))?;
            if permit.take().is_some() {
                counters.registered.fetch_add(1, Ordering::Relaxed);
            }
            let reply = conn.finish(resp).await?;
            Ok::<_, ReqError>((reply, Instant::now()))
        };
        let result = tokio::select! {
            r = exchange => r,
            _ = ended(&mut ctl, last_seen) => break,
        };
        let kind = match result {
            Ok((r, at)) if r.status == 200 => match modified_index(&r.body) {
                Some(m) => {
                    seen.events.push((m, at));
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    last_seen = last_seen.max(m);
                    index = m + 1;
                    continue;
                }
                None => "watcher: event without node.modifiedIndex".to_string(),
            },
            Ok((r, _)) => {
                let kind = status_error(r.status, &r.body);
                if kind == "etcd errorCode 401" {
                    // History cleared past our index: those events are lost; go on from now.
                    if let Some(i) = json_index(&r.body) {
                        index = i + 1;
                    }
                }
                format!("watcher {kind}")
            }
            Err(e) => {
                if e.is_emfile() {
                    counters.emfile.store(true, Ordering::Relaxed);
                }
                conn.reset();
                format!("watcher {}", e.kind())
            }
        };
        seen.errors.add(kind);
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = ended(&mut ctl, last_seen) => break,
        }
    }
    seen
}

/// The `index` field of an etcd error body.
fn json_index(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("index")?
        .as_u64()
}

/// Warns when the soft open-file limit is below what the watchers need.
fn warn_fd_limit(watchers: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse::<usize>().ok());
    if let Some(soft) = soft {
        if watchers + 64 > soft {
            eprintln!(
                "warning: {watchers} watchers need about {} open files but the limit is {soft}; \
                 raise it with `ulimit -n {}`",
                watchers + 64,
                watchers + 1024
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_of_a_cleared_history_error() {
        let body = br#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"the requested history has been cleared [1008/1]","index":2007}"#;
        assert_eq!(json_index(body), Some(2007));
        assert_eq!(json_index(b"nope"), None);
    }

    #[tokio::test]
    async fn ended_follows_the_control_channel() {
        let (tx, mut rx) = watch::channel(Ctl {
            final_index: u64::MAX,
            cancel: false,
        });
        let wait = tokio::spawn(async move { ended(&mut rx, 5).await });
        tx.send_modify(|c| c.final_index = 9);
        tokio::task::yield_now().await;
        assert!(!wait.is_finished());
        tx.send_modify(|c| c.final_index = 5);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap()
            .unwrap();
    }
}
