//! `--proxy on|readonly`: etcd 3.4's v2 proxy. The process stores no keys and runs no raft:
//! it forwards every client request to a member's client URL.
//!
//! - Where the members are: the peer URLs of `<data-dir>/proxy/cluster` (JSON
//!   `{"PeerURLs":[...]}`, written by an earlier run), else the ones the caller passes (today
//!   `--initial-cluster`; discovery can pass its own). The members' client URLs are asked from
//!   a peer URL (`GET /members`, as a joining member asks) at start and every
//!   `--proxy-refresh-interval` (every second while none is known, with etcd's default of 30
//!   s or more); each successful answer is saved in the cluster file (written to a temporary
//!   file, synced, renamed), so a restarted proxy needs no bootstrap flags.
//! - Where a request goes: [`director`] (order, failed endpoints held for
//!   `--proxy-failure-wait`); how: [`forward`] (retries, timeouts, streaming).
//! - A data dir that holds `proxy` starts a proxy whatever `--proxy` says, and one that holds
//!   `member` a member, as in etcd.

pub mod director;
pub mod forward;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{ProxyMode, ServerConfig};
use crate::startup::Listen;
use director::Director;
use forward::{Forwarder, Timeouts};

/// etcd's default refresh interval: at or above it, a proxy with no endpoint asks every
/// second instead.
const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// What a data dir was initialised as (etcd's `identifyDataDirOrDie`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    Empty,
    Member,
    Proxy,
}

/// What `dir` holds: `member`, `proxy`, or neither. Both is an error, as in etcd.
pub fn dir_kind(dir: &Path) -> Result<DirKind, String> {
    let (m, p) = (dir.join("member").exists(), dir.join("proxy").exists());
    match (m, p) {
        (true, true) => Err("invalid datadir. Both member and proxy directories exist.".into()),
        (true, false) => Ok(DirKind::Member),
        (false, true) => Ok(DirKind::Proxy),
        (false, false) => Ok(DirKind::Empty),
    }
}

/// Whether this process runs as a proxy: as its data dir was initialised, else as `--proxy`
/// says. Logs etcd's line when the data dir decides.
pub fn wanted(cfg: &ServerConfig) -> Result<bool, String> {
    let kind = dir_kind(&cfg.data_dir)?;
    let which = match kind {
        DirKind::Empty => return Ok(cfg.proxy.mode != ProxyMode::Off),
        DirKind::Member => "member",
        DirKind::Proxy => "proxy",
    };
    tracing::info!(
        "the server is already initialized as {which} before, starting as etcd {which}..."
    );
    Ok(kind == DirKind::Proxy)
}

/// Everything the proxy needs, from the configuration.
pub struct Setup {
    pub readonly: bool,
    pub failure_wait: Duration,
    pub refresh_interval: Duration,
    pub timeouts: Timeouts,
    /// `<data-dir>/proxy`.
    pub dir: PathBuf,
    /// Where to ask for the members when no cluster file exists (`--initial-cluster`).
    pub bootstrap_peer_urls: Vec<String>,
    /// `--discovery-srv` (domain, `--discovery-srv-name`): the peers come from DNS instead.
    pub discovery_srv: Option<(String, String)>,
    /// Dialing peer URLs (`--peer-*` TLS settings).
    pub peer_tls: Option<tokio_rustls::TlsConnector>,
    /// Dialing `https` client URLs: the client TLS settings, else the peer ones (etcd's
    /// "old proxy behavior").
    pub client_tls: Option<tokio_rustls::TlsConnector>,
}

impl Setup {
    /// The proxy's settings; `peer_tls` is how the member would dial its peers.
    pub fn from_config(
        cfg: &ServerConfig,
        peer_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Setup> {
        let info = if cfg.client_tls.is_empty() {
            &cfg.peer_tls
        } else {
            &cfg.client_tls
        };
        let client_tls =
            crate::tls::client_config(info, &cfg.cipher_suites).map_err(anyhow::Error::msg)?;
        let mut bootstrap: Vec<String> = cfg
            .initial_cluster
            .iter()
            .map(|(_, u)| u.to_string())
            .collect();
        bootstrap.sort();
        bootstrap.dedup();
        Ok(Setup {
            readonly: cfg.proxy.mode == ProxyMode::Readonly,
            failure_wait: cfg.proxy.failure_wait,
            refresh_interval: cfg.proxy.refresh_interval,
            timeouts: Timeouts {
                dial: cfg.proxy.dial_timeout,
                read: cfg.proxy.read_timeout,
                write: cfg.proxy.write_timeout,
            },
            dir: cfg.data_dir.join("proxy"),
            bootstrap_peer_urls: bootstrap,
            discovery_srv: (!cfg.discovery_srv.is_empty())
                .then(|| (cfg.discovery_srv.clone(), cfg.discovery_srv_name.clone())),
            peer_tls: peer_tls.map(tokio_rustls::TlsConnector::from),
            client_tls: Some(tokio_rustls::TlsConnector::from(client_tls)),
        })
    }
}

/// The cluster file's content (etcd marshals `struct{ PeerURLs []string }`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ClusterFile {
    #[serde(rename = "PeerURLs")]
    peer_urls: Vec<String>,
}

/// The peer URLs saved in `path`, `None` when there is no file.
pub fn read_cluster_file(path: &Path) -> anyhow::Result<Option<Vec<String>>> {
    match std::fs::read(path) {
        Ok(b) => {
            let f: ClusterFile = serde_json::from_slice(&b)
                .with_context(|| format!("cluster file {}", path.display()))?;
            Ok(Some(f.peer_urls))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("read {}", path.display()))),
    }
}

/// Saves `peer_urls` durably: written to `<path>.bak`, synced, renamed over `path`, the
/// directory synced.
pub fn write_cluster_file(path: &Path, peer_urls: &[String]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let body = serde_json::to_vec(&ClusterFile {
        peer_urls: peer_urls.to_vec(),
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("bak");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The members' view: what the endpoints and the cluster file become.
struct View {
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
}

/// Asks the peer URLs, in turn, for the cluster's members (etcd's
/// `GetClusterFromRemotePeers`).
async fn fetch_view(
    peer_urls: &[String],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<View, String> {
    for url in peer_urls {
        match crate::transport::peer::fetch_members(url, tls).await {
            Ok((_, members)) => {
                let mut client_urls: Vec<String> = members
                    .iter()
                    .flat_map(|m| m.client_urls.iter().cloned())
                    .collect();
                let mut peers: Vec<String> = members
                    .iter()
                    .flat_map(|m| m.peer_urls.iter().cloned())
                    .collect();
                client_urls.sort();
                client_urls.dedup();
                peers.sort();
                peers.dedup();
                return Ok(View {
                    client_urls,
                    peer_urls: peers,
                });
            }
            Err(e) => tracing::warn!("could not get cluster response from {url}: {e}"),
        }
    }
    Err("could not retrieve cluster information from the given URLs".into())
}

/// The refresh state: where to ask, what was saved.
struct Refresher {
    peer_urls: Vec<String>,
    saved: Option<Vec<String>>,
    cluster_file: PathBuf,
    tls: Option<tokio_rustls::TlsConnector>,
    director: Arc<Mutex<Director>>,
    announced: bool,
}

impl Refresher {
    /// Asks the members for the endpoints and saves their peer URLs. A failed ask keeps the
    /// endpoints known so far (etcd's proxy drops them all until the next refresh).
    async fn refresh(&mut self) {
        let view = match fetch_view(&self.peer_urls, self.tls.as_ref()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("proxy: {e}");
                return;
            }
        };
        if self.saved.as_ref() != Some(&view.peer_urls) {
            if let Err(e) = write_cluster_file(&self.cluster_file, &view.peer_urls) {
                tracing::warn!("proxy: error on writing urls {e}");
            } else {
                self.saved = Some(view.peer_urls.clone());
            }
        }
        if view.peer_urls != self.peer_urls {
            tracing::info!(
                "proxy: updated peer urls in cluster file from {:?} to {:?}",
                self.peer_urls,
                view.peer_urls
            );
            self.peer_urls = view.peer_urls;
        }
        let changed = {
            let mut d = self.director.lock().unwrap_or_else(|e| e.into_inner());
            d.refresh(&view.client_urls, director::random_seed())
                .changed_from
                .map(|from| (from, d.all()))
        };
        if let Some((from, to)) = changed {
            if !self.announced {
                self.announced = true;
                tracing::info!("endpoints found {to:?}");
            } else {
                tracing::info!("proxy: endpoints changed from {from:?} to {to:?}");
            }
        }
    }
}

/// Runs the proxy on the client listeners until a shutdown signal. `bootstrap_peer_urls`
/// (used when the data dir has no cluster file yet) may come from `--initial-cluster` or a
/// discovery service.
pub async fn run(setup: Setup, client: Vec<Listen>) -> anyhow::Result<()> {
    tracing::info!("proxy: this proxy supports v2 API only!");
    let bound = crate::startup::bind(&client, "client traffic").await?;
    create_dir(&setup.dir)?;
    let cluster_file = setup.dir.join("cluster");
    let saved = read_cluster_file(&cluster_file)?;
    let peer_urls = match &saved {
        Some(urls) => {
            tracing::info!(
                "proxy: using peer urls {urls:?} from cluster file {:?}",
                cluster_file.display().to_string()
            );
            urls.clone()
        }
        None => {
            let urls = match &setup.discovery_srv {
                // As etcd: a proxy uses the members' SRV records, then asks them for members.
                Some((domain, service_name)) => crate::srv::peer_urls(domain, service_name)
                    .await
                    .map_err(anyhow::Error::msg)?,
                None => setup.bootstrap_peer_urls.clone(),
            };
            tracing::info!("proxy: using peer urls {urls:?}");
            urls
        }
    };
    let director = Arc::new(Mutex::new(Director::new(setup.failure_wait)));
    let mut refresher = Refresher {
        peer_urls,
        saved,
        cluster_file,
        tls: setup.peer_tls.clone(),
        director: Arc::clone(&director),
        announced: false,
    };
    // As etcd: the first refresh before serving (connections wait in the backlog).
    refresher.refresh().await;
    let interval = setup.refresh_interval.max(Duration::from_millis(10));
    let refresh_director = Arc::clone(&director);
    tokio::spawn(async move {
        loop {
            let none = refresh_director
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .available(Instant::now())
                .is_empty();
            let wait = if interval >= DEFAULT_REFRESH && none {
                Duration::from_secs(1)
            } else {
                interval
            };
            tokio::time::sleep(wait).await;
            refresher.refresh().await;
        }
    });
    let forwarder = Arc::new(Forwarder::new(
        director,
        setup.timeouts,
        setup.client_tls.clone(),
        setup.readonly,
    ));
    for (sock, l) in bound {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "v2 proxy started listening on client requests on {:?}",
            format!("{scheme}://{}", l.addr)
        );
        tokio::spawn(serve(sock, l, Arc::clone(&forwarder)));
    }
    crate::startup::shutdown_signal().await;
    tracing::info!("proxy: shutting down");
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Accepts connections on one listener: plaintext, TLS, or both on one port (a first byte
/// that starts a TLS handshake gets TLS).
async fn serve(listener: TcpListener, l: Listen, forwarder: Arc<Forwarder>) {
    let acceptor = l.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let forwarder = Arc::clone(&forwarder);
        let acceptor = acceptor.clone();
        let plain = l.plain;
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                connection(TokioIo::new(stream), remote, forwarder).await;
                return;
            };
            let mut first = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await {
                Ok(Ok(1)) => {}
                _ => return,
            }
            if first[0] != 0x16 {
                if plain {
                    connection(TokioIo::new(stream), remote, forwarder).await;
                }
                return;
            }
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => connection(TokioIo::new(tls), remote, forwarder).await,
                Ok(Err(e)) => tracing::warn!(
                    "http: TLS handshake error from {remote}: {}",
                    crate::tls::go_error(&e)
                ),
                Err(_) => tracing::warn!("http: TLS handshake error from {remote}: timed out"),
            }
        });
    }
}

async fn connection<I>(io: I, remote: std::net::SocketAddr, forwarder: Arc<Forwarder>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let forwarder = Arc::clone(&forwarder);
        async move { Ok::<_, std::convert::Infallible>(forwarder.handle(req, remote).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.title_case_headers(true);
    if let Err(e) = builder.serve_connection(io, svc).await {
        tracing::debug!(error = %e, %remote, "http: connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_file_round_trips_in_etcds_format() {
        let dir = std::env::temp_dir().join(format!("oxcd-proxy-file-{}", std::process::id()));
        create_dir(&dir).unwrap();
        let path = dir.join("cluster");
        assert_eq!(read_cluster_file(&path).unwrap(), None);
        let urls = vec![
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".into(),
        ];
        write_cluster_file(&path, &urls).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"PeerURLs":["http://127.0.0.1:1","http://127.0.0.1:2"]}"#
        );
        assert!(!path.with_extension("bak").exists());
        assert_eq!(read_cluster_file(&path).unwrap(), Some(urls));
        std::fs::write(&path, "nope").unwrap();
        assert!(read_cluster_file(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn data_dir_kind_as_etcd() {
        let dir = std::env::temp_dir().join(format!("oxcd-proxy-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(dir_kind(&dir), Ok(DirKind::Empty));
        create_dir(&dir.join("proxy")).unwrap();
        assert_eq!(dir_kind(&dir), Ok(DirKind::Proxy));
        create_dir(&dir.join("member")).unwrap();
        assert!(dir_kind(&dir)
            .unwrap_err()
            .contains("Both member and proxy"));
        std::fs::remove_dir_all(dir.join("proxy")).unwrap();
        assert_eq!(dir_kind(&dir), Ok(DirKind::Member));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
