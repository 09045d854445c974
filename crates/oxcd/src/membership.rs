//! Cluster membership: who the members are and how their IDs are derived.
//!
//! Owns the `Member` and `Cluster` types and the deterministic ID derivation that makes the same
//! flags produce the same member and cluster IDs on every machine, as etcd's does:
//! - member ID = first 8 bytes (big-endian) of SHA-1 over the member's sorted peer URLs joined
//!   without separator, followed by the cluster token (and, for members added at runtime, the
//!   Unix time of the addition);
//! - cluster ID = first 8 bytes of SHA-1 over the sorted member IDs, each as 8 big-endian bytes.
//!
//! IDs are printed as lower-case hex without leading zeros (`8e9e05c52164694d`), as etcd prints
//! its `types.ID`.
//!
//! Membership is replicated state: the raft log's configuration changes decide it, and it is also
//! written into the v2 store under `/0/members` (hidden from the keys API) so a snapshot of the
//! store carries it.

use std::collections::{BTreeMap, BTreeSet};

use raft::prelude::{ConfChange, ConfChangeType};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A member's ID formatted as etcd formats `types.ID`.
pub fn id_to_string(id: u64) -> String {
    format!("{id:x}")
}

/// Derives a member ID from its peer URLs and the cluster token.
pub fn compute_member_id(peer_urls: &[String], token: &str, added_at_unix: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    for url in urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    if let Some(t) = added_at_unix {
        hasher.update(t.to_string().as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digest is 20 bytes"))
}

/// Derives the cluster ID from the IDs of the initial members.
pub fn compute_cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digest is 20 bytes"))
}

/// One member of the cluster, as stored in the log's configuration changes and in `/0/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft node ID of the member.
    pub id: u64,
    /// Human-readable name (`--name`); empty until the member has published its attributes.
    pub name: String,
    /// URLs its peers reach it on (`--initial-advertise-peer-urls`).
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on (`--advertise-client-urls`); published after start.
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
}

/// The static view of the cluster a member boots with.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Cluster ID, derived from the initial member IDs.
    pub id: u64,
    /// Members in ID order.
    pub members: Vec<Member>,
}

impl Cluster {
    /// Builds the initial cluster from `--initial-cluster` entries (name, peer URL) and the token;
    /// several entries with one name form one member with several peer URLs.
    pub fn from_initial(entries: &[(String, String)], token: &str) -> Cluster {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (name, url) in entries {
            match grouped.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.clone()),
                None => grouped.push((name.clone(), vec![url.clone()])),
            }
        }
        let mut members: Vec<Member> = grouped
            .into_iter()
            .map(|(name, peer_urls)| Member {
                id: compute_member_id(&peer_urls, token, None),
                name,
                peer_urls,
                client_urls: Vec::new(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Cluster {
            id: compute_cluster_id(&ids),
            members,
        }
    }

    /// The member whose peer URLs are exactly `peer_urls` (order-insensitive).
    pub fn member_by_peer_urls(&self, peer_urls: &[String]) -> Option<&Member> {
        let mut wanted = peer_urls.to_vec();
        wanted.sort();
        self.members.iter().find(|m| {
            let mut have = m.peer_urls.clone();
            have.sort();
            have == wanted
        })
    }

    /// The member with the given name.
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Why a membership change is refused (etcd's `membership` errors, same texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The ID belongs to a member that was removed; IDs are never reused.
    #[error("membership: ID removed")]
    IdRemoved,
    /// The ID is already a member.
    #[error("membership: ID exists")]
    IdExists,
    /// No member has this ID.
    #[error("membership: ID not found")]
    IdNotFound,
    /// Another member already uses one of the peer URLs.
    #[error("membership: peerURL exists")]
    PeerUrlExists,
    /// Removing the only member would leave no cluster at all (raft refuses a
    /// configuration without voters).
    #[error("membership: cannot remove the last member")]
    LastMember,
}

/// One membership change, as a configuration-change entry of the raft log carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A new voting member (its name and client URLs come when it publishes them).
    Add(Member),
    /// The member leaves for good; its ID is never accepted again.
    Remove(u64),
    /// The member's peer URLs change (raft's configuration does not).
    Update { id: u64, peer_urls: Vec<String> },
}

/// What the `context` of a configuration-change entry holds: the member (as the bootstrap
/// entries already carry it) and, for an update, a marker, since raft has no update kind.
#[derive(Serialize, Deserialize)]
struct ConfContext {
    #[serde(flatten)]
    member: Member,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    update: bool,
}

impl MemberChange {
    /// The member the change is about.
    pub fn member_id(&self) -> u64 {
        match self {
            MemberChange::Add(m) => m.id,
            MemberChange::Remove(id) | MemberChange::Update { id, .. } => *id,
        }
    }

    /// The configuration-change entry for this change; `request_id` finds the waiting
    /// client on the member that proposed it.
    pub fn to_conf_change(&self, request_id: u64) -> ConfChange {
        let mut cc = ConfChange {
            id: request_id,
            node_id: self.member_id(),
            ..Default::default()
        };
        let (kind, context) = match self {
            MemberChange::Add(m) => (
                ConfChangeType::AddNode,
                ConfContext {
                    member: m.clone(),
                    update: false,
                },
            ),
            MemberChange::Remove(id) => (
                ConfChangeType::RemoveNode,
                ConfContext {
                    member: Member {
                        id: *id,
                        name: String::new(),
                        peer_urls: Vec::new(),
                        client_urls: Vec::new(),
                    },
                    update: false,
                },
            ),
            MemberChange::Update { id, peer_urls } => (
                ConfChangeType::AddNode,
                ConfContext {
                    member: Member {
                        id: *id,
                        name: String::new(),
                        peer_urls: peer_urls.clone(),
                        client_urls: Vec::new(),
                    },
                    update: true,
                },
            ),
        };
        cc.set_change_type(kind);
        cc.context = serde_json::to_vec(&context)
            .expect("a member encodes")
            .into();
        cc
    }

    /// Reads a committed configuration-change entry. An entry whose context cannot be read
    /// is still a change of `node_id` (with no peer URLs known).
    pub fn from_conf_change(cc: &ConfChange) -> MemberChange {
        let context: Option<ConfContext> = serde_json::from_slice(&cc.context).ok();
        match cc.get_change_type() {
            ConfChangeType::RemoveNode => MemberChange::Remove(cc.node_id),
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => match context {
                Some(c) if c.update => MemberChange::Update {
                    id: cc.node_id,
                    peer_urls: c.member.peer_urls,
                },
                Some(c) => MemberChange::Add(Member {
                    id: cc.node_id,
                    ..c.member
                }),
                None => MemberChange::Add(Member {
                    id: cc.node_id,
                    name: String::new(),
                    peer_urls: Vec::new(),
                    client_urls: Vec::new(),
                }),
            },
        }
    }
}

/// Who the members are, as far as changing them is concerned: their peer URLs and the IDs
/// removed for good. Kept by the raft thread in log order (every member decides every
/// change the same way, at the same index) and rebuilt from the store's `/0` after a
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Peer URLs by member ID.
    pub members: BTreeMap<u64, Vec<String>>,
    /// IDs of removed members.
    pub removed: BTreeSet<u64>,
}

impl MembershipView {
    /// Whether `change` may be applied (etcd's `ValidateConfigurationChange`).
    pub fn check(&self, change: &MemberChange) -> Result<(), MemberError> {
        let id = change.member_id();
        if self.removed.contains(&id) {
            return Err(MemberError::IdRemoved);
        }
        let urls_taken = |urls: &[String]| {
            self.members
                .iter()
                .filter(|(other, _)| **other != id)
                .flat_map(|(_, u)| u.iter())
                .any(|u| urls.contains(u))
        };
        match change {
            MemberChange::Add(m) => {
                if self.members.contains_key(&id) {
                    return Err(MemberError::IdExists);
                }
                if urls_taken(&m.peer_urls) {
                    return Err(MemberError::PeerUrlExists);
                }
            }
            MemberChange::Remove(_) => {
                if !self.members.contains_key(&id) {
                    return Err(MemberError::IdNotFound);
                }
                if self.members.len() == 1 {
                    return Err(MemberError::LastMember);
                }
            }
            MemberChange::Update { peer_urls, .. } => {
                if !self.members.contains_key(&id) {
                    return Err(MemberError::IdNotFound);
                }
                if urls_taken(peer_urls) {
                    return Err(MemberError::PeerUrlExists);
                }
            }
        }
        Ok(())
    }

    /// Applies a change that passed [`Self::check`].
    pub fn apply(&mut self, change: &MemberChange) {
        match change {
            MemberChange::Add(m) => {
                self.members.insert(m.id, m.peer_urls.clone());
            }
            MemberChange::Remove(id) => {
                self.members.remove(id);
                self.removed.insert(*id);
            }
            MemberChange::Update { id, peer_urls } => {
                self.members.insert(*id, peer_urls.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str) -> Member {
        Member {
            id,
            name: String::new(),
            peer_urls: vec![url.to_string()],
            client_urls: Vec::new(),
        }
    }

    #[test]
    fn changes_round_trip_through_conf_change_entries() {
        for change in [
            MemberChange::Add(member(7, "http://a:1")),
            MemberChange::Remove(7),
            MemberChange::Update {
                id: 7,
                peer_urls: vec!["http://b:2".into()],
            },
        ] {
            let cc = change.to_conf_change(99);
            assert_eq!(cc.id, 99);
            assert_eq!(MemberChange::from_conf_change(&cc), change);
        }
        // The bootstrap entries carry a plain member as context.
        let mut cc = ConfChange {
            node_id: 3,
            ..Default::default()
        };
        cc.context = serde_json::to_vec(&member(3, "http://c:3")).unwrap().into();
        assert_eq!(
            MemberChange::from_conf_change(&cc),
            MemberChange::Add(member(3, "http://c:3"))
        );
    }

    /// etcd's rules: removed IDs never come back, IDs and peer URLs are unique, an update
    /// may keep the member's own URLs.
    #[test]
    fn changes_are_checked_as_etcd_checks_them() {
        let mut v = MembershipView::default();
        let add1 = MemberChange::Add(member(1, "http://a:1"));
        assert_eq!(v.check(&add1), Ok(()));
        v.apply(&add1);
        assert_eq!(v.check(&add1), Err(MemberError::IdExists));
        assert_eq!(
            v.check(&MemberChange::Add(member(2, "http://a:1"))),
            Err(MemberError::PeerUrlExists)
        );
        assert_eq!(
            v.check(&MemberChange::Remove(5)),
            Err(MemberError::IdNotFound)
        );
        let same = MemberChange::Update {
            id: 1,
            peer_urls: vec!["http://a:1".into()],
        };
        assert_eq!(v.check(&same), Ok(()));
        v.apply(&MemberChange::Add(member(2, "http://b:1")));
        assert_eq!(
            v.check(&MemberChange::Update {
                id: 1,
                peer_urls: vec!["http://b:1".into()],
            }),
            Err(MemberError::PeerUrlExists)
        );
        v.apply(&MemberChange::Remove(2));
        assert_eq!(
            v.check(&MemberChange::Remove(1)),
            Err(MemberError::LastMember)
        );
        for change in [
            MemberChange::Remove(2),
            MemberChange::Add(member(2, "http://z:1")),
            MemberChange::Update {
                id: 2,
                peer_urls: vec![],
            },
        ] {
            assert_eq!(v.check(&change), Err(MemberError::IdRemoved));
        }
        // A removed member's URLs are free again.
        assert_eq!(v.check(&MemberChange::Add(member(3, "http://b:1"))), Ok(()));
    }

    /// etcd's default one-member cluster (`--name default`, peer URL http://localhost:2380,
    /// token etcd-cluster) has member 8e9e05c52164694d in cluster cdf818194e3a8c32.
    #[test]
    fn default_cluster_ids_match_etcd() {
        let c = Cluster::from_initial(
            &[("default".into(), "http://localhost:2380".into())],
            "etcd-cluster",
        );
        assert_eq!(id_to_string(c.members[0].id), "8e9e05c52164694d");
        assert_eq!(id_to_string(c.id), "cdf818194e3a8c32");
    }

    #[test]
    fn ids_depend_on_token_and_sort_urls() {
        let a = compute_member_id(&["http://b:2380".into(), "http://a:2380".into()], "t", None);
        let b = compute_member_id(&["http://a:2380".into(), "http://b:2380".into()], "t", None);
        let c = compute_member_id(&["http://a:2380".into(), "http://b:2380".into()], "u", None);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn same_name_groups_urls() {
        let c = Cluster::from_initial(
            &[
                ("a".into(), "http://1:2380".into()),
                ("a".into(), "http://2:2380".into()),
                ("b".into(), "http://3:2380".into()),
            ],
            "tok",
        );
        assert_eq!(c.members.len(), 2);
        let a = c.member_by_name("a").unwrap();
        assert_eq!(a.peer_urls.len(), 2);
        assert!(c
            .member_by_peer_urls(&["http://2:2380".into(), "http://1:2380".into()])
            .is_some());
    }
}
