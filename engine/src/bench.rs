//! `sluice bench`: the engine measured against baselines taken in the same run.

/// Benchmark options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// No-op actions in the pipeline benchmark.
    #[arg(long, default_value_t = 200)]
    pub actions: usize,
}

/// Run the benchmarks.
pub async fn run(_args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
