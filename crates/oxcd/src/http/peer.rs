//! The receiving side of the peer transport: `POST /raft` (message batches) and
//! `POST /raft/snapshot` on the peer listeners.
//!
//! Every request must name our cluster in `X-Etcd-Cluster-ID`; a member of another cluster
//! is refused with 412 and one log line (rate-limited: a misconfigured peer retries every
//! 100 ms). The body is decoded in full before any message is stepped, so a garbled request
//! changes nothing. Messages addressed to another member are dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use raft::prelude::MessageType;

use super::body::RespBody;
use super::{method_not_allowed, text_error};
use crate::membership::id_to_string;
use crate::server::EtcdServer;
use crate::transport::{codec, HEADER_CLUSTER_ID, HEADER_FROM};

/// Largest message batch accepted on `/raft` (senders close batches at 8 MiB).
const MAX_STREAM_BODY: usize = 64 * 1024 * 1024;

/// Logs at most once per 5 seconds per call site sharing `last`.
fn rate_limited(last: &AtomicU64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prev = last.load(Ordering::Relaxed);
    now >= prev + 5
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Handles `POST /raft` and (with `snapshot`) `POST /raft/snapshot`.
pub async fn raft(
    server: &EtcdServer,
    req: Request<Incoming>,
    snapshot: bool,
) -> Response<RespBody> {
    static MISMATCH_LOGGED: AtomicU64 = AtomicU64::new(0);
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let ours = id_to_string(server.shared.cluster_id);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let theirs = header(HEADER_CLUSTER_ID);
    let from = header(HEADER_FROM);
    if theirs != ours {
        if rate_limited(&MISMATCH_LOGGED) {
            tracing::warn!(
                local_cluster = %ours,
                remote_cluster = %theirs,
                remote_member = %from,
                "transport: rejected peer traffic from another cluster"
            );
        }
        return text_error(StatusCode::PRECONDITION_FAILED, "cluster ID mismatch");
    }
    let limit = if snapshot {
        usize::MAX
    } else {
        MAX_STREAM_BODY
    };
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!(%from, error = %e, "transport: reading peer request failed");
            return text_error(StatusCode::BAD_REQUEST, "error reading raft message");
        }
    };
    let msgs = match codec::decode(&body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%from, error = %e, "transport: undecodable raft messages refused");
            return text_error(StatusCode::BAD_REQUEST, "error unmarshalling raft message");
        }
    };
    let me = server.shared.member_id;
    for m in msgs {
        if m.to != me {
            tracing::debug!(to = %id_to_string(m.to), %from, "transport: message for another member dropped");
            continue;
        }
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let data = &m.get_snapshot().data;
            // Check the state before raft commits to it: a snapshot we cannot read must be
            // refused here, not discovered half-applied.
            if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
                tracing::error!(%from, bytes = data.len(), "transport: unreadable snapshot refused");
                return text_error(StatusCode::BAD_REQUEST, "error reading raft snapshot");
            }
            tracing::info!(
                %from,
                index = m.get_snapshot().get_metadata().index,
                bytes = data.len(),
                "transport: received snapshot"
            );
        }
        if !server.step(m) {
            return text_error(StatusCode::SERVICE_UNAVAILABLE, "server stopped");
        }
    }
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}
