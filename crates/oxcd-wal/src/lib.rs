//! oxcd-wal
