//! The HTTP/1.1 client: endpoint parsing, one keep-alive connection (hyper's `http1`
//! handshake over a `TcpStream`) that reconnects to the next endpoint after a failure, and
//! the classification of failures into error kinds.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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

/// Why a request got no HTTP response.
#[derive(Debug)]
pub enum ReqError {
    Connect(io::Error),
    Timeout,
    Io(hyper::Error),
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
            ReqError::Io(e) if e.is_incomplete_message() || e.is_canceled() => {
                "io (connection closed)".into()
            }
            ReqError::Io(_) => "io".into(),
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

/// A keep-alive connection to one of the endpoints, opened on first use and reopened (on
/// the next endpoint) after a failure.
pub struct Conn {
    endpoints: Arc<[Endpoint]>,
    current: usize,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    pub fn new(endpoints: Arc<[Endpoint]>, first: usize, timeout: Duration) -> Self {
        let current = first % endpoints.len();
        Conn {
            endpoints,
            current,
            sender: None,
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<(), ReqError> {
        let addr = self.endpoints[self.current].authority.clone();
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(&addr)).await {
            Ok(r) => r.map_err(ReqError::Connect)?,
            Err(_) => return Err(ReqError::Connect(io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ReqError::Io)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Drops the connection; the next request reconnects, to the next endpoint.
    pub fn reset(&mut self) {
        self.sender = None;
        self.current = (self.current + 1) % self.endpoints.len();
    }

    /// Sends a request and returns once the response head has arrived (no timeout: a
    /// long-poll caller reads the body itself). On failure the connection is dropped.
    pub async fn start(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ReqError> {
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
    ) -> Result<Response<Incoming>, ReqError> {
        let stale = match &self.sender {
            Some(s) => s.is_closed(),
            None => true,
        };
        if stale {
            self.connect().await?;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.endpoints[self.current].authority);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .expect("request parts are valid");
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(ReqError::Io)?;
        sender.send_request(req).await.map_err(ReqError::Io)
    }

    /// Reads the rest of a response started with `start`.
    pub async fn finish(&mut self, resp: Response<Incoming>) -> Result<Reply, ReqError> {
        let status = resp.status().as_u16();
        match resp.into_body().collect().await {
            Ok(b) => Ok(Reply {
                status,
                body: b.to_bytes(),
            }),
            Err(e) => {
                self.reset();
                Err(ReqError::Io(e))
            }
        }
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
            let resp = self.start(method, path, body).await?;
            self.finish(resp).await
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

    #[test]
    fn modified_index_of_a_reply() {
        let body = br#"{"action":"set","node":{"key":"/k","value":"v","modifiedIndex":42,"createdIndex":42}}"#;
        assert_eq!(modified_index(body), Some(42));
        assert_eq!(modified_index(b"{}"), None);
    }
}
