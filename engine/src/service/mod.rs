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
//!
//! The parts, one folder each: [`control`] (the API's server side and its transports),
//! [`triggers`] (events in, claims, the dead letter), [`work`] (jobs, chains, lanes, wakes) and
//! [`registry`] (pipelines and functions). This module holds the [`Service`] they share and its
//! [`Edges`]; [`cluster`] is what engines tell each other, [`wiring`] the embedded service.

mod action_cache;
pub mod cluster;
pub mod collector;
pub mod control;
pub mod registry;
pub mod retention;
mod secrets;
pub mod tenancy;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_backstop;
#[cfg(test)]
mod tests_early;
#[cfg(test)]
mod tests_journal;
#[cfg(test)]
mod tests_lanes;
pub mod triggers;
pub mod wiring;
pub mod work;

// The parts by their old names, which the rest of the engine and the tests use.
pub use control::{api, http, listen, socket};
use registry::Loaded;
pub use registry::{functions, pipelines};
pub use triggers::event as trigger;
pub use triggers::{DeadLetter, schedule, webhook};
use triggers::{begin, claim_key, takes, trigger_lease};
use work::backstop::Backstop;
pub use work::{JobMessage, lanes, wakes};
use work::{follow_up, jobs, journal, lane_copies, outstanding};

use crate::bus::{Event, EventBus, Kind, Snapshot};
use crate::executor::Engine;
use crate::kv::{Kv, KvError, get_json};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Diagnostics, Pipeline};
use crate::queue::{Delivery, WorkQueue};
use crate::scheduler::{Command, Execution, Input, Status, Timestamp, Wake, apply};
use pipelines::StoredPipeline;
use serde::{Deserialize, Serialize};
use sluice_api::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trigger::TriggerEvent;

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
    /// The audit trail (`<tenant>/<ULID>`), kept apart from the executions: its own table
    /// embedded, its own stream (KV bucket `sluice-audit`) on NATS.
    pub audit: Arc<dyn Kv>,
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
    /// The tenants' secrets, sealed in the pipelines bucket (`_secrets/…`); `None` in tests
    /// that need none.
    pub secrets: Option<Arc<crate::secrets::SecretStore>>,
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
        say(event);
        if let (Some(url), Some(notice)) = (self.public_url.get(), event.approval.as_mut()) {
            notice.console_url = Some(format!("{url}/executions/{}", event.execution_id));
        }
    }
}

/// The engine's own log line for an execution starting or ending (a refused trigger says so
/// where it is refused).
fn say(event: &Event) {
    if event.kind != Kind::Pipeline {
        return;
    }
    let (tenant, pipeline, id) = (&event.tenant, &event.pipeline, &event.execution_id);
    match event.status {
        Status::InProgress => {
            tracing::info!(tenant, pipeline, execution = id, "execution started")
        }
        s if s.is_terminal() => tracing::info!(
            tenant,
            pipeline,
            execution = id,
            status = %s,
            duration_ms = event.duration_ms,
            detail = event.detail.as_deref(),
            "execution ended"
        ),
        _ => {}
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

/// How long a decision waits for an approval that is taking in an earlier one.
const SETTLING: Duration = Duration::from_secs(10);

/// Pipeline versions (and heads) one engine keeps parsed and resolved in memory.
pub const MAX_LOADED_PIPELINES: usize = 1024;

/// One engine of the service.
pub struct Service {
    engine: Engine,
    edges: Edges,
    /// The URL people reach the console at (`--public-url`), for links in notifications.
    public_url: Arc<std::sync::OnceLock<String>>,
    /// Pipeline versions parsed and resolved, at most `MAX_LOADED_PIPELINES` (read again
    /// from the store when dropped).
    loaded: Mutex<crate::runtime::Lru<(String, String, u64), Arc<Loaded>>>,
    /// Where `invoke@1` finds registered functions.
    functions: Arc<functions::Registered>,
    /// Jobs running in this engine, by job id, to cancel on `stop --abandon`.
    running: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Triggers and jobs handled so far (the idle trimmer watches it).
    handled: std::sync::atomic::AtomicU64,
    /// This engine process, as named in the outboxes of the changes it records.
    incarnation: String,
    /// Job workers (set by [`Service::run`]) and the places taken, by tenant (see `places`).
    places: Arc<work::places::Places>,
    /// Each pipeline's lanes as this engine last read, wrote or watched them (see `lane_copies`).
    lane_copies: lane_copies::LaneCopies,
    /// Events this engine published and the stream has not acknowledged yet, by execution key:
    /// every change this engine records carries them in its outbox (see `jobs::in_flight`).
    unacked: Mutex<HashMap<String, Vec<Unacked>>>,
    /// How long a chain gathers changes before writing them, in microseconds (see `journal`).
    gather_us: std::sync::atomic::AtomicU64,
    /// Each pipeline's head as this engine last read it: what an early start runs (see `early`).
    heads: Mutex<crate::runtime::Lru<(String, String), Arc<Loaded>>>,
    /// Pipeline versions as the release pass read them (see `release`).
    release_memo:
        Mutex<crate::runtime::Lru<(String, String, u64), Arc<registry::release::VersionMemo>>>,
    /// When the waiting actions were last counted for the metrics (see `control::gauges`).
    gauges_at: Mutex<Option<std::time::Instant>>,
    /// Authentication, policies, quotas and the audit trail (`sluice serve --auth`).
    tenancy: tenancy::Tenancy,
    /// How long ended executions are kept, in milliseconds; 0: for ever (see `retention`).
    retention: std::sync::atomic::AtomicU64,
    /// How long an artifact nothing names is kept after its last use, in milliseconds (see
    /// `collector`).
    grace_ms: std::sync::atomic::AtomicU64,
    /// Callers of `start` waiting for their execution, woken when this engine records it.
    awaited: triggers::started::Awaited,
    /// Trigger events taken off the queue, waiting for their pipeline's turn (see `intake`).
    triggers_in_line: Arc<std::sync::atomic::AtomicUsize>,
    /// Each tenant's API calls in hand and waiting (see `control::turns`).
    turns: control::turns::Turns,
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
        let turns = control::turns::Turns::for_queue(edges.jobs.local());
        let lane_copies = lane_copies::LaneCopies::new(edges.executions.clone());
        Arc::new(Service {
            engine,
            edges,
            loaded: Mutex::new(crate::runtime::Lru::new(MAX_LOADED_PIPELINES)),
            functions,
            running: Mutex::new(HashMap::new()),
            handled: Default::default(),
            incarnation,
            public_url,
            places: Default::default(),
            lane_copies,
            unacked: Default::default(),
            gather_us: (journal::GATHER.as_micros() as u64).into(),
            heads: Mutex::new(crate::runtime::Lru::new(MAX_LOADED_PIPELINES)),
            release_memo: Mutex::new(crate::runtime::Lru::new(
                registry::release::MAX_VERSION_MEMOS,
            )),
            gauges_at: Mutex::new(None),
            tenancy: Default::default(),
            retention: (retention::KEEP_EXECUTIONS.as_millis() as u64).into(),
            grace_ms: (collector::ARTIFACT_GRACE.as_millis() as u64).into(),
            awaited: Default::default(),
            triggers_in_line: Default::default(),
            turns,
        })
    }

    /// The engine (plugins, runtime).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The edges.
    pub fn edges(&self) -> &Edges {
        &self.edges
    }

    /// Refuse to serve with a master key that does not open the secrets' data keys already
    /// stored (another engine's key, or one made afresh where the service's was not given).
    pub async fn check_master_key(&self) -> anyhow::Result<()> {
        if let Some(secrets) = &self.edges.secrets {
            secrets.check_master_key().await.map_err(|e| {
                anyhow::anyhow!("{e} (set SLUICE_MASTER_KEY_FILE to the service's master key)")
            })?;
        }
        Ok(())
    }

    /// Run the trigger consumer and `workers` job workers until the process ends.
    pub async fn run(self: Arc<Self>, workers: usize) {
        crate::alloc::return_freed_memory_promptly();
        self.places
            .workers
            .store(workers.max(1), std::sync::atomic::Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        let me = self.clone();
        tasks.spawn(async move {
            let handle = {
                let me = me.clone();
                move |d| {
                    let me = me.clone();
                    async move { me.handle_trigger(d).await }
                }
            };
            triggers::intake::intake(&*me.edges.triggers, handle, me.triggers_in_line.clone()).await
        });
        let me = self.clone();
        tasks.spawn(async move { me.run_schedules().await });
        for _ in 0..workers.max(1) {
            let me = self.clone();
            tasks.spawn(async move { me.consume_jobs().await });
        }
        let me = self.clone();
        tasks.spawn(async move { me.trim_when_idle().await });
        let me = self.clone();
        tasks.spawn(async move { me.sweep_now_and_then().await });
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
}
