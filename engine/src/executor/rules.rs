//! Checking a stage condition that has custom rules (`Command::CheckRules`): built-in rules
//! are evaluated as the scheduler would, custom ones run as components of the `rule` world in
//! a sandbox with no grants. A rule that cannot be loaded or crashes fails, with the reason,
//! like a rule that says no: the condition's result applies and the record says why.
use super::job::JobContext;
use crate::artifacts::Digest;
use crate::model::{Pipeline, template};
use crate::runtime::RuleCheck;
use crate::scheduler::conditions::{self, Phase, Rule};
use crate::scheduler::{Execution, Input, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one custom rule may take.
const RULE_TIMEOUT: Duration = Duration::from_secs(30);

/// Check the condition of stage `si` for `phase`; the answer is the scheduler's next input.
pub async fn check(
    cx: &JobContext,
    pipeline: &Pipeline,
    exec: &Execution,
    si: usize,
    phase: Phase,
) -> Input {
    let at = crate::clock::now();
    let failure = match exec.stages.get(si).and_then(|s| s.conditions.get(phase)) {
        None => None,
        Some(c) if c.rules.is_empty() => Some("the condition has no rules".to_string()),
        Some(c) => {
            let mut failure = None;
            for rule in &c.rules {
                let verdict = match rule {
                    Rule::Custom { uses, with } => {
                        custom(cx, pipeline, exec, si, phase, uses, with, at).await
                    }
                    built_in => conditions::check(built_in, exec, at),
                };
                if let Err(why) = verdict {
                    failure = Some(why);
                    break;
                }
            }
            failure
        }
    };
    Input::Checked {
        stage: si,
        phase,
        failure,
        at,
    }
}

#[allow(clippy::too_many_arguments)]
async fn custom(
    cx: &JobContext,
    pipeline: &Pipeline,
    exec: &Execution,
    si: usize,
    phase: Phase,
    uses: &str,
    with: &BTreeMap<String, String>,
    at: Timestamp,
) -> Result<(), String> {
    let digest = load(cx, pipeline, uses).map_err(|e| format!("rule {uses}: {e}"))?;
    let mut config = Vec::new();
    for (k, v) in with {
        let value = template::render(v, |ns, key| conditions::lookup(exec, ns, key))
            .map_err(|e| format!("rule {uses}: `with.{k}`: {e}"))?;
        config.push((k.clone(), value));
    }
    let stage = exec.stages[si].name.clone();
    let check = RuleCheck {
        tenant: exec.tenant.clone(),
        pipeline: exec.pipeline.clone(),
        execution_id: exec.execution_id.clone(),
        stage: stage.clone(),
        condition: phase.as_str().to_string(),
        now_ms: at.0,
        values: values(exec),
        config,
        timeout: RULE_TIMEOUT,
        // Its log lines join the stage's, under a `<condition>` pseudo-action.
        log: Arc::new(cx.logs.sink(
            &exec.execution_id,
            &stage,
            &format!("{}-rule", phase.as_str()),
            1,
        )),
    };
    match cx.runtime.check_rule(&digest, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(format!("rule {uses}: {reason}")),
        Err(e) => Err(format!("rule {uses} did not run: {e}")),
    }
}

/// A rule component: a `.wasm` file next to the pipeline, or a blob by digest.
fn load(cx: &JobContext, pipeline: &Pipeline, uses: &str) -> Result<Digest, String> {
    let bytes = if uses.starts_with("blake3:") {
        let digest: Digest = uses.parse()?;
        cx.blobs.get_bytes(&digest).map_err(|e| e.to_string())?
    } else {
        let path = pipeline.host_path(uses);
        crate::plugins::read_component(&path).map_err(|e| e.to_string())?
    };
    cx.runtime.load_rule(&bytes).map_err(|e| format!("{e:#}"))
}

/// Every value a `#{...}` reference could use, keyed by the reference.
fn values(exec: &Execution) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = exec
        .variables
        .iter()
        .map(|(k, v)| (format!("variables.{k}"), v.clone()))
        .collect();
    out.insert("sluice.execution_id".into(), exec.execution_id.clone());
    out.insert("sluice.pipeline".into(), exec.pipeline.clone());
    for a in exec
        .stages
        .iter()
        .flat_map(|s| &s.actions)
        .filter(|a| a.status == crate::scheduler::Status::Succeeded)
    {
        if let Some(ns) = &a.namespace {
            for (k, v) in &a.variables {
                out.insert(format!("{ns}.{k}"), v.clone());
            }
        }
    }
    out.into_iter().collect()
}
