//! Prometheus metrics (`/metrics`), named as etcd names them so existing dashboards work.
//!
//! Request counters and latency histograms are updated on the request path, in per-thread
//! shards ([`HttpCounts`]) summed when scraped; the raft and
//! store gauges are handed in ([`ServerGauges`]) when `/metrics` is scraped; the raft
//! thread only observes the WAL fsync histogram (atomic adds, no registry lookup).
//!
//! This module sits below everything that records into it: it knows nothing of the server,
//! raft or the store, so any layer may record here without an import cycle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

struct Metrics {
    registry: Registry,
    http: &'static HttpCounts,
    http_failed: IntCounterVec,
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
        let http: &'static HttpCounts = Box::leak(Box::new(HttpCounts::new()));
        let http_failed = IntCounterVec::new(
            Opts::new(
                "etcd_http_failed_total",
                "Counter of handle failures of requests (non-watches), by method (GET/PUT etc.) and code (400, 500 etc.).",
            ),
            &["method", "code"],
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
            http,
            http_failed,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(HttpCollector(m.http)),
            Box::new(m.http_failed.clone()),
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
    let failed = status.is_client_error() || status.is_server_error();
    m.http.observe(method, (!failed).then_some(elapsed));
    if failed {
        m.http_failed
            .with_label_values(&[method.as_str(), status.as_str()])
            .inc();
    }
}

/// The methods counted in shards; others (rare) in [`HttpCounts::other`].
const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::HEAD,
];

/// Buckets of `etcd_http_successful_duration_seconds`: 0.5 ms doubling, as etcd's.
const BUCKETS: usize = 13;

fn bucket_bounds() -> [f64; BUCKETS] {
    std::array::from_fn(|i| 0.0005 * f64::from(1u32 << i))
}

/// Shards: a thread counts in its own (round-robin by first use), so the workers do not
/// bounce one cache line between them on every request (measured: 2–3% of a GET's CPU).
const SHARDS: usize = 16;

/// One method's counts in one shard. Buckets are not cumulative here (summed at a scrape).
#[derive(Default)]
struct MethodCounts {
    received: AtomicU64,
    succeeded: AtomicU64,
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

#[derive(Default)]
#[repr(align(128))]
struct Shard([MethodCounts; METHODS.len()]);

/// A method's totals at a scrape.
#[derive(Clone, Default)]
struct Totals {
    received: u64,
    succeeded: u64,
    sum_nanos: u64,
    buckets: [u64; BUCKETS],
}

/// The bucket a duration is counted in (`le` its upper bound); none above the last.
fn bucket_of(bounds: &[f64; BUCKETS], d: Duration) -> Option<usize> {
    let secs = d.as_secs_f64();
    bounds.iter().position(|&b| secs <= b)
}

impl Totals {
    fn add(&mut self, elapsed: Option<Duration>, bounds: &[f64; BUCKETS]) {
        self.received += 1;
        if let Some(d) = elapsed {
            self.succeeded += 1;
            self.sum_nanos = self.sum_nanos.saturating_add(d.as_nanos() as u64);
            if let Some(i) = bucket_of(bounds, d) {
                self.buckets[i] += 1;
            }
        }
    }
}

/// `etcd_http_received_total` and `etcd_http_successful_duration_seconds`, by method:
/// counted per thread, summed into the two metric families when scraped (exact: every
/// request answered before a scrape is in it).
pub struct HttpCounts {
    shards: [Shard; SHARDS],
    /// Methods other than [`METHODS`] (an `OPTIONS`, a `PATCH`, an unknown one).
    other: Mutex<Vec<(String, Totals)>>,
    bounds: [f64; BUCKETS],
    received_desc: Desc,
    duration_desc: Desc,
}

const RECEIVED_HELP: &str =
    "Counter of requests received into the system (successfully parsed and authd).";
const DURATION_HELP: &str = "Bucketed histogram of processing time (s) of successfully handled requests (non-watches), by method (GET/PUT etc.).";

impl HttpCounts {
    fn new() -> HttpCounts {
        let desc = |name: &str, help: &str| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                vec!["method".to_string()],
                Default::default(),
            )
            .expect("valid metric")
        };
        HttpCounts {
            shards: std::array::from_fn(|_| Shard::default()),
            other: Mutex::new(Vec::new()),
            bounds: bucket_bounds(),
            received_desc: desc("etcd_http_received_total", RECEIVED_HELP),
            duration_desc: desc("etcd_http_successful_duration_seconds", DURATION_HELP),
        }
    }

    /// Counts a request; `elapsed` is `Some` for a successful one.
    fn observe(&self, method: &Method, elapsed: Option<Duration>) {
        let Some(m) = METHODS.iter().position(|k| k == method) else {
            let mut other = self.other.lock().unwrap_or_else(|e| e.into_inner());
            let name = method.as_str();
            match other.iter_mut().find(|(n, _)| n == name) {
                Some((_, t)) => t.add(elapsed, &self.bounds),
                None => {
                    let mut t = Totals::default();
                    t.add(elapsed, &self.bounds);
                    other.push((name.to_string(), t));
                }
            }
            return;
        };
        let c = &self.shards[shard_index()].0[m];
        c.received.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = elapsed {
            c.succeeded.fetch_add(1, Ordering::Relaxed);
            c.sum_nanos
                .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            if let Some(i) = bucket_of(&self.bounds, d) {
                c.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn totals(&self) -> Vec<(String, Totals)> {
        let mut all: Vec<(String, Totals)> = METHODS
            .iter()
            .enumerate()
            .map(|(m, method)| {
                let mut t = Totals::default();
                for shard in &self.shards {
                    let c = &shard.0[m];
                    t.received += c.received.load(Ordering::Relaxed);
                    t.succeeded += c.succeeded.load(Ordering::Relaxed);
                    t.sum_nanos = t
                        .sum_nanos
                        .saturating_add(c.sum_nanos.load(Ordering::Relaxed));
                    for (sum, b) in t.buckets.iter_mut().zip(&c.buckets) {
                        *sum += b.load(Ordering::Relaxed);
                    }
                }
                (method.as_str().to_string(), t)
            })
            .collect();
        all.extend(
            self.other
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        all
    }
}

/// This thread's shard.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

fn method_label(method: &str) -> Vec<proto::LabelPair> {
    let mut label = proto::LabelPair::default();
    label.set_name("method".to_string());
    label.set_value(method.to_string());
    vec![label]
}

/// The registry's handle on the process's [`HttpCounts`].
struct HttpCollector(&'static HttpCounts);

impl Collector for HttpCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.received_desc, &self.0.duration_desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl HttpCounts {
    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.totals();
        let family = |desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>| {
            let mut f = MetricFamily::default();
            f.set_name(desc.fq_name.clone());
            f.set_help(desc.help.clone());
            f.set_field_type(kind);
            f.set_metric(metrics);
            f
        };
        let received = totals
            .iter()
            .map(|(method, t)| {
                let mut counter = proto::Counter::default();
                counter.set_value(t.received as f64);
                let mut m = proto::Metric::from_label(method_label(method));
                m.set_counter(counter);
                m
            })
            .collect();
        let durations = totals
            .iter()
            .map(|(method, t)| {
                let mut cumulative = 0;
                let buckets = t
                    .buckets
                    .iter()
                    .zip(&self.bounds)
                    .map(|(&n, &bound)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_cumulative_count(cumulative);
                        b.set_upper_bound(bound);
                        b
                    })
                    .collect();
                let mut h = proto::Histogram::default();
                h.set_sample_count(t.succeeded);
                h.set_sample_sum(t.sum_nanos as f64 / 1e9);
                h.set_bucket(buckets);
                let mut m = proto::Metric::from_label(method_label(method));
                m.set_histogram(h);
                m
            })
            .collect();
        vec![
            family(&self.received_desc, MetricType::COUNTER, received),
            family(&self.duration_desc, MetricType::HISTOGRAM, durations),
        ]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_counts_from_many_threads_sum_into_cumulative_histograms() {
        let counts: &'static HttpCounts = Box::leak(Box::new(HttpCounts::new()));
        let ms = Duration::from_millis;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    counts.observe(&Method::GET, Some(ms(0))); // first bucket (0.5 ms)
                    counts.observe(&Method::GET, Some(ms(3))); // le 0.004
                    counts.observe(&Method::GET, None); // failed: received only
                    counts.observe(&Method::GET, Some(Duration::from_secs(10)));
                    // above all
                });
            }
        });
        counts.observe(&Method::OPTIONS, Some(ms(1)));
        counts.observe(&Method::OPTIONS, None);
        let families = HttpCollector(counts).collect();
        let received = &families[0];
        assert_eq!(received.name(), "etcd_http_received_total");
        let value = |family: &MetricFamily, method: &str| {
            family
                .get_metric()
                .iter()
                .find(|m| m.get_label()[0].value() == method)
                .cloned()
                .unwrap_or_else(|| panic!("no {method} in {}", family.name()))
        };
        assert_eq!(value(received, "GET").get_counter().get_value(), 16.0);
        assert_eq!(value(received, "OPTIONS").get_counter().get_value(), 2.0);
        assert_eq!(value(received, "PUT").get_counter().get_value(), 0.0);

        let durations = &families[1];
        assert_eq!(durations.name(), "etcd_http_successful_duration_seconds");
        let get = value(durations, "GET");
        let h = get.get_histogram();
        assert_eq!(h.get_sample_count(), 12);
        assert!(
            (h.get_sample_sum() - 4.0 * 10.003).abs() < 1e-9,
            "{}",
            h.get_sample_sum()
        );
        let cumulative: Vec<(f64, u64)> = h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        assert_eq!(cumulative.len(), BUCKETS);
        assert_eq!(cumulative[0], (0.0005, 4));
        assert_eq!(cumulative[3], (0.004, 8));
        assert_eq!(cumulative[BUCKETS - 1], (2.048, 8));
        let options = value(durations, "OPTIONS");
        assert_eq!(options.get_histogram().get_sample_count(), 1);
        assert_eq!(
            options.get_histogram().get_bucket()[1].cumulative_count(),
            1
        );
    }
}
