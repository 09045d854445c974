//! Peer transport: carries raft messages between members over the peer URLs.
//!
//! A one-member cluster sends nothing; the HTTP peer transport of multi-member clusters
//! plugs in behind the same [`Transport`](crate::raft::Transport) trait.

use raft::prelude::Message;

/// A transport for a member without peers: any message is a bug in the caller's
/// configuration, so it is logged and dropped.
pub struct NullTransport;

impl crate::raft::Transport for NullTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, "transport: no peer transport, message dropped");
        }
    }
}
