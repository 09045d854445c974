//! Prometheus metrics (`/metrics`), named as etcd names them so existing dashboards work.
//!
//! Request counters and latency histograms are updated on the request path; the raft and
//! store gauges are handed in ([`ServerGauges`]) when `/metrics` is scraped; the raft
//! thread only observes the WAL fsync histogram (atomic adds, no registry lookup).
//!
//! This module sits below everything that records into it: it knows nothing of the server,
//! raft or the store, so any layer may record here without an import cycle.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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

/// The server's gauges at the moment of a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerGauges {
    /// Highest committed index.
    pub committed: u64,
    /// Highest applied index.
    pub applied: u64,
    /// Requests waiting for their proposals.
    pub pending: u64,
    /// Proposals raft dropped.
    pub failed: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// Whether a leader is known.
    pub has_leader: bool,
    /// Whether this member leads.
    pub is_leader: bool,
    /// The v2 store's index.
    pub store_index: u64,
}

/// Renders all metrics in Prometheus text format.
pub fn render(g: ServerGauges) -> Vec<u8> {
    let m = metrics();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    m.proposals_committed.set(gauge(g.committed));
    m.proposals_applied.set(gauge(g.applied));
    m.proposals_pending.set(gauge(g.pending));
    m.proposals_failed.set(gauge(g.failed));
    m.leader_changes.set(gauge(g.leader_changes));
    m.has_leader.set(g.has_leader as i64);
    m.is_leader.set(g.is_leader as i64);
    m.store_index.set(gauge(g.store_index));
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    buf
}
