//! The client HTTP API: listeners, routing and the handlers of every endpoint.
//!
//! Routing copies what etcd's Go `ServeMux` does, because clients see it: an unclean path
//! (`//`, `.`, `..`) gets a 301 to the clean one; `/v2/keys` and `/v2/keys/...` go to the
//! keys API; exact paths for `/version`, `/health`, `/metrics`, `/v2/machines`,
//! `/v2/stats/{self,store,leader}`; `/v2/members[/...]`; anything else is Go's 404 text.
//! Every response carries etcd's CORS headers and `OPTIONS` is answered 200 with no body.
//!
//! The body of a request is read in full before parsing, bounded by `--max-request-bytes`.

pub mod auth;
pub mod base;
pub mod body;
pub mod form;
pub mod keys;
pub mod members;
pub mod peer;
pub mod simple;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oxcd_api::v2::{Error as V2Error, ErrorCode};
use tokio::net::TcpListener;

use auth::{ConnInfo, Credentials};
use body::RespBody;
use form::{clean_path, parse_query, path_unescape, Form};
use keys::{error_response, parse_key_request, serve_keys, KEYS_PREFIX};

use crate::metrics;
use crate::server::EtcdServer;

/// Header names of every response, parsed once (the name of a header inserted from a `&str`
/// is parsed on every insert, a measurable cost at tens of thousands of requests a second).
/// hyper writes them title-cased, as Go's canonical form.
pub mod names {
    use http::HeaderName;
    pub const X_ETCD_INDEX: HeaderName = HeaderName::from_static("x-etcd-index");
    pub const X_RAFT_INDEX: HeaderName = HeaderName::from_static("x-raft-index");
    pub const X_RAFT_TERM: HeaderName = HeaderName::from_static("x-raft-term");
    pub const X_ETCD_CLUSTER_ID: HeaderName = HeaderName::from_static("x-etcd-cluster-id");
    pub const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
    pub const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
    pub const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
}

/// Which API a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Client URLs: the keys API and friends.
    Client,
    /// Peer URLs: raft traffic (`/raft`, `/raft/snapshot`) and what members ask each other
    /// (`/members`, `/version`).
    Peer,
    /// `--listen-metrics-urls`: only `/metrics` and `/health`.
    Metrics,
}

/// How long a connection on a TLS listener may take to send its first byte and finish the
/// handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Go's answer to plaintext HTTP on a TLS-only listener.
const HTTP_ON_HTTPS: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Serves one API on a bound listener until the process ends: plaintext, TLS (`tls`), or
/// both on one port (`tls` and `plain`: a connection whose first byte is a TLS handshake
/// record gets TLS). A plaintext request on a TLS-only listener gets Go's 400 answer and
/// is closed; a failed handshake is logged as Go's server logs it.
pub async fn serve(
    listener: TcpListener,
    server: Arc<EtcdServer>,
    api: Api,
    tls: Option<tokio_rustls::TlsAcceptor>,
    plain: bool,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections(api)));
    let mut full_logged: Option<Instant> = None;
    loop {
        // At the limit, connections wait in the listen backlog until one closes.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if full_logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
                    full_logged = Some(Instant::now());
                    tracing::warn!(
                        ?api,
                        limit = max_connections(api),
                        "http: connection limit reached, new connections wait"
                    );
                }
                match Arc::clone(&slots).acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                }
            }
        };
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        let Some(acceptor) = tls.clone() else {
            tokio::spawn(async move {
                serve_stream(stream, server, ConnInfo::plain(remote), api).await;
                drop(slot);
            });
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let mut first = [0u8; 5];
            let peeked =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => return,
                };
            // 0x16: a TLS handshake record.
            if first[0] != 0x16 {
                if plain {
                    serve_stream(stream, server, ConnInfo::plain(remote), api).await;
                } else if looks_like_http(&first[..peeked]) {
                    use tokio::io::AsyncWriteExt as _;
                    let mut stream = stream;
                    let _ = stream.write_all(HTTP_ON_HTTPS).await;
                    let _ = stream.shutdown().await;
                }
                return;
            }
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| c.clone().into_owned());
                    // A member must connect from an address its certificate names.
                    if let (Api::Peer, true, Some(cert)) = (api, server.peer_san_check, &leaf) {
                        if let Err(e) = crate::tls::check_peer_address(cert, remote.ip()).await {
                            tracing::warn!(
                                "rejected connection from {:?} (error {:?}, ServerName \"\")",
                                remote.to_string(),
                                e
                            );
                            return;
                        }
                    }
                    // The handshake verified the client's certificate (when the listener
                    // asks for one): its common name may name the user (--client-cert-auth).
                    let names: Vec<String> = leaf
                        .as_ref()
                        .and_then(|leaf| crate::tls::subject_common_name(leaf))
                        .into_iter()
                        .collect();
                    let conn = ConnInfo {
                        remote,
                        cert_common_names: Arc::from(names),
                    };
                    serve_stream(tls, server, conn, api).await
                }
                Ok(Err(e)) => tracing::warn!(
                    "http: TLS handshake error from {remote}: {}",
                    crate::tls::go_error(&e)
                ),
                Err(_) => tracing::warn!("http: TLS handshake error from {remote}: timed out"),
            }
        });
    }
}

/// How long a connection may take to send a request's headers, counted from when the
/// server starts waiting for them (so also an idle keep-alive connection's wait for its next
/// request). Generous: clients keep idle connections for reuse (Go's for 90 s).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Most connections one listener serves at once: peers are a handful of members with a few
/// connections each; clients may be many, bounded by the open-files limit (less a reserve
/// for the WAL, snapshots and peers). The limit keeps a flood of connections from exhausting
/// descriptors the member needs for its own files.
fn max_connections(api: Api) -> usize {
    let files = open_files_limit().unwrap_or(1024);
    match api {
        Api::Peer => 1024.min(files / 4).max(16),
        Api::Client | Api::Metrics => files.saturating_sub(256).clamp(64, 1 << 20),
    }
}

/// The soft limit on open files, from `/proc/self/limits` (no unsafe `getrlimit`).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(1 << 20),
        n => n.parse().ok(),
    }
}

/// Go's `tlsRecordHeaderLooksLikeHTTP`.
fn looks_like_http(head: &[u8]) -> bool {
    [
        &b"GET /"[..],
        b"HEAD ",
        b"POST ",
        b"PUT /",
        b"OPTIO",
        b"DELET",
        b"PATCH",
    ]
    .iter()
    .any(|m| m.starts_with(head) || head.starts_with(m))
}

/// Serves one accepted (and, for TLS, handshaken) connection: a client one through the
/// simple-request path (`simple.rs`), which hands anything else to hyper.
async fn serve_stream<S>(io: S, server: Arc<EtcdServer>, conn: ConnInfo, api: Api)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match api {
        Api::Client => simple::serve(io, server, conn).await,
        Api::Peer | Api::Metrics => serve_connection(TokioIo::new(io), server, conn, api).await,
    }
}

/// Runs hyper's HTTP/1 connection on one accepted (and, for TLS, handshaken) socket.
async fn serve_connection<I>(io: I, server: Arc<EtcdServer>, conn: ConnInfo, api: Api)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let remote = conn.remote;
    let svc = service_fn(move |req| {
        let server = Arc::clone(&server);
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(server, req, conn, api).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Upgrades: a peer's message stream (`/raft/stream`) takes over its connection.
    if let Err(e) = builder.serve_connection(io, svc).with_upgrades().await {
        tracing::debug!(error = %e, %remote, "http: connection ended with error");
    }
}

/// Go's `http.Error`: plain text with a trailing newline.
pub fn text_error(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(format!("{msg}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// 405 with the `Allow` header listing what is allowed.
pub fn method_not_allowed(allow: &'static str) -> Response<RespBody> {
    let mut resp = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert("Allow", HeaderValue::from_static(allow));
    resp
}

/// etcd's CORS headers: `*` when every origin is allowed (`--cors` empty or `*`), else the
/// request's `Origin` when it is in the list, else none.
fn add_cors(server: &EtcdServer, origin: Option<HeaderValue>, resp: &mut Response<RespBody>) {
    let allowed = match (&server.cors, origin) {
        (None, _) => HeaderValue::from_static("*"),
        (Some(list), Some(origin)) if list.iter().any(|o| o.as_bytes() == origin.as_bytes()) => {
            origin
        }
        _ => return,
    };
    let h = resp.headers_mut();
    h.insert(
        names::ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(names::ALLOW_ORIGIN, allowed);
    h.insert(
        names::ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// Serves one request of a connection. `conn` says who is on the other end (address, and
/// the common names of a verified client certificate for `--client-cert-auth`).
pub async fn handle(
    server: Arc<EtcdServer>,
    req: Request<Incoming>,
    conn: ConnInfo,
    api: Api,
) -> Response<RespBody> {
    if api == Api::Client {
        return handle_client(&server, req, &conn).await;
    }
    let started = Instant::now();
    let method = req.method().clone();
    let resp = if api == Api::Peer {
        route_peer(&server, req).await
    } else {
        match req.uri().path() {
            "/metrics" => base::metrics(&server, req.method()),
            "/health" => base::health(&server, req.method()).await,
            _ => text_error(StatusCode::NOT_FOUND, "404 page not found"),
        }
    };
    metrics::observe_http(&method, resp.status(), started.elapsed());
    resp
}

/// Serves one request of a client connection, from hyper or from the simple-request path
/// (`simple.rs`), which hands over its body as bytes.
pub async fn handle_client<B: ReqBody>(
    server: &Arc<EtcdServer>,
    req: Request<B>,
    conn: &ConnInfo,
) -> Response<RespBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let origin = match server.cors {
        Some(_) => req.headers().get(http::header::ORIGIN).cloned(),
        None => None,
    };
    let resp = route(server, req, conn).await;
    finish_client_answer(server, &method, origin, started, resp)
}

/// What every client answer gets last: etcd's CORS headers, and the request in the metrics.
fn finish_client_answer(
    server: &EtcdServer,
    method: &Method,
    origin: Option<HeaderValue>,
    started: Instant,
    mut resp: Response<RespBody>,
) -> Response<RespBody> {
    add_cors(server, origin, &mut resp);
    metrics::observe_http(method, resp.status(), started.elapsed());
    resp
}

/// Every keys API answer names the cluster.
fn with_cluster_id(server: &EtcdServer, mut resp: Response<RespBody>) -> Response<RespBody> {
    resp.headers_mut()
        .insert(names::X_ETCD_CLUSTER_ID, server.cluster_id_header.clone());
    resp
}

/// Serves `GET <path>` with no query, for a connection whose request headers cannot change
/// the answer (no auth, no CORS origin list): what `handle_client` does for such a request,
/// without building the request. `path` is clean, unescaped and under `/v2/keys`.
pub async fn handle_plain_get(server: &Arc<EtcdServer>, path: &str) -> Response<RespBody> {
    let started = Instant::now();
    let resp = match parse_key_request(&Method::GET, path, Form::default(), None, SystemTime::now())
    {
        Ok(req) => serve_keys(server, req).await,
        Err(e) => error_response(&e),
    };
    finish_client_answer(
        server,
        &Method::GET,
        None,
        started,
        with_cluster_id(server, resp),
    )
}

/// A request body the client API reads: hyper's streamed one, or bytes already read.
pub trait ReqBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> ReqBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

fn redirect(clean: &str, query: Option<&str>, method: &Method) -> Response<RespBody> {
    let location = match query {
        Some(q) => format!("{clean}?{q}"),
        None => clean.to_string(),
    };
    let mut resp = if *method == Method::GET || *method == Method::HEAD {
        let mut r = Response::new(RespBody::full(format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(&location)
        )));
        r.headers_mut().insert(
            "Content-Type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    } else {
        Response::new(RespBody::empty())
    };
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert("Location", v);
    }
    resp
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

async fn route<B: ReqBody>(
    server: &Arc<EtcdServer>,
    req: Request<B>,
    conn: &ConnInfo,
) -> Response<RespBody> {
    if req.method() == Method::OPTIONS {
        return Response::new(RespBody::empty());
    }
    let raw_path = req.uri().path().to_string();
    let path = match path_unescape(raw_path.as_bytes()) {
        Ok(p) => p,
        Err(_) => return text_error(StatusCode::BAD_REQUEST, "400 Bad Request"),
    };
    let clean = clean_path(&path);
    if clean != path {
        return redirect(&clean, req.uri().query(), req.method());
    }
    if !server.enable_v2 && (path == "/v2" || path.starts_with("/v2/")) {
        // etcd 3.4 without --enable-v2 registers no /v2 handler.
        return text_error(StatusCode::NOT_FOUND, "404 page not found");
    }
    match path.as_str() {
        "/version" => base::version(server, req.method()),
        "/health" => base::health(server, req.method()).await,
        "/metrics" => base::metrics(server, req.method()),
        "/v2/machines" => base::machines(server, req.method()),
        "/v2/stats/self" => base::stats_self(server, req.method()),
        "/v2/stats/store" => base::stats_store(server, req.method()),
        "/v2/stats/leader" => base::stats_leader(server, req.method()),
        p if p == KEYS_PREFIX || p.starts_with("/v2/keys/") => {
            keys_entry(server, req, conn, path).await
        }
        p if p == "/v2/members" || p.starts_with("/v2/members/") => {
            let method = req.method();
            if !matches!(
                *method,
                Method::GET | Method::POST | Method::DELETE | Method::PUT
            ) {
                return method_not_allowed("GET,POST,DELETE,PUT");
            }
            let creds = Credentials::from_request(req.headers(), conn);
            if !auth::has_write_root_access(server, method, &creds).await {
                return auth::no_auth();
            }
            let method = method.clone();
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = if matches!(method, Method::POST | Method::PUT) {
                json_body(server, req).await
            } else {
                Bytes::new()
            };
            members::serve(server, &method, p, content_type.as_deref(), body).await
        }
        p if p.starts_with("/v2/auth/") => auth_entry(server, req, conn, p).await,
        _ => text_error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn route_peer(server: &Arc<EtcdServer>, req: Request<Incoming>) -> Response<RespBody> {
    match req.uri().path() {
        crate::transport::PATH_STREAM => peer::stream(server, req),
        crate::transport::PATH_RAFT => peer::raft(server, req, false).await,
        crate::transport::PATH_SNAPSHOT => peer::raft(server, req, true).await,
        "/version" => base::version(server, req.method()),
        "/members" => base::peer_members(server, req.method()),
        _ => text_error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// The JSON body of a members or auth API request, up to `--max-request-bytes`; one that
/// cannot be read is empty (Go's JSON decoder then fails on it, and so does ours).
async fn json_body<B: ReqBody>(server: &EtcdServer, req: Request<B>) -> Bytes {
    match Limited::new(req.into_body(), server.max_request_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

async fn auth_entry<B: ReqBody>(
    server: &Arc<EtcdServer>,
    req: Request<B>,
    conn: &ConnInfo,
    path: &str,
) -> Response<RespBody> {
    let method = req.method().clone();
    let creds = Credentials::from_request(req.headers(), conn);
    let query_ok = parse_query(req.uri().query().unwrap_or("").as_bytes())
        .1
        .is_none();
    let body = if method == Method::PUT {
        json_body(server, req).await
    } else {
        Bytes::new()
    };
    auth::serve(server, &method, path, &creds, body, query_ok).await
}

async fn keys_entry<B: ReqBody>(
    server: &Arc<EtcdServer>,
    req: Request<B>,
    conn: &ConnInfo,
    path: String,
) -> Response<RespBody> {
    let method = req.method().clone();
    if !matches!(
        method,
        Method::HEAD | Method::GET | Method::PUT | Method::POST | Method::DELETE
    ) {
        return method_not_allowed("HEAD,GET,PUT,POST,DELETE");
    }
    with_cluster_id(
        server,
        keys_request(server, req, conn, &method, &path).await,
    )
}

async fn keys_request<B: ReqBody>(
    server: &Arc<EtcdServer>,
    req: Request<B>,
    conn: &ConnInfo,
    method: &Method,
    path: &str,
) -> Response<RespBody> {
    // Only consulted once auth is enabled (one atomic load otherwise).
    let creds = server
        .auth_enabled()
        .then(|| Credentials::from_request(req.headers(), conn));
    // Parsed now, merged after the body's values (Go's order: body first, then query).
    let (qform, qerr) = parse_query(req.uri().query().unwrap_or("").as_bytes());
    let is_form = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    let reads_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH) && is_form;
    let mut form = Form::default();
    let mut form_err: Option<String> = None;
    if reads_body {
        let limit = server.max_request_bytes;
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let cause = if too_large {
                    "etcdserver: request is too large".to_string()
                } else {
                    format!("error reading request body: {e}")
                };
                return error_response(&V2Error::new(ErrorCode::InvalidForm, cause, 0));
            }
        };
        let (f, e) = parse_query(&body);
        form = f;
        form_err = e;
    } else {
        // The body is not read; hyper discards it when the response is sent.
        drop(req);
    }
    form.extend(qform);
    if form_err.is_none() {
        form_err = qerr;
    }
    let parsed = match parse_key_request(method, path, form, form_err.as_deref(), SystemTime::now())
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Some(creds) = &creds {
        // etcd checks access after parsing: a malformed request gets its parse error.
        let key = &path[KEYS_PREFIX.len()..];
        if !auth::has_key_prefix_access(server, method, creds, key, parsed.recursive).await {
            return auth::key_no_auth();
        }
    }
    serve_keys(server, parsed).await
}

/// A JSON response with status 200.
pub fn json_response(body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn connection_limits_follow_the_open_files_limit() {
        let files = open_files_limit().expect("/proc/self/limits names the open-files limit");
        assert!(files >= 64);
        assert!(max_connections(Api::Client) <= files.max(64));
        assert!(max_connections(Api::Peer) <= 1024);
        assert!(max_connections(Api::Peer) >= 16);
    }
}
