//! Stage conditions (`before_entry`, `on_success`, `on_failure`): a result plus rules. The
//! result applies when any rule fails; a condition without rules always applies. The
//! built-in rules are pure (they read the execution and the input's timestamp), so the
//! scheduler evaluates them itself.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{Execution, Timestamp};
use crate::model::template;

/// What a condition does when it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    /// Fail the stage (before entry, or after it succeeded).
    Fail,
    /// Do not run the stage; go on with the next one (before entry).
    Skip,
    /// Fail the stage and roll it back to the last execution that succeeded in it.
    Rollback,
    /// Re-run the stage's failed actions once (after a failure).
    Retry,
}

impl Outcome {
    /// Parse `FAIL|SKIP|ROLLBACK|RETRY`.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "FAIL" => Some(Outcome::Fail),
            "SKIP" => Some(Outcome::Skip),
            "ROLLBACK" => Some(Outcome::Rollback),
            "RETRY" => Some(Outcome::Retry),
            _ => None,
        }
    }
}

/// Comparison of `variable-check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operator {
    /// Equal strings.
    Equals,
    /// Different strings.
    NotEquals,
    /// The value is a regular expression the input matches (anywhere; anchor with ^…$).
    Matches,
    /// Numeric `<`.
    LessThan,
    /// Numeric `<=`.
    LessThanOrEqual,
    /// Numeric `>`.
    GreaterThan,
    /// Numeric `>=`.
    GreaterThanOrEqual,
}

impl Operator {
    /// The words a pipeline file uses.
    pub const NAMES: &'static [&'static str] = &[
        "equals",
        "not-equals",
        "matches",
        "less-than",
        "less-than-or-equal",
        "greater-than",
        "greater-than-or-equal",
    ];

    /// Parse one of [`Operator::NAMES`].
    pub fn parse(s: &str) -> Option<Operator> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One rule of a condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Rule {
    /// Compare a resolved `#{...}` string with a value.
    VariableCheck {
        /// A string with `#{NAMESPACE.KEY}` references (`#{Build.Version}`).
        input: String,
        /// How to compare.
        operator: Operator,
        /// What to compare with.
        value: String,
    },
    /// A custom rule: a component of the `rule` world, checked by the executor.
    Custom {
        /// A `.wasm` path (relative to the pipeline file) or `blake3:<hex>`.
        uses: String,
        /// Its configuration; values may contain `#{...}`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        with: BTreeMap<String, String>,
    },
    /// Passes while the cron expression matches the current minute in `timezone`.
    DeploymentWindow {
        /// Cron expression of the allowed minutes (`* 9-16 * * MON-FRI`).
        cron: String,
        /// IANA timezone; UTC when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
    },
}

impl Rule {
    /// Whether the executor must check it (it runs a component).
    pub fn is_custom(&self) -> bool {
        matches!(self, Rule::Custom { .. })
    }
}

/// Which of a stage's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `before_entry`.
    BeforeEntry,
    /// `on_success`.
    OnSuccess,
    /// `on_failure`.
    OnFailure,
}

impl Phase {
    /// As written in a pipeline.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::BeforeEntry => "before_entry",
            Phase::OnSuccess => "on_success",
            Phase::OnFailure => "on_failure",
        }
    }
}

/// A condition as the execution record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// What happens when it applies.
    pub result: Outcome,
    /// The rules; none means the result always applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// For `RETRY`: re-run every action of the stage, not only the failed ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_all: bool,
}

/// The three conditions a stage may have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageConditions {
    /// Checked before the stage's actions start: `FAIL` or `SKIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_entry: Option<Condition>,
    /// Checked after every action succeeded: `FAIL` or `ROLLBACK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Condition>,
    /// Checked after the stage failed: `ROLLBACK` or `RETRY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Condition>,
}

impl StageConditions {
    /// The condition for `phase`, if any.
    pub fn get(&self, phase: Phase) -> Option<&Condition> {
        match phase {
            Phase::BeforeEntry => self.before_entry.as_ref(),
            Phase::OnSuccess => self.on_success.as_ref(),
            Phase::OnFailure => self.on_failure.as_ref(),
        }
    }

    /// No condition at all.
    pub fn is_empty(&self) -> bool {
        self.before_entry.is_none() && self.on_success.is_none() && self.on_failure.is_none()
    }
}

/// Whether `condition`'s result applies to `exec` at `at`: `Some(why)` when it does.
pub fn applies(condition: &Condition, exec: &Execution, at: Timestamp) -> Option<String> {
    if condition.rules.is_empty() {
        return Some("the condition has no rules".into());
    }
    condition
        .rules
        .iter()
        .find_map(|rule| check(rule, exec, at).err())
}

/// Check one rule: `Err(reason)` when it fails. A rule that cannot be evaluated (a reference
/// with no value, a bad number) fails with the reason.
pub fn check(rule: &Rule, exec: &Execution, at: Timestamp) -> Result<(), String> {
    match rule {
        Rule::VariableCheck {
            input,
            operator,
            value,
        } => {
            let actual = template::render(input, |ns, key| lookup(exec, ns, key))
                .map_err(|e| format!("variable-check: {e}"))?;
            let pass = match operator {
                Operator::Equals => actual == *value,
                Operator::NotEquals => actual != *value,
                Operator::Matches => regex::Regex::new(value)
                    .map_err(|e| format!("variable-check: bad regular expression {value:?}: {e}"))?
                    .is_match(&actual),
                numeric => {
                    let number = |s: &str| {
                        s.trim()
                            .parse::<f64>()
                            .map_err(|_| format!("variable-check: {s:?} is not a number"))
                    };
                    let (a, b) = (number(&actual)?, number(value)?);
                    match numeric {
                        Operator::LessThan => a < b,
                        Operator::LessThanOrEqual => a <= b,
                        Operator::GreaterThan => a > b,
                        _ => a >= b,
                    }
                }
            };
            let op = serde_json::to_value(operator)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if pass {
                Ok(())
            } else {
                Err(format!(
                    "variable-check: {input} is {actual:?}; expected {op} {value:?}"
                ))
            }
        }
        Rule::Custom { uses, .. } => Err(format!(
            "{uses}: a custom rule is checked by the executor, not here"
        )),
        Rule::DeploymentWindow { cron, timezone } => {
            let schedule = crate::model::cron::CronSchedule::parse(cron, timezone.as_deref())
                .map_err(|e| format!("deployment-window: {e}"))?;
            let now = jiff::Timestamp::from_millisecond(at.0 as i64)
                .map_err(|e| format!("deployment-window: {e}"))?;
            if schedule.matches(now) {
                Ok(())
            } else {
                Err(format!(
                    "deployment-window: {at} is outside `{cron}` ({})",
                    timezone.as_deref().unwrap_or("UTC")
                ))
            }
        }
    }
}

/// `#{...}` values an execution knows: its variables, `sluice.*`, and the output variables of
/// succeeded actions by namespace.
pub fn lookup(exec: &Execution, ns: &str, key: &str) -> Option<String> {
    match ns {
        "variables" => exec.variables.get(key).cloned(),
        "sluice" => match key {
            "execution_id" => Some(exec.execution_id.clone()),
            "pipeline" => Some(exec.pipeline.clone()),
            _ => None,
        },
        "trigger" => super::record::trigger_value(exec.trigger.as_ref(), key),
        other => exec
            .stages
            .iter()
            .flat_map(|s| &s.actions)
            .rfind(|a| {
                a.status == super::Status::Succeeded && a.namespace.as_deref() == Some(other)
            })
            .and_then(|a| a.variables.get(key).cloned()),
    }
}
