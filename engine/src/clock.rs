//! The wall clock, read at the edges only: the core takes times as arguments.
use crate::scheduler::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// The current wall-clock time, in the record's unit (milliseconds since the Unix epoch).
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}
