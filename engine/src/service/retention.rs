//! Retention of execution records: ended executions older than `--keep-executions` are deleted
//! with their event claims, so the executions bucket does not grow without end (a million
//! executions a day would otherwise add gigabytes a day to every replica). Executions still
//! running or waiting — an approval left open for months — are kept whatever their age.
//!
//! One engine of a service at a time sweeps, hourly (whose turn it is: [`TURN_KEY`]). A sweep
//! reads every key once and the records old enough to go; deletes are idempotent, so engines
//! that sweep at once (a turn taken over, a store that could not be read) only repeat each
//! other's work. The others only forget their cached copies of what the sweep removed.
//! (Logs and dead letters have retentions of their own; audit records `--audit-keep`; the
//! artifacts records no longer name go with the same sweep, see `collector`.)
use crate::kv::{KvError, get_json};
use crate::service::{Service, claim_key};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long ended executions are kept unless `--keep-executions` says otherwise (a year, as
/// CodePipeline keeps its execution history).
pub const KEEP_EXECUTIONS: Duration = Duration::from_secs(365 * 24 * 3600);

/// Between sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Records deleted by one sweep at most; the next one comes sooner when a sweep was full.
const SWEEP_BATCH: usize = 10_000;

/// In the pipelines bucket (the service's own records start with `_`): which engine sweeps.
pub(in crate::service) const TURN_KEY: &str = "_turns/sweep";

/// A turn its engine has not renewed for this long (it stopped, or hangs) is another's to take.
pub(in crate::service) const TURN_LAPSE: Duration =
    Duration::from_secs(SWEEP_EVERY.as_secs() + 1800);

/// Whose turn it is to sweep, since when.
#[derive(Serialize, Deserialize)]
pub(in crate::service) struct Turn {
    /// The engine process (`Service::incarnation`).
    pub engine: String,
    /// When it took or last renewed the turn (ms since the epoch).
    pub at: u64,
}

impl Service {
    /// Keep ended executions this long (`None`: for ever).
    pub fn keep_executions(&self, keep: Option<Duration>) {
        self.retention
            .store(keep.map_or(0, |k| k.as_millis() as u64), Ordering::Relaxed);
    }

    /// Delete the ended executions that started more than `keep` ago, with the claims of their
    /// trigger events, at most [`SWEEP_BATCH`]; returns how many went.
    pub async fn sweep_executions(&self, keep: Duration) -> Result<usize, KvError> {
        let Some(cutoff) = crate::clock::now().0.checked_sub(keep.as_millis() as u64) else {
            return Ok(0);
        };
        let kv = &*self.edges.executions;
        let mut deleted = 0;
        for key in kv.keys("").await? {
            // `<tenant>/x/<ULID>`: the id says when it started.
            let Some((tenant, id)) = key.split_once("/x/") else {
                continue;
            };
            let old = id
                .parse::<ulid::Ulid>()
                .is_ok_and(|u| u.timestamp_ms() < cutoff);
            if !old || tenant.contains('/') {
                continue;
            }
            let Some((exec, _)) = get_json::<crate::scheduler::Execution>(kv, &key).await? else {
                continue;
            };
            if !exec.status.is_terminal() {
                continue;
            }
            if let Some(trigger) = &exec.trigger {
                let claim = claim_key(tenant, &exec.pipeline, &trigger.event_id);
                if get_json::<String>(kv, &claim)
                    .await?
                    .is_some_and(|(named, _)| named == exec.execution_id)
                {
                    kv.delete(&claim).await?;
                }
            }
            kv.delete(&key).await?;
            deleted += 1;
            if deleted >= SWEEP_BATCH {
                break;
            }
        }
        Ok(deleted)
    }

    /// Delete what refused trigger events leave once it is older than [`DEAD_LETTER_KEEP`]:
    /// their dead letters (the listing drops them too, but nobody may list them), and the
    /// claims of events that started no execution (an unknown pipeline, a policy, a quota;
    /// claims of executions go with their records, above) — after that, the same event id may
    /// start an execution. Claims only when `claims` (each is read: once a day is enough).
    /// At most [`SWEEP_BATCH`]; returns how many went.
    ///
    /// [`DEAD_LETTER_KEEP`]: super::triggers::DEAD_LETTER_KEEP
    pub async fn sweep_refused_triggers(&self, claims: bool) -> Result<usize, KvError> {
        let Some(cutoff) = crate::clock::now()
            .0
            .checked_sub(super::triggers::DEAD_LETTER_KEEP.as_millis() as u64)
        else {
            return Ok(0);
        };
        let old = |id: &str| {
            id.parse::<ulid::Ulid>()
                .is_ok_and(|u| u.timestamp_ms() < cutoff)
        };
        let kv = &*self.edges.executions;
        let keys = kv.keys("").await?;
        // Executions kept, from the listing (not read one by one).
        let kept: std::collections::HashSet<&str> = keys
            .iter()
            .filter(|k| k.contains("/x/"))
            .map(String::as_str)
            .collect();
        let mut held: std::collections::HashMap<String, Option<Vec<String>>> = Default::default();
        let mut deleted = 0;
        for key in &keys {
            let gone = if let Some((tenant, _)) = key.split_once("/claim/") {
                // `<tenant>/claim/<pipeline>/<hash>` → the id of the execution it would start.
                if !claims || tenant.contains('/') {
                    continue;
                }
                let Some((id, _)) = get_json::<String>(kv, key).await? else {
                    continue;
                };
                if !old(&id) || kept.contains(super::exec_key(tenant, &id).as_str()) {
                    continue;
                }
                // A start waiting in the tenant's queue this long keeps its claim (and all
                // of them, while the queue cannot be read).
                if !held.contains_key(tenant) {
                    held.insert(tenant.to_string(), self.queued(tenant).await.ok());
                }
                let waiting = held[tenant].as_ref().is_none_or(|q| q.contains(&id));
                // Recorded since the listing (it left the queue): its claim stays.
                !waiting && kv.get(&super::exec_key(tenant, &id)).await?.is_none()
            } else if let Some((tenant, id)) = key.split_once("/dead/") {
                // `<tenant>/dead/<ULID>`.
                !tenant.contains('/') && old(id)
            } else {
                false
            };
            if !gone {
                continue;
            }
            kv.delete(key).await?;
            deleted += 1;
            if deleted >= SWEEP_BATCH {
                break;
            }
        }
        Ok(deleted)
    }

    /// Whether this engine sweeps now: it takes the turn when nobody holds it, its holder let
    /// it lapse, or its record cannot be read (written by another version), and renews its
    /// own, by compare-and-swap (of two engines asking at once, one gets it). A store that
    /// cannot be reached: sweep all the same (the sweeps are safe to repeat; only skipping
    /// them for good would not be).
    pub(in crate::service) async fn sweep_turn(&self) -> bool {
        let kv = &*self.edges.pipelines;
        let now = crate::clock::now().0;
        let mine = match serde_json::to_vec(&Turn {
            engine: self.incarnation.clone(),
            at: now,
        }) {
            Ok(bytes) => bytes,
            Err(_) => return true,
        };
        let taken = match kv.get(TURN_KEY).await {
            Ok(None) => kv.create(TURN_KEY, mine).await.map(|_| ()),
            Ok(Some((bytes, revision))) => {
                let ours = serde_json::from_slice::<Turn>(&bytes).map_or(true, |turn| {
                    turn.engine == self.incarnation
                        || now.saturating_sub(turn.at) >= TURN_LAPSE.as_millis() as u64
                });
                if !ours {
                    return false;
                }
                kv.update(TURN_KEY, mine, revision).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        match taken {
            Ok(()) => true,
            // Another engine took it first.
            Err(KvError::Conflict { .. }) => false,
            Err(e) => {
                tracing::warn!("whose turn it is to sweep cannot be known ({e}): sweeping");
                true
            }
        }
    }

    /// Give up this engine's turn to sweep (it stops): another engine takes it at its next
    /// sweep instead of after the lapse.
    pub async fn give_up_sweep_turn(&self) {
        let kv = &*self.edges.pipelines;
        if let Ok(Some((turn, revision))) = get_json::<Turn>(kv, TURN_KEY).await
            && turn.engine == self.incarnation
        {
            let _ = kv.delete_if(TURN_KEY, revision).await;
        }
    }

    /// Sweep a minute after the start and then every hour (sooner while sweeps are full),
    /// when it is this engine's turn.
    pub(in crate::service) async fn sweep_now_and_then(&self) {
        match self.move_old_audit_records().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(moved = n, "audit records moved to the audit bucket"),
            Err(e) => tracing::warn!("moving old audit records failed: {}", e.message),
        }
        let mut wait = Duration::from_secs(60);
        let mut collected = None;
        let mut purged = None;
        let mut claims_swept = None;
        loop {
            tokio::time::sleep(wait).await;
            wait = SWEEP_EVERY;
            if !self.edges.cluster.alone() && !self.sweep_turn().await {
                // Another engine sweeps; what it removes, this one stops keeping copies of.
                self.forget_and_log(&mut collected).await;
                continue;
            }
            // What removed keys left behind (NATS KV's markers), an hour after their removal.
            if super::collector::due(&mut purged) {
                for bucket in [
                    &self.edges.pipelines,
                    &self.edges.executions,
                    &self.edges.functions,
                    &self.edges.waits,
                    &self.edges.audit,
                ] {
                    match bucket.purge_markers(SWEEP_EVERY).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(markers = n, "markers of removed keys purged"),
                        Err(e) => tracing::warn!("markers of removed keys stay: {e}"),
                    }
                }
            }
            match self.sweep_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "lease records of ended jobs removed"),
                Err(e) => tracing::warn!("the lease sweep failed (tried again later): {e}"),
            }
            match self.sweep_waits().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    "waiters no longer waiting for their event removed"
                ),
                Err(e) => tracing::warn!("the wait sweep failed (tried again later): {e}"),
            }
            let claims = claims_swept.is_none_or(|at: std::time::Instant| {
                at.elapsed() >= Duration::from_secs(24 * 3600)
            });
            let result = self.sweep_refused_triggers(claims).await;
            if claims && result.is_ok() {
                claims_swept = Some(std::time::Instant::now());
            }
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    "dead letters and claims of refused trigger events removed"
                ),
                Err(e) => tracing::warn!("the claim sweep failed (tried again later): {e}"),
            }
            match self.prune_all_audit().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "audit records past --audit-keep removed"),
                Err(e) => {
                    tracing::warn!("the audit sweep failed (tried again later): {}", e.message)
                }
            }
            // Artifacts of records the last sweep deleted go a sweep later.
            self.collect_and_log(&mut collected).await;
            // Renewed again after the longest part, so a long collection keeps the turn.
            if !self.edges.cluster.alone() {
                self.sweep_turn().await;
            }
            let keep = self.retention.load(Ordering::Relaxed);
            if keep == 0 {
                continue;
            }
            match self.sweep_executions(Duration::from_millis(keep)).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "ended executions past their retention deleted");
                    if n >= SWEEP_BATCH {
                        wait = Duration::from_secs(60);
                    }
                }
                Err(e) => tracing::warn!("the retention sweep failed (tried again later): {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use crate::kv::Kv;
    use crate::scheduler::{Execution, Status};
    use crate::service::exec_key;
    use crate::service::tests::{engine, engine_in, register, shared_edges};
    use std::sync::Arc;

    const PIPELINE: &str =
        "name: kept\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n";

    /// A copy of `exec` under `id`, started at `at_ms`, with `status` and trigger event `event`
    /// (whose claim names it).
    async fn copy(
        kv: &dyn Kv,
        exec: &Execution,
        at_ms: u64,
        status: Status,
        event: &str,
    ) -> String {
        let id = ulid::Ulid::from_parts(at_ms, rand_part(event)).to_string();
        let mut e = exec.clone();
        e.execution_id = id.clone();
        e.status = status;
        if let Some(t) = &mut e.trigger {
            t.event_id = event.into();
        }
        kv.create(&exec_key("default", &id), serde_json::to_vec(&e).unwrap())
            .await
            .unwrap();
        kv.create(
            &claim_key("default", "kept", event),
            serde_json::to_vec(&id).unwrap(),
        )
        .await
        .unwrap();
        id
    }

    fn rand_part(event: &str) -> u128 {
        u128::from_le_bytes(
            blake3::hash(event.as_bytes()).as_bytes()[..16]
                .try_into()
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn ended_executions_past_their_retention_go_with_their_claims_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine(dir.path(), Arc::new(MemoryBus::default()), &shared);
        register(&service, dir.path(), "kept.yaml", PIPELINE).await;
        let (running, _) = service
            .start("default", "kept", br#"{"id":"e-0"}"#, false, false)
            .await
            .unwrap()
            .unwrap();
        let kv = &*shared.executions;
        let (exec, _) = get_json::<Execution>(kv, &exec_key("default", &running))
            .await
            .unwrap()
            .unwrap();
        let keep = Duration::from_secs(30 * 24 * 3600);
        let now = crate::clock::now().0;
        let old = now - keep.as_millis() as u64 - 86_400_000;
        let old_ended = copy(kv, &exec, old, Status::Succeeded, "e-1").await;
        let old_failed = copy(kv, &exec, old, Status::Failed, "e-2").await;
        let old_waiting = copy(kv, &exec, old, Status::InProgress, "e-3").await;
        let recent_ended = copy(kv, &exec, now - 1000, Status::Succeeded, "e-4").await;

        assert_eq!(service.sweep_executions(keep).await.unwrap(), 2);
        let there =
            |id: String| async move { kv.get(&exec_key("default", &id)).await.unwrap().is_some() };
        assert!(
            !there(old_ended.clone()).await,
            "an old ended execution goes"
        );
        assert!(!there(old_failed).await);
        assert!(
            there(old_waiting).await,
            "an old execution still waiting stays"
        );
        assert!(there(recent_ended).await, "a recent one stays");
        assert!(there(running).await);
        assert!(
            kv.get(&claim_key("default", "kept", "e-1"))
                .await
                .unwrap()
                .is_none(),
            "its claim goes"
        );
        assert!(
            kv.get(&claim_key("default", "kept", "e-3"))
                .await
                .unwrap()
                .is_some()
        );
        // The listing no longer shows it; a second sweep finds nothing more.
        let listed = crate::service::control::list_executions(kv, "default", None, None, None, 100)
            .await
            .unwrap();
        assert!(listed.iter().all(|e| e.execution_id != old_ended));
        assert_eq!(listed.len(), 3);
        assert_eq!(service.sweep_executions(keep).await.unwrap(), 0);
    }

    /// One engine of a service sweeps at a time: the first to ask takes the turn and keeps it
    /// while it renews it; another takes it over only once it has lapsed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_engine_at_a_time_sweeps_and_a_lapsed_turn_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let a = engine_in(dir.path(), "a", &shared);
        let b = engine_in(dir.path(), "b", &shared);
        // Asked at once, one of the two gets it.
        let (first, second) = futures_util::future::join(a.sweep_turn(), b.sweep_turn()).await;
        assert!(first ^ second, "a: {first}, b: {second}");
        let (holder, other) = if first { (&a, &b) } else { (&b, &a) };
        // Renewed by its holder; still not the other's.
        assert!(holder.sweep_turn().await);
        assert!(!other.sweep_turn().await);
        // Its holder stops renewing it: once lapsed, the other takes it, and keeps it.
        let (_, revision) = get_json::<Turn>(&*shared.pipelines, TURN_KEY)
            .await
            .unwrap()
            .unwrap();
        let lapsed = Turn {
            engine: holder.incarnation.clone(),
            at: crate::clock::now().0 - TURN_LAPSE.as_millis() as u64 - 1,
        };
        shared
            .pipelines
            .update(TURN_KEY, serde_json::to_vec(&lapsed).unwrap(), revision)
            .await
            .unwrap();
        assert!(other.sweep_turn().await);
        assert!(!holder.sweep_turn().await);
        assert!(other.sweep_turn().await);
        // Given up (its engine stops): the first to ask takes it at once.
        other.give_up_sweep_turn().await;
        holder.give_up_sweep_turn().await; // not its own: changes nothing
        assert!(holder.sweep_turn().await);
        assert!(!other.sweep_turn().await);
        // A record this version cannot read does not stop every engine taking the turn.
        let (_, revision) = shared.pipelines.get(TURN_KEY).await.unwrap().unwrap();
        shared
            .pipelines
            .update(TURN_KEY, b"{\"holder\": 7}".to_vec(), revision)
            .await
            .unwrap();
        assert!(other.sweep_turn().await);
        assert!(!holder.sweep_turn().await);
        // The turn is none of a tenant's pipelines.
        assert!(
            crate::service::pipelines::all_heads(&*shared.pipelines)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
