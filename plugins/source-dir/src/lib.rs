//! `source-dir@1`: snapshot a host directory into an output artifact.
//!
//! The directory named by `path` is granted read-only by the engine because the
//! plugin declares `read-config-path("path")`: the path the pipeline author wrote is the grant.
use sluice_sdk::prelude::*;

struct SourceDir;

/// Never part of a source snapshot: VCS metadata and Sluice's own data directory.
const SKIP: &[&str] = &[".git", ".sluice"];

impl Action for SourceDir {
    fn describe() -> Description {
        Description::new("source-dir", env!("CARGO_PKG_VERSION"), Category::Source)
            .summary("Snapshots a directory (relative to the pipeline file) into one output artifact")
            .required("path", "directory to snapshot, relative to the pipeline file; .git and .sluice are left out")
            .needs(Capability::ReadConfigPath("path".into()))
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let out = ctx.single_output()?;
        let source = ctx.host_path(config.require("path")?);
        if !source.is_dir() {
            return Err(ActionError::Config(format!(
                "`path`: {} is not a directory",
                source.display()
            )));
        }
        let files = sluice_sdk::fs::copy_tree(&source, &ctx.output_dir(out), SKIP)
            .map_err(ActionError::Failed)?;
        log::info(&format!(
            "snapshotted {files} files from {}",
            source.display()
        ));
        // The engine reports the artifact's content digest as the `Digest` variable.
        Ok(Outcome::success()
            .var("FileCount", files)
            .summary(format!("{files} files from {}", source.display())))
    }
}

export_action!(SourceDir);
