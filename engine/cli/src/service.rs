//! Commands of the service: `serve`, and the clients `pipeline`, `start`, `status`, `watch`,
//! `executions`.
use super::progress::{Style, format_event};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use sluice_api::Client;
use sluice_api::verbs::{self, DeadLetterSummary, ExecutionSummary};
use sluice_api::{ApiError, Code, Request};
use sluice_engine::model::units::short_duration;
use sluice_engine::scheduler::{Execution, Status};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the service is.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// NATS server of the service (else the embedded `sluice serve` in --data).
    #[arg(long, env = "SLUICE_NATS_URL", global = true)]
    pub nats: Option<String>,
    /// Tenant.
    #[arg(long, env = "SLUICE_TENANT", default_value = "default", global = true)]
    pub tenant: String,
    /// Data directory of the embedded service [default: ./.sluice].
    #[arg(long, env = "SLUICE_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// Your token, for a service with authentication on (`sluice serve --auth`).
    #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        connect(
            self.nats.as_deref(),
            &super::default_data(self.data.clone()),
            &self.tenant,
            self.token.clone().filter(|t| !t.trim().is_empty()),
        )
        .await
    }
}

/// A client of the service on NATS at `nats`, or else of the embedded one in `data` (through
/// its socket), sending `token` with every request.
pub async fn connect(
    nats: Option<&str>,
    data: &std::path::Path,
    tenant: &str,
    token: Option<String>,
) -> anyhow::Result<Client> {
    Ok(match nats {
        Some(url) => Client::new(
            sluice_nats::transport::NatsTransport::connect(url, tenant)
                .await?
                .with_token(token),
        ),
        None => Client::new(
            sluice_api::socket::SocketTransport::connect(data, tenant)?.with_token(token),
        ),
    })
}

/// How `sluice serve` writes its log.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `sluice serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Run on NATS JetStream at this URL (several engines share the work); without it, the
    /// embedded service (one process, data in --data).
    #[arg(long, env = "SLUICE_NATS_URL")]
    pub nats: Option<String>,
    /// Data directory: the embedded store, or the NATS engine's local cache
    /// (compiled components, workspaces, logs) [default: ./.sluice].
    #[arg(long, env = "SLUICE_DATA")]
    pub data: Option<PathBuf>,
    /// Jobs run at once by this engine.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Serve HTTP on this address, e.g. 127.0.0.1:8080 (port 0: any free port): the API under
    /// /api/v1 (OpenAPI at /api/v1/openapi.json), webhooks (`POST /hooks/<tenant>/<pipeline>`),
    /// /healthz and /readyz.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// The engine's log on stderr: `text`, or `json` (one object per line, for collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Authenticate every request with a token, take the tenant and roles from it, bound what
    /// each tenant's pipelines may grant and use, and keep an audit trail. On the first start,
    /// an operator token is written to `operator.token` in the data directory (mode 0600).
    /// Needed for --http on an address other hosts can reach.
    #[arg(long)]
    pub auth: bool,
    /// How long ended executions are kept (their records, and the claims of their trigger
    /// events); executions still running or waiting stay whatever their age. `forever` keeps
    /// every one.
    #[arg(long, default_value = "365d", value_parser = parse_retention)]
    pub keep_executions: Retention,
    /// How long an artifact that no execution, pipeline or action-cache entry names any more
    /// is kept after it was last stored or used, before the hourly sweep removes it (and takes
    /// it off its tenant's stored bytes). At least 1h.
    #[arg(long, default_value = "1d", value_parser = parse_grace)]
    pub artifact_grace: Duration,
    /// How many of one tenant's `start`s an engine handles at once; the rest wait their turn.
    /// Fewer keep one tenant's flood of starts from slowing other tenants' down; more let a lone
    /// tenant start more per second. Default: 2 on NATS, 16 embedded (BENCHMARKS.md, fairness).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub starts_per_tenant: Option<u16>,
    /// How long audit records are kept (with --auth).
    #[arg(long, default_value = "90d", value_parser = parse_keep)]
    pub audit_keep: Duration,
    /// The URL people reach this service's console at (e.g. https://ci.example.com): approval
    /// notifications then carry the link to their execution's page (`approval.console_url`).
    #[arg(long)]
    pub public_url: Option<String>,
    /// NATS: copies a JetStream cluster keeps of every stream, KV bucket and object store this
    /// engine creates (3 on a 3-node cluster: losing one node loses nothing). Applies when they
    /// are created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// NATS: redelivery deadline of a job whose engine stops reporting progress.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
}

/// `sluice pipeline …`.
#[derive(Subcommand, Debug)]
pub enum PipelineCmd {
    /// Register (a new version of) a pipeline file with the service.
    Put {
        /// The pipeline file.
        file: PathBuf,
    },
    /// List registered pipelines.
    Ls,
    /// Print a registered pipeline's YAML.
    Get {
        /// Pipeline name.
        name: String,
        /// Version [default: current].
        #[arg(long)]
        version: Option<u64>,
    },
    /// Unregister a pipeline (running executions finish).
    Rm {
        /// Pipeline name.
        name: String,
    },
    /// Show which executions are inside or waiting before each stage, and disabled transitions.
    State {
        /// Pipeline name.
        name: String,
        /// Rebuild the lanes from the executions' records first (frees places that executions
        /// which ended or moved on still hold).
        #[arg(long)]
        repair: bool,
    },
}

/// `sluice deadletter`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeadletterArgs {
    #[command(subcommand)]
    command: Option<DeadletterCmd>,
    /// Only events addressed to this pipeline.
    pipeline: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// `sluice deadletter …`.
#[derive(Subcommand, Debug)]
pub enum DeadletterCmd {
    /// Send a refused event again (after `sluice pipeline put` fixed the pipeline); prints the
    /// execution id it started.
    Replay {
        /// The dead letter's id, as `sluice deadletter` lists it.
        id: String,
    },
}

/// Run `sluice deadletter …`.
pub async fn deadletter(args: DeadletterArgs) -> anyhow::Result<ExitCode> {
    let client = args.target.client().await?;
    if let Some(DeadletterCmd::Replay { id }) = args.command {
        return match client
            .call(&Request::from(verbs::DeadLetterReplay { id }))
            .await
        {
            Ok(v) => {
                println!("{}", v["execution_id"].as_str().unwrap_or(""));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refused(e),
        };
    }
    let reply = match client
        .call(&Request::from(verbs::DeadLetters {
            pipeline: args.pipeline,
            limit: Some(args.limit),
        }))
        .await
    {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<DeadLetterSummary> = serde_json::from_value(reply)?;
    for r in rows {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            r.id,
            r.at,
            r.pipeline,
            r.event_id.as_deref().unwrap_or("-"),
            r.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice transition …`.
#[derive(Subcommand, Debug)]
pub enum TransitionCmd {
    /// Hold executions before STAGE until the transition is enabled again.
    Disable {
        /// Pipeline name.
        pipeline: String,
        /// The stage the transition leads into (not the first).
        stage: String,
        /// Why, for whoever looks (required).
        #[arg(long)]
        reason: String,
    },
    /// Let executions into STAGE again.
    Enable {
        /// Pipeline name.
        pipeline: String,
        /// The stage the transition leads into.
        stage: String,
    },
}

/// `sluice function …`.
#[derive(Subcommand, Debug)]
pub enum FunctionCmd {
    /// Register (or replace) a function for `invoke@1` from a component file.
    Put {
        /// Function name.
        name: String,
        /// The component (`function` world of wit/action.wit).
        file: PathBuf,
    },
    /// List registered functions.
    Ls,
    /// Unregister a function.
    Rm {
        /// Function name.
        name: String,
    },
}

/// Run `sluice function …`.
pub async fn function(cmd: FunctionCmd, target: Target) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let request = match &cmd {
        FunctionCmd::Put { name, file } => {
            let bytes = sluice_engine::plugins::read_component(file)?;
            if client.shares_host() {
                // The engine reads no file of the client's: send the component itself.
                Request::from(verbs::FunctionPut {
                    name: name.clone(),
                    bytes: Some(sluice_api::limits::encode_upload(&bytes)),
                    digest: None,
                })
            } else {
                // Components can be larger than a message: upload them (in parts), then
                // register by digest.
                let digest = match client.upload(&file.display().to_string(), bytes).await {
                    Ok(d) => d,
                    Err(e) => return refused(e),
                };
                Request::from(verbs::FunctionPut {
                    name: name.clone(),
                    bytes: None,
                    digest: Some(digest),
                })
            }
        }
        FunctionCmd::Ls => Request::from(verbs::FunctionLs {}),
        FunctionCmd::Rm { name } => Request::from(verbs::FunctionRm { name: name.clone() }),
    };
    let reply = match client.call(&request).await {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    match cmd {
        FunctionCmd::Put { .. } => println!(
            "registered function {} {} ({} bytes)",
            reply["name"].as_str().unwrap_or(""),
            reply["digest"].as_str().unwrap_or(""),
            reply["size"]
        ),
        FunctionCmd::Ls => {
            for f in reply.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    f["name"].as_str().unwrap_or(""),
                    f["digest"].as_str().unwrap_or(""),
                    f["size"]
                );
            }
        }
        FunctionCmd::Rm { name } => println!("removed function {name}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice serve`'s exit code when its store can no longer be written (EX_TEMPFAIL: try
/// again later).
pub const STORE_FAILED: u8 = 75;

fn parse_keep(text: &str) -> Result<Duration, String> {
    sluice_engine::model::units::parse_duration(text)
}

/// `--artifact-grace`: a duration of at least the collector's minimum (refused below it
/// rather than raised without a word).
fn parse_grace(text: &str) -> Result<Duration, String> {
    let grace = parse_keep(text)?;
    let least = sluice_engine::service::collector::MIN_GRACE;
    match grace < least {
        true => Err(format!(
            "at least {}: a use of a shared artifact is noted only every few minutes, and engines' clocks differ",
            humantime::format_duration(least)
        )),
        false => Ok(grace),
    }
}

/// A retention: a duration, or for ever.
#[derive(Clone, Copy, Debug)]
pub struct Retention(Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, String> {
    match text {
        "forever" => Ok(Retention(None)),
        _ => parse_keep(text).map(|d| Retention(Some(d))),
    }
}

/// Set `service`'s retention and start turns; turn authentication on when asked, and on a
/// first start write the operator's token into the data directory (readable by its owner only).
async fn auth(
    service: &sluice_engine::service::Service,
    args: &ServeArgs,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    service.keep_executions(args.keep_executions.0);
    service.artifact_grace(args.artifact_grace);
    if let Some(n) = args.starts_per_tenant {
        service.starts_per_tenant(n.into());
    }
    if !args.auth {
        return Ok(());
    }
    service.enable_auth(args.audit_keep);
    let path = data.join("operator.token");
    match service.bootstrap_operator().await? {
        Some(token) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("write {}", path.display()))?;
            writeln!(file, "{token}")?;
            eprintln!(
                "sluice serve: authentication on; the operator's token is in {} (mode 0600): `SLUICE_TOKEN=$(cat {0}) sluice tenant create NAME`",
                path.display()
            );
        }
        None => eprintln!("sluice serve: authentication on"),
    }
    Ok(())
}

/// Run `sluice serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let data = super::default_data(args.data.clone());
    eprintln!(
        "sluice serve: guests may hold {} of memory at once (--guest-memory); more waits for it",
        sluice_engine::model::units::size(sluice_engine::runtime::guest_memory_budget())
    );
    match args.nats.clone() {
        None => {
            let (service, bus, store) = sluice_engine::service::wiring::embedded(&data).await?;
            auth(&service, &args, &data).await?;
            super::publish_to_nats(service.engine());
            if let Some(url) = &args.public_url {
                service.set_public_url(url);
            }
            eprintln!(
                "sluice serve: embedded engine, data in {}; control socket {}",
                data.display(),
                sluice_engine::service::socket::socket_path(&data).display()
            );
            let events = sluice_engine::service::http::feed::EventSource::Memory(bus.clone());
            let socket = sluice_engine::service::socket::serve(service.clone(), bus, &data);
            let hooks = http(service.clone(), events, args.http, args.auth).await?;
            let failed = tokio::select! {
                r = hooks => r.map(|_| None)?,
                r = socket => r.map(|_| None)?,
                _ = service.run(args.workers) => None,
                _ = tokio::signal::ctrl_c() => None,
                why = store.failed() => Some(why),
            };
            let _ = std::fs::remove_file(sluice_engine::service::socket::socket_path(&data));
            if let Some(why) = failed {
                // Nothing more can be recorded: stop accepting work, for a supervisor (or the
                // operator, once there is space) to start it again; unfinished executions
                // resume then.
                eprintln!(
                    "sluice serve: stopping: {} can no longer be written ({why}); free space and start it again: unfinished executions resume",
                    data.join("service.redb").display()
                );
                return Ok(ExitCode::from(STORE_FAILED));
            }
        }
        Some(url) => {
            sluice_nats::set_replicas(args.replicas as usize);
            let (service, client) = sluice_nats::service::serve(
                &url,
                &data,
                sluice_nats::Timing {
                    ack_wait: args.ack_wait,
                },
            )
            .await?;
            auth(&service, &args, &data).await?;
            if let Some(url) = &args.public_url {
                service.set_public_url(url);
            }
            eprintln!(
                "sluice serve: engine on NATS {url}, local cache in {}",
                data.display()
            );
            let api = sluice_nats::service::serve_nats_api(service.clone(), client.clone());
            let events = sluice_engine::service::http::feed::EventSource::Stream(
                sluice_nats::bus::all_events(&client).await?,
            );
            let hooks = http(service.clone(), events, args.http, args.auth).await?;
            tokio::select! {
                r = hooks => r?,
                r = api => r?,
                _ = service.clone().run(args.workers) => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            // Another engine sweeps from its next hour on, not after the turn's lapse.
            service.give_up_sweep_turn().await;
            sluice_nats::flush(&client).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bind the HTTP port (when asked for); the future serves it.
async fn http(
    service: std::sync::Arc<sluice_engine::service::Service>,
    events: sluice_engine::service::http::feed::EventSource,
    addr: Option<std::net::SocketAddr>,
    authenticated: bool,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>>> {
    use sluice_engine::service::http;
    let listener = match addr {
        Some(addr) if !http::loopback(&addr) && !authenticated => anyhow::bail!(
            "--http {addr} can be reached from other hosts, and without --auth the API has no authentication: listen on 127.0.0.1 (or [::1]), or pass --auth"
        ),
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    if let Some(l) = &listener {
        let addr = l.local_addr()?;
        eprintln!(
            "sluice serve: HTTP on http://{addr}: API http://{addr}/api/v1 (OpenAPI /api/v1/openapi.json), webhooks http://{addr}/hooks/<tenant>/<pipeline>{}",
            match (http::loopback(&addr), authenticated) {
                (_, true) => " (every request needs a token)",
                (true, false) => " (loopback only: without --auth the API has no authentication)",
                (false, false) => " (reachable from other hosts)",
            }
        );
    }
    Ok(async move {
        match listener {
            Some(l) => http::serve_on(service, events, l).await,
            None => std::future::pending().await,
        }
    })
}

/// Report a refusal: the service's answer exits 2; a service that cannot be reached is an
/// error (exit 1).
pub(crate) fn refused(e: ApiError) -> anyhow::Result<ExitCode> {
    match e.code {
        Code::Unavailable => Err(anyhow::anyhow!(e.message)),
        _ => {
            if !e.problems.is_empty() {
                eprintln!("{}", e.problem_lines());
            }
            eprintln!("error: {}", e.message);
            Ok(ExitCode::from(2))
        }
    }
}

/// Run `sluice pipeline …`.
pub async fn pipeline(cmd: PipelineCmd, target: Target) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let request = match &cmd {
        PipelineCmd::Put { file } => {
            let yaml = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let dir = std::fs::canonicalize(file)?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"));
            let name = file.display().to_string();
            match client.shares_host() {
                // The embedded service runs as this user on this host: it resolves relative
                // paths against the file's directory, as `sluice run` does.
                true => Request::from(verbs::PipelinePut {
                    file: name,
                    dir: Some(dir),
                    yaml,
                    plugins: BTreeMap::new(),
                    bundle: None,
                }),
                // Engines on NATS read no file of ours: upload the plugin files it names.
                false => Request::from(verbs::PipelinePut {
                    plugins: upload_plugins(&client, &name, dir, &yaml).await?,
                    bundle: None,
                    file: name,
                    dir: None,
                    yaml,
                }),
            }
        }
        PipelineCmd::Ls => Request::from(verbs::PipelineLs {}),
        PipelineCmd::Get { name, version } => Request::from(verbs::PipelineGet {
            name: name.clone(),
            version: *version,
        }),
        PipelineCmd::Rm { name } => Request::from(verbs::PipelineRm { name: name.clone() }),
        PipelineCmd::State {
            name,
            repair: false,
        } => Request::from(verbs::PipelineState { name: name.clone() }),
        PipelineCmd::State { name, repair: true } => {
            Request::from(verbs::PipelineRepair { name: name.clone() })
        }
    };
    let reply = match client.call(&request).await {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    match cmd {
        PipelineCmd::Put { .. } => println!(
            "registered {} version {}",
            reply["name"].as_str().unwrap_or(""),
            reply["version"]
        ),
        PipelineCmd::Ls => {
            for p in reply.as_array().into_iter().flatten() {
                println!(
                    "{}\tv{}\t{}",
                    p["name"].as_str().unwrap_or(""),
                    p["version"],
                    p["file"].as_str().unwrap_or("")
                );
            }
        }
        PipelineCmd::Get { .. } => print!("{}", reply["yaml"].as_str().unwrap_or("")),
        PipelineCmd::Rm { name } => println!("removed {name}"),
        PipelineCmd::State { name, repair } => {
            if repair {
                println!("lanes of {name} rebuilt from its executions");
            }
            print_lanes(&name, serde_json::from_value(reply)?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Upload the plugin and rule files a pipeline names to the artifact store on NATS; returns
/// each path as written → its digest. (A file that does not parse uploads nothing: the
/// engine reports its problems.)
async fn upload_plugins(
    client: &Client,
    file: &str,
    dir: PathBuf,
    yaml: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let (Some(pipeline), _) = sluice_engine::model::parse::parse(file, dir, yaml) else {
        return Ok(BTreeMap::new());
    };
    let files = sluice_engine::service::pipelines::files(&pipeline);
    let mut out = BTreeMap::new();
    if files.is_empty() {
        return Ok(out);
    }
    for written in files {
        let path = pipeline.host_path(&written);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot upload {}", path.display()))?;
        let digest = client
            .upload(&path.display().to_string(), bytes)
            .await
            // The transport's refusal names the file already.
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.insert(written, digest);
    }
    Ok(out)
}

fn print_lanes(pipeline: &str, lanes: sluice_engine::scheduler::lanes::Lanes) {
    println!("{pipeline} ({})", lanes.mode);
    if lanes.stages.is_empty() {
        println!("  no execution inside or waiting; every transition enabled");
    }
    for (stage, lane) in &lanes.stages {
        let disabled = lane
            .disabled
            .as_ref()
            .map(|d| format!(" transition disabled by {} at {}: {}", d.by, d.at, d.reason))
            .unwrap_or_default();
        println!("  {stage}:{disabled}");
        if !lane.inside.is_empty() {
            println!("    inside: {}", lane.inside.join(", "));
        }
        if !lane.waiting.is_empty() {
            println!("    waiting: {}", lane.waiting.join(", "));
        }
    }
}

/// Run `sluice transition`.
pub async fn transition(cmd: TransitionCmd, target: Target) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let by = Some(sluice_engine::identity::current());
    let (pipeline, request) = match cmd {
        TransitionCmd::Disable {
            pipeline,
            stage,
            reason,
        } => (
            pipeline.clone(),
            Request::from(verbs::Transition {
                pipeline,
                stage,
                enable: false,
                reason: Some(reason),
                by,
            }),
        ),
        TransitionCmd::Enable { pipeline, stage } => (
            pipeline.clone(),
            Request::from(verbs::Transition {
                pipeline,
                stage,
                enable: true,
                reason: None,
                by,
            }),
        ),
    };
    match client.call(&request).await {
        Ok(v) => {
            print_lanes(&pipeline, serde_json::from_value(v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

/// Run `sluice rollback`.
pub async fn rollback(
    pipeline: String,
    stage: String,
    to: String,
    watch: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let reply = match client
        .call(&Request::from(verbs::Rollback {
            pipeline,
            stage,
            to,
            by: Some(sluice_engine::identity::current()),
        }))
        .await
    {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let id = reply["execution_id"].as_str().unwrap_or("").to_string();
    println!("{id}");
    if watch {
        return follow(&client, &id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `sluice start`.
pub async fn start(
    pipeline: String,
    vars: Vec<(String, String)>,
    event_id: Option<String>,
    watch: bool,
    source: Option<verbs::StartSource>,
    as_: Option<String>,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let variables: BTreeMap<String, String> = vars.into_iter().collect();
    let reply = match client
        .call(&Request::from(verbs::Start {
            pipeline,
            variables,
            event_id,
            // With a token, the service knows who starts it: only `--as` is sent, to be checked.
            started_by: match (
                target
                    .token
                    .as_deref()
                    .is_some_and(|t| !t.trim().is_empty()),
                &as_,
            ) {
                (true, None) => None,
                _ => Some(sluice_engine::identity::resolve(as_.as_deref())),
            },
            source,
        }))
        .await
    {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let id = reply["execution_id"].as_str().unwrap_or("").to_string();
    println!("{id}");
    if reply["queued"].as_bool() == Some(true) {
        eprintln!(
            "queued: the tenant runs as many executions as its quota allows; this one starts when one of them ends"
        );
        if watch {
            // Until it starts, it has no record to follow; one refused meanwhile (its place
            // lost, the tenant's policy tightened) has none ever.
            while let Err(e) = client
                .call(&Request::from(verbs::GetExecution {
                    execution_id: id.clone(),
                }))
                .await
            {
                if !e.to_string().contains("has not started") {
                    return refused(e);
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    if watch {
        return follow(&client, &id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `sluice approvals`.
pub async fn approvals(
    pipeline: Option<String>,
    approver: Option<String>,
    json: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let waiting = match client
        .send(verbs::Approvals {
            pipeline,
            approver: approver.clone(),
        })
        .await
    {
        Ok(w) => w,
        Err(e) => return refused(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&waiting)?);
        return Ok(ExitCode::SUCCESS);
    }
    if waiting.is_empty() {
        match approver {
            Some(who) => println!("no approval waits for {who}"),
            None => println!("no approval waits"),
        }
    }
    let now = sluice_engine::clock::now();
    for e in &waiting {
        let Some(n) = &e.approval else { continue };
        println!(
            "{} {}/{}  {}  waiting {}{}",
            e.execution_id,
            e.stage.as_deref().unwrap_or(""),
            e.action.as_deref().unwrap_or(""),
            e.pipeline,
            short_duration(now.since(e.at)),
            n.expires_at
                .map(|t| format!(", expires {t}"))
                .unwrap_or_default()
        );
        let who = if n.approvers.is_empty() {
            "anyone".to_string()
        } else {
            n.approvers.join(", ")
        };
        println!("    approvers: {who}");
        if let Some(d) = &n.custom_data {
            println!("    {d}");
        }
        if let Some(l) = &n.external_link {
            println!("    {l}");
        }
        println!("    {}", n.how);
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `sluice stop` / `sluice retry`.
pub async fn control(request: Request, target: Target) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    match client.call(&request).await {
        Ok(v) => {
            println!(
                "{} {}",
                v["execution_id"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

/// Run `sluice watch`.
pub async fn watch(execution_id: String, logs: bool, target: Target) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    if !logs {
        return follow(&client, &execution_id).await;
    }
    // Log lines interleaved with the state changes, on the same stream.
    let style = Style {
        color: std::io::stderr().is_terminal(),
        to_stderr: true,
    };
    let lines_client = target.client().await?;
    let mut reader = super::follow::LogReader::new(
        super::follow::Source::Service(&lines_client),
        &execution_id,
        None,
    );
    let (state, lines) = tokio::join!(
        follow(&client, &execution_id),
        reader.print(true, |line| style.out(&format!("  | {line}")))
    );
    if let Err(e) = lines {
        tracing::warn!("following the logs of {execution_id}: {e:#}");
    }
    state
}

async fn follow(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let style = Style {
        color: std::io::stderr().is_terminal(),
        to_stderr: true,
    };
    let exec = match client
        .watch(id, |e| style.out(&format_event(e, style)))
        .await
    {
        Ok(e) => e,
        Err(e) => return refused(e),
    };
    style.out(&format!("execution {} {}", exec.execution_id, exec.status));
    Ok(if exec.status == Status::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Run `sluice status`.
pub async fn status(execution_id: String, json: bool, target: Target) -> anyhow::Result<ExitCode> {
    let reply = match execution(&target, execution_id).await? {
        Ok(e) => serde_json::to_value(e)?,
        Err(e) => return refused(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    let exec: Execution = serde_json::from_value(reply)?;
    println!(
        "{} {} v{} {}",
        exec.execution_id, exec.pipeline, exec.pipeline_version, exec.status
    );
    if let Some(t) = &exec.trigger {
        println!(
            "  trigger: {} {}{}",
            t.kind,
            t.event_id,
            t.started_by
                .as_ref()
                .map(|s| format!(" by {s}"))
                .unwrap_or_default()
        );
    }
    if let Some(r) = &exec.rollback {
        println!(
            "  rollback of stage {} to {}{}",
            r.stage,
            r.target,
            r.after
                .as_ref()
                .map(|a| format!(" (after {a} failed)"))
                .unwrap_or_default()
        );
    }
    if let Some(by) = &exec.superseded_by {
        println!("  superseded by {by}");
    }
    if let Some(reason) = &exec.stop_reason {
        println!("  stopped: {reason}");
    }
    for (si, stage) in exec.stages.iter().enumerate() {
        if exec.entering == Some(si) {
            println!("  (waiting to enter {})", stage.name);
        }
        let condition = stage
            .condition
            .as_ref()
            .map(|c| format!(" [{c}]"))
            .unwrap_or_default();
        println!("  {} {}{condition}", stage.name, stage.status);
        for a in &stage.actions {
            let took = match (a.started_at, a.finished_at) {
                (Some(s), Some(f)) => format!(" in {}", short_duration(f.since(s))),
                _ => String::new(),
            };
            if let Some(waiting) = super::inspect::waiting_line(a) {
                println!("    {} {}: {waiting}", a.name, a.status);
                continue;
            }
            let attempt = if a.attempt > 1 {
                format!(" (attempt {})", a.attempt)
            } else {
                String::new()
            };
            let detail = a
                .error
                .as_ref()
                .or(a.summary.as_ref())
                .map(|d| format!(": {}", d.lines().next().unwrap_or("")))
                .unwrap_or_default();
            let held = super::inspect::holder_line(a)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            println!("    {} {}{attempt}{took}{held}{detail}", a.name, a.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `sluice show`: a local run's record, else the service's.
pub async fn show(execution_id: String, json: bool, target: Target) -> anyhow::Result<ExitCode> {
    if target.nats.is_none()
        && let Some(e) = super::inspect::local_execution(
            &super::default_data(target.data.clone()),
            &execution_id,
        )?
    {
        return super::inspect::print_execution(&e, json);
    }
    match execution(&target, execution_id).await? {
        Ok(e) => super::inspect::print_execution(&e, json),
        Err(e) => refused(e),
    }
}

/// The execution `id` from the service, or, when the embedded service in --data is not
/// running, from its store.
async fn execution(target: &Target, id: String) -> anyhow::Result<Result<Execution, ApiError>> {
    let data = super::default_data(target.data.clone());
    let socket = sluice_engine::service::socket::socket_path(&data);
    if target.nats.is_some() || socket.exists() {
        match target
            .client()
            .await?
            .call(&Request::from(verbs::GetExecution {
                execution_id: id.clone(),
            }))
            .await
        {
            Ok(v) => return Ok(Ok(serde_json::from_value(v)?)),
            // A socket left behind by a service that is gone: read its store.
            Err(e) if e.code == Code::Unavailable && target.nats.is_none() => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    if data.is_dir()
        && let Some(e) = sluice_engine::local::History::open(&data)?
            .service_execution(&id)
            .await?
    {
        return Ok(Ok(e));
    }
    if target.nats.is_none() && !socket.exists() && !data.join("service.redb").exists() {
        // Nothing here at all: say how to start a service.
        target.client().await?;
    }
    Ok(Err(ApiError::not_found(format!("no execution `{id}`"))))
}

/// Run `sluice logs`: from the data directory, or with --nats from the shared copies
/// (`sluice-logs`), whichever engine ran each action.
pub async fn logs(
    execution_id: String,
    only: Option<String>,
    follow: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    use super::follow::{LogReader, Source};
    let only = match &only {
        Some(sa) => Some(
            sa.split_once('/')
                .map(|(s, a)| (s.to_string(), a.to_string()))
                .context("name the action as STAGE/ACTION")?,
        ),
        None => None,
    };
    let data = super::default_data(target.data.clone());
    // The service, when it runs and knows the execution: it has the state and, on NATS, every
    // engine's lines (each attempt through the `logs` verb: the engine that answers reads its
    // own copy, or the shared archive for an attempt another engine ran). Otherwise the data
    // directory: a local run's, or a stopped embedded service's.
    let client = if target.nats.is_some() {
        Some(target.client().await?)
    } else if sluice_engine::service::socket::socket_path(&data).exists()
        && super::inspect::local_execution(&data, &execution_id)
            .ok()
            .flatten()
            .is_none()
    {
        let client = target.client().await?;
        let known = client
            .call(&Request::from(verbs::GetExecution {
                execution_id: execution_id.clone(),
            }))
            .await
            .is_ok();
        known.then_some(client)
    } else {
        None
    };
    let source = match &client {
        Some(c) => Source::Service(c),
        None => {
            if !data.is_dir() {
                anyhow::bail!(
                    "no logs for execution {execution_id}: no data directory at {}",
                    data.display()
                );
            }
            Source::Local(data.clone())
        }
    };
    let mut reader = LogReader::new(source, &execution_id, only.clone());
    let printed = match reader.print(follow, |line| println!("{line}")).await {
        Ok(n) => n,
        Err(e) => match e.downcast::<ApiError>() {
            Ok(api) => return refused(api),
            Err(e) => return Err(e),
        },
    };
    if printed == 0 {
        anyhow::bail!(
            "no logs for {} of execution {execution_id}{}",
            only.map(|(s, a)| format!("{s}/{a}"))
                .unwrap_or_else(|| "any action".into()),
            target
                .nats
                .as_ref()
                .map(|u| format!(" on {u}"))
                .unwrap_or_else(|| format!(" in {}", data.display()))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of `sluice executions`: a summary and where it was recorded.
struct Listed {
    summary: ExecutionSummary,
    /// `run` (a local `sluice run`), `service`, or `service (stopped)` (read from the store
    /// of an embedded service that is not running).
    source: &'static str,
}

/// Run `sluice executions` (and `sluice history`): local runs and the service's executions of
/// the data directory, newest first — the service's read from its store when it is not
/// running; with --nats, the service's on NATS.
pub async fn executions(
    pipeline: Option<String>,
    status: Option<Status>,
    limit: usize,
    json: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let mut rows: Vec<Listed> = Vec::new();
    let data = super::default_data(target.data.clone());
    let history = match data.is_dir() {
        true => Some(sluice_engine::local::History::open(&data)?),
        false => None,
    };
    if let Some(history) = &history
        && target.nats.is_none()
        && data.join("state.redb").is_file()
    {
        let keep = |e: &Execution| status.is_none_or(|s| s == e.status);
        let runs = match history.executions(pipeline.as_deref(), 10_000) {
            Ok(runs) => runs,
            Err(e) => {
                // A `sluice run` in progress holds the file until it ends.
                eprintln!("local runs not listed: {e:#}");
                Vec::new()
            }
        };
        rows.extend(runs.iter().filter(|e| keep(e)).take(limit).map(|e| Listed {
            summary: ExecutionSummary::from(e),
            source: "run",
        }));
    }
    let served =
        target.nats.is_some() || sluice_engine::service::socket::socket_path(&data).exists();
    let mut stopped = !served;
    if served {
        let request = Request::from(verbs::Executions {
            pipeline: pipeline.clone(),
            status,
            limit: Some(limit),
            before: None,
        });
        match target.client().await?.call(&request).await {
            Ok(reply) => rows.extend(
                serde_json::from_value::<Vec<ExecutionSummary>>(reply)?
                    .into_iter()
                    .map(|summary| Listed {
                        summary,
                        source: "service",
                    }),
            ),
            // A socket left behind by a service that is gone.
            Err(e) if e.code == Code::Unavailable && target.nats.is_none() => stopped = true,
            Err(e) => return refused(e),
        }
    }
    if stopped
        && let Some(history) = &history
        && let Some(list) = history
            .service_executions(pipeline.as_deref(), status, limit)
            .await?
    {
        rows.extend(list.iter().map(|e| Listed {
            summary: ExecutionSummary::from(e),
            source: "service (stopped)",
        }));
    }
    // ULIDs sort by start time.
    rows.sort_by(|a, b| b.summary.execution_id.cmp(&a.summary.execution_id));
    rows.truncate(limit);
    if json {
        let mut list = Vec::new();
        for r in &rows {
            let mut v = serde_json::to_value(&r.summary)?;
            v["source"] = r.source.into();
            list.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no executions yet");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![
        [
            "ID", "PIPELINE", "VERSION", "STATUS", "TOOK", "STARTED", "SOURCE", "TRIGGER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &rows {
        let s = &r.summary;
        let took = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => short_duration(b.since(a)),
            _ => "-".into(),
        };
        let mut trigger = s.trigger.clone().unwrap_or_else(|| "-".into());
        if !s.waiting.is_empty() {
            trigger.push_str(&format!("; waiting: {}", s.waiting.join(", ")));
        }
        table.push(vec![
            s.execution_id.clone(),
            s.pipeline.clone(),
            if s.pipeline_version > 0 {
                format!("v{}", s.pipeline_version)
            } else {
                "file".into()
            },
            s.status.to_string(),
            took,
            s.started_at
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            r.source.to_string(),
            trigger,
        ]);
    }
    print!("{}", aligned(&table));
    Ok(ExitCode::SUCCESS)
}

/// Rows as columns padded to their widest cell (the last column is not padded).
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
