//! The v2 keys API (`/v2/keys`): request parsing, dispatch and response writing.
//!
//! Parsing follows etcd's `parseKeyRequest` field by field (the same checks in the same
//! order, so the same malformed request gets the same error code); every 2xx-code error is
//! raised here, before anything is proposed. A TTL becomes an absolute expiry on this
//! member's clock. Dispatch follows etcd's v2 `Handle`: POST, PUT, DELETE and quorum GET go
//! through raft; GET and HEAD read the local store; `wait=true` registers a watcher.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use oxcd_api::v2::{Action, Error as V2Error, ErrorCode, Event};
use tokio::sync::mpsc;

use super::body::{ChannelSink, EventRx, OnceSink, RespBody, WatchBody};
use super::form::{parse_bool, parse_u64, path_join, Form};
use super::names;
use crate::server::request::{time_to_unix_nanos, Expiry, V2Request};
use crate::server::{ApplyResult, EtcdServer, STORE_KEYS_PREFIX};

/// The URL prefix of the keys API.
pub const KEYS_PREFIX: &str = "/v2/keys";

/// Capacity of a watcher's event buffer (etcd: 100; a full buffer drops the watcher).
const WATCH_BUFFER: usize = 100;

/// A parsed keys request (etcd's `Request` for the v2 API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRequest {
    /// HTTP method.
    pub method: Method,
    /// Full store path (`/1/...`).
    pub path: String,
    /// `value`.
    pub value: String,
    /// `dir`.
    pub dir: bool,
    /// `prevValue`.
    pub prev_value: String,
    /// `prevIndex`.
    pub prev_index: u64,
    /// `prevExist` if given.
    pub prev_exist: Option<bool>,
    /// `wait`.
    pub wait: bool,
    /// `waitIndex`.
    pub since: u64,
    /// `recursive`.
    pub recursive: bool,
    /// `sorted`.
    pub sorted: bool,
    /// `quorum`.
    pub quorum: bool,
    /// `stream`.
    pub stream: bool,
    /// `refresh` if given.
    pub refresh: Option<bool>,
    /// Absolute expiry (Unix ns) computed from `ttl`.
    pub expiration: Option<i64>,
    /// `noValueOnSuccess`.
    pub no_value_on_success: bool,
}

fn req_err(code: ErrorCode, cause: &str) -> V2Error {
    V2Error::new(code, cause, 0)
}

fn get_u64(form: &Form, key: &str) -> Result<u64, ()> {
    match form.first(key) {
        None => Ok(0),
        Some(v) => parse_u64(v).ok_or(()),
    }
}

fn get_bool(form: &Form, key: &str) -> Result<bool, ()> {
    match form.first(key) {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or(()),
    }
}

/// Parses a keys request. `url_path` is the decoded, clean URL path (`/v2/keys/...`);
/// `owned` holds body and query values (body first), `form_err` the first form parse error.
pub fn parse_key_request(
    method: &Method,
    url_path: &str,
    mut owned: Form,
    form_err: Option<&str>,
    now: SystemTime,
) -> Result<KeyRequest, V2Error> {
    if let Some(e) = form_err {
        return Err(req_err(ErrorCode::InvalidForm, e));
    }
    let Some(rest) = url_path.strip_prefix(KEYS_PREFIX) else {
        return Err(req_err(ErrorCode::InvalidForm, "incorrect key prefix"));
    };
    let path = path_join(STORE_KEYS_PREFIX, rest);
    let form = &owned;

    let prev_index = get_u64(form, "prevIndex")
        .map_err(|_| req_err(ErrorCode::IndexNaN, "invalid value for \"prevIndex\""))?;
    let since = get_u64(form, "waitIndex")
        .map_err(|_| req_err(ErrorCode::IndexNaN, "invalid value for \"waitIndex\""))?;
    let bool_field = |name: &str| {
        get_bool(form, name).map_err(|_| {
            req_err(
                ErrorCode::InvalidField,
                &format!("invalid value for \"{name}\""),
            )
        })
    };
    let recursive = bool_field("recursive")?;
    let sorted = bool_field("sorted")?;
    let wait = bool_field("wait")?;
    let dir = bool_field("dir")?;
    let quorum = bool_field("quorum")?;
    let stream = bool_field("stream")?;

    if wait && method != Method::GET {
        return Err(req_err(
            ErrorCode::InvalidField,
            "\"wait\" can only be used with GET requests",
        ));
    }
    let prev_value = form.value("prevValue").to_string();
    if form.has("prevValue") && prev_value.is_empty() {
        return Err(req_err(
            ErrorCode::PrevValueRequired,
            "\"prevValue\" cannot be empty",
        ));
    }
    let no_value_on_success = bool_field("noValueOnSuccess")?;

    let ttl = if form.value("ttl").is_empty() {
        None
    } else {
        Some(
            get_u64(form, "ttl")
                .map_err(|_| req_err(ErrorCode::TTLNaN, "invalid value for \"ttl\""))?,
        )
    };
    let prev_exist = if form.has("prevExist") {
        Some(
            get_bool(form, "prevExist")
                .map_err(|_| req_err(ErrorCode::InvalidField, "invalid value for prevExist"))?,
        )
    } else {
        None
    };
    let refresh = if form.has("refresh") {
        let r = get_bool(form, "refresh")
            .map_err(|_| req_err(ErrorCode::InvalidField, "invalid value for refresh"))?;
        if r {
            if form.has("value") && !form.value("value").is_empty() {
                return Err(req_err(
                    ErrorCode::RefreshValue,
                    "A value was provided on a refresh",
                ));
            }
            if ttl.is_none() {
                return Err(req_err(ErrorCode::RefreshTTLRequired, "No TTL value set"));
            }
        }
        Some(r)
    } else {
        None
    };
    let expiration = ttl.map(|secs| {
        let at = now
            .checked_add(Duration::from_secs(secs))
            .map(time_to_unix_nanos)
            .unwrap_or(i64::MAX);
        // Go's time arithmetic saturates nowhere: a huge TTL overflows to a past time there.
        // We saturate instead, which keeps such keys permanent in practice.
        at
    });
    Ok(KeyRequest {
        method: method.clone(),
        path,
        value: owned.take_value("value"),
        dir,
        prev_value,
        prev_index,
        prev_exist,
        wait,
        since,
        recursive,
        sorted,
        quorum,
        stream,
        refresh,
        expiration,
        no_value_on_success,
    })
}

impl KeyRequest {
    fn expiry(&self) -> Expiry {
        Expiry {
            at_unix_nanos: self.expiration,
            refresh: self.refresh.unwrap_or(false),
        }
    }

    /// The replicated request for a write or quorum read (etcd's apply-side dispatch, decided
    /// here so the log carries a typed request).
    #[cfg(test)]
    fn to_v2_request(&self) -> Option<V2Request> {
        self.clone().take_v2_request()
    }

    /// The replicated request for a write or quorum read, or `None` (and the request is
    /// left as it was). The path and value move into it, uncopied.
    pub fn take_v2_request(&mut self) -> Option<V2Request> {
        let replicated = matches!(self.method, Method::POST | Method::PUT | Method::DELETE)
            || (self.method == Method::GET && self.quorum);
        if !replicated {
            return None;
        }
        let path = std::mem::take(&mut self.path);
        let value = std::mem::take(&mut self.value);
        Some(match self.method {
            Method::POST => V2Request::Create {
                path,
                value,
                dir: self.dir,
                unique: true,
                expiry: self.expiry(),
            },
            Method::PUT => match self.prev_exist {
                Some(true) if self.prev_index == 0 && self.prev_value.is_empty() => {
                    V2Request::Update {
                        path,
                        value,
                        expiry: self.expiry(),
                    }
                }
                Some(true) => V2Request::CompareAndSwap {
                    path,
                    prev_value: self.prev_value.clone(),
                    prev_index: self.prev_index,
                    value,
                    expiry: self.expiry(),
                },
                Some(false) => V2Request::Create {
                    path,
                    value,
                    dir: self.dir,
                    unique: false,
                    expiry: self.expiry(),
                },
                None if self.prev_index > 0 || !self.prev_value.is_empty() => {
                    V2Request::CompareAndSwap {
                        path,
                        prev_value: self.prev_value.clone(),
                        prev_index: self.prev_index,
                        value,
                        expiry: self.expiry(),
                    }
                }
                None => V2Request::Set {
                    path,
                    value,
                    dir: self.dir,
                    expiry: self.expiry(),
                },
            },
            Method::DELETE => {
                if self.prev_index > 0 || !self.prev_value.is_empty() {
                    V2Request::CompareAndDelete {
                        path,
                        prev_value: self.prev_value.clone(),
                        prev_index: self.prev_index,
                    }
                } else {
                    V2Request::Delete {
                        path,
                        dir: self.dir,
                        recursive: self.recursive,
                    }
                }
            }
            _ => V2Request::QuorumGet {
                path,
                recursive: self.recursive,
                sorted: self.sorted,
            },
        })
    }
}

/// Builds etcd's JSON error response (`X-Etcd-Index` = the error's index).
pub fn error_response(err: &V2Error) -> Response<RespBody> {
    let mut body = err.to_json();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(names::X_ETCD_INDEX, HeaderValue::from(err.index));
    resp
}

fn raft_headers(resp: &mut Response<RespBody>, server: &EtcdServer, etcd_index: u64) {
    let h = resp.headers_mut();
    // These four and the three CORS headers: one allocation for the map, not a regrowth.
    h.reserve(8);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(names::X_ETCD_INDEX, number_header(0, etcd_index));
    h.insert(names::X_RAFT_INDEX, number_header(1, server.commit_index()));
    h.insert(names::X_RAFT_TERM, number_header(2, server.term()));
}

/// The header value of a number. Responses repeat the same numbers (the term nearly always;
/// the indexes across a burst of reads or of watch events), so each worker thread keeps the
/// last value of each of the three headers (`slot`) and hands out clones, which share bytes.
/// New values are cut from a block of digits the thread fills (no allocation of their own:
/// under writes both indexes are new in every answer).
fn number_header(slot: usize, n: u64) -> HeaderValue {
    use std::cell::RefCell;
    /// Room for about 200 numbers; a new block when the room left cannot hold one more.
    const BLOCK: usize = 4096;
    thread_local! {
        static LAST: RefCell<[Option<(u64, HeaderValue)>; 3]> = const { RefCell::new([None, None, None]) };
        static DIGITS: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &last[slot] {
            if *cached == n {
                return value.clone();
            }
        }
        let mut digits = [0u8; 20];
        let text = oxcd_api::json::format_u64(&mut digits, n);
        let bytes = DIGITS.with(|block| {
            let mut block = block.borrow_mut();
            if block.capacity() - block.len() < text.len() {
                *block = bytes::BytesMut::with_capacity(BLOCK);
            }
            block.extend_from_slice(text);
            block.split().freeze()
        });
        let value = HeaderValue::from_maybe_shared(bytes).expect("digits are a valid header value");
        last[slot] = Some((n, value.clone()));
        value
    })
}

fn is_created(ev: &Event) -> bool {
    ev.action == Action::Create || (ev.action == Action::Set && ev.prev_node.is_none())
}

/// An event's JSON line (an answer's body, a watch event), in a buffer of its own size:
/// written in a buffer each worker thread keeps (no regrowth per answer), then copied once
/// (one allocation).
pub(crate) fn event_json_line(ev: &Event) -> Bytes {
    use std::cell::RefCell;
    /// A larger scratch buffer, left by an exceptional event, is not kept.
    const KEEP: usize = 64 << 10;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        ev.write_json(&mut buf);
        buf.push(b'\n');
        let body = Bytes::copy_from_slice(&buf);
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        body
    })
}

/// Writes an event as etcd's `writeKeyEvent` does.
pub fn event_response(
    server: &EtcdServer,
    mut ev: Event,
    no_value_on_success: bool,
) -> Response<RespBody> {
    let etcd_index = ev.etcd_index;
    let created = is_created(&ev);
    ev.trim_prefix(STORE_KEYS_PREFIX);
    if no_value_on_success
        && matches!(
            ev.action,
            Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
        )
    {
        ev.node = None;
        ev.prev_node = None;
    }
    let body = event_json_line(&ev);
    let mut resp = Response::new(RespBody::full(body));
    if created {
        *resp.status_mut() = StatusCode::CREATED;
    }
    raft_headers(&mut resp, server, etcd_index);
    resp
}

fn result_response(
    server: &EtcdServer,
    res: ApplyResult,
    no_value_on_success: bool,
) -> Response<RespBody> {
    match res {
        Ok(ev) => event_response(server, ev, no_value_on_success),
        Err(mut e) => {
            e.trim_prefix(STORE_KEYS_PREFIX);
            error_response(&e)
        }
    }
}

/// Serves one parsed keys request.
pub async fn serve_keys(server: &Arc<EtcdServer>, mut req: KeyRequest) -> Response<RespBody> {
    if req.method == Method::GET && req.quorum && req.recursive {
        // Linearizable, then read locally like any recursive GET (below).
        if let Err(e) = server.wait_readable().await {
            return error_response(&e.to_v2());
        }
        return local_read(server, &req).await;
    }
    if let Some(v2) = req.take_v2_request() {
        return match server.do_v2(v2).await {
            Ok(res) => result_response(server, res, req.no_value_on_success),
            Err(e) => error_response(&e.to_v2()),
        };
    }
    if req.wait {
        return serve_watch(server, &req);
    }
    // GET and HEAD: local read.
    local_read(server, &req).await
}

/// A listing at least this large (about 100,000 keys) was a large transient.
const LARGE_ANSWER: usize = 8 << 20;

/// Reads the store locally and builds the answer. A recursive read copies and encodes a
/// whole subtree — seconds for a large one — so it runs on the blocking pool: the
/// runtime's workers keep carrying the peer traffic (the leader's heartbeats and their
/// answers) and the other clients meanwhile, as Go's scheduler keeps etcd's goroutines going.
async fn local_read(server: &Arc<EtcdServer>, req: &KeyRequest) -> Response<RespBody> {
    let (recursive, sorted) = (req.recursive, req.sorted);
    let no_value_on_success = req.no_value_on_success;
    if !recursive {
        return read_answer(server, &req.path, false, sorted, no_value_on_success);
    }
    let path = req.path.clone();
    let server = Arc::clone(server);
    let read = tokio::task::spawn_blocking(move || {
        read_answer(&server, &path, true, sorted, no_value_on_success)
    });
    match read.await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => error_response(&crate::server::ServerError::Stopped.to_v2()),
    }
}

/// A GET's answer from the store.
fn read_answer(
    server: &EtcdServer,
    path: &str,
    recursive: bool,
    sorted: bool,
    no_value_on_success: bool,
) -> Response<RespBody> {
    let res = server.get(path, recursive, sorted);
    let resp = result_response(server, res, no_value_on_success);
    // The copy of the listed nodes is freed by now, and the answer soon: a large one
    // leaves its pages with the allocator unless they are handed back.
    if matches!(resp.body(), RespBody::Full(Some(b)) if b.len() >= LARGE_ANSWER) {
        crate::memory::release_soon();
    }
    resp
}

fn serve_watch(server: &Arc<EtcdServer>, req: &KeyRequest) -> Response<RespBody> {
    let (sink, rx): (Box<dyn oxcd_v2store::WatchSink>, _) = if req.stream {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        (Box::new(ChannelSink(tx)), EventRx::Stream(rx))
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Box::new(OnceSink(std::sync::Mutex::new(Some(tx)))),
            EventRx::Once(rx),
        )
    };
    let outcome = {
        let mut store = server
            .shared
            .store
            .write()
            .unwrap_or_else(|e| e.into_inner());
        store.watch(&req.path, req.recursive, req.stream, req.since, sink)
    };
    let (body, start_index) = match outcome {
        Err(mut e) => {
            e.trim_prefix(STORE_KEYS_PREFIX);
            return error_response(&e);
        }
        Ok(oxcd_v2store::WatchOutcome::Ready(ev)) => {
            let idx = ev.etcd_index;
            (
                WatchBody {
                    first: Some(ev),
                    rx: None,
                    stream: req.stream,
                    watcher: None,
                    done: false,
                },
                idx,
            )
        }
        Ok(oxcd_v2store::WatchOutcome::Registered { id, start_index }) => (
            WatchBody {
                first: None,
                rx: Some(rx),
                stream: req.stream,
                watcher: Some((Arc::clone(&server.shared), id)),
                done: false,
            },
            start_index,
        ),
    };
    let mut resp = Response::new(RespBody::Watch(Box::new(body)));
    raft_headers(&mut resp, server, start_index);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::form::parse_query;

    fn parse(method: Method, path: &str, query: &str) -> Result<KeyRequest, V2Error> {
        let (form, err) = parse_query(query.as_bytes());
        parse_key_request(&method, path, form, err.as_deref(), SystemTime::now())
    }

    #[test]
    fn number_headers_are_decimal_and_cached_per_slot() {
        for n in [0, 7, 10, 42, 1_000_000, u64::MAX] {
            assert_eq!(number_header(0, n).to_str().unwrap(), n.to_string());
            assert_eq!(number_header(0, n).to_str().unwrap(), n.to_string());
            assert_eq!(number_header(2, n).to_str().unwrap(), n.to_string());
        }
        // Slots do not leak into each other.
        assert_eq!(number_header(1, 5).to_str().unwrap(), "5");
        assert_eq!(number_header(2, 9).to_str().unwrap(), "9");
        assert_eq!(number_header(1, 5).to_str().unwrap(), "5");
        // Values cut from the per-thread block stay intact while later ones fill it and the
        // next blocks (a thousand 20-digit numbers span several).
        let kept: Vec<(u64, HeaderValue)> = (0..1000u64)
            .map(|i| u64::MAX - i * 7919)
            .map(|n| (n, number_header((n % 3) as usize, n)))
            .collect();
        for (n, value) in kept {
            assert_eq!(value.to_str().unwrap(), n.to_string());
        }
    }

    /// An answer's bytes are its own: the per-thread scratch buffer they were written in
    /// is reused by the next answer, including after an event too large for it to keep.
    #[test]
    fn encoded_events_do_not_share_the_scratch_buffer() {
        let event = |key: &str, value: String| {
            let mut node = oxcd_api::v2::NodeExtern::default();
            node.key = key.to_string();
            node.value = Some(value.into());
            (node.modified_index, node.created_index) = (7, 7);
            Event {
                action: Action::Set,
                node: Some(node),
                prev_node: None,
                etcd_index: 7,
            }
        };
        let small = event_json_line(&event("/a", "1".into()));
        let large = event_json_line(&event("/b", "x".repeat(200_000)));
        let after = event_json_line(&event("/c", "2".into()));
        let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(
            text(&small),
            "{\"action\":\"set\",\"node\":{\"key\":\"/a\",\"value\":\"1\",\"modifiedIndex\":7,\"createdIndex\":7}}\n"
        );
        assert!(text(&large).contains(&"x".repeat(200_000)));
        assert_eq!(
            text(&after),
            text(&small).replace("/a", "/c").replace("\"1\"", "\"2\"")
        );
    }

    #[test]
    fn parse_errors_match_etcd_codes() {
        let cases: &[(&str, ErrorCode)] = &[
            ("prevIndex=abc", ErrorCode::IndexNaN),
            ("waitIndex=-1", ErrorCode::IndexNaN),
            ("recursive=maybe", ErrorCode::InvalidField),
            ("ttl=abc", ErrorCode::TTLNaN),
            ("ttl=-5", ErrorCode::TTLNaN),
            ("prevValue=", ErrorCode::PrevValueRequired),
            ("prevExist=yes", ErrorCode::InvalidField),
            ("refresh=true&value=x&ttl=5", ErrorCode::RefreshValue),
            ("refresh=true", ErrorCode::RefreshTTLRequired),
            ("a=%zz", ErrorCode::InvalidForm),
        ];
        for (q, code) in cases {
            let err = parse(Method::PUT, "/v2/keys/foo", q).unwrap_err();
            assert_eq!(err.code, *code, "query {q}");
        }
        let err = parse(Method::PUT, "/v2/keys/foo", "wait=true").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidField);
    }

    #[test]
    fn put_dispatch_follows_etcd() {
        let r = parse(Method::PUT, "/v2/keys/a", "value=1&prevExist=true").unwrap();
        assert!(matches!(r.to_v2_request(), Some(V2Request::Update { .. })));
        let r = parse(
            Method::PUT,
            "/v2/keys/a",
            "value=1&prevExist=true&prevIndex=3",
        )
        .unwrap();
        assert!(matches!(
            r.to_v2_request(),
            Some(V2Request::CompareAndSwap { .. })
        ));
        let r = parse(
            Method::PUT,
            "/v2/keys/a",
            "value=1&prevExist=false&prevValue=x",
        )
        .unwrap();
        assert!(matches!(
            r.to_v2_request(),
            Some(V2Request::Create { unique: false, .. })
        ));
        let r = parse(Method::PUT, "/v2/keys/a", "value=1&prevValue=x").unwrap();
        assert!(matches!(
            r.to_v2_request(),
            Some(V2Request::CompareAndSwap { .. })
        ));
        let r = parse(Method::DELETE, "/v2/keys/a", "prevIndex=2").unwrap();
        assert!(matches!(
            r.to_v2_request(),
            Some(V2Request::CompareAndDelete { .. })
        ));
        let r = parse(Method::GET, "/v2/keys/a", "quorum=true").unwrap();
        assert!(matches!(
            r.to_v2_request(),
            Some(V2Request::QuorumGet { .. })
        ));
        let r = parse(Method::GET, "/v2/keys/a", "").unwrap();
        assert!(r.to_v2_request().is_none());
        assert_eq!(r.path, "/1/a");
    }

    #[test]
    fn ttl_becomes_absolute_expiry() {
        let now = SystemTime::now();
        let (form, _) = parse_query(b"ttl=5");
        let r = parse_key_request(&Method::PUT, "/v2/keys/a", form.clone(), None, now).unwrap();
        assert_eq!(
            r.expiration,
            Some(time_to_unix_nanos(now + Duration::from_secs(5)))
        );
        let (form, _) = parse_query(b"ttl=");
        let r = parse_key_request(&Method::PUT, "/v2/keys/a", form.clone(), None, now).unwrap();
        assert_eq!(r.expiration, None);
    }
}
