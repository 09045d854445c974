//! The receiving side of the peer transport: `/raft/stream` (a member's message stream),
//! `POST /raft` (message batches) and `POST /raft/snapshot` on the peer listeners.
//!
//! Every request must name our cluster in `X-Etcd-Cluster-ID`; a member of another cluster
//! is refused with 412 and one log line (rate-limited: a misconfigured peer retries every
//! 100 ms). A POSTed body is decoded in full before any message is stepped, so a garbled
//! request changes nothing; on a stream each frame is stepped once it is whole, and a
//! garbled frame ends the stream (the sender reconnects). Messages addressed to another
//! member are dropped; snapshots are only taken on `/raft/snapshot`, where they are checked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use raft::prelude::{Message, MessageType};
use tokio::io::AsyncReadExt;

use super::body::RespBody;
use super::{method_not_allowed, text_error};
use crate::membership::id_to_string;
use crate::server::EtcdServer;
use crate::transport::{codec, HEADER_CLUSTER_ID, HEADER_FROM, STREAM_PROTOCOL};

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

/// The sending member's ID (as it names itself) if the request is from our cluster; `None`
/// (logged, rate-limited) if it is from another one.
fn check_cluster(server: &EtcdServer, req: &Request<Incoming>) -> Option<String> {
    static MISMATCH_LOGGED: AtomicU64 = AtomicU64::new(0);
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
        return None;
    }
    Some(from)
}

/// Whether the sending member was removed from the cluster: its traffic is answered 410
/// Gone (once logged per 5 s), which tells it to stop, as etcd's does.
fn is_removed(server: &EtcdServer, from: &str) -> bool {
    static REMOVED_LOGGED: AtomicU64 = AtomicU64::new(0);
    let Ok(id) = u64::from_str_radix(from, 16) else {
        return false;
    };
    let removed = server
        .shared
        .removed
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&id);
    if removed && rate_limited(&REMOVED_LOGGED) {
        tracing::warn!(%from, "transport: rejected the stream from peer {from} since it was removed");
    }
    removed
}

/// Handles `/raft/stream`: once the cluster is checked, the connection is upgraded and the
/// sending member writes frames on it until either side closes it.
pub fn stream(server: &Arc<EtcdServer>, req: Request<Incoming>) -> Response<RespBody> {
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let Some(from) = check_cluster(server, &req) else {
        return text_error(StatusCode::PRECONDITION_FAILED, "cluster ID mismatch");
    };
    if is_removed(server, &from) {
        return text_error(StatusCode::GONE, "removed member");
    }
    let wants_stream = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_PROTOCOL));
    if !wants_stream {
        return text_error(
            StatusCode::BAD_REQUEST,
            &format!("the message stream needs Upgrade: {STREAM_PROTOCOL}"),
        );
    }
    let server = Arc::clone(server);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => read_stream(&server, TokioIo::new(upgraded), &from).await,
            Err(e) => tracing::debug!(%from, error = %e, "transport: stream upgrade failed"),
        }
    });
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    resp.headers_mut().insert(
        http::header::UPGRADE,
        HeaderValue::from_static(STREAM_PROTOCOL),
    );
    resp
}

/// Reads a member's message stream: steps every whole frame as soon as it is in, until the
/// sender closes the stream, a frame is garbled or the server stops.
async fn read_stream(server: &EtcdServer, mut io: TokioIo<hyper::upgrade::Upgraded>, from: &str) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match codec::take_frame(&mut buf, MAX_STREAM_BODY) {
                Ok(Some(msg)) => {
                    if !step_message(server, msg, from, false) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%from, error = %e, "transport: undecodable raft message, closing the stream");
                    return;
                }
            }
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%from, error = %e, "transport: stream read failed");
                return;
            }
        }
    }
}

/// Hands one received message to raft unless it is not ours to take. False once the server
/// has stopped.
fn step_message(server: &EtcdServer, m: Message, from: &str, snapshots: bool) -> bool {
    if m.to != server.shared.member_id {
        tracing::debug!(to = %id_to_string(m.to), %from, "transport: message for another member dropped");
        return true;
    }
    if m.get_msg_type() == MessageType::MsgSnapshot && !snapshots {
        tracing::warn!(%from, "transport: snapshot outside /raft/snapshot dropped");
        return true;
    }
    crate::failstop::peer_message_arrived();
    server.step(m)
}

/// Handles `POST /raft` and (with `snapshot`) `POST /raft/snapshot`.
pub async fn raft(
    server: &EtcdServer,
    req: Request<Incoming>,
    snapshot: bool,
) -> Response<RespBody> {
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let Some(from) = check_cluster(server, &req) else {
        return text_error(StatusCode::PRECONDITION_FAILED, "cluster ID mismatch");
    };
    if is_removed(server, &from) {
        return text_error(StatusCode::GONE, "removed member");
    }
    // Bounded while the body arrives, not after: a snapshot travels alone, as one frame.
    let limit = if snapshot {
        4 + codec::MAX_FRAME
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
    if snapshot && (msgs.len() != 1 || msgs[0].get_msg_type() != MessageType::MsgSnapshot) {
        tracing::warn!(%from, messages = msgs.len(), "transport: /raft/snapshot without exactly one snapshot refused");
        return text_error(StatusCode::BAD_REQUEST, "error reading raft snapshot");
    }
    for m in msgs {
        if m.get_msg_type() == MessageType::MsgSnapshot && m.to == server.shared.member_id {
            let data = &m.get_snapshot().data;
            // Check the state before raft commits to it: a snapshot we cannot read must be
            // refused here, not discovered half-applied. The membership it holds is kept for
            // the raft thread, which checks the changes after it against it.
            let index = m.get_snapshot().get_metadata().index;
            let data = data.clone();
            let checked =
                tokio::task::spawn_blocking(move || crate::server::apply::view_of_snapshot(&data))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
            match checked {
                Ok(view) => {
                    *server
                        .shared
                        .received_snapshot_view
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some((index, view));
                }
                Err(e) => {
                    let bytes = m.get_snapshot().data.len();
                    tracing::error!(%from, bytes, error = %e, "transport: unreadable snapshot refused");
                    return text_error(StatusCode::BAD_REQUEST, "error reading raft snapshot");
                }
            }
            let data = &m.get_snapshot().data;
            tracing::info!(
                %from,
                index = m.get_snapshot().get_metadata().index,
                bytes = data.len(),
                "transport: received snapshot"
            );
        }
        if !step_message(server, m, &from, snapshot) {
            return text_error(StatusCode::SERVICE_UNAVAILABLE, "server stopped");
        }
    }
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}
