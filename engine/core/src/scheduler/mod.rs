//! The scheduler: a pure function from (execution, input) to (execution, commands).
//!
//! It does no I/O and reads no clock: inputs carry their timestamps. Every
//! CodePipeline rule lives here so that it is a table-driven unit test; the executor
//! around it runs the commands (run a job, finish) and feeds back the outcomes.

pub mod conditions;
pub mod lanes;
mod record;
mod shared;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_operating;

pub use conditions::{Condition, Outcome, Phase, Rule, StageConditions};
pub use lanes::Mode;
pub use record::{
    ActionRun, Decision, Execution, Holder, Outbox, PluginRef, RetryPolicy, RollbackOf, StageRun,
    Status, TRIGGER_KEYS, Timestamp, TriggerInfo, Waiting, Wake, trigger_value,
};
pub use shared::Shared;

use std::collections::BTreeMap;

/// Something that happened to an execution.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Begin the execution.
    Start {
        /// When.
        at: Timestamp,
    },
    /// An action attempt ended.
    ActionCompleted {
        /// Stage index.
        stage: usize,
        /// Action index within the stage.
        action: usize,
        /// The attempt that ended; stale attempts are ignored.
        attempt: u32,
        /// How it ended.
        result: ActionResult,
        /// The resolved configuration values the scheduler keeps ([`KEPT_CONFIG`]).
        kept: BTreeMap<String, String>,
        /// The input artifacts it consumed: name → digest.
        inputs: BTreeMap<String, String>,
        /// When.
        at: Timestamp,
    },
    /// Stop the execution. Without `abandon`, running actions finish and nothing new starts
    /// (`Stopping`, then `Stopped`); with it, they are marked `Abandoned` and it stops now.
    Stop {
        /// Cancel running actions instead of waiting for them.
        abandon: bool,
        /// Why, for the record.
        reason: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Wake a pending action waiting for an event: its next attempt runs with `payload`.
    Wake {
        /// Stage index.
        stage: usize,
        /// Action index.
        action: usize,
        /// The event's payload.
        payload: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Record an approval decision for an action waiting for one, and wake it (its next attempt
    /// receives every decision so far and decides whether it is approved).
    Decide {
        /// Stage index.
        stage: usize,
        /// Action index.
        action: usize,
        /// The decision.
        decision: Decision,
        /// When.
        at: Timestamp,
    },
    /// A wait ran out (approval timeout) or cannot be served: the action fails with `reason`.
    Expire {
        /// Stage index.
        stage: usize,
        /// Action index.
        action: usize,
        /// The attempt that is waiting; a later one makes this stale.
        attempt: u32,
        /// Why, recorded as the action's error.
        reason: String,
        /// When.
        at: Timestamp,
    },
    /// The pipeline's lanes let the execution into the stage it waits for (gated executions).
    Admit {
        /// Stage index.
        stage: usize,
        /// When.
        at: Timestamp,
    },
    /// The verdict on a condition with custom rules (`Command::CheckRules`).
    Checked {
        /// Stage index.
        stage: usize,
        /// Which condition.
        phase: Phase,
        /// `Some(reason)`: a rule failed (or could not run), so the condition's result applies.
        failure: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A newer execution replaced this one while it waited to enter `stage`.
    Supersede {
        /// Stage index.
        stage: usize,
        /// The newer execution's id.
        by: String,
        /// When.
        at: Timestamp,
    },
    /// Re-run a failed or stopped stage of a failed or stopped execution: its failed,
    /// abandoned and never-started actions (or all of them), then carry on.
    Retry {
        /// Stage index.
        stage: usize,
        /// Re-run every action of the stage, not only those that did not succeed.
        all: bool,
        /// When.
        at: Timestamp,
    },
}

/// Operator controls (`sluice stop`, `sluice retry`) are inputs too.
impl Input {
    /// When it happened.
    pub fn at(&self) -> Timestamp {
        match self {
            Input::Start { at }
            | Input::ActionCompleted { at, .. }
            | Input::Stop { at, .. }
            | Input::Retry { at, .. } => *at,
            Input::Wake { at, .. } | Input::Decide { at, .. } | Input::Expire { at, .. } => *at,
            Input::Admit { at, .. } | Input::Supersede { at, .. } | Input::Checked { at, .. } => {
                *at
            }
        }
    }
}

/// How an action attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionResult {
    /// It succeeded.
    Succeeded {
        /// Output variables.
        variables: BTreeMap<String, String>,
        /// Output artifacts: name → `blake3:<hex>`.
        artifacts: BTreeMap<String, String>,
        /// One line for humans.
        summary: Option<String>,
        /// Taken from the action cache: the attempt that recorded it.
        cached_from: Option<String>,
    },
    /// It is not finished: run it again, with `continuation`, when `wake` fires.
    Pending {
        /// Opaque state for the next attempt.
        continuation: String,
        /// What wakes it.
        wake: Wake,
        /// One line for humans.
        summary: Option<String>,
        /// 0–100.
        percent: Option<u8>,
        /// When waiting fails the action (approvals: their timeout).
        deadline: Option<Timestamp>,
    },
    /// It failed.
    Failed {
        /// Why, for humans.
        error: String,
        /// What kind of failure: decides whether automatic retry applies.
        kind: FailureKind,
    },
}

/// Kinds of failure, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Retrying cannot help (configuration error, failure, crash, limits).
    Permanent,
    /// The plugin said a retry may help.
    Retryable,
    /// The attempt ran out of time.
    Timeout,
}

/// Work for the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run this attempt of this action.
    RunAction {
        /// Stage index.
        stage: usize,
        /// Action index within the stage.
        action: usize,
        /// Attempt number, from 1.
        attempt: u32,
        /// Wait this long first (automatic retry backoff), in milliseconds.
        delay_ms: u64,
    },
    /// An action now waits for a decision or an event: notify, and arm its deadline.
    Await {
        /// Stage index.
        stage: usize,
        /// Action index.
        action: usize,
        /// The waiting attempt.
        attempt: u32,
    },
    /// A gated execution wants to enter a stage: ask the pipeline's lanes (`Input::Admit`
    /// comes back when it may).
    Enter {
        /// Stage index.
        stage: usize,
    },
    /// A gated execution left a stage, or stopped waiting for it: free its place.
    Leave {
        /// Stage index.
        stage: usize,
    },
    /// Evaluate the condition of `stage` for `phase`, which has custom (WASM) rules; answer
    /// with `Input::Checked`.
    CheckRules {
        /// Stage index.
        stage: usize,
        /// Which condition.
        phase: Phase,
    },
    /// A condition asks to roll `stage` back to the last execution that succeeded in it.
    Rollback {
        /// Stage index.
        stage: usize,
    },
    /// The execution reached a terminal status.
    Finish {
        /// Final status.
        status: Status,
    },
}

/// Apply one input: the pure function `(execution, input) -> (execution, commands)`.
/// Inputs that do not apply (a duplicate or stale completion, a second start) leave the
/// execution unchanged and produce no commands, so redelivery is harmless.
pub fn step(exec: &Execution, input: &Input) -> (Execution, Vec<Command>) {
    let mut next = exec.clone();
    let commands = apply(&mut next, input);
    (next, commands)
}

/// [`step`] in place, for the executor: the same rules without copying the execution.
pub fn apply(next: &mut Execution, input: &Input) -> Vec<Command> {
    let mut commands = Vec::new();
    match input {
        Input::Start { at } => {
            if next.status == Status::NotStarted {
                next.status = Status::InProgress;
                next.started_at = Some(*at);
                // A rollback execution runs only its stage; the earlier ones are carried over.
                let first = next
                    .rollback
                    .as_ref()
                    .and_then(|r| next.stages.iter().position(|s| s.name == r.stage))
                    .unwrap_or(0);
                enter_stage(next, first, *at, &mut commands);
            }
        }
        Input::Admit { stage, at } => {
            if next.status == Status::InProgress && next.entering == Some(*stage) {
                next.entering = None;
                begin_stage(next, *stage, *at, &mut commands);
            }
        }
        Input::Checked {
            stage,
            phase,
            failure,
            at,
        } => {
            let checking = next
                .stages
                .get(*stage)
                .is_some_and(|s| s.checking == Some(*phase));
            if next.status == Status::InProgress && checking {
                next.stages[*stage].checking = None;
                decide(next, *stage, *phase, failure.clone(), *at, &mut commands);
            }
        }
        Input::Supersede { stage, by, at } => {
            if next.status == Status::InProgress && next.entering == Some(*stage) {
                next.entering = None;
                next.superseded_by = Some(by.clone());
                finish(next, Status::Superseded, *at, &mut commands);
            }
        }
        Input::ActionCompleted {
            stage,
            action,
            attempt,
            result,
            kept,
            inputs,
            at,
        } => {
            let Some(run) = next
                .stages
                .get_mut(*stage)
                .and_then(|s| s.actions.get_mut(*action))
            else {
                return commands;
            };
            if run.status != Status::InProgress || run.attempt != *attempt {
                return commands;
            }
            run.kept = kept.clone();
            run.inputs = inputs.clone();
            if let ActionResult::Pending {
                continuation,
                wake,
                summary,
                percent,
                deadline,
            } = result
            {
                run.summary = summary.clone();
                run.continuation = Some(continuation.clone());
                run.wake_payload = None;
                let token = format!("{}-{}", run.name, run.attempt);
                run.waiting = Some(Waiting {
                    wake: wake.clone(),
                    since: *at,
                    deadline: *deadline,
                    percent: *percent,
                    token,
                });
                if let Wake::Timer(ms) = wake {
                    // A timer is a delayed next attempt, like a retry's backoff.
                    run.attempt += 1;
                    commands.push(Command::RunAction {
                        stage: *stage,
                        action: *action,
                        attempt: run.attempt,
                        delay_ms: *ms,
                    });
                } else {
                    commands.push(Command::Await {
                        stage: *stage,
                        action: *action,
                        attempt: run.attempt,
                    });
                }
                return commands;
            }
            run.finished_at = Some(*at);
            run.waiting = None;
            let group = run.run_order;
            match result {
                ActionResult::Pending { .. } => unreachable!("handled above"),
                ActionResult::Succeeded {
                    variables,
                    artifacts,
                    summary,
                    cached_from,
                } => {
                    run.status = Status::Succeeded;
                    run.variables = variables.clone();
                    run.artifacts = artifacts.clone();
                    run.summary = summary.clone();
                    run.cached_from = cached_from.clone();
                    run.error = None;
                }
                ActionResult::Failed { error, kind } => {
                    run.error = Some(error.clone());
                    let retry = run.retry.as_ref().filter(|p| {
                        run.attempt < p.max_attempts
                            && (*kind == FailureKind::Retryable
                                || (*kind == FailureKind::Timeout && p.on_timeout))
                    });
                    if let Some(policy) = retry {
                        // Same action, next attempt, after the backoff; the group is not settled.
                        let delay_ms = policy.delay_ms(run.attempt + 1);
                        run.attempt += 1;
                        run.started_at = Some(*at);
                        run.finished_at = None;
                        commands.push(Command::RunAction {
                            stage: *stage,
                            action: *action,
                            attempt: run.attempt,
                            delay_ms,
                        });
                        return commands;
                    }
                    run.status = Status::Failed;
                }
            }
            group_settled(next, *stage, group, *at, &mut commands);
        }
        Input::Wake {
            stage,
            action,
            payload,
            at,
        } => {
            if let Some(run) =
                waiting_action(next, *stage, *action, |w| matches!(w, Wake::Event(_)))
            {
                run.wake_payload = payload.clone();
                wake_up(run, *stage, *action, *at, &mut commands);
            }
        }
        Input::Decide {
            stage,
            action,
            decision,
            at,
        } => {
            if refusal(next, input).is_some() {
                return commands;
            }
            if let Some(run) = waiting_action(next, *stage, *action, |w| *w == Wake::Approval) {
                run.decisions.push(decision.clone());
                run.wake_payload =
                    Some(serde_json::json!({ "decisions": run.decisions }).to_string());
                wake_up(run, *stage, *action, *at, &mut commands);
            }
        }
        Input::Expire {
            stage,
            action,
            attempt,
            reason,
            at,
        } => {
            let Some(run) = next
                .stages
                .get_mut(*stage)
                .and_then(|s| s.actions.get_mut(*action))
            else {
                return commands;
            };
            if run.status != Status::InProgress || run.attempt != *attempt || run.waiting.is_none()
            {
                return commands;
            }
            run.waiting = None;
            run.status = Status::Failed;
            run.error = Some(reason.clone());
            run.finished_at = Some(*at);
            let group = run.run_order;
            group_settled(next, *stage, group, *at, &mut commands);
        }
        Input::Stop {
            abandon,
            reason,
            at,
        } => {
            let stoppable =
                next.status == Status::InProgress || (next.status == Status::Stopping && *abandon);
            if !stoppable {
                return commands;
            }
            next.stop_reason = reason.clone().or(next.stop_reason.take());
            // Actions waiting for a decision or an event hold nothing: they end now.
            for stage in next.stages.iter_mut() {
                for a in stage.actions.iter_mut().filter(|a| {
                    a.status == Status::InProgress
                        && a.waiting
                            .as_ref()
                            .is_some_and(|w| !matches!(w.wake, Wake::Timer(_)))
                }) {
                    a.status = Status::Abandoned;
                    a.waiting = None;
                    a.finished_at = Some(*at);
                    a.error = Some(format!(
                        "abandoned by stop while waiting{}",
                        reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ));
                }
            }
            let running = next
                .stages
                .iter()
                .any(|s| s.actions.iter().any(|a| a.status == Status::InProgress));
            if *abandon || !running {
                if let Some(waited) = next.entering.take() {
                    leave(next, waited, &mut commands);
                }
                let gated = next.gated;
                for (si, stage) in next
                    .stages
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, s)| matches!(s.status, Status::InProgress | Status::Stopping))
                {
                    if gated {
                        commands.push(Command::Leave { stage: si });
                    }
                    for a in stage
                        .actions
                        .iter_mut()
                        .filter(|a| a.status == Status::InProgress)
                    {
                        a.status = Status::Abandoned;
                        a.finished_at = Some(*at);
                        a.error = Some(format!(
                            "abandoned by stop{}",
                            reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ));
                    }
                    stage.status = Status::Stopped;
                    stage.finished_at = Some(*at);
                    stage.checking = None;
                }
                finish(next, Status::Stopped, *at, &mut commands);
            } else {
                next.status = Status::Stopping;
            }
        }
        Input::Retry { stage, all, at } => {
            let retryable = matches!(next.status, Status::Failed | Status::Stopped)
                && next
                    .stages
                    .get(*stage)
                    .is_some_and(|s| matches!(s.status, Status::Failed | Status::Stopped));
            if !retryable {
                return commands;
            }
            next.status = Status::InProgress;
            next.finished_at = None;
            next.stop_reason = None;
            let run = &mut next.stages[*stage];
            run.status = Status::NotStarted;
            run.finished_at = None;
            run.condition = None;
            run.auto_retried = false;
            for a in run.actions.iter_mut() {
                if *all || a.status != Status::Succeeded {
                    a.prepare_rerun();
                }
            }
            // Back through the stage's entry: its lane (gated) and its `before_entry` condition.
            enter_stage(next, *stage, *at, &mut commands);
        }
    }
    commands
}

/// The action at (stage, action) if it is waiting for a wake that `kind` accepts.
fn waiting_action(
    exec: &mut Execution,
    stage: usize,
    action: usize,
    kind: impl Fn(&Wake) -> bool,
) -> Option<&mut ActionRun> {
    if !matches!(exec.status, Status::InProgress | Status::Stopping) {
        return None;
    }
    let run = exec.stages.get_mut(stage)?.actions.get_mut(action)?;
    (run.status == Status::InProgress && run.waiting.as_ref().is_some_and(|w| kind(&w.wake)))
        .then_some(run)
}

/// A waiting action's next attempt: with its continuation and wake payload.
fn wake_up(
    run: &mut ActionRun,
    stage: usize,
    action: usize,
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    run.waiting = None;
    run.attempt += 1;
    run.started_at = Some(at);
    commands.push(Command::RunAction {
        stage,
        action,
        attempt: run.attempt,
        delay_ms: 0,
    });
}

/// The resolved configuration values an execution record keeps: what approvals need after
/// the attempt (who may decide, and what the notification shows). Nothing else resolved is
/// stored, so a value resolved from a secret is never persisted through the record.
pub const KEPT_CONFIG: &[&str] = &["approvers", "external_link", "custom_data"];

/// The part of a resolved configuration the record keeps ([`KEPT_CONFIG`]).
pub fn kept(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config
        .iter()
        .filter(|(k, _)| KEPT_CONFIG.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Who may approve: the action's resolved `approvers` (comma- or space-separated; `*` means
/// anyone but the one who started the execution).
pub fn approvers(config: &BTreeMap<String, String>) -> Vec<String> {
    config
        .get("approvers")
        .map(|a| {
            a.split([',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a refused control may apply in a moment: a decision that reaches an approval while
/// it takes in an earlier one (its next attempt runs until the approval waits again).
pub fn settling(exec: &Execution, input: &Input) -> bool {
    let Input::Decide {
        stage,
        action,
        decision,
        ..
    } = input
    else {
        return false;
    };
    exec.status == Status::InProgress
        && exec
            .stages
            .get(*stage)
            .and_then(|s| s.actions.get(*action))
            .is_some_and(|run| {
                run.status == Status::InProgress
                    && run.waiting.is_none()
                    && !run.decisions.is_empty()
                    && run.decisions.iter().all(|d| d.by != decision.by)
            })
}

/// Why an operator control cannot apply to `exec` (for a clear error), or `None` if it can.
pub fn refusal(exec: &Execution, input: &Input) -> Option<String> {
    match input {
        Input::Stop { abandon, .. } => match exec.status {
            Status::InProgress => None,
            Status::Stopping if *abandon => None,
            Status::Stopping => Some(
                "the execution is already stopping; use --abandon to cancel its running actions"
                    .into(),
            ),
            s => Some(format!(
                "the execution is {s}; only a running execution can be stopped"
            )),
        },
        Input::Decide {
            stage,
            action,
            decision,
            ..
        } => {
            let Some(run) = exec.stages.get(*stage).and_then(|s| s.actions.get(*action)) else {
                return Some("no such action".into());
            };
            // (Asked first: while the action takes in a decision it is not waiting for a moment.)
            if run.status == Status::InProgress && run.decisions.iter().any(|d| d.by == decision.by)
            {
                return Some(format!(
                    "{} has already decided on {}",
                    decision.by, run.name
                ));
            }
            if run.status != Status::InProgress
                || run
                    .waiting
                    .as_ref()
                    .is_none_or(|w| w.wake != Wake::Approval)
            {
                return Some(format!(
                    "{} is not waiting for an approval (it is {})",
                    run.name, run.status
                ));
            }
            if !matches!(exec.status, Status::InProgress | Status::Stopping) {
                return Some(format!("the execution is {}", exec.status));
            }
            if exec.trigger.as_ref().and_then(|t| t.started_by.as_deref())
                == Some(decision.by.as_str())
            {
                return Some(format!(
                    "{} started this execution and may not approve it",
                    decision.by
                ));
            }
            let allowed = approvers(&run.kept);
            if !allowed.iter().any(|a| a == "*" || *a == decision.by) {
                return Some(format!(
                    "{} is not an approver of {} (approvers: {})",
                    decision.by,
                    run.name,
                    allowed.join(", ")
                ));
            }
            None
        }
        Input::Retry { stage, .. } => {
            let Some(run) = exec.stages.get(*stage) else {
                return Some("no such stage".into());
            };
            if !matches!(exec.status, Status::Failed | Status::Stopped) {
                Some(format!(
                    "the execution is {}; only a failed or stopped execution can be retried",
                    exec.status
                ))
            } else if !matches!(run.status, Status::Failed | Status::Stopped) {
                Some(format!(
                    "stage `{}` is {}; only a failed or stopped stage can be retried",
                    run.name, run.status
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// After an action of `group` ended: wait for the rest of the group, then fail the stage or
/// move on to the next group; at the stage's end its `on_success` or `on_failure` condition
/// decides what follows.
fn group_settled(
    exec: &mut Execution,
    si: usize,
    group: u32,
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    let stage = &mut exec.stages[si];
    // One pass over the stage (it runs once per finished action).
    let (mut running, mut failed, mut next_group, mut next) =
        (false, false, None::<u32>, Vec::new());
    for (ai, a) in stage.actions.iter().enumerate() {
        match a.status {
            Status::InProgress => running = true,
            Status::Failed if a.run_order == group => failed = true,
            // The next group: the lowest run_order above this one that has not started.
            Status::NotStarted if a.run_order > group => match next_group {
                Some(g) if g < a.run_order => {}
                Some(g) if g == a.run_order => next.push(ai),
                _ => {
                    next_group = Some(a.run_order);
                    next.clear();
                    next.push(ai);
                }
            },
            _ => {}
        }
    }
    if running {
        return;
    }
    if exec.status == Status::Stopping {
        // The last running action of a stopping execution ended: nothing new starts.
        stage.status = Status::Stopped;
        stage.finished_at = Some(at);
        leave(exec, si, commands);
        finish(exec, Status::Stopped, at, commands);
        return;
    }
    if failed {
        stage.status = Status::Failed;
        stage.finished_at = Some(at);
        judge(exec, si, Phase::OnFailure, at, commands);
        return;
    }
    match next_group {
        Some(_) => start_actions(exec, si, &next, at, commands),
        None => judge(exec, si, Phase::OnSuccess, at, commands),
    }
}

/// Evaluate the stage's condition for `phase` and act on it. Built-in rules are evaluated
/// here; a condition with a custom (WASM) rule is handed to the executor
/// (`Command::CheckRules`), whose verdict comes back as `Input::Checked`.
fn judge(
    exec: &mut Execution,
    si: usize,
    phase: Phase,
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    let Some(condition) = exec.stages[si].conditions.get(phase).cloned() else {
        return decide(exec, si, phase, None, at, commands);
    };
    if condition.rules.iter().any(Rule::is_custom) {
        exec.stages[si].checking = Some(phase);
        commands.push(Command::CheckRules { stage: si, phase });
        return;
    }
    let verdict = conditions::applies(&condition, exec, at);
    decide(exec, si, phase, verdict, at, commands);
}

/// Act on a condition's verdict (`Some(why)`: its result applies) for `phase` of stage `si`.
fn decide(
    exec: &mut Execution,
    si: usize,
    phase: Phase,
    verdict: Option<String>,
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    let result = exec.stages[si]
        .conditions
        .get(phase)
        .map(|c| (c.result, c.retry_all));
    let rollback_allowed = exec.rollback.is_none(); // a rollback never asks for another
    match (phase, verdict, result) {
        (Phase::BeforeEntry, Some(why), Some((outcome, _))) => {
            let stage = &mut exec.stages[si];
            stage.finished_at = Some(at);
            for a in stage
                .actions
                .iter_mut()
                .filter(|a| a.status == Status::NotStarted)
            {
                a.status = Status::Skipped;
            }
            leave(exec, si, commands);
            let stage = &mut exec.stages[si];
            if outcome == Outcome::Skip {
                stage.status = Status::Skipped;
                stage.condition = Some(format!("before_entry SKIP: {why}"));
                after_stage(exec, si, at, commands);
            } else {
                stage.status = Status::Failed;
                stage.condition = Some(format!("before_entry FAIL: {why}"));
                finish(exec, Status::Failed, at, commands);
            }
        }
        (Phase::BeforeEntry, _, _) => match exec.stages[si]
            .actions
            .iter()
            .filter(|a| a.status == Status::NotStarted)
            .map(|a| a.run_order)
            .min()
        {
            Some(first) => start_group(exec, si, first, at, commands),
            // Validation rejects empty stages; an empty (or fully succeeded) one simply succeeds.
            None => group_settled(exec, si, 0, at, commands),
        },
        (Phase::OnSuccess, Some(why), Some((outcome, _))) => {
            let stage = &mut exec.stages[si];
            stage.status = Status::Failed;
            stage.finished_at = Some(at);
            if outcome == Outcome::Rollback && rollback_allowed {
                stage.condition = Some(format!("on_success ROLLBACK: {why}"));
                commands.push(Command::Rollback { stage: si });
            } else {
                stage.condition = Some(format!("on_success FAIL: {why}"));
            }
            leave(exec, si, commands);
            finish(exec, Status::Failed, at, commands);
        }
        (Phase::OnSuccess, _, _) => {
            let stage = &mut exec.stages[si];
            stage.status = Status::Succeeded;
            stage.finished_at = Some(at);
            leave(exec, si, commands);
            after_stage(exec, si, at, commands);
        }
        (Phase::OnFailure, verdict, result) => {
            let stage = &mut exec.stages[si];
            match (verdict, result) {
                (Some(why), Some((Outcome::Retry, all))) if !stage.auto_retried => {
                    stage.auto_retried = true;
                    stage.condition = Some(format!("on_failure RETRY: {why}"));
                    stage.status = Status::InProgress;
                    stage.finished_at = None;
                    for a in stage
                        .actions
                        .iter_mut()
                        .filter(|a| all || a.status != Status::Succeeded)
                    {
                        a.prepare_rerun();
                    }
                    let first = stage
                        .actions
                        .iter()
                        .filter(|a| a.status == Status::NotStarted)
                        .map(|a| a.run_order)
                        .min()
                        .unwrap_or(0);
                    start_group(exec, si, first, at, commands);
                    return;
                }
                (Some(why), Some((Outcome::Rollback, _))) if rollback_allowed => {
                    stage.condition = Some(format!("on_failure ROLLBACK: {why}"));
                    commands.push(Command::Rollback { stage: si });
                }
                _ => {}
            }
            leave(exec, si, commands);
            finish(exec, Status::Failed, at, commands);
        }
    }
}

/// The stage `si` is done well (succeeded or skipped): the next stage, or the end.
fn after_stage(exec: &mut Execution, si: usize, at: Timestamp, commands: &mut Vec<Command>) {
    let rolled_back = exec
        .rollback
        .as_ref()
        .is_some_and(|r| r.stage == exec.stages[si].name);
    if si + 1 < exec.stages.len() && !rolled_back {
        enter_stage(exec, si + 1, at, commands);
    } else {
        finish(exec, Status::Succeeded, at, commands);
    }
}

/// Go to stage `si`: through its lane when gated, else straight in.
fn enter_stage(exec: &mut Execution, si: usize, at: Timestamp, commands: &mut Vec<Command>) {
    if exec.gated {
        exec.entering = Some(si);
        commands.push(Command::Enter { stage: si });
    } else {
        begin_stage(exec, si, at, commands);
    }
}

/// Free a gated execution's place in stage `si`'s lane.
fn leave(exec: &Execution, si: usize, commands: &mut Vec<Command>) {
    if exec.gated {
        commands.push(Command::Leave { stage: si });
    }
}

/// Inside stage `si`: check `before_entry`, then start its first group of actions not yet
/// run (all of them on first entry; those reset by a retry otherwise).
fn begin_stage(exec: &mut Execution, si: usize, at: Timestamp, commands: &mut Vec<Command>) {
    let stage = &mut exec.stages[si];
    stage.status = Status::InProgress;
    stage.started_at = Some(at);
    stage.finished_at = None;
    judge(exec, si, Phase::BeforeEntry, at, commands);
}

fn start_group(
    exec: &mut Execution,
    si: usize,
    group: u32,
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    let members: Vec<usize> = exec.stages[si]
        .actions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.run_order == group && r.status == Status::NotStarted)
        .map(|(ai, _)| ai)
        .collect();
    start_actions(exec, si, &members, at, commands);
}

fn start_actions(
    exec: &mut Execution,
    si: usize,
    members: &[usize],
    at: Timestamp,
    commands: &mut Vec<Command>,
) {
    for &ai in members {
        let run = &mut exec.stages[si].actions[ai];
        run.status = Status::InProgress;
        run.attempt += 1;
        run.started_at = Some(at);
        run.finished_at = None;
        commands.push(Command::RunAction {
            stage: si,
            action: ai,
            attempt: run.attempt,
            delay_ms: 0,
        });
    }
}

fn finish(exec: &mut Execution, status: Status, at: Timestamp, commands: &mut Vec<Command>) {
    exec.status = status;
    exec.finished_at = Some(at);
    commands.push(Command::Finish { status });
}
