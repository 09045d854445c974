//! Forwarding one client request to an endpoint (etcd's `httpproxy.reverseProxy`).
//!
//! The request body is read whole first, so the same request can go to the next endpoint
//! when one fails. Hop-by-hop headers are dropped both ways and `X-Forwarded-For` gets the
//! client's address, as etcd's proxy does. The endpoint's response is streamed back frame by
//! frame as it arrives: a `stream=true` watch delivers each event when it happens (etcd's
//! proxy copies the body through a buffer and delivers nothing until it fills).
//!
//! When a request is retried: whenever the endpoint never got it (the dial failed, or a
//! kept-alive connection was found closed before the request was written), and for GET and
//! HEAD also when the connection failed after it was sent. etcd's proxy also resends a
//! write whose connection broke after sending; the member may have applied it, and a resent
//! POST would create a second key, a resent compare-and-swap would fail against its own
//! first success. oxcd answers such a write 502 instead: the client decides.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::director::Director;

/// The body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Idle connections kept per endpoint (etcd's `DefaultMaxIdleConnsPerHost`).
const MAX_IDLE_PER_ENDPOINT: usize = 128;

/// Hop-by-hop headers (Go's `httputil.ReverseProxy` list, as etcd's proxy uses it).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// The proxy's timeouts; zero means none.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub dial: Duration,
    pub read: Duration,
    pub write: Duration,
}

/// Forwards requests to the director's endpoints.
pub struct Forwarder {
    pub director: Arc<Mutex<Director>>,
    pub timeouts: Timeouts,
    /// How `https` endpoints are dialed.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// `--proxy readonly`.
    pub readonly: bool,
    /// Idle connections by endpoint URL.
    pool: Mutex<std::collections::HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

/// etcd's `httptypes.HTTPError` answer: `{"message":"..."}` as JSON.
pub fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// How one attempt on an endpoint ended without a response.
enum Failure {
    /// The endpoint never got the request: try the next one.
    NotSent(String),
    /// The request may have reached the endpoint.
    AfterSend(String),
}

impl Forwarder {
    pub fn new(
        director: Arc<Mutex<Director>>,
        timeouts: Timeouts,
        tls: Option<tokio_rustls::TlsConnector>,
        readonly: bool,
    ) -> Forwarder {
        Forwarder {
            director,
            timeouts,
            tls,
            readonly,
            pool: Mutex::default(),
        }
    }

    /// Answers one client request.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote: std::net::SocketAddr,
    ) -> Response<ProxyBody> {
        // etcd's readonly handler lets only GET through, with an empty 501 otherwise.
        if self.readonly && req.method() != Method::GET {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_IMPLEMENTED;
            return resp;
        }
        if req.uri().path() == "/v2/config/local/proxy" {
            return self.config(req.method());
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let msg = format!("failed to read request body: {e}");
                tracing::warn!("{msg}");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("httpproxy: {msg}"),
                );
            }
        };
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        forwarded_for(&mut headers, remote);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let endpoints = lock(&self.director).available(Instant::now());
        if endpoints.is_empty() {
            let msg = "zero endpoints currently available";
            tracing::warn!("{msg}");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("httpproxy: {msg}"),
            );
        }
        let idempotent = matches!(parts.method, Method::GET | Method::HEAD);
        for (tried, ep) in endpoints.iter().enumerate() {
            let build = || {
                let mut r = Request::new(Full::new(body.clone()));
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
                *r.headers_mut() = headers.clone();
                r
            };
            match self.attempt(ep, build).await {
                Ok(resp) => return response(resp),
                Err(Failure::NotSent(e)) => {
                    tracing::warn!("failed to direct request to {ep}: {e}");
                    self.failed(ep);
                }
                Err(Failure::AfterSend(e)) => {
                    tracing::warn!("failed to direct request to {ep}: {e}");
                    self.failed(ep);
                    if !idempotent {
                        // The member may have applied it: not resent (see the module doc).
                        let msg = format!("unable to get response from {} endpoint(s)", tried + 1);
                        tracing::warn!(
                            "{msg} ({} {path} not resent: it may have been applied)",
                            parts.method
                        );
                        return json_error(StatusCode::BAD_GATEWAY, &format!("httpproxy: {msg}"));
                    }
                }
            }
        }
        let msg = format!(
            "unable to get response from {} endpoint(s)",
            endpoints.len()
        );
        tracing::warn!("{msg}");
        json_error(StatusCode::BAD_GATEWAY, &format!("httpproxy: {msg}"))
    }

    /// `GET /v2/config/local/proxy`: the available endpoints (etcd's `configHandler`).
    fn config(&self, method: &Method) -> Response<ProxyBody> {
        if method != Method::GET {
            let mut resp = Response::new(full("Method Not Allowed\n"));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            let h = resp.headers_mut();
            h.insert("Allow", HeaderValue::from_static("GET"));
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(
                "X-Content-Type-Options",
                HeaderValue::from_static("nosniff"),
            );
            return resp;
        }
        let endpoints = lock(&self.director).available(Instant::now());
        let body = format!("{}\n", serde_json::json!({ "endpoints": endpoints }));
        let mut resp = Response::new(full(body));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    fn failed(self: &Arc<Self>, ep: &str) {
        let wait = {
            let mut d = lock(&self.director);
            if !d.failed(ep, Instant::now()) {
                return;
            }
            self.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(ep);
            d.failure_wait()
        };
        tracing::warn!("marked endpoint {ep} unavailable");
        let director = Arc::clone(&self.director);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            for url in lock(&director).recover(Instant::now()) {
                tracing::info!("marked endpoint {url} available, to retest connectivity");
            }
        });
    }

    /// One try on one endpoint: a kept-alive connection if one is idle (and a fresh one if
    /// that turns out closed before the request went out), else a new connection.
    async fn attempt(
        &self,
        ep: &str,
        build: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        if let Some(conn) = self.idle(ep) {
            match self.send(ep, conn, build()).await {
                Err(Failure::NotSent(_)) => {} // closed while idle: dial afresh
                other => return other,
            }
        }
        let conn = self.dial(ep).await.map_err(Failure::NotSent)?;
        self.send(ep, conn, build()).await
    }

    async fn send(
        &self,
        ep: &str,
        mut conn: SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        if conn.ready().await.is_err() {
            return Err(Failure::NotSent("connection closed".into()));
        }
        let fut = conn.try_send_request(req);
        match fut.await {
            Ok(resp) => {
                self.keep(ep, conn);
                Ok(resp)
            }
            Err(mut e) => {
                let text = e.error().to_string();
                let cause = std::error::Error::source(e.error())
                    .map(|s| format!("{text}: {s}"))
                    .unwrap_or(text);
                if e.take_message().is_some() {
                    Err(Failure::NotSent(cause))
                } else {
                    Err(Failure::AfterSend(cause))
                }
            }
        }
    }

    /// An idle connection to `ep`, if one is ready.
    fn idle(&self, ep: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pool.get_mut(ep)?;
        conns.retain(|c| !c.is_closed());
        let at = conns.iter().position(|c| c.is_ready())?;
        Some(conns.swap_remove(at))
    }

    /// Keeps a connection for the next request (it becomes ready once this response's body
    /// is read to its end).
    fn keep(&self, ep: &str, conn: SendRequest<Full<Bytes>>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pool.entry(ep.to_string()).or_default();
        conns.retain(|c| !c.is_closed());
        if conns.len() < MAX_IDLE_PER_ENDPOINT {
            conns.push(conn);
        }
    }

    async fn dial(&self, ep: &str) -> Result<SendRequest<Full<Bytes>>, String> {
        let (authority, tls) = if let Some(r) = ep.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = ep.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(format!("unsupported protocol scheme in {ep:?}"));
        };
        let authority = authority.split('/').next().unwrap_or(authority);
        let t = self.timeouts;
        let connect = TcpStream::connect(authority);
        let tcp = if t.dial.is_zero() {
            connect.await
        } else {
            tokio::time::timeout(t.dial, connect)
                .await
                .map_err(|_| format!("dial tcp {authority}: i/o timeout"))?
        }
        .map_err(|e| format!("dial tcp {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if tls {
            let connector = self
                .tls
                .as_ref()
                .ok_or_else(|| format!("{ep}: no TLS configuration to dial https"))?;
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h,
                None => authority,
            };
            let name = crate::tls::server_name(host)?;
            let handshake = connector.connect(name, tcp);
            let limit = if t.dial.is_zero() {
                Duration::from_secs(10)
            } else {
                t.dial
            };
            Box::new(
                tokio::time::timeout(limit, handshake)
                    .await
                    .map_err(|_| "net/http: TLS handshake timeout".to_string())?
                    .map_err(|e| crate::tls::go_error(&e))?,
            )
        } else {
            Box::new(tcp)
        };
        let io = TimeoutIo::new(TokioIo::new(stream), t.read, t.write);
        let (conn, driver) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake(io)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(conn)
    }
}

/// The endpoint's response, hop-by-hop headers removed, its body streamed through.
fn response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
}

/// Go's `X-Forwarded-For`: prior values joined with ", ", then the client's IP.
fn forwarded_for(h: &mut HeaderMap, remote: std::net::SocketAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let mut all: Vec<String> = h
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    all.push(remote.ip().to_string());
    if let Ok(v) = HeaderValue::from_str(&all.join(", ")) {
        h.insert(name, v);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP or TLS stream to an endpoint.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection whose every read and write must finish within its timeout (Go's
/// `timeoutConn`, which sets a deadline before each read and write): a read waiting longer
/// than `--proxy-read-timeout` fails, as does a write stuck longer than
/// `--proxy-write-timeout`. Zero: no limit.
struct TimeoutIo<T> {
    inner: T,
    read: Duration,
    write: Duration,
    read_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> TimeoutIo<T> {
    fn new(inner: T, read: Duration, write: Duration) -> Self {
        TimeoutIo {
            inner,
            read,
            write,
            read_deadline: None,
            write_deadline: None,
        }
    }
}

/// An operation's poll, bounded by `limit`: a finished one disarms the deadline, a pending
/// one arms it on its first wait and fails with a timeout once it passes.
fn bounded<R>(
    poll: Poll<io::Result<R>>,
    slot: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<io::Result<R>> {
    if poll.is_ready() {
        *slot = None;
        return poll;
    }
    if limit.is_zero() {
        return Poll::Pending;
    }
    let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    if sleep.as_mut().poll(cx).is_ready() {
        *slot = None;
        return Poll::Ready(Err(timed_out(what)));
    }
    Poll::Pending
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: i/o timeout"))
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for TimeoutIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        bounded(poll, &mut this.read_deadline, this.read, cx, "read")
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for TimeoutIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        bounded(poll, &mut this.write_deadline, this.write, cx, "write")
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        bounded(poll, &mut this.write_deadline, this.write, cx, "write")
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-etcd-index", HeaderValue::from_static("5"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        strip_hop_by_hop(&mut h);
        forwarded_for(&mut h, "127.0.0.9:5555".parse().unwrap());
        assert!(h.get("connection").is_none() && h.get("te").is_none());
        assert_eq!(h.get("x-etcd-index").unwrap(), "5");
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            vec!["10.0.0.1, 10.0.0.2, 127.0.0.9"]
        );
    }

    #[test]
    fn etcd_error_bodies() {
        let r = json_error(StatusCode::BAD_GATEWAY, "httpproxy: x");
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
