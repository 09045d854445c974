//! oxcd-tests
