//! Worker places: how many jobs this engine runs at once, and whose.
//!
//! Each job a worker takes off the queue holds a place while it runs; a chain (the jobs a
//! trigger or a finished job runs at once, without queueing them: see `journal`) may take more
//! places only while workers are idle. Under one tenant's flood every worker is busy with that
//! tenant's jobs, and another tenant's execution, finding no idle place, went through the queue
//! a job at a time, each step a store write behind the flood's. A tenant with nothing running
//! here is now given a place of its own beyond the workers (at most as many such places as there
//! are workers): its trigger starts a chain as on an idle engine. That is the tenants' share of
//! the engine's workers: whoever floods it, every other tenant gets at least one place.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The busy places, in all and by tenant.
#[derive(Default)]
pub(in crate::service) struct Places {
    /// Job workers (set by `Service::run`).
    pub(in crate::service) workers: AtomicUsize,
    /// Places taken, counting the jobs chains run in idle workers' places.
    pub(in crate::service) busy: AtomicUsize,
    /// Places taken beyond the workers by tenants that had none.
    own: AtomicUsize,
    by_tenant: Mutex<HashMap<String, usize>>,
}

/// A place in the busy count, given back when dropped: also when the task holding it is
/// aborted (a consumer replaced while it runs), before or during its chain, so no place leaks.
pub(in crate::service) struct Place {
    places: Arc<Places>,
    tenant: String,
    /// Taken beyond the workers (see [`Places::take_own`]).
    own: bool,
}

impl Places {
    /// A place for `tenant`, counted in `busy` already.
    fn counted(self: &Arc<Self>, tenant: &str, own: bool) -> Place {
        *self
            .by_tenant
            .lock()
            .unwrap()
            .entry(tenant.to_string())
            .or_default() += 1;
        Place {
            places: self.clone(),
            tenant: tenant.to_string(),
            own,
        }
    }

    /// A place for a job delivered to a worker (always: the worker is the place).
    pub(in crate::service) fn occupy(self: &Arc<Self>, tenant: &str) -> Place {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.counted(tenant, false)
    }

    /// An idle worker's place for `tenant`'s job run here; none when all are busy.
    pub(in crate::service) fn take_idle(self: &Arc<Self>, tenant: &str) -> Option<Place> {
        let workers = self.workers.load(Ordering::Relaxed);
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                (b < workers).then_some(b + 1)
            })
            .ok()?;
        Some(self.counted(tenant, false))
    }

    /// An idle worker's place, or, when every worker is busy and `tenant` has nothing running
    /// here, a place of its own beyond the workers (while fewer than `workers` are given).
    pub(in crate::service) fn take_idle_or_own(self: &Arc<Self>, tenant: &str) -> Option<Place> {
        if let Some(place) = self.take_idle(tenant) {
            return Some(place);
        }
        let by_tenant = self.by_tenant.lock().unwrap();
        if by_tenant.get(tenant).is_some_and(|n| *n > 0) {
            return None;
        }
        let workers = self.workers.load(Ordering::Relaxed);
        self.own
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |o| {
                (o < workers).then_some(o + 1)
            })
            .ok()?;
        drop(by_tenant);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Some(self.counted(tenant, true))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let places = &self.places;
        places.busy.fetch_sub(1, Ordering::AcqRel);
        if self.own {
            places.own.fetch_sub(1, Ordering::AcqRel);
        }
        let mut by_tenant = places.by_tenant.lock().unwrap();
        if let Some(n) = by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                by_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_with_nothing_running_gets_a_place_when_another_fills_the_workers() {
        let places = Arc::new(Places::default());
        places.workers.store(2, Ordering::Relaxed);
        // Tenant A's flood: both workers run its jobs, and its triggers find no idle place.
        let a = [places.occupy("a"), places.occupy("a")];
        assert!(places.take_idle("a").is_none());
        assert!(
            places.take_idle_or_own("a").is_none(),
            "A has places already"
        );
        // B has nothing running: it gets one place, not two.
        let b = places.take_idle_or_own("b").expect("B's own place");
        assert!(places.take_idle_or_own("b").is_none());
        // C too; D finds the own places used up (as many as there are workers).
        let c = places.take_idle_or_own("c").expect("C's own place");
        assert!(places.take_idle_or_own("d").is_none());
        assert_eq!(places.busy.load(Ordering::Relaxed), 4);
        drop(b);
        assert!(
            places.take_idle_or_own("d").is_some(),
            "B's place went back"
        );
        drop((a, c));
        assert_eq!(places.busy.load(Ordering::Relaxed), 0);
        assert_eq!(places.own.load(Ordering::Relaxed), 0);
        assert!(places.by_tenant.lock().unwrap().is_empty());
    }
}
