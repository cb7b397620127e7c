//! One action attempt as a self-contained job: everything needed to run it (resolved
//! configuration, input digests, grants, limits), so any worker with the blob store can run
//! it. The NATS engine ships the same [`JobSpec`] over a work queue.
use super::logs::LogStore;
use crate::artifacts::{BlobStore, Digest, tree};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Access, Pipeline, template};
use crate::plugins::Capability;
use crate::runtime::{
    ActionContext, Invocation, Level, LogSink, Mount, RunError, RunOutcome, Runtime,
};
use crate::scheduler::{ActionResult, Execution, FailureKind, Input, Status, Timestamp, Wake};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an approval waits when its `timeout` does not say.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The runtime's wake text (`timer:<ms>`, `approval`, `event:<subject>`) as a [`Wake`].
fn parse_wake(text: &str) -> Result<Wake, String> {
    match text.split_once(':') {
        Some(("timer", ms)) => ms
            .parse()
            .map(Wake::Timer)
            .map_err(|_| format!("bad timer {ms:?}")),
        Some(("event", subject)) => Ok(Wake::Event(subject.to_string())),
        _ if text == "approval" => Ok(Wake::Approval),
        _ => Err(format!("unknown wake condition {text:?}")),
    }
}

/// Default wall-clock limit of an action attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A job: one attempt of one action, fully resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// Tenant.
    pub tenant: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Execution id.
    pub execution_id: String,
    /// Stage name.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// tenant/execution/stage/action/attempt.
    pub idempotency_key: String,
    /// Component digest.
    pub plugin: Digest,
    /// Resolved `with:`.
    pub config: BTreeMap<String, String>,
    /// Inputs: name → tree digest.
    pub inputs: BTreeMap<String, Digest>,
    /// Declared outputs.
    pub outputs: Vec<String>,
    /// Host directories mounted at their own path.
    pub dirs: Vec<(PathBuf, Access)>,
    /// Granted host programs.
    pub programs: Vec<String>,
    /// Granted outbound HTTP origins.
    #[serde(default)]
    pub http: Vec<String>,
    /// Granted NATS subjects (patterns).
    #[serde(default)]
    pub nats: Vec<String>,
    /// Memory cap, bytes.
    pub memory: u64,
    /// Bounds on each output artifact.
    #[serde(default)]
    pub output_limits: crate::limits::OutputLimits,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Directory of the pipeline file.
    pub pipeline_dir: PathBuf,
    /// What the previous attempt returned in `pending`, when this one resumes it.
    #[serde(default)]
    pub continuation: Option<String>,
    /// The payload of what woke it (approval decisions, an event).
    #[serde(default)]
    pub wake_payload: Option<String>,
    /// For `invoke@1`: the function to call and its parameters.
    #[serde(default)]
    pub invoke: Option<InvokeSpec>,
    /// The secrets this action lists: the pipeline's name for each → the stored secret.
    /// Names only: values are fetched where the job runs, and never queued or stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Pure: its plugin declares no side effects and it is granted nothing outside its
    /// inputs and outputs, so its success may be taken from the action cache (and it runs
    /// with a fixed clock and a seeded random source).
    #[serde(default)]
    pub cacheable: bool,
    /// Its plugin declares the `secrets` capability: the guest may hold the values of the
    /// secrets listed above (`reveal`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reveal: bool,
    /// Its plugin declares `secrets-in-body`: the host puts the values into request bodies
    /// to granted origins too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secrets_in_body: bool,
}

/// Changes when what a cache key covers changes, so old entries are never taken for new ones.
const CACHE_SALT: &str = "sluice-action-cache-v1";

/// The canonical content of a job's key: everything that can change its result.
#[derive(Serialize)]
struct KeyParts<'a> {
    salt: &'a str,
    world: &'a str,
    plugin: String,
    config: &'a BTreeMap<String, String>,
    inputs: BTreeMap<&'a String, String>,
    outputs: &'a [String],
    memory: u64,
    timeout_ms: u128,
    output_limits: &'a crate::limits::OutputLimits,
}

impl JobSpec {
    /// The action cache's key for this job: blake3 (hex) over a canonical encoding of
    /// everything that can change its result.
    pub fn cache_key(&self) -> String {
        let job = self;
        let parts = KeyParts {
            salt: CACHE_SALT,
            world: "sluice:action/action@0.1.0",
            plugin: job.plugin.to_string(),
            config: &job.config,
            inputs: job.inputs.iter().map(|(k, v)| (k, v.to_string())).collect(),
            outputs: &job.outputs,
            memory: job.memory,
            timeout_ms: job.timeout.as_millis(),
            output_limits: &job.output_limits,
        };
        blake3::hash(&serde_json::to_vec(&parts).expect("json"))
            .to_hex()
            .to_string()
    }
}

/// What `invoke@1` calls.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvokeSpec {
    /// A registered function's name, or a `.wasm` file (relative to the pipeline).
    pub function: String,
    /// `parameters`, as written.
    pub parameters: String,
}

/// Finds the component of a function named by `invoke@1` and loads it into the runtime.
pub trait FunctionResolver: Send + Sync {
    /// The digest of the loaded function component.
    fn resolve<'a>(
        &'a self,
        tenant: &'a str,
        function: &'a str,
        pipeline_dir: &'a Path,
    ) -> futures_util::future::BoxFuture<'a, Result<Digest, FunctionError>>;
}

/// Why `invoke@1` found no function to run.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// No function by that name, or no such file.
    #[error("{0}")]
    NotFound(String),
    /// Found, but not usable: not a function component, or its store failed.
    #[error("{0}")]
    Unusable(String),
}

/// Functions as `.wasm` files next to the pipeline: what `sluice run` can reach. Registered
/// functions (`sluice function put`) live in the service.
pub struct FileFunctions {
    /// The runtime to load them into.
    pub runtime: Arc<Runtime>,
}

/// Load a function component from a file.
pub fn load_function_file(
    runtime: &Runtime,
    function: &str,
    pipeline_dir: &Path,
) -> Result<Digest, FunctionError> {
    let path = pipeline_dir.join(function);
    let bytes = crate::plugins::read_component(&path)
        .map_err(|e| FunctionError::NotFound(format!("function: {e}")))?;
    runtime
        .load_function(&bytes)
        .map_err(|e| FunctionError::Unusable(format!("function {}: {e:#}", path.display())))
}

impl FunctionResolver for FileFunctions {
    fn resolve<'a>(
        &'a self,
        _tenant: &'a str,
        function: &'a str,
        pipeline_dir: &'a Path,
    ) -> futures_util::future::BoxFuture<'a, Result<Digest, FunctionError>> {
        Box::pin(async move {
            if function.ends_with(".wasm") {
                return load_function_file(&self.runtime, function, pipeline_dir);
            }
            Err(FunctionError::NotFound(format!(
                "function `{function}` is not a .wasm file; registered functions (`sluice function put {function} FILE.wasm`) run in the service (`sluice serve`)"
            )))
        })
    }
}

/// Whether the action at `stage`/`action` touches nothing outside its workspace: its plugin
/// declares no side effects and it is granted no host program, origin, subject or writable
/// directory. Such a run may start before the record that made it runnable is stored (the
/// service's journal, a local run's first moments): if the engine dies, nothing it did is left
/// outside to account for.
pub fn contained(p: &Pipeline, plugins: &ResolvedPlugins, stage: usize, action: usize) -> bool {
    let Some(a) = p.stages.get(stage).and_then(|s| s.actions.get(action)) else {
        return false;
    };
    let pure = plugins
        .get(&a.uses.value)
        .and_then(|p| p.as_ref().ok())
        .is_some_and(|p| !p.description.side_effects);
    let c = &a.capabilities;
    pure && c.process.is_empty()
        && c.http.is_empty()
        && c.nats.is_empty()
        && c.dirs.values().all(|access| *access == Access::Ro)
}

impl JobSpec {
    /// Resolve the action's configuration and inputs against the execution so far.
    pub fn build(
        p: &Pipeline,
        plugins: &ResolvedPlugins,
        exec: &Execution,
        si: usize,
        ai: usize,
        attempt: u32,
    ) -> Result<JobSpec, String> {
        let stage = &p.stages[si];
        let action = &stage.actions[ai];
        let plugin = plugins
            .get(&action.uses.value)
            .and_then(|r| r.as_ref().ok())
            .ok_or_else(|| format!("plugin `{}` is not resolved", action.uses.value))?;
        // Output variables of every earlier action, by namespace.
        let mut namespaces: BTreeMap<&str, &BTreeMap<String, String>> = BTreeMap::new();
        let mut artifacts: BTreeMap<&str, &str> = BTreeMap::new();
        // Only inputs and `#{...}` references need them: skip the scan (it grows with the
        // pipeline) for the rest.
        let needs_earlier =
            !action.inputs.is_empty() || action.with.values().any(|v| v.value.contains("#{"));
        for (ps, rs) in p.stages.iter().zip(&exec.stages).filter(|_| needs_earlier) {
            for (pa, ra) in ps.actions.iter().zip(&rs.actions) {
                if ra.status == Status::Succeeded {
                    if let Some(ns) = &pa.namespace {
                        namespaces.insert(ns.value.as_str(), &ra.variables);
                    }
                    for (name, digest) in &ra.artifacts {
                        artifacts.insert(name.as_str(), digest.as_str());
                    }
                }
            }
        }
        let lookup = |ns: &str, key: &str| -> Option<String> {
            match ns {
                "variables" => exec.variables.get(key).cloned(),
                "sluice" => match key {
                    "execution_id" => Some(exec.execution_id.clone()),
                    "pipeline" => Some(p.name.clone()),
                    "stage" => Some(stage.name.clone()),
                    "action" => Some(action.name.clone()),
                    _ => None,
                },
                "trigger" => crate::scheduler::trigger_value(exec.trigger.as_ref(), key),
                // The guest sees a placeholder; the host puts the value where it may go.
                "secrets" => Some(crate::secrets::placeholder(key)),
                other => namespaces
                    .get(other)
                    .and_then(|vars| vars.get(key).cloned()),
            }
        };
        let mut config = BTreeMap::new();
        for (key, value) in &action.with {
            let rendered =
                template::render(&value.value, lookup).map_err(|e| format!("`with.{key}`: {e}"))?;
            config.insert(key.clone(), rendered);
        }
        let mut inputs = BTreeMap::new();
        for input in &action.inputs {
            let digest = artifacts
                .get(input.value.as_str())
                .ok_or_else(|| format!("input artifact `{}` was not produced", input.value))?;
            inputs.insert(input.value.clone(), digest.parse::<Digest>()?);
        }
        let mut dirs: Vec<(PathBuf, Access)> = action
            .capabilities
            .dirs
            .iter()
            .map(|(d, a)| (p.host_path(d), *a))
            .collect();
        // A plugin that reads a directory named in its configuration gets exactly that
        // directory, read-only: the path the pipeline author wrote is the grant.
        for cap in &plugin.description.capabilities {
            if let Capability::ReadConfigPath(key) = cap
                && let Some(v) = config.get(key)
            {
                // A pipeline registered remotely has no directory to resolve against.
                if p.dir.as_os_str().is_empty() && !Path::new(v).is_absolute() {
                    return Err(format!(
                        "`with.{key}`: {v:?} is relative, and a pipeline registered remotely (over NATS or HTTP) has no directory on the engine's host: use an absolute path"
                    ));
                }
                let path = p.host_path(v);
                if p.confined && (Path::new(v).is_absolute() || !path.starts_with(&p.dir)) {
                    return Err(format!(
                        "`with.{key}`: {v:?} leads out of the pipeline's uploaded folder, which is all it may reach"
                    ));
                }
                if !dirs.iter().any(|(d, _)| d == &path) {
                    dirs.push((path, Access::Ro));
                }
            }
        }
        let execution_id = exec.execution_id.clone();
        let run = &exec.stages[si].actions[ai];
        let invoke = if action.uses.value == "invoke@1" {
            Some(InvokeSpec {
                function: config
                    .get("function")
                    .cloned()
                    .ok_or("`invoke@1` needs `function`")?,
                parameters: config.get("parameters").cloned().unwrap_or_default(),
            })
        } else {
            None
        };
        Ok(JobSpec {
            invoke,
            continuation: run.continuation.clone(),
            wake_payload: run.wake_payload.clone(),
            tenant: exec.tenant.clone(),
            pipeline: p.name.clone(),
            idempotency_key: format!(
                "{}/{}/{}/{}/{}",
                exec.tenant, execution_id, stage.name, action.name, attempt
            ),
            execution_id,
            stage: stage.name.clone(),
            action: action.name.clone(),
            attempt,
            plugin: plugin.digest.parse()?,
            config,
            inputs,
            outputs: action.outputs.iter().map(|o| o.value.clone()).collect(),
            dirs,
            programs: action.capabilities.process.clone(),
            http: action.capabilities.http.clone(),
            nats: crate::runtime::messaging::grants(
                &action.capabilities.nats,
                &action.capabilities.nats_servers,
            ),
            memory: action.memory.unwrap_or(crate::runtime::DEFAULT_MEMORY),
            output_limits: action.output_limits,
            timeout: action.timeout.or(p.timeout).unwrap_or(DEFAULT_TIMEOUT),
            pipeline_dir: p.dir.clone(),
            cacheable: p.cache
                && action.cache
                && !plugin.description.side_effects
                && action.uses.value != "invoke@1"
                && action.capabilities.process.is_empty()
                && action.capabilities.http.is_empty()
                && action.capabilities.nats.is_empty()
                && action.capabilities.dirs.is_empty()
                && action.secrets.is_empty()
                && run.continuation.is_none()
                && run.wake_payload.is_none()
                && !plugin.description.capabilities.iter().any(|c| {
                    matches!(
                        c,
                        Capability::ReadConfigPath(_) | Capability::WriteConfigPath(_)
                    )
                }),
            secrets: action
                .secrets
                .iter()
                .filter_map(|s| {
                    p.secrets
                        .get(&s.value)
                        .map(|from| (s.value.clone(), from.value.clone()))
                })
                .collect(),
            reveal: plugin
                .description
                .capabilities
                .contains(&Capability::Secrets),
            secrets_in_body: plugin
                .description
                .capabilities
                .contains(&Capability::SecretsInBody),
        })
    }
}

/// Load the job's component again if the runtime dropped it from memory (it keeps the
/// `MAX_LOADED` most recently used): a built-in from the binary, any other from the store,
/// where resolving it put it.
async fn reload_if_dropped(cx: &JobContext, digest: &Digest) -> Result<(), String> {
    if cx.runtime.is_loaded(digest) {
        return Ok(());
    }
    let bytes = match crate::plugins::builtin::by_digest(digest) {
        Some(b) => b.to_vec(),
        None => cx
            .blobs
            .get_bytes(digest)
            .map_err(|e| format!("plugin {digest}: {e}"))?,
    };
    let runtime = cx.runtime.clone();
    tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("plugin {digest}: {e:#}"))?;
    Ok(())
}

/// What a worker needs besides the job.
#[derive(Clone)]
pub struct JobContext {
    /// Where pure actions' successes are kept and found (`None`: every action runs).
    pub cache: Option<Arc<crate::cache::ActionCache>>,
    /// Where the values of secrets come from (`None`: jobs listing secrets fail, saying so).
    pub secrets: Option<Arc<dyn super::secrets::SecretSource>>,
    /// The sandbox.
    pub runtime: Arc<Runtime>,
    /// Plugin blobs, and artifacts where they are not sealed.
    pub blobs: Arc<dyn BlobStore>,
    /// Each tenant's sealed artifacts (`None`: artifacts are in `blobs`).
    pub artifacts: Option<Arc<crate::artifacts::tenants::TenantStores>>,
    /// Action logs.
    pub logs: Arc<LogStore>,
    /// Action workspaces.
    pub workspaces: Arc<super::WorkspacePool>,
    /// Engine internals that no writable grant may contain or lie within.
    pub protected: Arc<Vec<PathBuf>>,
    /// Where `invoke@1` finds its functions.
    pub functions: Arc<dyn FunctionResolver>,
}

/// One attempt the scheduler asked for, with its job resolved (or the reason it could not be).
pub struct Attempt {
    /// Stage index.
    pub stage: usize,
    /// Action index within the stage.
    pub action: usize,
    /// Attempt number.
    pub attempt: u32,
    /// Backoff to wait first, in milliseconds.
    pub delay_ms: u64,
    /// The job, or why its configuration could not be resolved.
    pub spec: Result<JobSpec, String>,
}

impl Attempt {
    /// Wait out the backoff, run the job, and say how it went as the scheduler's next input.
    pub async fn run(self, cx: &JobContext) -> (Input, Leftover) {
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        match self.spec {
            Ok(spec) => {
                let (result, leftover) = execute(cx, &spec).await;
                let inputs = spec
                    .inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect();
                let input = Input::ActionCompleted {
                    stage: self.stage,
                    action: self.action,
                    attempt: self.attempt,
                    result,
                    kept: crate::scheduler::kept(&spec.config),
                    inputs,
                    at: crate::clock::now(),
                };
                (input, leftover)
            }
            Err(error) => (
                Self::failure(self.stage, self.action, self.attempt, error),
                Leftover::none(),
            ),
        }
    }

    /// The input for an attempt that failed before or outside its plugin.
    pub fn failure(stage: usize, action: usize, attempt: u32, error: String) -> Input {
        Input::ActionCompleted {
            stage,
            action,
            attempt,
            result: ActionResult::Failed {
                error,
                kind: FailureKind::Permanent,
            },
            kept: BTreeMap::new(),
            inputs: BTreeMap::new(),
            at: crate::clock::now(),
        }
    }
}

/// A workspace to hand back to the pool once the job's result has been reported.
pub struct Leftover(Option<(super::workspace::Workspace, super::workspace::Used)>);

impl Leftover {
    /// Nothing to release.
    pub fn none() -> Self {
        Leftover(None)
    }

    /// Empty the workspace and return it to the pool.
    pub fn release(self, cx: &JobContext) {
        if let Some((ws, used)) = self.0 {
            cx.workspaces.give_back(ws, used);
        }
    }
}

/// Run a job: prepare its workspace, call the plugin, collect its outputs. Never panics or
/// fails the engine: every problem becomes the action's failure. The workspace comes back as
/// a [`Leftover`] so that emptying it happens after the result is on its way.
pub async fn execute(cx: &JobContext, job: &JobSpec) -> (ActionResult, Leftover) {
    let raw_log: Arc<dyn LogSink> =
        Arc::new(
            cx.logs
                .sink(&job.execution_id, &job.stage, &job.action, job.attempt),
        );
    let secrets = match super::secrets::reveal(cx, job).await {
        Ok(s) => s,
        Err(error) => {
            raw_log.log(Level::Error, &error, &[]);
            let kind = FailureKind::Permanent;
            return (ActionResult::Failed { error, kind }, Leftover(None));
        }
    };
    let store =
        match crate::artifacts::tenants::store_of(cx.artifacts.as_deref(), &cx.blobs, &job.tenant)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let error = format!("the tenant's artifact store: {e}");
                raw_log.log(Level::Error, &error, &[]);
                let kind = FailureKind::Retryable;
                return (ActionResult::Failed { error, kind }, Leftover(None));
            }
        };
    let cache = cx.cache.as_ref().filter(|_| job.cacheable);
    let cache_key = cache.map(|_| job.cache_key());
    if let (Some(cache), Some(key)) = (cache, &cache_key)
        && let Some(hit) = cached(&*store, cache, &job.tenant, key).await
    {
        // No log line: the record and its events say where the result came from, and the
        // attempt that recorded it keeps the lines (a line here would cost a hit three times
        // its lookup: the action's log file created).
        let result = ActionResult::Succeeded {
            variables: hit.variables,
            artifacts: hit.artifacts,
            summary: hit.summary,
            cached_from: Some(hit.from),
        };
        return (result, Leftover(None));
    }
    let redactor = sluice_core::redact::Redactor::new(secrets.values().map(String::as_str));
    let redacting = (!redactor.is_empty()).then(|| {
        Arc::new(super::secrets::RedactingLog::new(
            raw_log.clone(),
            redactor.clone(),
        ))
    });
    let log: Arc<dyn LogSink> = match &redacting {
        Some(r) => r.clone(),
        None => raw_log,
    };
    let (result, leftover) = match cx.workspaces.take() {
        Ok(ws) => {
            // `in/` and `out/` exist only if the job has inputs or outputs; host programs run
            // in the workspace and may create anything.
            let used = super::workspace::Used {
                inputs: !job.inputs.is_empty(),
                outputs: !job.outputs.is_empty(),
                anything: !job.programs.is_empty(),
            };
            let mut result = run_in(
                cx,
                &store,
                job,
                &ws.path,
                ws.scratch.clone(),
                log.clone(),
                &secrets,
            )
            .await;
            if let Err(error) = &mut result {
                name_a_full_disk(error, &ws.path);
            }
            if let Ok(ActionResult::Failed { error, .. }) = &mut result {
                name_a_full_disk(error, &ws.path);
            }
            (result, Leftover(Some((ws, used))))
        }
        Err(e) => (
            Err(format!("cannot create a workspace: {e}")),
            Leftover(None),
        ),
    };
    let result = match result {
        Ok(r) => r,
        Err(error) => {
            log.log(Level::Error, &error, &[]);
            ActionResult::Failed {
                error,
                kind: FailureKind::Permanent,
            }
        }
    };
    if let ActionResult::Failed {
        error,
        kind: kind @ (FailureKind::Retryable | FailureKind::Timeout),
    } = &result
    {
        log.log(
            Level::Warn,
            &format!("attempt {} failed ({kind:?}): {error}", job.attempt),
            &[],
        );
    }
    if let Some(r) = &redacting {
        r.finish();
    }
    if let (
        Some(cache),
        Some(key),
        ActionResult::Succeeded {
            variables,
            artifacts,
            summary,
            cached_from: None,
        },
    ) = (cache, cache_key, &result)
    {
        let entry = crate::cache::Entry {
            key,
            pipeline: job.pipeline.clone(),
            from: format!("{}/{}/{}", job.execution_id, job.stage, job.action),
            variables: variables.clone(),
            artifacts: artifacts.clone(),
            summary: summary.clone(),
            created: jiff::Timestamp::now().to_string(),
        };
        if let Err(e) = cache.put(&job.tenant, entry).await {
            tracing::warn!("the action cache could not keep a result: {e}");
        }
    }
    (super::secrets::redact_result(result, &redactor), leftover)
}

/// A cache entry whose artifacts are all still in the store (one whose artifacts are gone is
/// a miss: the action runs and stores them again), each noted as used: the record about to
/// name them must find them kept (see `artifacts::collect`).
async fn cached(
    store: &dyn BlobStore,
    cache: &crate::cache::ActionCache,
    tenant: &str,
    key: &str,
) -> Option<crate::cache::Entry> {
    let hit = cache.get(tenant, key).await.ok().flatten()?;
    let all_there = hit.artifacts.values().all(|d| {
        d.parse::<Digest>()
            .is_ok_and(|d| store.touch(&d).unwrap_or(false))
    });
    all_there.then_some(hit)
}

/// Free bytes below which a failed action's disk counts as full.
const FULL_DISK: u64 = 1 << 20;

/// A guest's libc reports a failed write to a full disk as a plain I/O error (it does not ask
/// the host which error it was), so a failed action whose workspace's disk is full says so.
fn name_a_full_disk(error: &mut String, workspace: &Path) {
    if let Ok(fs) = rustix::fs::statvfs(workspace)
        && fs.f_bavail.saturating_mul(fs.f_frsize) < FULL_DISK
    {
        error.push_str(" (insufficient space: the disk holding the workspace is full)");
    }
}

/// `path` with every symlink resolved. A missing tail (an `rw` grant is created on demand)
/// is kept as written below its nearest existing ancestor's real path.
fn real_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => return Ok(missing.iter().rev().fold(real, |p, n| p.join(n))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(name), Some(parent)) = (existing.file_name(), existing.parent()) else {
                    return Err(e);
                };
                missing.push(name);
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

async fn run_in(
    cx: &JobContext,
    store: &Arc<dyn BlobStore>,
    job: &JobSpec,
    ws: &Path,
    scratch: Option<crate::runtime::Preopened>,
    log: Arc<dyn LogSink>,
    secrets: &BTreeMap<String, String>,
) -> Result<ActionResult, String> {
    // The time limit covers the whole attempt, collecting its outputs included.
    let deadline = std::time::Instant::now() + job.timeout;
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| format!("create workspace {}: {e}", p.display()))
    };
    let mut mounts = vec![super::workspace::scratch_mount(ws)];
    for name in &job.outputs {
        mk(&ws.join("out").join(name))?;
        mounts.push(Mount {
            host: ws.join("out").join(name),
            guest: Path::new("/out").join(name),
            access: Access::Rw,
        });
    }
    if !job.inputs.is_empty() {
        let (blobs, inputs, ws2) = (store.clone(), job.inputs.clone(), ws.to_path_buf());
        // The guest sees inputs read-only, so they may share storage with the store; a host
        // program could write them, so actions with process grants get copies.
        let transfer = if job.programs.is_empty() {
            tree::Transfer::Share
        } else {
            tree::Transfer::Copy
        };
        let stats = blocking(move || {
            let mut out = Vec::new();
            for (name, digest) in &inputs {
                let stats =
                    tree::materialize_with(&*blobs, digest, &ws2.join("in").join(name), transfer)
                        .map_err(|e| format!("input artifact `{name}`: {e}"))?;
                out.push((name.clone(), stats.files));
            }
            Ok(out)
        })
        .await?;
        for (name, files) in stats {
            log.log(
                Level::Debug,
                &format!("input `{name}`: {}", crate::model::count(files, "file")),
                &[],
            );
            mounts.push(Mount {
                host: ws.join("in").join(&name),
                guest: Path::new("/in").join(&name),
                access: Access::Ro,
            });
        }
    }
    let first_grant = mounts.len();
    for (dir, access) in &job.dirs {
        // Compared and mounted by real path: a grant written as a symlink (`./alias: rw`,
        // alias -> the data dir) reaches what the link points to.
        let real =
            real_path(dir).map_err(|e| format!("granted directory {}: {e}", dir.display()))?;
        if *access == Access::Rw
            // `protected` holds real paths already (resolved once, when the data dir opened).
            && let Some(p) = cx
                .protected
                .iter()
                .find(|p| [dir, &real].iter().any(|d| p.starts_with(d) || d.starts_with(p)))
        {
            return Err(format!(
                "the grant `{}: rw` would let the action write Sluice's own data ({}); grant a directory outside it",
                dir.display(),
                p.display()
            ));
        }
        if *access == Access::Rw && !real.exists() {
            std::fs::create_dir_all(&real)
                .map_err(|e| format!("create granted directory {}: {e}", dir.display()))?;
        }
        let mounted =
            real_path(&real).map_err(|e| format!("granted directory {}: {e}", dir.display()))?;
        if mounted != real || !mounted.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        mounts.push(Mount {
            host: mounted,
            guest: dir.clone(),
            access: *access,
        });
    }
    // The engine's own directories inside a granted one (`--data` under the pipeline's
    // directory, by whatever name), as the guest sees them, so copies can leave them out.
    // Only granted directories can hold them (the workspace's own mounts cannot), and resolving
    // paths costs system calls: an action without grants skips this.
    let mut exclude = Vec::new();
    let granted = &mounts[first_grant..];
    let engine_dirs: Vec<PathBuf> = if granted.is_empty() {
        Vec::new()
    } else {
        // The protected paths (real paths already) and the data dir that holds them.
        let data = cx.protected.iter().filter_map(|p| p.parent());
        cx.protected
            .iter()
            .map(PathBuf::as_path)
            .chain(data)
            .map(Path::to_path_buf)
            .collect()
    };
    for m in granted {
        for p in &engine_dirs {
            if let Ok(rel) = p.strip_prefix(&m.host)
                && !rel.as_os_str().is_empty()
                && !exclude.contains(&m.guest.join(rel))
            {
                exclude.push(m.guest.join(rel));
            }
        }
    }
    // Only host programs see these; an action with no program grants needs none of them.
    let mut program_env = if job.programs.is_empty() {
        Vec::new()
    } else {
        vec![
            (
                "SLUICE_OUTPUT".to_string(),
                ws.join("scratch")
                    .join(".sluice-output.env")
                    .display()
                    .to_string(),
            ),
            ("SLUICE_WORKSPACE".to_string(), ws.display().to_string()),
            ("SLUICE_PIPELINE".to_string(), job.pipeline.clone()),
            ("SLUICE_EXECUTION_ID".to_string(), job.execution_id.clone()),
            ("SLUICE_STAGE".to_string(), job.stage.clone()),
            ("SLUICE_ACTION".to_string(), job.action.clone()),
            ("SLUICE_ATTEMPT".to_string(), job.attempt.to_string()),
            (
                "SLUICE_IDEMPOTENCY_KEY".to_string(),
                job.idempotency_key.clone(),
            ),
        ]
    };
    // Granted host programs get the values in their environment.
    if !job.programs.is_empty() {
        for (name, value) in secrets {
            program_env.push((
                format!("SLUICE_SECRET_{}", name.to_uppercase()),
                value.clone(),
            ));
        }
    }
    let inv = Invocation {
        context: ActionContext {
            tenant: job.tenant.clone(),
            pipeline: job.pipeline.clone(),
            execution_id: job.execution_id.clone(),
            stage: job.stage.clone(),
            action: job.action.clone(),
            attempt: job.attempt,
            idempotency_key: job.idempotency_key.clone(),
            continuation: job.continuation.clone(),
            wake_payload: job.wake_payload.clone(),
            inputs: job.inputs.keys().cloned().collect(),
            outputs: job.outputs.clone(),
            pipeline_dir: job.pipeline_dir.display().to_string(),
        },
        config: job
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        workspace: ws.to_path_buf(),
        mounts,
        preopened: scratch,
        programs: job.programs.clone(),
        program_env,
        program_hidden: if job.programs.is_empty() {
            Vec::new()
        } else {
            cx.protected.to_vec()
        },
        program_file_size: job.output_limits.size,
        exclude,
        http: job.http.clone(),
        deterministic: job.cacheable,
        http_secrets: secrets
            .iter()
            .map(|(name, value)| (crate::secrets::placeholder(name), value.clone()))
            .collect(),
        http_secrets_in_body: job.secrets_in_body,
        revealable: if job.reveal {
            secrets
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        } else {
            Vec::new()
        },
        nats: job.nats.clone(),
        memory_limit: job.memory,
        timeout: job.timeout,
        log: log.clone(),
    };
    let outcome = match &job.invoke {
        None => {
            reload_if_dropped(cx, &job.plugin).await?;
            cx.runtime.run(&job.plugin, inv).await
        }
        Some(call) => {
            let digest = cx
                .functions
                .resolve(&job.tenant, &call.function, &job.pipeline_dir)
                .await
                .map_err(|e| e.to_string())?;
            log.log(
                Level::Debug,
                &format!("invoking function {} ({digest})", call.function),
                &[],
            );
            cx.runtime
                .run_function(&digest, inv, call.parameters.clone())
                .await
        }
    };
    match outcome {
        Ok(RunOutcome::Succeeded { variables, summary }) => {
            let mut variables: BTreeMap<String, String> = variables.into_iter().collect();
            let (blobs, outputs, ws2) = (store.clone(), job.outputs.clone(), ws.to_path_buf());
            let timed_out = || ActionResult::Failed {
                error: format!(
                    "{}; its outputs were still being collected",
                    RunError::Timeout(job.timeout)
                ),
                kind: FailureKind::Timeout,
            };
            let artifacts = if outputs.is_empty() {
                BTreeMap::new()
            } else {
                // Bounded: a guest's output costs it nothing to make (a sparse file, a deep
                // tree) but all of it to collect.
                let bounds = tree::Bounds {
                    depth: job.output_limits.depth,
                    entries: job.output_limits.entries,
                    bytes: job.output_limits.size,
                    deadline: Some(deadline),
                };
                let collect = blocking(move || {
                    let mut out = BTreeMap::new();
                    for name in &outputs {
                        // The workspace is ours and about to be emptied: move outputs into the store.
                        let (digest, _) = tree::put_tree_bounded(
                            &*blobs,
                            &ws2.join("out").join(name),
                            tree::Transfer::Share,
                            &bounds,
                        )
                        .map_err(|e| format!("output artifact `{name}`: {e}"))?;
                        out.insert(name.clone(), digest.to_string());
                    }
                    Ok(out)
                });
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match tokio::time::timeout(left, collect).await {
                    Err(_) => return Ok(timed_out()),
                    Ok(Err(e)) if e.contains(tree::DEADLINE_PASSED) => return Ok(timed_out()),
                    Ok(r) => r?,
                }
            };
            if let [(_, digest)] = artifacts.iter().collect::<Vec<_>>().as_slice() {
                variables
                    .entry("Digest".to_string())
                    .or_insert_with(|| digest.to_string());
            }
            Ok(ActionResult::Succeeded {
                variables,
                artifacts,
                summary,
                cached_from: None,
            })
        }
        Ok(RunOutcome::Pending {
            continuation,
            wake,
            summary,
            percent_complete,
        }) => {
            let wake = parse_wake(&wake)?;
            // An approval waits until its `timeout` (7 days unless configured).
            let deadline = (wake == Wake::Approval).then(|| {
                let limit = job
                    .config
                    .get("timeout")
                    .and_then(|t| crate::model::units::parse_duration(t).ok())
                    .unwrap_or(APPROVAL_TIMEOUT);
                Timestamp(crate::clock::now().0 + limit.as_millis() as u64)
            });
            Ok(ActionResult::Pending {
                continuation,
                wake,
                summary,
                percent: percent_complete.map(|p| p.min(100)),
                deadline,
            })
        }
        Err(e @ RunError::Retryable(_)) => Ok(ActionResult::Failed {
            error: e.to_string(),
            kind: FailureKind::Retryable,
        }),
        Err(e @ RunError::Timeout(_)) => Ok(ActionResult::Failed {
            error: e.to_string(),
            kind: FailureKind::Timeout,
        }),
        Err(e) => Err(e.to_string()),
    }
}
