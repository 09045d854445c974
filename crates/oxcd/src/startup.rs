//! Process startup: from a parsed configuration to listening sockets and a running member
//! (etcd's `etcdmain`).
//!
//! Binds every listener first, so a port conflict fails the start before anything is
//! written, then starts the member and serves until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::server::{self, EtcdServer, ServerOptions};

/// One listening socket: its address and what it serves. An address named by both an
/// `http` and an `https` URL is one socket serving both (as etcd's cmux does): a connection
/// whose first byte starts a TLS handshake gets TLS, any other plaintext.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address to bind.
    pub addr: SocketAddr,
    /// TLS, for `https` URLs.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plaintext, for `http` URLs.
    pub plain: bool,
}

/// Listen addresses of a member.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// `--listen-client-urls`, resolved.
    pub client: Vec<Listen>,
    /// `--listen-peer-urls`, resolved.
    pub peer: Vec<Listen>,
    /// `--listen-metrics-urls`, resolved.
    pub metrics: Vec<Listen>,
}

pub(crate) async fn bind(
    list: &[Listen],
    what: &str,
) -> anyhow::Result<Vec<(TcpListener, Listen)>> {
    let mut out = Vec::new();
    for l in list {
        let sock = listen(l.addr).with_context(|| format!("listen tcp {}: bind failed", l.addr))?;
        tracing::info!(address = %l.addr, tls = l.tls.is_some(), plaintext = l.plain, "startup: listening for {what}");
        out.push((sock, l.clone()));
    }
    Ok(out)
}

fn spawn_serve(bound: Vec<(TcpListener, Listen)>, server: &Arc<EtcdServer>, api: crate::http::Api) {
    for (sock, l) in bound {
        let tls = l.tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(crate::http::serve(
            sock,
            Arc::clone(server),
            api,
            tls,
            l.plain,
        ));
    }
}

/// `--initial-cluster-state existing` on an empty data dir: asks the other members named in
/// `--initial-cluster` for the running cluster's members and checks that they are the
/// members `--initial-cluster` names, by peer URLs (etcd's `ValidateClusterAndAssignIDs`).
async fn join_existing(opts: &ServerOptions) -> anyhow::Result<server::RemoteCluster> {
    let tls = opts.peer_tls.clone().map(tokio_rustls::TlsConnector::from);
    let mut last_error = String::from("no other member in --initial-cluster");
    let mut found = None;
    for (_, url) in &opts.initial_cluster {
        if opts.peer_urls.contains(url) {
            continue;
        }
        match crate::transport::peer::fetch_members(url, tls.as_ref()).await {
            Ok(x) => {
                found = Some(x);
                break;
            }
            Err(e) => {
                tracing::warn!(peer = %url, error = %e, "could not get cluster response");
                last_error = e;
            }
        }
    }
    let Some((cluster_id, members)) = found else {
        anyhow::bail!(
            "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({last_error})"
        );
    };
    let local = crate::membership::Cluster::from_initial(
        &opts.initial_cluster,
        &opts.initial_cluster_token,
    );
    let sorted = |u: &[String]| {
        let mut u = u.to_vec();
        u.sort();
        u
    };
    let describe = || {
        members
            .iter()
            .map(|m| {
                format!(
                    "{}={:?}",
                    crate::membership::id_to_string(m.id),
                    m.peer_urls
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if members.len() != local.members.len() {
        anyhow::bail!(
            "error validating peerURLs {{ClusterID:{} Members:[{}]}}: member count is unequal",
            crate::membership::id_to_string(cluster_id),
            describe()
        );
    }
    for m in &members {
        if !local
            .members
            .iter()
            .any(|l| sorted(&l.peer_urls) == sorted(&m.peer_urls))
        {
            anyhow::bail!(
                "error validating peerURLs {{ClusterID:{} Members:[{}]}}: PeerURLs: no match found for existing member ({}, {:?})",
                crate::membership::id_to_string(cluster_id),
                describe(),
                crate::membership::id_to_string(m.id),
                m.peer_urls
            );
        }
    }
    Ok(server::RemoteCluster {
        cluster_id,
        members,
    })
}

/// `--discovery`: a new member (no WAL) registers with the discovery service and takes
/// the initial cluster it returns (etcd's `NewServer` with `ShouldDiscover`); a member with
/// a WAL ignores the discovery URL, as etcd does.
async fn discover(mut opts: ServerOptions) -> anyhow::Result<ServerOptions> {
    use crate::discovery;
    let Some(settings) = opts.discovery.clone() else {
        return Ok(opts);
    };
    tracing::info!(discovery_url = %settings.url, "discovery URL= {}", settings.url);
    if !settings.proxy.is_empty() {
        tracing::info!(discovery_proxy = %settings.proxy, "discovery proxy = {}", settings.proxy);
    }
    if server::has_wal(&opts) {
        let wal = opts
            .wal_dir
            .clone()
            .unwrap_or_else(|| opts.data_dir.join("member").join("wal"));
        tracing::warn!(
            "discovery token ignored since a cluster has already been initialized. Valid log found at {:?}",
            wal.display().to_string()
        );
        return Ok(opts);
    }
    if opts.initial_cluster_existing {
        anyhow::bail!("discovery URL should not be set when joining existing initial cluster");
    }
    // This member's ID as etcd derives it for discovery: its peer URLs and the discovery
    // URL as the cluster token (`opts.initial_cluster_token` is the discovery URL).
    let id =
        crate::membership::compute_member_id(&opts.peer_urls, &opts.initial_cluster_token, None);
    let config = discovery::urls_map_string(&opts.initial_cluster);
    let found = match discovery::join_cluster(&settings, id, &config).await {
        Ok(found) => found,
        Err(discovery::DiscoveryError::FullCluster) if settings.fallback_proxy => {
            return Err(discovery::fallback_to_proxy(&settings).await);
        }
        Err(e) => {
            discovery::log_failure(
                &e,
                &settings,
                &opts.name,
                &opts.data_dir.display().to_string(),
            );
            anyhow::bail!("{}", discovery::join_failed(&e));
        }
    };
    let entries = discovery::parse_cluster(&found).map_err(anyhow::Error::msg)?;
    if discovery::duplicate_url(&entries) {
        anyhow::bail!(
            "discovery cluster {} has duplicate url",
            discovery::urls_map_string(&entries)
        );
    }
    tracing::info!(initial_cluster = %found, "discovery: the initial cluster is complete");
    opts.initial_cluster = entries;
    Ok(opts)
}

/// Runs a member until a shutdown signal.
pub async fn run(opts: ServerOptions, listeners: Listeners) -> anyhow::Result<()> {
    let client_listeners = bind(&listeners.client, "client traffic").await?;
    let peer_listeners = bind(&listeners.peer, "peers").await?;
    let metrics_listeners = bind(&listeners.metrics, "metrics").await?;
    let mut opts = discover(opts).await?;
    // A new member bootstrapped by DNS: the initial cluster comes from the SRV records
    // (a restarted member is who its WAL says and needs no lookup).
    if !opts.discovery_srv.is_empty() && !server::has_wal(&opts) {
        let entries = crate::srv::initial_cluster(
            &opts.discovery_srv,
            &opts.discovery_srv_name,
            &opts.name,
            &opts.peer_urls,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        opts.initial_cluster = entries;
        opts.initial_cluster_from_srv = true;
    }
    // A member joining a running cluster learns its members (and its own ID) from them.
    let remote = if opts.initial_cluster_existing && !server::has_wal(&opts) {
        Some(join_existing(&opts).await?)
    } else {
        None
    };
    let server: Arc<EtcdServer> = Arc::new(server::start(&opts, remote.as_ref())?);
    // Peers first: the member needs them to commit its publish.
    spawn_serve(peer_listeners, &server, crate::http::Api::Peer);
    // Clients only once this run's publish is applied (etcd's ReadyNotify): a client never
    // reads from a store that still lacks writes acknowledged before a restart. Connections
    // made meanwhile wait in the listen backlog.
    tokio::select! {
        _ = server.wait_ready() => {}
        _ = shutdown_signal() => {
            tracing::info!("startup: shutting down before the member was ready");
            server.shutdown();
            return Ok(());
        }
    }
    tracing::info!("ready to serve client requests");
    // What the restart's snapshot decode and replay freed.
    crate::memory::release_soon();
    for (_, l) in &client_listeners {
        if l.tls.is_some() {
            tracing::info!("serving client requests on {}", l.addr);
        }
        if l.plain {
            tracing::info!(
                "serving insecure client requests on {}, this is strongly discouraged!",
                l.addr
            );
        }
    }
    spawn_serve(client_listeners, &server, crate::http::Api::Client);
    spawn_serve(metrics_listeners, &server, crate::http::Api::Metrics);
    shutdown_signal().await;
    tracing::info!("startup: shutting down");
    server.shutdown();
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `--proxy on|readonly` (or a data dir initialised as a proxy): the proxy's settings, `None`
/// for a member.
pub fn proxy_setup(
    cfg: &crate::config::ServerConfig,
    opts: &ServerOptions,
) -> anyhow::Result<Option<crate::proxy::Setup>> {
    if !crate::proxy::wanted(cfg).map_err(anyhow::Error::msg)? {
        return Ok(None);
    }
    crate::proxy::Setup::from_config(cfg, opts.peer_tls.clone()).map(Some)
}

/// Splits a parsed configuration into the member's options and its listen addresses; a
/// listen URL whose host does not resolve is an error, and so is a TLS setting that
/// cannot be loaded (a missing file, a key that does not match its certificate). Auto TLS
/// certificates are generated here, under the data dir.
pub fn from_config(
    cfg: &crate::config::ServerConfig,
) -> anyhow::Result<(ServerOptions, Listeners)> {
    use crate::config::Url;
    let urls = |v: &[Url]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    let hosts = |v: &[Url]| {
        v.iter()
            .map(|u| format!("{}:{}", u.host, u.port))
            .collect::<Vec<_>>()
    };
    let fixtures = cfg.data_dir.join("fixtures");
    let client_tls = crate::tls::self_cert(
        &cfg.client_tls,
        &fixtures.join("client"),
        &hosts(&cfg.listen_client_urls),
    )
    .map_err(anyhow::Error::msg)?;
    let peer_tls = crate::tls::self_cert(
        &cfg.peer_tls,
        &fixtures.join("peer"),
        &hosts(&cfg.listen_peer_urls),
    )
    .map_err(anyhow::Error::msg)?;
    let any_https = |v: &[Url]| v.iter().any(|u| u.scheme == "https");
    let client_server_tls = if any_https(&cfg.listen_client_urls)
        || any_https(&cfg.listen_metrics_urls)
    {
        tracing::info!(cert = %client_tls.cert_file, key = %client_tls.key_file, trusted_ca = %client_tls.trusted_ca_file, client_cert_auth = client_tls.client_cert_auth, crl = %client_tls.crl_file, "startup: client TLS");
        Some(
            crate::tls::server_config(&client_tls, &cfg.cipher_suites)
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let peer_server_tls = if any_https(&cfg.listen_peer_urls) {
        tracing::info!(cert = %peer_tls.cert_file, key = %peer_tls.key_file, trusted_ca = %peer_tls.trusted_ca_file, client_cert_auth = peer_tls.client_cert_auth, crl = %peer_tls.crl_file, "startup: peer TLS");
        Some(crate::tls::server_config(&peer_tls, &cfg.cipher_suites).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    // Dialing peers: with our peer certificate, and whenever a peer URL is https.
    let peer_dial_tls = if !peer_tls.is_empty()
        || cfg.initial_cluster.iter().any(|(_, u)| u.scheme == "https")
    {
        Some(crate::tls::client_config(&peer_tls, &cfg.cipher_suites).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    for (side, info, list) in [
        ("client", &cfg.client_tls, &cfg.listen_client_urls),
        ("peer", &cfg.peer_tls, &cfg.listen_peer_urls),
    ] {
        for u in list.iter().filter(|u| u.scheme == "http") {
            if !info.is_empty() {
                tracing::warn!(url = %u, "scheme is HTTP while key and cert files are present; ignoring key and cert files ({side} url)");
            }
            if info.client_cert_auth {
                tracing::warn!(url = %u, "scheme is HTTP while client cert auth is enabled; ignoring client cert auth for this URL ({side} url)");
            }
        }
    }
    let listens =
        |v: &[Url], tls: &Option<Arc<rustls::ServerConfig>>| -> anyhow::Result<Vec<Listen>> {
            let mut out: Vec<Listen> = Vec::new();
            for u in v {
                let addr = u.socket_addr().map_err(anyhow::Error::msg)?;
                let secure = u.scheme == "https";
                let at = match out.iter().position(|l| l.addr == addr) {
                    Some(i) => i,
                    None => {
                        out.push(Listen {
                            addr,
                            tls: None,
                            plain: false,
                        });
                        out.len() - 1
                    }
                };
                if secure {
                    out[at].tls = tls.clone();
                } else {
                    out[at].plain = true;
                }
            }
            Ok(out)
        };
    let opts = ServerOptions {
        name: cfg.name.clone(),
        peer_urls: urls(&cfg.initial_advertise_peer_urls),
        client_urls: urls(&cfg.advertise_client_urls),
        initial_cluster: cfg
            .initial_cluster
            .iter()
            .map(|(n, u)| (n.clone(), u.to_string()))
            .collect(),
        initial_cluster_token: cfg.initial_cluster_token.clone(),
        initial_cluster_existing: cfg.initial_cluster_state == "existing",
        heartbeat: cfg.heartbeat_interval,
        election_timeout: cfg.election_timeout,
        max_request_bytes: cfg.max_request_bytes,
        snapshot_count: cfg.snapshot_count,
        data_dir: cfg.data_dir.clone(),
        wal_dir: cfg.wal_dir.clone(),
        max_snapshots: cfg.max_snapshots as usize,
        max_wals: cfg.max_wals as usize,
        pre_vote: cfg.pre_vote,
        strict_reconfig_check: cfg.strict_reconfig_check,
        force_new_cluster: cfg.force_new_cluster,
        discovery_srv: cfg.discovery_srv.clone(),
        discovery_srv_name: cfg.discovery_srv_name.clone(),
        initial_cluster_from_srv: false,
        enable_v2: cfg.enable_v2,
        cors: cfg.cors.clone(),
        peer_tls: peer_dial_tls,
        client_cert_auth: cfg.client_tls.client_cert_auth,
        peer_san_check: !cfg.peer_skip_client_san,
        discovery: cfg.discovery.clone(),
    };
    let listeners = Listeners {
        client: listens(&cfg.listen_client_urls, &client_server_tls)?,
        peer: listens(&cfg.listen_peer_urls, &peer_server_tls)?,
        metrics: listens(&cfg.listen_metrics_urls, &client_server_tls)?,
    };
    Ok((opts, listeners))
}

/// Binds a listener with the listen backlog Go gives etcd's (the system's `somaxconn`), not
/// the 128 of the standard library: a burst of thousands of connections then waits in the
/// queue instead of every 129th waiting a second for a SYN retry.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As Go's listeners: a restarted member may bind while old connections linger.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(listen_backlog())
}

/// The system's `net.core.somaxconn` (Go reads the same file), or 4096.
fn listen_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
        .min(65535)
}
