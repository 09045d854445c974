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

#[cfg(test)]
mod tests {
    use super::*;

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
