//! The HTTP/1.1 client: endpoint parsing, one keep-alive connection per `Conn` that
//! reconnects to the next endpoint after a failure, and the classification of failures into
//! error kinds.
//!
//! The client is written directly on a `TcpStream` (requests from a reused buffer in one
//! write, responses parsed with `httparse` from a reused buffer) because the load generator
//! shares the machine with the servers it measures: every microsecond it spends per request
//! is taken from the server under test. A general-purpose client (a connection task per
//! connection, a request object and a body channel per request) cost about three times as
//! much CPU per request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `host:port`, for connecting and for the Host header.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://host:port` (the scheme may be left out; the port defaults to 80).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err(format!("endpoint {s:?}: https endpoints are not supported"));
        } else if s.contains("://") {
            return Err(format!("endpoint {s:?}: only http:// is supported"));
        } else {
            s
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("endpoint {s:?}: expected http://host:port"));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, port)) if !authority.ends_with(']') => {
                port.parse::<u16>()
                    .map_err(|_| format!("endpoint {s:?}: bad port {port:?}"))?;
                true
            }
            _ => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint { authority })
    }
}

/// Why a request got no (complete) HTTP response.
#[derive(Debug)]
pub enum ReqError {
    Connect(io::Error),
    Timeout,
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response is not valid HTTP/1.1.
    Protocol(String),
}

impl ReqError {
    /// The error kind reported in the results.
    pub fn kind(&self) -> String {
        match self {
            ReqError::Connect(e)
                if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) =>
            {
                "connect EMFILE (too many open files: raise `ulimit -n`)".into()
            }
            ReqError::Connect(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "connect refused".into(),
                io::ErrorKind::TimedOut => "connect timeout".into(),
                k => format!("connect {}", format!("{k:?}").to_lowercase()),
            },
            ReqError::Timeout => "timeout".into(),
            ReqError::Closed => "io (connection closed)".into(),
            ReqError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                "io (connection closed)".into()
            }
            ReqError::Io(_) => "io".into(),
            ReqError::Protocol(why) => format!("bad response ({why})"),
        }
    }

    pub fn is_emfile(&self) -> bool {
        matches!(self, ReqError::Connect(e) if matches!(e.raw_os_error(), Some(23 | 24)))
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// The status line and headers of a response whose body is still to be read (`finish`).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    framing: Framing,
    /// `Connection: close`: the connection is not reused after this response.
    close: bool,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The error kind of a response whose status is not accepted: `etcd errorCode N` when the
/// body is an etcd error, else `http N`.
pub fn status_error(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errorCode").and_then(|c| c.as_u64()))
    {
        Some(code) => format!("etcd errorCode {code}"),
        None => format!("http {status}"),
    }
}

/// `node.modifiedIndex` of a v2 response body.
pub fn modified_index(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("node")?.get("modifiedIndex")?.as_u64()
}

/// Headers read per response (etcd sends about ten).
const MAX_HEADERS: usize = 32;

/// A response head larger than this is refused rather than buffered without bound.
const MAX_HEAD: usize = 64 * 1024;

/// Parses a response head at the start of `buf`: the head and its length, or None if
/// more bytes are needed.
fn parse_head(buf: &[u8], method: &Method) -> Result<Option<(Head, usize)>, ReqError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ReqError::Protocol("response head too large".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReqError::Protocol(format!("bad response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let (mut length, mut chunked, mut close) = (None, false, resp.version == Some(0));
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ReqError::Protocol("bad Content-Length".into()))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.trim_ascii().eq_ignore_ascii_case(b"close");
        }
    }
    let framing = if *method == Method::HEAD || status == 204 || status == 304 || status < 200 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some((
        Head {
            status,
            framing,
            close,
        },
        len,
    )))
}

/// What `decode_chunked` found at the start of the buffer.
#[derive(Debug, PartialEq)]
enum Chunk {
    /// Need more bytes.
    Partial,
    /// A data chunk: (start, end) of its data and the bytes it takes with its framing.
    Data(usize, usize, usize),
    /// The last chunk and its trailers: the bytes they take.
    End(usize),
}

/// Decodes one chunk of a chunked body at the start of `buf`.
fn decode_chunk(buf: &[u8]) -> Result<Chunk, ReqError> {
    let Some(line_end) = find_crlf(buf) else {
        return if buf.len() > 1024 {
            Err(ReqError::Protocol("chunk size line too long".into()))
        } else {
            Ok(Chunk::Partial)
        };
    };
    let line = &buf[..line_end];
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let size = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| usize::from_str_radix(d, 16).ok())
        .ok_or_else(|| ReqError::Protocol("bad chunk size".into()))?;
    let data = line_end + 2;
    if size == 0 {
        // Trailer lines up to an empty line.
        let mut at = data;
        loop {
            let Some(end) = find_crlf(&buf[at..]) else {
                return Ok(Chunk::Partial);
            };
            at += end + 2;
            if end == 0 {
                return Ok(Chunk::End(at));
            }
        }
    }
    let end = data
        .checked_add(size)
        .ok_or_else(|| ReqError::Protocol("bad chunk size".into()))?;
    if buf.len() < end + 2 {
        return Ok(Chunk::Partial);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ReqError::Protocol("chunk not followed by CRLF".into()));
    }
    Ok(Chunk::Data(data, end, end + 2))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A keep-alive connection to one of the endpoints, opened on first use and reopened (on
/// the next endpoint) after a failure.
pub struct Conn {
    endpoints: Arc<[Endpoint]>,
    current: usize,
    stream: Option<TcpStream>,
    timeout: Duration,
    /// The request being written (reused).
    wbuf: Vec<u8>,
    /// Bytes read and not yet consumed (reused).
    rbuf: BytesMut,
    /// The method of the request in flight (a HEAD response has no body).
    method: Method,
    /// A request was written and its response not wholly read (a cancelled exchange):
    /// the connection is out of step and must not be reused.
    in_flight: bool,
}

impl Conn {
    pub fn new(endpoints: Arc<[Endpoint]>, first: usize, timeout: Duration) -> Self {
        let current = first % endpoints.len();
        Conn {
            endpoints,
            current,
            stream: None,
            timeout,
            wbuf: Vec::with_capacity(512),
            rbuf: BytesMut::new(),
            method: Method::GET,
            in_flight: false,
        }
    }

    async fn connect(&mut self) -> Result<(), ReqError> {
        let addr = &self.endpoints[self.current].authority;
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(ReqError::Connect)?,
            Err(_) => return Err(ReqError::Connect(io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.rbuf.clear();
        Ok(())
    }

    /// Drops the connection; the next request reconnects, to the next endpoint.
    pub fn reset(&mut self) {
        self.stream = None;
        self.in_flight = false;
        self.rbuf.clear();
        self.current = (self.current + 1) % self.endpoints.len();
    }

    /// Reads more bytes into the buffer; `Closed` at end of stream.
    async fn fill(&mut self) -> Result<(), ReqError> {
        let stream = self.stream.as_mut().ok_or(ReqError::Closed)?;
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        match stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(ReqError::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(ReqError::Io(e)),
        }
    }

    /// Sends a request and returns once the response head has arrived (no timeout: a
    /// long-poll caller reads the body itself). On failure the connection is dropped.
    pub async fn start(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Head, ReqError> {
        let r = self.try_start(method, path, body).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn try_start(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Head, ReqError> {
        if self.in_flight {
            self.reset();
        }
        if self.stream.is_none() {
            self.connect().await?;
        }
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(path.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        w.extend_from_slice(self.endpoints[self.current].authority.as_bytes());
        w.extend_from_slice(b"\r\n");
        if let Some(b) = &body {
            w.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n");
            w.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
        w.extend_from_slice(b"\r\n");
        if let Some(b) = &body {
            w.extend_from_slice(b);
        }
        self.method = method;
        self.in_flight = true;
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(&self.wbuf).await.map_err(ReqError::Io)?;
        loop {
            if let Some((head, len)) = parse_head(&self.rbuf, &self.method)? {
                self.rbuf.advance(len);
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// Reads the rest of a response started with `start`.
    pub async fn finish(&mut self, head: Head) -> Result<Reply, ReqError> {
        let r = self.read_body(&head).await;
        match &r {
            Ok(_) if head.close => self.reset(),
            Ok(_) if !self.rbuf.is_empty() => {
                // More bytes than the response: the server is out of step with us.
                self.reset();
            }
            Ok(_) => self.in_flight = false,
            Err(_) => self.reset(),
        }
        r.map(|body| Reply {
            status: head.status,
            body,
        })
    }

    async fn read_body(&mut self, head: &Head) -> Result<Bytes, ReqError> {
        match head.framing {
            Framing::Length(n) => {
                while self.rbuf.len() < n {
                    self.fill().await?;
                }
                Ok(self.take(n))
            }
            Framing::UntilClose => loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(ReqError::Closed) => {
                        let n = self.rbuf.len();
                        return Ok(self.take(n));
                    }
                    Err(e) => return Err(e),
                }
            },
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    match decode_chunk(&self.rbuf)? {
                        Chunk::Partial => self.fill().await?,
                        Chunk::Data(start, end, used) => {
                            body.extend_from_slice(&self.rbuf[start..end]);
                            self.rbuf.advance(used);
                        }
                        Chunk::End(used) => {
                            self.rbuf.advance(used);
                            return Ok(Bytes::from(body));
                        }
                    }
                }
            }
        }
    }

    /// The first `n` buffered bytes, as their own buffer (the read buffer stays reusable).
    fn take(&mut self, n: usize) -> Bytes {
        let body = Bytes::copy_from_slice(&self.rbuf[..n]);
        self.rbuf.advance(n);
        body
    }

    /// One whole request, bounded by the timeout.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, ReqError> {
        let timeout = self.timeout;
        let r = tokio::time::timeout(timeout, async {
            let head = self.start(method, path, body).await?;
            self.finish(head).await
        })
        .await;
        r.unwrap_or_else(|_| {
            self.reset();
            Err(ReqError::Timeout)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let a = |s| Endpoint::parse(s).map(|e| e.authority);
        assert_eq!(a("http://127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(a("http://localhost:2379/").unwrap(), "localhost:2379");
        assert_eq!(a("10.0.0.1:4001").unwrap(), "10.0.0.1:4001");
        assert_eq!(a("http://host").unwrap(), "host:80");
        assert_eq!(a("http://[::1]:2379").unwrap(), "[::1]:2379");
        assert!(a("https://x:1").unwrap_err().contains("https"));
        assert!(a("http://x:notaport").is_err());
        assert!(a("http://x:1/path").is_err());
        assert!(a("").is_err());
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            status_error(404, br#"{"errorCode":100,"message":"Key not found"}"#),
            "etcd errorCode 100"
        );
        assert_eq!(status_error(500, b"oops"), "http 500");
        let refused = ReqError::Connect(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.kind(), "connect refused");
        let emfile = ReqError::Connect(io::Error::from_raw_os_error(24));
        assert!(emfile.is_emfile());
        assert!(emfile.kind().contains("ulimit -n"));
        assert_eq!(ReqError::Timeout.kind(), "timeout");
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 7\r\n";

    fn head_of(extra: &[u8], method: &Method) -> Option<(Head, usize)> {
        let mut buf = HEAD.to_vec();
        buf.extend_from_slice(extra);
        parse_head(&buf, method).unwrap()
    }

    #[test]
    fn response_heads() {
        let (h, len) = head_of(b"Content-Length: 12\r\n\r\n{\"a\":1}", &Method::GET).unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (200, Framing::Length(12), false)
        );
        assert_eq!(len, HEAD.len() + b"Content-Length: 12\r\n\r\n".len());
        let (h, _) = head_of(b"Transfer-Encoding: chunked\r\n\r\n", &Method::GET).unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = head_of(b"Connection: close\r\n\r\n", &Method::GET).unwrap();
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        let (h, _) = head_of(
            b"Content-Length: 5\r\nConnection: close\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert_eq!((h.framing, h.close), (Framing::Length(5), true));
        // A HEAD response announces a length but carries no body.
        let (h, _) = head_of(b"Content-Length: 40\r\n\r\n", &Method::HEAD).unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        // Incomplete: every proper prefix of a head needs more bytes.
        let full = [HEAD, b"Content-Length: 0\r\n\r\n"].concat();
        for cut in 0..full.len() {
            assert!(
                parse_head(&full[..cut], &Method::GET).unwrap().is_none(),
                "cut {cut}"
            );
        }
        assert!(parse_head(b"NOT HTTP AT ALL\r\n\r\n", &Method::GET).is_err());
        assert!(parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            &Method::GET
        )
        .is_err());
    }

    /// Decodes a whole chunked body with the same loop as `read_body`, feeding the bytes
    /// in two parts split at `cut`.
    fn dechunk(wire: &[u8], cut: usize) -> Result<(Vec<u8>, usize), ReqError> {
        let mut buf = wire[..cut].to_vec();
        let mut fed = false;
        let mut body = Vec::new();
        let mut consumed = 0;
        loop {
            match decode_chunk(&buf)? {
                Chunk::Partial if !fed => {
                    buf.extend_from_slice(&wire[cut..]);
                    fed = true;
                }
                Chunk::Partial => return Err(ReqError::Closed),
                Chunk::Data(start, end, used) => {
                    body.extend_from_slice(&buf[start..end]);
                    buf.drain(..used);
                    consumed += used;
                }
                Chunk::End(used) => return Ok((body, consumed + used)),
            }
        }
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for cut in 0..=wire.len() {
            let (body, used) = dechunk(wire, cut).unwrap();
            assert_eq!(body, b"hello, world", "cut {cut}");
            assert_eq!(&wire[used..], b"NEXT", "cut {cut}");
        }
        // An event written by itself, then the last chunk later (a long poll).
        let (body, _) = dechunk(b"17\r\n{\"action\":\"set\",\"x\":1}\n\r\n0\r\n\r\n", 24).unwrap();
        assert_eq!(body, b"{\"action\":\"set\",\"x\":1}\n");
        // Missing last chunk: the connection closes mid-body.
        assert!(matches!(
            dechunk(b"5\r\nhello\r\n", 3),
            Err(ReqError::Closed)
        ));
        assert!(dechunk(b"zz\r\nhello\r\n0\r\n\r\n", 10).is_err());
        assert!(dechunk(b"5\r\nhelloXX0\r\n\r\n", 12).is_err());
    }

    #[test]
    fn modified_index_of_a_reply() {
        let body = br#"{"action":"set","node":{"key":"/k","value":"v","modifiedIndex":42,"createdIndex":42}}"#;
        assert_eq!(modified_index(body), Some(42));
        assert_eq!(modified_index(b"{}"), None);
    }
}
