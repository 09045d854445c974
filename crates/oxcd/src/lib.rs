//! oxcd: an etcd-compatible, Raft-replicated key-value store.
//!
//! A write travels through these modules, one step each (see ARCHITECTURE.md):
//!
//! | step | module | what it owns |
//! |---|---|---|
//! | parse | [`http::keys`] `parse_key_request` | form/query → typed request; 2xx error codes; TTL → absolute expiry |
//! | propose | [`server`] `EtcdServer::do_v2` | register a waiter, hand the encoded request to raft |
//! | order + log | [`raft::node`], [`raft::storage`] | the Ready loop; persist before acknowledging |
//! | replicate | [`transport`] | raft messages to peers |
//! | apply | [`server::apply`] → `oxcd-v2store` | committed entries in order; wake the waiter |
//! | answer | [`http::keys`] `event_response` | etcd's JSON and headers |
//!
//! Plain GETs and watches read the store directly under its lock, as etcd serves them.

pub mod auth;
pub mod config;
pub mod discovery;
pub mod failstop;
pub mod http;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod raft;
pub mod server;
pub mod snapshot_child;
pub mod srv;
pub mod startup;
pub mod tls;
pub mod transport;
