//! The sandbox: runs action components with wasmtime.
//!
//! One [`wasmtime::Engine`] and one [`Linker`] per process; a pre-instantiated component
//! (`InstancePre`) cached per digest; a fresh [`Store`] per call. Every call is bounded:
//! memory by a [`ResourceLimiter`], CPU by epoch interruption (the guest yields every tick,
//! so the wall-clock timeout around the call can always cancel it, host calls included).
//! Compiled code is cached on disk by digest and the engine's compatibility hash.

mod admission;
pub use admission::{guest_memory_budget, set_guest_memory_budget};
mod cache;
pub use cache::{CompileCounters, counters as compile_counters};
mod capture;
pub mod confine;
mod determinism;
mod host;
pub mod http;
mod logging;
mod lru;
pub use lru::Lru;
pub mod messaging;
mod spawner;

pub use host::{Mount, Preopened};
pub use logging::{Level, LogSink};

use anyhow::Context as _;
use sluice_core::Digest;
use sluice_core::plugin::{Capability, ConfigKey, ConfigType, Description};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::WasiCtx;

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sluice:action/action",
        imports: { "sluice:action/process.run": async, "sluice:action/messaging.publish": async },
        exports: { default: async },
    });
}

#[allow(missing_docs)]
mod function_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sluice:action/function",
        with: { "sluice:action/log": super::bindings::sluice::action::log },
        exports: { default: async },
    });
}

#[allow(missing_docs)]
mod rule_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sluice:action/rule",
        with: { "sluice:action/log": super::bindings::sluice::action::log },
        exports: { default: async },
    });
}

use bindings::sluice::action::types as wit;
use function_bindings::sluice::action::function_types as fwit;

/// How often the epoch advances; a looping guest yields this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default guest memory cap (`limits.memory` overrides).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
pub use sluice_core::limits::MAX_GUEST_MEMORY;
/// Guest calls running at once (the rest wait their turn).
const MAX_CONCURRENT_CALLS: u32 = 64;
/// Bytes of a pooled memory or table slot kept mapped between instances (see `Runtime::new`).
const KEEP_RESIDENT: usize = 2 << 20;
/// How long `describe` may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Guest stdout/stderr kept for the log, per stream.
const STDIO_CAPTURE: usize = 1 << 20;
/// Bytes a guest may send through the `log` import per call; beyond, entries are dropped.
pub const LOG_LIMIT: usize = 4 << 20;
/// Resources (open files, directory streams, pollables, HTTP bodies...) a guest may hold at
/// once, at most. Open files hold host descriptors, which the whole engine shares: see
/// [`DescriptorBudget`].
pub const MAX_GUEST_RESOURCES: usize = 1024;
/// The fewest resources a guest may hold (a plain guest holds about a dozen).
pub const MIN_GUEST_RESOURCES: usize = 64;

/// How the engine's open-file limit is shared. A quarter of it (at least 64) is kept for the
/// engine itself (its stores, logs, workspaces, connections); guests share the rest: each call
/// may hold `per_call` resources, and no more calls run at once than the rest can hold, so
/// guests together can never take the engine's reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// Resources one call may hold.
    pub per_call: usize,
    /// Calls running at once.
    pub calls: usize,
}

impl DescriptorBudget {
    /// The budget under an open-file limit of `limit` descriptors.
    pub fn for_limit(limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let reserve = (limit / 4).max(64);
        let shared = limit.saturating_sub(reserve);
        let max_calls = MAX_CONCURRENT_CALLS as usize;
        let per_call = (shared / max_calls).clamp(MIN_GUEST_RESOURCES, MAX_GUEST_RESOURCES);
        DescriptorBudget {
            per_call,
            calls: (shared / per_call).clamp(1, max_calls),
        }
    }

    /// The budget under this process's current open-file limit.
    pub fn of_this_process() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Self::for_limit(limit.current.unwrap_or(u64::MAX))
    }
}
/// Bytes of output variables (names, values, and 16 per entry for the record's framing), summary
/// and continuation a call may return: they go into the execution record, which must stay
/// well below a NATS message's 1 MiB.
pub const MAX_OUTCOME_BYTES: usize = 256 << 10;
/// Bytes of an error message kept; the rest is cut.
pub const MAX_ERROR_BYTES: usize = 8 << 10;

/// Everything the engine tells a plugin about one run (the WIT `context`).
#[derive(Clone, Debug, Default)]
pub struct ActionContext {
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
    /// Set when resuming a pending action.
    pub continuation: Option<String>,
    /// Payload of the wake event.
    pub wake_payload: Option<String>,
    /// Input artifact names.
    pub inputs: Vec<String>,
    /// Output artifact names.
    pub outputs: Vec<String>,
    /// Host directory of the pipeline file.
    pub pipeline_dir: String,
}

/// One call of `run`, with everything the sandbox is allowed to reach.
pub struct Invocation {
    /// The context passed to the guest.
    pub context: ActionContext,
    /// Resolved configuration.
    pub config: Vec<(String, String)>,
    /// Host workspace: `in/`, `out/`, `scratch/`; the working directory of host programs.
    pub workspace: PathBuf,
    /// Directories visible to the guest (workspace mounts and granted directories).
    pub mounts: Vec<Mount>,
    /// Used instead of opening `mounts` when they are exactly its mount.
    pub preopened: Option<Preopened>,
    /// Host programs the guest may run.
    pub programs: Vec<String>,
    /// Extra environment for host programs (SLUICE_*).
    pub program_env: Vec<(String, String)>,
    /// Host paths of the engine's own directories (data directory, workspaces): host
    /// programs never reach them, even inside a granted directory.
    pub program_hidden: Vec<PathBuf>,
    /// The largest file a host program may write (`limits.output.size`).
    pub program_file_size: u64,
    /// Guest paths inside its mounts that are the engine's own (data directory, workspaces):
    /// the guest sees them as `SLUICE_EXCLUDE`, one per line, and copies leave them out.
    pub exclude: Vec<PathBuf>,
    /// Origins the guest may send HTTP requests to (`scheme://host[:port]`).
    pub http: Vec<String>,
    /// Secret placeholders → values, put into request headers to granted origins.
    pub http_secrets: Vec<(String, String)>,
    /// Put `http_secrets` into request bodies too (the plugin declared `http-body`).
    pub http_secrets_in_body: bool,
    /// Secrets the guest may hold through the `secrets` import (the pipeline's name → value):
    /// only for a plugin with the `secrets` capability, only those its action lists.
    pub revealable: Vec<(String, String)>,
    /// A fixed clock and a seeded random source (actions whose results are cached: the same
    /// inputs must give the same result).
    pub deterministic: bool,
    /// NATS subjects (patterns) the guest may publish to.
    pub nats: Vec<String>,
    /// Guest memory cap in bytes.
    pub memory_limit: u64,
    /// Wall-clock limit for the whole call.
    pub timeout: Duration,
    /// Where logs go.
    pub log: Arc<dyn LogSink>,
}

/// One check of a custom condition rule (the WIT `rule` world).
pub struct RuleCheck {
    /// Tenant.
    pub tenant: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Execution id.
    pub execution_id: String,
    /// The stage the condition belongs to.
    pub stage: String,
    /// `before_entry`, `on_success` or `on_failure`.
    pub condition: String,
    /// The time of the check, ms since the epoch.
    pub now_ms: u64,
    /// `#{...}` values by reference (`variables.KEY`, `NS.KEY`, `sluice.*`).
    pub values: Vec<(String, String)>,
    /// Resolved `with:` configuration.
    pub config: Vec<(String, String)>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Where its logs go.
    pub log: Arc<dyn LogSink>,
}

/// A `run` that did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// Finished.
    Succeeded {
        /// Output variables.
        variables: Vec<(String, String)>,
        /// One line.
        summary: Option<String>,
    },
    /// Not finished: call again with `continuation` when `wake` fires.
    Pending {
        /// Opaque state for the next call.
        continuation: String,
        /// Wake condition, as text (`timer:<ms>`, `approval`, `event:<subject>`).
        wake: String,
        /// One line.
        summary: Option<String>,
        /// 0–100.
        percent_complete: Option<u8>,
    },
}

/// Why a `run` failed. The first three come from the plugin; the rest from the sandbox.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The plugin rejected its configuration.
    #[error("configuration error: {0}")]
    Config(String),
    /// The plugin ran and failed.
    #[error("{0}")]
    Failed(String),
    /// The plugin failed transiently.
    #[error("retryable error: {0}")]
    Retryable(String),
    /// The wall-clock limit was reached; the guest was stopped.
    #[error("timeout: the action did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The guest tried to grow memory past its limit and was stopped.
    #[error("memory limit exceeded: the guest tried to grow its memory past {}", bytesize::ByteSize(*.0))]
    MemoryExceeded(u64),
    /// The guest trapped (panic, unreachable, out-of-bounds access...).
    #[error("the plugin crashed: {0}")]
    Trap(String),
    /// The component could not be loaded or instantiated.
    #[error("the plugin could not be started: {0}")]
    Instantiate(String),
    /// The plugin returned more than the engine keeps (variables, summary, continuation).
    #[error("{0}")]
    TooLarge(String),
}

/// `message` cut to [`MAX_ERROR_BYTES`] (on a character boundary), saying how much was cut.
pub fn cut_error(mut message: String) -> String {
    if message.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let more = message.len() - end;
        message.truncate(end);
        message.push_str(&format!("… ({more} more bytes cut)"));
    }
    message
}

/// A call's result within the engine's bounds: error messages cut, an outcome too large
/// for the execution record refused with a message that says so.
fn bounded(result: Result<RunOutcome, RunError>) -> Result<RunOutcome, RunError> {
    let size = |vars: &[(String, String)], texts: &[Option<&String>]| {
        vars.iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + texts.iter().flatten().map(|t| t.len()).sum::<usize>()
    };
    let returned = match &result {
        Ok(RunOutcome::Succeeded { variables, summary }) => size(variables, &[summary.as_ref()]),
        Ok(RunOutcome::Pending {
            continuation,
            summary,
            wake,
            ..
        }) => size(&[], &[Some(continuation), summary.as_ref(), Some(wake)]),
        Err(_) => 0,
    };
    if returned > MAX_OUTCOME_BYTES {
        return Err(RunError::TooLarge(format!(
            "the plugin returned {} of output variables, summary and continuation; at most {} are kept",
            bytesize::ByteSize(returned as u64),
            bytesize::ByteSize(MAX_OUTCOME_BYTES as u64)
        )));
    }
    result.map_err(|e| match e {
        RunError::Config(m) => RunError::Config(cut_error(m)),
        RunError::Failed(m) => RunError::Failed(cut_error(m)),
        RunError::Retryable(m) => RunError::Retryable(cut_error(m)),
        RunError::Trap(m) => RunError::Trap(cut_error(m)),
        RunError::Instantiate(m) => RunError::Instantiate(cut_error(m)),
        other => other,
    })
}

/// Components of each kind (actions, functions, rules) kept compiled and linked in memory; the
/// least recently used beyond this is dropped and loaded again (from the disk cache) when next
/// needed. `SLUICE_MAX_LOADED` changes it.
pub const MAX_LOADED: usize = 256;

/// Runtime settings.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
}

/// The wasmtime engine, linker and caches. Cheap to share (`Arc`).
pub struct Runtime {
    engine: Engine,
    linker: Linker<host::HostState>,
    cache: cache::CompileCache,
    loaded: Mutex<lru::Lru<Digest, bindings::ActionPre<host::HostState>>>,
    functions: Mutex<lru::Lru<Digest, function_bindings::FunctionPre<host::HostState>>>,
    rules: Mutex<lru::Lru<Digest, rule_bindings::RulePre<host::HostState>>>,
    /// NATS connections for the `messaging` import.
    pub nats: Arc<messaging::NatsAccess>,
    /// Call slots and the engine-wide guest memory budget.
    admission: admission::Admission,
    budget: DescriptorBudget,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Build the engine and linker and start the epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut c = Config::new();
        c.epoch_interruption(true);
        c.wasm_component_model(true);
        // Pooled instance slots make instantiation a matter of microseconds; `admission` below
        // keeps concurrent calls within the pool.
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_CALLS * 2)
            .total_core_instances(MAX_CONCURRENT_CALLS * 20)
            .total_memories(MAX_CONCURRENT_CALLS * 4)
            .total_tables(MAX_CONCURRENT_CALLS * 8)
            .total_stacks(MAX_CONCURRENT_CALLS * 2)
            .max_memory_size(MAX_GUEST_MEMORY as usize)
            // A finished instance's dirty pages are found with PAGEMAP_SCAN (Linux ≥ 6.7) and
            // zeroed in place instead of `madvise`d away: the next instance in the slot takes
            // no page faults and no TLB shoot-down. Where the ioctl is missing, wasmtime falls
            // back to madvise.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        // Guests run one call each, never the component-model-async ABI: skip the per-store
        // concurrency state. Its tear-down built an error value on every store drop, which
        // with `RUST_BACKTRACE=1` captured a backtrace (~20 µs per action).
        c.concurrency_support(false);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Outbound HTTP: linked for every guest, denied unless the call grants the origin.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::Action::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        // `typed-action` only: a guest that never calls it does not import it.
        linker.instance("sluice:action/secrets@0.1.0")?.func_wrap(
            "reveal",
            |store: wasmtime::StoreContextMut<'_, host::HostState>, (name,): (String,)| {
                Ok((store.data().reveal(&name),))
            },
        )?;
        let cache = cache::CompileCache::new(&engine, config.cache_dir)?;
        // Read once: the CLI raises the limit before building the runtime.
        let budget = DescriptorBudget::of_this_process();
        // An operator's knob (a memory-tight host), and how the tests make it small.
        let max_loaded = std::env::var("SLUICE_MAX_LOADED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_LOADED);
        Ok(Runtime {
            _ticker: EpochTicker::start(&engine),
            engine,
            linker,
            cache,
            loaded: Mutex::new(lru::Lru::new(max_loaded)),
            functions: Mutex::new(lru::Lru::new(max_loaded)),
            rules: Mutex::new(lru::Lru::new(max_loaded)),
            nats: Arc::new(messaging::NatsAccess::from_env()),
            admission: admission::Admission::new(budget.calls, admission::guest_memory_budget()),
            budget,
        })
    }

    /// The engine-wide guest memory budget and how much of it running guests do not hold,
    /// in bytes.
    pub fn guest_memory(&self) -> (u64, u64) {
        (self.admission.memory_budget(), self.admission.memory_free())
    }

    /// How the open-file limit is shared between guests and the engine.
    pub fn descriptor_budget(&self) -> DescriptorBudget {
        self.budget
    }

    /// The wasmtime engine (for the benchmark's bare baseline).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compile (or load from cache) a component and pre-link it; returns its digest.
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.loaded.lock().unwrap().contains_key(&digest) {
            return Ok(digest);
        }
        let pre = self.prelink(&digest, bytes, "the component does not fit the sluice:action@0.1.0 world (or imports something this engine does not provide)")?;
        let pre = bindings::ActionPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component does not export the sluice:action@0.1.0 `action` world")?;
        self.loaded.lock().unwrap().insert(digest, pre);
        Ok(digest)
    }

    /// Compile a component (or load it from the disk cache), whatever world it fits: whether
    /// this engine can run it at all. Returns its digest.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::of(bytes);
        self.cache.load(&self.engine, &digest, bytes)?;
        Ok(digest)
    }

    /// Compile (or load from the disk cache) and link against this engine's imports.
    fn prelink(
        &self,
        digest: &Digest,
        bytes: &[u8],
        misfit: &'static str,
    ) -> anyhow::Result<wasmtime::component::InstancePre<host::HostState>> {
        let component: Component = self.cache.load(&self.engine, digest, bytes)?;
        self.linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context(misfit)
    }

    /// Compile (or load from cache) a function component (the `function` world) and pre-link
    /// it; returns its digest.
    pub fn load_function(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.functions.lock().unwrap().contains_key(&digest) {
            return Ok(digest);
        }
        let pre = self.prelink(
            &digest,
            bytes,
            "the component does not fit the sluice:action@0.1.0 `function` world",
        )?;
        let pre = function_bindings::FunctionPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component does not export the sluice:action@0.1.0 `function` world")?;
        self.functions.lock().unwrap().insert(digest, pre);
        Ok(digest)
    }

    /// Whether a function component is loaded.
    pub fn has_function(&self, digest: &Digest) -> bool {
        self.functions.lock().unwrap().contains_key(digest)
    }

    /// Call a function's `handle` in a fresh sandbox set up like an action's; its reply is
    /// mapped onto an action's outcome (`continue-later` is `pending` on a timer).
    pub async fn run_function(
        &self,
        digest: &Digest,
        mut inv: Invocation,
        parameters: String,
    ) -> Result<RunOutcome, RunError> {
        let pre = self
            .functions
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| RunError::Instantiate(format!("function {digest} is not loaded")))?;
        let _admitted = self.admission.admit(inv.memory_limit).await;
        let (mut store, stdout, stderr) = self.sandbox(&mut inv)?;
        let c = &inv.context;
        let job = fwit::Job {
            pipeline: c.pipeline.clone(),
            execution_id: c.execution_id.clone(),
            stage: c.stage.clone(),
            action: c.action.clone(),
            attempt: c.attempt,
            idempotency_key: c.idempotency_key.clone(),
            parameters,
            continuation: c.continuation.clone(),
            inputs: c.inputs.clone(),
            outputs: c.outputs.clone(),
        };
        let call = async {
            let f = pre.instantiate_async(&mut store).await?;
            f.call_handle(&mut store, &job).await
        };
        let result = tokio::time::timeout(inv.timeout, call).await;
        drain(&inv.log, &stdout, &stderr);
        bounded(match result {
            Err(_) => Err(RunError::Timeout(inv.timeout)),
            Ok(Err(e)) => Err(trap_error(e, store.data())),
            Ok(Ok(fwit::Reply::Success(variables))) => Ok(RunOutcome::Succeeded {
                variables,
                summary: None,
            }),
            Ok(Ok(fwit::Reply::Failure(message))) => Err(RunError::Failed(message)),
            Ok(Ok(fwit::Reply::ContinueLater(later))) => Ok(RunOutcome::Pending {
                continuation: later.token,
                wake: format!("timer:{}", later.delay_ms),
                summary: later.summary,
                percent_complete: None,
            }),
        })
    }

    /// Compile (or load from cache) a custom rule component (the `rule` world) and pre-link it.
    pub fn load_rule(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.rules.lock().unwrap().contains_key(&digest) {
            return Ok(digest);
        }
        let pre = self.prelink(
            &digest,
            bytes,
            "the component does not fit the sluice:action@0.1.0 `rule` world",
        )?;
        let pre = rule_bindings::RulePre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component does not export the sluice:action@0.1.0 `rule` world")?;
        self.rules.lock().unwrap().insert(digest, pre);
        Ok(digest)
    }

    /// Call a rule's `check` in a sandbox with no grants at all (no files, programs or
    /// network), bounded like an action. `Ok(Err(reason))` is a failing rule.
    pub async fn check_rule(
        &self,
        digest: &Digest,
        check: RuleCheck,
    ) -> Result<Result<(), String>, RunError> {
        let pre = self
            .rules
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| RunError::Instantiate(format!("rule {digest} is not loaded")))?;
        let _admitted = self.admission.admit(DEFAULT_MEMORY).await;
        let mut inv = Invocation {
            context: ActionContext::default(),
            config: Vec::new(),
            workspace: std::env::temp_dir(),
            mounts: Vec::new(),
            preopened: None,
            programs: Vec::new(),
            program_env: Vec::new(),
            program_hidden: Vec::new(),
            program_file_size: 0,
            exclude: Vec::new(),
            http: Vec::new(),
            http_secrets: Vec::new(),
            http_secrets_in_body: false,
            revealable: Vec::new(),
            deterministic: false,
            nats: Vec::new(),
            memory_limit: DEFAULT_MEMORY,
            timeout: check.timeout,
            log: check.log.clone(),
        };
        let (mut store, stdout, stderr) = self.sandbox(&mut inv)?;
        let ctx = rule_bindings::sluice::action::rule_types::CheckContext {
            tenant: check.tenant,
            pipeline: check.pipeline,
            execution_id: check.execution_id,
            stage: check.stage,
            condition: check.condition,
            now_ms: check.now_ms,
            values: check.values,
        };
        let call = async {
            let rule = pre.instantiate_async(&mut store).await?;
            rule.call_check(&mut store, &ctx, &check.config).await
        };
        let result = tokio::time::timeout(check.timeout, call).await;
        drain(&check.log, &stdout, &stderr);
        match result {
            Err(_) => Err(RunError::Timeout(check.timeout)),
            Ok(Err(e)) => Err(bounded(Err(trap_error(e, store.data()))).unwrap_err()),
            Ok(Ok(verdict)) => Ok(verdict.map_err(cut_error)),
        }
    }

    /// A store with the invocation's sandbox: WASI with its mounts, captured stdio, limits.
    /// A store set up for one call: stdio captured, `inv`'s mounts preopened, its grants in
    /// the host state (moved out of `inv`, which keeps its context, configuration and log).
    fn sandbox(
        &self,
        inv: &mut Invocation,
    ) -> Result<(Store<host::HostState>, capture::Capture, capture::Capture), RunError> {
        if inv.memory_limit > MAX_GUEST_MEMORY {
            return Err(RunError::Instantiate(format!(
                "limits.memory may be at most {}",
                bytesize::ByteSize(MAX_GUEST_MEMORY)
            )));
        }
        let stdout = capture::Capture::new(STDIO_CAPTURE);
        let stderr = capture::Capture::new(STDIO_CAPTURE);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        if inv.deterministic {
            use rand::SeedableRng as _;
            wasi.wall_clock(determinism::FixedClock)
                .monotonic_clock(determinism::FixedClock)
                .secure_random(rand::rngs::StdRng::seed_from_u64(0))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
                .insecure_random_seed(0);
        }
        if !inv.exclude.is_empty() {
            let paths: Vec<String> = inv
                .exclude
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            wasi.env("SLUICE_EXCLUDE", paths.join("\n"));
        }
        let reused = inv.preopened.take().and_then(|p| p.serves(&inv.mounts));
        for m in inv.mounts.iter().filter(|_| reused.is_none()) {
            wasi.preopened_dir(&m.host, m.guest.to_string_lossy(), host::perms(m.access))
                .map_err(|e| {
                    RunError::Instantiate(format!(
                        "cannot mount {} at {}: {e}",
                        m.host.display(),
                        m.guest.display()
                    ))
                })?;
        }
        let mut ctx = wasi.build();
        if let Some(fs) = reused {
            *ctx.filesystem() = fs;
        }
        use std::mem::take;
        let mut state = host::HostState::new(
            ctx,
            inv.memory_limit,
            inv.log.clone(),
            take(&mut inv.workspace),
            take(&mut inv.mounts),
            take(&mut inv.programs),
            take(&mut inv.program_env),
            &inv.http,
            self.budget.per_call,
        );
        state.grant_nats(take(&mut inv.nats), self.nats.clone());
        state.bound_programs(take(&mut inv.program_hidden), inv.program_file_size);
        state.http_secrets(take(&mut inv.http_secrets), inv.http_secrets_in_body);
        state.revealable(take(&mut inv.revealable));
        Ok((self.store(state), stdout, stderr))
    }

    /// Whether the action component `digest` is loaded (it may have been dropped from memory
    /// after `MAX_LOADED` others were used since).
    pub fn is_loaded(&self, digest: &Digest) -> bool {
        self.loaded.lock().unwrap().contains_key(digest)
    }

    fn pre(&self, digest: &Digest) -> Result<bindings::ActionPre<host::HostState>, RunError> {
        self.loaded
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| RunError::Instantiate(format!("{digest} is not loaded")))
    }

    /// Call `describe` on a loaded component, with no grants.
    pub async fn describe(&self, digest: &Digest) -> Result<Description, RunError> {
        let pre = self.pre(digest)?;
        let _admitted = self.admission.admit(DEFAULT_MEMORY).await;
        let state = host::HostState::without_grants();
        let mut store = self.store(state);
        let call = async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let action = bindings::Action::new(&mut store, &instance)?;
            let d = action.call_describe(&mut store).await?;
            // `typed-action` components also say their keys' types; `action` ones do not.
            let types = match instance
                .get_typed_func::<(), (Vec<(String, wit::ConfigType)>,)>(&mut store, "config-types")
            {
                Ok(f) => f.call_async(&mut store, ()).await?.0,
                Err(_) => Vec::new(),
            };
            let secret_uses =
                match instance.get_typed_func::<(), (Vec<String>,)>(&mut store, "secret-uses") {
                    Ok(f) => f.call_async(&mut store, ()).await?.0,
                    Err(_) => Vec::new(),
                };
            wasmtime::Result::Ok((d, types, secret_uses))
        };
        let (d, types, secret_uses) = match tokio::time::timeout(DESCRIBE_TIMEOUT, call).await {
            Err(_) => return Err(RunError::Timeout(DESCRIBE_TIMEOUT)),
            Ok(Err(e)) => return Err(trap_error(e, store.data())),
            Ok(Ok(d)) => d,
        };
        if let Some(unknown) = secret_uses
            .iter()
            .find(|u| *u != "reveal" && *u != "http-body")
        {
            return Err(RunError::Instantiate(format!(
                "`secret-uses` names {unknown:?}; this engine knows `reveal` and `http-body`"
            )));
        }
        let type_of = |key: &str| {
            types.iter().find(|(k, _)| k == key).map(|(_, t)| match t {
                wit::ConfigType::Text => ConfigType::Text,
                wit::ConfigType::Integer => ConfigType::Integer,
                wit::ConfigType::Boolean => ConfigType::Boolean,
                wit::ConfigType::Duration => ConfigType::Duration,
                wit::ConfigType::Size => ConfigType::Size,
                wit::ConfigType::OneOf(words) => ConfigType::OneOf(words.clone()),
                wit::ConfigType::Url => ConfigType::Url,
            })
        };
        Ok(Description {
            name: d.name,
            version: d.version,
            category: match d.category {
                wit::Category::Source => "source",
                wit::Category::Build => "build",
                wit::Category::Test => "test",
                wit::Category::Deploy => "deploy",
                wit::Category::Approval => "approval",
                wit::Category::Invoke => "invoke",
                wit::Category::Other => "other",
            }
            .to_string(),
            summary: d.summary,
            config: d
                .config
                .into_iter()
                .map(|k| ConfigKey {
                    ty: type_of(&k.name),
                    name: k.name,
                    required: k.required,
                    description: k.description,
                    default_value: k.default_value,
                })
                .collect(),
            capabilities: d
                .capabilities
                .into_iter()
                .map(|c| match c {
                    wit::Capability::Process(p) => Capability::Process(p),
                    wit::Capability::Http => Capability::Http,
                    wit::Capability::Nats => Capability::Nats,
                    wit::Capability::ReadConfigPath(k) => Capability::ReadConfigPath(k),
                    wit::Capability::WriteConfigPath(k) => Capability::WriteConfigPath(k),
                })
                .chain(
                    secret_uses
                        .iter()
                        .any(|u| u == "reveal")
                        .then_some(Capability::Secrets),
                )
                .chain(
                    secret_uses
                        .iter()
                        .any(|u| u == "http-body")
                        .then_some(Capability::SecretsInBody),
                )
                .collect(),
            side_effects: d.side_effects,
        })
    }

    fn store(&self, state: host::HostState) -> Store<host::HostState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Run one action attempt in a fresh sandbox.
    pub async fn run(&self, digest: &Digest, mut inv: Invocation) -> Result<RunOutcome, RunError> {
        let pre = self.pre(digest)?;
        let _admitted = self.admission.admit(inv.memory_limit).await;
        let (mut store, stdout, stderr) = self.sandbox(&mut inv)?;
        let ctx = to_wit_context(std::mem::take(&mut inv.context));
        let call = async {
            let action = pre.instantiate_async(&mut store).await?;
            action.call_run(&mut store, &ctx, &inv.config).await
        };
        let result = tokio::time::timeout(inv.timeout, call).await;
        drain(&inv.log, &stdout, &stderr);
        bounded(match result {
            Err(_) => Err(RunError::Timeout(inv.timeout)),
            Ok(Err(e)) => Err(trap_error(e, store.data())),
            Ok(Ok(Err(e))) => Err(match e {
                wit::ActionError::Config(m) => RunError::Config(m),
                wit::ActionError::Failed(m) => RunError::Failed(m),
                wit::ActionError::Retryable(m) => RunError::Retryable(m),
            }),
            Ok(Ok(Ok(wit::Outcome::Succeeded(s)))) => Ok(RunOutcome::Succeeded {
                variables: s.variables,
                summary: s.summary,
            }),
            Ok(Ok(Ok(wit::Outcome::Pending(p)))) => Ok(RunOutcome::Pending {
                continuation: p.continuation,
                wake: match p.wake {
                    wit::WakeOn::Timer(ms) => format!("timer:{ms}"),
                    wit::WakeOn::Approval => "approval".into(),
                    wit::WakeOn::Event(s) => format!("event:{s}"),
                },
                summary: p.summary,
                percent_complete: p.percent_complete,
            }),
        })
    }

    /// Instantiate and call `describe` with a minimal store, nothing else: the benchmark's
    /// "bare wasmtime" baseline, sharing this runtime's engine and linker.
    pub async fn bare_call(&self, digest: &Digest) -> anyhow::Result<()> {
        let pre = self.pre(digest)?;
        let _admitted = self.admission.admit(DEFAULT_MEMORY).await;
        let state = host::HostState::without_grants();
        let mut store = self.store(state);
        let action = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let ctx = to_wit_context(ActionContext::default());
        let _ = action
            .call_run(&mut store, &ctx, &Vec::new())
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(())
    }
}

/// Guest stdout (info) and stderr (warn) into the action's log.
fn drain(log: &Arc<dyn LogSink>, stdout: &capture::Capture, stderr: &capture::Capture) {
    for (pipe, level) in [(stdout, Level::Info), (stderr, Level::Warn)] {
        let text = pipe.contents();
        for line in String::from_utf8_lossy(&text).lines() {
            log.log(level, line, &[]);
        }
    }
}

fn to_wit_context(c: ActionContext) -> wit::Context {
    wit::Context {
        tenant: c.tenant,
        pipeline: c.pipeline,
        execution_id: c.execution_id,
        stage: c.stage,
        action: c.action,
        attempt: c.attempt,
        idempotency_key: c.idempotency_key,
        continuation: c.continuation,
        wake_payload: c.wake_payload,
        inputs: c.inputs,
        outputs: c.outputs,
        pipeline_dir: c.pipeline_dir,
    }
}

/// Turn a wasmtime error into the user's words: memory limit, trap, or start failure.
fn trap_error(e: wasmtime::Error, state: &host::HostState) -> RunError {
    if let Some(limit) = state.limits.exceeded {
        return RunError::MemoryExceeded(limit);
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return RunError::Trap(format!("{trap}"));
    }
    let text = format!("{e:#}");
    if text.contains("resource table has no free keys") {
        return RunError::Trap(format!(
            "the plugin held more than {} open files, directories, streams or other resources at once",
            state.resources
        ));
    }
    if text.contains("wasm trap") || e.downcast_ref::<wasmtime::WasmBacktrace>().is_some() {
        RunError::Trap(text)
    } else {
        RunError::Instantiate(text)
    }
}

/// Advances the engine's epoch on a background thread; stops when dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables that would not fit the execution record fail the call with a message that
    /// says so (1.5 MiB of them exceeded the NATS payload and were redelivered for ever);
    /// error messages are cut.
    #[test]
    fn oversized_outcomes_fail_and_long_errors_are_cut() {
        let huge = Ok(RunOutcome::Succeeded {
            variables: vec![("Huge".into(), "v".repeat(1_500_000))],
            summary: None,
        });
        let err = bounded(huge).unwrap_err().to_string();
        assert!(err.contains("at most 256.0 KiB are kept"), "{err}");
        // Many small entries count their framing too.
        let many = Ok(RunOutcome::Succeeded {
            variables: (0..40_000)
                .map(|i| (format!("{i}"), String::new()))
                .collect(),
            summary: None,
        });
        assert!(matches!(bounded(many), Err(RunError::TooLarge(_))));
        let small = Ok(RunOutcome::Succeeded {
            variables: vec![("A".into(), "b".into())],
            summary: Some("fine".into()),
        });
        assert_eq!(bounded(small.clone()), small);
        let Err(RunError::Failed(m)) = bounded(Err(RunError::Failed("é".repeat(1 << 20)))) else {
            panic!()
        };
        assert!(
            m.len() < MAX_ERROR_BYTES + 100 && m.ends_with("more bytes cut)"),
            "{}",
            m.len()
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn guests_never_share_more_than_three_quarters_of_the_descriptors() {
        for limit in [64u64, 256, 1024, 4096, 65_536, 1 << 20] {
            let b = DescriptorBudget::for_limit(limit);
            let reserve = (limit / 4).max(64);
            assert!(
                (b.per_call * b.calls) as u64 <= limit.saturating_sub(reserve).max(64),
                "{limit}: {b:?}"
            );
            assert!(b.per_call >= MIN_GUEST_RESOURCES && b.per_call <= MAX_GUEST_RESOURCES);
            assert!(b.calls >= 1 && b.calls <= MAX_CONCURRENT_CALLS as usize);
        }
        // A server's limit leaves the full count of calls.
        assert_eq!(
            DescriptorBudget::for_limit(65_536),
            DescriptorBudget {
                per_call: 768,
                calls: 64
            }
        );
        // `ulimit -n 256`: three guests of 64 at once.
        assert_eq!(
            DescriptorBudget::for_limit(256),
            DescriptorBudget {
                per_call: 64,
                calls: 3
            }
        );
    }
}
