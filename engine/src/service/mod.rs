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
pub mod cluster;
mod early;
pub mod functions;
pub mod http;
mod jobs;
mod journal;
mod lane_copies;
pub mod lanes;
pub mod listen;
pub mod pipelines;
pub mod schedule;
pub mod socket;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_early;
#[cfg(test)]
mod tests_journal;
#[cfg(test)]
mod tests_lanes;
pub mod trigger;
pub mod wakes;
pub mod webhook;
pub mod wiring;

use crate::bus::{Event, EventBus, Kind, Snapshot};
use crate::executor::Engine;
use crate::kv::{Kv, KvError, get_json};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Diagnostics, Pipeline};
use crate::queue::{Delivery, WorkQueue};
use crate::scheduler::{Command, Execution, Input, PluginRef, Status, Timestamp, Wake, apply};
use pipelines::StoredPipeline;
use serde::{Deserialize, Serialize};
use sluice_api::ApiError;
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
    /// The other engines of the service: dead letters announced, subjects captured, abandoned
    /// jobs cancelled elsewhere ([`cluster::Alone`] for the embedded service).
    pub cluster: Arc<dyn Cluster>,
    /// Keeps a copy of each attempt's log lines where every engine and client can read them
    /// (NATS: the `sluice-logs` Object Store), given the attempt's object name; none: the
    /// embedded service, whose one engine's data directory has them all.
    pub archive_log: Option<Arc<dyn LogArchive>>,
}

pub use crate::executor::logs::LogArchive;
pub use cluster::{Alone, Cluster, ClusterError};

/// The service's bus, as events leave it: counted (see [`crate::metrics`]), and approval
/// notifications given the console link of their execution when the public URL is known.
struct Outgoing {
    inner: Arc<dyn EventBus>,
    public_url: Arc<std::sync::OnceLock<String>>,
}

impl Outgoing {
    fn prepare(&self, event: &mut Event) {
        crate::metrics::get().observe(event);
        if let (Some(url), Some(notice)) = (self.public_url.get(), event.approval.as_mut()) {
            notice.console_url = Some(format!("{url}/executions/{}", event.execution_id));
        }
    }
}

impl EventBus for Outgoing {
    fn publish(&self, mut event: Event) {
        self.prepare(&mut event);
        self.inner.publish(event);
    }

    fn publish_all(&self, mut events: Vec<Event>) -> futures_util::future::BoxFuture<'static, ()> {
        for e in &mut events {
            self.prepare(e);
        }
        self.inner.publish_all(events)
    }
}

/// A parsed, resolved pipeline version.
pub struct Loaded {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    plugins: ResolvedPlugins,
    /// Its registered version.
    pub version: u64,
}

/// How long a decision waits for an approval that is taking in an earlier one.
const SETTLING: Duration = Duration::from_secs(10);

/// One engine of the service.
pub struct Service {
    engine: Engine,
    edges: Edges,
    /// The URL people reach the console at (`--public-url`), for links in notifications.
    public_url: Arc<std::sync::OnceLock<String>>,
    loaded: Mutex<HashMap<(String, String, u64), Arc<Loaded>>>,
    /// Where `invoke@1` finds registered functions.
    functions: Arc<functions::Registered>,
    /// Jobs running in this engine, by job id, to cancel on `stop --abandon`.
    running: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Triggers and jobs handled so far (the idle trimmer watches it).
    handled: std::sync::atomic::AtomicU64,
    /// This engine process, as named in the outboxes of the changes it records.
    incarnation: String,
    /// Job workers (set by [`Service::run`]) and how many are busy, counting the parallel
    /// jobs a chain runs in idle workers' places.
    workers: std::sync::atomic::AtomicUsize,
    busy: Arc<std::sync::atomic::AtomicUsize>,
    /// Each pipeline's lanes as this engine last read, wrote or watched them (see `lane_copies`).
    lane_copies: lane_copies::LaneCopies,
    /// Events this engine published and the stream has not acknowledged yet, by execution key:
    /// every change this engine records carries them in its outbox (see `jobs::in_flight`).
    unacked: Mutex<HashMap<String, Vec<Unacked>>>,
    /// How long a chain gathers changes before writing them, in microseconds (see `journal`).
    gather_us: std::sync::atomic::AtomicU64,
    /// Each pipeline's head as this engine last read it: what an early start runs (see `early`).
    heads: Mutex<HashMap<(String, String), Arc<Loaded>>>,
}

/// Events sent for one change and not yet acknowledged by the stream.
type Unacked = (jobs::Sent, Vec<Event>);

/// A job's id: its idempotency key with indices (`tenant/execution/stage/action/attempt`).
fn job_id(tenant: &str, execution_id: &str, stage: usize, action: usize, attempt: u32) -> String {
    format!("{tenant}/{execution_id}/{stage}/{action}/{attempt}")
}

pub(crate) fn exec_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/x/{id}")
}

/// The lease a trigger's delivery gives the chain of its execution's first jobs.
fn trigger_lease(tenant: &str, execution_id: &str) -> String {
    format!("{tenant}/{execution_id}/trigger")
}

fn claim_key(tenant: &str, pipeline: &str, event_id: &str) -> String {
    format!(
        "{tenant}/claim/{pipeline}/{}",
        &blake3::hash(event_id.as_bytes()).to_hex()[..32]
    )
}

/// Split `sluice.<tenant>.<kind>.<rest>` into (tenant, rest).
fn subject_parts<'a>(subject: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix("sluice.")?;
    let (tenant, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
    Some((tenant, rest))
}

/// Whether `loaded` (pipeline `name`) takes `event`: its git filters let it through, and it
/// declares every variable the event sets.
fn takes(loaded: &Loaded, event: &TriggerEvent, name: &str) -> Result<(), String> {
    trigger::accepts(&loaded.pipeline.triggers, event)?;
    match event
        .variables
        .keys()
        .find(|k| !loaded.pipeline.variables.contains_key(*k))
    {
        Some(k) => Err(format!(
            "the event sets variable `{k}`, which pipeline `{name}` does not declare"
        )),
        None => Ok(()),
    }
}

/// A new execution of `loaded` for `event`, named `execution_id`, and started: its record (not
/// written yet), its statuses before, the start, and the commands the start gave.
fn begin(
    tenant: &str,
    loaded: &Loaded,
    event: &TriggerEvent,
    execution_id: &str,
) -> (Execution, Snapshot, Input, Vec<Command>) {
    let plugins = &loaded.plugins;
    let pin = |uses: &str| PluginRef {
        reference: uses.to_string(),
        digest: plugins
            .get(uses)
            .and_then(|p| p.as_ref().ok())
            .map(|p| p.digest.clone())
            .unwrap_or_default(),
    };
    let mut variables = loaded.pipeline.variables.clone();
    variables.extend(event.variables.clone());
    let mut exec = Execution::new(
        execution_id.to_string(),
        tenant,
        &loaded.pipeline,
        &pin,
        variables,
    );
    exec.pipeline_version = loaded.version;
    exec.trigger = Some(event.info());
    exec.gated = true;
    let before = Snapshot::of(&exec);
    let input = Input::Start {
        at: crate::clock::now(),
    };
    let commands = apply(&mut exec, &input);
    (exec, before, input, commands)
}

/// The jobs an execution is waiting for: a run of every action in progress, or for one that
/// waits, the job that ends its wait (a timer's next attempt, an approval's deadline). Runs
/// that a job chain holds are left out when `held` says that chain is alive.
fn outstanding(exec: &Execution, held: impl Fn(&str) -> bool) -> Vec<JobMessage> {
    let mut out = Vec::new();
    for (si, stage) in exec.stages.iter().enumerate() {
        for (ai, action) in stage.actions.iter().enumerate() {
            if action.status != Status::InProgress || action.runner.as_deref().is_some_and(&held) {
                continue;
            }
            let mut job = JobMessage {
                tenant: exec.tenant.clone(),
                execution_id: exec.execution_id.clone(),
                stage: si,
                action: ai,
                attempt: action.attempt,
                not_before: 0,
                expire: false,
                check: None,
            };
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
    JobMessage {
        tenant: exec.tenant.clone(),
        execution_id: exec.execution_id.clone(),
        stage: si,
        action: 0,
        attempt: 0,
        not_before: 0,
        expire: false,
        check: Some((phase, round)),
    }
}

/// The jobs, notifications and cross-record work that `commands` (just applied to `exec`)
/// ask for.
fn follow_up(
    exec: &Execution,
    commands: Vec<Command>,
) -> (Vec<JobMessage>, Vec<(usize, usize)>, Vec<lanes::After>) {
    let (mut jobs, mut notices, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for c in commands {
        match c {
            Command::RunAction {
                stage,
                action,
                attempt,
                delay_ms,
            } => {
                let not_before = if delay_ms > 0 {
                    crate::clock::now().0 + delay_ms
                } else {
                    0
                };
                jobs.push(JobMessage {
                    tenant: exec.tenant.clone(),
                    execution_id: exec.execution_id.clone(),
                    stage,
                    action,
                    attempt,
                    not_before,
                    expire: false,
                    check: None,
                });
            }
            Command::Await {
                stage,
                action,
                attempt,
            } => {
                let waiting = exec.stages[stage].actions[action].waiting.as_ref();
                if let Some(deadline) = waiting.and_then(|w| w.deadline) {
                    jobs.push(JobMessage {
                        tenant: exec.tenant.clone(),
                        execution_id: exec.execution_id.clone(),
                        stage,
                        action,
                        attempt,
                        not_before: deadline.0,
                        expire: true,
                        check: None,
                    });
                }
                if waiting.is_some_and(|w| w.wake == Wake::Approval) {
                    notices.push((stage, action));
                }
                if let Some(Wake::Event(subject)) = waiting.map(|w| &w.wake) {
                    let waiter = wakes::Waiter {
                        tenant: exec.tenant.clone(),
                        execution: exec.execution_id.clone(),
                        stage,
                        action,
                        attempt,
                    };
                    after.push(lanes::After::AwaitEvent {
                        waiter,
                        subject: subject.clone(),
                    });
                }
            }
            Command::CheckRules { stage, phase } => jobs.push(check_job(exec, stage, phase)),
            Command::Enter { stage } => after.push(lanes::After::arrive(exec, stage)),
            Command::Leave { stage } => after.push(lanes::After::leave(exec, stage)),
            Command::Rollback { stage } => after.push(lanes::After::Rollback {
                tenant: exec.tenant.clone(),
                pipeline: exec.pipeline.clone(),
                stage: exec.stages[stage].name.clone(),
                failed: exec.execution_id.clone(),
            }),
            Command::Finish { .. } => {}
        }
    }
    (jobs, notices, after)
}

/// Handle every delivery of `queue`, for ever; a failing queue (NATS reconnecting) is retried.
pub async fn consume<F: std::future::Future<Output = ()>>(
    queue: &dyn WorkQueue,
    what: &str,
    handle: impl Fn(Delivery) -> F,
) {
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
    /// Set the URL the console is reached at (once): approval notifications then link to their
    /// execution's page.
    pub fn set_public_url(&self, url: &str) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_string());
    }

    /// An engine on `edges`, running jobs with `engine`'s runtime, blobs and workspaces.
    pub fn new(engine: Engine, mut edges: Edges) -> Arc<Self> {
        // Every event this engine publishes passes through here on its way out.
        let public_url = Arc::new(std::sync::OnceLock::new());
        edges.bus = Arc::new(Outgoing {
            inner: edges.bus,
            public_url: public_url.clone(),
        });
        let functions = Arc::new(functions::Registered {
            kv: edges.functions.clone(),
            runtime: engine.registry.runtime().clone(),
            blobs: engine.blobs.clone(),
        });
        let incarnation = ulid::Ulid::new().to_string();
        let lane_copies = lane_copies::LaneCopies::new(edges.executions.clone());
        Arc::new(Service {
            engine,
            edges,
            loaded: Mutex::new(HashMap::new()),
            functions,
            running: Mutex::new(HashMap::new()),
            handled: Default::default(),
            incarnation,
            public_url,
            workers: Default::default(),
            busy: Default::default(),
            lane_copies,
            unacked: Default::default(),
            gather_us: (journal::GATHER.as_micros() as u64).into(),
            heads: Default::default(),
        })
    }

    /// Before applying a change to a stored execution: the events of its last change when
    /// another engine (or an earlier run of this one) recorded that, since it may have died
    /// before publishing them. They go out again with the new change's.
    pub(crate) fn unsent(&self, exec: &Execution) -> Vec<Event> {
        if exec.outbox.writer == self.incarnation {
            Vec::new()
        } else {
            crate::bus::outbox_events(exec)
        }
    }

    /// Number a change about to be recorded and keep in the record what its events are
    /// derived from (`before`, and the approvals it began waiting for), and this engine's
    /// `earlier` events still on their way. Returns what to publish once it is recorded:
    /// `unsent`, then its events.
    pub(crate) fn stamp(
        &self,
        exec: &mut Execution,
        before: Snapshot,
        notices: Vec<(usize, usize)>,
        mut unsent: Vec<Event>,
        earlier: Vec<Event>,
    ) -> Vec<Event> {
        let change = exec.outbox.change + 1;
        exec.outbox = crate::scheduler::Outbox {
            change,
            writer: self.incarnation.clone(),
            before: Some(before),
            notices,
            earlier,
        };
        unsent.extend(crate::bus::change_events(exec));
        unsent
    }

    /// Publish the last change's events again unless this engine process recorded it (then
    /// they are on their way): for a cause (job, trigger) delivered again, or at recovery.
    pub(crate) async fn republish(&self, exec: &Execution) {
        self.edges.bus.publish_all(self.unsent(exec)).await;
    }

    /// How long a chain gathers changes before writing them.
    fn gather(&self) -> Duration {
        Duration::from_micros(self.gather_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Make chains gather changes for up to `gather` (zero: write each at once, for tests that
    /// watch writes one by one).
    #[cfg(test)]
    pub(crate) fn gather_for(&self, gather: Duration) {
        self.gather_us.store(
            gather.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
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
        self.workers
            .store(workers.max(1), std::sync::atomic::Ordering::Relaxed);
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
            if let Some((exec, _)) = get_json::<Execution>(&*self.edges.executions, &key).await?
                && !exec.status.is_terminal()
            {
                self.republish(&exec).await;
                // Every chain of this process died with it.
                self.push_jobs(&outstanding(&exec, |_| false)).await;
                arrivals.extend(
                    exec.entering
                        .map(|stage| lanes::After::arrive(&exec, stage)),
                );
                n += 1;
            }
        }
        // A crash between recording a change and updating the lanes left them behind.
        self.settle(arrivals).await;
        self.reconcile_lanes().await?;
        Ok(n)
    }

    async fn consume_triggers(self: &Arc<Self>) {
        consume(&*self.edges.triggers, "trigger queue", |d| {
            self.handle_trigger(d)
        })
        .await
    }

    async fn consume_jobs(&self) {
        consume(&*self.edges.jobs, "job queue", |d| self.handle_job(d)).await
    }

    /// Load (and cache) one version of a registered pipeline, parsed and with its plugins
    /// resolved.
    async fn load(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<Arc<Loaded>>, String> {
        // A version, once registered, never changes: no need to read it again.
        if let Some(v) = version
            && let Some(hit) =
                self.loaded
                    .lock()
                    .unwrap()
                    .get(&(tenant.to_string(), name.to_string(), v))
        {
            return Ok(Some(hit.clone()));
        }
        let found = pipelines::get(&*self.edges.pipelines, tenant, name, version)
            .await
            .map_err(|e| e.to_string());
        let loaded = match found? {
            Some(stored) => self.loaded(tenant, &stored).await.map(Some)?,
            None => None,
        };
        if version.is_none() {
            let key = (tenant.to_string(), name.to_string());
            let mut heads = self.heads.lock().unwrap();
            match &loaded {
                Some(l) => heads.insert(key, l.clone()),
                None => heads.remove(&key),
            };
        }
        Ok(loaded)
    }

    /// A stored pipeline version, parsed and resolved once per engine.
    pub async fn loaded(
        &self,
        tenant: &str,
        stored: &StoredPipeline,
    ) -> Result<Arc<Loaded>, String> {
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
        // Without a directory (registered over NATS) nothing may resolve against one: an empty
        // `dir` resolves nothing, and every relative reference is refused here.
        let (pipeline, mut problems) = crate::model::parse::parse(
            &stored.file,
            stored.dir.clone().unwrap_or_default(),
            &stored.yaml,
        );
        let Some(mut pipeline) = pipeline else {
            return Err(Diagnostics {
                file: stored.file.clone(),
                items: problems,
            });
        };
        if stored.dir.is_none() {
            problems.extend(pipelines::without_dir(&mut pipeline, &stored.plugins));
        }
        let plugins = self
            .engine
            .check(&pipeline, problems, &Default::default())
            .await?;
        if stored.dir.is_none() {
            let items = pipelines::relative_config_paths(&pipeline, &plugins);
            if !items.is_empty() {
                return Err(Diagnostics {
                    file: stored.file.clone(),
                    items,
                });
            }
        }
        Ok(Loaded {
            pipeline: Arc::new(pipeline),
            plugins,
            version: stored.version,
        })
    }

    /// Dead letters of `tenant` (addressed to `pipeline`, if given), newest first, with their ids.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>, KvError> {
        let prefix = format!("{tenant}/dead/");
        let mut keys = self.edges.executions.keys(&prefix).await?;
        keys.reverse(); // ULIDs: newest last
        let mut out = Vec::new();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            if let Some((letter, _)) = get_json::<DeadLetter>(&*self.edges.executions, &key).await?
                && pipeline.is_none_or(|p| p == letter.pipeline)
            {
                out.push((key[prefix.len()..].to_string(), letter));
            }
        }
        Ok(out)
    }

    /// One dead letter of `tenant`, and its key.
    async fn dead_letter(&self, tenant: &str, id: &str) -> Result<(DeadLetter, String), ApiError> {
        // Ids are ULIDs: anything else names no key.
        if id.parse::<ulid::Ulid>().is_err() {
            return Err(ApiError::not_found(format!("no dead letter `{id}`")));
        }
        let key = format!("{tenant}/dead/{id}");
        match get_json::<DeadLetter>(&*self.edges.executions, &key).await? {
            Some((letter, _)) => Ok((letter, key)),
            None => Err(ApiError::not_found(format!("no dead letter `{id}`"))),
        }
    }

    async fn reject(&self, tenant: &str, pipeline: &str, reason: String, payload: &[u8]) {
        tracing::warn!("trigger for {tenant}/{pipeline} rejected: {reason}");
        crate::metrics::get()
            .dead_letters
            .get_or_create(&crate::metrics::PipelineLabel {
                pipeline: format!("{tenant}/{pipeline}"),
            })
            .inc();
        let letter = DeadLetter {
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            reason: reason.clone(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            at: crate::clock::now(),
        };
        let key = format!(
            "{}/dead/{}",
            if crate::kv::valid_key(tenant) {
                tenant
            } else {
                "_invalid"
            },
            ulid::Ulid::new()
        );
        if let Ok(bytes) = serde_json::to_vec(&letter)
            && let Err(e) = self.edges.executions.create(&key, bytes).await
        {
            tracing::warn!("could not record the dead letter: {e}");
        }
        self.edges.cluster.dead_letter(&letter);
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
            at: crate::clock::now(),
            duration_ms: None,
            detail: Some(reason),
            pipeline_version: None,
            approval: None,
        });
    }

    async fn handle_trigger(self: &Arc<Self>, delivery: Delivery) {
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((tenant, pipeline)) = subject_parts(&delivery.subject, "trigger") else {
            self.reject(
                "_invalid",
                "_invalid",
                format!("unexpected subject {}", delivery.subject),
                &delivery.payload,
            )
            .await;
            let _ = delivery.ack().await;
            return;
        };
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        self.handle_trigger_for(&tenant, &pipeline, delivery, self.edges.triggers.ack_wait())
            .await
    }

    /// Handle a trigger event addressed to `tenant`/`pipeline` (by its subject, or because it
    /// arrived on one of the pipeline's extra `triggers.nats` subjects), delivered from a queue
    /// whose deadline is `ack_wait`. When a job worker is idle, the execution's first jobs run
    /// here in a chain under the event's delivery (see `jobs`), and the next event is taken
    /// meanwhile.
    pub async fn handle_trigger_for(
        self: &Arc<Self>,
        tenant: &str,
        pipeline: &str,
        delivery: Delivery,
        ack_wait: Duration,
    ) {
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        // The idle worker's place the chain runs in; given back however this ends.
        let place = self.take_idle_place();
        match place {
            // A first delivery may start early (see `early`).
            Some(place) if delivery.delivered == 1 => {
                self.start_early_or_not(tenant, pipeline, delivery, ack_wait, place)
                    .await
            }
            place => {
                self.start_as_usual(&tenant, &pipeline, delivery, ack_wait, place)
                    .await
            }
        }
    }

    /// Handle a trigger: claim its event, then start its execution, in a chain under the
    /// delivery when an idle worker's `place` is at hand.
    async fn start_as_usual(
        self: &Arc<Self>,
        tenant: &str,
        pipeline: &str,
        delivery: Delivery,
        ack_wait: Duration,
        place: Option<jobs::Place>,
    ) {
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        match self
            .start(
                &tenant,
                &pipeline,
                &delivery.payload,
                delivery.delivered > 1,
                place.is_some(),
            )
            .await
        {
            Ok(Ok((id, recorded))) => {
                tracing::info!("trigger for {tenant}/{pipeline}: execution {id}");
                if let Some(recorded) = recorded {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let result = me
                            .chain_under(recorded, &delivery, trigger_lease(&tenant, &id), ack_wait)
                            .await;
                        drop(place);
                        me.settle_delivery(&delivery, result, "trigger").await;
                    });
                    return;
                }
            }
            Ok(Err(reason)) => {
                self.reject(&tenant, &pipeline, reason, &delivery.payload)
                    .await
            }
            Err(e) => {
                // The store is unreachable: leave the event for later (or another engine).
                tracing::warn!("trigger for {tenant}/{pipeline} not handled yet: {e}");
                drop(place);
                let _ = delivery.nak(Duration::from_secs(1)).await;
                return;
            }
        }
        drop(place);
        if let Err(e) = delivery.ack().await {
            tracing::warn!(
                "ack of a trigger failed ({e}); it will come again and start nothing new"
            );
        }
    }

    /// Start an execution for a trigger event, at most once per event id. The outer error is
    /// a store failure (try again); the inner one a reason to reject the event. `redelivered`:
    /// the event came back because the engine that had it did not acknowledge it. With a
    /// `chain`, a new execution whose first jobs run here is returned unwritten, with them: its
    /// chain creates the record (see `journal`). Otherwise the record is created here.
    async fn start(
        &self,
        tenant: &str,
        name: &str,
        payload: &[u8],
        redelivered: bool,
        chain: bool,
    ) -> Result<Result<(String, Option<jobs::Recorded>), String>, KvError> {
        let event = match TriggerEvent::parse(payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        if !crate::kv::valid_key(tenant)
            || tenant.starts_with('_')
            || !crate::model::is_valid_name(name)
        {
            return Ok(Err(format!(
                "invalid tenant or pipeline name in `{tenant}`/`{name}`"
            )));
        }
        let kv = &*self.edges.executions;
        // One event id → one execution: the claim names the execution before it exists. It is
        // written while the pipeline loads and the lanes the first stage is entered through are
        // read (the entry below then costs no round trip of its own; should that read fail, the
        // entry reads again): the usual case, a new event, costs one round trip for all three.
        let claim = claim_key(tenant, name, &event.id);
        let new_id = ulid::Ulid::new().to_string();
        let claim_bytes = serde_json::to_vec(&new_id).unwrap_or_default();
        let (loaded, lanes, claimed) = futures_util::future::join3(
            self.load(tenant, name, None),
            self.read_lanes(tenant, name),
            kv.create(&claim, claim_bytes),
        )
        .await;
        let checked = match loaded {
            Ok(Some(loaded)) => takes(&loaded, &event, name).map(|()| loaded),
            Ok(None) => Err(format!(
                "unknown pipeline `{name}` (register it with `sluice pipeline put`)"
            )),
            Err(e) => Err(format!("pipeline `{name}` does not load: {e}")),
        };
        // A claimed event (a duplicate) costs a read more.
        let (execution_id, fresh) = match claimed {
            Ok(_) => match &checked {
                Ok(_) => (new_id, true),
                // Refused: the claim stays. (Removing it could race with an engine that accepts
                // the same event at the same time under this claim; a later delivery that is
                // accepted starts the execution under the claimed id.)
                Err(reason) => return Ok(Err(reason.clone())),
            },
            // An event claimed before the pipeline changed still names its execution.
            Err(KvError::Conflict { .. }) => match get_json::<String>(kv, &claim).await? {
                Some((id, _)) => (id, false),
                None => return Err(KvError::Backend(format!("claim {claim} vanished"))),
            },
            Err(e) => return Err(e),
        };
        let key = exec_key(tenant, &execution_id);
        // A fresh claim has no execution yet.
        let found = if fresh {
            None
        } else {
            get_json::<Execution>(kv, &key).await?
        };
        if let Some((exec, _)) = found {
            if !exec.status.is_terminal() {
                // The engine that started it may have died before its first events were
                // stored, and, if this event is a redelivery, before its first jobs were
                // queued. (Runs a chain holds are that chain's to hand back.)
                self.republish(&exec).await;
                if redelivered {
                    // A chain under this event's earlier delivery died with its engine.
                    let lease = trigger_lease(tenant, &execution_id);
                    self.push_jobs(&outstanding(&exec, |runner| runner != lease))
                        .await;
                    if let Some(stage) = exec.entering {
                        self.settle(vec![lanes::After::arrive(&exec, stage)]).await;
                    }
                }
            } else if redelivered {
                // Ended, but its engine may have died before the bus stored the last changes'
                // events (the record carries them).
                self.republish(&exec).await;
            }
            return Ok(Ok((execution_id, None)));
        }
        // The claim's version is the head at claim time, or a later one after a crash:
        // either way a registered version.
        let loaded = match checked {
            Ok(l) => l,
            Err(reason) => return Ok(Err(reason)),
        };
        let (mut exec, before, input, mut commands) = begin(tenant, &loaded, &event, &execution_id);
        let mut others = self
            .admit_inline(&mut exec, &mut commands, lanes.ok())
            .await?;
        let first = outstanding(&exec, |_| true);
        let (kept, queued) = if chain {
            self.keep_for_chain(&mut exec, &trigger_lease(tenant, &execution_id), first)
        } else {
            (Vec::new(), first)
        };
        let publish = self.stamp(&mut exec, before, Vec::new(), Vec::new(), Vec::new());
        // Waiting before its first stage: join the lane once recorded.
        others.extend(
            exec.entering
                .map(|stage| lanes::After::arrive(&exec, stage)),
        );
        if !kept.is_empty() {
            // The chain creates the record as its first write, gathering the results of the
            // contained runs that start meanwhile (see `journal`); the rest waits for it.
            let start = journal::Change::start(input, publish, queued, others);
            return Ok(Ok((
                execution_id,
                Some(jobs::Recorded::unwritten(kept, exec, start, None)),
            )));
        }
        match kv
            .create(&key, serde_json::to_vec(&exec).unwrap_or_default())
            .await
        {
            Ok(_) => {
                self.send_and_queue(publish, &queued).await;
                self.settle(others).await;
                Ok(Ok((execution_id, None)))
            }
            // Another engine had the same event (delivered again) and created it first.
            Err(KvError::Conflict { .. }) => Ok(Ok((execution_id, None))),
            Err(e) => Err(e),
        }
    }

    /// Enter stages through their lanes before the change is written: when the lane lets the
    /// execution in at once (the common case), the admission is part of the same write instead
    /// of a second one. Effects on other executions are returned, to be applied after.
    /// `fresh`: the lanes read since the change became due, for the first entry.
    pub(crate) async fn admit_inline(
        &self,
        exec: &mut Execution,
        commands: &mut Vec<Command>,
        fresh: Option<lanes::FreshLanes>,
    ) -> Result<Vec<lanes::After>, KvError> {
        self.enter_inline(exec, commands, fresh, &mut Vec::new())
            .await
    }

    /// [`Service::admit_inline`], noting in `arrived` every stage whose lane the execution
    /// arrived in: a change that is not stored after all (a conflict) must free those places
    /// that the change made again does not hold (see [`lanes::released`]).
    pub(crate) async fn enter_inline(
        &self,
        exec: &mut Execution,
        commands: &mut Vec<Command>,
        mut fresh: Option<lanes::FreshLanes>,
        arrived: &mut Vec<usize>,
    ) -> Result<Vec<lanes::After>, KvError> {
        let mut others = Vec::new();
        while let Some(i) = commands
            .iter()
            .position(|c| matches!(c, Command::Enter { .. }))
        {
            let Command::Enter { stage } = commands.remove(i) else {
                unreachable!("matched above")
            };
            arrived.push(stage);
            let name = exec.stages[stage].name.clone();
            let op = crate::scheduler::lanes::LaneOp::Arrive {
                execution: exec.execution_id.clone(),
                stage: name.clone(),
                mode: exec.mode,
            };
            for effect in self
                .lane_from(&exec.tenant, &exec.pipeline, &op, fresh.take())
                .await?
            {
                match effect {
                    crate::scheduler::lanes::Effect::Admit {
                        execution,
                        stage: s,
                    } if execution == exec.execution_id
                        && s == name
                        && exec.entering == Some(stage) =>
                    {
                        commands.extend(apply(
                            exec,
                            &Input::Admit {
                                stage,
                                at: crate::clock::now(),
                            },
                        ));
                    }
                    other => others.push(lanes::After::Effect {
                        tenant: exec.tenant.clone(),
                        pipeline: exec.pipeline.clone(),
                        effect: other,
                    }),
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
    pub async fn control(
        &self,
        tenant: &str,
        id: &str,
        make: impl Fn(&Execution) -> Result<Input, ApiError>,
    ) -> Result<Execution, ApiError> {
        let kv = &*self.edges.executions;
        let key = exec_key(tenant, id);
        // A second approver's decision may arrive while the first one's is taken in.
        let settled_by = std::time::Instant::now() + SETTLING;
        loop {
            let Some((mut exec, revision)) = self.execution_rev(tenant, id).await? else {
                return Err(ApiError::not_found(format!("no execution `{id}`")));
            };
            let input = make(&exec)?;
            if let Some(why) = crate::scheduler::refusal(&exec, &input) {
                if crate::scheduler::settling(&exec, &input)
                    && std::time::Instant::now() < settled_by
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                return Err(ApiError::conflict(why));
            }
            let unsent = self.unsent(&exec);
            let before = Snapshot::of(&exec);
            let was_running: Vec<(usize, usize, u32)> = exec
                .stages
                .iter()
                .enumerate()
                .flat_map(|(si, s)| {
                    s.actions
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.status == Status::InProgress)
                        .map(move |(ai, a)| (si, ai, a.attempt))
                })
                .collect();
            let commands = apply(&mut exec, &input);
            let (jobs, notices, after) = follow_up(&exec, commands);
            let publish = self.stamp(&mut exec, before, notices, unsent, self.in_flight(&key));
            let bytes = serde_json::to_vec(&exec).map_err(ApiError::internal)?;
            match kv.update(&key, bytes.clone(), revision).await {
                Ok(_) => {}
                Err(KvError::Conflict { .. }) => continue,
                // The write may be stored though its answer was lost: then it stands (refusing
                // it now would lose its events, and a retry would be refused as done already).
                Err(e) => {
                    if !matches!(kv.get(&key).await, Ok(Some((stored, _))) if stored == bytes) {
                        return Err(e.into());
                    }
                }
            }
            let abandoned: Vec<String> = was_running
                .into_iter()
                .filter(|(si, ai, _)| exec.stages[*si].actions[*ai].status == Status::Abandoned)
                .map(|(si, ai, attempt)| job_id(tenant, id, si, ai, attempt))
                .collect();
            if !abandoned.is_empty() {
                self.cancel_local(&abandoned);
                self.edges.cluster.cancel_elsewhere(tenant, abandoned);
            }
            futures_util::future::join(self.edges.bus.publish_all(publish), self.push_jobs(&jobs))
                .await;
            self.settle(after).await;
            return Ok(exec);
        }
    }

    async fn execution_rev(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(Execution, u64)>, KvError> {
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
        Ok(
            get_json::<Execution>(&*self.edges.executions, &exec_key(tenant, id))
                .await?
                .map(|(e, _)| e),
        )
    }

    /// Executions of a tenant, newest first.
    pub async fn executions(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Execution>, KvError> {
        self.executions_before(tenant, pipeline, status, None, limit)
            .await
    }

    /// [`Service::executions`] older than execution `before` (a page after the one that ended
    /// with it).
    pub async fn executions_before(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        status: Option<Status>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>, KvError> {
        let prefix = format!("{tenant}/x/");
        let mut keys = self.edges.executions.keys(&prefix).await?;
        keys.reverse(); // ULIDs: newest last
        let mut out = Vec::new();
        // Ids are ULIDs, which sort by start time.
        let older = |key: &str| before.is_none_or(|b| key[prefix.len()..] < *b);
        for key in keys.into_iter().filter(|k| older(k)) {
            if out.len() >= limit {
                break;
            }
            if let Some((exec, _)) = get_json::<Execution>(&*self.edges.executions, &key).await?
                && pipeline.is_none_or(|p| p == exec.pipeline)
                && status.is_none_or(|s| s == exec.status)
            {
                out.push(exec);
            }
        }
        Ok(out)
    }

    /// Look up the execution a trigger event started, if any.
    pub async fn claimed(
        &self,
        tenant: &str,
        pipeline: &str,
        event_id: &str,
    ) -> Result<Option<String>, KvError> {
        Ok(get_json::<String>(
            &*self.edges.executions,
            &claim_key(tenant, pipeline, event_id),
        )
        .await?
        .map(|(id, _)| id))
    }
}
