//! Wake-ups for callers of `start` waiting for the execution their trigger event starts.
//!
//! A caller of `start` publishes the trigger like any publisher and waits until an engine has
//! recorded its execution. Reading the store in a loop for that cost every waiting caller a
//! read per pause, and under a flood (hundreds of starts in flight) those reads took the cores
//! another tenant's start was waiting for. The engine that records an execution now wakes the
//! callers waiting in its own process at once; a caller whose event another engine took (NATS)
//! still finds the record by reading now and then.
//!
//! The wake-up names the execution, recorded by then: the woken caller answers at once. Reading
//! the claim and the record again after it cost three store round trips, each a few milliseconds
//! under another tenant's flood.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The callers waiting in this process, by the claim key of their event.
#[derive(Default)]
pub(in crate::service) struct Awaited {
    waiting: Mutex<HashMap<String, Arc<Slot>>>,
}

/// Where the callers of one event wait, and the execution it started once recorded.
#[derive(Default)]
struct Slot {
    notify: Notify,
    recorded: Mutex<Option<String>>,
}

/// One caller's place among the waiting; leaves when dropped.
pub(in crate::service) struct Waiter<'a> {
    awaited: &'a Awaited,
    claim: String,
    slot: Arc<Slot>,
}

impl Awaited {
    /// Wait for the execution of the event whose claim key is `claim` (taken before the event
    /// is published, so no wake-up comes too early to be seen).
    pub(in crate::service) fn wait_for(&self, claim: &str) -> Waiter<'_> {
        let slot = self
            .waiting
            .lock()
            .unwrap()
            .entry(claim.to_string())
            .or_default()
            .clone();
        Waiter {
            awaited: self,
            claim: claim.to_string(),
            slot,
        }
    }

    /// The execution `id` of the event claimed as `claim` is recorded: wake whoever waits for
    /// it.
    pub(in crate::service) fn wake(&self, claim: &str, id: &str) {
        let waiting = self.waiting.lock().unwrap();
        if let Some(slot) = waiting.get(claim) {
            *slot.recorded.lock().unwrap() = Some(id.to_string());
            // Those waiting now, and (a permit) the one between two looks at the store.
            slot.notify.notify_waiters();
            slot.notify.notify_one();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }
}

impl Waiter<'_> {
    /// The execution, once a wake-up said it is recorded.
    pub(in crate::service) fn recorded(&self) -> Option<String> {
        self.slot.recorded.lock().unwrap().clone()
    }

    /// Until woken, or `pause` has passed (then the caller reads the store itself).
    pub(in crate::service) async fn woken_or(&self, pause: std::time::Duration) {
        let _ = tokio::time::timeout(pause, self.slot.notify.notified()).await;
    }

    /// Until a wake-up says the execution is recorded: its id.
    pub(in crate::service) async fn woken(&self) -> String {
        loop {
            let notified = self.slot.notify.notified();
            if let Some(id) = self.recorded() {
                return id;
            }
            notified.await;
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiting = self.awaited.waiting.lock().unwrap();
        // The map's reference and ours: nobody else waits for this event.
        if Arc::strong_count(&self.slot) <= 2 {
            waiting.remove(&self.claim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost_and_waiters_leave_no_trace() {
        let awaited = Awaited::default();
        {
            let waiter = awaited.wait_for("t/claim/p/1");
            // Woken while the caller reads the store: the next wait returns at once.
            awaited.wake("t/claim/p/1", "E1");
            let t = Instant::now();
            waiter.woken_or(Duration::from_secs(10)).await;
            assert!(t.elapsed() < Duration::from_secs(5));
            assert_eq!(
                waiter.recorded().as_deref(),
                Some("E1"),
                "the wake-up names it"
            );
            // Another event's wake-up does not end this wait early.
            awaited.wake("t/claim/p/2", "E2");
            let t = Instant::now();
            waiter.woken_or(Duration::from_millis(50)).await;
            assert!(t.elapsed() >= Duration::from_millis(50));
        }
        assert_eq!(awaited.len(), 0);
    }

    #[tokio::test]
    async fn every_caller_of_one_event_is_woken() {
        let awaited = Arc::new(Awaited::default());
        let (a, b) = (awaited.wait_for("k"), awaited.wait_for("k"));
        let both = futures_util::future::join(a.woken(), b.woken());
        let t = Instant::now();
        let wake = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            awaited.wake("k", "E");
        };
        let ((a_got, b_got), ()) = futures_util::future::join(both, wake).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!((a_got.as_str(), b_got.as_str()), ("E", "E"));
        drop(a);
        assert_eq!(awaited.len(), 1, "b still waits");
        drop(b);
        assert_eq!(awaited.len(), 0);
    }
}
