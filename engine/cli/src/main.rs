//! The `sluice` command line: commands and their output. The engine is the `sluice-engine`
//! library; benchmarks (`sluice bench`) live here, so embedders of the library never compile them.

mod bench;
mod cache;
mod follow;
mod inspect;
mod market;
mod plugin_test;
mod progress;
mod scaffold;
mod secrets;
mod service;
mod tenancy;

/// The process's allocator (why: `sluice_engine::alloc`). A library leaves the choice to the
/// program that links it; this program chooses mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use sluice_api::{Request, verbs};
use sluice_engine::executor::Engine;
use sluice_engine::local;
use sluice_engine::model::{Diagnostics, count};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Sluice: CI/CD pipelines of sandboxed WebAssembly actions.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Run granted host programs (`capabilities: { process: [...] }`) unconfined: as this
    /// user, with all its rights, where the kernel cannot confine them (no Landlock, no user
    /// namespaces). For trusted pipelines only.
    #[arg(long, env = "SLUICE_UNCONFINED_PROGRAMS", global = true)]
    unconfined_programs: bool,
    /// Memory all running guests may hold at once, each counted at its `limits.memory` cap
    /// (e.g. 2GiB); a guest that does not fit waits. [default: half of this machine's or
    /// cgroup's memory]
    #[arg(long, env = "SLUICE_GUEST_MEMORY", global = true, value_name = "SIZE", value_parser = sluice_engine::model::units::parse_size)]
    guest_memory: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a pipeline file locally and show its progress.
    #[command(
        after_help = "Examples:\n  sluice run pipeline.yaml\n  sluice run pipeline.yaml --var title=\"Hello\" -v\n  sluice run release.yaml --approve Approve/Gate --as ana --json > record.json"
    )]
    Run {
        /// The pipeline file (YAML).
        file: PathBuf,
        /// Override a pipeline variable (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Data directory [default: .sluice next to the pipeline file].
        #[arg(long, env = "SLUICE_DATA")]
        data: Option<PathBuf>,
        /// Print the execution record as JSON on stdout at the end (progress goes to stderr).
        #[arg(long)]
        json: bool,
        /// Stream every action's log lines while it runs.
        #[arg(short, long)]
        verbose: bool,
        /// Approve this STAGE/ACTION in advance when it asks (repeatable). Without it, approvals
        /// are asked for on a terminal, and fail the action when there is none.
        #[arg(long, value_name = "STAGE/ACTION")]
        approve: Vec<String>,
        /// Run every action, even pure ones whose plugin, configuration and inputs are
        /// unchanged since a cached success.
        #[arg(long)]
        no_cache: bool,
        /// Keep this run's artifacts encrypted at rest, under addresses keyed by the data
        /// folder's key (as the service always does): see README, "Artifacts at rest".
        #[arg(long)]
        encrypt: bool,
        /// The master key that unseals the data folder's secrets [default:
        /// SLUICE_MASTER_KEY_FILE, else DATA/master.key].
        #[arg(long)]
        master_key_file: Option<PathBuf>,
        /// Approve as this identity [default: SLUICE_USER, else the login name].
        #[arg(long = "as", value_name = "NAME")]
        as_: Option<String>,
        #[command(flatten)]
        trigger: TriggerArgs,
    },
    /// Check a pipeline file and report every problem as FILE:LINE:COL: message.
    #[command(after_help = "Example:\n  sluice validate pipeline.yaml --var target=/srv/site")]
    Validate {
        /// The pipeline file (YAML).
        file: PathBuf,
        /// Variables, as for `run`.
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// The same list as `executions` (kept for scripts written against it).
    #[command(hide = true)]
    History {
        /// Only this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Show one execution: stages, actions, attempts, timings, configuration, artifacts,
    /// variables, trigger — from the local history, else from the service.
    Show {
        /// Execution id.
        execution_id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Print the logs of an execution, or of one STAGE/ACTION of it: from the data directory,
    /// or with --nats from the logs every engine of the service shares.
    #[command(
        after_help = "Examples:\n  sluice logs 01M94… \n  sluice logs 01M94… Build/Compile\n  sluice logs -f 01M94…            # until it ends"
    )]
    Logs {
        /// Execution id.
        execution_id: String,
        /// Only this action, as STAGE/ACTION.
        action: Option<String>,
        /// Keep printing lines as they are written, until the execution ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Secrets pipelines hand to their actions, kept encrypted: put (the value from stdin),
    /// ls (never values), rm, rotate-key.
    Secret {
        #[command(subcommand)]
        command: secrets::SecretCmd,
        /// The master key of the data folder's secrets [default: SLUICE_MASTER_KEY_FILE, else
        /// DATA/master.key].
        #[arg(long, env = "SLUICE_MASTER_KEY_FILE", global = true)]
        master_key_file: Option<PathBuf>,
        /// Your tenant's secrets on the service (the embedded one in --data, or on NATS with
        /// --nats) instead of the data folder's.
        #[arg(long, global = true)]
        service: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// The action cache: what pure actions' runs left to reuse (the data folder's, or with
    /// --service / --nats your tenant's on the service).
    Cache {
        #[command(subcommand)]
        command: cache::CacheCmd,
        /// Your tenant's cache on the service (the embedded one in --data, or on NATS with
        /// --nats) instead of the data folder's.
        #[arg(long, global = true)]
        service: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Publisher keys for signing plugins.
    Key {
        #[command(subcommand)]
        command: market::KeyCmd,
    },
    /// Which publishers' plugin signatures you trust, and for which repositories.
    Trust {
        #[command(subcommand)]
        command: market::TrustCmd,
    },
    /// Inspect, test, publish and install plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCmd,
    },
    /// Inspect the content-addressed artifact store.
    Artifact {
        #[command(subcommand)]
        command: ArtifactCmd,
        /// Data directory [default: ./.sluice].
        #[arg(long, env = "SLUICE_DATA", global = true)]
        data: Option<PathBuf>,
    },
    /// Measure the engine against bare wasmtime, fork/exec and b3sum (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Run the service: start pipelines from trigger events (embedded, or on NATS with --nats).
    #[command(
        after_help = "Examples:\n  sluice serve                                  # embedded, data in ./.sluice\n  sluice serve --http 127.0.0.1:8080            # with the HTTP API and the console\n  sluice serve --nats nats://127.0.0.1:4222     # one of many engines on NATS"
    )]
    Serve(service::ServeArgs),
    /// Tokens of a service with authentication on (`sluice serve --auth`): admins for their
    /// tenant, operators for any.
    Token {
        #[command(subcommand)]
        command: tenancy::TokenCmd,
    },
    /// Tenants of a hosted service, their policies and quotas (operators).
    Tenant {
        #[command(subcommand)]
        command: tenancy::TenantCmd,
    },
    /// The audit trail of a hosted service: changes made and calls refused, newest first.
    Audit {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every tenant's (operators).
        #[arg(long)]
        all_tenants: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Write a starter pipeline (pipeline.yaml) in the current directory.
    #[command(
        after_help = "Example:\n  mkdir demo && cd demo && sluice init && sluice run pipeline.yaml"
    )]
    Init {
        /// Replace an existing pipeline.yaml.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// List trigger events the service refused (newest first), or replay one after a fix:
    /// `sluice deadletter [PIPELINE] [--limit N]`, `sluice deadletter replay ID`.
    Deadletter(service::DeadletterArgs),
    /// Register and inspect pipelines in the service.
    Pipeline {
        #[command(subcommand)]
        command: service::PipelineCmd,
        #[command(flatten)]
        target: service::Target,
    },
    /// Register and list functions for `invoke@1` in the service.
    Function {
        #[command(subcommand)]
        command: service::FunctionCmd,
        #[command(flatten)]
        target: service::Target,
    },
    /// Start a registered pipeline in the service; prints the execution id.
    #[command(
        after_help = "Examples:\n  sluice start release\n  sluice start release --var version=1.2 --watch\n  sluice start release --trigger-commit 3f2a… --as ana"
    )]
    Start {
        /// Pipeline name.
        pipeline: String,
        /// Override a pipeline variable (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Event id: starting twice with the same id starts one execution.
        #[arg(long)]
        event_id: Option<String>,
        /// Follow the execution until it ends (exit 0 only if it succeeds).
        #[arg(long)]
        watch: bool,
        /// Who starts it (recorded as the trigger's `started_by`; default: `SLUICE_USER`, the
        /// login name).
        #[arg(long = "as", value_name = "NAME")]
        as_: Option<String>,
        #[command(flatten)]
        trigger: TriggerArgs,
        #[command(flatten)]
        target: service::Target,
    },
    /// Stop an execution in the service: running actions finish (or, with --abandon, are cancelled).
    Stop {
        /// Execution id.
        execution_id: String,
        /// Cancel running actions (marked Abandoned) instead of waiting for them.
        #[arg(long)]
        abandon: bool,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: service::Target,
    },
    /// Approve an action waiting for approval (service).
    Approve(DecideArgs),
    /// Approvals waiting for a decision (service), oldest first: who may decide, custom data,
    /// link, age and expiry.
    ///
    /// Example: `sluice approvals --mine` lists the ones you may approve.
    Approvals {
        /// Only this pipeline's.
        pipeline: Option<String>,
        /// Only those you may decide (you are among the approvers and have not decided yet).
        #[arg(long)]
        mine: bool,
        /// Who you are, for --mine [default: SLUICE_USER, else the login name].
        #[arg(long = "as", value_name = "NAME")]
        as_: Option<String>,
        /// Print JSON (one approval event each).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Reject an action waiting for approval (service): the action fails with your summary.
    Reject(DecideArgs),
    /// Wake an action waiting for an external event, handing it a payload (service).
    Wake {
        /// Execution id.
        execution_id: String,
        /// STAGE/ACTION.
        action: String,
        /// Payload handed to the action.
        #[arg(long)]
        payload: Option<String>,
        #[command(flatten)]
        target: service::Target,
    },
    /// Re-run a failed or stopped stage of an execution in the service, then carry on.
    Retry {
        /// Execution id.
        execution_id: String,
        /// Stage name.
        stage: String,
        /// Re-run every action of the stage, not only the failed ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Roll a stage back: a new `Rollback` execution re-runs STAGE with the artifacts and
    /// variables of an earlier execution that succeeded in it (service).
    Rollback {
        /// Pipeline name.
        pipeline: String,
        /// Stage to roll back (not the first).
        stage: String,
        /// The execution to roll back to.
        #[arg(long = "to", value_name = "EXECUTION_ID")]
        to: String,
        /// Follow the rollback until it ends (exit 0 only if it succeeds).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Disable or enable the transition into a stage: executions wait before it while disabled (service).
    Transition {
        #[command(subcommand)]
        command: service::TransitionCmd,
        #[command(flatten)]
        target: service::Target,
    },
    /// Show an execution in the service.
    Status {
        /// Execution id.
        execution_id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// Follow an execution in the service until it ends.
    Watch {
        /// Execution id.
        execution_id: String,
        /// Interleave the actions' log lines with the state changes.
        #[arg(long)]
        logs: bool,
        #[command(flatten)]
        target: service::Target,
    },
    /// List executions, newest first: local runs (`sluice run`) and the service's, read from
    /// its store when it is not running (or, with --nats, the service's on NATS).
    #[command(
        after_help = "Examples:\n  sluice executions\n  sluice executions release --status Failed --limit 5\n  sluice executions --json | jq '.[0].execution_id'"
    )]
    Executions {
        /// Only this pipeline.
        pipeline: Option<String>,
        /// Only this status (InProgress, Succeeded, Failed, ...).
        #[arg(long, value_parser = parse_status)]
        status: Option<sluice_engine::scheduler::Status>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: service::Target,
    },
}

/// Arguments of `approve` and `reject`.
#[derive(clap::Args, Debug)]
struct DecideArgs {
    /// Execution id.
    execution_id: String,
    /// STAGE/ACTION of the approval.
    action: String,
    /// Why, for the record (and the action's summary).
    #[arg(long)]
    summary: Option<String>,
    /// Decide as this identity [default: SLUICE_USER, else the login name].
    #[arg(long = "as", value_name = "NAME")]
    as_: Option<String>,
    /// The approval's token, from its notification (checked when given).
    #[arg(long = "approval-token", value_name = "T")]
    approval_token: Option<String>,
    #[command(flatten)]
    target: service::Target,
}

fn parse_status(s: &str) -> Result<sluice_engine::scheduler::Status, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown status {s:?} (InProgress, Succeeded, Failed, Stopped, ...)"))
}

#[derive(Subcommand, Debug)]
enum PluginCmd {
    /// Show what a plugin says about itself (a .wasm file, NAME@MAJOR, or blake3:<hex>).
    Describe {
        /// Plugin reference.
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Compile it through this data folder's compile cache, so a run there finds it
        /// compiled [default: ./.sluice when it exists, else nothing is kept].
        #[arg(long, env = "SLUICE_DATA")]
        data: Option<PathBuf>,
    },
    /// List the built-in plugins.
    List,
    /// Run one action of a plugin outside any pipeline and print its outcome, variables, logs
    /// and outputs.
    Test(plugin_test::TestArgs),
    /// Create a new plugin crate that builds with `cargo build --release`.
    New(scaffold::NewArgs),
    /// Publish a component to an OCI registry or a file:// folder, signed with --key.
    Publish(market::PublishArgs),
    /// Find plugins in a registry's catalog.
    Search(market::SearchArgs),
    /// A published plugin's description, versions, capabilities and signature.
    Info(market::InfoArgs),
    /// Fetch, verify and accept a plugin, and pin it in sluice.lock.
    Install(market::InstallArgs),
    /// Withdraw a published version (installs refuse it; locks keep working and warn).
    Yank(market::YankArgs),
    /// The marketplace plugins sluice.lock pins (or, with --service, your tenant installed).
    Installed(market::InstalledArgs),
}

#[derive(Subcommand, Debug)]
enum ArtifactCmd {
    /// List the files of an artifact.
    Ls {
        /// Artifact digest (blake3:<hex>).
        digest: String,
    },
    /// Write an artifact's files into a directory, verifying each.
    Get {
        /// Artifact digest.
        digest: String,
        /// Destination directory (must not exist or be empty).
        dest: PathBuf,
    },
    /// Re-hash every blob of an artifact (or, without one, every blob in the store); with
    /// --repair, remove the corrupted ones so the runs that made them store them again.
    Verify {
        /// Artifact digest; every stored blob if left out.
        digest: Option<String>,
        /// Remove blobs that no longer hash to their name.
        #[arg(long)]
        repair: bool,
    },
}

pub(crate) fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Let the process keep as many files open as its hard limit allows (up to 65,536): pooled
/// workspaces keep two descriptors each, and the common soft limit of 1,024 is a default for
/// interactive shells, not for a server (nats-server and most databases raise it too).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.unwrap_or(u64::MAX).min(65_536);
    if limit.current.is_some_and(|c| c < wanted) {
        limit.current = Some(wanted);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise the open file limit: {e}");
        }
    }
}

/// Exit codes: 0 succeeded, 1 failed, 2 usage or validation error.
/// The engine's own log: `SLUICE_LOG` (or `RUST_LOG`) filters it, as in `RUST_LOG`; by
/// default warnings, and for `sluice serve` what the engine does (triggers accepted and
/// refused, executions started and ended, jobs redelivered, NATS connection changes) at info.
/// Colours only on a terminal; `--log-format json` for log collectors.
fn init_logging(command: &Cmd) {
    use std::io::IsTerminal;
    let (default, json) = match command {
        Cmd::Serve(args) => (
            "warn,sluice_engine=info,sluice_nats=info,sluice_cli=info",
            args.log_format == service::LogFormat::Json,
        ),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Printing into a closed pipe (`sluice show ID | head`) ends the process quietly, as other
/// command-line tools do, instead of panicking.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice_engine::runtime::confine::allow_unconfined(cli.unconfined_programs);
    sluice_engine::runtime::set_guest_memory_budget(cli.guest_memory.unwrap_or(0));
    if !matches!(cli.command, Cmd::Serve(_)) {
        restore_sigpipe();
    }
    init_logging(&cli.command);
    raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn default_data(data: Option<PathBuf>) -> PathBuf {
    data.unwrap_or_else(|| PathBuf::from(".sluice"))
}

fn validation_failed(d: &Diagnostics) -> ExitCode {
    eprintln!("{d}");
    eprintln!("{} found", count(d.items.len() as u64, "problem"));
    ExitCode::from(2)
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run {
            file,
            vars,
            data,
            json,
            verbose,
            approve,
            as_,
            trigger,
            master_key_file,
            no_cache,
            encrypt,
        } => {
            let (pipeline, problems) = match local::load_pipeline(&file) {
                Ok((p, problems)) => (Arc::new(p), problems),
                Err(d) => return Ok(validation_failed(&d)),
            };
            let data = data.unwrap_or_else(|| pipeline.dir.join(".sluice"));
            let overrides: BTreeMap<String, String> = vars.into_iter().collect();
            let (live_tx, live_rx) = tokio::sync::mpsc::unbounded_channel();
            let mut run = local::LocalRun::open(&data, verbose.then_some(live_tx))?;
            run.publish_with(Arc::new(sluice_nats::publisher::NatsPublisher::default()));
            let plugins = match run.check(&pipeline, problems, &overrides).await {
                Ok(p) => p,
                Err(d) => return Ok(validation_failed(&d)),
            };
            if encrypt && let Some(made) = run.encrypt_artifacts(master_key_file.as_deref()).await?
            {
                eprintln!(
                    "made a master key at {} (mode 0600): it unseals this folder's artifacts and secrets; back it up, or pass --master-key-file",
                    made.display()
                );
            }
            if let Err(d) = run.use_secrets(&pipeline, master_key_file.as_deref()).await {
                return Ok(validation_failed(&d));
            }
            if !no_cache {
                run.use_cache()?;
            }
            let style = progress::Style {
                color: std::io::stderr().is_terminal() && !json,
                to_stderr: json,
            };
            let printer = progress::spawn(run.events(), verbose.then_some(live_rx), style);
            let approvals = local::LocalApprovals {
                pre_approved: approve,
                interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
                identity: local::approver(as_.as_deref()),
            };
            let trigger = trigger.source().map(|s| local::TriggerInfo {
                event_id: format!("run-{}", ulid::Ulid::new()),
                kind: "manual".into(),
                started_by: Some(approvals.identity.clone()),
                repository: s.repository,
                git_ref: s.git_ref,
                commit: s.commit,
                data: Default::default(),
            });
            let (exec, history) = run
                .run(pipeline, &plugins, &overrides, approvals, trigger)
                .await?;
            let _ = printer.await;
            progress::summary(&exec, &history, style);
            if json {
                println!("{}", serde_json::to_string_pretty(&exec)?);
            }
            Ok(if local::succeeded(exec.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Validate { file, vars } => {
            match local::validate(&file, &vars.into_iter().collect()).await? {
                Ok(pipeline) => {
                    println!(
                        "{}: ok ({}, {})",
                        file.display(),
                        count(pipeline.stages.len() as u64, "stage"),
                        count(pipeline.actions().count() as u64, "action")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => Ok(validation_failed(&d)),
            }
        }
        Cmd::History {
            pipeline,
            limit,
            json,
            target,
        } => service::executions(pipeline, None, limit, json, target).await,
        Cmd::Show {
            execution_id,
            json,
            target,
        } => service::show(execution_id, json, target).await,
        Cmd::Logs {
            execution_id,
            action,
            follow,
            target,
        } => service::logs(execution_id, action, follow, target).await,
        Cmd::Plugin { command } => match command {
            PluginCmd::Describe { plugin, json, data } => {
                inspect::describe_plugin(&plugin, json, data.as_deref()).await
            }
            PluginCmd::Test(args) => plugin_test::run(args).await,
            PluginCmd::New(args) => scaffold::run(args),
            PluginCmd::Publish(args) => market::publish(args).await,
            PluginCmd::Search(args) => market::search(args).await,
            PluginCmd::Info(args) => market::info(args).await,
            PluginCmd::Install(args) => market::install(args).await,
            PluginCmd::Yank(args) => market::yank(args).await,
            PluginCmd::Installed(args) => market::installed(args).await,
            PluginCmd::List => {
                for name in sluice_engine::plugins::builtin::names() {
                    println!("{name}");
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::Key { command } => market::key(command),
        Cmd::Cache {
            command,
            service,
            target,
        } => {
            if service || target.nats.is_some() {
                cache::on_service(command, &target).await
            } else {
                cache::local(command, &default_data(target.data.clone())).await
            }
        }
        Cmd::Secret {
            command,
            master_key_file,
            service,
            target,
        } => {
            if service || target.nats.is_some() {
                secrets::on_service(command, &target).await
            } else {
                secrets::run(
                    command,
                    &default_data(target.data.clone()),
                    master_key_file.as_deref(),
                )
                .await
            }
        }
        Cmd::Trust { command } => market::trust(command),
        Cmd::Artifact { command, data } => {
            let data = default_data(data);
            // Artifacts of runs with --encrypt are read through the data folder's key.
            let sealed = if data.is_dir() {
                local::sealed_artifacts(&data, None).await?
            } else {
                None
            };
            match command {
                ArtifactCmd::Ls { digest } => inspect::artifact_ls(&data, sealed, &digest),
                ArtifactCmd::Get { digest, dest } => {
                    inspect::artifact_get(&data, sealed, &digest, &dest)
                }
                ArtifactCmd::Verify { digest, repair } => {
                    inspect::artifact_verify(&data, sealed, digest.as_deref(), repair)
                }
            }
        }
        Cmd::Bench(args) => crate::bench::run(args).await,
        Cmd::Serve(args) => service::serve(args).await,
        Cmd::Init { force } => scaffold::init(force),
        Cmd::Token { command } => tenancy::token(command).await,
        Cmd::Tenant { command } => tenancy::tenant(command).await,
        Cmd::Audit {
            limit,
            all_tenants,
            json,
            target,
        } => tenancy::audit(limit, all_tenants, json, target).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deadletter(args) => service::deadletter(args).await,
        Cmd::Pipeline { command, target } => service::pipeline(command, target).await,
        Cmd::Function { command, target } => service::function(command, target).await,
        Cmd::Start {
            pipeline,
            vars,
            event_id,
            watch,
            as_,
            trigger,
            target,
        } => {
            service::start(
                pipeline,
                vars,
                event_id,
                watch,
                trigger.source(),
                as_,
                target,
            )
            .await
        }
        Cmd::Stop {
            execution_id,
            abandon,
            reason,
            target,
        } => {
            service::control(
                Request::from(verbs::Stop {
                    execution_id,
                    abandon,
                    reason,
                }),
                target,
            )
            .await
        }
        Cmd::Approve(a) => decide(a, true).await,
        Cmd::Approvals {
            pipeline,
            mine,
            as_,
            json,
            target,
        } => {
            let approver = mine.then(|| local::approver(as_.as_deref()));
            service::approvals(pipeline, approver, json, target).await
        }
        Cmd::Reject(a) => decide(a, false).await,
        Cmd::Wake {
            execution_id,
            action,
            payload,
            target,
        } => {
            service::control(
                Request::from(verbs::Wake {
                    execution_id,
                    action,
                    payload,
                }),
                target,
            )
            .await
        }
        Cmd::Retry {
            execution_id,
            stage,
            all,
            target,
        } => {
            service::control(
                Request::from(verbs::Retry {
                    execution_id,
                    stage,
                    all,
                }),
                target,
            )
            .await
        }
        Cmd::Rollback {
            pipeline,
            stage,
            to,
            watch,
            target,
        } => service::rollback(pipeline, stage, to, watch, target).await,
        Cmd::Transition { command, target } => service::transition(command, target).await,
        Cmd::Status {
            execution_id,
            json,
            target,
        } => service::status(execution_id, json, target).await,
        Cmd::Watch {
            execution_id,
            logs,
            target,
        } => service::watch(execution_id, logs, target).await,
        Cmd::Executions {
            pipeline,
            status,
            limit,
            json,
            target,
        } => service::executions(pipeline, status, limit, json, target).await,
    }
}

async fn decide(a: DecideArgs, approved: bool) -> anyhow::Result<ExitCode> {
    // With a token, the service knows who decides: only `--as` is sent, for it to check.
    let with_token = a
        .target
        .token
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty());
    let by = match (with_token, &a.as_) {
        (true, None) => String::new(),
        _ => sluice_engine::local::approver(a.as_.as_deref()),
    };
    let request = Request::from(verbs::Approve {
        execution_id: a.execution_id,
        action: a.action,
        approved,
        by,
        summary: a.summary,
        token: a.approval_token,
    });
    service::control(request, a.target).await
}

/// Let the engine's guests publish to NATS (`capabilities.nats`): the runtime checks the grants,
/// the NATS edges carry the message.
pub(crate) fn publish_to_nats(engine: &Engine) {
    engine
        .registry
        .runtime()
        .nats
        .set_publisher(Arc::new(sluice_nats::publisher::NatsPublisher::default()));
}

/// What a start says about the change it builds (`#{trigger.commit}`, `#{trigger.ref}`, …), as a
/// push event would.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct TriggerArgs {
    /// The commit (`#{trigger.commit}`).
    #[arg(long)]
    trigger_commit: Option<String>,
    /// The ref, `refs/heads/BRANCH` or `refs/tags/TAG` (`#{trigger.ref}`, `#{trigger.branch}`,
    /// `#{trigger.tag}`).
    #[arg(long)]
    trigger_ref: Option<String>,
    /// The repository (`#{trigger.repository}`).
    #[arg(long)]
    trigger_repository: Option<String>,
}

impl TriggerArgs {
    pub(crate) fn source(self) -> Option<verbs::StartSource> {
        let s = verbs::StartSource {
            commit: self.trigger_commit,
            git_ref: self.trigger_ref,
            repository: self.trigger_repository,
        };
        (s != verbs::StartSource::default()).then_some(s)
    }
}
