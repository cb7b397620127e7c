//! What a cached action sees instead of the world's clock: a fixed time (the guest's random
//! source is seeded where the sandbox is built). The same inputs then give the same result, so
//! a cache hit is what running it again would have produced.
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// 2000-01-01T00:00:00Z, standing still.
pub(super) struct FixedClock;

const Y2K_SECS: u64 = 946_684_800;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(Y2K_SECS)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
