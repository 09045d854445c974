//! Results: per-task recorders (HDR latency histogram in microseconds plus error counts by
//! kind), their summary, and the final report as a table or one JSON object (pure code,
//! unit-tested).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest recordable latency: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

/// Failures by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &Errors) {
        for (k, n) in &other.0 {
            *self.0.entry(k.clone()).or_default() += n;
        }
    }
}

/// Latencies of successful requests and failures by kind. The histogram takes ~190 KB,
/// so recorders are shared, not kept per client or per watcher.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub hist: Histogram<u64>,
    pub errors: Errors,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
            errors: Errors::default(),
        }
    }
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_US);
        self.hist.record(us).expect("value within bounds");
    }

    pub fn error(&mut self, kind: impl Into<String>) {
        self.errors.add(kind);
    }

    pub fn ok_count(&self) -> u64 {
        self.hist.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.total()
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Summarizes a histogram of microseconds; all zero when empty.
pub fn summarize(h: &Histogram<u64>) -> LatencyMs {
    if h.is_empty() {
        return LatencyMs::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencyMs {
        min: ms(h.min()),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Watch-only figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WatchFigures {
    /// Events matched to an acknowledged write.
    pub delivered: u64,
    /// watchers × writes.
    pub expected: u64,
    /// Deliveries seen before the writer saw its acknowledgement (recorded as 1 µs).
    pub negative_latencies: u64,
    pub watchers: u64,
    pub registered: u64,
    /// Delivery latency measured from when the PUT was sent instead (never negative).
    pub from_send_ms: LatencyMs,
}

/// The final result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    /// Successful requests (watch: delivered events) per second.
    pub throughput: f64,
    pub latency_ms: LatencyMs,
    /// Requests completed, successful or not (watch: writes issued).
    pub total: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchFigures>,
}

impl Report {
    /// A report of a request/response workload.
    pub fn from_recorder(workload: &str, rec: &Recorder, elapsed: Duration) -> Report {
        let ok = rec.ok_count();
        let secs = elapsed.as_secs_f64();
        Report {
            workload: workload.to_string(),
            throughput: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency_ms: summarize(&rec.hist),
            total: ok + rec.error_count(),
            ok,
            errors: rec.errors.0.clone(),
            elapsed_s: secs,
            watch: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "Workload:     {}", self.workload);
        if let Some(x) = &self.watch {
            let _ = writeln!(
                w,
                "Watchers:     {} ({} registered)",
                x.watchers, x.registered
            );
            let _ = writeln!(w, "Writes:       {} ({} acknowledged)", self.total, self.ok);
            let _ = writeln!(
                w,
                "Delivered:    {} of {} expected",
                x.delivered, x.expected
            );
            let _ = writeln!(
                w,
                "Early (<0):   {} (clamped to 1 µs)",
                x.negative_latencies
            );
            let f = &x.from_send_ms;
            let _ = writeln!(
                w,
                "From PUT send (ms): p50 {:.3}  p99 {:.3}  max {:.3}",
                f.p50, f.p99, f.max
            );
            let _ = writeln!(w, "Elapsed:      {:.3} s", self.elapsed_s);
            let _ = writeln!(w, "Throughput:   {:.1} events/s", self.throughput);
            let _ = writeln!(w, "Delivery latency (ms):");
        } else {
            let _ = writeln!(w, "Requests:     {} ({} ok)", self.total, self.ok);
            let _ = writeln!(w, "Elapsed:      {:.3} s", self.elapsed_s);
            let _ = writeln!(w, "Throughput:   {:.1} req/s", self.throughput);
            let _ = writeln!(w, "Latency (ms):");
        }
        let l = &self.latency_ms;
        for (name, v) in [
            ("min", l.min),
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            let _ = writeln!(w, "  {name:<6} {v:>10.3}");
        }
        if self.errors.is_empty() {
            let _ = writeln!(w, "Errors:       none");
        } else {
            let _ = writeln!(w, "Errors:");
            for (k, n) in &self.errors {
                let _ = writeln!(w, "  {n:>8}  {k}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_latencies() {
        let mut r = Recorder::default();
        for ms in 1..=1000u64 {
            r.ok(Duration::from_millis(ms));
        }
        let l = summarize(&r.hist);
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(near(l.min, 1.0), "{l:?}");
        assert!(near(l.p50, 500.0), "{l:?}");
        assert!(near(l.p90, 900.0), "{l:?}");
        assert!(near(l.p99, 990.0), "{l:?}");
        assert!(near(l.p999, 999.0), "{l:?}");
        assert!(near(l.max, 1000.0), "{l:?}");
    }

    #[test]
    fn empty_and_tiny_latencies() {
        let mut r = Recorder::default();
        assert_eq!(summarize(&r.hist), LatencyMs::default());
        r.ok(Duration::ZERO);
        assert_eq!(summarize(&r.hist).max, 0.001, "zero is recorded as 1 µs");
    }

    #[test]
    fn errors_merge_by_kind() {
        let mut a = Recorder::default();
        a.ok(Duration::from_micros(100));
        a.error("http 500");
        let mut b = Errors::default();
        b.add("http 500");
        b.add("timeout");
        a.errors.merge(&b);
        assert_eq!(a.ok_count(), 1);
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.errors.0["http 500"], 2);
    }

    #[test]
    fn json_shape() {
        let mut r = Recorder::default();
        r.ok(Duration::from_millis(2));
        r.error("etcd errorCode 100");
        let rep = Report::from_recorder("put", &r, Duration::from_secs(2));
        let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(v["workload"], "put");
        assert_eq!(v["throughput"], 0.5);
        assert_eq!(v["total"], 2);
        assert_eq!(v["ok"], 1);
        assert_eq!(v["elapsed_s"], 2.0);
        assert_eq!(v["errors"]["etcd errorCode 100"], 1);
        for k in ["min", "p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][k].is_f64(), "{k}");
        }
        assert!(v.get("delivered").is_none());

        let mut w = rep.clone();
        w.watch = Some(WatchFigures {
            delivered: 90,
            expected: 100,
            negative_latencies: 1,
            watchers: 10,
            registered: 10,
            from_send_ms: LatencyMs::default(),
        });
        let v: serde_json::Value = serde_json::from_str(&w.to_json()).unwrap();
        assert_eq!(
            (v["delivered"].as_u64(), v["expected"].as_u64()),
            (Some(90), Some(100))
        );
        assert!(w.to_table().contains("Delivered:    90 of 100"));
    }

    #[test]
    fn table_lists_errors() {
        let mut r = Recorder::default();
        r.error("connect refused");
        let t = Report::from_recorder("get", &r, Duration::from_secs(1)).to_table();
        assert!(t.contains("connect refused"), "{t}");
        assert!(t.contains("p99.9"), "{t}");
    }
}
