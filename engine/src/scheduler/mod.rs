//! The scheduler: a pure function from (execution, input) to (execution, commands).
//!
//! It does no I/O and reads no clock: inputs carry their timestamps. Every
//! CodePipeline rule lives here so that it is a table-driven unit test; the executor
//! around it runs the commands (run a job, finish) and feeds back the outcomes.

mod record;
#[cfg(test)]
mod tests;

pub use record::{ActionRun, Execution, PluginRef, RetryPolicy, StageRun, Status, Timestamp, TriggerInfo};

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
        /// The resolved configuration the attempt ran with.
        config: BTreeMap<String, String>,
        /// The input artifacts it consumed: name → digest.
        inputs: BTreeMap<String, String>,
        /// When.
        at: Timestamp,
    },
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
                enter_stage(next, 0, *at, &mut commands);
            }
        }
        Input::ActionCompleted { stage, action, attempt, result, config, inputs, at } => {
            let Some(run) = next.stages.get_mut(*stage).and_then(|s| s.actions.get_mut(*action)) else {
                return commands;
            };
            if run.status != Status::InProgress || run.attempt != *attempt {
                return commands;
            }
            run.finished_at = Some(*at);
            run.config = config.clone();
            run.inputs = inputs.clone();
            let group = run.run_order;
            match result {
                ActionResult::Succeeded { variables, artifacts, summary } => {
                    run.status = Status::Succeeded;
                    run.variables = variables.clone();
                    run.artifacts = artifacts.clone();
                    run.summary = summary.clone();
                    run.error = None;
                }
                ActionResult::Failed { error, kind } => {
                    run.error = Some(error.clone());
                    let retry = run.retry.as_ref().filter(|p| {
                        run.attempt < p.max_attempts && (*kind == FailureKind::Retryable || (*kind == FailureKind::Timeout && p.on_timeout))
                    });
                    if let Some(policy) = retry {
                        // Same action, next attempt, after the backoff; the group is not settled.
                        let delay_ms = policy.delay_ms(run.attempt + 1);
                        run.attempt += 1;
                        run.started_at = Some(*at);
                        run.finished_at = None;
                        commands.push(Command::RunAction { stage: *stage, action: *action, attempt: run.attempt, delay_ms });
                        return commands;
                    }
                    run.status = Status::Failed;
                }
            }
            group_settled(next, *stage, group, *at, &mut commands);
        }
    }
    commands
}

/// After an action of `group` ended: wait for the rest of the group, then fail the stage or
/// move on to the next group, the next stage, or the end.
fn group_settled(exec: &mut Execution, si: usize, group: u32, at: Timestamp, commands: &mut Vec<Command>) {
    let stage = &mut exec.stages[si];
    if stage.actions.iter().any(|a| a.status == Status::InProgress) {
        return;
    }
    if stage.actions.iter().any(|a| a.run_order == group && a.status == Status::Failed) {
        stage.status = Status::Failed;
        stage.finished_at = Some(at);
        finish(exec, Status::Failed, at, commands);
        return;
    }
    let next_group = stage.actions.iter().filter(|a| a.status == Status::NotStarted && a.run_order > group).map(|a| a.run_order).min();
    match next_group {
        Some(g) => start_group(exec, si, g, at, commands),
        None => {
            stage.status = Status::Succeeded;
            stage.finished_at = Some(at);
            if si + 1 < exec.stages.len() {
                enter_stage(exec, si + 1, at, commands);
            } else {
                finish(exec, Status::Succeeded, at, commands);
            }
        }
    }
}

fn enter_stage(exec: &mut Execution, si: usize, at: Timestamp, commands: &mut Vec<Command>) {
    let stage = &mut exec.stages[si];
    stage.status = Status::InProgress;
    stage.started_at = Some(at);
    match stage.actions.iter().map(|a| a.run_order).min() {
        Some(first) => start_group(exec, si, first, at, commands),
        // Validation rejects empty stages; an empty one would simply succeed.
        None => group_settled(exec, si, 0, at, commands),
    }
}

fn start_group(exec: &mut Execution, si: usize, group: u32, at: Timestamp, commands: &mut Vec<Command>) {
    for (ai, run) in exec.stages[si].actions.iter_mut().enumerate() {
        if run.run_order == group {
            run.status = Status::InProgress;
            run.attempt += 1;
            run.started_at = Some(at);
            run.finished_at = None;
            commands.push(Command::RunAction { stage: si, action: ai, attempt: run.attempt, delay_ms: 0 });
        }
    }
}

fn finish(exec: &mut Execution, status: Status, at: Timestamp, commands: &mut Vec<Command>) {
    exec.status = status;
    exec.finished_at = Some(at);
    commands.push(Command::Finish { status });
}
