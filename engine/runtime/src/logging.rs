//! An action's log as the host receives it: the levels of the WIT `log` interface and the sink
//! entries go to (the capabilities that log — `log`, `wasi:http`'s guard — all write here).

/// Log levels, as in the WIT `log` interface.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Receives an action's log entries as they happen.
pub trait LogSink: Send + Sync {
    /// Record one entry.
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]);
}

/// A sink that drops everything (calls whose log nobody keeps).
pub(crate) struct NullLog;
impl LogSink for NullLog {
    fn log(&self, _: Level, _: &str, _: &[(String, String)]) {}
}
