//! Endpoints beside the keys API: `/version`, `/health`, `/metrics`, `/v2/machines`,
//! `/v2/stats/{self,store,leader}` and `/v2/members` — same paths, methods, JSON keys and
//! content types as etcd's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Response, StatusCode};
use oxcd_api::json::to_string as to_json;
use serde_json::json;

use super::body::RespBody;
use super::{json_response, method_not_allowed, text_error};
use crate::membership::id_to_string;
use crate::server::request::V2Request;
use crate::server::{EtcdServer, CLUSTER_VERSION, SERVER_API_VERSION};

/// `GET /version`.
pub fn version(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let cluster = server
        .shared
        .cluster_version
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "not_decided".to_string());
    let _ = CLUSTER_VERSION;
    json_response(to_json(
        &json!({ "etcdserver": SERVER_API_VERSION, "etcdcluster": cluster }),
    ))
}

/// `GET /health`: healthy when a leader is known and a quorum read goes through raft
/// within a second.
pub async fn health(server: &Arc<EtcdServer>, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let mut healthy = server.leader() != 0;
    if healthy {
        let probe = server.do_v2(V2Request::QuorumGet {
            path: String::new(),
            recursive: false,
            sorted: false,
        });
        healthy = matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(_))
        );
    }
    crate::metrics::observe_health(healthy);
    if healthy {
        let mut resp = Response::new(RespBody::full(r#"{"health":"true"}"#));
        resp.headers_mut().insert(
            "Content-Type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    } else {
        tracing::warn!("health: unhealthy (no leader or quorum read failed)");
        text_error(StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
    }
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET");
    }
    let status = &server.shared.status;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let gauges = crate::metrics::ServerGauges {
        committed: load(&status.commit_index),
        applied: load(&status.applied_index),
        pending: server.shared.wait.len() as u64,
        failed: load(&status.proposals_failed),
        leader_changes: load(&status.leader_changes),
        has_leader: load(&status.leader) != 0,
        is_leader: status.is_leader.load(std::sync::atomic::Ordering::Relaxed),
        store_index: server
            .shared
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index(),
    };
    let body = crate::metrics::render(gauges);
    let mut resp = Response::new(RespBody::full(body));
    resp.headers_mut().insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `GET /v2/machines`: client URLs of all members, comma-separated.
pub fn machines(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET,HEAD");
    }
    let mut resp = Response::new(RespBody::full(server.client_urls().join(", ")));
    resp.headers_mut().insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `GET /v2/stats/store`.
pub fn stats_store(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let body = server
        .shared
        .store
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .json_stats();
    json_response(body)
}

/// `GET /v2/stats/self`.
pub fn stats_self(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let status = &server.shared.status;
    let leader = status.leader.load(Ordering::Relaxed);
    let state = if status.is_leader.load(Ordering::Relaxed) {
        "StateLeader"
    } else if leader == 0 {
        "StateCandidate"
    } else {
        "StateFollower"
    };
    let leader_since =
        crate::server::request::unix_nanos_to_time(status.leader_since.load(Ordering::Relaxed));
    let uptime = SystemTime::now()
        .duration_since(leader_since)
        .unwrap_or_default();
    let mut body = json!({
        "name": server.shared.name,
        "id": id_to_string(server.shared.member_id),
        "state": state,
        "startTime": oxcd_api::time::format_rfc3339_nano(server.shared.start_time),
        "leaderInfo": {
            "leader": id_to_string(leader),
            "uptime": go_duration(uptime),
            "startTime": oxcd_api::time::format_rfc3339_nano(leader_since),
        },
        "recvAppendRequestCnt": status.recv_append_requests.load(Ordering::Relaxed),
    });
    // etcd's rate fields are omitted while zero, and follow their counters.
    let obj = body.as_object_mut().expect("built as an object");
    if let Some((pkg, bw)) = status.recv_rate.rates() {
        obj.insert("recvPkgRate".into(), json!(pkg));
        obj.insert("recvBandwidthRate".into(), json!(bw));
    }
    obj.insert(
        "sendAppendRequestCnt".into(),
        json!(status.send_append_requests.load(Ordering::Relaxed)),
    );
    if let Some((pkg, bw)) = status.send_rate.rates() {
        obj.insert("sendPkgRate".into(), json!(pkg));
        obj.insert("sendBandwidthRate".into(), json!(bw));
    }
    json_response(to_json(&body))
}

/// `GET /v2/stats/leader`: only the leader answers; others get 403 as in etcd.
pub fn stats_leader(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    if !server.shared.status.is_leader.load(Ordering::Relaxed) {
        let mut resp = json_response(to_json(&json!({"message": "not current leader"})));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    let mut followers = serde_json::Map::new();
    let members = server
        .shared
        .members
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (id, f) in server.shared.leader_stats.followers() {
        // Followers of the current membership only: a removed member's figures go with it.
        if id == server.shared.member_id || !members.contains_key(&id) {
            continue;
        }
        followers.insert(
            id_to_string(id),
            json!({
                "latency": {
                    "current": f.current,
                    "average": f.average(),
                    "standardDeviation": f.std_dev(),
                    "minimum": f.min,
                    "maximum": f.max,
                },
                "counts": { "fail": f.fail, "success": f.success },
            }),
        );
    }
    let body = json!({
        "leader": id_to_string(server.shared.member_id),
        "followers": followers,
    });
    json_response(to_json(&body))
}

/// Peer `GET /members`: the member list as a JSON array (what a joining member reads).
pub fn peer_members(server: &EtcdServer, method: &Method) -> Response<RespBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let members = server
        .shared
        .members
        .read()
        .unwrap_or_else(|e| e.into_inner());
    // etcd's `membership.Member` as JSON: the ID a number (the client API shows it in hex).
    let list: Vec<_> = members
        .values()
        .map(|m| {
            json!({
                "id": m.id,
                "peerURLs": m.peer_urls,
                "name": m.name,
                "clientURLs": m.client_urls,
            })
        })
        .collect();
    let mut resp = json_response(format!("{}\n", serde_json::Value::Array(list)));
    resp.headers_mut().insert(
        super::names::X_ETCD_CLUSTER_ID,
        server.cluster_id_header.clone(),
    );
    resp
}

/// A member as etcd's members API shows it.
pub fn member_json(m: &crate::membership::Member) -> serde_json::Value {
    json!({
        "id": id_to_string(m.id),
        "name": m.name,
        "peerURLs": m.peer_urls,
        "clientURLs": m.client_urls,
    })
}

/// etcd's `HTTPError`: `{"message":"..."}` with a status.
pub fn http_error(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut resp = json_response(to_json(&json!({ "message": msg })));
    *resp.status_mut() = status;
    resp
}

/// Formats a duration as Go's `time.Duration.String` does ("1m2.5s", "812.5ms", "0s").
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    fn frac(value: u128, unit: u128) -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let width = unit.to_string().len() - 1;
        let digits = format!("{rest:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 1_000_000));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let mins = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let secs_str = frac(secs * 1_000_000_000 + sub, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{mins}m{secs_str}s")
    } else if mins > 0 {
        format!("{mins}m{secs_str}s")
    } else {
        format!("{secs_str}s")
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(
            go_duration(Duration::from_nanos(1_812_583_305)),
            "1.812583305s"
        );
        assert_eq!(go_duration(Duration::from_millis(62_500)), "1m2.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_micros(812_500)), "812.5ms");
        assert_eq!(go_duration(Duration::from_nanos(1500)), "1.5µs");
    }
}
