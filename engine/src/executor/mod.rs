//! The shell around the pure scheduler: persists each new state (compare-and-swap),
//! publishes the events it implies, and runs the jobs the scheduler asks for.

pub mod job;
pub mod logs;
pub mod rules;
pub mod secrets;
mod workspace;
mod writer;

#[cfg(test)]
mod tests;

pub use workspace::WorkspacePool;

pub use job::JobSpec;
pub use logs::{LogLine, LogStore};

use crate::artifacts::tenants::{ArtifactKeys, TenantStores};
use crate::artifacts::{BlobStore, LocalStore, SealedObjects, StoreError};
use crate::bus::{EventBus, MemoryBus, Scope, Snapshot, advance_in};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Diagnostic, Diagnostics, Loc, Pipeline};
use crate::plugins::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::scheduler::{Command, Execution, Input, PluginRef, Status, TriggerInfo, apply};
use crate::state::{Durability, RedbStore, StateStore};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tenant used when there is only one.
pub const DEFAULT_TENANT: &str = "default";

/// A Sluice engine: the runtime plus one implementation of each edge.
pub struct Engine {
    /// Tenant whose executions this engine records.
    pub tenant: String,
    /// Plugin resolution (and the wasmtime runtime).
    pub registry: Arc<Registry>,
    /// Artifact blobs.
    pub blobs: Arc<dyn BlobStore>,
    /// Execution state.
    pub state: Arc<dyn StateStore>,
    /// Events out.
    pub bus: Arc<dyn EventBus>,
    /// Action logs.
    pub logs: Arc<LogStore>,
    /// Action workspaces.
    pub workspaces: Arc<WorkspacePool>,
    /// Engine internals no grant may expose for writing (compiled code, blobs, state, logs,
    /// workspaces).
    pub protected: Arc<Vec<PathBuf>>,
    /// The data directory (its real path).
    pub data: PathBuf,
    /// Where secret values come from (`None` until the caller opens a secret store).
    pub secrets: Option<Arc<dyn secrets::SecretSource>>,
    /// The action cache (`None`: every action runs).
    pub cache: Option<Arc<crate::cache::ActionCache>>,
    /// Each tenant's artifacts, sealed at rest (`None`: artifacts are plain blobs in `blobs`,
    /// as for `sluice run` without `--encrypt`). Plugins stay in `blobs` either way: they are
    /// named by their plain digest.
    pub artifacts: Option<Arc<TenantStores>>,
    /// Where sealed artifacts are kept (the service's backend), for [`Engine::seal_artifacts`].
    pub sealed_objects: Option<Arc<dyn SealedObjects>>,
}

/// A blob store that can also keep sealed blobs: a backend for the service.
pub trait ArtifactBackend: BlobStore + SealedObjects {}
impl<T: BlobStore + SealedObjects> ArtifactBackend for T {}

/// The embedded engine's data directory layout.
pub struct DataDir {
    /// Root (`.sluice/` next to the pipeline by default).
    pub root: PathBuf,
}

impl DataDir {
    /// The data directory at `data`, created if missing, by its canonical path: workspace
    /// paths are handed to host programs (`$SLUICE_OUTPUT`) that run elsewhere, and grants
    /// are compared with it by real path.
    pub fn create(data: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data)
            .with_context(|| format!("create data directory {}", data.display()))?;
        let root = data
            .canonicalize()
            .with_context(|| format!("data directory {}", data.display()))?;
        Ok(DataDir { root })
    }

    /// Blobs.
    pub fn cas(&self) -> PathBuf {
        self.root.join("cas")
    }
    /// The redb state file.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.redb")
    }
    /// Action logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Action workspaces.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Compiled components.
    pub fn compiled(&self) -> PathBuf {
        self.root.join("compiled")
    }
    /// Everything the engine keeps here that an action must never be granted to write, as
    /// real paths (symlinks resolved) where the directory exists, else absolute, lexically
    /// normalised ones.
    pub fn protected(&self) -> Vec<PathBuf> {
        let root = self
            .root
            .canonicalize()
            .or_else(|_| std::path::absolute(&self.root))
            .map(|p| crate::model::normalize(&p))
            .unwrap_or_else(|_| self.root.clone());
        [
            "cas",
            "compiled",
            "work",
            "logs",
            "state.redb",
            "service.redb",
            "quarantine",
            // Not writable by a grant, nor readable by a host program through one.
            "secrets.redb",
            "master.key",
            "cache.redb",
            "operator.token",
            "sluice.sock",
        ]
        .iter()
        .map(|p| root.join(p))
        .collect()
    }
}

impl Engine {
    /// An engine on the embedded edges in `data` (created if missing).
    pub fn embedded(data: &Path, bus: Arc<MemoryBus>, logs: LogStore) -> anyhow::Result<Self> {
        Self::embedded_compiling_into(data, bus, logs, None)
    }

    /// [`Engine::embedded`], keeping compiled components in `compiled` instead of the data
    /// directory (`sluice plugin test` runs in a scratch directory but keeps its compiled code).
    pub fn embedded_compiling_into(
        data: &Path,
        bus: Arc<MemoryBus>,
        logs: LogStore,
        compiled: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let dirs = DataDir::create(data)?;
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            cache_dir: Some(compiled.unwrap_or_else(|| dirs.compiled())),
        })?);
        let blobs: Arc<dyn BlobStore> = Arc::new(LocalStore::open(dirs.cas())?);
        let state: Arc<dyn StateStore> = Arc::new(RedbStore::open(&dirs.state())?);
        Ok(Engine {
            tenant: DEFAULT_TENANT.to_string(),
            registry: Arc::new(Registry::new(runtime, blobs.clone())),
            blobs,
            state,
            bus,
            logs: Arc::new(logs),
            workspaces: Arc::new(
                WorkspacePool::new(dirs.work())
                    .with_context(|| format!("prepare {}", dirs.work().display()))?,
            ),
            protected: Arc::new(dirs.protected()),
            data: dirs.root.clone(),
            secrets: None,
            cache: None,
            artifacts: None,
            sealed_objects: None,
        })
    }

    /// An engine for the service: the runtime, blobs, logs and workspaces in `data`, events
    /// to `bus`. Executions live in the service's own store, so no state file is opened (two
    /// engines may share a data directory).
    pub fn for_service(
        data: &Path,
        bus: Arc<dyn EventBus>,
        backend: Option<Arc<dyn ArtifactBackend>>,
    ) -> anyhow::Result<Self> {
        let dirs = DataDir::create(data)?;
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            cache_dir: Some(dirs.compiled()),
        })?);
        let backend: Arc<dyn ArtifactBackend> = match backend {
            Some(b) => b,
            None => Arc::new(LocalStore::open(dirs.cas())?),
        };
        let sealed_objects: Arc<dyn SealedObjects> = backend.clone();
        let blobs: Arc<dyn BlobStore> = backend;
        Ok(Engine {
            tenant: DEFAULT_TENANT.to_string(),
            registry: Arc::new(Registry::new(runtime, blobs.clone())),
            blobs,
            state: Arc::new(crate::state::Detached),
            bus,
            logs: Arc::new(LogStore::new(dirs.logs())),
            workspaces: Arc::new(
                WorkspacePool::new(dirs.work())
                    .with_context(|| format!("prepare {}", dirs.work().display()))?,
            ),
            protected: Arc::new(dirs.protected()),
            data: dirs.root.clone(),
            secrets: None,
            cache: None,
            artifacts: None,
            sealed_objects: Some(sealed_objects),
        })
    }

    /// Resolve the pipeline's plugins and validate it. `problems` are the parser's; every
    /// problem, structural or not, is reported at once.
    pub async fn check(
        &self,
        pipeline: &Pipeline,
        problems: Vec<Diagnostic>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<ResolvedPlugins, Diagnostics> {
        let plugins = self.registry.resolve_all(pipeline).await;
        let mut items = problems;
        items.extend(crate::model::validate::validate(
            pipeline, &plugins, overrides,
        ));
        // Custom condition rules given as files must exist and fit the `rule` world.
        for stage in &pipeline.stages {
            let c = &stage.conditions;
            for (phase, condition) in [
                ("before_entry", &c.before_entry),
                ("on_success", &c.on_success),
                ("on_failure", &c.on_failure),
            ] {
                for rule in condition.iter().flat_map(|c| &c.rules) {
                    if let crate::scheduler::Rule::Custom { uses, .. } = rule {
                        if uses.starts_with("blake3:") {
                            continue;
                        }
                        let path = pipeline.host_path(uses);
                        let loaded = crate::plugins::read_component(&path)
                            .map_err(|e| e.to_string())
                            .and_then(|b| {
                                self.registry
                                    .runtime()
                                    .load_rule(&b)
                                    .map_err(|e| format!("{e:#}"))
                            });
                        if let Err(e) = loaded {
                            items.push(Diagnostic {
                                loc: stage.loc,
                                message: format!(
                                    "stage `{}`: `{phase}` rule {uses}: {e}",
                                    stage.name
                                ),
                            });
                        }
                    }
                }
            }
        }
        if items.is_empty() {
            return Ok(plugins);
        }
        items.sort_by_key(|d| d.loc);
        Err(Diagnostics {
            file: pipeline.file.clone(),
            items,
        })
    }

    /// Run a validated pipeline to the end. Returns the final execution record.
    pub async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: &ResolvedPlugins,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<Execution> {
        self.run_with(pipeline, plugins, overrides, LocalApprovals::default())
            .await
    }

    /// [`Engine::run`], answering approvals as `approvals` says.
    pub async fn run_with(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: &ResolvedPlugins,
        overrides: &BTreeMap<String, String>,
        approvals: LocalApprovals,
    ) -> anyhow::Result<Execution> {
        self.run_triggered(pipeline, plugins, overrides, approvals, None)
            .await
    }

    /// [`Engine::run_with`], the execution recording `trigger` as what started it (its
    /// `#{trigger.*}` values).
    pub async fn run_triggered(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: &ResolvedPlugins,
        overrides: &BTreeMap<String, String>,
        approvals: LocalApprovals,
        trigger: Option<TriggerInfo>,
    ) -> anyhow::Result<Execution> {
        // Drive the execution on a runtime worker: job tasks it spawns start on the same
        // worker and their completions wake it without a cross-thread handoff.
        let driver = Driver {
            tenant: self.tenant.clone(),
            state: self.state.clone(),
            bus: self.bus.clone(),
            jobs: self.job_context(),
            approvals,
            trigger,
        };
        let (plugins, overrides) = (plugins.clone(), overrides.clone());
        let done =
            tokio::spawn(async move { driver.drive(pipeline, &plugins, &overrides).await }).await?;
        // Used workspaces are emptied in the background; at the end of a run, nothing an
        // action wrote may stay on disk.
        self.workspaces.flush();
        done
    }

    /// Seal every tenant's artifacts from now on, under keys from `keys` (the service's
    /// secret store), in the backend this engine was made with (else its data directory's).
    pub fn seal_artifacts(&mut self, keys: Arc<dyn ArtifactKeys>) -> anyhow::Result<()> {
        self.seal_artifacts_in(keys, None)
    }

    /// [`Engine::seal_artifacts`], every tenant's in namespace `ns` when given.
    pub fn seal_artifacts_in(
        &mut self,
        keys: Arc<dyn ArtifactKeys>,
        ns: Option<&str>,
    ) -> anyhow::Result<()> {
        let objects: Arc<dyn SealedObjects> = match &self.sealed_objects {
            Some(o) => o.clone(),
            None => Arc::new(LocalStore::open(
                DataDir {
                    root: self.data.clone(),
                }
                .cas(),
            )?),
        };
        let stores = TenantStores::new(objects, keys);
        self.artifacts = Some(Arc::new(match ns {
            Some(ns) => stores.in_namespace(ns),
            None => stores,
        }));
        Ok(())
    }

    /// Where the tenant's artifacts are: its sealed store, or the plain one.
    pub async fn artifacts_for(&self, tenant: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
        crate::artifacts::tenants::store_of(self.artifacts.as_deref(), &self.blobs, tenant).await
    }

    /// What one job needs to run (for tools that run a single job: `plugin test`, the bench).
    pub fn job_context(&self) -> job::JobContext {
        job::JobContext {
            artifacts: self.artifacts.clone(),
            cache: self.cache.clone(),
            secrets: self.secrets.clone(),
            runtime: self.registry.runtime().clone(),
            blobs: self.blobs.clone(),
            logs: self.logs.clone(),
            workspaces: self.workspaces.clone(),
            protected: self.protected.clone(),
            functions: Arc::new(job::FileFunctions {
                runtime: self.registry.runtime().clone(),
            }),
        }
    }
}

/// `uses` as an execution records it: the reference as written and the digest it resolved to
/// (empty when it did not resolve).
pub(crate) fn pinned(plugins: &ResolvedPlugins, uses: &str) -> PluginRef {
    PluginRef {
        reference: uses.to_string(),
        digest: plugins
            .get(uses)
            .and_then(|p| p.as_ref().ok())
            .map(|p| p.digest.clone())
            .unwrap_or_default(),
    }
}

/// How `sluice run` answers an approval: pre-approved (`--approve STAGE/ACTION`), by a prompt
/// on a terminal, or not at all (the action fails with a message saying how).
#[derive(Clone, Debug, Default)]
pub struct LocalApprovals {
    /// `STAGE/ACTION`s approved in advance.
    pub pre_approved: Vec<String>,
    /// Ask on the terminal.
    pub interactive: bool,
    /// Who approves.
    pub identity: String,
}

impl LocalApprovals {
    /// The input that answers the wait of (stage, action, attempt) of `exec`.
    async fn answer(&self, exec: &Execution, stage: usize, action: usize, attempt: u32) -> Input {
        let run = &exec.stages[stage].actions[action];
        let name = format!("{}/{}", exec.stages[stage].name, run.name);
        let at = crate::clock::now;
        let expire = |reason: String| Input::Expire {
            stage,
            action,
            attempt,
            reason,
            at: at(),
        };
        let Some(waiting) = &run.waiting else {
            return expire("internal error: not waiting".into());
        };
        if waiting.wake != crate::scheduler::Wake::Approval {
            return expire(format!(
                "{name} waits for an event, which needs the service (`sluice serve`); `sluice run` cannot wake it"
            ));
        }
        let decide = |approved: bool, summary: Option<String>| Input::Decide {
            stage,
            action,
            decision: crate::scheduler::Decision {
                approved,
                by: self.identity.clone(),
                at: at(),
                summary,
            },
            at: at(),
        };
        let input = if self.pre_approved.contains(&name) {
            decide(true, Some("approved in advance with --approve".into()))
        } else if self.interactive {
            let mut about = String::new();
            if let Some(s) = &run.summary {
                about.push_str(&format!("\n    {s}"));
            }
            if let Some(d) = run.kept.get("custom_data") {
                about.push_str(&format!("\n    {d}"));
            }
            if let Some(l) = run.kept.get("external_link") {
                about.push_str(&format!("\n    {l}"));
            }
            let prompt = format!(
                "\n  ? {name} needs approval.{about}\n  Approve as {}? [y/N] ",
                self.identity
            );
            // Asked again until the answer is yes or no (an empty answer is no); no answer at
            // all (end of input) fails the wait.
            let answer = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                eprint!("{prompt}");
                loop {
                    let _ = std::io::stderr().flush();
                    let mut line = String::new();
                    match std::io::stdin().read_line(&mut line) {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                    match line.trim().to_ascii_lowercase().as_str() {
                        "y" | "yes" => return Some(true),
                        "" | "n" | "no" => return Some(false),
                        other => eprint!("  Please answer y or n (not {other:?}): "),
                    }
                }
            })
            .await
            .ok()
            .flatten();
            let Some(yes) = answer else {
                return expire(format!("{name} was not answered at the prompt"));
            };
            decide(
                yes,
                Some(
                    if yes {
                        "approved at the prompt"
                    } else {
                        "rejected at the prompt"
                    }
                    .into(),
                ),
            )
        } else {
            return expire(format!(
                "{name} needs an approval and there is no terminal to ask on: pass --approve {name} to approve it in advance"
            ));
        };
        match crate::scheduler::refusal(exec, &input) {
            Some(why) => expire(format!("approval refused: {why}")),
            None => input,
        }
    }
}

/// What one execution's loop needs from the engine.
struct Driver {
    tenant: String,
    state: Arc<dyn StateStore>,
    bus: Arc<dyn EventBus>,
    jobs: job::JobContext,
    approvals: LocalApprovals,
    trigger: Option<TriggerInfo>,
}

impl Driver {
    async fn drive(
        &self,
        pipeline: Arc<Pipeline>,
        plugins: &ResolvedPlugins,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<Execution> {
        let mut variables = pipeline.variables.clone();
        variables.extend(overrides.clone());
        let pin = |uses: &str| pinned(plugins, uses);
        let mut exec = Execution::new(
            ulid::Ulid::new().to_string(),
            &self.tenant,
            &pipeline,
            &pin,
            variables,
        );
        exec.trigger = self.trigger.clone();
        // The executor changes the execution in place; the writer copies it now and then. Its
        // first write (durable) creates the record while the first actions already run: at
        // once if one of them reaches outside the sandbox (below), else within the writer's
        // interval, or with the final state if the run is over by then.
        let exec = Arc::new(Mutex::new(exec));
        let writer = writer::StateWriter::spawn(self.state.clone(), None, exec.clone());
        writer.changed(Durability::Eventual)?;
        let plugins = Arc::new(plugins.clone());
        // Which actions reach outside the sandbox, worked out once (not per attempt); `None`
        // once the record exists, when it no longer matters.
        let mut outside: Option<Vec<Vec<bool>>> = Some(
            pipeline
                .stages
                .iter()
                .enumerate()
                .map(|(si, stage)| {
                    (0..stage.actions.len())
                        .map(|ai| !job::contained(&pipeline, &plugins, si, ai))
                        .collect()
                })
                .collect(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
        let mut input = Input::Start {
            at: crate::clock::now(),
        };
        // Only this loop changes the execution, so one snapshot, advanced at each step, is
        // what the last step left.
        let mut seen = Snapshot::of(&exec.lock().unwrap());
        loop {
            let mut waits = Vec::new();
            let mut check = None;
            let (events, mut jobs, finished) = {
                let mut current = exec.lock().unwrap();
                let commands = apply(&mut current, &input);
                let events = advance_in(&mut seen, &current, Scope::of(&input));
                let mut jobs = Vec::new();
                let mut finished = current.status.is_terminal();
                for command in commands {
                    match command {
                        Command::RunAction {
                            stage,
                            action,
                            attempt,
                            delay_ms,
                        } => jobs.push(job::Attempt {
                            stage,
                            action,
                            attempt,
                            delay_ms,
                            spec: job::JobSpec::build(
                                &pipeline, &plugins, &current, stage, action, attempt,
                            ),
                        }),
                        Command::Await {
                            stage,
                            action,
                            attempt,
                        } => waits.push((stage, action, attempt)),
                        Command::Finish { .. } => finished = true,
                        // A local run is alone: it enters stages directly (never gated).
                        Command::Enter { .. } | Command::Leave { .. } => {}
                        Command::CheckRules { stage, phase } => {
                            check = Some((stage, phase, current.clone()))
                        }
                        Command::Rollback { stage } => tracing::warn!(
                            "stage {} asks for a rollback; rollbacks need the service (`sluice serve`), which keeps the history to roll back to",
                            current.stages[stage].name
                        ),
                    }
                }
                (events, jobs, finished)
            };
            if !events.is_empty() {
                writer.changed(if finished {
                    Durability::Durable
                } else {
                    Durability::Eventual
                })?;
                for event in events {
                    self.bus.publish(event);
                }
            }
            // Nothing reaches outside the sandbox before the run's record exists: a run killed
            // after that is found, and ended, by the next command that opens the data folder.
            if let Some(reaches) = &outside
                && jobs.iter().any(|j| reaches[j.stage][j.action])
            {
                writer.created().await?;
                outside = None;
            }
            if finished {
                writer.finish()?;
                // The writer is gone: the execution is ours alone.
                let done = match Arc::try_unwrap(exec) {
                    Ok(only) => only
                        .into_inner()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    Err(shared) => shared.lock().unwrap().clone(),
                };
                return Ok(done);
            }
            if let Some((stage, phase, snapshot)) = check {
                // A stage boundary: nothing else of this execution runs meanwhile.
                input = rules::check(&self.jobs, &pipeline, &snapshot, stage, phase).await;
                continue;
            }
            if let Some((stage, action, attempt)) = waits.pop() {
                // Answer an approval before anything else (a stage with one approval has nothing
                // else running; others keep running meanwhile and report through the channel).
                for attempt in jobs {
                    spawn_job(attempt, tx.clone(), self.jobs.clone());
                }
                let snapshot = exec.lock().unwrap().clone();
                input = self
                    .approvals
                    .answer(&snapshot, stage, action, attempt)
                    .await;
                for (stage, action, attempt) in waits {
                    let answer = self
                        .approvals
                        .answer(&snapshot, stage, action, attempt)
                        .await;
                    let _ = tx.send(answer);
                }
                continue;
            }
            // A lone action (the common sequential case) runs right here: nothing else of this
            // execution can happen until it ends, so a task and a channel would only add hand-offs.
            if jobs.len() == 1 && rx.is_empty() {
                let (next, leftover) = jobs.pop().expect("one job").run(&self.jobs).await;
                leftover.release(&self.jobs);
                input = next;
                continue;
            }
            for attempt in jobs {
                spawn_job(attempt, tx.clone(), self.jobs.clone());
            }
            input = rx
                .recv()
                .await
                .context("all jobs ended without reporting")?;
        }
    }
}

/// Run `attempt` in a task of its own and send how it went to the execution's loop. A bug that
/// panics inside a job must fail that action, not leave the execution waiting for a result that
/// never comes: the panic is caught in this task (not by a second task around the job: one
/// spawn per action, not two).
fn spawn_job(
    attempt: job::Attempt,
    tx: tokio::sync::mpsc::UnboundedSender<Input>,
    cx: job::JobContext,
) {
    // Boxed: the job's future is large (wasmtime's calls inside), and a task holding it
    // inline copies all of it again when it completes (profiled: 5 % of (b')).
    tokio::spawn(Box::pin(async move {
        let (stage, action, number) = (attempt.stage, attempt.action, attempt.attempt);
        let run = std::panic::AssertUnwindSafe(attempt.run(&cx));
        let (next, leftover) = match futures_util::FutureExt::catch_unwind(run).await {
            Ok(done) => done,
            Err(panic) => (
                job::Attempt::failure(
                    stage,
                    action,
                    number,
                    format!(
                        "internal error while running the action: it panicked: {}",
                        panic_message(&*panic)
                    ),
                ),
                job::Leftover::none(),
            ),
        };
        let _ = tx.send(next);
        leftover.release(&cx);
    }));
}

/// What a caught panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Read and parse a pipeline file. A file that cannot be read or is not YAML is an error;
/// otherwise the pipeline comes back with the structural problems found (to be reported
/// together with validation's by [`Engine::check`]).
pub fn load_pipeline(path: &Path) -> Result<(Pipeline, Vec<Diagnostic>), Diagnostics> {
    let file = path.display().to_string();
    let fail = |message: String| Diagnostics {
        file: file.clone(),
        items: vec![Diagnostic {
            loc: Loc { line: 1, col: 1 },
            message,
        }],
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read the pipeline file: {e}")))?;
    let dir = std::fs::canonicalize(path)
        .map_err(|e| fail(format!("cannot resolve the pipeline file's directory: {e}")))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let (pipeline, mut items) = crate::model::parse::parse(&file, dir, &text);
    match pipeline {
        Some(p) => Ok((p, items)),
        None => {
            items.sort_by_key(|d| d.loc);
            Err(Diagnostics { file, items })
        }
    }
}

/// Whether a status means the run went well (for exit codes).
pub fn succeeded(status: Status) -> bool {
    status == Status::Succeeded
}
