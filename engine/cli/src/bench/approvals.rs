//! `sluice bench --approvals N`: N executions waiting at an approval in one embedded
//! `sluice serve` process. Measures the engine process's resident memory before and after
//! (the baseline is the same engine idle, measured in the same run), restarts it, checks that
//! every execution still waits, and approves one to see it complete.
use crate::service::connect;
use sluice_api::Client;
use sluice_api::{Request, verbs};
use sluice_engine::scheduler::{Execution, Status};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = "name: gated
execution_mode: parallel
stages:
  - name: Production
    actions:
      - name: Gate
        uses: approval@1
        with: { approvers: bench-approver }
      - name: Deploy
        uses: noop@1
        run_order: 2
";

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

pub(super) fn spawn(dir: &Path) -> anyhow::Result<Served> {
    Ok(Served(
        Command::new(std::env::current_exe()?)
            .args(["serve", "--data"])
            .arg(dir.join("data"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

/// A `sluice serve` the bench started: killed when dropped, so a bench that fails half way
/// leaves no engine behind (on NATS, one left would answer the next run's requests).
pub(super) struct Served(pub Child);

impl Served {
    pub(super) fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn answering(dir: &Path) -> anyhow::Result<Client> {
    answering_as(dir, "default").await
}

/// A client of the engine spawned in `dir`, for `tenant`, once it answers.
pub(super) async fn answering_as(dir: &Path, tenant: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = connect(None, &dir.join("data"), tenant, None).await
            && c.call(&Request::from(verbs::PipelineLs {})).await.is_ok()
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

async fn waiting(client: &Client, limit: usize) -> anyhow::Result<usize> {
    let v = client
        .call(&Request::from(verbs::Executions {
            pipeline: Some("gated".into()),
            status: Some(Status::InProgress),
            limit: Some(limit),
            before: None,
        }))
        .await?;
    // Executions whose gate has run and now waits (not merely started).
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["waiting"].as_array().is_some_and(|w| !w.is_empty()))
                .count()
        })
        .unwrap_or(0))
}

async fn start_many(dir: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    while ids.len() < n {
        while tasks.len() < 32 && next < n {
            next += 1;
            let data = dir.join("data");
            tasks.spawn(async move {
                let c = connect(None, &data, "default", None).await?;
                let v = c
                    .call(&Request::from(verbs::Start {
                        pipeline: "gated".into(),
                        variables: Default::default(),
                        event_id: None,
                        started_by: Some("bench".into()),
                        source: None,
                    }))
                    .await?;
                anyhow::Ok(v["execution_id"].as_str().unwrap_or_default().to_string())
            });
        }
        if let Some(done) = tasks.join_next().await {
            ids.push(done??);
        }
    }
    Ok(ids)
}

/// Run the approval benchmark with `n` waiting executions.
pub async fn run(n: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    std::fs::write(dir.join("gated.yaml"), PIPELINE)?;
    let engine = spawn(dir)?;
    let client = answering(dir).await?;
    let put = client
        .call(&Request::from(verbs::PipelinePut {
            file: "gated.yaml".into(),
            dir: Some(dir.to_path_buf()),
            yaml: PIPELINE.into(),
            plugins: Default::default(),
            bundle: None,
        }))
        .await;
    anyhow::ensure!(put.is_ok(), "register: {put:?}");
    // Warm up (compile the plugins, fill caches), then take the baseline.
    let warm = start_many(dir, 20).await?;
    while waiting(&client, 100).await? < warm.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(engine.id())?;
    let t = Instant::now();
    let ids = start_many(dir, n).await?;
    let total = n + warm.len();
    while waiting(&client, total + 10).await? < total {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started_in = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(engine.id())?;
    let db = std::fs::metadata(dir.join("data/service.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    // Restart: kill -9, start again; everything still waits.
    drop(engine);
    let engine = spawn(dir)?;
    let client = answering(dir).await?;
    let restarted_rss = rss_kib(engine.id())?;
    let still = waiting(&client, total + 10).await?;
    // Approve one: it completes.
    let id = ids.last().cloned().unwrap_or_default();
    let t = Instant::now();
    client
        .call(&Request::from(verbs::Approve {
            execution_id: id.clone(),
            action: "Production/Gate".into(),
            approved: true,
            by: "bench-approver".into(),
            summary: None,
            token: None,
        }))
        .await?;
    let done = loop {
        let e: Execution = serde_json::from_value(
            client
                .call(&Request::from(verbs::GetExecution {
                    execution_id: id.clone(),
                }))
                .await?,
        )?;
        if e.status.is_terminal() {
            break e;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the approved execution did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let approved_in = t.elapsed();
    drop(engine);

    let growth = after.saturating_sub(before);
    println!("## Waiting costs nothing ({n} executions at an approval, embedded `sluice serve`)\n");
    println!("| measure | value | |");
    println!("|---|---|---|");
    println!(
        "| engine RSS, idle with {} waiting (baseline) | {:.1} MiB | |",
        warm.len(),
        before as f64 / 1024.0
    );
    println!(
        "| engine RSS with {total} waiting | {:.1} MiB | |",
        after as f64 / 1024.0
    );
    println!(
        "| growth | {:.1} MiB ({:.2} KiB per execution) | target ≤ 50 MiB, ≤ 4 KiB each |",
        growth as f64 / 1024.0,
        growth as f64 / n as f64
    );
    println!(
        "| store on disk (service.redb) | {:.1} MiB | |",
        db as f64 / (1 << 20) as f64
    );
    println!(
        "| starting them (through the trigger path) | {:.1} s ({:.0}/s) | |",
        started_in.as_secs_f64(),
        n as f64 / started_in.as_secs_f64()
    );
    println!("| after kill -9 and restart: still waiting | {still} of {total} | |");
    println!(
        "| engine RSS after restart | {:.1} MiB | |",
        restarted_rss as f64 / 1024.0
    );
    println!(
        "| approve one → its execution {} | {:.0} ms | |",
        done.status,
        approved_in.as_secs_f64() * 1e3
    );
    let ok = growth <= 50 * 1024 && still == total && done.status == Status::Succeeded;
    println!(
        "\n{}",
        if ok {
            "targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
    Ok(())
}
