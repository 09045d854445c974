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
    /// Where the link records whether the member is reachable.
    pub activity: std::sync::Arc<super::PeerActivity>,
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
    #[error("the member says this member was removed from the cluster")]
    Removed,
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
    connect_with(link.tls.as_ref(), to).await
}

async fn connect_with(
    tls: Option<&tokio_rustls::TlsConnector>,
    to: &Target,
) -> Result<Conn, SendError> {
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
    let connector = tls.ok_or_else(|| SendError::NoTls(authority.to_string()))?;
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
    Stream(StreamConn),
    /// A member without the stream: one `POST /raft` per batch.
    Post(Conn),
}

/// The write side of a message stream, and a task that reads its other side only to learn
/// when the member closes it (the receiver never writes): an idle link to a member that
/// died is noticed without a message to send.
struct StreamConn {
    write: tokio::io::WriteHalf<TokioIo<Upgraded>>,
    closed: tokio::sync::oneshot::Receiver<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl StreamConn {
    fn new(io: TokioIo<Upgraded>) -> StreamConn {
        let (mut read, write) = tokio::io::split(io);
        let (tx, closed) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send(());
        });
        StreamConn {
            write,
            closed,
            watcher,
        }
    }
}

impl Drop for StreamConn {
    fn drop(&mut self) {
        // The read half lives in the watcher: the connection closes once both are gone.
        self.watcher.abort();
    }
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
        StatusCode::GONE => SendError::Removed,
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
            Ok(Channel::Stream(StreamConn::new(TokioIo::new(upgraded))))
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
            Channel::Stream(conn) => tokio::time::timeout(timeout, conn.write.write_all(&body))
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

/// Link state changes, logged once each.
struct LinkState {
    peer: String,
    active: bool,
}

impl LinkState {
    fn up(&mut self, link: &Link) {
        link.activity.activate(link.to);
        if !self.active {
            self.active = true;
            tracing::info!(peer = %self.peer, "transport: peer became active");
        }
    }

    fn down(&mut self, link: &Link, e: &SendError) {
        link.activity.deactivate(link.to);
        if let SendError::Removed = e {
            tracing::error!(peer = %self.peer, "transport: {e}");
            crate::failstop::removed_from_cluster();
        }
        if self.active {
            self.active = false;
            match e {
                SendError::ClusterMismatch(_) => {
                    tracing::error!(peer = %self.peer, error = %e, "transport: peer rejected our messages")
                }
                _ => {
                    tracing::warn!(peer = %self.peer, error = %e, "transport: peer became inactive (message send failed)")
                }
            }
        }
    }
}

/// Waits until the stream's member closes it (never, for a POST channel).
async fn stream_closed(channel: &mut Option<(Channel, String)>) {
    match channel {
        Some((Channel::Stream(conn), _)) => {
            let _ = (&mut conn.closed).await;
        }
        _ => std::future::pending().await,
    }
}

/// The message stream to one member; ends when the transport drops the link. It connects
/// at once and reconnects whenever the stream fails or the member closes it, so the
/// member's reachability is known even while there is nothing to send.
pub async fn run_stream(link: Link, mut rx: Receiver<Message>) {
    let mut state = LinkState {
        peer: id_to_string(link.to),
        active: true,
    };
    let mut channel: Option<(Channel, String)> = None;
    let mut url_at = 0usize;
    let mut last_len = 0usize;
    loop {
        if channel.is_none() {
            let url = &link.urls[url_at % link.urls.len()];
            let opened = match target(url) {
                Ok(to) => open_stream(&link, &to).await.map(|ch| (ch, to.authority)),
                Err(e) => Err(e),
            };
            match opened {
                Ok(ch) => {
                    channel = Some(ch);
                    state.up(&link);
                }
                Err(e) => {
                    url_at += 1;
                    state.down(&link, &e);
                    // What queued while the member was away is stale; raft sends again.
                    let mut dropped = false;
                    loop {
                        match rx.try_recv() {
                            Ok(_) => dropped = true,
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    }
                    if dropped {
                        let _ = link.raft.send(RaftInput::Unreachable(link.to));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            () = stream_closed(&mut channel) => {
                channel = None;
                state.down(&link, &SendError::Http("the member closed the stream".into()));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
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
                state.up(&link);
            }
            Err(e) => {
                if leader_traffic {
                    link.stats.record(link.to, Err(()));
                }
                state.down(&link, &e);
                let _ = link.raft.send(RaftInput::Unreachable(link.to));
                tokio::time::sleep(RETRY_PAUSE).await;
                // What queued while the member was away is stale; raft sends again.
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

/// Reads a member's list of members from its peer URL (`GET /members`, what a member
/// joining the cluster asks), with the cluster ID it answers in `X-Etcd-Cluster-ID`.
pub async fn fetch_members(
    url: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(u64, Vec<crate::membership::Member>), String> {
    let to = target(url).map_err(|e| e.to_string())?;
    let mut conn = connect_with(tls, &to).await.map_err(|e| e.to_string())?;
    let req = Request::get("/members").header(http::header::HOST, to.authority.as_str());
    let resp = exchange(&mut conn, req, Bytes::new(), STREAM_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let cluster = resp
        .headers()
        .get(HEADER_CLUSTER_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or("no cluster ID in the answer")?;
    let body = tokio::time::timeout(STREAM_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "timed out reading the member list".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    #[derive(serde::Deserialize)]
    struct Listed {
        /// A number, as etcd sends it (earlier oxcd builds sent it in hex: still read).
        id: serde_json::Value,
        #[serde(default)]
        name: String,
        #[serde(rename = "peerURLs", default)]
        peer_urls: Vec<String>,
        #[serde(rename = "clientURLs", default)]
        client_urls: Vec<String>,
    }
    let listed: Vec<Listed> =
        serde_json::from_slice(&body).map_err(|e| format!("bad member list: {e}"))?;
    let mut members = Vec::with_capacity(listed.len());
    for m in listed {
        let id = match &m.id {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => u64::from_str_radix(s, 16).ok(),
            _ => None,
        }
        .ok_or_else(|| format!("bad member ID {}", m.id))?;
        members.push(crate::membership::Member {
            id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        });
    }
    Ok((cluster, members))
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
            activity: Default::default(),
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
