//! Apply: committed log entries become store changes, in log order, exactly once.
//!
//! Owns the mapping from a decoded [`RaftRequest`] to the store operation (etcd's
//! `applyV2Request`), membership updates from configuration changes, and the periodic
//! proposals a member makes on its own (SYNC for TTL expiry, publishing its attributes,
//! the leader's cluster version).
//!
//! Deterministic results (an `Event` or a v2 error such as "key not found") go back to the
//! waiting client; they are the same on every member because the store only sees data from
//! the log — the `now` it receives is used only to compute the `ttl` field of responses.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use raft::prelude::{ConfChange, Entry, Snapshot};

use super::request::{time_to_unix_nanos, unix_nanos_to_time, RaftRequest, RequestBody, V2Request};
use super::{ApplyResult, Outcome, Shared, CLUSTER_VERSION};
use crate::membership::{id_to_string, Member, MemberChange, MembershipView};
use crate::raft::{Applier, ConfDecision, Proposer};

/// How often the leader proposes its clock while TTL keys exist (etcd's SYNC interval).
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How long to wait before retrying a publish or cluster-version proposal.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// This run's publish: proposed by the [`ServerProposer`] on the raft thread, recognized
/// when applied by the [`ServerApplier`] on the apply thread.
#[derive(Default)]
struct Publish {
    /// IDs of the publish requests this run proposed; the first of them applied makes the
    /// member ready (a publish replayed from an earlier run does not: entries acknowledged
    /// before this start may still be unapplied until this run's own publish is).
    ids: Vec<u64>,
    /// This run's publish went through raft.
    done: bool,
}

/// The state machine, driven by the apply thread.
pub struct ServerApplier {
    shared: Arc<Shared>,
    publish: Arc<Mutex<Publish>>,
    /// The membership the raft thread starts from (handed to the proposer).
    view: Option<MembershipView>,
    /// The last snapshot's key runs, which the next one copies where nothing changed (kept
    /// by the snapshot thread when a snapshot is collected).
    snapshot_runs: Arc<Mutex<oxcd_v2store::RunCache>>,
}

/// The raft thread's side: periodic proposals and dropped proposals. It never takes the
/// store lock (a long read there would stop the leader's heartbeats).
pub struct ServerProposer {
    shared: Arc<Shared>,
    publish: Arc<Mutex<Publish>>,
    last_sync: Instant,
    last_publish: Option<Instant>,
    last_version: Option<Instant>,
    /// The membership as of the last configuration change handed to apply: every change
    /// is checked against it, on the raft thread, in log order.
    view: MembershipView,
}

/// Assembles a collected snapshot's bytes and keeps its runs for the next one.
fn keep_runs(
    runs: &Mutex<oxcd_v2store::RunCache>,
    saved: oxcd_v2store::Saved,
) -> Result<Vec<u8>, String> {
    tracing::debug!(
        index = saved.index(),
        reused_keys = saved.reused_keys,
        keys_read = saved.keys_read,
        "snap: snapshot encoded"
    );
    runs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remember(saved)
}

impl ServerApplier {
    /// An applier over the shared server state, whose store holds `view`'s membership.
    pub fn new(shared: Arc<Shared>, view: MembershipView) -> Self {
        ServerApplier {
            shared,
            publish: Arc::default(),
            view: Some(view),
            snapshot_runs: Arc::default(),
        }
    }

    /// Whether the applied request with this ID is this run's own publish (the first one
    /// applied).
    fn is_own_publish(&self, id: u64) -> bool {
        let mut publish = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        if publish.done || !publish.ids.contains(&id) {
            return false;
        }
        publish.done = true;
        publish.ids.clear();
        true
    }

    /// This run's own publish was applied: log it as etcd does and open the client port.
    fn on_published(&mut self) {
        let shared = &self.shared;
        tracing::info!(
            member = %id_to_string(shared.member_id),
            "published {{Name:{} ClientURLs:[{}]}} to cluster {}",
            shared.name,
            shared.client_urls.join(" "),
            id_to_string(shared.cluster_id)
        );
        shared.ready.send_replace(true);
    }

    fn apply_request(
        store: &mut oxcd_v2store::Store,
        shared: &Shared,
        req: RequestBody,
        now: SystemTime,
    ) -> Option<ApplyResult> {
        match req {
            RequestBody::V2(v2) => Some(apply_v2(store, v2, now)),
            RequestBody::Sync { time_unix_nanos } => {
                store.delete_expired_keys(unix_nanos_to_time(time_unix_nanos));
                None
            }
            RequestBody::PublishAttributes {
                member_id,
                name,
                client_urls,
            } => {
                let attrs = serde_json::json!({ "name": name, "clientURLs": client_urls });
                let path = format!("/0/members/{}/attributes", id_to_string(member_id));
                let res = store.set(
                    &path,
                    false,
                    &oxcd_api::json::to_string(&attrs),
                    oxcd_v2store::TtlOptions::default(),
                    now,
                );
                let mut members = shared.members.write().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = members.get_mut(&member_id) {
                    m.name = name;
                    m.client_urls = client_urls;
                }
                Some(res)
            }
            RequestBody::ClusterVersion { version } => {
                let res = store.set(
                    "/0/version",
                    false,
                    &version,
                    oxcd_v2store::TtlOptions::default(),
                    now,
                );
                shared.set_cluster_version(Some(version));
                Some(res)
            }
        }
    }
}

/// Maps a v2 request onto the store.
pub fn apply_v2(store: &mut oxcd_v2store::Store, req: V2Request, now: SystemTime) -> ApplyResult {
    match req {
        V2Request::Set {
            path,
            value,
            dir,
            expiry,
        } => store.set(&path, dir, &value, expiry.to_ttl_options(), now),
        V2Request::Create {
            path,
            value,
            dir,
            unique,
            expiry,
        } => store.create(&path, dir, &value, unique, expiry.to_ttl_options(), now),
        V2Request::Update {
            path,
            value,
            expiry,
        } => store.update(&path, &value, expiry.to_ttl_options(), now),
        V2Request::CompareAndSwap {
            path,
            prev_value,
            prev_index,
            value,
            expiry,
        } => store.compare_and_swap(
            &path,
            &prev_value,
            prev_index,
            &value,
            expiry.to_ttl_options(),
            now,
        ),
        V2Request::Delete {
            path,
            dir,
            recursive,
        } => store.delete(&path, dir, recursive, now),
        V2Request::CompareAndDelete {
            path,
            prev_value,
            prev_index,
        } => store.compare_and_delete(&path, &prev_value, prev_index, now),
        V2Request::QuorumGet {
            path,
            recursive,
            sorted,
        } => store.get(&path, recursive, sorted, now),
    }
}

impl Applier for ServerApplier {
    fn apply_entries(&mut self, entries: &[Entry]) {
        let now = SystemTime::now();
        let shared = Arc::clone(&self.shared);
        let mut results: Vec<(u64, ApplyResult)> = Vec::with_capacity(entries.len());
        let mut auth_changed = false;
        let held = {
            let mut store = shared.store.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                if entry.data.is_empty() {
                    continue;
                }
                let req = match RaftRequest::decode(&entry.data) {
                    Ok(r) => r,
                    Err(e) => {
                        // Every member skips the same undecodable entry, so state stays equal;
                        // it can only come from a newer oxcd whose request kind we don't know.
                        tracing::error!(index = entry.index, error = %e, "apply: undecodable entry skipped");
                        continue;
                    }
                };
                shared
                    .status
                    .proposals_committed
                    .fetch_add(1, Ordering::Relaxed);
                let own_publish = matches!(req.body, RequestBody::PublishAttributes { .. })
                    && self.is_own_publish(req.id);
                if own_publish {
                    self.on_published();
                }
                auth_changed |= matches!(&req.body, RequestBody::V2(v2) if v2.touches_auth());
                if let Some(res) = Self::apply_request(&mut store, &shared, req.body, now) {
                    results.push((req.id, res));
                }
            }
            if auth_changed {
                shared.refresh_auth(&store);
            }
            shared
                .has_ttl_keys
                .store(store.has_ttl_keys(), Ordering::Relaxed);
            store.has_held_notifications()
        };
        // Answer the writers first, after releasing the store lock so they can read at
        // once; then wake the batch's watchers. (A write to a key with 10,000 watchers would
        // otherwise queue its writer's answer behind 10,000 watcher wakeups.)
        shared.wait.trigger_all(
            results
                .into_iter()
                .map(|(id, res)| (id, Outcome::Applied(res)))
                .collect(),
        );
        // Nothing is held back while nobody watches: then no second lock.
        if held {
            shared
                .store
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .flush_notifications();
        }
    }

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange, decision: ConfDecision) {
        let shared = Arc::clone(&self.shared);
        let change = MemberChange::from_conf_change(cc);
        let id_str = id_to_string(change.member_id());
        let cluster = id_to_string(shared.cluster_id);
        if let ConfDecision::Refuse(e) = decision {
            tracing::warn!(index, member = %id_str, error = %e, "membership: change refused");
            shared
                .wait
                .trigger(cc.id, crate::server::Outcome::ConfChanged(Err(e)));
            return;
        }
        let now = SystemTime::now();
        let mut store = shared.store.write().unwrap_or_else(|e| e.into_inner());
        let mut members = shared.members.write().unwrap_or_else(|e| e.into_inner());
        let set = |store: &mut oxcd_v2store::Store, path: String, value: String| {
            let _ = store.set(
                &path,
                false,
                &value,
                oxcd_v2store::TtlOptions::default(),
                now,
            );
        };
        let mut removed_self = false;
        match &change {
            MemberChange::Add(member) => {
                let raft_attrs = serde_json::json!({ "peerURLs": member.peer_urls });
                set(
                    &mut store,
                    format!("/0/members/{id_str}/raftAttributes"),
                    oxcd_api::json::to_string(&raft_attrs),
                );
                tracing::info!(
                    index,
                    "added member {id_str} [{}] to cluster {cluster}",
                    member.peer_urls.join(" ")
                );
                members.entry(member.id).or_insert(Member {
                    id: member.id,
                    name: member.name.clone(),
                    peer_urls: member.peer_urls.clone(),
                    client_urls: Vec::new(),
                });
            }
            MemberChange::Remove(id) => {
                let _ = store.delete(&format!("/0/members/{id_str}"), true, true, now);
                set(
                    &mut store,
                    format!("/0/removed_members/{id_str}"),
                    "removed".to_string(),
                );
                members.remove(id);
                shared
                    .removed
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id);
                tracing::info!(index, "removed member {id_str} from cluster {cluster}");
                removed_self = *id == shared.member_id;
            }
            MemberChange::Update { id, peer_urls } => {
                let raft_attrs = serde_json::json!({ "peerURLs": peer_urls });
                set(
                    &mut store,
                    format!("/0/members/{id_str}/raftAttributes"),
                    oxcd_api::json::to_string(&raft_attrs),
                );
                if let Some(m) = members.get_mut(id) {
                    m.peer_urls = peer_urls.clone();
                }
                tracing::info!(
                    index,
                    "updated member {id_str} [{}] in cluster {cluster}",
                    peer_urls.join(" ")
                );
            }
        }
        drop(members);
        store.flush_notifications();
        drop(store);
        shared.membership_generation.fetch_add(1, Ordering::Release);
        shared
            .wait
            .trigger(cc.id, crate::server::Outcome::ConfChanged(Ok(())));
        if removed_self {
            crate::failstop::removed_from_cluster();
        }
    }

    fn snapshot_job(&mut self) -> crate::raft::SnapshotJob {
        let store = self.shared.store.read().unwrap_or_else(|e| e.into_inner());
        let runs = Arc::clone(&self.snapshot_runs);
        // Only one snapshot is in flight: the previous one's job released the cache.
        let cache = runs.try_lock().ok();
        let none = oxcd_v2store::RunCache::default();
        let cache_ref = cache.as_deref().unwrap_or(&none);
        // The state is fixed here: changes from now on belong to the next epoch.
        let epoch = oxcd_v2store::begin_snapshot();
        // A forked child encodes the store as of this index while entries go on being
        // applied here (see snapshot_child); the snapshot thread collects it.
        let forked =
            crate::snapshot_child::spawn(|| store.save_reusing(cache_ref, epoch).into_bytes());
        let saved = match forked {
            Ok(child) => {
                drop(cache);
                return Box::new(move || {
                    let saved = oxcd_v2store::Saved::from_bytes(child.wait()?)?;
                    keep_runs(&runs, saved)
                });
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "snap: cannot fork to encode the snapshot; encoding it while applying waits"
                );
                // Encoded here, under the read lock (reads go on; applying waits).
                store.save_reusing(cache_ref, epoch)
            }
        };
        drop(cache);
        Box::new(move || keep_runs(&runs, saved))
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        let mut store = self.shared.store.write().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = store.recovery(data) {
            // The leader sent state we cannot read: continuing would serve wrong data.
            tracing::error!(index, error = %e, "apply: cannot restore the snapshot from the leader");
            return Err(format!("cannot restore snapshot at index {index}: {e}"));
        }
        let (members, version) = members_from_store(&store);
        let removed = removed_from_store(&store);
        self.shared.refresh_auth(&store);
        self.shared
            .has_ttl_keys
            .store(store.has_ttl_keys(), Ordering::Relaxed);
        store.flush_notifications();
        drop(store);
        *self
            .shared
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner()) = members;
        let removed_self = removed.contains(&self.shared.member_id);
        *self
            .shared
            .removed
            .write()
            .unwrap_or_else(|e| e.into_inner()) = removed;
        self.shared
            .membership_generation
            .fetch_add(1, Ordering::Release);
        self.shared.set_cluster_version(version);
        tracing::info!(index, "apply: store replaced by the leader's snapshot");
        if removed_self {
            crate::failstop::removed_from_cluster();
        }
        Ok(())
    }

    fn reads_ready(&mut self, ids: &[u64]) {
        self.shared
            .wait
            .trigger_all(ids.iter().map(|&id| (id, Outcome::Readable)).collect());
    }

    fn proposer(&mut self) -> Box<dyn Proposer> {
        Box::new(ServerProposer {
            shared: Arc::clone(&self.shared),
            publish: Arc::clone(&self.publish),
            last_sync: Instant::now(),
            last_publish: None,
            last_version: None,
            view: self.view.take().unwrap_or_default(),
        })
    }
}

impl Proposer for ServerProposer {
    fn periodic(&mut self, is_leader: bool, leader_id: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if leader_id == 0 {
            return out;
        }
        let shared = &self.shared;
        if is_leader && self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.last_sync = Instant::now();
            if shared.has_ttl_keys.load(Ordering::Relaxed) {
                out.push(
                    RaftRequest {
                        id: shared.ids.next(),
                        body: RequestBody::Sync {
                            time_unix_nanos: time_to_unix_nanos(SystemTime::now()),
                        },
                    }
                    .encode(),
                );
            }
        }
        // Every start publishes once through raft, as etcd's does: applying it proves that
        // everything committed before this start is applied here too.
        let mut publish = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        if !publish.done
            && self
                .last_publish
                .is_none_or(|t| t.elapsed() >= RETRY_INTERVAL)
        {
            self.last_publish = Some(Instant::now());
            let id = shared.ids.next();
            publish.ids.push(id);
            out.push(
                RaftRequest {
                    id,
                    body: RequestBody::PublishAttributes {
                        member_id: shared.member_id,
                        name: shared.name.clone(),
                        client_urls: shared.client_urls.clone(),
                    },
                }
                .encode(),
            );
        }
        drop(publish);
        let version_set = shared
            .cluster_version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if is_leader
            && !version_set
            && self
                .last_version
                .is_none_or(|t| t.elapsed() >= RETRY_INTERVAL)
        {
            self.last_version = Some(Instant::now());
            out.push(
                RaftRequest {
                    id: shared.ids.next(),
                    body: RequestBody::ClusterVersion {
                        version: CLUSTER_VERSION.to_string(),
                    },
                }
                .encode(),
            );
        }
        out
    }

    fn proposal_dropped(&mut self, id: u64) {
        self.shared.wait.trigger(id, Outcome::Dropped);
    }

    fn conf_change(&mut self, index: u64, cc: &ConfChange) -> ConfDecision {
        let change = MemberChange::from_conf_change(cc);
        match self.view.check(&change) {
            Err(e) => {
                tracing::debug!(index, error = %e, "membership: refusing a change");
                ConfDecision::Refuse(e)
            }
            Ok(()) => {
                self.view.apply(&change);
                match change {
                    MemberChange::Update { .. } => ConfDecision::Keep,
                    _ => ConfDecision::Change,
                }
            }
        }
    }

    fn snapshot_restored(&mut self, snap: &Snapshot) {
        let index = snap.get_metadata().index;
        let received = self
            .shared
            .received_snapshot_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.view = match received {
            Some((at, view)) if at == index => view,
            _ => match view_of_snapshot(&snap.data) {
                Ok(view) => view,
                Err(e) => {
                    // The apply thread refuses the same data and stops the member.
                    tracing::error!(index, error = %e, "membership: cannot read the snapshot's members");
                    MembershipView::default()
                }
            },
        };
    }
}

/// The membership inside a snapshot's store state.
pub fn view_of_snapshot(data: &[u8]) -> Result<MembershipView, String> {
    let mut store = oxcd_v2store::Store::new(&[]);
    store.recovery(data).map_err(|e| e.to_string())?;
    let (members, _) = members_from_store(&store);
    Ok(view_of(&members, &removed_from_store(&store)))
}

/// The membership view of a member list and removed set.
pub fn view_of(
    members: &std::collections::BTreeMap<u64, Member>,
    removed: &std::collections::BTreeSet<u64>,
) -> MembershipView {
    MembershipView {
        members: members
            .iter()
            .map(|(id, m)| (*id, m.peer_urls.clone()))
            .collect(),
        removed: removed.clone(),
    }
}

/// The IDs under `/0/removed_members`.
pub fn removed_from_store(store: &oxcd_v2store::Store) -> std::collections::BTreeSet<u64> {
    store
        .get("/0/removed_members", true, false, SystemTime::now())
        .ok()
        .and_then(|ev| ev.node.and_then(|mut n| n.nodes.take()))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.key.rsplit('/').next())
        .filter_map(|id| u64::from_str_radix(id, 16).ok())
        .collect()
}

/// Rebuilds the member list and cluster version from the store's `/0` namespace (after a
/// snapshot restore).
pub fn members_from_store(
    store: &oxcd_v2store::Store,
) -> (std::collections::BTreeMap<u64, Member>, Option<String>) {
    let now = SystemTime::now();
    let mut members = std::collections::BTreeMap::new();
    if let Ok(ev) = store.get("/0/members", true, true, now) {
        for mut m in ev.node.and_then(|mut n| n.nodes.take()).unwrap_or_default() {
            let Some(id) = m
                .key
                .rsplit('/')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            else {
                continue;
            };
            let mut member = Member {
                id,
                name: String::new(),
                peer_urls: Vec::new(),
                client_urls: Vec::new(),
            };
            for attr in m.nodes.take().unwrap_or_default() {
                let v: serde_json::Value = attr
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_str(v).ok())
                    .unwrap_or_default();
                let strings = |key: &str| -> Vec<String> {
                    v.get(key)
                        .and_then(|x| x.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                if attr.key.ends_with("/raftAttributes") {
                    member.peer_urls = strings("peerURLs");
                } else if attr.key.ends_with("/attributes") {
                    member.client_urls = strings("clientURLs");
                    member.name = v
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or_default()
                        .to_string();
                }
            }
            members.insert(id, member);
        }
    }
    let version = store
        .get("/0/version", false, false, now)
        .ok()
        .and_then(|ev| ev.node.and_then(|mut n| n.value.take()))
        .map(|v| v.to_string());
    (members, version)
}
