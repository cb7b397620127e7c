//! Registered pipelines: every `pipeline put` stores a new version; executions record the
//! version they run, so a pipeline changed mid-run does not change running executions.
//! Keys: `<tenant>/<name>` (the current version) and `<tenant>/<name>/<version>`.
use crate::kv::{Kv, KvError, get_json};
use crate::model::validate::ResolvedPlugins;
use crate::model::{Diagnostic, Pipeline};
use crate::plugins::Capability;
use crate::scheduler::Rule;

use std::collections::BTreeMap;
use std::path::Path;

pub use sluice_api::verbs::StoredPipeline;

fn head(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

fn versioned(tenant: &str, name: &str, version: u64) -> String {
    format!("{tenant}/{name}/{version}")
}

/// Store `p` as the next version of its pipeline; returns the version.
pub async fn put(kv: &dyn Kv, tenant: &str, mut p: StoredPipeline) -> Result<u64, KvError> {
    loop {
        let current = get_json::<StoredPipeline>(kv, &head(tenant, &p.name)).await?;
        // Versions keep counting after `rm`: the version keys executions name stay, and the
        // collector (`release`) never removes the highest, so no number is used twice (an
        // engine may hold an old version, parsed, under its number).
        let last = match &current {
            Some((c, _)) => c.version,
            None => last_version(kv, tenant, &p.name).await?,
        };
        let mut version = last + 1;
        while kv
            .get(&versioned(tenant, &p.name, version))
            .await?
            .is_some()
        {
            version += 1;
        }
        p.version = version;
        let bytes = serde_json::to_vec(&p).map_err(|e| KvError::Backend(e.to_string()))?;
        match kv
            .create(&versioned(tenant, &p.name, version), bytes.clone())
            .await
        {
            Err(KvError::Conflict { .. }) => continue,
            other => other?,
        };
        let written = match current {
            Some((_, rev)) => kv.update(&head(tenant, &p.name), bytes, rev).await,
            None => kv.create(&head(tenant, &p.name), bytes).await,
        };
        match written {
            Ok(_) => return Ok(version),
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The highest version number kept of a pipeline (0: none).
async fn last_version(kv: &dyn Kv, tenant: &str, name: &str) -> Result<u64, KvError> {
    let prefix = format!("{}/", head(tenant, name));
    Ok(kv
        .keys(&prefix)
        .await?
        .iter()
        .filter_map(|k| k[prefix.len()..].parse::<u64>().ok())
        .max()
        .unwrap_or(0))
}

/// Every version key kept of a pipeline, by number.
pub(in crate::service) fn version_key(tenant: &str, name: &str, version: u64) -> String {
    versioned(tenant, name, version)
}

/// The current version, or a given one.
pub async fn get(
    kv: &dyn Kv,
    tenant: &str,
    name: &str,
    version: Option<u64>,
) -> Result<Option<StoredPipeline>, KvError> {
    let key = match version {
        Some(v) => versioned(tenant, name, v),
        None => head(tenant, name),
    };
    Ok(get_json::<StoredPipeline>(kv, &key).await?.map(|(p, _)| p))
}

/// Current versions of every registered pipeline of `tenant`.
pub async fn list(kv: &dyn Kv, tenant: &str) -> Result<Vec<StoredPipeline>, KvError> {
    let prefix = format!("{tenant}/");
    let mut out = Vec::new();
    for key in kv.keys(&prefix).await? {
        if key[prefix.len()..].contains('/') {
            continue;
        }
        if let Some((p, _)) = get_json::<StoredPipeline>(kv, &key).await? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Unregister a pipeline (its versions stay for executions that run them). Returns whether
/// it was registered.
pub async fn remove(kv: &dyn Kv, tenant: &str, name: &str) -> Result<bool, KvError> {
    let key = head(tenant, name);
    let found = kv.get(&key).await?.is_some();
    if found {
        kv.delete(&key).await?;
    }
    Ok(found)
}

/// Current versions of every registered pipeline of every tenant: (tenant, pipeline).
pub async fn all_heads(kv: &dyn Kv) -> Result<Vec<(String, StoredPipeline)>, KvError> {
    let mut out = Vec::new();
    for key in kv.keys("").await? {
        let mut parts = key.split('/');
        // No tenant starts with `_`: those keys are the service's own (`_auth/…`: tokens,
        // tenants), not pipelines.
        if let (Some(tenant), Some(_), None) = (parts.next(), parts.next(), parts.next())
            && !tenant.starts_with('_')
            && let Some((p, _)) = get_json::<StoredPipeline>(kv, &key).await?
        {
            out.push((tenant.to_string(), p));
        }
    }
    Ok(out)
}

/// At most this many uploaded plugin files per pipeline.
pub const MAX_PLUGINS: usize = 256;

/// Whether a plugin reference (`uses:`) is a file path rather than `NAME@MAJOR` or a digest.
pub fn is_plugin_file(uses: &str) -> bool {
    !uses.starts_with("blake3:")
        && (uses.ends_with(".wasm")
            || uses.starts_with("./")
            || uses.starts_with('/')
            || uses.starts_with("../"))
}

/// Every plugin and rule file a pipeline names (`uses:` of actions, custom rules), as written.
pub fn files(p: &Pipeline) -> Vec<String> {
    let mut out: Vec<String> = p
        .actions()
        .map(|(_, _, a)| a.uses.value.clone())
        .filter(|u| is_plugin_file(u))
        .chain(rules(p).filter(|u| !u.starts_with("blake3:")).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn rules(p: &Pipeline) -> impl Iterator<Item = &String> {
    p.stages.iter().flat_map(|s| {
        let c = &s.conditions;
        [&c.before_entry, &c.on_success, &c.on_failure]
            .into_iter()
            .flatten()
            .flat_map(|c| &c.rules)
            .filter_map(|r| match r {
                Rule::Custom { uses, .. } => Some(uses),
                _ => None,
            })
    })
}

/// What a pipeline's YAML names for `pipeline.put` to check before it is resolved: the
/// marketplace plugins (`uses: NAMESPACE/NAME@MAJOR`, sorted, once each) and the components
/// named by digest (`uses: blake3:…` of actions and custom rules, with where). Parsed once;
/// both empty when it does not parse (reported when it is checked).
#[derive(Default)]
pub struct Named {
    /// Marketplace references.
    pub marketplace: Vec<String>,
    /// Digests, with where.
    pub digests: Vec<(crate::model::Loc, String)>,
}

/// See [`Named`].
pub fn named(yaml: &str) -> Named {
    let (pipeline, _) = crate::model::parse::parse("", Default::default(), yaml);
    let Some(p) = pipeline else {
        return Named::default();
    };
    let mut marketplace: Vec<String> = p
        .actions()
        .map(|(_, _, a)| a.uses.value.clone())
        .filter(|u| sluice_core::lockfile::marketplace_reference(u).is_some())
        .collect();
    marketplace.sort();
    marketplace.dedup();
    let actions = p
        .actions()
        .filter(|(_, _, a)| a.uses.value.starts_with("blake3:"))
        .map(|(_, _, a)| (a.uses.loc, a.uses.value.clone()));
    let rules = p.stages.iter().flat_map(|s| {
        let c = &s.conditions;
        [&c.before_entry, &c.on_success, &c.on_failure]
            .into_iter()
            .flatten()
            .flat_map(|c| &c.rules)
            .filter_map(move |r| match r {
                Rule::Custom { uses, .. } if uses.starts_with("blake3:") => {
                    Some((s.loc, uses.clone()))
                }
                _ => None,
            })
    });
    Named {
        marketplace,
        digests: actions.chain(rules).collect(),
    }
}

/// Pin every marketplace `uses:` to the digest `pins` holds for it (what the tenant had
/// installed when the pipeline was registered); one that is not installed is a problem at its
/// line that says the fix.
pub fn pin_marketplace(p: &mut Pipeline, pins: &BTreeMap<String, String>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for stage in &mut p.stages {
        for a in &mut stage.actions {
            let Some((name, major)) = sluice_core::lockfile::marketplace_reference(&a.uses.value)
            else {
                continue;
            };
            match pins.get(&a.uses.value) {
                Some(d) => a.uses.value = d.clone(),
                None => out.push(Diagnostic {
                    loc: a.uses.loc,
                    message: format!(
                        "action `{}`: `{name}@{major}` is not installed for this tenant: run `sluice plugin install REGISTRY/{name}@{major} --service` (with --nats URL for a service on NATS), then register the pipeline again",
                        a.name
                    ),
                }),
            }
        }
    }
    out
}

const NO_DIR: &str =
    "a pipeline registered remotely (over NATS or HTTP) has no directory on the engine's host";

/// Make a pipeline registered without a directory (over NATS) reference nothing relative on
/// the engine's host: plugin and rule files become the digests the client uploaded
/// (`uploads`: path as written → digest); any other file reference or relative path is a
/// problem that says the fix.
pub fn without_dir(p: &mut Pipeline, uploads: &BTreeMap<String, String>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let not_uploaded = |what: &str| {
        format!(
            "{what} is a file, and the engine reads no file of the client's: register the pipeline with `sluice pipeline put FILE`, which uploads it, or write `blake3:<hex>` / NAME@MAJOR"
        )
    };
    for stage in &mut p.stages {
        for a in &mut stage.actions {
            if is_plugin_file(&a.uses.value) {
                match uploads.get(&a.uses.value) {
                    Some(d) => a.uses.value = d.clone(),
                    None => out.push(Diagnostic {
                        loc: a.uses.loc,
                        message: format!(
                            "action `{}`: {}",
                            a.name,
                            not_uploaded(&format!("`uses: {}`", a.uses.value))
                        ),
                    }),
                }
            }
            if a.uses.value == "invoke@1"
                && let Some(f) = a
                    .with
                    .get("function")
                    .filter(|f| f.value.ends_with(".wasm"))
            {
                out.push(Diagnostic {
                        loc: f.loc,
                        message: format!(
                            "action `{}`: `function: {}` is a file, and the engine reads no file of the client's: register it with `sluice function put NAME {}` and write `function: NAME`",
                            a.name, f.value, f.value
                        ),
                    });
            }
            for d in a.capabilities.dirs.keys() {
                if !Path::new(d).is_absolute() {
                    out.push(Diagnostic {
                        loc: a.capabilities.loc.unwrap_or(a.loc),
                        message: format!(
                            "action `{}`: `capabilities.dirs` path {d:?} is relative, and {NO_DIR}: write an absolute path",
                            a.name
                        ),
                    });
                }
            }
        }
        let c = &mut stage.conditions;
        for condition in [&mut c.before_entry, &mut c.on_success, &mut c.on_failure]
            .into_iter()
            .flatten()
        {
            for rule in &mut condition.rules {
                if let Rule::Custom { uses, .. } = rule {
                    if uses.starts_with("blake3:") {
                        continue;
                    }
                    match uploads.get(uses.as_str()) {
                        Some(d) => *uses = d.clone(),
                        None => out.push(Diagnostic {
                            loc: stage.loc,
                            message: format!(
                                "stage `{}`: {}",
                                stage.name,
                                not_uploaded(&format!("rule {uses}"))
                            ),
                        }),
                    }
                }
            }
        }
    }
    out
}

/// The paths in plugin configuration (`source-dir`'s `path`, `deploy-release`'s `target`…)
/// that are relative in a pipeline without a directory; a `#{...}` value is checked when the
/// action runs.
pub fn relative_config_paths(p: &Pipeline, plugins: &ResolvedPlugins) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (_, _, a) in p.actions() {
        let Some(Ok(plugin)) = plugins.get(&a.uses.value) else {
            continue;
        };
        for cap in &plugin.description.capabilities {
            let (Capability::ReadConfigPath(key) | Capability::WriteConfigPath(key)) = cap else {
                continue;
            };
            if let Some(v) = a.with.get(key)
                && !v.value.contains("#{")
                && !Path::new(&v.value).is_absolute()
            {
                out.push(Diagnostic {
                        loc: v.loc,
                        message: format!(
                            "action `{}`: `with.{key}` {:?} is a path relative to the pipeline file, and {NO_DIR}: write an absolute path",
                            a.name, v.value
                        ),
                    });
            }
        }
    }
    out
}

/// Every path of a pipeline registered with its folder (`bundle`) that would lead out of that
/// folder: plugin, rule and function files, granted directories, and configuration paths the
/// engine grants (`read-config-path`, `write-config-path`). The folder is all such a pipeline
/// may reach on the engine's host.
pub fn outside_bundle(p: &Pipeline, plugins: &ResolvedPlugins) -> Vec<Diagnostic> {
    let inside = |written: &str| {
        !Path::new(written).is_absolute() && p.host_path(written).starts_with(&p.dir)
    };
    let leads_out = |what: String| {
        format!("{what} leads out of the pipeline's uploaded folder: name a path inside it")
    };
    let mut out = Vec::new();
    for stage in &p.stages {
        for (phase, condition) in [
            ("before_entry", &stage.conditions.before_entry),
            ("on_success", &stage.conditions.on_success),
            ("on_failure", &stage.conditions.on_failure),
        ] {
            for rule in condition.iter().flat_map(|c| &c.rules) {
                if let crate::scheduler::Rule::Custom { uses, .. } = rule
                    && !uses.starts_with("blake3:")
                    && !inside(uses)
                {
                    out.push(Diagnostic {
                        loc: stage.loc,
                        message: leads_out(format!(
                            "stage `{}`: `{phase}` rule {uses}",
                            stage.name
                        )),
                    });
                }
            }
        }
        for a in &stage.actions {
            if is_plugin_file(&a.uses.value) && !inside(&a.uses.value) {
                out.push(Diagnostic {
                    loc: a.uses.loc,
                    message: leads_out(format!("action `{}`: `uses: {}`", a.name, a.uses.value)),
                });
            }
            if a.uses.value == "invoke@1"
                && let Some(f) = a
                    .with
                    .get("function")
                    .filter(|f| f.value.ends_with(".wasm"))
                && !inside(&f.value)
            {
                out.push(Diagnostic {
                    loc: f.loc,
                    message: leads_out(format!("action `{}`: `function: {}`", a.name, f.value)),
                });
            }
            for d in a.capabilities.dirs.keys().filter(|d| !inside(d)) {
                out.push(Diagnostic {
                    loc: a.capabilities.loc.unwrap_or(a.loc),
                    message: leads_out(format!(
                        "action `{}`: `capabilities.dirs` path {d:?}",
                        a.name
                    )),
                });
            }
            let Some(Ok(plugin)) = plugins.get(&a.uses.value) else {
                continue;
            };
            for cap in &plugin.description.capabilities {
                let (Capability::ReadConfigPath(key) | Capability::WriteConfigPath(key)) = cap
                else {
                    continue;
                };
                if let Some(v) = a.with.get(key)
                    && !v.value.contains("#{")
                    && !inside(&v.value)
                {
                    out.push(Diagnostic {
                        loc: v.loc,
                        message: leads_out(format!(
                            "action `{}`: `with.{key}` {:?}",
                            a.name, v.value
                        )),
                    });
                }
            }
        }
    }
    out
}
