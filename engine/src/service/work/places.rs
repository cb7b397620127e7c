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
//!
//! **Shares.** A place of its own is not enough: the flooding tenant's jobs, one in every
//! other worker, still share the two cores with it, and its chain's every step waited behind
//! theirs (B's five-action execution took 3.7× its idle time beside A's flood of published
//! events, against 2.0–2.7× with half the workers). So while several tenants run here, each
//! may hold at most its share of the workers (the workers divided by the tenants running, at
//! least one): a trigger or a chain of a tenant at its share takes no idle place (its jobs go
//! to the queue), and a worker that has just run a job of a tenant at its share waits before it
//! takes the next off the queue, for a place of that tenant to end or another tenant to leave
//! (at most [`SHARE_PAUSE`]: the queue's next job may be another tenant's, and the queue, not
//! this engine, knows). The worker that goes on holds a place of the share (a [`Turn`]) until
//! its job has one: when one place ended, every worker waiting went at once. Alone, a tenant
//! has every worker.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a tenant still counts as running here after its last place ended: a tenant
/// running short executions one after another keeps its share between them, instead of the
/// flood taking every worker back in each gap (and its next execution waiting for the
/// flood's chains to end).
const RECENT: Duration = Duration::from_millis(100);

/// At most this many tenants remembered in [`Places::ended`] (a bound on what grows; they
/// are forgotten after [`RECENT`]).
const MAX_ENDED: usize = 4096;

/// The longest a worker waits for its last tenant to fall under its share.
pub(in crate::service) const SHARE_PAUSE: Duration = Duration::from_millis(500);

/// The busy places, in all and by tenant.
#[derive(Default)]
pub(in crate::service) struct Places {
    /// Job workers (set by `Service::run`).
    pub(in crate::service) workers: AtomicUsize,
    /// Places taken, counting the jobs chains run in idle workers' places.
    pub(in crate::service) busy: AtomicUsize,
    /// Places taken beyond the workers by tenants that had none.
    own: AtomicUsize,
    /// What each tenant holds (a tenant holding nothing has no entry).
    by_tenant: Mutex<HashMap<String, Held>>,
    /// When tenants running nothing here now last gave a place back: they count as running
    /// for [`RECENT`] after.
    ended: Mutex<HashMap<String, std::time::Instant>>,
    /// Told whenever a place is given back.
    given_back: tokio::sync::Notify,
}

/// What a tenant holds here: places, and turns (see [`Turn`]).
#[derive(Clone, Copy, Default)]
struct Held {
    places: usize,
    turns: usize,
}

impl Held {
    /// Places and turns, which its share bounds together.
    fn all(self) -> usize {
        self.places + self.turns
    }
}

/// A worker's turn at the queue (see [`Places::turn_after`]): a place of its tenant's share,
/// kept from the moment the worker may go on until the job it takes has a place of its own.
pub(in crate::service) struct Turn {
    places: Arc<Places>,
    /// The tenant whose share it holds a place of (none: the wait ran out).
    tenant: Option<String>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(tenant) = self.tenant.take() {
            self.places.give_back(&tenant, true);
        }
    }
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
    /// The places and turns held, all tenants together.
    #[cfg(test)]
    pub(in crate::service) fn held(&self) -> usize {
        self.by_tenant
            .lock()
            .unwrap()
            .values()
            .map(|h| h.all())
            .sum()
    }

    /// One of `tenant`'s places (or a `turn`) ends: a tenant left with none still counts as
    /// running for [`RECENT`]; workers waiting for a share look again.
    fn give_back(&self, tenant: &str, turn: bool) {
        let mut by_tenant = self.by_tenant.lock().unwrap();
        if let Some(h) = by_tenant.get_mut(tenant) {
            match turn {
                true => h.turns -= 1,
                false => h.places -= 1,
            }
            if h.all() == 0 {
                by_tenant.remove(tenant);
                let mut ended = self.ended.lock().unwrap();
                if ended.len() < MAX_ENDED {
                    ended.insert(tenant.to_string(), std::time::Instant::now());
                }
            }
        }
        drop(by_tenant);
        self.given_back.notify_waiters();
    }

    /// A place for `tenant`, counted in `busy` already.
    fn counted(self: &Arc<Self>, tenant: &str, own: bool) -> Place {
        self.by_tenant
            .lock()
            .unwrap()
            .entry(tenant.to_string())
            .or_default()
            .places += 1;
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

    /// Whether `tenant` holds as many places (or turns, see [`Turn`]) as its share, other
    /// tenants running here too; `by_tenant` is [`Places::by_tenant`], locked.
    fn at_share(&self, by_tenant: &HashMap<String, Held>, tenant: &str) -> bool {
        let held = by_tenant.get(tenant).map_or(0, |h| h.all());
        let mut tenants = by_tenant.len() + usize::from(held == 0);
        // (Locked after `by_tenant`, as everywhere.)
        let mut ended = self.ended.lock().unwrap();
        if !ended.is_empty() {
            let now = std::time::Instant::now();
            ended.retain(|t, at| now.duration_since(*at) < RECENT && !by_tenant.contains_key(t));
            tenants += ended.keys().filter(|t| *t != tenant).count();
        }
        tenants > 1 && held >= (self.workers.load(Ordering::Relaxed) / tenants).max(1)
    }

    /// Wait (at most [`SHARE_PAUSE`]) until `tenant`, whose job a worker has just run, is
    /// under its share, before that worker takes the next job off the queue; the turn holds
    /// a place of the share until that job has its own, so that the workers waiting do not all
    /// go at once when one place ends.
    pub(in crate::service) async fn turn_after(self: &Arc<Self>, tenant: &str) -> Turn {
        let deadline = tokio::time::Instant::now() + SHARE_PAUSE;
        loop {
            // Look again when a place ends, or when a tenant that ran a moment ago stops
            // counting (the share grows then too), or give up at the deadline.
            let look_again = self
                .ended
                .lock()
                .unwrap()
                .values()
                .min()
                .map(|at| tokio::time::Instant::from_std(*at + RECENT))
                .map_or(deadline, |at| at.min(deadline));
            let given_back = self.given_back.notified();
            tokio::pin!(given_back);
            given_back.as_mut().enable();
            {
                let mut by_tenant = self.by_tenant.lock().unwrap();
                if !self.at_share(&by_tenant, tenant) {
                    by_tenant.entry(tenant.to_string()).or_default().turns += 1;
                    return Turn {
                        places: self.clone(),
                        tenant: Some(tenant.to_string()),
                    };
                }
            }
            if tokio::time::timeout_at(look_again, given_back)
                .await
                .is_err()
                && look_again == deadline
            {
                return Turn {
                    places: self.clone(),
                    tenant: None,
                };
            }
        }
    }

    /// An idle worker's place for `tenant`'s job run here; none when all are busy, or when
    /// `tenant` holds its share already.
    pub(in crate::service) fn take_idle(self: &Arc<Self>, tenant: &str) -> Option<Place> {
        let mut by_tenant = self.by_tenant.lock().unwrap();
        if self.at_share(&by_tenant, tenant) {
            return None;
        }
        let workers = self.workers.load(Ordering::Relaxed);
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                (b < workers).then_some(b + 1)
            })
            .ok()?;
        by_tenant.entry(tenant.to_string()).or_default().places += 1;
        Some(Place {
            places: self.clone(),
            tenant: tenant.to_string(),
            own: false,
        })
    }

    /// An idle worker's place, or, when every worker is busy and `tenant` has nothing running
    /// here, a place of its own beyond the workers (while fewer than `workers` are given).
    pub(in crate::service) fn take_idle_or_own(self: &Arc<Self>, tenant: &str) -> Option<Place> {
        if let Some(place) = self.take_idle(tenant) {
            return Some(place);
        }
        // Nothing running: places, not turns (a worker about to take a job of the tenant's
        // may well take another's).
        let by_tenant = self.by_tenant.lock().unwrap();
        if by_tenant.get(tenant).is_some_and(|h| h.places > 0) {
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
        places.give_back(&self.tenant, false);
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

    #[tokio::test]
    async fn a_tenant_beside_another_holds_at_most_its_share() {
        let places = Arc::new(Places::default());
        places.workers.store(8, Ordering::Relaxed);
        // Alone, A may have every worker.
        let mut a: Vec<Place> = (0..8)
            .map(|_| places.take_idle("a").expect("an idle worker"))
            .collect();
        // B comes (its own place: the workers are busy): A's share is now 8 / 2.
        let b = places.take_idle_or_own("b").expect("B's own place");
        a.truncate(5);
        assert!(places.take_idle("a").is_none(), "A holds 5, its share is 4");
        a.truncate(3);
        assert!(places.take_idle("a").is_some(), "A holds 3");
        assert!(places.take_idle("b").is_some(), "B is under its share");

        // Two workers that have just run A's jobs wait while A is at its share; when one of
        // A's places ends, one of them goes on (its turn holding the place), not both.
        a.push(places.occupy("a"));
        let wait = || {
            let places = places.clone();
            tokio::spawn(async move { places.turn_after("a").await })
        };
        let (first, second) = (wait(), wait());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !first.is_finished() && !second.is_finished(),
            "A is at its share"
        );
        a.pop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            first.is_finished() != second.is_finished(),
            "one goes on when a place of A's ends"
        );
        let (gone, still) = match first.is_finished() {
            true => (first, second),
            false => (second, first),
        };
        let turn = gone.await.unwrap();
        assert!(places.take_idle("a").is_none(), "the turn holds A's place");
        // Its job has a place of its own: the turn ends, and the other worker goes on.
        a.push(places.occupy("a"));
        drop(turn);
        a.pop();
        let other = tokio::time::timeout(Duration::from_secs(1), still)
            .await
            .expect("goes on once a place of A's ends")
            .unwrap();
        drop(other);

        // B ended: for a moment it still counts (its next execution may come), then A has
        // every worker again.
        drop(b);
        a.extend((0..2).map(|_| places.occupy("a")));
        assert!(places.take_idle("a").is_none(), "B ran a moment ago");
        std::thread::sleep(RECENT);
        assert!(places.take_idle("a").is_some(), "A alone again");
        // The same wait, with nobody else running, does not wait.
        tokio::time::timeout(Duration::from_millis(5), places.turn_after("a"))
            .await
            .expect("alone, no wait");
    }

    /// A worker's turn for a tenant (it may take another's job) does not count as the
    /// tenant running something: its next start still gets a place of its own.
    #[tokio::test]
    async fn a_turn_alone_does_not_keep_a_tenant_from_its_own_place() {
        let places = Arc::new(Places::default());
        places.workers.store(2, Ordering::Relaxed);
        let b = places.occupy("b");
        drop(b);
        let turn = places.turn_after("b").await;
        let a = [places.occupy("a"), places.occupy("a")];
        assert!(
            places.take_idle_or_own("b").is_some(),
            "B runs nothing, its turn aside"
        );
        drop((turn, a));
        assert_eq!(places.held(), 0);
    }

    /// Workers of an engine gone quiet hold no place of anyone's share: a tenant that ran
    /// something once does not count as running here for ever after (it would shrink the
    /// share of the next tenant to come, alone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_waiting_on_a_quiet_queue_hold_no_place() {
        use crate::service::tests::{engine, poll_until, register, shared_edges};
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(crate::bus::MemoryBus::default());
        let service = engine(&dir.path().join("a"), bus, &shared);
        tokio::spawn(service.clone().run(2));
        let yaml = "name: two\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n";
        register(&service, dir.path(), "two.yaml", yaml).await;
        // Not chained: the jobs go through the queue, to the workers.
        let (id, _) = service
            .start("default", "two", br#"{"id":"e-1"}"#, false, false)
            .await
            .unwrap()
            .unwrap();
        let exec = poll_until(&service, &id, |e| e.status.is_terminal())
            .await
            .expect("the execution ends");
        assert_eq!(exec.status, crate::scheduler::Status::Succeeded);
        tokio::time::sleep(SHARE_PAUSE + Duration::from_millis(200)).await;
        assert_eq!(service.places.held(), 0, "a place or turn outlived its job");
    }
}
