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

/// Listen addresses of a member.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// `--listen-client-urls`, resolved.
    pub client: Vec<SocketAddr>,
    /// `--listen-peer-urls`, resolved.
    pub peer: Vec<SocketAddr>,
    /// `--listen-metrics-urls`, resolved.
    pub metrics: Vec<SocketAddr>,
}

/// Runs a member until a shutdown signal.
pub async fn run(opts: ServerOptions, listeners: Listeners) -> anyhow::Result<()> {
    let mut client_listeners = Vec::new();
    for addr in &listeners.client {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen tcp {addr}: bind failed"))?;
        tracing::info!(address = %addr, "startup: listening for client traffic");
        client_listeners.push(l);
    }
    let mut peer_listeners = Vec::new();
    for addr in &listeners.peer {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen tcp {addr}: bind failed"))?;
        tracing::info!(address = %addr, "startup: listening for peers");
        peer_listeners.push(l);
    }
    let mut metrics_listeners = Vec::new();
    for addr in &listeners.metrics {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen tcp {addr}: bind failed"))?;
        tracing::info!(address = %addr, "startup: listening for metrics");
        metrics_listeners.push(l);
    }
    let server: Arc<EtcdServer> = Arc::new(server::start(&opts)?);
    // Peers first: the member needs them to commit its publish.
    for l in peer_listeners {
        tokio::spawn(crate::http::serve(
            l,
            Arc::clone(&server),
            crate::http::Api::Peer,
        ));
    }
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
    for l in client_listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(
                "serving insecure client requests on {addr}, this is strongly discouraged!"
            );
        }
        tokio::spawn(crate::http::serve(
            l,
            Arc::clone(&server),
            crate::http::Api::Client,
        ));
    }
    for l in metrics_listeners {
        tokio::spawn(crate::http::serve(
            l,
            Arc::clone(&server),
            crate::http::Api::Metrics,
        ));
    }
    shutdown_signal().await;
    tracing::info!("startup: shutting down");
    server.shutdown();
    Ok(())
}

async fn shutdown_signal() {
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

/// Splits a parsed configuration into the member's options and its listen addresses; a
/// listen URL whose host does not resolve is an error.
pub fn from_config(
    cfg: &crate::config::ServerConfig,
) -> anyhow::Result<(ServerOptions, Listeners)> {
    let urls = |v: &[crate::config::Url]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    let addrs = |v: &[crate::config::Url]| -> anyhow::Result<Vec<SocketAddr>> {
        v.iter()
            .map(|u| u.socket_addr().map_err(anyhow::Error::msg))
            .collect()
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
        enable_v2: cfg.enable_v2,
        cors: cfg.cors.clone(),
    };
    let listeners = Listeners {
        client: addrs(&cfg.listen_client_urls)?,
        peer: addrs(&cfg.listen_peer_urls)?,
        metrics: addrs(&cfg.listen_metrics_urls)?,
    };
    Ok((opts, listeners))
}
