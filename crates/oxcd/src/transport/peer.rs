//! The sender tasks of one remote member: a message stream and a snapshot sender.
//!
//! The stream task keeps one connection to the member, upgraded on `/raft/stream` to a
//! one-way stream of frames: it takes every queued message, writes them with one write, and
//! takes the next ones (while a write is under way new messages queue up and leave together:
//! the batching raft wants under load, with back-pressure from the bounded queue). No
//! request or answer per batch: against a POST per batch this halves the system calls and
//! wakeups of peer traffic. A member that answers the upgrade with 404 (it has no stream)
//! gets the batches POSTed to `/raft` instead, one request in flight. A failed write or
//! request drops its batch and the connection, reports the member unreachable to raft
//! (which resends what matters) and retries after a short pause on the next of the member's
//! peer URLs. State changes are logged once each ("peer became inactive" / "active"), not
//! once per message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use raft::prelude::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

use super::{codec, LeaderStats, LocalIdentity};
use super::{
    HEADER_CLUSTER_ID, HEADER_FROM, PATH_RAFT, PATH_SNAPSHOT, PATH_STREAM, STREAM_PROTOCOL,
};
use crate::membership::id_to_string;
use crate::raft::{RaftHandle, RaftInput};

/// How long a connection attempt may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a TLS handshake with a member may take once connected.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// How `https` peer URLs are dialed (certificate, trusted CA); `None`: they cannot be.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// Why a request did not go through.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("unsupported peer URL {0:?} (http:// or https:// only)")]
    Scheme(String),
    #[error("peer URL {0} is https but this member has no peer TLS configuration")]
    NoTls(String),
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

/// Where a peer URL points: `host:port`, and whether it is `https`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    authority: String,
    tls: bool,
}

impl Target {
    /// The host part of the authority (brackets kept for IPv6).
    fn host(&self) -> &str {
        match self.authority.rsplit_once(':') {
            Some((h, _)) => h,
            None => &self.authority,
        }
    }
}

/// The target of a peer URL.
fn target(url: &str) -> Result<Target, SendError> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(SendError::Scheme(url.to_string()));
    };
    Ok(Target {
        authority: rest.split('/').next().unwrap_or(rest).to_string(),
        tls,
    })
}

async fn connect(link: &Link, to: &Target) -> Result<Conn, SendError> {
    let authority = to.authority.as_str();
    let dial = |e: String| SendError::Dial(authority.to_string(), e);
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| dial("timed out".into()))?
        .map_err(|e| dial(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    if !to.tls {
        return handshake(TokioIo::new(stream), authority).await;
    }
    let connector = link
        .tls
        .as_ref()
        .ok_or_else(|| SendError::NoTls(authority.to_string()))?;
    let name = crate::tls::server_name(to.host()).map_err(dial)?;
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| dial("TLS handshake timeout".into()))?
        .map_err(|e| dial(crate::tls::go_error(&e)))?;
    handshake(TokioIo::new(stream), authority).await
}

async fn handshake<I>(io: I, authority: &str) -> Result<Conn, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (conn, driver) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| SendError::Dial(authority.to_string(), e.to_string()))?;
    tokio::spawn(async move {
        let _ = driver.with_upgrades().await;
    });
    Ok(conn)
}

/// Where a member's message batches go.
enum Channel {
    /// The upgraded `/raft/stream` connection: frames are written straight to it.
    Stream(TokioIo<Upgraded>),
    /// A member without the stream: one `POST /raft` per batch.
    Post(Conn),
}

/// A request to the member's peer URL with the headers every peer request carries.
fn peer_request(link: &Link, authority: &str, path: &str) -> http::request::Builder {
    Request::post(path)
        .header(http::header::HOST, authority)
        .header(HEADER_CLUSTER_ID, id_to_string(link.local.cluster_id))
        .header(HEADER_FROM, id_to_string(link.local.member_id))
}

/// Sends `req` on `conn` within `timeout`.
async fn exchange(
    conn: &mut Conn,
    req: http::request::Builder,
    body: Bytes,
    timeout: Duration,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    let exchange = async {
        conn.ready()
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        let req = req
            .body(Full::new(body))
            .map_err(|e| SendError::Http(e.to_string()))?;
        conn.send_request(req)
            .await
            .map_err(|e| SendError::Http(e.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Timeout(timeout))?
}

/// The error for an answer that is not what was asked for (412: another cluster).
async fn refused(resp: http::Response<hyper::body::Incoming>) -> SendError {
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    match status {
        StatusCode::PRECONDITION_FAILED => SendError::ClusterMismatch(text),
        s => SendError::Status(s, text),
    }
}

/// Connects to the member and asks for the message stream; falls back to POSTs when the
/// member does not know `/raft/stream`.
async fn open_stream(link: &Link, to: &Target) -> Result<Channel, SendError> {
    let authority = to.authority.as_str();
    let mut conn = connect(link, to).await?;
    let req = peer_request(link, authority, PATH_STREAM)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, STREAM_PROTOCOL);
    let resp = exchange(&mut conn, req, Bytes::new(), STREAM_TIMEOUT).await?;
    match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => {
            let upgraded = tokio::time::timeout(STREAM_TIMEOUT, hyper::upgrade::on(resp))
                .await
                .map_err(|_| SendError::Timeout(STREAM_TIMEOUT))?
                .map_err(|e| SendError::Http(e.to_string()))?;
            Ok(Channel::Stream(TokioIo::new(upgraded)))
        }
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            // The answer's body must be read before the connection carries a POST.
            let _ = resp.into_body().collect().await;
            Ok(Channel::Post(conn))
        }
        _ => Err(refused(resp).await),
    }
}

async fn post(
    conn: &mut Conn,
    link: &Link,
    authority: &str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(), SendError> {
    let req = peer_request(link, authority, path)
        .header(http::header::CONTENT_TYPE, "application/octet-stream");
    let resp = exchange(conn, req, body, timeout).await?;
    if !resp.status().is_success() {
        return Err(refused(resp).await);
    }
    let _ = resp.into_body().collect().await;
    Ok(())
}

/// Sends `body` on the member's channel, opening it on the URL at `*url_at` if there is
/// none (the message stream when `stream`, else a connection for POSTs to `path`). On
/// failure the channel is dropped and the next URL will be tried.
async fn deliver(
    channel: &mut Option<(Channel, String)>,
    link: &Link,
    url_at: &mut usize,
    stream: bool,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(), SendError> {
    let result = async {
        if channel.is_none() {
            let url = &link.urls[*url_at % link.urls.len()];
            let to = target(url)?;
            let ch = if stream {
                open_stream(link, &to).await?
            } else {
                Channel::Post(connect(link, &to).await?)
            };
            *channel = Some((ch, to.authority));
        }
        let (ch, auth) = channel.as_mut().expect("opened above");
        match ch {
            Channel::Stream(io) => tokio::time::timeout(timeout, io.write_all(&body))
                .await
                .map_err(|_| SendError::Timeout(timeout))?
                .map_err(|e| SendError::Http(e.to_string())),
            Channel::Post(conn) => post(conn, link, auth, path, body, timeout).await,
        }
    }
    .await;
    if result.is_err() {
        *channel = None;
        *url_at += 1;
    }
    result
}

/// The message stream to one member; ends when the transport is dropped.
pub async fn run_stream(link: Link, mut rx: Receiver<Message>) {
    let peer = id_to_string(link.to);
    let mut channel = None;
    let mut url_at = 0usize;
    let mut active = true;
    let mut last_len = 0usize;
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
        let mut body = Vec::with_capacity(last_len);
        for m in &batch {
            codec::encode_into(m, &mut body);
        }
        drop(batch);
        last_len = body.len();
        let body = Bytes::from(body);
        match deliver(
            &mut channel,
            &link,
            &mut url_at,
            true,
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
        let body = Bytes::from(codec::encode(std::slice::from_ref(&msg)));
        drop(msg);
        // Generous: 30 s plus a second per 10 MB.
        let timeout = Duration::from_secs(30 + (bytes / (10 << 20)) as u64);
        let mut conn = None;
        let res = deliver(
            &mut conn,
            &link,
            &mut url_at,
            false,
            PATH_SNAPSHOT,
            body,
            timeout,
        )
        .await;
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
// raft-rs's messages carry private fields: built field by field after `default()`.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use crate::raft::RaftHandle;

    /// A member without the message stream (404 on `/raft/stream`) still gets every message,
    /// in order, as POSTed batches.
    #[tokio::test]
    async fn falls_back_to_posts_when_the_member_has_no_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Message>>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let got_tx = got_tx.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let mut resp = http::Response::new(Full::new(Bytes::new()));
                                if path == PATH_RAFT {
                                    got_tx.send(codec::decode(&body).unwrap()).unwrap();
                                    *resp.status_mut() = StatusCode::NO_CONTENT;
                                } else {
                                    *resp.status_mut() = StatusCode::NOT_FOUND;
                                }
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let (raft, _inputs) = RaftHandle::channel();
        let link = Link {
            to: 2,
            urls: vec![format!("http://{addr}")],
            local: LocalIdentity {
                member_id: 1,
                cluster_id: 9,
            },
            raft,
            stats: Default::default(),
            tls: None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(run_stream(link, rx));
        for index in 1..=5 {
            let mut m = Message::default();
            m.to = 2;
            m.index = index;
            tx.send(m).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            let batch = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
                .await
                .expect("batches arrive")
                .unwrap();
            got.extend(batch.into_iter().map(|m| m.index));
        }
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn targets_of_peer_urls() {
        let t = target("http://127.0.0.1:2380").unwrap();
        assert_eq!((t.authority.as_str(), t.tls), ("127.0.0.1:2380", false));
        assert_eq!(target("http://host:1/x").unwrap().authority, "host:1");
        let t = target("https://[::1]:2380").unwrap();
        assert_eq!((t.host(), t.tls), ("[::1]", true));
        assert!(matches!(target("unix://h:1"), Err(SendError::Scheme(_))));
    }
}
