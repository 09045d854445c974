//! The sender tasks of one remote member: a message stream and a snapshot sender.
//!
//! The stream task keeps one keep-alive HTTP/1.1 connection to the member and posts batches
//! of queued messages to `/raft`, one request in flight: while a request travels, new
//! messages queue up and leave together in the next one (the batching raft wants under
//! load, with back-pressure from the bounded queue). A failed request drops its batch,
//! reports the member unreachable to raft (which resends what matters) and retries after a
//! short pause on the next of the member's peer URLs. State changes are logged once each
//! ("peer became inactive" / "active"), not once per message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use raft::prelude::{Message, MessageType};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

use super::{codec, LeaderStats, LocalIdentity};
use super::{HEADER_CLUSTER_ID, HEADER_FROM, PATH_RAFT, PATH_SNAPSHOT};
use crate::membership::id_to_string;
use crate::raft::{RaftHandle, RaftInput};

/// How long a connection attempt may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a message batch may take to be accepted (the receiver only queues it).
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failure before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Batches are closed at this many bytes of messages.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Everything a sender task needs to know about its link.
#[derive(Clone)]
pub struct Link {
    /// The remote member.
    pub to: u64,
    /// Its peer URLs, tried in turn.
    pub urls: Vec<String>,
    /// Who we are (headers).
    pub local: LocalIdentity,
    /// Where delivery failures are reported.
    pub raft: RaftHandle,
    /// Follower latency and counts (leader traffic only).
    pub stats: std::sync::Arc<LeaderStats>,
}

/// Why a request did not go through.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("unsupported peer URL {0:?} (only http:// is served)")]
    Scheme(String),
    #[error("dial {0}: {1}")]
    Dial(String, String),
    #[error("request: {0}")]
    Http(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the member belongs to another cluster: {0}")]
    ClusterMismatch(String),
    #[error("answered {0}: {1}")]
    Status(StatusCode, String),
}

type Conn = SendRequest<Full<Bytes>>;

/// `host:port` of a peer URL.
fn authority(url: &str) -> Result<String, SendError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| SendError::Scheme(url.to_string()))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_string())
}

async fn connect(authority: &str) -> Result<Conn, SendError> {
    let dial = |e: String| SendError::Dial(authority.to_string(), e);
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| dial("timed out".into()))?
        .map_err(|e| dial(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| dial(e.to_string()))?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(conn)
}

async fn post(
    conn: &mut Conn,
    link: &Link,
    authority: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), SendError> {
    let exchange = async {
        conn.ready()
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        let req = Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(HEADER_CLUSTER_ID, id_to_string(link.local.cluster_id))
            .header(HEADER_FROM, id_to_string(link.local.member_id))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Http(e.to_string()))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::PRECONDITION_FAILED => Err(SendError::ClusterMismatch(text)),
            s => Err(SendError::Status(s, text)),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Timeout(timeout))?
}

/// Sends `body` to `path` on the member, reusing `conn` or dialing the URL at `*url_at`.
/// On failure the connection is dropped and the next URL will be tried.
async fn deliver(
    conn: &mut Option<(Conn, String)>,
    link: &Link,
    url_at: &mut usize,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), SendError> {
    let result = async {
        if conn.is_none() {
            let url = &link.urls[*url_at % link.urls.len()];
            let auth = authority(url)?;
            *conn = Some((connect(&auth).await?, auth));
        }
        let (c, auth) = conn.as_mut().expect("connected above");
        post(c, link, &auth.clone(), path, body, timeout).await
    }
    .await;
    if result.is_err() {
        *conn = None;
        *url_at += 1;
    }
    result
}

/// The message stream to one member; ends when the transport is dropped.
pub async fn run_stream(link: Link, mut rx: Receiver<Message>) {
    let peer = id_to_string(link.to);
    let mut conn = None;
    let mut url_at = 0usize;
    let mut active = true;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut size = 0usize;
        while size < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    size += m.entries.iter().map(|e| e.data.len() + 32).sum::<usize>() + 32;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let leader_traffic = batch.iter().any(|m| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat
            )
        });
        let started = Instant::now();
        let body = codec::encode(&batch);
        match deliver(
            &mut conn,
            &link,
            &mut url_at,
            PATH_RAFT,
            body,
            STREAM_TIMEOUT,
        )
        .await
        {
            Ok(()) => {
                if leader_traffic {
                    link.stats.record(link.to, Ok(started.elapsed()));
                }
                if !active {
                    active = true;
                    tracing::info!(%peer, "transport: peer became active");
                }
            }
            Err(e) => {
                if leader_traffic {
                    link.stats.record(link.to, Err(()));
                }
                if active {
                    active = false;
                    match &e {
                        SendError::ClusterMismatch(_) => {
                            tracing::error!(%peer, error = %e, "transport: peer rejected our messages")
                        }
                        _ => {
                            tracing::warn!(%peer, error = %e, "transport: peer became inactive (message send failed)")
                        }
                    }
                }
                let _ = link.raft.send(RaftInput::Unreachable(link.to));
                tokio::time::sleep(RETRY_PAUSE).await;
                // What queued while the member was away is stale; raft sends again.
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

/// Sends snapshot messages to one member, one at a time, and tells raft how each went.
pub async fn run_snapshots(link: Link, mut rx: Receiver<Message>) {
    let peer = id_to_string(link.to);
    let mut url_at = 0usize;
    while let Some(msg) = rx.recv().await {
        let meta = msg.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        let bytes = msg.get_snapshot().data.len();
        tracing::info!(%peer, index, term, bytes, "transport: sending snapshot");
        let started = Instant::now();
        let body = codec::encode(std::slice::from_ref(&msg));
        drop(msg);
        // Generous: 30 s plus a second per 10 MB.
        let timeout = Duration::from_secs(30 + (bytes / (10 << 20)) as u64);
        let mut conn = None;
        let res = deliver(&mut conn, &link, &mut url_at, PATH_SNAPSHOT, body, timeout).await;
        let delivered = res.is_ok();
        match res {
            Ok(()) => tracing::info!(
                %peer,
                index,
                bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "transport: snapshot sent"
            ),
            Err(e) => {
                tracing::warn!(%peer, index, error = %e, "transport: sending snapshot failed")
            }
        }
        let _ = link.raft.send(RaftInput::SnapshotStatus {
            to: link.to,
            delivered,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_peer_urls() {
        assert_eq!(
            authority("http://127.0.0.1:2380").unwrap(),
            "127.0.0.1:2380"
        );
        assert_eq!(authority("http://host:1/x").unwrap(), "host:1");
        assert!(matches!(
            authority("https://h:1"),
            Err(SendError::Scheme(_))
        ));
    }
}
