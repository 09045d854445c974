//! Peer transport: carries raft messages between members over their peer URLs (etcd's
//! `rafthttp`).
//!
//! Owns one sender task per remote member ([`peer`]), the wire encoding of message batches
//! ([`codec`]) and the leader's view of its followers ([`LeaderStats`]). The receiving side
//! is the peer HTTP handler (`http::peer`), which checks the cluster ID and hands decoded
//! messages to the raft thread.
//!
//! Invariants:
//! - [`PeerTransport::send`] never blocks the raft thread: messages go into a bounded queue
//!   per peer; a full queue drops the message and reports the peer unreachable, and raft
//!   sends again (etcd drops under overload the same way);
//! - every message for a member travels in order on one connection, so raft sees per-peer
//!   FIFO delivery when the network allows it. That connection is a message stream: an
//!   HTTP/1.1 upgrade on `/raft/stream` after which the sender writes frames as messages come
//!   and the receiver steps them as they arrive, with no request or answer per batch (etcd's
//!   stream does the same). A member that does not offer the stream gets batches POSTed to
//!   `/raft`, one request in flight;
//! - snapshots travel on their own request so a large one never delays heartbeats, and
//!   raft always learns whether it arrived ([`RaftInput::SnapshotStatus`]).

pub mod codec;
pub mod peer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;

use crate::membership::Member;
use crate::raft::{RaftHandle, RaftInput};

/// HTTP header carrying the sender's cluster ID (hex), checked on every request.
pub const HEADER_CLUSTER_ID: &str = "X-Etcd-Cluster-ID";
/// HTTP header carrying the sending member's ID (hex).
pub const HEADER_FROM: &str = "X-Server-From";
/// Path message batches are posted to (one request per batch).
pub const PATH_RAFT: &str = "/raft";
/// Path of the message stream: upgraded to [`STREAM_PROTOCOL`], then frames one way.
pub const PATH_STREAM: &str = "/raft/stream";
/// The `Upgrade` protocol name of the message stream.
pub const STREAM_PROTOCOL: &str = "oxcd-raft-stream/1";
/// Path a snapshot message is posted to.
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;

/// Delivery latency and counts of one follower, as `/v2/stats/leader` shows them: per
/// batch, the time to write it to the follower's stream (or a POST's round trip).
#[derive(Debug, Default, Clone)]
pub struct FollowerStats {
    /// Batches delivered.
    pub success: u64,
    /// Batches that failed.
    pub fail: u64,
    /// Latest round trip (ms).
    pub current: f64,
    /// Smallest round trip (ms).
    pub min: f64,
    /// Largest round trip (ms).
    pub max: f64,
    sum: f64,
    sum_sq: f64,
}

impl FollowerStats {
    fn succeed(&mut self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        self.success += 1;
        self.current = ms;
        self.min = if self.success == 1 {
            ms
        } else {
            self.min.min(ms)
        };
        self.max = self.max.max(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Mean round trip (ms).
    pub fn average(&self) -> f64 {
        if self.success == 0 {
            0.0
        } else {
            self.sum / self.success as f64
        }
    }

    /// Standard deviation of the round trips (ms).
    pub fn std_dev(&self) -> f64 {
        if self.success == 0 {
            return 0.0;
        }
        let n = self.success as f64;
        let mean = self.sum / n;
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }
}

/// What the leader knows of its followers' links: filled by the sender tasks for batches
/// that carry leader traffic (appends, heartbeats).
#[derive(Debug, Default)]
pub struct LeaderStats {
    followers: Mutex<BTreeMap<u64, FollowerStats>>,
}

impl LeaderStats {
    /// A copy of every follower's figures, by member ID.
    pub fn followers(&self) -> BTreeMap<u64, FollowerStats> {
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, to: u64, outcome: Result<Duration, ()>) {
        let mut f = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        let s = f.entry(to).or_default();
        match outcome {
            Ok(rtt) => s.succeed(rtt),
            Err(()) => s.fail += 1,
        }
    }
}

/// Since when each peer has been reachable: set when a connection to it opens, cleared
/// when it fails or closes (etcd's `ActiveSince`, read by the strict reconfiguration check).
#[derive(Debug, Default)]
pub struct PeerActivity {
    since: Mutex<HashMap<u64, std::time::Instant>>,
}

impl PeerActivity {
    /// When the current connection to `id` opened; `None` while it is down.
    pub fn active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    fn activate(&self, id: u64) {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert_with(std::time::Instant::now);
    }

    fn deactivate(&self, id: u64) {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// The membership the transport follows at runtime (kept by apply).
#[derive(Clone)]
pub struct MembershipHandles {
    /// Members by ID: where each is reached.
    pub members: Arc<RwLock<BTreeMap<u64, Member>>>,
    /// Removed members: never contacted again.
    pub removed: Arc<RwLock<std::collections::BTreeSet<u64>>>,
    /// Bumped on every change.
    pub generation: Arc<std::sync::atomic::AtomicU64>,
    /// Connection state per peer.
    pub activity: Arc<PeerActivity>,
}

/// Who this member is, as every outgoing request says.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// This member's ID.
    pub member_id: u64,
    /// The cluster ID.
    pub cluster_id: u64,
}

/// Queues of one remote member (its sender tasks end when these are dropped).
struct PeerQueues {
    messages: mpsc::Sender<Message>,
    snapshots: mpsc::Sender<Message>,
    /// The peer URLs its tasks were started with.
    urls: Vec<String>,
}

/// The HTTP transport of a multi-member cluster (HTTPS to `https` peer URLs).
pub struct PeerTransport {
    local: LocalIdentity,
    /// Where members are reached: the applied member list (dynamic) ...
    membership: MembershipHandles,
    /// ... and, until the log's configuration is applied, the one the member started with
    /// (`--initial-cluster`, or the running cluster it joined).
    initial: HashMap<u64, Vec<String>>,
    /// The membership generation the links were last reconciled with.
    seen_generation: u64,
    peers: HashMap<u64, PeerQueues>,
    raft: RaftHandle,
    stats: Arc<LeaderStats>,
    runtime: tokio::runtime::Handle,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl PeerTransport {
    /// A transport that spawns its sender tasks on `runtime` and reports delivery failures
    /// to the raft thread through `raft`.
    pub fn new(
        local: LocalIdentity,
        membership: MembershipHandles,
        initial: &[Member],
        raft: RaftHandle,
        stats: Arc<LeaderStats>,
        runtime: tokio::runtime::Handle,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> PeerTransport {
        let mut transport = PeerTransport {
            local,
            membership,
            initial: initial
                .iter()
                .map(|m| (m.id, m.peer_urls.clone()))
                .collect(),
            seen_generation: 0,
            peers: HashMap::new(),
            raft,
            stats,
            runtime,
            tls,
        };
        // Connected to every member from the start, as etcd's streams are: the strict
        // reconfiguration check asks how long each peer has been reachable.
        let ids: Vec<u64> = transport.initial.keys().copied().collect();
        for id in ids {
            transport.queues(id);
        }
        transport
    }

    fn peer_urls(&self, id: u64) -> Option<Vec<String>> {
        if id == self.local.member_id
            || self
                .membership
                .removed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        {
            return None;
        }
        let members = self
            .membership
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner());
        members
            .get(&id)
            .map(|m| m.peer_urls.clone())
            .filter(|u| !u.is_empty())
            .or_else(|| self.initial.get(&id).cloned())
    }

    /// After a membership change: links to removed members, and to members whose peer URLs
    /// changed, are closed (their tasks end); every current member gets a link.
    fn reconcile(&mut self) {
        let generation = self
            .membership
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            let current = self.peer_urls(id);
            if current.as_ref() != self.peers.get(&id).map(|q| &q.urls) {
                self.peers.remove(&id);
                self.membership.activity.deactivate(id);
                tracing::info!(peer = %crate::membership::id_to_string(id), urls = ?current, "transport: link closed after a membership change");
            }
        }
        let members: Vec<u64> = self
            .membership
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for id in members {
            self.queues(id);
        }
    }

    /// The queues of member `to`, starting its sender tasks on first use.
    fn queues(&mut self, to: u64) -> Option<&PeerQueues> {
        if !self.peers.contains_key(&to) {
            let urls = self.peer_urls(to)?;
            let (mtx, mrx) = mpsc::channel(QUEUE);
            let (stx, srx) = mpsc::channel(1);
            let link = peer::Link {
                to,
                urls: urls.clone(),
                local: self.local.clone(),
                raft: self.raft.clone(),
                stats: Arc::clone(&self.stats),
                tls: self.tls.clone(),
                activity: Arc::clone(&self.membership.activity),
            };
            self.runtime.spawn(peer::run_stream(link.clone(), mrx));
            self.runtime.spawn(peer::run_snapshots(link, srx));
            self.peers.insert(
                to,
                PeerQueues {
                    messages: mtx,
                    snapshots: stx,
                    urls,
                },
            );
        }
        self.peers.get(&to)
    }
}

impl crate::raft::Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        self.reconcile();
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let Some(q) = self.queues(to) else {
                tracing::warn!(to = %format!("{to:x}"), "transport: message to an unknown member dropped");
                continue;
            };
            let queued = if is_snapshot {
                q.snapshots.try_send(m).is_ok()
            } else {
                q.messages.try_send(m).is_ok()
            };
            if !queued {
                tracing::debug!(to = %format!("{to:x}"), snapshot = is_snapshot, "transport: queue full, message dropped");
                let _ = self.raft.send(if is_snapshot {
                    RaftInput::SnapshotStatus {
                        to,
                        delivered: false,
                    }
                } else {
                    RaftInput::Unreachable(to)
                });
            }
        }
    }
}
