//! Bootstrap through etcd's discovery service (`--discovery`, etcd's `v2discovery`).
//!
//! A discovery URL names a directory on any etcd-compatible cluster (the "token"), whose
//! `_config/size` key holds the expected cluster size. A new member with no WAL:
//! 1. checks the token (size and registered members) and fails fast when the cluster is
//!    already full;
//! 2. registers itself, create-only, as `<token>/<member id>` with its
//!    `name=peerURL[,name=peerURL]` (its member ID derived with the discovery URL as the
//!    cluster token, as etcd derives it);
//! 3. reads the registrations again and watches the token until `size` members registered;
//!    the first `size` by creation index are the initial cluster.
//!
//! The result is an `--initial-cluster` value; the member then bootstraps exactly as a
//! statically configured one, with the discovery URL as `--initial-cluster-token`, so the
//! member and cluster IDs are etcd's. Network failures and 5xx answers (etcd's client
//! `ClusterError`) are retried with etcd's backoff (2 s doubling up to 256 s, for as many
//! tries as etcd: practically without end, each one logged); every other failure ends the
//! start with etcd's message.
//!
//! HTTP goes straight to the discovery URL's host, or through `--discovery-proxy` as a
//! plain HTTP forward proxy (absolute-URI requests, as Go's `http.ProxyURL`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// etcd's `discovery` errors, with etcd's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The registered values are not `name=URL` lists.
    #[error("discovery: invalid URL")]
    InvalidUrl,
    /// `_config/size` is not a non-negative integer.
    #[error("discovery: size key is bad")]
    BadSizeKey,
    /// This member's ID is registered already (a second bootstrap with a lost data dir).
    #[error("discovery: found duplicate id")]
    DuplicateId,
    /// Two of the first `size` registrations carry the same name.
    #[error("discovery: found duplicate name")]
    DuplicateName,
    /// `size` other members registered before this one.
    #[error("discovery: cluster is full")]
    FullCluster,
    /// The retries ran out (after `u32::MAX` of them, as etcd).
    #[error("discovery: too many retries")]
    TooManyRetries,
    /// The discovery URL answered something that is not etcd's JSON.
    #[error("discovery: bad discovery endpoint")]
    BadEndpoint,
    /// An etcd API error, printed as etcd's v2 client prints one (`code: message (cause)
    /// [index]`). A token without `_config/size` ends here, as in etcd 3.4, whose check
    /// for "size key not found" never matches the client's error type.
    #[error("{code}: {message} ({cause}) [{index}]")]
    Api {
        code: u64,
        message: String,
        cause: String,
        index: u64,
    },
    /// Anything else (bad discovery URL, a timeout, an unreachable service while
    /// registering).
    #[error("{0}")]
    Other(String),
}

/// The discovery settings of a member (`--discovery`, `--discovery-proxy`,
/// `--discovery-fallback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--discovery`: the full URL of the token directory.
    pub url: String,
    /// `--discovery-proxy`, empty for none.
    pub proxy: String,
    /// `--discovery-fallback proxy` (etcd's default): a member that finds the cluster full
    /// becomes a proxy instead of exiting.
    pub fallback_proxy: bool,
}

/// As etcd's `nRetries` (math.MaxUint32).
const MAX_RETRIES: u64 = u32::MAX as u64;
/// As etcd's `maxExpoentialRetries`: the backoff stops doubling at 2^8 s.
const MAX_EXPONENTIAL_RETRIES: u64 = 8;
/// etcd's v2 client `DefaultRequestTimeout`, for every request but watches.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The dial timeout of etcd's discovery transport.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait before retry number `retries` (1-based): 2^retries seconds, at most 256 s.
pub fn backoff(retries: u64) -> Duration {
    Duration::from_secs(1u64 << retries.min(MAX_EXPONENTIAL_RETRIES))
}

/// One registration (or any node of the token directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Node {
    /// The node's key (`/discovery/<token>/<member id>`).
    pub key: String,
    /// `name=peerURL[,name=peerURL]`.
    #[serde(default)]
    pub value: String,
    /// Creation index: registrations are ordered by it.
    #[serde(rename = "createdIndex", default)]
    pub created_index: u64,
}

#[derive(Deserialize)]
struct NodeWithChildren {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(rename = "createdIndex", default)]
    created_index: u64,
    #[serde(rename = "modifiedIndex", default)]
    modified_index: u64,
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct KeysResponse {
    node: NodeWithChildren,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "errorCode")]
    code: u64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: String,
    #[serde(default)]
    index: u64,
}

/// The last element of a key (Go's `path.Base`).
fn base(key: &str) -> &str {
    let k = key.trim_end_matches('/');
    k.rsplit('/').next().unwrap_or(k)
}

/// Go's `path.Join("/", parts...)` for the simple paths used here: one leading slash, no
/// empty elements, no trailing slash.
fn join(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        for el in part.split('/').filter(|e| !e.is_empty() && *e != ".") {
            out.push('/');
            out.push_str(el);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The value a member registers: `name=url` for each of its peer URLs, sorted (etcd's
/// `URLsMap.String`).
pub fn registration(name: &str, peer_urls: &[String]) -> String {
    let mut pairs: Vec<String> = peer_urls.iter().map(|u| format!("{name}={u}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Orders registrations by creation index (`sortableNodes`) and leaves out `_config`.
pub fn registrations(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.retain(|n| base(&n.key) != "_config");
    nodes.sort_by_key(|n| n.created_index);
    nodes
}

/// etcd's `checkCluster` decision once the size and the ordered registrations are known:
/// full when `size` others registered before `self_id` (or `self_id` is absent and `size`
/// registered at all); then the first `size` are returned with the error.
pub fn full_check(nodes: &[Node], size: u64, self_id: &str) -> Result<(), Vec<Node>> {
    for (i, n) in nodes.iter().enumerate() {
        if base(&n.key) == self_id {
            break;
        }
        // Go's uint64 arithmetic: size 0 wraps, so it is never full.
        if i as u64 >= size.wrapping_sub(1) {
            return Err(nodes[..size as usize].to_vec());
        }
    }
    Ok(())
}

/// Parses `_config/size` as etcd (`strconv.ParseUint`).
pub fn parse_size(value: &str) -> Result<u64, DiscoveryError> {
    value.parse::<u64>().map_err(|_| DiscoveryError::BadSizeKey)
}

/// The `--initial-cluster` string of the first `size` registrations (etcd's
/// `nodesToCluster`): their values joined by `,`; `InvalidUrl` when one is not a
/// `name=URL` list, `DuplicateName` when fewer than `size` names result.
pub fn nodes_to_cluster(nodes: &[Node], size: u64) -> Result<String, DiscoveryError> {
    let joined = nodes
        .iter()
        .map(|n| n.value.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let entries = parse_cluster(&joined).map_err(|_| DiscoveryError::InvalidUrl)?;
    let mut names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() as u64 != size {
        return Err(DiscoveryError::DuplicateName);
    }
    Ok(joined)
}

/// Parses an initial-cluster string (`name=url,...`) as etcd's `types.NewURLsMap`: each URL
/// must be http/https/unix/unixs with `host:port` and no path.
pub fn parse_cluster(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in s.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        let url = url.trim();
        crate::config::Url::parse(url)?;
        out.push((name.to_string(), url.to_string()));
    }
    Ok(out)
}

/// A URL the discovery client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    /// `host:port`, for dialing.
    addr: String,
    /// As written in the URL, for `Host` and absolute URIs.
    authority: String,
    host: String,
}

impl Endpoint {
    fn parse(scheme: &str, authority: &str) -> Result<Endpoint, String> {
        let https = match scheme {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported protocol scheme {other:?}")),
        };
        if authority.is_empty() {
            return Err("no Host in request URL".into());
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let addr = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let host = match authority.rfind(':').filter(|_| has_port) {
            Some(i) => &authority[..i],
            None => authority,
        };
        Ok(Endpoint {
            https,
            addr,
            authority: authority.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        })
    }

    fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

/// Splits a discovery URL into the service's endpoint and the token path (Go's `url.Parse`,
/// then `token := u.Path; u.Path = ""`).
fn split_url(durl: &str) -> Result<(Endpoint, String), String> {
    let (scheme, rest) = durl
        .split_once("://")
        .ok_or_else(|| format!("parse {durl:?}: missing protocol scheme"))?;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    Ok((Endpoint::parse(scheme, authority)?, path.to_string()))
}

/// The proxy's endpoint, sanitised as etcd's `newProxyFunc` (a bare `host:port` gets
/// `http://`).
fn proxy_endpoint(proxy: &str) -> Result<Option<Endpoint>, String> {
    if proxy.is_empty() {
        return Ok(None);
    }
    let with_scheme = if proxy.starts_with("http://") || proxy.starts_with("https://") {
        proxy.to_string()
    } else {
        format!("http://{proxy}")
    };
    let (ep, _) =
        split_url(&with_scheme).map_err(|e| format!("invalid proxy address {proxy:?}: {e}"))?;
    if ep.https {
        return Err(format!(
            "invalid proxy address {proxy:?}: only http:// proxies are supported by oxcd"
        ));
    }
    Ok(Some(ep))
}

/// Why a request got no etcd answer.
#[derive(Debug)]
enum Failure {
    /// etcd's `ClusterError`: the service is unreachable or answered 5xx (retried). The
    /// text is the error's detail.
    Cluster(String),
    /// A timeout or another failure that is not retried.
    Fatal(String),
}

impl Failure {
    fn into_error(self) -> DiscoveryError {
        match self {
            Failure::Cluster(detail) => DiscoveryError::Other(format!(
                "client: etcd cluster is unavailable or misconfigured; {}",
                detail.trim_end()
            )),
            Failure::Fatal(e) => DiscoveryError::Other(e),
        }
    }
}

/// An answer of the discovery service: status, `X-Etcd-Index`, body.
struct Answer {
    status: u16,
    index: u64,
    body: Bytes,
}

/// The v2 keys client of the discovery service.
struct Client {
    endpoint: Endpoint,
    proxy: Option<Endpoint>,
    tls: Option<tokio_rustls::TlsConnector>,
}

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    async fn dial(&self, to: &Endpoint) -> Result<Conn, Failure> {
        let dial_err =
            |e: String| Failure::Cluster(format!("error #0: dial tcp {}: {e}\n", to.addr));
        let stream = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(&to.addr))
            .await
            .map_err(|_| dial_err("i/o timeout".into()))?
            .map_err(|e| dial_err(go_io_error(&e)))?;
        let _ = stream.set_nodelay(true);
        if to.https {
            let connector = self
                .tls
                .as_ref()
                .ok_or_else(|| Failure::Fatal("no TLS configuration".into()))?;
            let name = crate::tls::server_name(&to.host).map_err(dial_err)?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| dial_err(e.to_string()))?;
            return handshake(TokioIo::new(stream)).await;
        }
        handshake(TokioIo::new(stream)).await
    }

    /// One request; `timeout` bounds the whole exchange (none for watches).
    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        form: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Failure> {
        let exchange = async {
            let (mut conn, uri) = match &self.proxy {
                Some(p) => (
                    self.dial(p).await?,
                    format!("{}{path_and_query}", self.endpoint.origin()),
                ),
                None => (self.dial(&self.endpoint).await?, path_and_query.to_string()),
            };
            let mut req = http::Request::builder()
                .method(method)
                .uri(&uri)
                .header(http::header::HOST, &self.endpoint.authority)
                .header(http::header::USER_AGENT, "oxcd-discovery");
            if form.is_some() {
                req = req.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
            }
            let req = req
                .body(Full::new(Bytes::from(form.unwrap_or_default())))
                .map_err(|e| Failure::Fatal(e.to_string()))?;
            let url = format!("{}{path_and_query}", self.endpoint.origin());
            let broken = |e: String| Failure::Cluster(format!("error #0: {method} {url}: {e}\n"));
            conn.ready().await.map_err(|e| broken(e.to_string()))?;
            let resp = conn
                .send_request(req)
                .await
                .map_err(|e| broken(e.to_string()))?;
            let status = resp.status().as_u16();
            let index = resp
                .headers()
                .get("X-Etcd-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| broken(e.to_string()))?
                .to_bytes();
            if status / 100 == 5 {
                let what = if status == 500 || status == 503 {
                    format!(
                        "client: etcd member {} has no leader",
                        self.endpoint.origin()
                    )
                } else {
                    format!(
                        "client: etcd member {} returns server error [{}]",
                        self.endpoint.origin(),
                        http::StatusCode::from_u16(status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("")
                    )
                };
                return Err(Failure::Cluster(format!("error #0: {what}\n")));
            }
            Ok(Answer {
                status,
                index,
                body,
            })
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| Failure::Fatal("context deadline exceeded".into()))?,
            None => exchange.await,
        }
    }
}

async fn handshake<I>(io: I) -> Result<Conn, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (conn, driver) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Cluster(format!("error #0: {e}\n")))?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(conn)
}

/// An I/O error as Go prints a failed dial (`connect: connection refused`).
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {e}"),
    }
}

/// Percent-encodes a form value.
fn form_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The parsed answer to a keys request: the node, or etcd's error.
enum Keys {
    Node(NodeWithChildren, u64),
    Error(DiscoveryError),
}

/// etcd's v2 client decoding (`unmarshalHTTPResponse`): 200/201 must be a keys response,
/// anything else etcd's error JSON. `Err(true)`: an empty 200/201 body (`ErrEmptyBody`);
/// `Err(false)`: a body that is neither (`ErrInvalidJSON`).
fn decode(answer: &Answer) -> Result<Keys, bool> {
    match answer.status {
        200 | 201 => {
            if answer.body.is_empty() {
                return Err(true);
            }
            serde_json::from_slice::<KeysResponse>(&answer.body)
                .map(|r| Keys::Node(r.node, answer.index))
                .map_err(|_| false)
        }
        _ => serde_json::from_slice::<ApiError>(&answer.body)
            .map(|e| {
                Keys::Error(DiscoveryError::Api {
                    code: e.code,
                    message: e.message,
                    cause: e.cause,
                    index: e.index,
                })
            })
            .map_err(|_| false),
    }
}

const INVALID_JSON: &str =
    "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint";

/// One bootstrap through the discovery service (etcd's `discovery` struct).
struct Discovery {
    client: Client,
    /// The token path (`/v2/keys/discovery/<token>`).
    cluster: String,
    /// This member's ID, as etcd prints it.
    id: String,
    /// The service's URL without the path, as etcd logs it.
    url: String,
    retries: u64,
}

/// What `check_cluster` found: the ordered registrations, the size, the index to watch
/// after.
type Checked = (Vec<Node>, u64, u64);

impl Discovery {
    fn new(settings: &Settings, id: u64) -> Result<Discovery, DiscoveryError> {
        let (endpoint, token) = split_url(&settings.url).map_err(DiscoveryError::Other)?;
        let proxy = proxy_endpoint(&settings.proxy).map_err(DiscoveryError::Other)?;
        if let Some(p) = &proxy {
            tracing::info!(proxy_url = %p.origin(), "using proxy {:?}", p.origin());
        }
        let tls = if endpoint.https {
            let cfg = crate::tls::client_config(&crate::config::TlsInfo::default(), &[])
                .map_err(DiscoveryError::Other)?;
            Some(tokio_rustls::TlsConnector::from(cfg))
        } else {
            None
        };
        Ok(Discovery {
            url: endpoint.origin(),
            client: Client {
                endpoint,
                proxy,
                tls,
            },
            cluster: token,
            id: crate::membership::id_to_string(id),
            retries: 0,
        })
    }

    fn self_key(&self) -> String {
        join(&[&self.cluster, &self.id])
    }

    async fn get(&self, key: &str) -> Result<Keys, Failure> {
        let answer = self
            .client
            .call(
                "GET",
                &format!("{key}?quorum=false&recursive=false&sorted=false"),
                None,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        decode(&answer).map_err(|empty| {
            Failure::Fatal(if empty {
                "client: response body is empty".into()
            } else {
                INVALID_JSON.into()
            })
        })
    }

    /// Waits for the next change at or after `wait_index` (etcd's watcher `Next`; an empty
    /// answer is asked again).
    async fn watch(&self, key: &str, wait_index: u64, recursive: bool) -> Result<Keys, Failure> {
        loop {
            let answer = self
                .client
                .call(
                    "GET",
                    &format!("{key}?recursive={recursive}&wait=true&waitIndex={wait_index}"),
                    None,
                    None,
                )
                .await?;
            match decode(&answer) {
                Ok(k) => return Ok(k),
                Err(true) => continue,
                Err(false) => return Err(Failure::Fatal(INVALID_JSON.into())),
            }
        }
    }

    /// Logs a service failure and waits (etcd's `logAndBackoffForRetry`).
    async fn backoff_for_retry(&mut self, step: &str) {
        self.retries += 1;
        let wait = backoff(self.retries);
        tracing::info!(
            url = %self.url,
            reason = step,
            backoff = ?wait,
            "{step}: error connecting to {}, retrying in {}s",
            self.url,
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
    }

    /// etcd's `checkCluster`, with its retries.
    async fn check_cluster(&mut self) -> Result<Checked, (DiscoveryError, Vec<Node>, u64)> {
        loop {
            match self.check_cluster_once().await {
                Err(CheckFailure::Unreachable(detail)) => {
                    tracing::error!("{}", detail.trim_end());
                    if self.retries >= MAX_RETRIES {
                        return Err((DiscoveryError::TooManyRetries, Vec::new(), 0));
                    }
                    self.backoff_for_retry("cluster status check").await;
                }
                Err(CheckFailure::Failed(e, nodes, size)) => return Err((e, nodes, size)),
                Ok(x) => return Ok(x),
            }
        }
    }

    async fn check_cluster_once(&mut self) -> Result<Checked, CheckFailure> {
        let config_key = join(&[&self.cluster, "_config"]);
        let size_key = join(&[&config_key, "size"]);
        let size = match self.get(&size_key).await {
            Err(Failure::Cluster(detail)) => return Err(CheckFailure::Unreachable(detail)),
            Err(Failure::Fatal(e)) if e == INVALID_JSON => {
                return Err(CheckFailure::Failed(DiscoveryError::BadEndpoint, vec![], 0))
            }
            Err(f) => return Err(CheckFailure::Failed(f.into_error(), vec![], 0)),
            Ok(Keys::Error(e)) => return Err(CheckFailure::Failed(e, vec![], 0)),
            Ok(Keys::Node(node, _)) => {
                parse_size(&node.value).map_err(|e| CheckFailure::Failed(e, vec![], 0))?
            }
        };
        let (nodes, index) = match self.get(&self.cluster.clone()).await {
            Err(Failure::Cluster(detail)) => return Err(CheckFailure::Unreachable(detail)),
            Err(f) => return Err(CheckFailure::Failed(f.into_error(), vec![], 0)),
            Ok(Keys::Error(e)) => return Err(CheckFailure::Failed(e, vec![], 0)),
            Ok(Keys::Node(node, index)) => (registrations(node.nodes), index),
        };
        if let Err(first) = full_check(&nodes, size, &self.id) {
            return Err(CheckFailure::Failed(
                DiscoveryError::FullCluster,
                first,
                size,
            ));
        }
        Ok((nodes, size, index))
    }

    /// etcd's `createSelf`: registers create-only, then waits until the registration is
    /// visible on the service.
    async fn create_self(&self, contents: &str) -> Result<(), DiscoveryError> {
        let key = self.self_key();
        let answer = self
            .client
            .call(
                "PUT",
                &format!("{key}?prevExist=false"),
                Some(format!("value={}", form_value(contents))),
                Some(REQUEST_TIMEOUT),
            )
            .await
            .map_err(Failure::into_error)?;
        let created = match decode(&answer) {
            Ok(Keys::Node(node, _)) => node.created_index,
            Ok(Keys::Error(DiscoveryError::Api { code: 105, .. })) => {
                return Err(DiscoveryError::DuplicateId)
            }
            Ok(Keys::Error(e)) => return Err(e),
            Err(true) => {
                return Err(DiscoveryError::Other(
                    "client: response body is empty".into(),
                ))
            }
            Err(false) => return Err(DiscoveryError::Other(INVALID_JSON.into())),
        };
        match self.watch(&key, created, false).await {
            Ok(Keys::Node(..)) => Ok(()),
            Ok(Keys::Error(e)) => Err(e),
            Err(f) => Err(f.into_error()),
        }
    }

    /// etcd's `waitNodes`: watches the token until `size` registrations are known (a
    /// failed watch checks the cluster again, with a backoff).
    async fn wait_nodes(
        &mut self,
        mut nodes: Vec<Node>,
        mut size: u64,
        mut index: u64,
    ) -> Result<Vec<Node>, DiscoveryError> {
        'again: loop {
            nodes.truncate(size as usize);
            let mut all = nodes.clone();
            for n in &all {
                if base(&n.key) == self.id {
                    tracing::info!("found self {} in the cluster", base(&n.key));
                } else {
                    tracing::info!("found peer {} in the cluster", base(&n.key));
                }
            }
            let mut next = index + 1;
            while (all.len() as u64) < size {
                tracing::info!(
                    "found {} peer(s), waiting for {} more",
                    all.len(),
                    size - all.len() as u64
                );
                let cluster = self.cluster.clone();
                match self.watch(&cluster, next, true).await {
                    Ok(Keys::Node(node, _)) => {
                        tracing::info!("found peer {} in the cluster", base(&node.key));
                        next = node.modified_index + 1;
                        all.push(Node {
                            key: node.key,
                            value: node.value,
                            created_index: node.created_index,
                        });
                    }
                    Ok(Keys::Error(e)) => return Err(e),
                    Err(Failure::Cluster(detail)) => {
                        tracing::error!("{}", detail.trim_end());
                        if self.retries >= MAX_RETRIES {
                            return Err(DiscoveryError::TooManyRetries);
                        }
                        self.backoff_for_retry("waiting for other nodes").await;
                        let (n, s, i) = self.check_cluster().await.map_err(|(e, _, _)| e)?;
                        (nodes, size, index) = (n, s, i);
                        continue 'again;
                    }
                    Err(f) => return Err(f.into_error()),
                }
            }
            tracing::info!("found {} needed peer(s)", all.len());
            return Ok(all);
        }
    }
}

enum CheckFailure {
    Unreachable(String),
    Failed(DiscoveryError, Vec<Node>, u64),
}

/// Registers this member (`id`, registering `config`) with the discovery service and waits
/// for the whole initial cluster: its `--initial-cluster` value (etcd's `JoinCluster`).
pub async fn join_cluster(
    settings: &Settings,
    id: u64,
    config: &str,
) -> Result<String, DiscoveryError> {
    let mut d = Discovery::new(settings, id)?;
    // Fast path: a full cluster fails before registering.
    d.check_cluster().await.map_err(|(e, _, _)| e)?;
    d.create_self(config).await?;
    let (nodes, size, index) = d.check_cluster().await.map_err(|(e, _, _)| e)?;
    let all = d.wait_nodes(nodes, size, index).await?;
    nodes_to_cluster(&all, size)
}

/// The initial cluster registered under a token, without registering (etcd's
/// `GetCluster`, what a proxy started by discovery reads): the first `size` registrations,
/// waiting until there are `size`.
pub async fn get_cluster(settings: &Settings) -> Result<String, DiscoveryError> {
    let mut d = Discovery::new(settings, 0)?;
    let (nodes, size, index) = match d.check_cluster().await {
        Ok(x) => x,
        Err((DiscoveryError::FullCluster, nodes, size)) => return nodes_to_cluster(&nodes, size),
        Err((e, _, _)) => return Err(e),
    };
    let all = d.wait_nodes(nodes, size, index).await?;
    nodes_to_cluster(&all, size)
}

/// The error etcd ends a failed discovery with (`DiscoveryError{Op: "join"}`).
pub fn join_failed(e: &DiscoveryError) -> String {
    format!("failed to join discovery cluster ({e})")
}

/// Logs what etcd logs when a discovery bootstrap fails (`etcdmain.startEtcdOrProxyV2`),
/// before it exits 1. `name` and `data_dir` are the member's.
pub fn log_failure(e: &DiscoveryError, settings: &Settings, name: &str, data_dir: &str) {
    let durl = &settings.url;
    match e {
        DiscoveryError::DuplicateId => {
            tracing::error!(
                "member {name:?} has previously registered with discovery service token ({durl})."
            );
            tracing::error!(
                "But etcd could not find valid cluster configuration in the given data dir ({data_dir})."
            );
            tracing::info!(
                "Please check the given data dir path if the previous bootstrap succeeded"
            );
            tracing::info!("or use a new discovery token if the previous bootstrap failed.");
        }
        DiscoveryError::DuplicateName => {
            tracing::error!(
                "member with duplicated name has registered with discovery service token({durl})."
            );
            tracing::error!("please check (cURL) the discovery token for more information.");
            tracing::error!(
                "please do not reuse the discovery token and generate a new one to bootstrap the cluster."
            );
        }
        _ => {
            tracing::error!("{}", join_failed(e));
            tracing::info!("discovery token {durl} was used, but failed to bootstrap the cluster.");
            tracing::info!("please generate a new discovery token and try to bootstrap again.");
        }
    }
}

/// A member that found the discovery cluster full with `--discovery-fallback proxy` becomes
/// a v2 proxy of the discovered cluster instead (etcd's `startProxy` after
/// `ErrFullCluster`): the error `startup::run` ends with, carrying the peer URLs the proxy
/// starts from (`main` catches it and runs the proxy on the same client URLs).
#[derive(Debug)]
pub struct FallbackToProxy {
    /// The discovered cluster's peer URLs.
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for FallbackToProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "discovery cluster full, falling back to proxy")
    }
}

impl std::error::Error for FallbackToProxy {}

/// etcd's fallback when the discovery cluster is full: logs its line and reads the
/// discovered cluster (without registering) for the proxy to start from.
pub async fn fallback_to_proxy(settings: &Settings) -> anyhow::Error {
    tracing::info!(
        fallback_proxy = "proxy",
        "discovery cluster full, falling back to proxy"
    );
    match get_cluster(settings).await {
        Ok(cluster) => match parse_cluster(&cluster) {
            Ok(entries) => anyhow::Error::new(FallbackToProxy {
                peer_urls: entries.into_iter().map(|(_, url)| url).collect(),
            }),
            Err(e) => anyhow::anyhow!("{e}"),
        },
        Err(e) => anyhow::anyhow!("{}", join_failed(&e)),
    }
}

/// The peer URLs of an initial-cluster string that occur twice (etcd refuses such a
/// discovered cluster: "discovery cluster ... has duplicate url").
pub fn duplicate_url(entries: &[(String, String)]) -> bool {
    let mut urls: Vec<&str> = entries.iter().map(|(_, u)| u.as_str()).collect();
    urls.sort_unstable();
    let n = urls.len();
    urls.dedup();
    urls.len() != n
}

/// etcd's `URLsMap.String()` of an initial cluster: `name=url` pairs, sorted.
pub fn urls_map_string(entries: &[(String, String)]) -> String {
    let mut pairs: Vec<String> = entries.iter().map(|(n, u)| format!("{n}={u}")).collect();
    pairs.sort();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, value: &str, created: u64) -> Node {
        Node {
            key: key.into(),
            value: value.into(),
            created_index: created,
        }
    }

    #[test]
    fn registrations_are_ordered_by_created_index_without_config() {
        let nodes = vec![
            node("/d/t/c", "c=http://127.0.0.1:3", 9),
            node("/d/t/_config", "", 4),
            node("/d/t/a", "a=http://127.0.0.1:1", 7),
            node("/d/t/b", "b=http://127.0.0.1:2", 5),
        ];
        let keys: Vec<String> = registrations(nodes).into_iter().map(|n| n.key).collect();
        assert_eq!(keys, ["/d/t/b", "/d/t/a", "/d/t/c"]);
    }

    #[test]
    fn full_check_as_etcd() {
        let nodes = registrations(vec![
            node("/d/t/1", "a=http://h:1", 5),
            node("/d/t/2", "b=http://h:2", 6),
            node("/d/t/3", "c=http://h:3", 7),
            node("/d/t/4", "d=http://h:4", 8),
        ]);
        // Among the first three: not full, whatever comes after.
        assert!(full_check(&nodes, 3, "3").is_ok());
        assert!(full_check(&nodes, 3, "1").is_ok());
        // Fourth, or not registered at all: full, with the first three.
        let first = full_check(&nodes, 3, "4").unwrap_err();
        assert_eq!(first.len(), 3);
        assert_eq!(first[2].key, "/d/t/3");
        assert!(full_check(&nodes, 3, "99").is_err());
        assert!(full_check(&nodes[..2], 3, "99").is_ok());
        // Size 0 never reports full (Go's unsigned wrap-around).
        assert!(full_check(&nodes, 0, "99").is_ok());
    }

    #[test]
    fn size_parsing() {
        assert_eq!(parse_size("3"), Ok(3));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "abc", "-1", " 3", "3.0", "0x3"] {
            assert_eq!(parse_size(bad), Err(DiscoveryError::BadSizeKey), "{bad:?}");
        }
    }

    #[test]
    fn nodes_to_cluster_joins_values_and_checks_names() {
        let nodes = vec![
            node("/d/t/1", "m2=http://127.0.0.1:2", 5),
            node("/d/t/2", "m1=http://127.0.0.1:1,m1=http://127.0.0.1:11", 6),
        ];
        assert_eq!(
            nodes_to_cluster(&nodes, 2).unwrap(),
            "m2=http://127.0.0.1:2,m1=http://127.0.0.1:1,m1=http://127.0.0.1:11"
        );
        let dup = vec![
            node("/d/t/1", "m1=http://127.0.0.1:2", 5),
            node("/d/t/2", "m1=http://127.0.0.1:1", 6),
        ];
        assert_eq!(
            nodes_to_cluster(&dup, 2),
            Err(DiscoveryError::DuplicateName)
        );
        let bad = vec![node("/d/t/1", "m1=ftp://127.0.0.1:2", 5)];
        assert_eq!(nodes_to_cluster(&bad, 1), Err(DiscoveryError::InvalidUrl));
        let no_port = vec![node("/d/t/1", "m1=http://127.0.0.1", 5)];
        assert_eq!(
            nodes_to_cluster(&no_port, 1),
            Err(DiscoveryError::InvalidUrl)
        );
    }

    #[test]
    fn registration_value_is_sorted_pairs() {
        assert_eq!(
            registration("m1", &["http://b:2".to_string(), "http://a:1".to_string()]),
            "m1=http://a:1,m1=http://b:2"
        );
    }

    #[test]
    fn error_messages_are_etcds() {
        assert_eq!(
            join_failed(&DiscoveryError::FullCluster),
            "failed to join discovery cluster (discovery: cluster is full)"
        );
        assert_eq!(
            join_failed(&DiscoveryError::BadSizeKey),
            "failed to join discovery cluster (discovery: size key is bad)"
        );
        // etcd 3.4.23 with a token that has no _config/size (observed):
        // "failed to join discovery cluster (100: Key not found (/discovery) [3])".
        let e = DiscoveryError::Api {
            code: 100,
            message: "Key not found".into(),
            cause: "/discovery".into(),
            index: 3,
        };
        assert_eq!(
            join_failed(&e),
            "failed to join discovery cluster (100: Key not found (/discovery) [3])"
        );
        assert_eq!(
            DiscoveryError::DuplicateId.to_string(),
            "discovery: found duplicate id"
        );
    }

    #[test]
    fn backoff_doubles_up_to_256s() {
        let secs: Vec<u64> = (1..=10).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
    }

    #[test]
    fn discovery_url_splits_into_endpoint_and_token() {
        let (ep, token) = split_url("http://127.0.0.1:2379/v2/keys/discovery/abc").unwrap();
        assert_eq!(ep.addr, "127.0.0.1:2379");
        assert_eq!(ep.origin(), "http://127.0.0.1:2379");
        assert_eq!(token, "/v2/keys/discovery/abc");
        let (ep, token) = split_url("https://discovery.etcd.io/3e86b5").unwrap();
        assert_eq!(ep.addr, "discovery.etcd.io:443");
        assert_eq!(ep.host, "discovery.etcd.io");
        assert_eq!(token, "/3e86b5");
        assert_eq!(join(&[&token, "_config", "size"]), "/3e86b5/_config/size");
        assert_eq!(join(&["/v2/keys/d/t/", "_config"]), "/v2/keys/d/t/_config");
        assert!(split_url("not-a-url").is_err());
        assert!(split_url("ftp://h:1/x").is_err());
    }

    #[test]
    fn proxy_address_is_sanitised_as_etcd() {
        assert_eq!(proxy_endpoint("").unwrap(), None);
        let p = proxy_endpoint("127.0.0.1:3128").unwrap().unwrap();
        assert_eq!(p.origin(), "http://127.0.0.1:3128");
        let p = proxy_endpoint("http://proxy.local:8080").unwrap().unwrap();
        assert_eq!(p.addr, "proxy.local:8080");
    }

    #[test]
    fn duplicate_urls_are_found() {
        let e = |n: &str, u: &str| (n.to_string(), u.to_string());
        assert!(!duplicate_url(&[
            e("a", "http://h:1"),
            e("b", "http://h:2")
        ]));
        assert!(duplicate_url(&[e("a", "http://h:1"), e("b", "http://h:1")]));
        assert_eq!(
            urls_map_string(&[e("b", "http://h:2"), e("a", "http://h:1")]),
            "a=http://h:1,b=http://h:2"
        );
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(
            form_value("m1=http://127.0.0.1:1,m1=x y"),
            "m1%3Dhttp%3A%2F%2F127.0.0.1%3A1%2Cm1%3Dx+y"
        );
    }
}
