//! Prometheus metrics (`/metrics`), named as etcd names them so existing dashboards work.
//!
//! Request counters and latency histograms are updated on the request path; raft counters
//! are read from [`RaftStatus`](crate::raft::RaftStatus) when `/metrics` is scraped; the raft
//! thread only observes the WAL fsync histogram (atomic adds, no registry lookup).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::server::EtcdServer;

struct Metrics {
    registry: Registry,
    http_received: IntCounterVec,
    http_failed: IntCounterVec,
    http_duration: HistogramVec,
    /// The children of the two HTTP vectors for the common methods, looked up once: a
    /// label lookup hashes the labels on every request.
    by_method: Vec<(Method, IntCounter, prometheus::Histogram)>,
    health_success: IntCounter,
    health_failed: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    proposals_pending: IntGauge,
    proposals_failed: IntGauge,
    leader_changes: IntGauge,
    has_leader: IntGauge,
    is_leader: IntGauge,
    store_index: IntGauge,
    wal_fsync: prometheus::Histogram,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = Registry::new();
        let http_received = IntCounterVec::new(
            Opts::new(
                "etcd_http_received_total",
                "Counter of requests received into the system (successfully parsed and authd).",
            ),
            &["method"],
        )
        .expect("valid metric");
        let http_failed = IntCounterVec::new(
            Opts::new(
                "etcd_http_failed_total",
                "Counter of handle failures of requests (non-watches), by method (GET/PUT etc.) and code (400, 500 etc.).",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "etcd_http_successful_duration_seconds",
                "Bucketed histogram of processing time (s) of successfully handled requests (non-watches), by method (GET/PUT etc.).",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 13).expect("valid buckets")),
            &["method"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let m = Metrics {
            health_success: counter(
                "etcd_server_health_success",
                "The total number of successful health checks",
            ),
            health_failed: counter(
                "etcd_server_health_failures",
                "The total number of failed health checks",
            ),
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: gauge(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            leader_changes: gauge(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            store_index: gauge("oxcd_v2_store_index", "The current index of the v2 store."),
            wal_fsync: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_wal_fsync_duration_seconds",
                    "The latency distributions of fsync called by WAL.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
            )
            .expect("valid metric"),
            registry,
            by_method: [
                Method::GET,
                Method::PUT,
                Method::POST,
                Method::DELETE,
                Method::HEAD,
            ]
            .into_iter()
            .map(|m| {
                let c = http_received.with_label_values(&[m.as_str()]);
                let h = http_duration.with_label_values(&[m.as_str()]);
                (m, c, h)
            })
            .collect(),
            http_received,
            http_failed,
            http_duration,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http_received.clone()),
            Box::new(m.http_failed.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.health_success.clone()),
            Box::new(m.health_failed.clone()),
            Box::new(m.proposals_committed.clone()),
            Box::new(m.proposals_applied.clone()),
            Box::new(m.proposals_pending.clone()),
            Box::new(m.proposals_failed.clone()),
            Box::new(m.leader_changes.clone()),
            Box::new(m.has_leader.clone()),
            Box::new(m.is_leader.clone()),
            Box::new(m.store_index.clone()),
            Box::new(m.wal_fsync.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        m
    })
}

/// Records one handled HTTP request.
pub fn observe_http(method: &Method, status: StatusCode, elapsed: Duration) {
    let m = metrics();
    let cached = m.by_method.iter().find(|(k, _, _)| k == method);
    let name = method.as_str();
    match cached {
        Some((_, c, _)) => c.inc(),
        None => m.http_received.with_label_values(&[name]).inc(),
    }
    if status.is_client_error() || status.is_server_error() {
        m.http_failed
            .with_label_values(&[name, status.as_str()])
            .inc();
    } else {
        match cached {
            Some((_, _, h)) => h.observe(elapsed.as_secs_f64()),
            None => m
                .http_duration
                .with_label_values(&[name])
                .observe(elapsed.as_secs_f64()),
        }
    }
}

/// Records one WAL fdatasync (etcd's `etcd_disk_wal_fsync_duration_seconds`).
pub fn observe_wal_fsync(took: Duration) {
    metrics().wal_fsync.observe(took.as_secs_f64());
}

/// Records a health check.
pub fn observe_health(healthy: bool) {
    let m = metrics();
    if healthy {
        m.health_success.inc();
    } else {
        m.health_failed.inc();
    }
}

/// Renders all metrics in Prometheus text format.
pub fn render(server: &EtcdServer) -> Vec<u8> {
    let m = metrics();
    let status = &server.shared.status;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
    m.proposals_committed.set(load(&status.commit_index));
    m.proposals_applied.set(load(&status.applied_index));
    m.proposals_pending.set(server.shared.wait.len() as i64);
    m.proposals_failed.set(load(&status.proposals_failed));
    m.leader_changes.set(load(&status.leader_changes));
    m.has_leader.set((load(&status.leader) != 0) as i64);
    m.is_leader
        .set(status.is_leader.load(Ordering::Relaxed) as i64);
    m.store_index.set(
        server
            .shared
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index() as i64,
    );
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    buf
}
