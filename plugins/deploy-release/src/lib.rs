//! `deploy-release@1`: copy the input artifact into `<target>/releases/<execution-id>/` and
//! switch `<target>/current` to it atomically (a new symlink renamed over the old one),
//! keeping the newest `keep` releases.
use sluice_sdk::prelude::*;
use std::path::Path;

struct DeployRelease;

impl Action for DeployRelease {
    fn describe() -> Description {
        Description::new("deploy-release", env!("CARGO_PKG_VERSION"), Category::Deploy)
            .summary("Deploys an artifact as a new release directory and switches `current` to it atomically")
            .required("target", "deployment directory; must be granted under capabilities.dirs as rw")
            .optional_default("keep", "how many releases to keep", "5")
            .typed("keep", ConfigType::Integer)
            .needs(Capability::WriteConfigPath("target".into()))
            .side_effects()
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let input = ctx.single_input()?;
        let keep: usize = config.parse_or("keep", 5)?;
        if keep == 0 {
            return Err(ActionError::Config("`keep` must be at least 1".into()));
        }
        let target = ctx.host_path(config.require("target")?);
        let releases = target.join("releases");
        let release = releases.join(&ctx.execution_id);
        let fail =
            |what: &str, e: &dyn std::fmt::Display| ActionError::Failed(format!("{what}: {e}"));

        // A redelivered attempt finds its own half-written release: start it again.
        if release.exists() {
            std::fs::remove_dir_all(&release).map_err(|e| fail("remove partial release", &e))?;
        }
        let files = sluice_sdk::fs::copy_tree(&ctx.input_dir(input), &release, &[])
            .map_err(ActionError::Failed)?;

        let current = target.join("current");
        let previous = std::fs::read_link(&current)
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let staged = target.join(format!(".current-{}", ctx.execution_id));
        let _ = std::fs::remove_file(&staged);
        let link_target = Path::new("releases").join(&ctx.execution_id);
        sluice_sdk::fs::symlink(&link_target, &staged).map_err(|e| fail("create symlink", &e))?;
        std::fs::rename(&staged, &current).map_err(|e| fail("switch current", &e))?;
        log::info(&format!(
            "current -> {} ({files} files)",
            link_target.display()
        ));

        prune(&releases, keep, &ctx.execution_id)?;

        let mut outcome = Outcome::success()
            .var("ReleaseDir", release.display())
            .var(
                "Previous",
                previous
                    .as_deref()
                    .and_then(|p| p.rsplit('/').next())
                    .unwrap_or(""),
            )
            .summary(format!("released {} ({files} files)", ctx.execution_id));
        if let Some(p) = previous {
            log::info(&format!("previous release: {p}"));
        }
        outcome = outcome.var("FileCount", files);
        Ok(outcome)
    }
}

/// Remove all but the newest `keep` releases. Execution ids are ULIDs, so names sort by time.
fn prune(releases: &Path, keep: usize, current: &str) -> Result<(), ActionError> {
    let mut names: Vec<String> = std::fs::read_dir(releases)
        .map_err(|e| ActionError::Failed(format!("list releases: {e}")))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in names.into_iter().take(excess).filter(|n| n != current) {
        log::info(&format!("pruning release {name}"));
        std::fs::remove_dir_all(releases.join(&name))
            .map_err(|e| ActionError::Failed(format!("prune {name}: {e}")))?;
    }
    Ok(())
}

export_action!(DeployRelease);
