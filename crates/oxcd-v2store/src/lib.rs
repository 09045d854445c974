//! oxcd-v2store
