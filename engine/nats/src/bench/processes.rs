//! `sluice bench --nats URLS --engine-processes N`: executions per second with 1, 2, … N
//! `sluice serve` processes on the same NATS (a server or a cluster), each its own process
//! with its own connection, as a hosted deployment runs them. The baseline is the one-process
//! rate measured in the same run.
use super::burst_on;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pipeline every process runs: the latency benchmark's, under another name so both
/// benchmarks can share a server.
fn noop_pipeline() -> String {
    super::PIPELINE.replace("name: bench", "name: scale")
}

/// With `--wait-ms`: one action that waits (`sleep` in a granted shell, as a build step waits on I/O
/// or a remote service), so that an engine's workers, not the cores, bound its rate.
fn waiting_pipeline(ms: u64) -> String {
    format!(
        "name: scale-wait
execution_mode: parallel
stages:
  - name: Build
    actions:
      - name: Wait
        uses: command@1
        capabilities: {{ process: [sh] }}
        with: {{ run: \"sleep {}.{:03}\" }}
",
        ms / 1000,
        ms % 1000
    )
}

/// One `sluice serve` process, killed when dropped.
struct Engine {
    child: Child,
    log: PathBuf,
}

impl Engine {
    fn start(
        exe: &Path,
        url: &str,
        replicas: u8,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Engine> {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(exe)
            .args(["serve", "--nats", url, "--replicas", &replicas.to_string()])
            .arg("--data")
            .arg(dir.join(name))
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Engine { child, log })
    }

    /// Wait until it serves (it says so once its queues' consumers exist).
    async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("sluice serve: engine on NATS") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("an engine process ended ({status}) before serving:\n{log}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "an engine process did not serve within 150 s:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Register a pipeline through the control API, as `sluice pipeline put --nats` does.
async fn register(client: &async_nats::Client, yaml: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&sluice_api::verbs::PipelinePut {
        file: "scale.yaml".into(),
        dir: None,
        yaml: yaml.into(),
        plugins: Default::default(),
        bundle: None,
    })?;
    let reply = client
        .request("sluice.default.api.pipeline.put", body.into())
        .await?;
    sluice_api::wire::decode(serde_json::from_slice(&reply.payload)?).map_err(|e| {
        anyhow::anyhow!(
            "register the pipeline: {}\n{}",
            e.message,
            e.problem_lines()
        )
    })?;
    Ok(())
}

/// Run the measure: bursts of `burst_size` executions with 1..=`max` engine processes, of the
/// no-op pipeline or (`wait_ms`) of one action that waits.
pub async fn run(
    url: &str,
    exe: &Path,
    max: usize,
    replicas: u8,
    burst_size: usize,
    wait_ms: Option<u64>,
) -> anyhow::Result<()> {
    let (name, yaml, shape) = match wait_ms {
        Some(ms) => (
            "scale-wait",
            waiting_pipeline(ms),
            format!("one action waiting {ms} ms (`sleep` in a granted shell)"),
        ),
        None => (
            "scale",
            noop_pipeline(),
            "a 3-stage, 5-action no-op pipeline".to_string(),
        ),
    };
    let tmp = tempfile::tempdir()?;
    let client = crate::connect_client(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let run_id = ulid::Ulid::new().to_string();
    let mut engines = Vec::new();
    let mut rates = Vec::new();
    for k in 1..=max {
        let mut engine = Engine::start(exe, url, replicas, tmp.path(), &format!("engine-{k}"))?;
        engine.ready().await?;
        engines.push(engine);
        if k == 1 {
            register(&client, &yaml).await?;
        }
        // Every process warm (its components loaded, its consumers pulling).
        burst_on(&client, &js, name, &format!("warm{k}-{run_id}"), 20 * k).await?;
        let took = burst_on(&client, &js, name, &format!("b{k}-{run_id}"), burst_size).await?;
        rates.push(burst_size as f64 / took.as_secs_f64());
    }
    println!(
        "## Engine processes on NATS ({url}; streams and buckets at {replicas} replica(s); bursts of {burst_size} executions of {shape})\n"
    );
    println!("| engine processes | executions/s | vs one process |");
    println!("|---|---|---|");
    for (k, rate) in rates.iter().enumerate() {
        println!(
            "| {} | {rate:.0} | {} |",
            k + 1,
            if k == 0 {
                "baseline".to_string()
            } else {
                format!("{:.2}×", rate / rates[0])
            }
        );
    }
    println!(
        "\n(Every process, the NATS servers and this client share this machine's {} cores.)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}
