//! Each tenant's API calls take turns: at most [`CALLS`] of one tenant's calls are handled in
//! this engine at once, the rest wait for one of them to end, and past [`WAITING`] waiting a
//! call is refused with `quota_exceeded`. Without turns, every request became a task at once:
//! a tenant with hundreds of calls in flight (a flood of `start`s) put each call of another
//! tenant behind all of its own, on the workers' queues and the store's one connection.
//!
//! `start`s take turns of their own. On a shared queue (NATS), [`STARTS`] at once: a start in
//! hand is a trigger event and store writes on their way through the one server every tenant
//! uses, and each one more in flight is one more message every other tenant's next step waits
//! behind (measured: with 16 of a flooding tenant's starts in hand another tenant's start took
//! 4–5 ms, with 2 about 2; the flooding tenant's own rate fell 15 %). The embedded service has
//! no such server between tenants and keeps [`CALLS`] (with 2, a lone tenant's start rate fell
//! by almost half). Apart from the other calls either way, so a tenant's slow calls (a plugin
//! install) do not hold up its starts, nor its starts its reads.
use sluice_api::{ApiError, Code};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Calls of one tenant handled at once by one engine, starts apart.
pub const CALLS: usize = 16;
/// Starts of one tenant handled at once by one engine on a shared queue.
pub const STARTS: usize = 2;
/// Calls of one tenant waiting for a turn in one engine before more are refused.
pub const WAITING: usize = 4096;
/// How long a call waits for its turn before it is refused (its client's own deadline is
/// usually shorter; a call that waited this long is better refused than handled late).
pub const WAIT_AT_MOST: Duration = Duration::from_secs(30);

/// The turns of every tenant with a call in hand (a tenant leaves the map with its last call,
/// so names nobody authenticated cannot make it grow).
pub(in crate::service) struct Turns {
    tenants: Mutex<HashMap<(String, Kind), Arc<TenantTurns>>>,
    calls: usize,
    /// Read when a tenant's start turns are made (`sluice serve --starts-per-tenant`).
    starts: AtomicUsize,
    waiting: usize,
    wait_at_most: Duration,
}

impl Turns {
    /// The turns of an engine whose queues are its own (`local`: the embedded service) or
    /// shared with other engines on a server.
    pub(in crate::service) fn for_queue(local: bool) -> Self {
        Turns::new(CALLS, if local { CALLS } else { STARTS }, WAITING)
    }
}

/// Which turns a call takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(in crate::service) enum Kind {
    /// `start`.
    Start,
    /// Every other call.
    Other,
}

struct TenantTurns {
    free: Semaphore,
    waiting: AtomicUsize,
}

/// A tenant's turn, given back when dropped (also when the call's task is dropped).
pub(in crate::service) struct Turn<'a> {
    turns: &'a Turns,
    key: (String, Kind),
    /// Taken (and dropped under the map's lock) when the turn ends.
    of: Option<Arc<TenantTurns>>,
    /// Whether the turn was given (a refused or abandoned call holds none).
    held: bool,
}

/// Counts a call as waiting while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Turns {
    /// Turns of `calls` (and `starts`) at once per tenant, refusing past `waiting` waiting.
    pub(in crate::service) fn new(calls: usize, starts: usize, waiting: usize) -> Self {
        Turns {
            tenants: Mutex::default(),
            calls,
            starts: AtomicUsize::new(starts),
            waiting,
            wait_at_most: WAIT_AT_MOST,
        }
    }

    /// Handle `starts` of a tenant's starts at once from now on (at least one; a tenant with
    /// starts in hand keeps its turns until its last one ends).
    pub(in crate::service) fn set_starts(&self, starts: usize) {
        self.starts.store(starts.max(1), Ordering::Relaxed);
    }

    /// Wait for a turn of `tenant`'s of `kind`, or refuse the call when too many wait already.
    pub(in crate::service) async fn take(
        &self,
        tenant: &str,
        kind: Kind,
    ) -> Result<Turn<'_>, ApiError> {
        let at_once = match kind {
            Kind::Start => self.starts.load(Ordering::Relaxed),
            Kind::Other => self.calls,
        };
        let key = (tenant.to_string(), kind);
        let entry = self
            .tenants
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(TenantTurns {
                    free: Semaphore::new(at_once),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone();
        // Made now, so that a refusal below also gives the entry back.
        let mut turn = Turn {
            turns: self,
            key,
            of: Some(entry),
            held: false,
        };
        // Borrowed from the turn: no other handle on the entry outlives it, whichever way
        // this call ends (refused, waited too long, or abandoned by its client).
        let of = turn.of.as_deref().expect("just set");
        if of.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting {
            of.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                Code::QuotaExceeded,
                format!(
                    "tenant `{tenant}` has more than {} API calls waiting in this engine (it handles {at_once} of a tenant's {} at once): send fewer at a time",
                    self.waiting,
                    kind.what()
                ),
            ));
        }
        let waiting = Waiting(&of.waiting);
        match tokio::time::timeout(self.wait_at_most, of.free.acquire()).await {
            Ok(permit) => permit.expect("the semaphore is never closed").forget(),
            Err(_) => {
                return Err(ApiError::new(
                    Code::QuotaExceeded,
                    format!(
                        "tenant `{tenant}`'s API call waited {} s for one of the {at_once} {} this engine handles at once for a tenant: send fewer at a time",
                        self.wait_at_most.as_secs(),
                        kind.what()
                    ),
                ));
            }
        }
        drop(waiting);
        turn.held = true;
        Ok(turn)
    }
}

impl crate::service::Service {
    /// Handle at most `n` of a tenant's `start`s at once (the default: [`STARTS`] on a shared
    /// queue, [`CALLS`] embedded).
    pub fn starts_per_tenant(&self, n: usize) {
        self.turns.set_starts(n);
    }
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Start => "starts",
            Kind::Other => "calls",
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let Some(of) = self.of.take() else { return };
        if self.held {
            of.free.add_permits(1);
        }
        let mut tenants = self.turns.tenants.lock().unwrap();
        drop(of);
        // Dropped under the lock: when only the map holds the entry now, no call is in hand
        // or waiting (two last turns ending together cannot both see the other's count).
        if tenants
            .get(&self.key)
            .is_some_and(|of| Arc::strong_count(of) == 1)
        {
            tenants.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `turn` is given within a moment.
    async fn given<'a>(
        turn: impl std::future::Future<Output = Result<Turn<'a>, ApiError>>,
    ) -> Option<Result<Turn<'a>, ApiError>> {
        tokio::time::timeout(Duration::from_millis(50), turn)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_tenant_with_every_turn_taken_waits_and_another_tenant_does_not() {
        let turns = Turns::new(2, 1, 1);
        let a1 = turns.take("a", Kind::Other).await.unwrap();
        let _a2 = turns.take("a", Kind::Other).await.unwrap();
        assert!(
            given(turns.take("a", Kind::Other)).await.is_none(),
            "a's third call waits"
        );
        let b = given(turns.take("b", Kind::Other)).await;
        assert!(matches!(b, Some(Ok(_))), "b is not behind a");
        // One waiting is the bound: the next is refused, with the limits named.
        let mut third = Box::pin(turns.take("a", Kind::Other));
        assert!(futures_util::FutureExt::now_or_never(&mut third).is_none());
        let refused = given(turns.take("a", Kind::Other))
            .await
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(refused.code, Code::QuotaExceeded);
        assert!(
            refused.message.contains("more than 1 API calls waiting"),
            "{}",
            refused.message
        );
        drop(a1);
        assert!(
            third.await.is_ok(),
            "the waiting call gets the turn given back"
        );
    }

    #[tokio::test]
    async fn a_tenant_leaves_the_map_with_its_last_call() {
        let turns = Turns::new(1, 1, 1);
        let held = turns.take("a", Kind::Other).await.unwrap();
        // A waiting call abandoned (its client gone) holds nothing afterwards.
        assert!(given(turns.take("a", Kind::Other)).await.is_none());
        assert_eq!(turns.tenants.lock().unwrap().len(), 1);
        drop(held);
        assert!(turns.tenants.lock().unwrap().is_empty());
        let again = turns.take("a", Kind::Other).await.unwrap();
        assert_eq!(
            again.of.as_ref().unwrap().free.available_permits(),
            0,
            "one turn, not two"
        );
    }

    #[tokio::test]
    async fn a_call_waits_for_its_turn_only_so_long() {
        let mut turns = Turns::new(1, 1, 4);
        turns.wait_at_most = Duration::from_millis(30);
        let held = turns.take("a", Kind::Other).await.unwrap();
        let refused = turns.take("a", Kind::Other).await.err().unwrap();
        assert_eq!(refused.code, Code::QuotaExceeded);
        assert!(refused.message.contains("waited"), "{}", refused.message);
        // The refused call waits no more: the next one is the only one waiting.
        assert_eq!(held.of.as_ref().unwrap().waiting.load(Ordering::Acquire), 0);
        drop(held);
        assert!(turns.tenants.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn turns_ending_together_leave_no_entry_behind() {
        let turns = Arc::new(Turns::new(2, 1, 64));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let turns = turns.clone();
                tokio::spawn(async move {
                    for _ in 0..500 {
                        let turn = turns.take("a", Kind::Other).await.unwrap();
                        tokio::task::yield_now().await;
                        drop(turn);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(turns.tenants.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn starts_take_turns_of_their_own() {
        let turns = Turns::new(2, 1, 8);
        let _start = turns.take("a", Kind::Start).await.unwrap();
        assert!(
            given(turns.take("a", Kind::Start)).await.is_none(),
            "a second start waits for the first"
        );
        let other = given(turns.take("a", Kind::Other)).await;
        assert!(
            matches!(other, Some(Ok(_))),
            "the tenant's other calls are not behind its starts"
        );
        let b = given(turns.take("b", Kind::Start)).await;
        assert!(matches!(b, Some(Ok(_))), "nor another tenant's starts");
    }

    #[tokio::test]
    async fn the_starts_at_once_can_be_set() {
        let turns = Turns::new(2, 1, 8);
        turns.set_starts(2);
        let _first = turns.take("a", Kind::Start).await.unwrap();
        let second = given(turns.take("a", Kind::Start)).await;
        assert!(matches!(second, Some(Ok(_))), "two starts at once");
        assert!(given(turns.take("a", Kind::Start)).await.is_none());
    }
}
