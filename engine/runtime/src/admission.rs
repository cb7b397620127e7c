//! What one engine lets run at once: a call slot (its share of descriptors and pooled
//! instance slots) and the guest's memory cap out of an engine-wide memory budget. Sixteen
//! parallel guests at the default 256 MiB cap may need 4 GiB: admitted against the budget, the
//! seventeenth waits for memory instead of the engine being OOM-killed.
//!
//! A guest is admitted for its whole cap (`limits.memory`), not what it happens to use: the
//! budget is a promise that every admitted guest can grow to its cap.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The budget is counted in MiB (a semaphore's permits).
const MIB: u64 = 1 << 20;
/// The smallest budget, whatever the machine says: one default guest and a little more.
const MIN_BUDGET: u64 = 512 * MIB;

/// Set by `--guest-memory` / `SLUICE_GUEST_MEMORY` before any runtime is built (0: default).
static CONFIGURED: AtomicU64 = AtomicU64::new(0);

/// Set the engine-wide guest memory budget (bytes; 0 for the default).
pub fn set_guest_memory_budget(bytes: u64) {
    CONFIGURED.store(bytes, Ordering::Relaxed);
}

/// The budget in force: the configured one, else half of the memory this process may use
/// (the machine's, or its cgroup's limit when lower), at least 512 MiB.
pub fn guest_memory_budget() -> u64 {
    match CONFIGURED.load(Ordering::Relaxed) {
        0 => (usable_memory() / 2).max(MIN_BUDGET),
        n => n.max(MIB),
    }
}

/// Memory this process may use: the machine's, or its cgroup's limit (v2 or v1) if lower.
fn usable_memory() -> u64 {
    static USABLE: OnceLock<u64> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(4 << 30);
        cgroup_limit().map_or(total, |limit| limit.min(total))
    })
}

fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            let file = if id == "0" && controllers.is_empty() {
                std::path::Path::new("/sys/fs/cgroup")
                    .join(path)
                    .join("memory.max")
            } else if controllers.split(',').any(|c| c == "memory") {
                std::path::Path::new("/sys/fs/cgroup/memory")
                    .join(path)
                    .join("memory.limit_in_bytes")
            } else {
                return None;
            };
            std::fs::read_to_string(file)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .min()
}

/// Call slots and the memory budget.
pub(crate) struct Admission {
    calls: Semaphore,
    memory: Semaphore,
    /// The budget in MiB.
    memory_mib: u32,
}

/// What an admitted call holds until it ends.
pub(crate) struct Admitted<'a> {
    _call: SemaphorePermit<'a>,
    _memory: SemaphorePermit<'a>,
}

impl Admission {
    pub(crate) fn new(calls: usize, memory_budget: u64) -> Self {
        let memory_mib = (memory_budget / MIB).clamp(1, u32::MAX as u64) as u32;
        Admission {
            calls: Semaphore::new(calls),
            memory: Semaphore::new(memory_mib as usize),
            memory_mib,
        }
    }

    /// Wait for a call slot and for `memory` bytes of the budget (a cap above the whole
    /// budget waits for all of it).
    pub(crate) async fn admit(&self, memory: u64) -> Admitted<'_> {
        let mib = memory.div_ceil(MIB).clamp(1, self.memory_mib as u64) as u32;
        // Memory first: a call waiting for memory must not hold a slot others could use.
        let memory = self
            .memory
            .acquire_many(mib)
            .await
            .expect("semaphore is never closed");
        let call = self
            .calls
            .acquire()
            .await
            .expect("semaphore is never closed");
        Admitted {
            _call: call,
            _memory: memory,
        }
    }

    /// The budget, bytes.
    pub(crate) fn memory_budget(&self) -> u64 {
        self.memory_mib as u64 * MIB
    }

    /// Budget not taken by running guests, bytes.
    pub(crate) fn memory_free(&self) -> u64 {
        self.memory.available_permits() as u64 * MIB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guests_beyond_the_memory_budget_wait_for_it() {
        let a = Admission::new(16, 512 * MIB);
        let first = a.admit(256 * MIB).await;
        let second = a.admit(256 * MIB).await;
        assert_eq!(a.memory_free(), 0);
        // The third waits until one of the first two ends.
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), a.admit(MIB)).await;
        assert!(third.is_err(), "admitted beyond the budget");
        drop(first);
        let _third = a.admit(200 * MIB).await;
        assert_eq!(a.memory_free(), 56 * MIB);
        drop(second);
        // A cap above the whole budget waits for all of it rather than for ever.
        drop(_third);
        let _all = a.admit(8 << 30).await;
        assert_eq!(a.memory_free(), 0);
    }

    #[test]
    fn the_default_budget_is_half_the_usable_memory() {
        set_guest_memory_budget(0);
        let b = guest_memory_budget();
        assert!(b >= MIN_BUDGET);
        assert!(b <= usable_memory().max(2 * MIN_BUDGET));
    }
}
