//! The etcd server: the glue between the HTTP handlers, raft and the v2 store.
//!
//! Owns [`EtcdServer`], which HTTP handlers call: `do_v2` proposes writes and quorum reads
//! through raft and waits for their results; plain reads and watches go straight to the store
//! under its lock (etcd serves them locally too). Also owns the member's identity and the
//! shared state that apply updates ([`Shared`]).
//!
//! Invariants:
//! - a write is answered only after its entry was committed (persisted on a majority) and
//!   applied on this member;
//! - every proposal has a unique ID; its waiter is removed on every exit path (result,
//!   timeout, drop), so the wait registry does not grow.

pub mod apply;
pub mod request;
pub mod wait;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use oxcd_api::v2::{Error as V2Error, ErrorCode, Event};
use oxcd_v2store::Store;

use crate::membership::{Cluster, Member, MemberChange, MemberError, MembershipView};
use crate::raft::{RaftHandle, RaftInput, RaftStatus};
use request::{IdGenerator, RaftRequest, RequestBody, V2Request};
use wait::Wait;

/// Pause before proposing again after raft dropped a proposal for want of a leader.
const PROPOSE_RETRY: Duration = Duration::from_millis(50);

/// The cluster version this server speaks (what etcd 3.4 reports in `/version`).
pub const CLUSTER_VERSION: &str = "3.4.0";
/// The server API version reported in `/version` (the etcd release whose API we implement).
pub const SERVER_API_VERSION: &str = "3.4.23";
/// Store namespace for cluster membership (hidden from the keys API).
pub const STORE_CLUSTER_PREFIX: &str = "/0";
/// Store namespace under which the keys API lives.
pub const STORE_KEYS_PREFIX: &str = "/1";

/// The result of applying one request.
pub type ApplyResult = Result<Event, V2Error>;

/// What a waiting proposer learns. (Sent once per request through a oneshot channel, so
/// the size difference between the variants costs nothing worth a box.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The request was committed and applied.
    Applied(ApplyResult),
    /// Raft refused the proposal (no leader known): it is not in the log, so it may be
    /// proposed again.
    Dropped,
    /// A linearizable read may now be served locally.
    Readable,
    /// A membership change was committed and applied (or refused, as every member refused
    /// it).
    ConfChanged(Result<(), MemberError>),
}

/// State shared by the raft thread, the apply thread and the HTTP handlers.
pub struct Shared {
    /// The v2 store. Readers take the read lock; apply and watch registration take the write lock.
    pub store: RwLock<Store>,
    /// Clients waiting for their proposals.
    pub wait: Wait<Outcome>,
    /// Members by ID, as applied from the log.
    pub members: Arc<RwLock<BTreeMap<u64, Member>>>,
    /// IDs of members removed for good (their peer traffic is answered 410 Gone).
    pub removed: Arc<RwLock<std::collections::BTreeSet<u64>>>,
    /// Bumped by apply on every membership change: the transport then reconciles its links.
    pub membership_generation: Arc<std::sync::atomic::AtomicU64>,
    /// The membership inside the last snapshot received from the leader (read by the peer
    /// handler while it checks the snapshot), so the raft thread need not decode it again.
    pub received_snapshot_view: std::sync::Mutex<Option<(u64, MembershipView)>>,
    /// Since when each peer has been reachable (the strict reconfiguration check).
    pub peer_activity: Arc<crate::transport::PeerActivity>,
    /// The cluster version once the leader decided it.
    pub cluster_version: RwLock<Option<String>>,
    /// Raft state for headers and stats.
    pub status: Arc<RaftStatus>,
    /// Request ID generator.
    pub ids: IdGenerator,
    /// This member's ID.
    pub member_id: u64,
    /// The leader's view of its followers (`/v2/stats/leader`), kept by the transport.
    pub leader_stats: Arc<crate::transport::LeaderStats>,
    /// This member's name.
    pub name: String,
    /// This member's advertised client URLs.
    pub client_urls: Vec<String>,
    /// The cluster ID.
    pub cluster_id: u64,
    /// When this member started.
    pub start_time: SystemTime,
    /// Whether v2 auth is enabled (`/2/enabled` is `true`), kept by apply so that a keys
    /// request pays one atomic load for it.
    pub auth_enabled: AtomicBool,
    /// Whether the store holds keys with a TTL, kept by apply so that the leader's raft
    /// thread decides on a SYNC proposal without the store lock.
    pub has_ttl_keys: AtomicBool,
    /// Becomes true once this run's own publish (name and client URLs) is applied: from
    /// then on everything committed before the start is applied, and clients are served.
    pub ready: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Re-reads `/2/enabled` after a change under `/2` (or a restore).
    pub fn refresh_auth(&self, store: &Store) {
        let enabled = store
            .get("/2/enabled", false, false, SystemTime::now())
            .ok()
            .and_then(|ev| ev.node.and_then(|mut n| n.value.take()))
            .and_then(|v| serde_json::from_str::<bool>(&v).ok())
            .unwrap_or(false);
        self.auth_enabled.store(enabled, Ordering::Release);
    }

    /// Records the cluster version decided in the log (or read from a snapshot), logging
    /// etcd's lines the first time it becomes known in this run.
    pub fn set_cluster_version(&self, version: Option<String>) {
        let mut current = self
            .cluster_version
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let (None, Some(v)) = (current.as_ref(), version.as_ref()) {
            let major_minor = v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
            tracing::info!("set the cluster version to {major_minor}");
            tracing::info!("enabled capabilities for version {major_minor}");
        }
        *current = version;
    }
}

/// Errors of the server layer (not store errors, which are results).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The request was not committed in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// `--strict-reconfig-check`: the change would leave fewer started members than a
    /// quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// `--strict-reconfig-check`: this member has not been connected to enough peers for
    /// long enough to know the change keeps a working quorum.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// The membership change was refused where it was applied.
    #[error("{0}")]
    Member(#[from] MemberError),
}

impl ServerError {
    /// The v2 error a client sees (etcd answers internal failures with code 300).
    pub fn to_v2(&self) -> V2Error {
        V2Error::new(ErrorCode::RaftInternal, self.to_string(), 0)
    }
}

/// The server as HTTP handlers see it.
pub struct EtcdServer {
    /// Shared state (store, members, status).
    pub shared: Arc<Shared>,
    raft: RaftHandle,
    request_timeout: Duration,
    /// Peer URLs this member advertises.
    pub peer_urls: Vec<String>,
    /// Upper bound of a request body (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// The `X-Etcd-Cluster-ID` value, formatted once.
    pub cluster_id_header: http::HeaderValue,
    /// `--enable-v2`: false leaves only `/version`, `/health` and `/metrics` to clients.
    pub enable_v2: bool,
    /// `--cors`: allowed origins; `None` allows every origin (`*`).
    pub cors: Option<Vec<String>>,
    /// v2 auth state of this process.
    pub auth: AuthState,
    /// Peer TLS connections are checked against the member certificate's addresses.
    pub peer_san_check: bool,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
}

/// What the auth API keeps per process (the records themselves are in the store).
#[derive(Default)]
pub struct AuthState {
    /// The auth directories were created (etcd's `ensuredOnce`).
    pub ensured: AtomicBool,
    /// Successful password checks.
    pub passwords: crate::auth::PasswordCache,
    /// `--client-cert-auth`: a request without an `Authorization` header is the user named
    /// by its client certificate's common name.
    pub client_cert_auth: bool,
}

impl EtcdServer {
    /// Wraps a running raft thread.
    pub fn new(
        shared: Arc<Shared>,
        raft: RaftHandle,
        request_timeout: Duration,
        peer_urls: Vec<String>,
        max_request_bytes: usize,
    ) -> Self {
        // Static bytes: a clone per answer is a copy of a pointer, where a shared buffer's
        // clone and drop would be two atomic updates of one counter by every worker.
        let cluster_id: &'static str =
            Box::leak(crate::membership::id_to_string(shared.cluster_id).into_boxed_str());
        let cluster_id_header = http::HeaderValue::from_static(cluster_id);
        EtcdServer {
            shared,
            raft,
            request_timeout,
            peer_urls,
            max_request_bytes,
            cluster_id_header,
            enable_v2: true,
            cors: None,
            peer_san_check: true,
            strict_reconfig_check: true,
            auth: AuthState::default(),
        }
    }

    /// Proposes a v2 write and waits for its applied result. A quorum read does not go
    /// through the log: it waits for raft's ReadIndex and then reads the local store, which
    /// has by then applied everything committed before the read arrived (linearizable, with
    /// no log entry and no fsync).
    pub async fn do_v2(&self, req: V2Request) -> Result<ApplyResult, ServerError> {
        if let V2Request::QuorumGet {
            path,
            recursive,
            sorted,
        } = &req
        {
            self.wait_readable().await?;
            return Ok(self.get(path, *recursive, *sorted));
        }
        let id = self.shared.ids.next();
        let data = RaftRequest {
            id,
            body: RequestBody::V2(req),
        }
        .encode();
        let propose = || RaftInput::Propose {
            id,
            data: data.clone(),
        };
        // A proposal is only ever answered with its applied result.
        match self.submit(id, propose).await? {
            Outcome::Applied(res) => Ok(res),
            _ => Err(ServerError::Timeout),
        }
    }

    /// Proposes a membership change and waits until it is applied here. With
    /// `--strict-reconfig-check`, adding and removing members is refused first when it
    /// could cost the cluster its quorum (etcd's rules).
    pub async fn change_member(&self, change: MemberChange) -> Result<(), ServerError> {
        if self.strict_reconfig_check {
            self.check_reconfig(&change)?;
        }
        let id = self.shared.ids.next();
        let cc = change.to_conf_change(id);
        match self
            .submit(id, || RaftInput::ProposeConfChange(cc.clone()))
            .await?
        {
            Outcome::ConfChanged(res) => Ok(res?),
            _ => Err(ServerError::Timeout),
        }
    }

    /// etcd's `mayAddMember` / `mayRemoveMember`: members that have published their name
    /// are started; peers are healthy when connected for the last 5 seconds.
    fn check_reconfig(&self, change: &MemberChange) -> Result<(), ServerError> {
        const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
        let members = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let me = self.shared.member_id;
        let since = std::time::Instant::now().checked_sub(HEALTH_INTERVAL);
        let connected = |id: u64| {
            id == me
                || match (self.shared.peer_activity.active_since(id), since) {
                    (Some(t), Some(since)) => t <= since,
                    _ => false,
                }
        };
        let started = |m: &Member| !m.name.is_empty();
        match change {
            MemberChange::Add(_) => {
                let nmembers = members.len() + 1;
                let nstarted = members.values().filter(|m| started(m)).count();
                if !(nstarted == 1 && nmembers == 2) && nstarted < nmembers / 2 + 1 {
                    tracing::warn!(
                        started = nstarted,
                        quorum = nmembers / 2 + 1,
                        "rejecting member add; started member will be less than quorum"
                    );
                    return Err(ServerError::NotEnoughStartedMembers);
                }
                if !members.keys().all(|&id| connected(id)) {
                    tracing::warn!("rejecting member add request; local member has not been connected to all peers, reconfigure breaks active quorum");
                    return Err(ServerError::Unhealthy);
                }
            }
            MemberChange::Remove(id) => {
                let others: Vec<&Member> = members.values().filter(|m| m.id != *id).collect();
                let nstarted = others.iter().filter(|m| started(m)).count();
                if nstarted < others.len() / 2 + 1 {
                    tracing::warn!(
                        started = nstarted,
                        quorum = others.len() / 2 + 1,
                        "rejecting member remove; started member will be less than quorum"
                    );
                    return Err(ServerError::NotEnoughStartedMembers);
                }
                // A member that is down is not part of the active quorum.
                if *id != me && self.shared.peer_activity.active_since(*id).is_none() {
                    return Ok(());
                }
                let active = members.keys().filter(|&&m| connected(m)).count();
                if active.saturating_sub(1) < 1 + (members.len().saturating_sub(1)) / 2 {
                    tracing::warn!(active, "rejecting member remove request; local member has not been connected to all peers, reconfigure breaks active quorum");
                    return Err(ServerError::Unhealthy);
                }
            }
            MemberChange::Update { .. } => {}
        }
        Ok(())
    }

    /// Waits until a linearizable read may be served from the local store (raft's
    /// ReadIndex: this member has applied everything committed when the read arrived).
    pub async fn wait_readable(&self) -> Result<(), ServerError> {
        let id = self.shared.ids.next();
        self.submit(id, || RaftInput::ReadIndex { id }).await?;
        Ok(())
    }

    /// Registers a waiter for `id`, sends `input()` to raft and waits for the outcome: the
    /// applied result of a proposal, or that a read may be served locally. While raft drops
    /// it for want of a leader (an election, or this member is cut off), it is sent again,
    /// as etcd keeps waiting, until the request timeout.
    async fn submit(&self, id: u64, input: impl Fn() -> RaftInput) -> Result<Outcome, ServerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        // Removes the registration if this future is dropped (client went away) or times out.
        let mut guard = WaitGuard {
            wait: &self.shared.wait,
            id,
            armed: true,
        };
        loop {
            let rx = self.shared.wait.register(id);
            if !self.raft.send(input()) {
                return Err(ServerError::Stopped);
            }
            let outcome = tokio::time::timeout_at(deadline, rx).await;
            // Every outcome was delivered by taking the registration out of the registry.
            guard.armed = !matches!(outcome, Ok(Ok(_)));
            match outcome {
                Ok(Ok(Outcome::Dropped)) => {
                    let pause = tokio::time::Instant::now() + PROPOSE_RETRY;
                    tokio::time::sleep_until(pause.min(deadline)).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ServerError::Timeout);
                    }
                }
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Err(_) => return Err(ServerError::Timeout),
            }
        }
    }

    /// Hands a message from a peer to the raft thread; false if it has stopped.
    pub fn step(&self, msg: raft::prelude::Message) -> bool {
        self.raft.send(RaftInput::Step(msg))
    }

    /// Reads the store locally (no raft round trip), as etcd serves non-quorum GETs.
    pub fn get(&self, path: &str, recursive: bool, sorted: bool) -> ApplyResult {
        let store = self.shared.store.read().unwrap_or_else(|e| e.into_inner());
        store.get(path, recursive, sorted, SystemTime::now())
    }

    /// Whether v2 auth is enabled.
    pub fn auth_enabled(&self) -> bool {
        self.shared.auth_enabled.load(Ordering::Acquire)
    }

    /// Current raft term (X-Raft-Term).
    pub fn term(&self) -> u64 {
        self.shared.status.term.load(Ordering::Relaxed)
    }

    /// Current commit index (X-Raft-Index).
    pub fn commit_index(&self) -> u64 {
        self.shared.status.commit_index.load(Ordering::Relaxed)
    }

    /// Known leader (0 = none).
    pub fn leader(&self) -> u64 {
        self.shared.status.leader.load(Ordering::Relaxed)
    }

    /// Client URLs of all members, in member-ID order.
    pub fn client_urls(&self) -> Vec<String> {
        let members = self
            .shared
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner());
        members
            .values()
            .flat_map(|m| m.client_urls.iter().cloned())
            .collect()
    }

    /// Waits until this member's publish is applied (etcd's ReadyNotify): only then are
    /// clients served, so a restarted member never answers from a store that lacks
    /// writes it acknowledged before the restart.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Asks the raft thread to stop.
    pub fn shutdown(&self) {
        let _ = self.raft.send(RaftInput::Shutdown);
    }
}

struct WaitGuard<'a> {
    wait: &'a Wait<Outcome>,
    id: u64,
    /// Still registered: an outcome received means the registry already let go of it.
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.wait.cancel(self.id);
        }
    }
}

/// Everything needed to build a member.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--name`.
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// `--initial-cluster` entries.
    pub initial_cluster: Vec<(String, String)>,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-cluster-state=existing`: join a running cluster (only a restart, with a
    /// data dir, is served so far).
    pub initial_cluster_existing: bool,
    /// `--heartbeat-interval`.
    pub heartbeat: Duration,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// `--data-dir`.
    pub data_dir: std::path::PathBuf,
    /// `--wal-dir` (default `<data-dir>/member/wal`).
    pub wal_dir: Option<std::path::PathBuf>,
    /// `--max-snapshots`.
    pub max_snapshots: usize,
    /// `--max-wals`.
    pub max_wals: usize,
    /// `--pre-vote`.
    pub pre_vote: bool,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--force-new-cluster`: a restarted member becomes a one-member cluster.
    pub force_new_cluster: bool,
    /// `--discovery-srv` and `--discovery-srv-name`: the initial cluster comes from DNS.
    pub discovery_srv: String,
    pub discovery_srv_name: String,
    /// `initial_cluster` was built from SRV records: its peer URLs name the records'
    /// targets, so this member is found in it by name (the records were matched to it by
    /// resolved address).
    pub initial_cluster_from_srv: bool,
    /// `--enable-v2`.
    pub enable_v2: bool,
    /// `--cors` origins (empty = all).
    pub cors: Vec<String>,
    /// How to dial `https` peer URLs (the peer certificate, the trusted CA); `None` when
    /// no peer TLS is configured and every peer URL is `http`.
    pub peer_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `--client-cert-auth`: a client certificate's common name names the v2 auth user.
    pub client_cert_auth: bool,
    /// Peer TLS listeners check a member's certificate against its address (etcd's
    /// `checkSAN`); off with `--experimental-peer-skip-client-san-verification`.
    pub peer_san_check: bool,
    /// `--discovery`: a new member learns `initial_cluster` from the discovery service
    /// before it starts (`startup::discover`).
    pub discovery: Option<crate::discovery::Settings>,
}

/// A snapshot the member restarted from: its index and the store state.
type Restored = Option<(u64, Vec<u8>)>;

/// Errors that stop a member from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// This member's peer URLs are not in `--initial-cluster`.
    #[error("couldn't find local name {name:?} in the initial cluster configuration")]
    NotInInitialCluster { name: String },
    /// raft-rs refused the configuration.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The WAL could not be created or read.
    #[error("{0}")]
    Wal(#[from] oxcd_wal::Error),
    /// The snapshot's store state cannot be read.
    #[error("snap: cannot restore the store: {0}")]
    Snapshot(String),
    /// The WAL's metadata is not a member and cluster ID.
    #[error("wal: metadata in {0} is not a member ID and a cluster ID")]
    BadMetadata(String),
    /// Joining a running cluster failed before anything was written.
    #[error("{0}")]
    Join(String),
    /// Creating the data directory failed.
    #[error("cannot create data dir {0}: {1}")]
    DataDir(String, std::io::Error),
}

/// WAL metadata: member ID and cluster ID, 8 bytes each, big-endian.
fn wal_metadata(member: u64, cluster: u64) -> Vec<u8> {
    let mut m = member.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster.to_be_bytes());
    m
}

/// A running cluster this member joins (`--initial-cluster-state existing` with an empty
/// data dir), as its members describe it on their peer URLs.
#[derive(Debug, Clone)]
pub struct RemoteCluster {
    /// The cluster's ID (`X-Etcd-Cluster-ID`).
    pub cluster_id: u64,
    /// Its members, this one included (it was added with `member add` first).
    pub members: Vec<Member>,
}

/// Who this member is and how its log starts, decided by what is on disk and the flags.
struct Opened {
    storage: crate::raft::storage::RaftStorage,
    restored: Restored,
    member_id: u64,
    cluster_id: u64,
    /// Where peers are reached until the log's membership is applied.
    initial_members: Vec<Member>,
}

/// The member ID and cluster ID of a WAL's metadata.
fn parse_wal_metadata(m: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_be_bytes(m.get(0..8)?.try_into().ok()?);
    let cid = u64::from_be_bytes(m.get(8..16)?.try_into().ok()?);
    Some((id, cid))
}

/// Whether the member has a WAL already (a restart: the flags that bootstrap a cluster
/// are then ignored, as etcd ignores them).
pub fn has_wal(opts: &ServerOptions) -> bool {
    oxcd_wal::Wal::exists(&wal_dir(opts))
}

fn wal_dir(opts: &ServerOptions) -> std::path::PathBuf {
    opts.wal_dir
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("member").join("wal"))
}

/// Opens (restart) or creates (new or joining member) the WAL and the log storage over it.
fn open_storage(
    opts: &ServerOptions,
    remote: Option<&RemoteCluster>,
) -> Result<Opened, BootstrapError> {
    use crate::raft::storage::SnapshotFiles;
    let member_dir = opts.data_dir.join("member");
    let wal_dir = wal_dir(opts);
    // Every directory made here is made durable (its parent fsynced): a crash right after
    // the first WAL write must not lose `member/` itself. The WAL makes its own directory.
    let mut made = oxcd_wal::create_dir_all_durable(&member_dir)?;
    if let Some(parent) = wal_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        made.extend(oxcd_wal::create_dir_all_durable(parent)?);
    }
    for dir in made {
        tracing::info!(dir = %dir.display(), "server: created directory");
    }
    // etcd's 64 MB; `OXCD_WAL_SEGMENT_BYTES` shrinks it so tests see many cuts.
    let seg = std::env::var("OXCD_WAL_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n >= 4096)
        .unwrap_or(oxcd_wal::DEFAULT_SEGMENT_SIZE);
    let (snapshotter, stale) = oxcd_wal::Snapshotter::open(&member_dir.join("snap"))?;
    for file in stale {
        tracing::warn!(file = %file.display(), "snap: removed a temporary file left by a crash");
    }
    let files = |snapshotter| SnapshotFiles {
        snapshotter,
        max_snapshots: opts.max_snapshots,
        max_wals: opts.max_wals,
    };
    let flags_cluster = Cluster::from_initial(&opts.initial_cluster, &opts.initial_cluster_token);
    if oxcd_wal::Wal::exists(&wal_dir) {
        let started = std::time::Instant::now();
        let recovered = crate::raft::storage::recover(&wal_dir, &snapshotter, seg)?;
        if let Some(where_) = &recovered.repaired {
            tracing::warn!(at = %where_, "wal: torn tail truncated (crash during a write)");
        }
        for file in &recovered.removed_temporaries {
            tracing::warn!(file = %file.display(), "wal: removed a temporary file left by a crash");
        }
        // As etcd: a member that has a WAL is who its WAL says; the bootstrap flags only
        // mattered the first time (a member whose peer URLs were updated restarts with new
        // ones and keeps its ID).
        let (member_id, cluster_id) = parse_wal_metadata(&recovered.metadata)
            .ok_or_else(|| BootstrapError::BadMetadata(wal_dir.display().to_string()))?;
        let mut storage = recovered.storage;
        let direct_io = storage.direct_io();
        storage.attach_snapshots(files(snapshotter));
        storage.purge_now();
        let snap = recovered.snapshot;
        tracing::info!(
            entries = recovered.entries,
            commit = recovered.hard_state.commit,
            took_ms = started.elapsed().as_millis() as u64,
            wal = %wal_dir.display(),
            direct_io,
            snapshot_index = snap.as_ref().map(|s| s.index).unwrap_or(0),
            "wal: recovered log, replaying committed entries"
        );
        let (id_s, cid_s) = (
            crate::membership::id_to_string(member_id),
            crate::membership::id_to_string(cluster_id),
        );
        if opts.force_new_cluster {
            let me = Member {
                id: member_id,
                name: opts.name.clone(),
                peer_urls: opts.peer_urls.clone(),
                client_urls: Vec::new(),
            };
            let context = serde_json::to_vec(&me).expect("member encodes");
            let (commit, removed) = storage.force_new_cluster(member_id, context)?;
            tracing::warn!(
                removed = ?removed.iter().map(|&id| crate::membership::id_to_string(id)).collect::<Vec<_>>(),
                "forcing restart of member {id_s} in cluster {cid_s} at commit index {commit}"
            );
            tracing::warn!("--force-new-cluster: this member is now a one-member cluster; unsafe if the other members still run (they must be stopped for good)");
        } else {
            tracing::info!(
                "restarting member {id_s} in cluster {cid_s} at commit index {}",
                recovered.hard_state.commit
            );
        }
        return Ok(Opened {
            storage,
            restored: snap.map(|s| (s.index, s.data)),
            member_id,
            cluster_id,
            initial_members: flags_cluster.members,
        });
    }
    if let Some(remote) = remote {
        let me = remote
            .members
            .iter()
            .find(|m| {
                let (mut a, mut b) = (m.peer_urls.clone(), opts.peer_urls.clone());
                a.sort();
                b.sort();
                a == b
            })
            .ok_or_else(|| BootstrapError::NotInInitialCluster {
                name: opts.name.clone(),
            })?;
        let wal = oxcd_wal::Wal::create(&wal_dir, &wal_metadata(me.id, remote.cluster_id), seg)?;
        let storage = crate::raft::storage::RaftStorage::new_empty();
        storage.attach_wal(wal);
        storage.attach_snapshots(files(snapshotter));
        tracing::info!(
            wal = %wal_dir.display(),
            member = %crate::membership::id_to_string(me.id),
            cluster = %crate::membership::id_to_string(remote.cluster_id),
            "wal: created for a member joining a running cluster"
        );
        return Ok(Opened {
            storage,
            restored: None,
            member_id: me.id,
            cluster_id: remote.cluster_id,
            initial_members: remote.members.clone(),
        });
    }
    let me = flags_cluster
        .member_by_peer_urls(&opts.peer_urls)
        .filter(|m| m.name == opts.name)
        .or_else(|| {
            opts.initial_cluster_from_srv
                .then(|| flags_cluster.member_by_name(&opts.name))
                .flatten()
        })
        .ok_or_else(|| BootstrapError::NotInInitialCluster {
            name: opts.name.clone(),
        })?
        .clone();
    let bootstrap: Vec<(u64, Vec<u8>)> = flags_cluster
        .members
        .iter()
        .map(|m| (m.id, serde_json::to_vec(m).expect("member encodes")))
        .collect();
    let storage = crate::raft::storage::create_on_disk(
        &wal_dir,
        &wal_metadata(me.id, flags_cluster.id),
        &bootstrap,
        seg,
    )?;
    tracing::info!(
        wal = %wal_dir.display(),
        direct_io = storage.direct_io(),
        "wal: created for a new member"
    );
    storage.attach_snapshots(files(snapshotter));
    Ok(Opened {
        storage,
        restored: None,
        member_id: me.id,
        cluster_id: flags_cluster.id,
        initial_members: flags_cluster.members,
    })
}

/// Builds the shared state and starts the raft thread: a new member of a new cluster, a
/// member joining the running cluster `remote`, or a restarted one.
pub fn start(
    opts: &ServerOptions,
    remote: Option<&RemoteCluster>,
) -> Result<EtcdServer, BootstrapError> {
    let Opened {
        storage,
        restored,
        member_id,
        cluster_id,
        initial_members,
    } = open_storage(opts, remote)?;
    let me = Member {
        id: member_id,
        name: opts.name.clone(),
        peer_urls: opts.peer_urls.clone(),
        client_urls: Vec::new(),
    };
    let cluster = Cluster {
        id: cluster_id,
        members: initial_members,
    };
    let status = Arc::new(RaftStatus::default());
    let shared = Arc::new(Shared {
        store: RwLock::new({
            let mut store = Store::new(&[STORE_CLUSTER_PREFIX, STORE_KEYS_PREFIX]);
            // The applier answers a batch's writers before it wakes their watchers.
            store.defer_notifications();
            store
        }),
        wait: Wait::default(),
        members: Arc::new(RwLock::new(BTreeMap::new())),
        removed: Arc::default(),
        membership_generation: Arc::default(),
        received_snapshot_view: std::sync::Mutex::new(None),
        peer_activity: Arc::default(),
        cluster_version: RwLock::new(None),
        status: Arc::clone(&status),
        ids: IdGenerator::new(me.id, SystemTime::now()),
        member_id: me.id,
        leader_stats: Arc::default(),
        name: opts.name.clone(),
        client_urls: opts.client_urls.clone(),
        cluster_id: cluster.id,
        start_time: SystemTime::now(),
        auth_enabled: AtomicBool::new(false),
        has_ttl_keys: AtomicBool::new(false),
        ready: tokio::sync::watch::channel(false).0,
    });
    let mut applied = 0;
    let mut view = MembershipView::default();
    if let Some((index, data)) = restored {
        let mut store = shared.store.write().unwrap_or_else(|e| e.into_inner());
        store
            .recovery(&data)
            .map_err(|e| BootstrapError::Snapshot(e.to_string()))?;
        let (members, version) = apply::members_from_store(&store);
        let removed = apply::removed_from_store(&store);
        view = apply::view_of(&members, &removed);
        *shared.members.write().unwrap_or_else(|e| e.into_inner()) = members;
        *shared.removed.write().unwrap_or_else(|e| e.into_inner()) = removed;
        shared.set_cluster_version(version);
        shared.refresh_auth(&store);
        shared
            .has_ttl_keys
            .store(store.has_ttl_keys(), Ordering::Relaxed);
        applied = index;
        tracing::info!(index, "snap: store restored from snapshot");
    }
    let tick = opts.heartbeat.max(Duration::from_millis(1));
    let election_ticks = (opts.election_timeout.as_millis() / tick.as_millis().max(1)) as usize;
    let cfg = crate::raft::RaftConfig {
        id: me.id,
        tick,
        election_ticks,
        applied,
        snapshot_count: opts.snapshot_count,
        background_snapshots: true,
        pre_vote: opts.pre_vote,
        apply_thread: true,
        fixed_election_timeout: false,
    };
    let applier = apply::ServerApplier::new(Arc::clone(&shared), view);
    let (handle, inputs) = RaftHandle::channel();
    let transport = crate::transport::PeerTransport::new(
        crate::transport::LocalIdentity {
            member_id: me.id,
            cluster_id: cluster.id,
        },
        crate::transport::MembershipHandles {
            members: Arc::clone(&shared.members),
            removed: Arc::clone(&shared.removed),
            generation: Arc::clone(&shared.membership_generation),
            activity: Arc::clone(&shared.peer_activity),
        },
        &cluster.members,
        handle.clone(),
        Arc::clone(&shared.leader_stats),
        tokio::runtime::Handle::current(),
        opts.peer_tls.clone().map(tokio_rustls::TlsConnector::from),
    );
    let node = crate::raft::RaftNode::new(&cfg, storage, applier, transport, status)?;
    let _join = node.spawn(tick, inputs);
    tracing::info!(
        member = %crate::membership::id_to_string(me.id),
        cluster = %crate::membership::id_to_string(cluster.id),
        name = %opts.name,
        "server: started member"
    );
    // etcd's request timeout: 5 s plus two election timeouts.
    let request_timeout = Duration::from_secs(5) + 2 * opts.election_timeout;
    let mut server = EtcdServer::new(
        shared,
        handle,
        request_timeout,
        opts.peer_urls.clone(),
        opts.max_request_bytes,
    );
    server.enable_v2 = opts.enable_v2;
    server.auth.client_cert_auth = opts.client_cert_auth;
    server.peer_san_check = opts.peer_san_check;
    server.strict_reconfig_check = opts.strict_reconfig_check;
    server.cors =
        (!opts.cors.is_empty() && !opts.cors.iter().any(|o| o == "*")).then(|| opts.cors.clone());
    Ok(server)
}
