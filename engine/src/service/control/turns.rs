//! Each tenant's API calls take turns: at most [`CALLS`] of one tenant's calls are handled in
//! this engine at once, the rest wait for one of them to end, and past [`WAITING`] waiting a
//! call is refused with `quota_exceeded`. Without turns, every request became a task at once:
//! a tenant with hundreds of calls in flight (a flood of `start`s) put each call of another
//! tenant behind all of its own, on the workers' queues and the store's one connection.
use sluice_api::{ApiError, Code};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Calls of one tenant handled at once by one engine.
pub const CALLS: usize = 16;
/// Calls of one tenant waiting for a turn in one engine before more are refused.
pub const WAITING: usize = 4096;

/// The turns of every tenant with a call in hand (a tenant leaves the map with its last call,
/// so names nobody authenticated cannot make it grow).
pub(in crate::service) struct Turns {
    tenants: Mutex<HashMap<String, Arc<TenantTurns>>>,
    calls: usize,
    waiting: usize,
}

impl Default for Turns {
    fn default() -> Self {
        Turns::new(CALLS, WAITING)
    }
}

struct TenantTurns {
    free: Semaphore,
    waiting: AtomicUsize,
}

/// A tenant's turn, given back when dropped (also when the call's task is dropped).
pub(in crate::service) struct Turn<'a> {
    turns: &'a Turns,
    tenant: String,
    of: Arc<TenantTurns>,
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
    /// Turns of `calls` at once per tenant, refusing past `waiting` waiting.
    pub(in crate::service) fn new(calls: usize, waiting: usize) -> Self {
        Turns {
            tenants: Mutex::default(),
            calls,
            waiting,
        }
    }

    /// Wait for a turn of `tenant`'s, or refuse the call when too many wait already.
    pub(in crate::service) async fn take(&self, tenant: &str) -> Result<Turn<'_>, ApiError> {
        let of = self
            .tenants
            .lock()
            .unwrap()
            .entry(tenant.to_string())
            .or_insert_with(|| {
                Arc::new(TenantTurns {
                    free: Semaphore::new(self.calls),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone();
        // Made now, so that a refusal below also gives the entry back.
        let mut turn = Turn {
            turns: self,
            tenant: tenant.to_string(),
            of,
            held: false,
        };
        if turn.of.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting {
            turn.of.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                Code::QuotaExceeded,
                format!(
                    "tenant `{tenant}` has more than {} API calls waiting in this engine (it handles {} of a tenant's at once): send fewer at a time",
                    self.waiting, self.calls
                ),
            ));
        }
        let waiting = Waiting(&turn.of.waiting);
        turn.of
            .free
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
        drop(waiting);
        turn.held = true;
        Ok(turn)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.held {
            self.of.free.add_permits(1);
        }
        let mut tenants = self.turns.tenants.lock().unwrap();
        // Nobody else holds the entry (the map and this turn): no call in hand or waiting.
        if Arc::strong_count(&self.of) == 2 {
            tenants.remove(&self.tenant);
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
        let turns = Turns::new(2, 1);
        let a1 = turns.take("a").await.unwrap();
        let _a2 = turns.take("a").await.unwrap();
        assert!(
            given(turns.take("a")).await.is_none(),
            "a's third call waits"
        );
        let b = given(turns.take("b")).await;
        assert!(matches!(b, Some(Ok(_))), "b is not behind a");
        // One waiting is the bound: the next is refused, with the limits named.
        let mut third = Box::pin(turns.take("a"));
        assert!(futures_util::FutureExt::now_or_never(&mut third).is_none());
        let refused = given(turns.take("a")).await.unwrap().err().unwrap();
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
        let turns = Turns::new(1, 1);
        let held = turns.take("a").await.unwrap();
        // A waiting call abandoned (its client gone) holds nothing afterwards.
        assert!(given(turns.take("a")).await.is_none());
        assert_eq!(turns.tenants.lock().unwrap().len(), 1);
        drop(held);
        assert!(turns.tenants.lock().unwrap().is_empty());
        let again = turns.take("a").await.unwrap();
        assert_eq!(again.of.free.available_permits(), 0, "one turn, not two");
    }
}
