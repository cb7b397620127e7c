//! A tenant's policy against a pipeline: what its actions may grant themselves outside the
//! sandbox. Checked when the pipeline is registered (with its lines) and when it starts.
use crate::model::validate::ResolvedPlugins;
use crate::model::{Loc, Pipeline};
use crate::plugins::Capability;
use sluice_api::tenancy::Policy;
use std::path::Path;

/// Every grant of `pipeline` that `policy` does not allow, at its place in the file.
pub fn refusals(
    pipeline: &Pipeline,
    plugins: &ResolvedPlugins,
    policy: &Policy,
    tenant: &str,
) -> Vec<(Loc, String)> {
    let mut out = Vec::new();
    let inside = |path: &Path| {
        let path = crate::model::normalize(path);
        policy
            .dirs
            .iter()
            .any(|d| path.starts_with(crate::model::normalize(Path::new(d))))
    };
    for stage in &pipeline.stages {
        for action in &stage.actions {
            let name = format!("{}/{}", stage.name, action.name);
            let caps = &action.capabilities;
            let at = caps.loc.unwrap_or(action.loc);
            for program in &caps.process {
                if !policy.process.contains(program) {
                    out.push((
                        at,
                        format!(
                            "{name}: tenant `{tenant}` may not run the host program `{program}` (its policy allows {})",
                            list(&policy.process)
                        ),
                    ));
                }
            }
            for dir in caps.dirs.keys() {
                if !inside(&pipeline.dir.join(dir)) {
                    out.push((
                        at,
                        format!(
                            "{name}: tenant `{tenant}` may not grant the host directory `{dir}` (its policy allows {})",
                            list(&policy.dirs)
                        ),
                    ));
                }
            }
            for origin in &caps.http {
                if !policy.http.iter().any(|o| o == "*" || o == origin) {
                    out.push((
                        at,
                        format!(
                            "{name}: tenant `{tenant}` may not reach `{origin}` (its policy allows {})",
                            list(&policy.http)
                        ),
                    ));
                }
            }
            for subject in &caps.nats {
                if subject.split('.').next() != Some(tenant) {
                    out.push((
                        at,
                        format!(
                            "{name}: NATS subject `{subject}` is outside tenant `{tenant}`'s namespace (`{tenant}.>`)"
                        ),
                    ));
                }
            }
            if !caps.nats_servers.is_empty() {
                out.push((
                    at,
                    format!("{name}: tenant `{tenant}` may publish only on the service's own NATS"),
                ));
            }
            if let (Some(max), Some(asked)) = (policy.max_memory, action.memory)
                && asked > max
            {
                out.push((
                    action.loc,
                    format!("{name}: `limits.memory` is more than tenant `{tenant}`'s ceiling of {max} bytes"),
                ));
            }
            if let Some(max) = policy.max_timeout_secs
                && action
                    .timeout
                    .or(pipeline.timeout)
                    .is_some_and(|t| t.as_secs() > max)
            {
                out.push((
                    action.loc,
                    format!("{name}: `timeout` is more than tenant `{tenant}`'s ceiling of {max}s"),
                ));
            }
            // A plugin that reads a path named in its configuration reads the engine's host:
            // only inside the pipeline's own uploaded folder, or a directory the policy allows.
            let Some(Ok(plugin)) = plugins.get(&action.uses.value) else {
                continue;
            };
            for cap in &plugin.description.capabilities {
                let Capability::ReadConfigPath(key) = cap else {
                    continue;
                };
                let Some(value) = action.with.get(key) else {
                    continue;
                };
                if pipeline.confined && !value.value.contains("#{") {
                    continue; // checked to stay inside the folder
                }
                if value.value.contains("#{") || !inside(&pipeline.dir.join(&value.value)) {
                    out.push((
                        value.loc,
                        format!(
                            "{name}: `{key}` reads `{}` on the engine's host, outside what tenant `{tenant}` may read (register the pipeline with its folder, or ask the operator to allow the directory)",
                            value.value
                        ),
                    ));
                }
            }
        }
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
