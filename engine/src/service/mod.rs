//! The service: engines that start pipelines from trigger events, run their jobs from a
//! shared queue, and keep every execution in a key-value bucket, so that any engine can
//! continue any execution. The same code runs on the embedded edges (`sluice serve`) and on
//! NATS (`sluice serve --nats URL`, many engines).
//!
//! Flow: trigger event → claim (one event id, one execution) → execution record created and
//! started (scheduler) → jobs pushed → a worker runs a job → its result applied to the record
//! with compare-and-swap → next jobs pushed → … Each message is acknowledged only after what
//! it caused is durable; redelivery after a crash is harmless because the scheduler ignores
//! stale completions and pushes are deduplicated.

pub mod api;
pub mod functions;
pub mod client;
pub mod lanes;
pub mod pipelines;
pub mod schedule;
pub mod socket;
pub mod trigger;
pub mod wakes;
pub mod webhook;
pub mod wiring;
#[cfg(test)]
mod tests;

use crate::bus::{Event, EventBus, Kind, Snapshot};
use crate::executor::{Engine, job};
use crate::kv::{Kv, KvError, get_json};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Diagnostics, Pipeline};
use crate::queue::{Delivery, WorkQueue};
use crate::scheduler::{Command, Execution, Input, PluginRef, Status, Timestamp, Wake, apply};
use pipelines::StoredPipeline;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trigger::TriggerEvent;

/// A job on the queue: which attempt of which action to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobMessage {
    /// Tenant.
    pub tenant: String,
    /// Execution id.
    pub execution_id: String,
    /// Stage index.
    pub stage: usize,
    /// Action index.
    pub action: usize,
    /// Attempt.
    pub attempt: u32,
    /// Not before this time (retry backoff), milliseconds since the epoch.
    #[serde(default)]
    pub not_before: u64,
    /// Not a run: fail the attempt if it is still waiting (an approval's deadline).
    #[serde(default)]
    pub expire: bool,
    /// Not a run: check the stage's condition for this phase (it has custom rules). The
    /// number is the stage's start time, which tells checks of a re-entered stage apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<(crate::scheduler::Phase, u64)>,
}

/// How a job delivery ended.
enum Settled {
    /// Handled: acknowledge it.
    Done,
    /// Handed back to the queue for later.
    Deferred,
}

/// A rejected trigger event, as kept in the dead letter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Tenant.
    pub tenant: String,
    /// The pipeline the event was addressed to.
    pub pipeline: String,
    /// Why it was rejected.
    pub reason: String,
    /// The event as received (lossy UTF-8).
    pub payload: String,
    /// When.
    pub at: Timestamp,
}

/// What the service runs on.
pub struct Edges {
    /// Registered pipelines.
    pub pipelines: Arc<dyn Kv>,
    /// Executions, trigger claims and dead letters.
    pub executions: Arc<dyn Kv>,
    /// Registered functions (`invoke@1`): `<tenant>/<name>` → digest.
    pub functions: Arc<dyn Kv>,
    /// Who waits for which NATS subject (`_waits/<hash>`).
    pub waits: Arc<dyn Kv>,
    /// Trigger events in.
    pub triggers: Arc<dyn WorkQueue>,
    /// Jobs.
    pub jobs: Arc<dyn WorkQueue>,
    /// Events out.
    pub bus: Arc<dyn EventBus>,
    /// Where rejected events also go (the NATS dead-letter subject); the bucket keeps them always.
    pub dead_letters: Option<Arc<dyn Fn(&DeadLetter) + Send + Sync>>,
    /// Makes a pipeline's extra `triggers.nats` subjects deliver to the engines (NATS: a stream
    /// per pipeline); an error refuses the registration.
    pub extra_subjects: Option<Arc<dyn Fn(String, String, Vec<String>) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>>,
    /// Tells the other engines to cancel jobs (by id) that `stop --abandon` abandoned.
    pub cancel_elsewhere: Option<Arc<dyn Fn(&str, Vec<String>) + Send + Sync>>,
    /// Makes NATS capture a subject an action waits for (`wake: event(subject)`); none: the
    /// embedded service, where only `sluice wake` wakes such actions.
    pub wake_subject: Option<Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>>,
    /// Keeps a copy of each attempt's log lines where every engine and client can read them
    /// (NATS: the `sluice-logs` Object Store), given the attempt's object name; none: the
    /// embedded service, whose one engine's data directory has them all.
    pub archive_log: Option<Arc<dyn Fn(String, Vec<crate::executor::LogLine>) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>>,
}

/// A parsed, resolved pipeline version.
pub struct Loaded {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    plugins: ResolvedPlugins,
    /// Its registered version.
    pub version: u64,
}

/// One engine of the service.
pub struct Service {
    engine: Engine,
    edges: Edges,
    loaded: Mutex<HashMap<(String, String, u64), Arc<Loaded>>>,
    /// Where `invoke@1` finds registered functions.
    functions: Arc<functions::Registered>,
    /// Jobs running in this engine, by job id, to cancel on `stop --abandon`.
    running: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Triggers and jobs handled so far (the idle trimmer watches it).
    handled: std::sync::atomic::AtomicU64,
    /// This engine process, as named in the outboxes of the changes it records.
    incarnation: String,
}

/// A job's id: its idempotency key with indices (`tenant/execution/stage/action/attempt`).
fn job_id(tenant: &str, execution_id: &str, stage: usize, action: usize, attempt: u32) -> String {
    format!("{tenant}/{execution_id}/{stage}/{action}/{attempt}")
}

pub(crate) fn exec_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/x/{id}")
}

fn claim_key(tenant: &str, pipeline: &str, event_id: &str) -> String {
    format!("{tenant}/claim/{pipeline}/{}", &blake3::hash(event_id.as_bytes()).to_hex()[..32])
}

/// Split `sluice.<tenant>.<kind>.<rest>` into (tenant, rest).
fn subject_parts<'a>(subject: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix("sluice.")?;
    let (tenant, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
    Some((tenant, rest))
}

/// The jobs an execution is waiting for: a run of every action in progress, or for one that
/// waits, the job that ends its wait (a timer's next attempt, an approval's deadline).
fn outstanding(exec: &Execution) -> Vec<JobMessage> {
    let mut out = Vec::new();
    for (si, stage) in exec.stages.iter().enumerate() {
        for (ai, action) in stage.actions.iter().enumerate() {
            if action.status != Status::InProgress {
                continue;
            }
            let mut job = JobMessage { tenant: exec.tenant.clone(), execution_id: exec.execution_id.clone(), stage: si, action: ai, attempt: action.attempt, not_before: 0, expire: false, check: None };
            match action.waiting.as_ref().map(|w| (&w.wake, w)) {
                None => {}
                Some((Wake::Timer(ms), w)) => job.not_before = w.since.0 + ms,
                Some((_, w)) => match w.deadline {
                    Some(deadline) => {
                        job.expire = true;
                        job.not_before = deadline.0;
                    }
                    None => continue, // woken only by an event
                },
            }
            out.push(job);
        }
        if let Some(phase) = stage.checking {
            out.push(check_job(exec, si, phase));
        }
    }
    out
}

/// The job that checks stage `si`'s condition for `phase`.
fn check_job(exec: &Execution, si: usize, phase: crate::scheduler::Phase) -> JobMessage {
    let round = exec.stages[si].started_at.map(|t| t.0).unwrap_or(0);
    JobMessage { tenant: exec.tenant.clone(), execution_id: exec.execution_id.clone(), stage: si, action: 0, attempt: 0, not_before: 0, expire: false, check: Some((phase, round)) }
}

/// The jobs, notifications and cross-record work that `commands` (just applied to `exec`)
/// ask for.
fn follow_up(exec: &Execution, commands: Vec<Command>) -> (Vec<JobMessage>, Vec<(usize, usize)>, Vec<lanes::After>) {
    let (mut jobs, mut notices, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for c in commands {
        match c {
            Command::RunAction { stage, action, attempt, delay_ms } => {
                let not_before = if delay_ms > 0 { Timestamp::now().0 + delay_ms } else { 0 };
                jobs.push(JobMessage { tenant: exec.tenant.clone(), execution_id: exec.execution_id.clone(), stage, action, attempt, not_before, expire: false, check: None });
            }
            Command::Await { stage, action, attempt } => {
                let waiting = exec.stages[stage].actions[action].waiting.as_ref();
                if let Some(deadline) = waiting.and_then(|w| w.deadline) {
                    jobs.push(JobMessage { tenant: exec.tenant.clone(), execution_id: exec.execution_id.clone(), stage, action, attempt, not_before: deadline.0, expire: true, check: None });
                }
                if waiting.is_some_and(|w| w.wake == Wake::Approval) {
                    notices.push((stage, action));
                }
                if let Some(Wake::Event(subject)) = waiting.map(|w| &w.wake) {
                    let waiter = wakes::Waiter { tenant: exec.tenant.clone(), execution: exec.execution_id.clone(), stage, action, attempt };
                    after.push(lanes::After::AwaitEvent { waiter, subject: subject.clone() });
                }
            }
            Command::CheckRules { stage, phase } => jobs.push(check_job(exec, stage, phase)),
            Command::Enter { stage } => after.push(lanes::After::arrive(exec, stage)),
            Command::Leave { stage } => after.push(lanes::After::leave(exec, stage)),
            Command::Rollback { stage } => after.push(lanes::After::Rollback { tenant: exec.tenant.clone(), pipeline: exec.pipeline.clone(), stage: exec.stages[stage].name.clone(), failed: exec.execution_id.clone() }),
            Command::Finish { .. } => {}
        }
    }
    (jobs, notices, after)
}

/// Handle every delivery of `queue`, for ever; a failing queue (NATS reconnecting) is retried.
pub(crate) async fn consume<F: std::future::Future<Output = ()>>(queue: &dyn WorkQueue, what: &str, handle: impl Fn(Delivery) -> F) {
    loop {
        match queue.next().await {
            Ok(delivery) => handle(delivery).await,
            Err(e) => {
                tracing::warn!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl Service {
    /// An engine on `edges`, running jobs with `engine`'s runtime, blobs and workspaces.
    pub fn new(engine: Engine, edges: Edges) -> Arc<Self> {
        let functions = Arc::new(functions::Registered { kv: edges.functions.clone(), runtime: engine.registry.runtime().clone(), blobs: engine.blobs.clone() });
        let incarnation = ulid::Ulid::new().to_string();
        Arc::new(Service { engine, edges, loaded: Mutex::new(HashMap::new()), functions, running: Mutex::new(HashMap::new()), handled: Default::default(), incarnation })
    }

    /// Before applying a change to a stored execution: the events of its last change when
    /// another engine (or an earlier run of this one) recorded that, since it may have died
    /// before publishing them. They go out again with the new change's.
    pub(crate) fn unsent(&self, exec: &Execution) -> Vec<Event> {
        if exec.outbox.writer == self.incarnation { Vec::new() } else { crate::bus::outbox_events(exec) }
    }

    /// Number a change about to be recorded and keep in the record what its events are
    /// derived from (`before`, and the approvals it began waiting for). Returns what to
    /// publish once it is recorded: `unsent`, then its events.
    pub(crate) fn stamp(&self, exec: &mut Execution, before: Snapshot, notices: Vec<(usize, usize)>, mut unsent: Vec<Event>) -> Vec<Event> {
        let change = exec.outbox.change + 1;
        exec.outbox = crate::scheduler::Outbox { change, writer: self.incarnation.clone(), before: Some(before), notices };
        unsent.extend(crate::bus::outbox_events(exec));
        unsent
    }

    /// Publish the last change's events again unless this engine process recorded it (then
    /// they are on their way): for a cause (job, trigger) delivered again, or at recovery.
    pub(crate) async fn republish(&self, exec: &Execution) {
        self.edges.bus.publish_all(self.unsent(exec)).await;
    }

    /// The engine (plugins, runtime).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The edges.
    pub fn edges(&self) -> &Edges {
        &self.edges
    }

    /// Run the trigger consumer and `workers` job workers until the process ends.
    pub async fn run(self: Arc<Self>, workers: usize) {
        crate::alloc::return_freed_memory_promptly();
        let mut tasks = tokio::task::JoinSet::new();
        let me = self.clone();
        tasks.spawn(async move { me.consume_triggers().await });
        let me = self.clone();
        tasks.spawn(async move { me.run_schedules().await });
        for _ in 0..workers.max(1) {
            let me = self.clone();
            tasks.spawn(async move { me.consume_jobs().await });
        }
        let me = self.clone();
        tasks.spawn(async move { me.trim_when_idle().await });
        while tasks.join_next().await.is_some() {}
    }

    /// After a burst of work, once the engine is idle, give the memory the allocator kept for
    /// it back to the operating system: thousands of waiting executions cost only their records,
    /// not the peak of starting them.
    async fn trim_when_idle(&self) {
        let (mut seen, mut busy) = (0, false);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.handled.load(std::sync::atomic::Ordering::Relaxed);
            if now != seen {
                (seen, busy) = (now, true);
            } else if busy {
                busy = false;
                crate::alloc::release_free_memory();
            }
        }
    }

    /// Push the outstanding jobs of every execution still running: the embedded queue does
    /// not survive a restart, the records do.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut arrivals = Vec::new();
        for key in self.edges.executions.keys("").await? {
            if !key.contains("/x/") {
                continue;
            }
            if let Some((exec, _)) = get_json::<Execution>(&*self.edges.executions, &key).await? {
                if !exec.status.is_terminal() {
                    self.republish(&exec).await;
                    self.push_jobs(&outstanding(&exec)).await;
                    arrivals.extend(exec.entering.map(|stage| lanes::After::arrive(&exec, stage)));
                    n += 1;
                }
            }
        }
        // A crash between recording a change and updating the lanes left them behind.
        self.settle(arrivals).await;
        self.reconcile_lanes().await?;
        Ok(n)
    }

    async fn consume_triggers(&self) {
        consume(&*self.edges.triggers, "trigger queue", |d| self.handle_trigger(d)).await
    }

    async fn consume_jobs(&self) {
        consume(&*self.edges.jobs, "job queue", |d| self.handle_job(d)).await
    }

    /// Load (and cache) one version of a registered pipeline, parsed and with its plugins
    /// resolved.
    async fn load(&self, tenant: &str, name: &str, version: Option<u64>) -> Result<Option<Arc<Loaded>>, String> {
        match pipelines::get(&*self.edges.pipelines, tenant, name, version).await.map_err(|e| e.to_string())? {
            Some(stored) => self.loaded(tenant, &stored).await.map(Some),
            None => Ok(None),
        }
    }

    /// A stored pipeline version, parsed and resolved once per engine.
    pub async fn loaded(&self, tenant: &str, stored: &StoredPipeline) -> Result<Arc<Loaded>, String> {
        let key = (tenant.to_string(), stored.name.clone(), stored.version);
        if let Some(hit) = self.loaded.lock().unwrap().get(&key) {
            return Ok(hit.clone());
        }
        let loaded = Arc::new(self.check(stored).await.map_err(|d| d.to_string())?);
        self.loaded.lock().unwrap().insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Parse and validate a pipeline as registered.
    async fn check(&self, stored: &StoredPipeline) -> Result<Loaded, Diagnostics> {
        let (pipeline, problems) = crate::model::parse::parse(&stored.file, stored.dir.clone(), &stored.yaml);
        let Some(pipeline) = pipeline else {
            return Err(Diagnostics { file: stored.file.clone(), items: problems });
        };
        let plugins = self.engine.check(&pipeline, problems, &Default::default()).await?;
        Ok(Loaded { pipeline: Arc::new(pipeline), plugins, version: stored.version })
    }

    async fn reject(&self, tenant: &str, pipeline: &str, reason: String, payload: &[u8]) {
        tracing::warn!("trigger for {tenant}/{pipeline} rejected: {reason}");
        let letter = DeadLetter { tenant: tenant.into(), pipeline: pipeline.into(), reason: reason.clone(), payload: String::from_utf8_lossy(payload).into_owned(), at: Timestamp::now() };
        let key = format!("{}/dead/{}", if crate::kv::valid_key(tenant) { tenant } else { "_invalid" }, ulid::Ulid::new());
        if let Ok(bytes) = serde_json::to_vec(&letter) {
            if let Err(e) = self.edges.executions.create(&key, bytes).await {
                tracing::warn!("could not record the dead letter: {e}");
            }
        }
        if let Some(publish) = &self.edges.dead_letters {
            publish(&letter);
        }
        self.edges.bus.publish(Event {
            id: String::new(),
            kind: Kind::Trigger,
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            execution_id: String::new(),
            stage: None,
            action: None,
            status: Status::Failed,
            attempt: None,
            at: Timestamp::now(),
            duration_ms: None,
            detail: Some(reason),
            pipeline_version: None,
            approval: None,
        });
    }

    async fn handle_trigger(&self, delivery: Delivery) {
        self.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((tenant, pipeline)) = subject_parts(&delivery.subject, "trigger") else {
            self.reject("_invalid", "_invalid", format!("unexpected subject {}", delivery.subject), &delivery.payload).await;
            let _ = delivery.ack().await;
            return;
        };
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        self.handle_trigger_for(&tenant, &pipeline, delivery).await
    }

    /// Handle a trigger event addressed to `tenant`/`pipeline` (by its subject, or because it
    /// arrived on one of the pipeline's extra `triggers.nats` subjects).
    pub async fn handle_trigger_for(&self, tenant: &str, pipeline: &str, delivery: Delivery) {
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        match self.start(&tenant, &pipeline, &delivery.payload).await {
            Ok(Ok(id)) => tracing::info!("trigger for {tenant}/{pipeline}: execution {id}"),
            Ok(Err(reason)) => self.reject(&tenant, &pipeline, reason, &delivery.payload).await,
            Err(e) => {
                // The store is unreachable: leave the event for later (or another engine).
                tracing::warn!("trigger for {tenant}/{pipeline} not handled yet: {e}");
                let _ = delivery.nak(Duration::from_secs(1)).await;
                return;
            }
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!("ack of a trigger failed ({e}); it will come again and start nothing new");
        }
    }

    /// Start an execution for a trigger event, at most once per event id. The outer error is
    /// a store failure (try again); the inner one a reason to reject the event.
    async fn start(&self, tenant: &str, name: &str, payload: &[u8]) -> Result<Result<String, String>, KvError> {
        let event = match TriggerEvent::parse(payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        if !crate::kv::valid_key(tenant) || tenant.starts_with('_') || !crate::model::is_valid_name(name) {
            return Ok(Err(format!("invalid tenant or pipeline name in `{tenant}`/`{name}`")));
        }
        let kv = &*self.edges.executions;
        // One event id → one execution: the claim names the execution before it exists.
        let claim = claim_key(tenant, name, &event.id);
        let execution_id = match get_json::<String>(kv, &claim).await? {
            Some((id, _)) => id,
            None => {
                let loaded = match self.load(tenant, name, None).await {
                    Ok(Some(l)) => l,
                    Ok(None) => return Ok(Err(format!("unknown pipeline `{name}` (register it with `sluice pipeline put`)"))),
                    Err(e) => return Ok(Err(format!("pipeline `{name}` does not load: {e}"))),
                };
                if let Err(reason) = trigger::accepts(&loaded.pipeline.triggers, &event) {
                    return Ok(Err(reason));
                }
                if let Some(k) = event.variables.keys().find(|k| !loaded.pipeline.variables.contains_key(*k)) {
                    return Ok(Err(format!("the event sets variable `{k}`, which pipeline `{name}` does not declare")));
                }
                let id = ulid::Ulid::new().to_string();
                match kv.create(&claim, serde_json::to_vec(&id).unwrap_or_default()).await {
                    Ok(_) => id,
                    Err(KvError::Conflict { .. }) => get_json::<String>(kv, &claim).await?.map(|(id, _)| id).unwrap_or(id),
                    Err(e) => return Err(e),
                }
            }
        };
        let key = exec_key(tenant, &execution_id);
        let exec = match get_json::<Execution>(kv, &key).await? {
            Some((exec, _)) => {
                // A trigger delivered again: the engine that started the execution may have died
                // before its first events were stored.
                if !exec.status.is_terminal() {
                    self.republish(&exec).await;
                }
                exec
            }
            None => {
                // The claim's version is the head at claim time, or a later one after a crash:
                // either way a registered version.
                let loaded = match self.load(tenant, name, None).await {
                    Ok(Some(l)) => l,
                    Ok(None) => return Ok(Err(format!("unknown pipeline `{name}`"))),
                    Err(e) => return Ok(Err(format!("pipeline `{name}` does not load: {e}"))),
                };
                let plugins = &loaded.plugins;
                let pin = |uses: &str| PluginRef {
                    reference: uses.to_string(),
                    digest: plugins.get(uses).and_then(|p| p.as_ref().ok()).map(|p| p.digest.clone()).unwrap_or_default(),
                };
                let mut variables = loaded.pipeline.variables.clone();
                variables.extend(event.variables.clone());
                let mut exec = Execution::new(execution_id.clone(), tenant, &loaded.pipeline, &pin, variables);
                exec.pipeline_version = loaded.version;
                exec.trigger = Some(event.info());
                exec.gated = true;
                let before = Snapshot::of(&exec);
                let mut commands = apply(&mut exec, &Input::Start { at: Timestamp::now() });
                let others = self.admit_inline(&mut exec, &mut commands).await?;
                let publish = self.stamp(&mut exec, before, Vec::new(), Vec::new());
                match kv.create(&key, serde_json::to_vec(&exec).unwrap_or_default()).await {
                    Ok(_) => {
                        // The trigger is acknowledged after this: its events are stored by then.
                        self.edges.bus.publish_all(publish).await;
                        self.settle(others).await;
                        exec
                    }
                    Err(KvError::Conflict { .. }) => match get_json::<Execution>(kv, &key).await? {
                        Some((exec, _)) => exec,
                        None => return Err(KvError::Backend("execution vanished while starting".into())),
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        self.push_jobs(&outstanding(&exec)).await;
        // Waiting before its first stage: join the lane (again, after a crash: harmless).
        if let Some(stage) = exec.entering {
            self.settle(vec![lanes::After::arrive(&exec, stage)]).await;
        }
        Ok(Ok(execution_id))
    }

    /// Queue jobs, all at once (each waits for the stream's acknowledgement).
    async fn push_jobs(&self, jobs: &[JobMessage]) {
        futures_util::future::join_all(jobs.iter().map(|job| self.push_job(job))).await;
    }

    async fn push_job(&self, job: &JobMessage) {
        let mut id = job_id(&job.tenant, &job.execution_id, job.stage, job.action, job.attempt);
        if job.expire {
            id.push_str("/expire");
        }
        if let Some((phase, round)) = job.check {
            id = format!("{}/{}/{}/check/{}/{round}", job.tenant, job.execution_id, job.stage, phase.as_str());
        }
        let subject = crate::nats::jobs_subject(&job.tenant);
        let payload = serde_json::to_vec(job).unwrap_or_default();
        let mut delay = Duration::from_millis(50);
        // A job that cannot be queued would stall its execution: keep trying.
        while let Err(e) = self.edges.jobs.push(&subject, &id, payload.clone()).await {
            tracing::warn!("queueing job {id} failed ({e}); retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn handle_job(&self, delivery: Delivery) {
        self.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job: JobMessage = match serde_json::from_slice(&delivery.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("dropping a malformed job: {e}");
                let _ = delivery.ack().await;
                return;
            }
        };
        match self.run_job(&job, &delivery).await {
            Ok(Settled::Deferred) => {}
            Ok(Settled::Done) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!("ack of job {}/{} failed: {e}", job.execution_id, job.attempt);
                }
            }
            Err(e) => {
                tracing::warn!("job of {} not finished: {e}; it will be retried", job.execution_id);
                let _ = delivery.nak(Duration::from_secs(1)).await;
            }
        }
    }

    async fn run_job(&self, job: &JobMessage, delivery: &Delivery) -> Result<Settled, String> {
        let kv = &*self.edges.executions;
        let key = exec_key(&job.tenant, &job.execution_id);
        let Some((exec, _)) = get_json::<Execution>(kv, &key).await.map_err(|e| e.to_string())? else {
            tracing::error!("job for unknown execution {}", job.execution_id);
            return Ok(Settled::Done);
        };
        if exec.status.is_terminal() {
            return Ok(Settled::Done);
        }
        if let Some((phase, _)) = job.check {
            if exec.stages.get(job.stage).is_none_or(|s| s.checking != Some(phase)) {
                return Ok(Settled::Done); // already decided (a redelivery)
            }
            let loaded = self.load(&job.tenant, &exec.pipeline, Some(exec.pipeline_version)).await?.ok_or_else(|| format!("pipeline `{}` version {} is not registered", exec.pipeline, exec.pipeline_version))?;
            let input = crate::executor::rules::check(&self.engine.job_context(), &loaded.pipeline, &exec, job.stage, phase).await;
            return self.complete(&key, &input).await.map(|()| Settled::Done);
        }
        let Some(run) = exec.stages.get(job.stage).and_then(|s| s.actions.get(job.action)) else { return Ok(Settled::Done) };
        if run.status != Status::InProgress || run.attempt != job.attempt || (run.waiting.is_some() && !job.expire && !matches!(run.waiting.as_ref().map(|w| &w.wake), Some(Wake::Timer(_)))) {
            // Already recorded (a redelivery after a crash): make sure what followed is
            // published and queued.
            self.republish(&exec).await;
            self.push_jobs(&outstanding(&exec)).await;
            return Ok(Settled::Done);
        }
        let now = Timestamp::now().0;
        if job.not_before > now {
            delivery.nak(Duration::from_millis(job.not_before - now)).await.map_err(|e| e.to_string())?;
            return Ok(Settled::Deferred);
        }
        if job.expire {
            let waited = run.waiting.as_ref().map(|w| crate::model::units::short_duration(Duration::from_millis(Timestamp::now().0.saturating_sub(w.since.0)))).unwrap_or_default();
            let input = Input::Expire { stage: job.stage, action: job.action, attempt: job.attempt, reason: format!("timeout: no approval decision within {waited}"), at: Timestamp::now() };
            return self.complete(&key, &input).await.map(|()| Settled::Done);
        }
        let loaded = match self.load(&job.tenant, &exec.pipeline, Some(exec.pipeline_version)).await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(format!("pipeline `{}` version {} is not registered", exec.pipeline, exec.pipeline_version)),
            Err(e) => Err(e),
        };
        let attempt = job::Attempt {
            stage: job.stage,
            action: job.action,
            attempt: job.attempt,
            delay_ms: 0,
            spec: loaded.and_then(|l| job::JobSpec::build(&l.pipeline, &l.plugins, &exec, job.stage, job.action, job.attempt)),
        };
        tracing::info!("running {}/{}/{} attempt {} (delivery {})", job.execution_id, exec.stages[job.stage].name, exec.stages[job.stage].actions[job.action].name, job.attempt, delivery.delivered);
        // Keep the job ours while it runs: report progress well within the ack deadline.
        let mut cx = self.engine.job_context();
        cx.functions = self.functions.clone();
        let every = (self.edges.jobs.ack_wait() / 3).max(Duration::from_millis(100));
        let run = attempt.run(&cx);
        tokio::pin!(run);
        // The first report is due after one period. (Not `interval` + its immediate first tick:
        // awaiting even an elapsed timer waits for the timer wheel's next millisecond.)
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let id = job_id(&job.tenant, &job.execution_id, job.stage, job.action, job.attempt);
        let cancel = Arc::new(tokio::sync::Notify::new());
        self.running.lock().unwrap().insert(id.clone(), cancel.clone());
        let finished = loop {
            tokio::select! {
                done = &mut run => break Some(done),
                _ = cancel.notified() => break None,
                _ = ticker.tick() => {
                    if let Err(e) = delivery.handle.progress().await {
                        tracing::warn!("progress report failed: {e}");
                    }
                }
            }
        };
        self.running.lock().unwrap().remove(&id);
        let Some((input, leftover)) = finished else {
            // Abandoned by `stop --abandon`: dropping the call stopped the guest (and killed its
            // host processes); the record already says Abandoned.
            tracing::info!("job {id} cancelled");
            return Ok(Settled::Done);
        };
        self.archive_log(&job, &exec).await;
        let result = self.complete(&key, &input).await;
        leftover.release(&cx);
        result.map(|()| Settled::Done)
    }

    /// Copy the lines the attempt logged to the shared archive, if there is one. Done before
    /// its result is recorded: an attempt that shows as ended has its log there.
    async fn archive_log(&self, job: &JobMessage, exec: &Execution) {
        let Some(archive) = &self.edges.archive_log else { return };
        let (stage, action) = (exec.stages[job.stage].name.clone(), exec.stages[job.stage].actions[job.action].name.clone());
        // Most small actions log nothing: no hand-off to a blocking thread for them.
        if !self.engine.logs.exists(&job.execution_id, &stage, &action) {
            return;
        }
        let (logs, execution, attempt) = (self.engine.logs.clone(), job.execution_id.clone(), job.attempt);
        let name = crate::nats::logs::object_name(&job.tenant, &execution, &stage, &action, attempt);
        // A build's log may be large: read it off the async workers.
        let read = tokio::task::spawn_blocking(move || logs.read(&execution, &stage, &action).map(|lines| lines.into_iter().filter(|l| l.attempt == attempt).collect::<Vec<_>>()));
        if let Ok(Ok(lines)) = read.await {
            if !lines.is_empty() {
                archive(name, lines).await;
            }
        }
    }

    /// Apply an input to a stored execution with compare-and-swap (retried on conflict), then
    /// publish its events and queue its jobs.
    async fn complete(&self, key: &str, input: &Input) -> Result<(), String> {
        let after = self.record(key, &|_: &Execution| Some(input.clone())).await?;
        self.settle(after).await;
        Ok(())
    }

    /// Apply the input `make` gives for a stored execution (none: nothing to do), retrying
    /// while the store is unreachable; returns the cross-record work it caused.
    async fn record(&self, key: &str, make: &(dyn Fn(&Execution) -> Option<Input> + Send + Sync)) -> Result<Vec<lanes::After>, String> {
        // The store may be briefly unreachable (a NATS restart): keep the result rather than
        // run the action again, for up to a minute.
        let mut delay = Duration::from_millis(100);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_complete(key, make).await {
                Err(KvError::Backend(e)) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!("recording a result failed ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }

    async fn try_complete(&self, key: &str, make: &(dyn Fn(&Execution) -> Option<Input> + Send + Sync)) -> Result<Vec<lanes::After>, KvError> {
        let kv = &*self.edges.executions;
        let mut carried = Vec::new();
        loop {
            let Some((mut exec, revision)) = get_json::<Execution>(kv, key).await? else {
                return Err(KvError::Backend(format!("execution {key} vanished")));
            };
            let Some(input) = make(&exec) else { return Ok(carried) };
            let unsent = self.unsent(&exec);
            let before = Snapshot::of(&exec);
            let mut commands = apply(&mut exec, &input);
            // Lane changes for other executions stand even if this write must be retried.
            carried.extend(self.admit_inline(&mut exec, &mut commands).await?);
            if commands.is_empty() && before == Snapshot::of(&exec) {
                return Ok(carried);
            }
            let (jobs, notices, after) = follow_up(&exec, commands);
            let publish = self.stamp(&mut exec, before, notices, unsent);
            match kv.update(key, serde_json::to_vec(&exec).map_err(|e| KvError::Backend(e.to_string()))?, revision).await {
                Ok(_) => {
                    // What caused the change is acknowledged after this: its events and jobs
                    // are stored by then.
                    futures_util::future::join(self.edges.bus.publish_all(publish), self.push_jobs(&jobs)).await;
                    carried.extend(after);
                    return Ok(carried);
                }
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Enter stages through their lanes before the change is written: when the lane lets the
    /// execution in at once (the common case), the admission is part of the same write instead
    /// of a second one. Effects on other executions are returned, to be applied after.
    pub(crate) async fn admit_inline(&self, exec: &mut Execution, commands: &mut Vec<Command>) -> Result<Vec<lanes::After>, KvError> {
        let mut others = Vec::new();
        while let Some(i) = commands.iter().position(|c| matches!(c, Command::Enter { .. })) {
            let Command::Enter { stage } = commands.remove(i) else { unreachable!("matched above") };
            let name = exec.stages[stage].name.clone();
            let op = crate::scheduler::lanes::LaneOp::Arrive { execution: exec.execution_id.clone(), stage: name.clone(), mode: exec.mode };
            for effect in self.lane(&exec.tenant, &exec.pipeline, &op).await? {
                match effect {
                    crate::scheduler::lanes::Effect::Admit { execution, stage: s } if execution == exec.execution_id && s == name && exec.entering == Some(stage) => {
                        commands.extend(apply(exec, &Input::Admit { stage, at: Timestamp::now() }));
                    }
                    other => others.push(lanes::After::Effect { tenant: exec.tenant.clone(), pipeline: exec.pipeline.clone(), effect: other }),
                }
            }
        }
        Ok(others)
    }

    /// Cancel jobs running in this engine.
    pub fn cancel_local(&self, ids: &[String]) {
        let running = self.running.lock().unwrap();
        for id in ids {
            if let Some(n) = running.get(id) {
                n.notify_one();
            }
        }
    }

    /// Apply an operator control (stop, retry) to a stored execution: refused with the reason
    /// when it does not apply, else recorded (compare-and-swap) with its events and jobs.
    pub async fn control(&self, tenant: &str, id: &str, make: impl Fn(&Execution) -> Result<Input, String>) -> Result<Execution, String> {
        let kv = &*self.edges.executions;
        let key = exec_key(tenant, id);
        loop {
            let Some((mut exec, revision)) = self.execution_rev(tenant, id).await.map_err(|e| e.to_string())? else {
                return Err(format!("no execution `{id}`"));
            };
            let input = make(&exec)?;
            if let Some(why) = crate::scheduler::refusal(&exec, &input) {
                return Err(why);
            }
            let unsent = self.unsent(&exec);
            let before = Snapshot::of(&exec);
            let was_running: Vec<(usize, usize, u32)> = exec.stages.iter().enumerate().flat_map(|(si, s)| s.actions.iter().enumerate().filter(|(_, a)| a.status == Status::InProgress).map(move |(ai, a)| (si, ai, a.attempt))).collect();
            let commands = apply(&mut exec, &input);
            let (jobs, notices, after) = follow_up(&exec, commands);
            let publish = self.stamp(&mut exec, before, notices, unsent);
            match kv.update(&key, serde_json::to_vec(&exec).map_err(|e| e.to_string())?, revision).await {
                Ok(_) => {}
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => return Err(e.to_string()),
            }
            let abandoned: Vec<String> = was_running
                .into_iter()
                .filter(|(si, ai, _)| exec.stages[*si].actions[*ai].status == Status::Abandoned)
                .map(|(si, ai, attempt)| job_id(tenant, id, si, ai, attempt))
                .collect();
            if !abandoned.is_empty() {
                self.cancel_local(&abandoned);
                if let Some(elsewhere) = &self.edges.cancel_elsewhere {
                    elsewhere(tenant, abandoned);
                }
            }
            futures_util::future::join(self.edges.bus.publish_all(publish), self.push_jobs(&jobs)).await;
            self.settle(after).await;
            return Ok(exec);
        }
    }

    async fn execution_rev(&self, tenant: &str, id: &str) -> Result<Option<(Execution, u64)>, KvError> {
        if !crate::kv::valid_key(id) {
            return Ok(None);
        }
        get_json::<Execution>(&*self.edges.executions, &exec_key(tenant, id)).await
    }

    /// Read an execution.
    pub async fn execution(&self, tenant: &str, id: &str) -> Result<Option<Execution>, KvError> {
        if !crate::kv::valid_key(id) {
            return Ok(None);
        }
        Ok(get_json::<Execution>(&*self.edges.executions, &exec_key(tenant, id)).await?.map(|(e, _)| e))
    }

    /// Executions of a tenant, newest first.
    pub async fn executions(&self, tenant: &str, pipeline: Option<&str>, status: Option<Status>, limit: usize) -> Result<Vec<Execution>, KvError> {
        let mut keys = self.edges.executions.keys(&format!("{tenant}/x/")).await?;
        keys.reverse(); // ULIDs: newest last
        let mut out = Vec::new();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            if let Some((exec, _)) = get_json::<Execution>(&*self.edges.executions, &key).await? {
                if pipeline.is_none_or(|p| p == exec.pipeline) && status.is_none_or(|s| s == exec.status) {
                    out.push(exec);
                }
            }
        }
        Ok(out)
    }

    /// Look up the execution a trigger event started, if any.
    pub async fn claimed(&self, tenant: &str, pipeline: &str, event_id: &str) -> Result<Option<String>, KvError> {
        Ok(get_json::<String>(&*self.edges.executions, &claim_key(tenant, pipeline, event_id)).await?.map(|(id, _)| id))
    }
}
