//! The simple requests of a client connection, answered without hyper.
//!
//! Most client traffic is small keep-alive requests to the keys API: a GET of a key, a PUT
//! of a form. For those this module parses the head with `httparse`, runs the same handler
//! as hyper's path (`handle_client`), and writes the answer as hyper writes it: the status
//! line, the handler's headers title-cased in their order, then `Content-Length`, then
//! `Date`; the answers to pipelined requests go out in one write. At tens of thousands of
//! requests a second hyper's general machinery (its dispatcher, a timer per request, header
//! names title-cased byte by byte) was a fifth of a GET's CPU time.
//!
//! Anything else hands the connection, with the bytes read so far, to hyper for the rest of
//! its life: another path, a watch (`wait` or an escape in a GET's query), a body that is
//! chunked, larger than [`MAX_BODY`] or on a GET, `Expect`, `Connection` other than
//! `keep-alive`, `Upgrade`, HTTP/1.0, more than [`MAX_HEADERS`] headers, a head larger than
//! [`MAX_HEAD`] or one `httparse` rejects. So every rule of HTTP that is not simple stays
//! hyper's, including its error answers.
//!
//! A GET of a key with no query, on a server whose answer depends on no request header (auth
//! off, CORS open to all), skips building the request: `handle_plain_get` runs the keys
//! handler's own parse and read on the path (a tenth of a GET's CPU time).
//!
//! Invariants: answers go out in the order their requests came, all of them before a
//! hand-over; a request is answered here only if hyper would have given it the same bytes
//! (up to the second in `Date`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, DATE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::auth::ConnInfo;
use super::body::RespBody;
use super::{handle_client, serve_connection, Api, HEADER_READ_TIMEOUT};
use crate::server::EtcdServer;

/// A head that is not complete within this many bytes goes to hyper (whose limit is larger).
pub const MAX_HEAD: usize = 16 << 10;

/// A body larger than this goes to hyper, which streams it into the handler.
pub const MAX_BODY: usize = 64 << 10;

/// A connection's read or answer buffer larger than this is not kept once empty.
const KEEP_BUFFER: usize = 16 << 10;

/// Headers a simple request may carry; more goes to hyper.
const MAX_HEADERS: usize = 32;

/// What the buffer's first request is.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// A simple request, complete in the buffer: its head is `head_len` bytes, its body
    /// the `body_len` after.
    Simple(SimpleHead),
    /// Not complete yet; read more.
    Partial,
    /// Not for this path: hyper serves the connection from here on.
    Other,
}

#[derive(Debug, PartialEq)]
struct SimpleHead {
    method: Method,
    head_len: usize,
    body_len: usize,
    /// Where the request target is, as a range of the buffer.
    target: (usize, usize),
    /// Each header's name and where its value is.
    headers: Vec<(HeaderName, (usize, usize))>,
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn range_of(buf: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

/// Reads the first request of `buf`, deciding whether it is a simple one.
fn parse(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("PUT") => Method::PUT,
        Some("POST") => Method::POST,
        Some("DELETE") => Method::DELETE,
        _ => return Parsed::Other,
    };
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    if req.version != Some(1) || !(target == "/v2/keys" || target.starts_with("/v2/keys/")) {
        return Parsed::Other;
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    // A watch streams its answer: hyper's. Go decodes the query's names, so `w%61it` is
    // `wait` too: a GET whose query has an escape goes to hyper as well.
    if method == Method::GET && (query.contains("wait") || query.contains('%')) {
        return Parsed::Other;
    }
    let mut body_len: Option<usize> = None;
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        if name == CONTENT_LENGTH {
            let len = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (body_len, len) {
                (None, Some(len)) if len <= MAX_BODY => body_len = Some(len),
                _ => return Parsed::Other,
            }
        } else if name == http::header::CONNECTION {
            // `keep-alive` is HTTP/1.1's default, and hyper answers it as if absent.
            if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::Other;
            }
        } else if name == http::header::TRANSFER_ENCODING
            || name == http::header::EXPECT
            || name == http::header::UPGRADE
            || name == http::header::TE
        {
            return Parsed::Other;
        }
        if HeaderValue::from_bytes(h.value).is_err() {
            return Parsed::Other;
        }
        headers.push((name, range_of(buf, h.value)));
    }
    let body_len = body_len.unwrap_or(0);
    if method == Method::GET && body_len > 0 {
        return Parsed::Other;
    }
    if buf.len() < head_len + body_len {
        return Parsed::Partial;
    }
    Parsed::Simple(SimpleHead {
        method,
        head_len,
        body_len,
        target: range_of(buf, target.as_bytes()),
        headers,
    })
}

/// Whether the simple request `head` is a GET of a key that [`super::handle_plain_get`]
/// answers as the full handler would: no query, a path that needs no unescaping or
/// cleaning, and a server whose answer depends on no request header (auth off, CORS open).
fn plain_get<'a>(server: &EtcdServer, buf: &'a [u8], head: &SimpleHead) -> Option<&'a str> {
    if head.method != Method::GET
        || !server.enable_v2
        || server.cors.is_some()
        || server.auth_enabled()
    {
        return None;
    }
    let (start, end) = head.target;
    let path = std::str::from_utf8(&buf[start..end]).ok()?;
    is_plain_key_path(path).then_some(path)
}

/// A request target under `/v2/keys/` that routing leaves as it is: no query, nothing to
/// unescape (`%`), already clean (no `//`, `.` or `..` segment, no trailing `/`).
fn is_plain_key_path(target: &str) -> bool {
    target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && target.starts_with("/v2/keys/")
        && oxcd_v2store::is_clean_path(target)
}

/// The simple request `head` describes, made of `bytes` (its head and body) without
/// copying them.
fn make_request(bytes: &Bytes, head: SimpleHead) -> Option<Request<Full<Bytes>>> {
    let slice = |(start, end): (usize, usize)| bytes.slice(start..end);
    let uri = Uri::from_maybe_shared(slice(head.target)).ok()?;
    let mut req = Request::new(Full::new(bytes.slice(head.head_len..)));
    *req.method_mut() = head.method;
    *req.uri_mut() = uri;
    let map = req.headers_mut();
    for (name, value) in head.headers {
        map.append(name, HeaderValue::from_maybe_shared(slice(value)).ok()?);
    }
    Some(req)
}

/// Appends `resp` to `out` as hyper writes an answer to a keep-alive HTTP/1.1 request.
/// Returns false for an answer this path cannot write (a streamed body).
fn encode(resp: Response<RespBody>, out: &mut Vec<u8>) -> bool {
    let (parts, body) = resp.into_parts();
    let body = match body {
        RespBody::Full(b) => b.unwrap_or_default(),
        RespBody::Watch(_) => return false,
    };
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut wrote_len = false;
    let mut wrote_date = false;
    for (name, value) in &parts.headers {
        wrote_len |= name == CONTENT_LENGTH;
        wrote_date |= name == DATE;
        title_case(out, name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    if has_length && !wrote_len {
        out.extend_from_slice(b"Content-Length: ");
        let mut digits = [0u8; 20];
        out.extend_from_slice(oxcd_api::json::format_u64(&mut digits, body.len() as u64));
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"Date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if has_length {
        out.extend_from_slice(&body);
    }
    true
}

/// Go's canonical form of a header name (hyper's title case): the first letter and each
/// one after a `-` upper case.
fn title_case(out: &mut Vec<u8>, name: &[u8]) {
    let start = out.len();
    out.extend_from_slice(name);
    let mut upper = true;
    for c in &mut out[start..] {
        if upper {
            c.make_ascii_uppercase();
        }
        upper = *c == b'-';
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once a second per thread.
    static DATE_CACHE: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Serves a client connection: simple requests here, the rest of the connection by hyper
/// from the first request that is not simple.
pub async fn serve<S>(mut io: S, server: Arc<EtcdServer>, conn: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // The header read timeout as hyper's: counted from when the server starts waiting for
    // a request. One timer a connection, re-armed only when it fires early, instead of
    // one per request.
    let mut waiting_since = Instant::now();
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    loop {
        // Answer every complete request in the buffer, then send the answers at once.
        loop {
            match parse(&buf) {
                Parsed::Simple(head) => {
                    let bytes = buf.split_to(head.head_len + head.body_len).freeze();
                    let resp = match plain_get(&server, &bytes, &head) {
                        Some(path) => super::handle_plain_get(&server, path).await,
                        None => match make_request(&bytes, head) {
                            Some(req) => handle_client(&server, req, &conn).await,
                            None => {
                                // A target `http::Uri` refuses: hyper answers it (400).
                                let mut rest = BytesMut::from(&bytes[..]);
                                rest.extend_from_slice(&buf);
                                return hand_over(io, &out, rest, server, conn).await;
                            }
                        },
                    };
                    if !encode(resp, &mut out) {
                        tracing::warn!(
                            "http: streamed answer to a simple request, connection closed"
                        );
                        return;
                    }
                    waiting_since = Instant::now();
                }
                Parsed::Partial => break,
                Parsed::Other => return hand_over(io, &out, buf, server, conn).await,
            }
        }
        if !out.is_empty() {
            // Let the worker finish the other connections it has ready before sending: their
            // answers then go out back to back, and a client thread asleep in its poll is
            // woken once for a burst of them instead of once each. Waking a thread on the
            // other CPU is the dearest step of a small request (an interrupt between CPUs,
            // a VM exit on a virtual machine). Measured with wrk, 64 connections: GETs +6%,
            // p50 -25%; one client alone: p50 halved.
            tokio::task::yield_now().await;
            if io.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            // An idle connection keeps a small buffer, not its largest answer's.
            if out.capacity() > KEEP_BUFFER {
                out = Vec::with_capacity(4096);
            }
        }
        if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
            buf = BytesMut::with_capacity(4096);
        } else if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = loop {
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => break read,
                () = &mut timer => {
                    let deadline = waiting_since + HEADER_READ_TIMEOUT;
                    if Instant::now() >= deadline {
                        tracing::debug!("http: header read timeout, connection closed");
                        return;
                    }
                    timer.as_mut().reset(deadline.into());
                }
            }
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Sends the answers not sent yet, then lets hyper serve the connection, starting with
/// the bytes read but not answered.
async fn hand_over<S>(
    mut io: S,
    out: &[u8],
    read: BytesMut,
    server: Arc<EtcdServer>,
    conn: ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !out.is_empty() && io.write_all(out).await.is_err() {
        return;
    }
    let io = Prefixed {
        prefix: read.freeze(),
        inner: io,
    };
    serve_connection(TokioIo::new(io), server, conn, Api::Client).await
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(dst.remaining());
            dst.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, dst)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, src)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(buf: &[u8]) -> SimpleHead {
        match parse(buf) {
            Parsed::Simple(head) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn a_get_of_a_key_is_simple_and_its_parts_are_found() {
        let buf = b"GET /v2/keys/a/b?recursive=true HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eA==\r\n\r\nGET";
        let head = simple(buf);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.head_len, buf.len() - 3);
        assert_eq!(head.body_len, 0);
        let (start, end) = head.target;
        assert_eq!(&buf[start..end], b"/v2/keys/a/b?recursive=true");
        let names: Vec<&str> = head.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["host", "authorization"]);
        simple(b"GET /v2/keys/a HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n");
        let (start, end) = head.headers[1].1;
        assert_eq!(&buf[start..end], b"Basic eA==");

        let bytes = Bytes::copy_from_slice(buf);
        let req = make_request(&bytes, head).expect("representable");
        assert_eq!(req.uri().path(), "/v2/keys/a/b");
        assert_eq!(req.uri().query(), Some("recursive=true"));
        assert_eq!(req.headers()["authorization"], "Basic eA==");
    }

    #[test]
    fn a_form_body_is_simple_once_all_of_it_is_read() {
        let full = b"PUT /v2/keys/a HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=x";
        assert_eq!(parse(&full[..full.len() - 1]), Parsed::Partial);
        assert_eq!(parse(&full[..20]), Parsed::Partial);
        let head = simple(full);
        assert_eq!(
            (head.head_len + head.body_len, head.body_len),
            (full.len(), 7)
        );
        let bytes = Bytes::copy_from_slice(full);
        let req = make_request(&bytes, head).expect("representable");
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(hyper::body::Body::size_hint(req.body()).exact(), Some(7));
    }

    #[test]
    fn anything_not_simple_goes_to_hyper() {
        let other: &[&[u8]] = &[
            b"GET /v2/keys/a?wait=true HTTP/1.1\r\n\r\n",
            b"GET /v2/keys/a?w%61it=true HTTP/1.1\r\n\r\n",
            b"GET /v2/members HTTP/1.1\r\n\r\n",
            b"GET /v2/keysx HTTP/1.1\r\n\r\n",
            b"GET http://h/v2/keys/a HTTP/1.1\r\n\r\n",
            b"HEAD /v2/keys/a HTTP/1.1\r\n\r\n",
            b"OPTIONS /v2/keys/a HTTP/1.1\r\n\r\n",
            b"GET /v2/keys/a HTTP/1.0\r\n\r\n",
            b"GET /v2/keys/a HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /v2/keys/a HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            b"GET /v2/keys/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"PUT /v2/keys/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT /v2/keys/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n",
            b"PUT /v2/keys/a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"PUT /v2/keys/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"PUT /v2/keys/a HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"PUT /v2/keys/a HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"PUT /v2/keys/a HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ];
        for buf in other {
            assert_eq!(
                parse(buf),
                Parsed::Other,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        // A head that never ends within the limit.
        let mut long = b"GET /v2/keys/a HTTP/1.1\r\nX-Filler: ".to_vec();
        long.resize(MAX_HEAD + 1, b'f');
        assert_eq!(parse(&long[..MAX_HEAD - 1]), Parsed::Partial);
        assert_eq!(parse(&long), Parsed::Other);
        // More headers than this path takes.
        let mut many = b"GET /v2/keys/a HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Parsed::Other);
    }

    #[test]
    fn answers_are_written_as_hyper_writes_them() {
        let mut resp = Response::new(RespBody::full("{}"));
        *resp.status_mut() = StatusCode::CREATED;
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-etcd-index", HeaderValue::from_static("7"));
        let mut out = b"earlier answer".to_vec();
        assert!(encode(resp, &mut out));
        let text = String::from_utf8(out).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "earlier answerHTTP/1.1 201 Created",
                "Content-Type: application/json",
                "X-Etcd-Index: 7",
                "Content-Length: 2"
            ]
        );
        assert!(
            lines[4].starts_with("Date: ") && lines[4].ends_with(" GMT"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(body, "{}");

        // 204 has neither a length nor a body; an empty 200 says its length is 0.
        let mut resp = Response::new(RespBody::full("ignored"));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let mut out = Vec::new();
        assert!(encode(resp, &mut out));
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\nDate: "),
            "{text}"
        );
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        let mut out = Vec::new();
        assert!(encode(Response::new(RespBody::empty()), &mut out));
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: "),
            "{text}"
        );
    }

    #[test]
    fn only_clean_unescaped_key_paths_without_a_query_are_plain() {
        for plain in [
            "/v2/keys/a",
            "/v2/keys/bench/00000001",
            "/v2/keys/_hidden/x.y-z",
        ] {
            assert!(is_plain_key_path(plain), "{plain}");
        }
        for not_plain in [
            "/v2/keys",
            "/v2/keys/",
            "/v2/keys/a/",
            "/v2/keys//a",
            "/v2/keys/./a",
            "/v2/keys/a/..",
            "/v2/keys/a?recursive=true",
            "/v2/keys/a%20b",
            "/v2/keys/a+b",
            "/v2/keys/ä",
            "/v2/members/a",
            "/v2/keysa",
        ] {
            assert!(!is_plain_key_path(not_plain), "{not_plain}");
        }
    }

    #[test]
    fn header_names_are_title_cased_as_go_writes_them() {
        let mut out = Vec::new();
        for name in [
            "x-etcd-cluster-id",
            "content-type",
            "www-authenticate",
            "a",
            "-x",
        ] {
            title_case(&mut out, name.as_bytes());
            out.push(b' ');
        }
        assert_eq!(
            out,
            b"X-Etcd-Cluster-Id Content-Type Www-Authenticate A -X "
        );
    }

    #[tokio::test]
    async fn a_prefixed_connection_reads_its_prefix_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut io = Prefixed {
            prefix: Bytes::from_static(b"hello"),
            inner: server,
        };
        let mut got = String::new();
        io.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "hello world");
    }
}
