//! The replicated request: what one raft log entry of kind `EntryNormal` carries.
//!
//! Requests are typed at parse time (the HTTP layer decides whether a PUT is a set, a create,
//! an update or a compare-and-swap), so apply never re-interprets strings. The encoding is
//! postcard (compact varints, serde): adding a variant at the end of an enum keeps every
//! existing log readable, which is how membership and a v3 request kind join later.
//!
//! Every request carries an `id` unique within the cluster's lifetime (member-ID prefix +
//! time + counter, see [`IdGenerator`]); the member that proposed it uses the ID to find the
//! client waiting for the result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One entry's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftRequest {
    /// Proposal ID, matched to the waiting client on the proposing member.
    pub id: u64,
    /// What to do.
    pub body: RequestBody,
}

/// The kinds of replicated requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestBody {
    /// A v2 keys API write or quorum read.
    V2(V2Request),
    /// The leader's clock, proposed periodically while TTL keys exist: every member expires
    /// the keys whose expiry is before `time_unix_nanos` when it applies this entry.
    Sync { time_unix_nanos: i64 },
    /// A member publishes its name and client URLs (written to `/0/members/<id>/attributes`).
    PublishAttributes {
        member_id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// The leader records the cluster version (`/0/version`).
    ClusterVersion { version: String },
}

/// Absolute expiry of a write, decided by the member that received the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Expiry {
    /// Unix nanoseconds at which the node expires; `None` = permanent.
    pub at_unix_nanos: Option<i64>,
    /// Refresh the TTL of an existing node without changing its value or notifying watchers.
    pub refresh: bool,
}

impl Expiry {
    /// The expiry as the store's option set.
    pub fn to_ttl_options(self) -> oxcd_v2store::TtlOptions {
        oxcd_v2store::TtlOptions {
            expire_time: self.at_unix_nanos.map(unix_nanos_to_time),
            refresh: self.refresh,
        }
    }
}

/// A v2 keys API request that goes through raft. Paths are full store paths (`/1/...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum V2Request {
    /// PUT without preconditions.
    Set {
        path: String,
        value: String,
        dir: bool,
        expiry: Expiry,
    },
    /// PUT with `prevExist=false` (`unique=false`), or POST (`unique=true`: in-order key).
    Create {
        path: String,
        value: String,
        dir: bool,
        unique: bool,
        expiry: Expiry,
    },
    /// PUT with `prevExist=true` and no other precondition.
    Update {
        path: String,
        value: String,
        expiry: Expiry,
    },
    /// PUT with `prevValue` and/or `prevIndex`.
    CompareAndSwap {
        path: String,
        prev_value: String,
        prev_index: u64,
        value: String,
        expiry: Expiry,
    },
    /// DELETE without preconditions.
    Delete {
        path: String,
        dir: bool,
        recursive: bool,
    },
    /// DELETE with `prevValue` and/or `prevIndex`.
    CompareAndDelete {
        path: String,
        prev_value: String,
        prev_index: u64,
    },
    /// GET with `quorum=true`: answered at its position in the log.
    QuorumGet {
        path: String,
        recursive: bool,
        sorted: bool,
    },
}

/// More than the bytes an encoded request holds besides its strings' bytes (the tags, the
/// numbers and the strings' lengths as varints).
const ENCODING_OVERHEAD: usize = 96;

impl RequestBody {
    /// The total length of the request's strings.
    fn text_len(&self) -> usize {
        match self {
            RequestBody::V2(v2) => v2.text_len(),
            RequestBody::Sync { .. } => 0,
            RequestBody::PublishAttributes {
                name, client_urls, ..
            } => name.len() + client_urls.iter().map(|u| u.len() + 10).sum::<usize>(),
            RequestBody::ClusterVersion { version } => version.len(),
        }
    }
}

impl V2Request {
    fn text_len(&self) -> usize {
        match self {
            V2Request::Set { path, value, .. }
            | V2Request::Create { path, value, .. }
            | V2Request::Update { path, value, .. } => path.len() + value.len(),
            V2Request::CompareAndSwap {
                path,
                prev_value,
                value,
                ..
            } => path.len() + prev_value.len() + value.len(),
            V2Request::CompareAndDelete {
                path, prev_value, ..
            } => path.len() + prev_value.len(),
            V2Request::Delete { path, .. } | V2Request::QuorumGet { path, .. } => path.len(),
        }
    }

    /// Whether the request only reads.
    pub fn is_read(&self) -> bool {
        matches!(self, V2Request::QuorumGet { .. })
    }

    /// The store path the request names.
    pub fn path(&self) -> &str {
        match self {
            V2Request::Set { path, .. }
            | V2Request::Create { path, .. }
            | V2Request::Update { path, .. }
            | V2Request::CompareAndSwap { path, .. }
            | V2Request::Delete { path, .. }
            | V2Request::CompareAndDelete { path, .. }
            | V2Request::QuorumGet { path, .. } => path,
        }
    }

    /// Whether the request writes the auth records (`/2`, see `crate::auth`).
    pub fn touches_auth(&self) -> bool {
        let p = self.path();
        !self.is_read() && (p == "/2" || p.starts_with("/2/"))
    }
}

impl RaftRequest {
    /// Encodes for the log.
    pub fn encode(&self) -> Vec<u8> {
        // Sized once: growing from empty reallocates several times for a 256-byte value.
        let size = ENCODING_OVERHEAD + self.body.text_len();
        postcard::to_extend(self, Vec::with_capacity(size))
            .expect("encoding an in-memory request cannot fail")
    }

    /// Decodes a log entry's payload.
    pub fn decode(data: &[u8]) -> Result<RaftRequest, postcard::Error> {
        postcard::from_bytes(data)
    }
}

/// Converts Unix nanoseconds to a `SystemTime` (negative values clamp to the epoch).
pub fn unix_nanos_to_time(nanos: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_nanos(nanos.max(0) as u64)
}

/// Converts a `SystemTime` to Unix nanoseconds.
pub fn time_to_unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// Generates request IDs unique across members and restarts: the top 16 bits are the low
/// bits of the member ID, the next 40 bits the start time in milliseconds, the last 8 bits
/// and everything above them a counter (so the counter carries into the time bits, which
/// only moves IDs forward).
#[derive(Debug)]
pub struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGenerator {
    /// A generator for the given member, seeded with the current time.
    pub fn new(member_id: u64, now: SystemTime) -> IdGenerator {
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGenerator {
            prefix: (member_id & 0xffff) << 48,
            suffix: AtomicU64::new((millis << 8) & ((1 << 48) - 1)),
        }
    }

    /// The next unique ID.
    pub fn next(&self) -> u64 {
        let s = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        self.prefix | (s & ((1 << 48) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = RaftRequest {
            id: 42,
            body: RequestBody::V2(V2Request::CompareAndSwap {
                path: "/1/foo".into(),
                prev_value: "a".into(),
                prev_index: 7,
                value: "b".into(),
                expiry: Expiry {
                    at_unix_nanos: Some(1_700_000_000_000_000_000),
                    refresh: false,
                },
            }),
        };
        assert_eq!(RaftRequest::decode(&r.encode()).unwrap(), r);
    }

    /// The encoding is sized once: every kind fits the room reserved for it.
    #[test]
    fn every_kind_fits_its_reserved_size() {
        let long = "v".repeat(100_000);
        let expiry = Expiry {
            at_unix_nanos: Some(i64::MAX),
            refresh: true,
        };
        let bodies = vec![
            RequestBody::V2(V2Request::CompareAndSwap {
                path: long.clone(),
                prev_value: long.clone(),
                prev_index: u64::MAX,
                value: long.clone(),
                expiry,
            }),
            RequestBody::V2(V2Request::Create {
                path: "/1/k".into(),
                value: String::new(),
                dir: true,
                unique: true,
                expiry,
            }),
            RequestBody::V2(V2Request::CompareAndDelete {
                path: long.clone(),
                prev_value: long.clone(),
                prev_index: u64::MAX,
            }),
            RequestBody::Sync {
                time_unix_nanos: i64::MIN,
            },
            RequestBody::PublishAttributes {
                member_id: u64::MAX,
                name: long.clone(),
                client_urls: vec![long.clone(); 300],
            },
            RequestBody::ClusterVersion { version: long },
        ];
        for body in bodies {
            let r = RaftRequest { id: u64::MAX, body };
            let encoded = r.encode();
            assert!(
                encoded.len() <= ENCODING_OVERHEAD + r.body.text_len(),
                "{} bytes for {:?}",
                encoded.len(),
                std::mem::discriminant(&r.body)
            );
            assert_eq!(RaftRequest::decode(&encoded).unwrap(), r);
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(RaftRequest::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn ids_are_unique_and_prefixed() {
        let g = IdGenerator::new(0xabcd_1234, SystemTime::now());
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a >> 48, 0x1234);
    }
}
