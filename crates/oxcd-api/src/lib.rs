//! Wire types of oxcd's etcd-compatible API, shared by the server, the store and clients.
//!
//! Owns the v2 JSON shapes (`Event`, `NodeExtern`) with etcd's exact field names and
//! omission rules, the one table of v2 error codes (code → message → HTTP status), and the
//! RFC 3339 time format etcd prints, and JSON with Go's escapes ([`json`]). Serde only: no
//! I/O, no clock.

#![forbid(unsafe_code)]

pub mod json;
pub mod time;
pub mod v2;
