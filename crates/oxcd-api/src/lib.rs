//! oxcd-api
