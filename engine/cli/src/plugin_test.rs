//! `sluice plugin test`: run one action of a plugin outside any pipeline and show everything
//! it did — the plugin author's inner loop. Uses the same job runner as pipelines.
use anyhow::Context as _;
use sluice_engine::artifacts::{Digest, tree};
use sluice_engine::bus::MemoryBus;
use sluice_engine::executor::{Engine, JobSpec, LogStore};
use sluice_engine::model::{Access, count, normalize, units, validate};
use sluice_engine::plugins::Capability;
use sluice_engine::scheduler::ActionResult;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `sluice plugin test`.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The plugin: a .wasm file, NAME@MAJOR or blake3:<hex>.
    pub plugin: String,
    /// Configuration (repeatable), as under `with:`.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::parse_var)]
    pub config: Vec<(String, String)>,
    /// An input artifact from a directory (repeatable).
    #[arg(long = "input", value_name = "NAME=DIR", value_parser = super::parse_var)]
    pub inputs: Vec<(String, String)>,
    /// An output artifact to collect (repeatable).
    #[arg(long = "output", value_name = "NAME")]
    pub outputs: Vec<String>,
    /// A grant: `process=PROGRAM`, `dir=PATH:ro|rw`, `http=ORIGIN` or `nats=SUBJECT` (repeatable).
    #[arg(long = "grant", value_name = "KIND=VALUE")]
    pub grants: Vec<String>,
    /// Wall-clock limit.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
    /// Memory limit.
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// Write output artifacts into DIR/<name>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Call it as a later attempt of a pending action: the continuation an earlier call
    /// returned (printed as `continuation …`).
    #[arg(long, value_name = "TEXT")]
    pub continuation: Option<String>,
    /// The payload of the event (or the approvals so far, as JSON) that wakes it.
    #[arg(long, value_name = "TEXT")]
    pub wake_payload: Option<String>,
}

/// Where `plugin test` keeps compiled components between runs: `SLUICE_CACHE`, else
/// `$XDG_CACHE_HOME/sluice/compiled`, else `~/.cache/sluice/compiled` (none without a home).
fn compile_cache() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("SLUICE_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("sluice").join("compiled")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("sluice").join("compiled")))
}

pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let scratch = tempfile::tempdir()?;
    let engine = Engine::embedded_compiling_into(
        scratch.path(),
        Arc::new(MemoryBus::default()),
        LogStore::new(scratch.path().join("logs")),
        compile_cache(),
    )?;
    crate::publish_to_nats(&engine);
    let counters = sluice_engine::runtime::compile_counters();
    let compiled_before = counters.misses.get();
    let loading = std::time::Instant::now();
    let plugin = engine.registry.resolve(&args.plugin, &cwd).await?;
    let how = if counters.misses.get() > compiled_before {
        "compiled"
    } else {
        "loaded from the compile cache"
    };
    let loaded = format!("{how} in {}", units::short_duration(loading.elapsed()));
    let d = &plugin.description;
    let config: BTreeMap<String, String> = args.config.into_iter().collect();
    let mut problems: Vec<String> =
        validate::unknown_config_keys(&args.plugin, d, config.keys().map(String::as_str))
            .into_iter()
            .map(|(_, m)| m)
            .collect();
    problems.extend(validate::missing_config_keys(&args.plugin, d, |k| {
        config.contains_key(k)
    }));
    let (mut programs, mut dirs, mut http, mut nats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in &args.grants {
        match g.split_once('=') {
            Some(("process", p)) => programs.push(p.to_string()),
            Some(("dir", spec)) => {
                let (path, access) = match spec.rsplit_once(':') {
                    Some((p, "rw")) => (p, Access::Rw),
                    Some((p, "ro")) => (p, Access::Ro),
                    _ => (spec, Access::Ro),
                };
                dirs.push((normalize(&cwd.join(path)), access));
            }
            Some(("http", origin)) => match sluice_engine::runtime::http::valid_grant(origin) {
                Ok(o) => http.push(o),
                Err(e) => problems.push(format!("--grant {g}: {e}")),
            },
            Some(("nats", subject)) => {
                match sluice_engine::runtime::messaging::valid_grant(subject) {
                    Ok(()) => nats.push(subject.to_string()),
                    Err(e) => problems.push(format!("--grant {g}: {e}")),
                }
            }
            _ => problems.push(format!(
                "--grant {g}: expected process=PROGRAM, dir=PATH:ro|rw, http=ORIGIN or nats=SUBJECT"
            )),
        }
    }
    for cap in &d.capabilities {
        match cap {
            Capability::Process(p) if !programs.contains(p) => {
                problems.push(format!("`{}` runs `{p}`: add --grant process={p}", d.name))
            }
            Capability::ReadConfigPath(key) => {
                if let Some(v) = config.get(key) {
                    dirs.push((normalize(&cwd.join(v)), Access::Ro));
                }
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Ok(ExitCode::from(2));
    }
    let mut inputs = BTreeMap::new();
    for (name, dir) in &args.inputs {
        let (digest, stats) = tree::put_tree(&*engine.blobs, &cwd.join(dir))
            .with_context(|| format!("input {name}={dir}"))?;
        println!(
            "input   {name} = {digest} ({} from {dir})",
            count(stats.files, "file")
        );
        inputs.insert(name.clone(), digest);
    }
    let execution_id = format!("plugin-test-{}", ulid::Ulid::new());
    let spec = JobSpec {
        secrets: Default::default(),
        cacheable: false,
        reveal: false,
        secrets_in_body: false,
        invoke: None,
        continuation: args.continuation.clone(),
        wake_payload: args.wake_payload.clone(),
        tenant: sluice_engine::executor::DEFAULT_TENANT.into(),
        pipeline: "plugin-test".into(),
        idempotency_key: format!("default/{execution_id}/Test/{}/1", d.name),
        execution_id: execution_id.clone(),
        stage: "Test".into(),
        action: d.name.clone(),
        attempt: if args.continuation.is_some() || args.wake_payload.is_some() {
            2
        } else {
            1
        },
        plugin: plugin.digest.parse().map_err(anyhow::Error::msg)?,
        config,
        inputs,
        outputs: args.outputs.clone(),
        dirs,
        programs,
        http,
        nats,
        memory: units::parse_size(&args.memory).map_err(anyhow::Error::msg)?,
        output_limits: Default::default(),
        timeout: units::parse_duration(&args.timeout).map_err(anyhow::Error::msg)?,
        pipeline_dir: cwd.clone(),
    };
    let started = std::time::Instant::now();
    let (result, leftover) =
        sluice_engine::executor::job::execute(&engine.job_context(), &spec).await;
    leftover.release(&engine.job_context());
    engine.workspaces.flush();
    println!(
        "plugin  {} {} ({}), {loaded}",
        d.name, d.version, plugin.digest
    );
    println!("took    {}", units::short_duration(started.elapsed()));
    for line in engine
        .logs
        .read(&execution_id, "Test", &d.name)
        .unwrap_or_default()
    {
        println!(
            "log     {:>5} {}",
            format!("{:?}", line.level).to_uppercase(),
            line.message
        );
    }
    match result {
        ActionResult::Succeeded {
            variables,
            artifacts,
            summary,
            ..
        } => {
            println!("outcome Succeeded");
            if let Some(s) = summary {
                println!("summary {s}");
            }
            for (k, v) in &variables {
                println!("var     {k} = {v}");
            }
            for (name, digest) in &artifacts {
                let digest: Digest = digest.parse().map_err(anyhow::Error::msg)?;
                println!("output  {name} = {digest}");
                for (path, _) in tree::list(&*engine.blobs, &digest)? {
                    println!("          {}", path.display());
                }
                if let Some(out) = &args.out {
                    tree::materialize(&*engine.blobs, &digest, &out.join(name))?;
                    println!("          written to {}", out.join(name).display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ActionResult::Pending {
            continuation,
            wake,
            summary,
            percent,
            ..
        } => {
            println!("outcome Pending (the engine would run it again when {wake:?} fires)");
            println!("continuation {continuation}");
            println!(
                "next    sluice plugin test {} --continuation '{}' --wake-payload PAYLOAD …",
                args.plugin,
                continuation.replace('\'', "'\\''")
            );
            if let Some(s) = summary {
                println!("summary {s}");
            }
            if let Some(p) = percent {
                println!("percent {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ActionResult::Failed { error, .. } => {
            println!("outcome Failed");
            for line in error.lines() {
                println!("error   {line}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
