//! `sluice bench`: the engine measured against baselines taken in the same run.
//!
//! (a) bare wasmtime: instantiate a pre-linked no-op component and call it;
//! (a2) the same component run as one job of the engine (sandbox set-up, workspace), no scheduler;
//! (b) the engine running a pipeline of N no-op actions (validated, persisted, evented), per action;
//! (c) fork/exec of `/bin/true`;
//! (d) artifact put and verified get of a large file, against `b3sum` hashing the same file.
mod approvals;
mod artifacts;
mod fairness;

use sluice_engine::bus::MemoryBus;
use sluice_engine::executor::{Engine, LogStore, load_pipeline};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// No-op actions in the pipeline benchmark (at most 999; in stages of up to 50).
    #[arg(long, default_value_t = 500)]
    pub actions: usize,
    /// Calls of the bare instantiate+call and one-job baselines, over all rounds (a quarter as many forks).
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Size of the artifact benchmark's file in MiB (0 skips it).
    #[arg(long, default_value_t = 1024)]
    pub artifact_mib: u64,
    /// Also measure this component: cold compile vs cached load, and its instantiate+call cost.
    #[arg(long, value_name = "FILE.wasm")]
    pub component: Option<std::path::PathBuf>,
    /// Also measure the action cache with this component (the test probe, which has a pure
    /// `hash` mode: `cargo build --release --target wasm32-wasip2 --manifest-path
    /// tests/guests/Cargo.toml`): ten chained actions writing 10 MiB each, run twice.
    #[arg(long, value_name = "PROBE.wasm")]
    pub cache: Option<std::path::PathBuf>,
    /// Where to put temporary data [default: the system temp dir].
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Benchmark the service on the NATS server at this URL instead (run `nats-server -js`).
    #[arg(long)]
    pub nats: Option<String>,
    /// With --nats: measure executions/s with 1, 2, … N `sluice serve` processes instead (each
    /// its own process and connection; on a cluster, give every node's URL, comma-separated).
    #[arg(long, value_name = "N", requires = "nats")]
    pub engine_processes: Option<usize>,
    /// With --engine-processes: the replicas of the streams and buckets the first process
    /// creates (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// With --engine-processes: run one action that waits this long (`sleep` in a granted shell)
    /// instead of the no-op pipeline, so that workers, not cores, bound an engine.
    #[arg(long, value_name = "MS", requires = "engine_processes")]
    pub wait_ms: Option<u64>,
    /// Samples of the NATS latency measures.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Executions per throughput burst on NATS.
    #[arg(long, default_value_t = 200)]
    pub burst: usize,
    /// Measure this many executions waiting at an approval instead (embedded service).
    #[arg(long)]
    pub approvals: Option<usize>,
    /// Measure fairness between tenants instead: tenant B's latency while tenant A has this
    /// many executions queued (embedded service; with --nats, one engine on that NATS).
    #[arg(long, value_name = "N")]
    pub fairness: Option<usize>,
    /// How tenant A floods in --fairness: through the API's `start` (`starts`), or trigger
    /// events published straight to NATS (`published`, with --nats), as a webhook relay would.
    #[arg(long, value_enum, default_value = "starts", requires = "fairness")]
    pub flood: fairness::Flood,
    /// Only run one measure for this many seconds (`a`, `a2`, `b`, `b'`; `hit` with --cache), to
    /// profile it with `perf`.
    #[arg(long, hide = true, num_args = 2, value_names = ["MEASURE", "SECONDS"])]
    pub profile: Vec<String>,
}

fn per(d: Duration, n: usize) -> Duration {
    d / n.max(1) as u32
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Run the benchmarks and print a Markdown report.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    if let Some(n) = args.approvals {
        approvals::run(n).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(n) = args.fairness {
        fairness::run(n, args.nats.as_deref(), args.flood).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let (Some(url), Some(n)) = (&args.nats, args.engine_processes) {
        anyhow::ensure!((1..=16).contains(&n), "--engine-processes: 1 to 16");
        let exe = std::env::current_exe()?;
        sluice_nats::bench::processes::run(url, &exe, n, args.replicas, args.burst, args.wait_ms)
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = &args.nats {
        sluice_nats::bench::run(url, args.samples, args.burst).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let engine = Engine::embedded(
        &tmp.path().join("data"),
        Arc::new(MemoryBus::default()),
        LogStore::new(tmp.path().join("data/logs")),
    )?;
    let noop = engine.registry.resolve("noop@1", tmp.path()).await?;
    let digest: sluice_engine::artifacts::Digest =
        noop.digest.parse().map_err(anyhow::Error::msg)?;
    let runtime = engine.registry.runtime().clone();

    // Every measure is taken in ROUNDS rounds, interleaved, and its best round kept: on a
    // shared machine a round is only ever slowed down by others, never sped up.
    let cx = engine.job_context();
    let job = noop_job(digest, tmp.path());
    let n = args.actions.clamp(1, 999);
    // (b) a pipeline of N no-op actions one after another, in stages of at most 50
    // (CodePipeline's limit of actions per stage); (b') the same in parallel groups; (b'') all
    // N one after another in a single stage, where each step's scans of the stage grow.
    let seq = pipeline_file(tmp.path(), "seq", n, STAGE_LIMIT, true)?;
    let par = pipeline_file(tmp.path(), "par", n, STAGE_LIMIT, false)?;
    let one = pipeline_file(tmp.path(), "one", n, n, true)?;
    // Warm up: caches, pooled slots and workspaces.
    for _ in 0..100 {
        runtime.bare_call(&digest).await?;
        sandboxed_call(&cx, &job).await?;
    }
    let _ = run_pipeline(&engine, &seq).await?;
    if let ([measure, seconds], Some(probe)) = (args.profile.as_slice(), &args.cache)
        && measure == "hit"
    {
        action_cache(tmp.path(), probe, Duration::ZERO, Some(seconds.parse()?)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let [measure, seconds] = args.profile.as_slice() {
        let (start, mut calls) = (Instant::now(), 0u32);
        let until = start + Duration::from_secs_f64(seconds.parse()?);
        while Instant::now() < until {
            calls += 1;
            match measure.as_str() {
                "a" => runtime.bare_call(&digest).await?,
                "a2" => sandboxed_call(&cx, &job).await?,
                "b" => drop(run_pipeline(&engine, &seq).await?),
                "b'" => drop(run_pipeline(&engine, &par).await?),
                other => anyhow::bail!("no measure `{other}` (a, a2, b, b'; hit with --cache)"),
            }
        }
        eprintln!(
            "{calls} calls, {} each",
            us(per(start.elapsed(), calls as usize))
        );
        return Ok(ExitCode::SUCCESS);
    }
    let per_round = (args.iterations / ROUNDS).max(1);
    let forks = (per_round / 4).max(10);
    let [
        mut bare,
        mut sandboxed,
        mut per_action,
        mut per_action_par,
        mut per_action_one,
        mut fork,
    ] = [Duration::MAX; 6];
    for round in 0..ROUNDS {
        // (a) bare instantiate + call.
        let t = Instant::now();
        for _ in 0..per_round {
            runtime.bare_call(&digest).await?;
        }
        bare = bare.min(per(t.elapsed(), per_round));
        // (a2) the same component as the engine runs one job: workspace, preopened `/scratch`,
        // stdio capture, log sink, wall-clock timeout, and the workspace handed back.
        let t = Instant::now();
        for _ in 0..per_round {
            sandboxed_call(&cx, &job).await?;
        }
        sandboxed = sandboxed.min(per(t.elapsed(), per_round));
        // Used workspaces are emptied in the background; not while the next measure runs.
        engine.workspaces.flush();
        // The three pipelines take turns at going first: whichever runs right after the loops
        // above was measured 15–25% slower (swapping the order moved the slowdown with it).
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => per_action = per_action.min(per(run_pipeline(&engine, &seq).await?, n)),
                1 => {
                    per_action_par = per_action_par.min(per(run_pipeline(&engine, &par).await?, n))
                }
                _ => {
                    per_action_one = per_action_one.min(per(run_pipeline(&engine, &one).await?, n))
                }
            }
        }
        // (c) fork/exec.
        let t = Instant::now();
        for _ in 0..forks {
            std::process::Command::new("/bin/true").status()?;
        }
        fork = fork.min(per(t.elapsed(), forks));
    }

    let b_over_a = per_action.as_secs_f64() / bare.as_secs_f64();
    let c_over_b = fork.as_secs_f64() / per_action.as_secs_f64();
    println!(
        "## Action overhead ({n} no-op actions; best of {ROUNDS} rounds of {per_round} calls, {forks} forks, one run of each pipeline)\n"
    );
    println!("| measure | per call | |");
    println!("|---|---|---|");
    println!(
        "| (a) bare wasmtime InstancePre instantiate + call | {} | baseline |",
        us(bare)
    );
    println!(
        "| (a2) one job in the engine's sandbox, no scheduler | {} | {:.2}× (a) |",
        us(sandboxed),
        sandboxed.as_secs_f64() / bare.as_secs_f64()
    );
    let stages = n.div_ceil(STAGE_LIMIT);
    println!(
        "| (b) engine, {n} actions one after another in {stages} stages, per action | {} | {:.2}× (a) — target ≤ 2× |",
        us(per_action),
        b_over_a
    );
    println!(
        "| (b') engine, the same in parallel groups of up to {STAGE_LIMIT}, per action | {} | {:.2}× (a) |",
        us(per_action_par),
        per_action_par.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "| (b'') engine, {n} actions one after another in one stage, per action | {} | {:.2}× (a) |",
        us(per_action_one),
        per_action_one.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "| (c) fork/exec `/bin/true` | {} | {:.1}× (b) — target ≥ 20× |",
        us(fork),
        c_over_b
    );
    let mut ok = b_over_a <= 2.0 && c_over_b >= 20.0;

    if let Some(path) = &args.component {
        ok &= compile_cache(tmp.path(), path, bare).await?;
    }
    if let Some(path) = &args.cache {
        ok &= action_cache(tmp.path(), path, bare, None).await?;
    }
    if args.artifact_mib > 0 {
        ok &= artifacts::artifacts(tmp.path(), args.artifact_mib)?;
    }
    println!(
        "\n{}",
        if ok {
            "all targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A job for the no-op plugin, as the scheduler would build it.
fn noop_job(
    plugin: sluice_engine::artifacts::Digest,
    dir: &Path,
) -> sluice_engine::executor::job::JobSpec {
    sluice_engine::executor::job::JobSpec {
        secrets: Default::default(),
        cacheable: false,
        reveal: false,
        secrets_in_body: false,
        tenant: "default".into(),
        pipeline: "bench".into(),
        execution_id: "bench".into(),
        stage: "S".into(),
        action: "A".into(),
        attempt: 1,
        idempotency_key: "default/bench/S/A/1".into(),
        plugin,
        config: BTreeMap::new(),
        inputs: BTreeMap::new(),
        outputs: Vec::new(),
        dirs: Vec::new(),
        programs: Vec::new(),
        http: Vec::new(),
        nats: Vec::new(),
        memory: sluice_engine::runtime::DEFAULT_MEMORY,
        output_limits: Default::default(),
        timeout: sluice_engine::executor::job::DEFAULT_TIMEOUT,
        pipeline_dir: dir.to_path_buf(),
        continuation: None,
        wake_payload: None,
        invoke: None,
    }
}

async fn sandboxed_call(
    cx: &sluice_engine::executor::job::JobContext,
    job: &sluice_engine::executor::job::JobSpec,
) -> anyhow::Result<()> {
    let (result, leftover) = sluice_engine::executor::job::execute(cx, job).await;
    leftover.release(cx);
    anyhow::ensure!(
        matches!(
            result,
            sluice_engine::scheduler::ActionResult::Succeeded { .. }
        ),
        "the no-op job failed: {result:?}"
    );
    Ok(())
}

/// Rounds of every action-overhead measure.
const ROUNDS: usize = 5;

/// CodePipeline's limit of actions per stage.
const STAGE_LIMIT: usize = 50;

/// A pipeline of `n` no-op actions in stages of `per_stage`, each stage's actions one after
/// another (`sequential`) or all in one group.
fn pipeline_file(
    dir: &Path,
    name: &str,
    n: usize,
    per_stage: usize,
    sequential: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let mut yaml = format!("name: bench-{name}\nstages:\n");
    for i in 0..n {
        if i % per_stage == 0 {
            yaml.push_str(&format!("  - name: S{}\n    actions:\n", i / per_stage + 1));
        }
        let order = if sequential { i % per_stage + 1 } else { 1 };
        yaml.push_str(&format!(
            "      - {{ name: A{}, uses: noop@1, run_order: {order} }}\n",
            i + 1
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The action cache: a chain of ten pure actions (each hashes its input and writes 10 MiB)
/// after a `source-dir@1` stage, run cold and then again unchanged; a hit's cost as the engine
/// takes one job, next to a bare instantiate+call; and hits in a 500-action pipeline against the
/// same actions run.
/// With `profile` (seconds), only run the second run again and again for that long.
async fn action_cache(
    dir: &Path,
    probe: &Path,
    bare: Duration,
    profile: Option<f64>,
) -> anyhow::Result<bool> {
    let work = dir.join("cache-bench");
    std::fs::create_dir_all(work.join("src"))?;
    std::fs::write(
        work.join("src/input.txt"),
        "the sources of a build\n".repeat(1000),
    )?;
    let probe = std::fs::canonicalize(probe)?;
    let source = "name: source-only\nstages:\n  - name: Source\n    actions:\n      - { name: Files, uses: source-dir@1, outputs: [d0], with: { path: src } }\n";
    let mut chain = source.replace("source-only", "chain");
    for i in 1..=10 {
        chain.push_str(&format!(
            "  - name: H{i}\n    actions:\n      - {{ name: Hash, uses: {}, inputs: [d{}], outputs: [d{i}], with: {{ mode: hash, value: \"10\" }} }}\n",
            probe.display(),
            i - 1
        ));
    }
    std::fs::write(work.join("source.yaml"), source)?;
    std::fs::write(work.join("chain.yaml"), chain)?;
    let mut engine = Engine::embedded(
        &work.join("data"),
        Arc::new(MemoryBus::default()),
        LogStore::new(work.join("data/logs")),
    )?;
    engine.cache = Some(Arc::new(sluice_engine::local::action_cache(
        &work.join("data"),
    )?));
    // The source stage alone, warm: what the second run pays besides the hits. Both are
    // best-of-RUNS: the hits' share of the second run is small next to the noise of one run.
    const RUNS: usize = 15;
    let mut source_only = Duration::MAX;
    for _ in 0..RUNS {
        source_only = source_only.min(run_pipeline(&engine, &work.join("source.yaml")).await?);
    }
    let first = run_pipeline(&engine, &work.join("chain.yaml")).await?;
    if let Some(seconds) = profile {
        let (start, mut runs) = (Instant::now(), 0usize);
        while start.elapsed().as_secs_f64() < seconds {
            run_pipeline(&engine, &work.join("chain.yaml")).await?;
            runs += 1;
        }
        eprintln!("{runs} runs, {} each", us(per(start.elapsed(), runs)));
        return Ok(true);
    }
    let mut second = Duration::MAX;
    for _ in 0..RUNS {
        second = second.min(run_pipeline(&engine, &work.join("chain.yaml")).await?);
    }
    // A hit as the engine takes one job, without the scheduler (what (a2) is to a run): the
    // no-op job, made cacheable, recorded once and then looked up.
    let cx = engine.job_context();
    let noop = engine.registry.resolve("noop@1", &work).await?;
    let mut job = noop_job(noop.digest.parse().map_err(anyhow::Error::msg)?, &work);
    job.cacheable = true;
    sandboxed_call(&cx, &job).await?;
    let mut job_hit = Duration::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..400 {
            let (result, _) = sluice_engine::executor::job::execute(&cx, &job).await;
            anyhow::ensure!(
                matches!(
                    result,
                    sluice_engine::scheduler::ActionResult::Succeeded {
                        cached_from: Some(_),
                        ..
                    }
                ),
                "the cacheable no-op job was not a hit: {result:?}"
            );
        }
        job_hit = job_hit.min(per(t.elapsed(), 400));
    }
    let job_hit_over_bare = job_hit.as_secs_f64() / bare.as_secs_f64();
    // Hits in a long pipeline, where one run's noise is spread over 500 actions: (b)'s shape
    // (stages of 50, one action after another), every action a hit, against the same actions
    // run (`cache: false`), interleaved, best of 5 each.
    let hits = pipeline_file(&work, "hits", 500, STAGE_LIMIT, true)?;
    let runs = work.join("runs.yaml");
    std::fs::write(
        &runs,
        std::fs::read_to_string(&hits)?
            .replace("bench-hits", "bench-runs")
            .replace("uses: noop@1,", "uses: noop@1, cache: false,"),
    )?;
    run_pipeline(&engine, &hits).await?;
    run_pipeline(&engine, &runs).await?;
    let (mut hit_500, mut run_500) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        hit_500 = hit_500.min(run_pipeline(&engine, &hits).await? / 500);
        run_500 = run_500.min(run_pipeline(&engine, &runs).await? / 500);
    }
    let ratio = second.as_secs_f64() / first.as_secs_f64();
    println!(
        "\n## Action cache: 10 chained pure actions writing 10 MiB each, after a source stage\n"
    );
    println!("| measure | time | |");
    println!("|---|---|---|");
    println!(
        "| first run (every action runs) | {:.1} ms | baseline |",
        first.as_secs_f64() * 1e3
    );
    println!(
        "| second run, unchanged (best of 15) | {:.2} ms | {:.1}% of the first — target ≤ 5% |",
        second.as_secs_f64() * 1e3,
        ratio * 100.0
    );
    println!(
        "| the source stage alone (best of 15) | {:.2} ms | |",
        source_only.as_secs_f64() * 1e3
    );
    println!(
        "| a cache hit, as the engine takes one job (key, lookup, artifacts checked; no scheduler) | {} | {:.2}× a bare instantiate+call ({}) — target ≤ 2× |",
        us(job_hit),
        job_hit_over_bare,
        us(bare)
    );
    println!(
        "| a cache hit, per action of a 500-action pipeline ((b)'s shape: scheduler, record, events included) | {} | {:.2}× a bare instantiate+call |",
        us(hit_500),
        hit_500.as_secs_f64() / bare.as_secs_f64(),
    );
    println!(
        "| the same 500 actions run (`cache: false`), per action: (b) | {} | {:.2}× a bare instantiate+call |",
        us(run_500),
        run_500.as_secs_f64() / bare.as_secs_f64(),
    );
    Ok(ratio <= 0.05 && job_hit_over_bare <= 2.0)
}

/// Validate and run a pipeline; returns the time from start to the recorded end.
async fn run_pipeline(engine: &Engine, file: &Path) -> anyhow::Result<Duration> {
    let (pipeline, problems) = load_pipeline(file).map_err(|d| anyhow::anyhow!("{d}"))?;
    let plugins = engine
        .check(&pipeline, problems, &BTreeMap::new())
        .await
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let t = Instant::now();
    let exec = engine
        .run(Arc::new(pipeline), &plugins, &BTreeMap::new())
        .await?;
    let took = t.elapsed();
    anyhow::ensure!(
        exec.status == sluice_engine::scheduler::Status::Succeeded,
        "benchmark pipeline failed"
    );
    Ok(took)
}

/// What `sluice plugin install` does (compile, describe, write the data folder's compile
/// cache) against what the first run after it does (load from that cache), and the
/// component's instantiate+call cost next to the no-op Rust component's (`bare`).
async fn compile_cache(dir: &Path, component: &Path, bare: Duration) -> anyhow::Result<bool> {
    use sluice_engine::runtime::{Runtime, RuntimeConfig};
    let bytes = std::fs::read(component)?;
    let data = dir.join("installed");
    let cache = data.join("compiled");
    let t = Instant::now();
    sluice_engine::local::load_component(&data, &bytes).await?;
    let cold = t.elapsed();
    let cold_rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
    })?;
    let digest = cold_rt.load(&bytes)?;
    let mut cached = Duration::MAX;
    for _ in 0..3 {
        // A fresh runtime each time: nothing in memory, only the cache on disk.
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
        })?;
        let t = Instant::now();
        rt.load(&bytes)?;
        cached = cached.min(t.elapsed());
    }
    for _ in 0..5 {
        cold_rt.bare_call(&digest).await?;
    }
    let calls = 50;
    let t = Instant::now();
    for _ in 0..calls {
        cold_rt.bare_call(&digest).await?;
    }
    let per_call = per(t.elapsed(), calls);
    let ratio = cached.as_secs_f64() / cold.as_secs_f64();
    println!(
        "\n## Compile cache: {} ({:.1} MiB)\n",
        component.display(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    println!("| measure | time | |");
    println!("|---|---|---|");
    println!(
        "| install: compile with cranelift, describe, write the cache | {:.0} ms | baseline |",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "| first run after install: load from the cache (mmap) | {:.2} ms | {:.2}% of install — target ≤ 1% |",
        cached.as_secs_f64() * 1e3,
        ratio * 100.0
    );
    println!(
        "| instantiate + call, this component | {} | {:.1}× the Rust no-op's {} |",
        us(per_call),
        per_call.as_secs_f64() / bare.as_secs_f64(),
        us(bare)
    );
    Ok(ratio <= 0.01)
}
