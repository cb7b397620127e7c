//! Cross-reference and plugin-configuration checks on a parsed [`Pipeline`].
use super::{
    Access, Diagnostic, Loc, NAME_RULE, Pipeline, is_valid_name, parse::suggest, template,
};
use crate::plugin::{Capability, Description, Plugin};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Keys available as `#{sluice.KEY}`.
pub const SLUICE_KEYS: &[&str] = &["execution_id", "pipeline", "stage", "action"];

/// How each `uses:` string resolved (or why it did not).
pub type ResolvedPlugins = HashMap<String, Result<Arc<Plugin>, String>>;

/// Configuration keys a plugin does not accept, each with a message (and a "did you mean").
pub fn unknown_config_keys<'k>(
    uses: &str,
    d: &Description,
    keys: impl IntoIterator<Item = &'k str>,
) -> Vec<(&'k str, String)> {
    let known: Vec<&str> = d.config.iter().map(|k| k.name.as_str()).collect();
    keys.into_iter()
        .filter(|key| !known.contains(key))
        .map(|key| {
            let hint = match suggest(key, &known) {
                Some(s) => format!("; did you mean `{s}`?"),
                None if known.is_empty() => "; it accepts no configuration".to_string(),
                None => format!("; it accepts: {}", known.join(", ")),
            };
            (
                key,
                format!("`{uses}` does not accept configuration key `{key}`{hint}"),
            )
        })
        .collect()
}

/// A message for each required configuration key that `has` says is missing.
pub fn missing_config_keys(uses: &str, d: &Description, has: impl Fn(&str) -> bool) -> Vec<String> {
    d.config
        .iter()
        .filter(|k| k.required && !has(&k.name))
        .map(|k| {
            format!(
                "`{uses}` requires configuration key `{}` ({})",
                k.name, k.description
            )
        })
        .collect()
}

/// A message when `key` has a type in `d` that `value` is not. Values with `#{...}` references
/// are known only when the action runs: the plugin checks those.
pub fn mistyped_config_value(
    uses: &str,
    d: &Description,
    key: &str,
    value: &str,
) -> Option<String> {
    if value.contains("#{") {
        return None;
    }
    let ty = d.config.iter().find(|k| k.name == key)?.ty.as_ref()?;
    ty.check(value)
        .err()
        .map(|e| format!("`{key}` of `{uses}` {e}"))
}

/// Check everything that needs more than one place of the file. `overrides` are `--var` values.
pub fn validate(
    p: &Pipeline,
    plugins: &ResolvedPlugins,
    overrides: &BTreeMap<String, String>,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut err = |loc: Loc, message: String| diags.push(Diagnostic { loc, message });

    for key in overrides.keys() {
        if !p.variables.contains_key(key) {
            let declared: Vec<&str> = p.variables.keys().map(String::as_str).collect();
            err(
                Loc { line: 1, col: 1 },
                format!(
                    "--var {key}: the pipeline declares no variable `{key}` (declared: {})",
                    if declared.is_empty() {
                        "none".into()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
        }
    }

    for schedule in &p.triggers.schedule {
        if let Err(e) = super::cron::CronSchedule::parse(
            &schedule.cron.value,
            schedule.timezone.as_ref().map(|t| t.value.as_str()),
        ) {
            let loc = if e.starts_with("unknown timezone") {
                schedule
                    .timezone
                    .as_ref()
                    .map(|t| t.loc)
                    .unwrap_or(schedule.cron.loc)
            } else {
                schedule.cron.loc
            };
            err(loc, format!("`triggers.schedule`: {e}"));
        }
    }
    if let Some(hook) = &p.triggers.webhook {
        let name = &hook.secret_env.value;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            err(
                hook.secret_env.loc,
                format!("`secret_env` must name an environment variable, got {name:?}"),
            );
        }
    }

    // Where each artifact and namespace is produced: (stage index, run_order, location).
    let mut producers: HashMap<&str, (usize, u32, Loc)> = HashMap::new();
    let mut namespaces: HashMap<&str, (usize, u32, Loc)> = HashMap::new();
    let mut stage_names: HashMap<&str, Loc> = HashMap::new();
    for (si, stage) in p.stages.iter().enumerate() {
        if !is_valid_name(&stage.name) && !stage.name.is_empty() {
            err(
                stage.loc,
                format!("stage name {:?} must be {NAME_RULE}", stage.name),
            );
        }
        if let Some(first) = stage_names.insert(&stage.name, stage.loc) {
            err(
                stage.loc,
                format!(
                    "duplicate stage name `{}` (first at line {})",
                    stage.name, first.line
                ),
            );
        }
        let mut action_names: HashMap<&str, Loc> = HashMap::new();
        for a in &stage.actions {
            if !is_valid_name(&a.name) && !a.name.is_empty() {
                err(
                    a.loc,
                    format!("action name {:?} must be {NAME_RULE}", a.name),
                );
            }
            if let Some(first) = action_names.insert(&a.name, a.loc) {
                err(
                    a.loc,
                    format!(
                        "duplicate action name `{}` in stage `{}` (first at line {})",
                        a.name, stage.name, first.line
                    ),
                );
            }
            for out in &a.outputs {
                if !is_valid_name(&out.value) {
                    err(
                        out.loc,
                        format!("artifact name {:?} must be {NAME_RULE}", out.value),
                    );
                }
                if let Some((_, _, first)) =
                    producers.insert(&out.value, (si, a.run_order, out.loc))
                {
                    err(
                        out.loc,
                        format!(
                            "artifact `{}` is already produced at line {}",
                            out.value, first.line
                        ),
                    );
                }
            }
            if let Some(ns) = &a.namespace {
                if !is_valid_name(&ns.value)
                    || ["variables", "sluice", "trigger", "secrets"].contains(&ns.value.as_str())
                {
                    err(
                        ns.loc,
                        format!(
                            "namespace {:?} must be {NAME_RULE} and not be `variables`, `sluice`, `trigger` or `secrets`",
                            ns.value
                        ),
                    );
                }
                if let Some((_, _, first)) = namespaces.insert(&ns.value, (si, a.run_order, ns.loc))
                {
                    err(
                        ns.loc,
                        format!(
                            "namespace `{}` is already used at line {}",
                            ns.value, first.line
                        ),
                    );
                }
            }
        }
    }

    let earlier =
        |(psi, pro, _): (usize, u32, Loc), si: usize, ro: u32| psi < si || (psi == si && pro < ro);
    for (si, stage, a) in p.actions() {
        if a.uses.value == "approval@1" {
            // The engine keeps the approval's deadline, so its limits are checked here.
            if let Some(t) = a.with.get("timeout").filter(|t| !t.value.contains("#{")) {
                match super::units::parse_duration(&t.value) {
                    Ok(d)
                        if d < std::time::Duration::from_secs(300)
                            || d > std::time::Duration::from_secs(60 * 86400) =>
                    {
                        err(
                            t.loc,
                            format!(
                                "approval `timeout` must be between 5m and 60d, got {}",
                                t.value
                            ),
                        )
                    }
                    Ok(_) => {}
                    Err(e) => err(t.loc, format!("approval `timeout`: {e}")),
                }
            }
            if let Some(m) = a
                .with
                .get("min_approvals")
                .filter(|m| !m.value.contains("#{"))
                && !m.value.trim().parse::<u32>().is_ok_and(|n| n >= 1)
            {
                err(
                    m.loc,
                    format!(
                        "`min_approvals` must be a whole number of at least 1, got {:?}",
                        m.value
                    ),
                );
            }
        }
        for input in &a.inputs {
            match producers.get(input.value.as_str()) {
                None => err(
                    input.loc,
                    format!(
                        "input artifact `{}` is not produced by any action",
                        input.value
                    ),
                ),
                Some(&prod) if !earlier(prod, si, a.run_order) => err(
                    input.loc,
                    format!(
                        "input artifact `{}` is produced at line {}, which does not run before action `{}` (use an earlier stage or a lower run_order)",
                        input.value, prod.2.line, a.name
                    ),
                ),
                _ => {}
            }
        }
        for s in &a.secrets {
            if !p.secrets.contains_key(&s.value) {
                let known: Vec<&str> = p.secrets.keys().map(String::as_str).collect();
                let hint = suggest(&s.value, &known)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                err(
                    s.loc,
                    format!(
                        "action `{}`: secret `{}` is not declared in the pipeline's `secrets:`{hint}",
                        a.name, s.value
                    ),
                );
            }
        }
        for (key, value) in &a.with {
            let refs = match template::references(&value.value) {
                Ok(r) => r,
                Err(e) => {
                    err(value.loc, format!("`with.{key}`: {e}"));
                    continue;
                }
            };
            for r in refs {
                let at = value.loc;
                match r.namespace.as_str() {
                    "variables" => {
                        if !p.variables.contains_key(&r.key) {
                            let known: Vec<&str> = p.variables.keys().map(String::as_str).collect();
                            let hint = suggest(&r.key, &known)
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            err(
                                at,
                                format!(
                                    "`#{{variables.{}}}`: no such pipeline variable{hint}",
                                    r.key
                                ),
                            );
                        }
                    }
                    "trigger" => {
                        let data = r.key.strip_prefix("data.").is_some_and(|k| !k.is_empty());
                        if !data && !crate::scheduler::TRIGGER_KEYS.contains(&r.key.as_str()) {
                            err(
                                at,
                                format!(
                                    "`#{{trigger.{}}}`: unknown; available: {}, data.KEY",
                                    r.key,
                                    crate::scheduler::TRIGGER_KEYS.join(", ")
                                ),
                            );
                        }
                    }
                    "secrets" => {
                        if !p.secrets.contains_key(&r.key) {
                            err(
                                at,
                                format!(
                                    "`#{{secrets.{}}}`: no secret `{}` is declared in the pipeline's `secrets:`",
                                    r.key, r.key
                                ),
                            );
                        } else if !a.secrets.iter().any(|s| s.value == r.key) {
                            err(
                                at,
                                format!(
                                    "`#{{secrets.{}}}`: action `{}` does not list `{}` in its `secrets:`, so it may not use it",
                                    r.key, a.name, r.key
                                ),
                            );
                        }
                    }
                    "sluice" => {
                        if !SLUICE_KEYS.contains(&r.key.as_str()) {
                            err(
                                at,
                                format!(
                                    "`#{{sluice.{}}}`: unknown; available: {}",
                                    r.key,
                                    SLUICE_KEYS.join(", ")
                                ),
                            );
                        }
                    }
                    ns => match namespaces.get(ns) {
                        None => err(
                            at,
                            format!("`#{{{ns}.{}}}`: no action has namespace `{ns}`", r.key),
                        ),
                        Some(&prod) if !earlier(prod, si, a.run_order) => err(
                            at,
                            format!(
                                "`#{{{ns}.{}}}` points forward: namespace `{ns}` (line {}) does not run before action `{}`",
                                r.key, prod.2.line, a.name
                            ),
                        ),
                        _ => {}
                    },
                }
            }
        }
        let _ = stage;
        if a.uses.value.is_empty() {
            continue;
        }
        let plugin = match plugins.get(&a.uses.value) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                err(a.uses.loc, format!("`uses: {}`: {e}", a.uses.value));
                continue;
            }
            None => {
                err(
                    a.uses.loc,
                    format!("`uses: {}`: not resolved", a.uses.value),
                );
                continue;
            }
        };
        let d = &plugin.description;
        for (key, message) in
            unknown_config_keys(&a.uses.value, d, a.with.keys().map(String::as_str))
        {
            err(a.with[key].loc, message);
        }
        for message in missing_config_keys(&a.uses.value, d, |k| a.with.contains_key(k)) {
            err(a.loc, format!("action `{}`: {message}", a.name));
        }
        for (key, value) in &a.with {
            if let Some(message) = mistyped_config_value(&a.uses.value, d, key, &value.value) {
                err(value.loc, message);
            }
        }
        let cap_loc = a.capabilities.loc.unwrap_or(a.loc);
        // A configuration key that names a directory to grant must be fixed by the pipeline
        // author: pipeline variables and `sluice.*` only, never another action's output.
        for cap in &d.capabilities {
            let (Capability::ReadConfigPath(key) | Capability::WriteConfigPath(key)) = cap else {
                continue;
            };
            let Some(value) = a.with.get(key) else {
                continue;
            };
            if let Ok(refs) = template::references(&value.value)
                && let Some(r) = refs
                    .iter()
                    .find(|r| r.namespace != "variables" && r.namespace != "sluice")
            {
                let from = if r.namespace == "secrets" {
                    "a secret"
                } else if r.namespace == "trigger" {
                    "the event that started the execution"
                } else {
                    "another action's output"
                };
                err(
                    value.loc,
                    format!(
                        "`with.{key}` names a directory the action is granted, so it cannot come from {from} (`#{{{}.{}}}`)",
                        r.namespace, r.key
                    ),
                );
            }
        }
        for cap in &d.capabilities {
            match cap {
                Capability::Http if a.capabilities.http.is_empty() => err(
                    cap_loc,
                    format!(
                        "action `{}`: `{}` makes outbound HTTP requests; grant the origins it may reach with `capabilities: {{ http: [https://host] }}`",
                        a.name, a.uses.value
                    ),
                ),
                Capability::Nats if a.capabilities.nats.is_empty() => err(
                    cap_loc,
                    format!(
                        "action `{}`: `{}` publishes to NATS; grant the subjects it may use with `capabilities: {{ nats: [chat.releases] }}`",
                        a.name, a.uses.value
                    ),
                ),
                Capability::Process(prog) if !a.capabilities.process.contains(prog) => err(
                    cap_loc,
                    format!(
                        "action `{}`: `{}` runs host program `{prog}`; grant it with `capabilities: {{ process: [{prog}] }}`",
                        a.name, a.uses.value
                    ),
                ),
                Capability::WriteConfigPath(key) => {
                    let Some(value) = a.with.get(key) else {
                        continue;
                    };
                    // Resolve pipeline variables now; paths built from action outputs are checked at run time.
                    let rendered = template::render(&value.value, |ns, k| match ns {
                        "variables" => overrides.get(k).or(p.variables.get(k)).cloned(),
                        _ => None,
                    });
                    let Ok(path) = rendered else { continue };
                    let wanted = p.host_path(&path);
                    let granted = a.capabilities.dirs.iter().any(|(dir, access)| {
                        *access == Access::Rw && wanted.starts_with(p.host_path(dir))
                    });
                    if !granted {
                        err(
                            value.loc,
                            format!(
                                "action `{}`: `{}` writes to {path:?}; grant it with `capabilities: {{ dirs: {{ {path}: rw }} }}`",
                                a.name, a.uses.value
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
    }
    diags
}
