//! The job path: a worker takes a job from the queue, runs its action, records the result
//! with compare-and-swap, and goes on with what that result made runnable.
//!
//! **Chains.** The job that the result of a run makes runnable is not queued for some engine
//! to fetch: the worker runs it at once, from the chain's copy of the record (written behind:
//! see `journal`), under the *lease* of the delivery it started from. The delivery stays unacknowledged (its deadline
//! pushed back while work goes on) until the chain ends. If the engine dies, that delivery
//! comes back to another engine, which finds the results recorded so far and queues the jobs
//! still outstanding; while the engine lives, nobody else runs what its chain runs. A chain
//! saves each hop the queue's round trips and the record's read. Parallel actions beyond the
//! first run here only while this engine has idle workers; the rest go to the queue, where
//! every engine can take them.

use crate::bus::{Event, Snapshot};
use crate::executor::job;
use crate::kv::{KvError, get_json};
use crate::queue::Delivery;
use crate::scheduler::{Execution, Input, Status, Wake, apply};
use crate::service::journal::{self, Journal};
use crate::service::{JobMessage, Service, exec_key, job_id, lanes, outstanding};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How a job delivery ended.
pub(in crate::service) enum Settled {
    /// Handled: acknowledge it.
    Done,
    /// Handed back to the queue for later.
    Deferred,
    /// An early start its gate did not confirm: start the trigger again the usual way.
    Refused,
}

/// The events of a change on their way to the bus: done once it holds them. Until then every
/// change this engine records of the same execution carries them ([`Service::in_flight`]).
pub(in crate::service) type Sent =
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, ()>>;

/// The delivery a chain runs under, and how often to push its deadline back.
pub(in crate::service) struct Lease<'a> {
    /// Where heartbeats are recorded for `status` (see `leases`).
    service: &'a Service,
    delivery: &'a Delivery,
    /// The delivered message's id, which the record names as the runner of what the chain runs.
    id: String,
    every: Duration,
}

impl Lease<'_> {
    /// Await `work` (a whole chain) while keeping the lease: report progress well within its
    /// deadline, so that no other engine gets the delivery while the chain runs its actions,
    /// records or publishes (NATS may be slow or reconnecting meanwhile).
    async fn hold<F: std::future::Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        // The first report is due after one period. (Not `interval` + its immediate first tick:
        // awaiting even an elapsed timer waits for the timer wheel's next millisecond.)
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        let mut recorded = false;
        let done = loop {
            tokio::select! {
                done = &mut work => break done,
                _ = ticker.tick() => {
                    if let Err(e) = self.delivery.handle.progress().await {
                        tracing::warn!("progress report failed: {e}");
                    }
                    // Only work that outlives a heartbeat period says who runs it.
                    self.service.lease_beat(&self.id, self.every).await;
                    recorded = true;
                }
            }
        };
        if recorded {
            self.service.lease_end(&self.id).await;
        }
        done
    }
}

/// A new execution's record, not created yet, with the jobs to run here under its trigger's
/// lease and its start (the chain's first write creates the record).
pub(in crate::service) struct Recorded {
    kept: Kept,
    exec: Execution,
    start: journal::Change,
    gate: Option<journal::Gate>,
}

impl Recorded {
    /// A new record and its start, with the jobs it keeps; created once `gate` (if any)
    /// confirms it.
    pub(in crate::service) fn unwritten(
        kept: Kept,
        exec: Execution,
        start: journal::Change,
        gate: Option<journal::Gate>,
    ) -> Self {
        Recorded {
            kept,
            exec,
            start,
            gate,
        }
    }
}

/// A job's message id on the queue (duplicates within the stream's window are dropped).
pub(in crate::service) fn message_id(job: &JobMessage) -> String {
    if let Some(b) = &job.backstop {
        return format!(
            "{}/{}/backstop/{}/{}",
            job.tenant, job.execution_id, b.change, b.nonce
        );
    }
    if let Some((phase, round)) = job.check {
        return format!(
            "{}/{}/{}/check/{}/{round}",
            job.tenant,
            job.execution_id,
            job.stage,
            phase.as_str()
        );
    }
    let id = job_id(
        &job.tenant,
        &job.execution_id,
        job.stage,
        job.action,
        job.attempt,
    );
    if job.expire { id + "/expire" } else { id }
}

/// A job the worker may run itself: one that should start now.
fn runs_now(job: &JobMessage) -> bool {
    job.not_before == 0 && !job.expire && job.check.is_none()
}

impl Service {
    /// Queue jobs, all at once (each waits for the stream's acknowledgement).
    pub(in crate::service) async fn push_jobs(&self, jobs: &[JobMessage]) {
        futures_util::future::join_all(jobs.iter().map(|job| self.push_job(job))).await;
    }

    async fn push_job(&self, job: &JobMessage) {
        let id = message_id(job);
        let subject = crate::subjects::jobs_subject(&job.tenant);
        let payload = serde_json::to_vec(job).unwrap_or_default();
        let mut delay = Duration::from_millis(50);
        // A job that cannot be queued would stall its execution: keep trying.
        while let Err(e) = self.edges.jobs.push(&subject, &id, payload.clone()).await {
            tracing::warn!("queueing job {id} failed ({e}); retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Run a delivered job (and its chain); returns its tenant, if it was a job.
    #[cfg(test)]
    pub(in crate::service) async fn handle_job(&self, delivery: Delivery) -> Option<String> {
        self.handle_job_in(delivery, None).await
    }

    /// [`Service::handle_job`] by a worker whose `turn` (see `places`) ends once the job has
    /// its place.
    pub(in crate::service) async fn handle_job_in(
        &self,
        delivery: Delivery,
        turn: Option<super::places::Turn>,
    ) -> Option<String> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let job: JobMessage = match serde_json::from_slice(&delivery.payload) {
            Ok(j) => j,
            Err(e) => {
                drop(turn);
                tracing::error!("dropping a malformed job: {e}");
                let _ = delivery.ack().await;
                return None;
            }
        };
        let place = self.places.occupy(&job.tenant);
        drop(turn);
        let lease = Lease {
            service: self,
            delivery: &delivery,
            id: message_id(&job),
            every: (self.edges.jobs.ack_wait() / 3).max(Duration::from_millis(100)),
        };
        // One heartbeat for the whole chain, however many short steps it takes.
        let key = exec_key(&job.tenant, &job.execution_id);
        let result = lease
            .hold(async {
                let result = self.run_job(&job, &lease, None).await;
                self.sent(&key).await;
                result
            })
            .await;
        drop(place);
        self.settle_delivery(&delivery, result, &lease.id).await;
        Some(job.tenant)
    }

    /// Acknowledge a delivery whose work (and chain) is done, or hand it back.
    pub(in crate::service) async fn settle_delivery(
        &self,
        delivery: &Delivery,
        result: Result<Settled, String>,
        what: &str,
    ) {
        match result {
            Ok(Settled::Deferred | Settled::Refused) => {}
            Ok(Settled::Done) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!("ack of {what} failed: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("{what} not finished: {e}; it will be retried");
                let _ = delivery.nak(Duration::from_secs(1)).await;
            }
        }
    }

    /// Create a new execution's record and run the jobs it kept, under its trigger's delivery
    /// (lease `id`, from a queue whose deadline is `ack_wait`).
    pub(in crate::service) async fn chain_under(
        &self,
        recorded: Recorded,
        delivery: &Delivery,
        id: String,
        ack_wait: Duration,
    ) -> Result<Settled, String> {
        let lease = Lease {
            service: self,
            delivery,
            id,
            every: (ack_wait / 3).max(Duration::from_millis(100)),
        };
        let Recorded {
            kept,
            exec,
            start,
            gate,
        } = recorded;
        let key = exec_key(&exec.tenant, &exec.execution_id);
        let journal = Journal::new(
            key,
            lease.id.clone(),
            exec,
            journal::Base::Unwritten(start, gate),
            self.gather(),
            kept.len(),
        );
        let chain = async {
            // The start is change 1: written (the record created) while contained runs go on.
            let (created, result) = futures_util::future::join(
                self.write_behind(&journal),
                self.run_chain(kept, 1, &journal, &lease),
            )
            .await;
            self.sent(&journal.key).await;
            self.compact(&journal).await;
            created.and(result)
        };
        let result = lease.hold(chain).await;
        if journal.refused() {
            return Ok(Settled::Refused);
        }
        result.map(|()| Settled::Done)
    }

    /// After a change is written: publish its events and queue the jobs it does not keep.
    /// What caused the change is acknowledged after this, so the events and queued jobs are
    /// stored by the time it returns. (A chain's writes send theirs without waiting: see
    /// [`Service::sending_now`].)
    pub(in crate::service) async fn send_and_queue(
        &self,
        events: Vec<crate::bus::Event>,
        queued: &[JobMessage],
    ) {
        futures_util::future::join(self.edges.bus.publish_all(events), self.push_jobs(queued))
            .await;
    }

    /// Send `events` of the execution `key` and count them in flight until the bus stores them.
    pub(in crate::service) fn sending_now(&self, key: &str, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let sent = futures_util::FutureExt::shared(self.edges.bus.publish_all(events.clone()));
        self.unacked
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push((sent, events));
    }

    /// The end of a chain: wait until the bus stores every event this engine sent for the
    /// execution `key` (its delivery is acknowledged after this), and forget them.
    async fn sent(&self, key: &str) {
        self.sending(key).await;
        self.in_flight(key);
    }

    /// Done once the bus stores every event this engine sent for the execution `key`.
    fn sending(&self, key: &str) -> impl std::future::Future<Output = ()> + use<> {
        let pending: Vec<Sent> = self
            .unacked
            .lock()
            .unwrap()
            .get(key)
            .into_iter()
            .flatten()
            .map(|(sent, _)| sent.clone())
            .collect();
        async move {
            futures_util::future::join_all(pending).await;
        }
    }

    /// Events this engine sent for the execution `key` that the bus has not stored yet: a
    /// change recorded now carries them in its outbox (`earlier`), so that if this engine dies
    /// before they are stored, whoever takes over sends them. Forgets those stored.
    pub(in crate::service) fn in_flight(&self, key: &str) -> Vec<Event> {
        let mut unacked = self.unacked.lock().unwrap();
        let Some(batches) = unacked.get_mut(key) else {
            return Vec::new();
        };
        // (Polled here: nothing else polls a sending until its chain's end.)
        batches.retain(|(sent, _)| futures_util::FutureExt::now_or_never(sent.clone()).is_none());
        if batches.is_empty() {
            unacked.remove(key);
            return Vec::new();
        }
        batches
            .iter()
            .flat_map(|(_, events)| events.iter().cloned())
            .collect()
    }

    /// Run one job: the delivered one (`chained` none), or one of its chain, from the chain's
    /// copy of the record, once the change numbered as given is stored if it must wait for
    /// that (an action that is not [`crate::executor::job::contained`]).
    async fn run_job(
        &self,
        job: &JobMessage,
        lease: &Lease<'_>,
        chained: Option<(Arc<Journal>, u64)>,
    ) -> Result<Settled, String> {
        let kv = &*self.edges.executions;
        let key = exec_key(&job.tenant, &job.execution_id);
        let is_chained = chained.is_some();
        // A chained job loads its pipeline first (to know whether it may run ahead of the
        // store); the run below uses the same.
        let mut early = None;
        // A chained run counts as going on until its result is applied.
        let running = chained.as_ref().map(|(journal, _)| journal.running());
        let (exec, revision) = match &chained {
            Some((journal, change)) => {
                let exec = journal.latest().await;
                let loaded = self
                    .load(&job.tenant, &exec.pipeline, Some(exec.pipeline_version))
                    .await;
                let contained = matches!(&loaded, Ok(Some(l)) if crate::executor::job::contained(&l.pipeline, &l.plugins, job.stage, job.action));
                early = Some(loaded);
                // (What the checks below see is the record as it is once the start is stored.)
                if contained {
                    (exec, 0)
                } else {
                    journal.stored(*change).await?;
                    (journal.latest().await, 0)
                }
            }
            None => match get_json::<Execution>(kv, &key)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(found) => found,
                None => {
                    tracing::error!("job for unknown execution {}", job.execution_id);
                    return Ok(Settled::Done);
                }
            },
        };
        // (Before the check below: a change that ended the execution, a stop, may still owe
        // its stages' lanes their departures.)
        if let Some(backstop) = &job.backstop {
            return self.redrive(&exec, job, backstop, lease.delivery).await;
        }
        if exec.status.is_terminal() {
            // A delivery that comes back to an ended execution: its engine may have died
            // before the bus stored the last changes' events (the record carries them).
            if !is_chained && lease.delivery.delivered > 1 {
                self.republish(&exec).await;
            }
            return Ok(Settled::Done);
        }
        if let Some((phase, _)) = job.check {
            if exec
                .stages
                .get(job.stage)
                .is_none_or(|s| s.checking != Some(phase))
            {
                return Ok(Settled::Done); // already decided (a redelivery)
            }
            let loaded = self
                .load(&job.tenant, &exec.pipeline, Some(exec.pipeline_version))
                .await?
                .ok_or_else(|| {
                    format!(
                        "pipeline `{}` version {} is not registered",
                        exec.pipeline, exec.pipeline_version
                    )
                })?;
            let input = crate::executor::rules::check(
                &self.engine.job_context(),
                &loaded.pipeline,
                &exec,
                job.stage,
                phase,
            )
            .await;
            return self.complete(&key, &input).await.map(|()| Settled::Done);
        }
        let Some(run) = exec
            .stages
            .get(job.stage)
            .and_then(|s| s.actions.get(job.action))
        else {
            return Ok(Settled::Done);
        };
        if is_chained && run.runner.as_deref() != Some(lease.id.as_str()) {
            // A change made elsewhere (a conflict the chain's write met) gave the run to
            // another runner meanwhile: it is theirs.
            return Ok(Settled::Done);
        }
        if run.status != Status::InProgress
            || run.attempt != job.attempt
            || (run.waiting.is_some()
                && !job.expire
                && !matches!(run.waiting.as_ref().map(|w| &w.wake), Some(Wake::Timer(_))))
        {
            // A delivery that comes back finds its result recorded: its engine died (or lost
            // the lease) after recording it, maybe in the middle of a chain. Publish and queue
            // what followed. (A first delivery found stale is a duplicate: whoever runs the
            // execution has it in hand.)
            if !is_chained && lease.delivery.delivered > 1 {
                self.republish(&exec).await;
                self.push_jobs(&outstanding(&exec, |runner| runner != lease.id))
                    .await;
            }
            return Ok(Settled::Done);
        }
        let now = crate::clock::now().0;
        if job.not_before > now {
            if is_chained {
                self.push_job(job).await;
                return Ok(Settled::Done);
            }
            lease
                .delivery
                .nak(Duration::from_millis(job.not_before - now))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Settled::Deferred);
        }
        if job.expire {
            let waited = run
                .waiting
                .as_ref()
                .map(|w| {
                    crate::model::units::short_duration(Duration::from_millis(
                        crate::clock::now().0.saturating_sub(w.since.0),
                    ))
                })
                .unwrap_or_default();
            let input = Input::Expire {
                stage: job.stage,
                action: job.action,
                attempt: job.attempt,
                reason: format!("timeout: no approval decision within {waited}"),
                at: crate::clock::now(),
            };
            return self.complete(&key, &input).await.map(|()| Settled::Done);
        }
        let loaded = match early {
            Some(loaded) => loaded,
            None => {
                self.load(&job.tenant, &exec.pipeline, Some(exec.pipeline_version))
                    .await
            }
        };
        let loaded = match loaded {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(format!(
                "pipeline `{}` version {} is not registered",
                exec.pipeline, exec.pipeline_version
            )),
            Err(e) => Err(e),
        };
        let attempt = job::Attempt {
            stage: job.stage,
            action: job.action,
            attempt: job.attempt,
            delay_ms: 0,
            spec: loaded.and_then(|l| {
                job::JobSpec::build(
                    &l.pipeline,
                    &l.plugins,
                    &exec,
                    job.stage,
                    job.action,
                    job.attempt,
                )
            }),
        };
        let how = if is_chained {
            "chained".to_string()
        } else {
            format!("delivery {}", lease.delivery.delivered)
        };
        let (stage, action) = (
            &exec.stages[job.stage].name,
            &exec.stages[job.stage].actions[job.action].name,
        );
        if !is_chained && lease.delivery.delivered > 1 {
            // The engine that had it did not finish it (it died, or lost its lease).
            tracing::info!(
                execution = %job.execution_id,
                action = %format!("{stage}/{action}"),
                attempt = job.attempt,
                delivery = lease.delivery.delivered,
                "job redelivered: the engine that had it did not finish it"
            );
        }
        tracing::info!(
            "running {}/{stage}/{action} attempt {} ({how})",
            job.execution_id,
            job.attempt
        );
        let mut cx = self.engine.job_context();
        cx.functions = self.functions.clone();
        let id = job_id(
            &job.tenant,
            &job.execution_id,
            job.stage,
            job.action,
            job.attempt,
        );
        let cancel = Arc::new(tokio::sync::Notify::new());
        self.running
            .lock()
            .unwrap()
            .insert(id.clone(), cancel.clone());
        let metrics = crate::metrics::get();
        metrics.jobs_in_flight.inc();
        let began = std::time::Instant::now();
        let finished = tokio::select! {
            done = attempt.run(&cx) => Some(done),
            _ = cancel.notified() => None,
        };
        metrics.jobs_in_flight.dec();
        metrics
            .action_seconds
            .get_or_create(&crate::metrics::PluginLabel::of(
                &exec.stages[job.stage].actions[job.action].plugin.reference,
            ))
            .observe(began.elapsed().as_secs_f64());
        self.running.lock().unwrap().remove(&id);
        let Some((input, leftover)) = finished else {
            // Abandoned by `stop --abandon`: dropping the call stopped the guest (and killed its
            // host processes); the record already says Abandoned.
            tracing::info!("job {id} cancelled");
            return Ok(Settled::Done);
        };
        self.archive_log(job, &exec).await;
        // The result is applied to the chain's copy of the record (a delivered job starts the
        // copy) and written behind while what it made runnable goes on (see `journal`).
        let journal = match chained {
            Some((journal, _)) => journal,
            None => Journal::new(
                key,
                lease.id.clone(),
                exec,
                journal::Base::Stored(revision),
                self.gather(),
                0,
            ),
        };
        let applied = self.apply_to(&journal, &input).await;
        drop(running);
        leftover.release(&cx);
        let applied = applied?;
        let write = async {
            match applied.write {
                true => self.write_behind(&journal).await,
                false => Ok(()),
            }
        };
        let (written, (), chain) = futures_util::future::join3(
            write,
            self.settle(applied.settle),
            self.run_chain(applied.kept, applied.change, &journal, lease),
        )
        .await;
        written?;
        if !is_chained {
            // The chain this delivered job started has ended.
            self.sent(&journal.key).await;
            self.compact(&journal).await;
        }
        chain.map(|()| Settled::Done)
    }

    /// Run the jobs a result kept here, in parallel, each from the chain's copy of the record;
    /// those that are not contained once `change` is stored. The first took the place of the
    /// job that made it runnable; each other one holds an idle worker's place until it ends.
    async fn run_chain(
        &self,
        kept: Kept,
        change: u64,
        journal: &Arc<Journal>,
        lease: &Lease<'_>,
    ) -> Result<(), String> {
        let runs = kept.into_iter().map(|(job, place)| {
            let journal = journal.clone();
            async move {
                let _place = place;
                Box::pin(self.run_job(&job, lease, Some((journal, change)))).await
            }
        });
        let results = futures_util::future::join_all(runs).await;
        results
            .into_iter()
            .find(|r| r.is_err())
            .unwrap_or(Ok(Settled::Done))
            .map(|_| ())
    }

    /// Copy the lines the attempt logged to the shared archive, if there is one. Done before
    /// its result is recorded: an attempt that shows as ended has its log there.
    async fn archive_log(&self, job: &JobMessage, exec: &Execution) {
        let Some(archive) = &self.edges.archive_log else {
            return;
        };
        let (stage, action) = (
            exec.stages[job.stage].name.clone(),
            exec.stages[job.stage].actions[job.action].name.clone(),
        );
        // Most small actions log nothing: no hand-off to a blocking thread for them.
        if !self.engine.logs.exists(&job.execution_id, &stage, &action) {
            return;
        }
        let (logs, execution, attempt) = (
            self.engine.logs.clone(),
            job.execution_id.clone(),
            job.attempt,
        );
        let key = crate::executor::logs::AttemptRef {
            tenant: job.tenant.clone(),
            execution: execution.clone(),
            stage: stage.clone(),
            action: action.clone(),
            attempt,
        };
        // A build's log may be large: copy it off the async workers, a line at a time, and
        // stream the copy up.
        let copy = tokio::task::spawn_blocking(move || {
            logs.copy_attempt(&execution, &stage, &action, attempt)
        });
        match copy.await {
            Ok(Ok(Some(file))) => archive.put(key, file.to_path_buf()).await,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("copy the log of {key:?} for the archive: {e}"),
            Err(e) => tracing::warn!("copy the log of {key:?} for the archive: {e}"),
        }
    }

    /// Apply an input to a stored execution with compare-and-swap (retried on conflict), then
    /// publish its events and queue its jobs.
    pub(in crate::service) async fn complete(
        &self,
        key: &str,
        input: &Input,
    ) -> Result<(), String> {
        let after = self
            .record(key, &|_: &Execution| Some(input.clone()))
            .await?;
        self.settle(after).await;
        Ok(())
    }

    /// Apply the input `make` gives for a stored execution (none: nothing to do) with
    /// compare-and-swap, retrying while the store is unreachable, then publish its events and
    /// queue its jobs; returns the cross-record work it caused.
    pub(in crate::service) async fn record(
        &self,
        key: &str,
        make: &(dyn Fn(&Execution) -> Option<Input> + Send + Sync),
    ) -> Result<Vec<lanes::After>, String> {
        // The store may be briefly unreachable (a NATS restart): keep the result rather than
        // run the action again, for up to a minute.
        let mut delay = Duration::from_millis(100);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        // A write whose answer was lost: it may be stored (see `try_record`).
        let mut uncertain = None;
        loop {
            match self.try_record(key, make, &mut uncertain).await {
                Err(KvError::Backend(e)) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!("recording a result failed ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }

    /// One try of [`Service::record`]. A write that fails with a backend error may have been
    /// stored all the same (its answer lost): it is kept in `uncertain`, and if the next try
    /// finds the record exactly as that write left it, the write stood, and its events, jobs and
    /// lane work go out then (applying the input again would find nothing to do, and they
    /// would be lost).
    async fn try_record(
        &self,
        key: &str,
        make: &(dyn Fn(&Execution) -> Option<Input> + Send + Sync),
        uncertain: &mut Option<Unanswered>,
    ) -> Result<Vec<lanes::After>, KvError> {
        let kv = &*self.edges.executions;
        let mut carried = Vec::new();
        // Stages entered by tries a conflict undid: freed unless the record written holds them.
        let mut arrived = Vec::new();
        loop {
            let (bytes, revision) = kv
                .get(key)
                .await?
                .ok_or_else(|| KvError::Backend(format!("execution {key} vanished")))?;
            if let Some(landed) = uncertain.take().filter(|u| u.bytes == bytes) {
                self.send_and_queue(landed.publish, &landed.queued).await;
                carried.extend(landed.after);
                if let Ok(exec) = serde_json::from_slice::<Execution>(&bytes) {
                    carried.extend(lanes::released(&exec, &arrived));
                }
                return Ok(carried);
            }
            let mut exec: Execution = serde_json::from_slice(&bytes)
                .map_err(|e| KvError::Backend(format!("execution {key} unreadable: {e}")))?;
            let Some(input) = make(&exec) else {
                carried.extend(lanes::released(&exec, &arrived));
                return Ok(carried);
            };
            let unsent = self.unsent(&exec);
            let before = Snapshot::of(&exec);
            let mut commands = apply(&mut exec, &input);
            // Lane changes for other executions stand even if this write must be retried.
            carried.extend(
                self.enter_inline(&mut exec, &mut commands, None, &mut arrived)
                    .await?,
            );
            if commands.is_empty() && before == Snapshot::of(&exec) {
                carried.extend(lanes::released(&exec, &arrived));
                return Ok(carried);
            }
            let (queued, notices, after) = crate::service::follow_up(&exec, commands);
            let publish = self.stamp(&mut exec, before, notices, unsent, self.in_flight(key));
            let bytes = serde_json::to_vec(&exec).map_err(|e| KvError::Backend(e.to_string()))?;
            match kv.update(key, bytes.clone(), revision).await {
                Ok(_) => {
                    self.send_and_queue(publish, &queued).await;
                    carried.extend(after);
                    carried.extend(lanes::released(&exec, &arrived));
                    return Ok(carried);
                }
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => {
                    *uncertain = Some(Unanswered {
                        bytes,
                        publish,
                        queued,
                        after,
                    });
                    return Err(e);
                }
            }
        }
    }

    /// Split the jobs a change made runnable into those the chain runs here (the first that
    /// should start now, and more while idle workers allow) and those to queue, and name the
    /// chain in the record as the runner of those it keeps.
    pub(in crate::service) fn keep_for_chain(
        &self,
        exec: &mut Execution,
        lease: &str,
        jobs: Vec<JobMessage>,
    ) -> (Kept, Vec<JobMessage>) {
        forget_ended_runners(exec);
        let (mut kept, mut queued) = (Vec::new(), Vec::new());
        for job in jobs {
            let run = &mut exec.stages[job.stage].actions[job.action];
            // The first runs in the place of what made it runnable; others need an idle one.
            let place = match runs_now(&job) {
                false => None,
                true if kept.is_empty() => Some(None),
                true => self.places.take_idle(&job.tenant).map(Some),
            };
            if let Some(place) = place {
                run.runner = Some(lease.to_string());
                kept.push((job, place));
            } else {
                if job.check.is_none() {
                    run.runner = None;
                }
                queued.push(job);
            }
        }
        (kept, queued)
    }
}

/// A run that ended, or waits (for an approval, an event, a timer), has no runner.
pub(in crate::service) fn forget_ended_runners(exec: &mut Execution) {
    for action in exec.stages.iter_mut().flat_map(|s| s.actions.iter_mut()) {
        // (Only written when set: a write copies an action the record shares.)
        if action.runner.is_some()
            && (action.status != Status::InProgress || action.waiting.is_some())
        {
            action.runner = None;
        }
    }
}

/// A write of [`Service::record`] that failed without an answer, and what to do if it stood.
struct Unanswered {
    bytes: Vec<u8>,
    publish: Vec<Event>,
    queued: Vec<JobMessage>,
    after: Vec<lanes::After>,
}

/// Jobs a chain runs here, each with the idle worker's place it took (none for the first: it
/// runs in the place of what made it runnable).
pub(in crate::service) type Kept = Vec<(JobMessage, Option<super::places::Place>)>;
