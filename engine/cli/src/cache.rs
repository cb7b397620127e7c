//! `sluice cache ls|stats|clear`: the action cache of the data folder (what `sluice run`
//! reuses), or with `--service` / `--nats` the tenant's cache on the service, which every
//! engine of it shares. Both print the same way.
use clap::Subcommand;
use sluice_api::verbs::{self, CacheEntry};
use sluice_engine::local;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

/// `sluice cache`.
#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// List the cached successes, newest first: key, pipeline, the attempt they came from,
    /// when, outputs.
    Ls {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// How many entries, per pipeline.
    Stats,
    /// Forget cached successes (those actions run again next time).
    Clear {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
    },
}

/// On the data folder's cache.
pub async fn local(cmd: CacheCmd, data: &Path) -> anyhow::Result<ExitCode> {
    if !data.exists() {
        // Nothing ran here: say so without making a data folder as a side effect.
        let whose = data.display().to_string();
        match cmd {
            CacheCmd::Ls { .. } => print_list(&[], &whose),
            CacheCmd::Stats => print_stats(&[], &whose),
            CacheCmd::Clear { .. } => println!("removed 0 cached result(s) ({whose})"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cache = local::action_cache(data)?;
    let tenant = sluice_engine::executor::DEFAULT_TENANT;
    let whose = data.display().to_string();
    match cmd {
        CacheCmd::Ls { pipeline } => {
            let mut all = cache.list(tenant).await?;
            all.retain(|e| pipeline.as_ref().is_none_or(|p| p == &e.pipeline));
            all.sort_by(|a, b| b.created.cmp(&a.created));
            print_list(&all, &whose);
        }
        CacheCmd::Stats => print_stats(&cache.list(tenant).await?, &whose),
        CacheCmd::Clear { pipeline } => {
            let n = cache.clear(tenant, pipeline.as_deref()).await?;
            println!("removed {n} cached result(s) ({whose})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// On the tenant's cache in the service.
pub async fn on_service(
    cmd: CacheCmd,
    target: &crate::service::Target,
) -> anyhow::Result<ExitCode> {
    let client = target.client().await?;
    let whose = format!("tenant {} on the service", target.tenant);
    let listed = |pipeline: Option<String>| {
        let client = &client;
        async move {
            // Page by page: a whole cache is more than one NATS message holds.
            let mut all: Vec<CacheEntry> = Vec::new();
            loop {
                let page = client
                    .send(verbs::CacheLs {
                        pipeline: pipeline.clone(),
                        limit: Some(sluice_api::limits::MAX_LIST),
                        before: all.last().map(CacheEntry::cursor),
                    })
                    .await?;
                let full = page.len() == sluice_api::limits::MAX_LIST;
                all.extend(page);
                if !full {
                    return Ok::<_, sluice_api::ApiError>(all);
                }
            }
        }
    };
    let done = match cmd {
        CacheCmd::Ls { pipeline } => listed(pipeline).await.map(|all| print_list(&all, &whose)),
        CacheCmd::Stats => listed(None).await.map(|all| print_stats(&all, &whose)),
        CacheCmd::Clear { pipeline } => client
            .send(verbs::CacheClear { pipeline })
            .await
            .map(|cleared| println!("removed {} cached result(s) ({whose})", cleared.removed)),
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => crate::service::refused(e),
    }
}

fn print_list(all: &[CacheEntry], whose: &str) {
    if all.is_empty() {
        println!("the action cache is empty ({whose})");
    }
    for e in all {
        let outputs: Vec<String> = e
            .artifacts
            .keys()
            .cloned()
            .chain(e.variables.keys().map(|k| format!("#{k}")))
            .collect();
        println!(
            "{}  {:<16} {}  {}  [{}]",
            e.key.get(..12).unwrap_or(&e.key),
            e.pipeline,
            e.from,
            e.created,
            outputs.join(" ")
        );
    }
}

fn print_stats(all: &[CacheEntry], whose: &str) {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for e in all {
        *per.entry(&e.pipeline).or_default() += 1;
    }
    println!(
        "{} entries ({whose}; at most {} are kept, the oldest go first)",
        all.len(),
        sluice_engine::cache::MAX_ENTRIES
    );
    for (p, n) in per {
        println!("  {p}: {n}");
    }
}
