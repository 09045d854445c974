//! Routes raft-rs's `slog` records into our `tracing` logs, so elections, term changes and
//! leader changes that the library reports appear in the same one-line-per-event log as the
//! rest of the server (target `oxcd::raft`).

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, KV};

/// A slog drain that re-emits every record as a tracing event.
pub struct TracingDrain;

struct KvCollector(String);

impl slog::Serializer for KvCollector {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Formatting a record's key-values costs more than raft-rs's work around it: skip
        // records that tracing would drop (raft-rs's debug records, in builds that keep them).
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "oxcd::raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "oxcd::raft", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "oxcd::raft", tracing::Level::INFO),
            slog::Level::Debug => tracing::enabled!(target: "oxcd::raft", tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(target: "oxcd::raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvCollector(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "oxcd::raft", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "oxcd::raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "oxcd::raft", "{msg}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "oxcd::raft", "{msg}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "oxcd::raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through tracing.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!())
}
