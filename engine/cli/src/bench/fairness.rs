//! `sluice bench --fairness N [--nats URL]`: one tenant's flood does not starve another. In one
//! `sluice serve` (embedded, or on the NATS at URL), tenant B's trigger → succeeded latency (a pipeline of five no-op actions) is
//! measured idle, then while tenant A has N executions queued; and A's throughput alone, then
//! beside B. Target (hosting issue): B's p50 at most 3× its idle p50, A's throughput within
//! 20 % of its own alone.
//!
//! The two tenants are two clients, as they would be in use: B's requests and the events it
//! watches are handled on a thread and runtime of its own, not queued in one event loop behind
//! the replies to A's 256 requests in flight (which put up to several milliseconds of the bench's
//! own waiting into every sample of B's).
use super::approvals::spawn;
use crate::service::connect;
use sluice_api::Client;
use sluice_api::verbs;
use sluice_engine::scheduler::Status;
use std::time::{Duration, Instant};

const PIPELINE: &str = "name: five
execution_mode: parallel
stages:
  - name: S1
    actions: [ { name: A, uses: noop@1 } ]
  - name: S2
    actions: [ { name: A, uses: noop@1 } ]
  - name: S3
    actions: [ { name: A, uses: noop@1 } ]
  - name: S4
    actions: [ { name: A, uses: noop@1 } ]
  - name: S5
    actions: [ { name: A, uses: noop@1 } ]
";

/// Samples of B's latency in each phase.
const SAMPLES: usize = 15;

async fn register(c: &Client) -> anyhow::Result<()> {
    c.send(verbs::PipelinePut {
        file: "five.yaml".into(),
        yaml: PIPELINE.into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn start(c: &Client) -> anyhow::Result<String> {
    Ok(c.send(verbs::Start {
        pipeline: "five".into(),
        ..Default::default()
    })
    .await?
    .execution_id)
}

/// One start of B's, until it succeeded: the whole, and the `start` call's part of it.
async fn one(c: &Client) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let id = start(c).await?;
    let started = t.elapsed();
    let e = c.watch(&id, |_: &sluice_engine::bus::Event| {}).await?;
    anyhow::ensure!(e.status == Status::Succeeded, "{id} ended {}", e.status);
    if std::env::var_os("SLUICE_BENCH_PHASES").is_some() {
        eprintln!("start {started:?} total {:?}", t.elapsed());
    }
    Ok(t.elapsed())
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How tenant A floods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flood {
    /// `start` calls through the API, 256 in flight.
    Starts,
    /// Trigger events published straight to `sluice.tenant-a.trigger.five` (NATS only).
    Published,
}

/// A's flood, as `how` says.
async fn flood_by(
    how: Flood,
    nats: Option<&str>,
    a: &Client,
    n: usize,
    round: &str,
) -> anyhow::Result<()> {
    match (how, nats) {
        (Flood::Published, Some(url)) => {
            sluice_nats::bench::publish_triggers(url, "sluice.tenant-a.trigger.five", n, round)
                .await
        }
        _ => flood(a, n).await,
    }
}

/// Start `n` of A's executions (256 requests in flight) and return when all are queued.
async fn flood(c: &Client, n: usize) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(0..n)
        .map(|_| start(c))
        .buffer_unordered(256)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Wait until tenant `c` has no execution running.
async fn drained(c: &Client) -> anyhow::Result<()> {
    loop {
        let running = c
            .send(verbs::Executions {
                status: Some(Status::InProgress),
                limit: Some(1),
                ..Default::default()
            })
            .await?;
        if running.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `phase` with a client of tenant B of its own, on a thread and runtime of its own.
fn as_tenant_b<T, F>(
    dir: &std::path::Path,
    nats: Option<&str>,
    phase: impl FnOnce(Client) -> F + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let (dir, nats) = (dir.to_path_buf(), nats.map(str::to_string));
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let b = answering(&dir, nats.as_deref(), "tenant-b").await?;
                phase(b).await
            })
    })
}

/// The result of a thread of [`as_tenant_b`], awaited without blocking this runtime.
async fn joined<T: Send + 'static>(
    thread: std::thread::JoinHandle<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("tenant B's thread panicked"))?
}

/// A client of the engine for `tenant`, once it answers.
async fn answering(
    dir: &std::path::Path,
    nats: Option<&str>,
    tenant: &str,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = connect(nats, &dir.join("data"), tenant, None).await
            && c.send(verbs::PipelineLs {}).await.is_ok()
        {
            return Ok(c);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the engine did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(n: usize, nats: Option<&str>, how: Flood) -> anyhow::Result<()> {
    anyhow::ensure!(
        how == Flood::Starts || nats.is_some(),
        "--flood published needs --nats"
    );
    let flood = |a, round| flood_by(how, nats, a, n, round);
    let dir = tempfile::tempdir()?;
    let engine = match nats {
        None => spawn(dir.path())?,
        Some(url) => super::approvals::Served(
            std::process::Command::new(std::env::current_exe()?)
                .args(["serve", "--nats", url, "--data"])
                .arg(dir.path().join("data"))
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ),
    };
    let a = answering(dir.path(), nats, "tenant-a").await?;
    register(&a).await?;
    // A tenant that has started something before: on NATS the engines pull its trigger events
    // from then on (a tenant's very first event published straight to NATS waits for them to
    // look, up to a second).
    start(&a).await?;
    drained(&a).await?;
    // B idle.
    let idle = joined(as_tenant_b(dir.path(), nats, |b| async move {
        register(&b).await?;
        for _ in 0..3 {
            one(&b).await?; // warm up
        }
        let mut idle = Vec::new();
        for _ in 0..SAMPLES {
            idle.push(one(&b).await?);
        }
        Ok(idle)
    }))
    .await?;
    // A alone: its throughput.
    let t = Instant::now();
    flood(&a, "alone").await?;
    drained(&a).await?;
    let alone = t.elapsed();
    // A flooded again, B measured meanwhile: from 300 ms into the flood, while A's starts
    // and jobs are queued and running.
    let t = Instant::now();
    let b = as_tenant_b(dir.path(), nats, move |b| async move {
        tokio::time::sleep(Duration::from_millis(300).saturating_sub(t.elapsed())).await;
        let mut v = Vec::new();
        for _ in 0..SAMPLES {
            v.push((t.elapsed(), one(&b).await?));
        }
        Ok(v)
    });
    let (flooded, sampled) = tokio::join!(
        async {
            flood(&a, "beside").await?;
            let queued = t.elapsed();
            drained(&a).await?;
            Ok::<_, anyhow::Error>((queued, t.elapsed()))
        },
        joined(b)
    );
    let (queued_after, beside) = flooded?;
    let sampled = sampled?;
    let during = sampled.iter().filter(|(at, _)| *at < beside).count();
    let loaded: Vec<Duration> = sampled.into_iter().map(|(_, d)| d).collect();
    let worst = loaded.iter().max().copied().unwrap_or_default();
    drop(engine);

    let (idle, loaded) = (p50(idle), p50(loaded));
    let ratio = loaded.as_secs_f64() / idle.as_secs_f64();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let throughput = rate(beside) / rate(alone);
    let service = if nats.is_some() {
        "one engine on NATS"
    } else {
        "embedded service"
    };
    let flooded_by = match how {
        Flood::Starts => "started through the API",
        Flood::Published => "trigger events published straight to NATS",
    };
    println!(
        "## Fairness between tenants ({service}, {n} executions of tenant A queued: {flooded_by})\n"
    );
    println!("| measure | value | baseline, same run | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| B's trigger → succeeded p50 (5 no-op actions), A flooded | {:.1} ms | B idle: {:.1} ms | {ratio:.2}× | ≤ 3× |",
        loaded.as_secs_f64() * 1e3,
        idle.as_secs_f64() * 1e3
    );
    println!(
        "| B's worst of {SAMPLES}, A flooded | {:.1} ms | | | |",
        worst.as_secs_f64() * 1e3
    );
    println!(
        "| A's throughput beside B | {:.0} executions/s | A alone: {:.0} executions/s | {throughput:.2} | ≥ 0.80 |",
        rate(beside),
        rate(alone)
    );
    println!(
        "\n(A's {n} starts were all accepted {:.1} s into the flood and done at {:.1} s; {during} of B's {SAMPLES} samples started before then.)",
        queued_after.as_secs_f64(),
        beside.as_secs_f64()
    );
    Ok(())
}
