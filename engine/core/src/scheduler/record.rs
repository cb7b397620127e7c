//! The execution record: the scheduler's state, persisted by the state store and printed by
//! `sluice run --json` / `sluice show`.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::conditions::StageConditions;
use super::lanes::Mode;

/// CodePipeline's status words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Not reached (yet).
    NotStarted,
    /// Running.
    InProgress,
    /// Ended well.
    Succeeded,
    /// Ended badly.
    Failed,
    /// Asked to stop: running actions finish, nothing new starts.
    Stopping,
    /// Stopped by an operator.
    Stopped,
    /// Cancelled by `stop --abandon` while it ran.
    Abandoned,
    /// Skipped by a condition.
    Skipped,
    /// Replaced, while it waited between stages, by a newer execution (`superseded` mode).
    Superseded,
}

impl Status {
    /// Whether nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Stopped
                | Status::Skipped
                | Status::Abandoned
                | Status::Superseded
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Milliseconds since the Unix epoch; serialised as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Time elapsed from `earlier` to `self`.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        Ok(Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        ))
    }
}

/// One execution of a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// ULID: sorts by start time.
    pub execution_id: String,
    /// Owner.
    pub tenant: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Overall status.
    pub status: Status,
    /// Resolved pipeline variables (defaults plus overrides).
    pub variables: BTreeMap<String, String>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Stages in order.
    pub stages: Vec<StageRun>,
    /// The registered pipeline version it runs (service mode; 0 for a local file).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pipeline_version: u64,
    /// What started it (service mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerInfo>,
    /// Why an operator stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Stage entry goes through the pipeline's lanes (the service: execution modes and
    /// transitions); a lone local run enters stages directly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
    /// The pipeline's execution mode when it started.
    #[serde(default)]
    pub mode: Mode,
    /// The stage it waits to enter (gated executions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entering: Option<usize>,
    /// Set on a `Rollback` execution: the stage it re-runs and the execution whose artifacts
    /// and variables it re-runs it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackOf>,
    /// The newer execution that replaced it (`Superseded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The service's delivery bookkeeping for the events of the last recorded change.
    #[serde(default, skip_serializing_if = "Outbox::is_empty")]
    pub outbox: Outbox,
}

/// What it takes to publish the events of an execution's last recorded change again, written
/// with the change itself (service mode): the statuses before it (its events are what differs
/// between them and the record) and the approvals it began waiting for. The engine that records
/// a change publishes its events; if it dies before the stream has them, whoever handles the
/// execution next publishes them again: the engine that records the next change (when the
/// writer was another engine, or an earlier run of this one), the engine a redelivered job or
/// trigger reaches, and an engine recovering at start. Events keep their ids, so a re-sent event
/// is stored once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// Changes recorded so far; the last one's number.
    pub change: u64,
    /// The engine process (an id made when it starts) that recorded it.
    pub writer: String,
    /// The statuses before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<crate::events::Snapshot>,
    /// (stage, action) of each approval the change began waiting for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<(usize, usize)>,
    /// Events of the same writer's earlier changes that were still on their way to the bus
    /// when this change was recorded (a chain does not wait for them): sent again with this
    /// change's own, should the writer die before they are stored.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::events::stored_events"
    )]
    pub earlier: Vec<crate::events::Event>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.change == 0
    }
}

/// What a rollback execution rolls back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOf {
    /// The stage it re-runs.
    pub stage: String,
    /// The earlier execution it takes artifacts and variables from.
    pub target: String,
    /// The execution whose failure caused it (automatic rollback), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What started an execution, as recorded in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// The trigger event's id (one event id, one execution).
    pub event_id: String,
    /// `manual`, `nats`, `webhook`, `schedule`.
    pub kind: String,
    /// Who started it (the pusher, or the caller of `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Repository of a git event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Git ref (`refs/heads/main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The event's `data`: its top-level string fields (`#{trigger.data.KEY}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// The keys of `#{trigger.KEY}` (and `data.KEY`, any top-level string field of the event's
/// `data`).
pub const TRIGGER_KEYS: &[&str] = &[
    "id",
    "type",
    "commit",
    "ref",
    "branch",
    "tag",
    "pusher",
    "repository",
];

impl TriggerInfo {
    /// `#{trigger.KEY}`: what the event said, or empty when it said nothing (a manual start,
    /// `sluice run`). `branch` and `tag` come from `ref` (`refs/heads/…`, `refs/tags/…`; a
    /// bare ref is a branch). `None` for a key that is not one.
    pub fn value(&self, key: &str) -> Option<String> {
        let git_ref = self.git_ref.as_deref().unwrap_or("");
        let some = |v: &Option<String>| Some(v.clone().unwrap_or_default());
        match key {
            "id" => Some(self.event_id.clone()),
            "type" => Some(self.kind.clone()),
            "commit" => some(&self.commit),
            "ref" => some(&self.git_ref),
            "branch" => Some(match git_ref.strip_prefix("refs/heads/") {
                Some(b) => b.to_string(),
                None if git_ref.starts_with("refs/") => String::new(),
                None => git_ref.to_string(),
            }),
            "tag" => Some(git_ref.strip_prefix("refs/tags/").unwrap_or("").to_string()),
            "pusher" => some(&self.started_by),
            "repository" => some(&self.repository),
            _ => key
                .strip_prefix("data.")
                .map(|k| self.data.get(k).cloned().unwrap_or_default()),
        }
    }
}

/// `#{trigger.KEY}` of an execution that may have no trigger (`sluice run`): every known key is
/// empty then.
pub fn trigger_value(trigger: Option<&TriggerInfo>, key: &str) -> Option<String> {
    match trigger {
        Some(t) => t.value(key),
        None => TriggerInfo::default().value(key),
    }
}

/// One stage of an execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRun {
    /// Stage name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Actions in file order (shared between copies of the record until changed).
    pub actions: Vec<super::Shared<ActionRun>>,
    /// Its conditions, copied from the pipeline.
    #[serde(default, skip_serializing_if = "StageConditions::is_empty")]
    pub conditions: StageConditions,
    /// What a condition did to it, for the record (`before_entry SKIP: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// A condition with custom rules is being checked (`Command::CheckRules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checking: Option<super::conditions::Phase>,
    /// An `on_failure: RETRY` already re-ran it (it retries once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_retried: bool,
}

/// Automatic retry of an action (`retry:` in the pipeline). Only failures the plugin marked
/// retryable are retried, and timeouts when `on_timeout` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt, in milliseconds.
    pub initial_ms: u64,
    /// Longest delay, in milliseconds.
    pub max_ms: u64,
    /// Each delay is the previous one times this.
    pub multiplier: f64,
    /// Retry timeouts too.
    pub on_timeout: bool,
}

impl RetryPolicy {
    /// Delay before attempt `next` (2, 3, …): initial × multiplier^(next−2), capped at max.
    pub fn delay_ms(&self, next: u32) -> u64 {
        let factor = self.multiplier.max(1.0).powi(next.saturating_sub(2) as i32);
        ((self.initial_ms as f64) * factor).min(self.max_ms as f64) as u64
    }
}

/// The plugin an action ran, pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// As written in `uses:`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `blake3:<hex>` of the component.
    pub digest: String,
}

/// One action of an execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRun {
    /// Action name.
    pub name: String,
    /// Its group in the stage.
    pub run_order: u32,
    /// Its output variables' namespace (`#{NAMESPACE.KEY}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Status.
    pub status: Status,
    /// Attempts made so far (0 before the first).
    pub attempt: u32,
    /// The plugin, pinned.
    pub plugin: PluginRef,
    /// Its `with:` as written (`#{...}` unresolved): what `show` and `status` display. The
    /// resolved configuration is never stored (it may hold what must not be persisted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// The few resolved values the scheduler needs after the attempt (see
    /// [`crate::scheduler::KEPT_CONFIG`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept: BTreeMap<String, String>,
    /// Input artifacts consumed: name → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Output artifacts: name → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Output variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// One line from the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Not run: its outcome came from the action cache, recorded by this attempt
    /// (`EXECUTION/STAGE/ACTION`) with the same inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Why it failed (the last attempt's error while retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Automatic retry, if the pipeline asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// What a pending action waits for (it stays `InProgress` meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The continuation the next attempt receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
    /// The wake payload the next attempt receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_payload: Option<String>,
    /// Approval decisions recorded so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// The service's job chain running this attempt without queueing it (the id of the
    /// delivery it runs under), if one does: only that delivery coming back (its engine died)
    /// queues the attempt again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Which engine runs the current attempt and whether it still does: filled in by the
    /// service's `status` from the engines' leases, never stored in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Holder>,
}

/// An engine running an attempt, as its lease says (see [`ActionRun::held_by`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The engine process, as `HOST/PID`.
    pub engine: String,
    /// Its last heartbeat for this attempt.
    pub heartbeat: Timestamp,
    /// Its heartbeats stopped (two missed): the engine died, hangs or lost its connection.
    pub lost: bool,
    /// When the queue gives the job to another engine if no heartbeat comes (the delivery's
    /// deadline after the last one).
    pub redelivery_at: Timestamp,
}

/// What wakes a pending action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wake {
    /// Run again after this many milliseconds.
    Timer(u64),
    /// Run again when an approval decision is recorded.
    Approval,
    /// Run again when an external event names it (`sluice wake`, `api.wake`).
    Event(String),
}

/// A pending action's wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// What wakes it.
    pub wake: Wake,
    /// Since when.
    pub since: Timestamp,
    /// When the wait fails the action (approval timeout), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// 0–100, when the plugin can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Names this wait (in approval notifications and decisions).
    pub token: String,
}

/// One approval decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved (else rejected).
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// Why, in their words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl ActionRun {
    /// Make it runnable again (a retry): not started, nothing pending or decided. Its attempt
    /// count goes on, and its last results stay until the new attempt replaces them.
    pub fn prepare_rerun(&mut self) {
        self.status = Status::NotStarted;
        self.finished_at = None;
        self.waiting = None;
        self.continuation = None;
        self.wake_payload = None;
        self.decisions.clear();
    }

    /// As if it had never run (a rollback execution's copy of the stage it re-runs).
    pub fn reset(&mut self) {
        self.prepare_rerun();
        self.attempt = 0;
        self.kept.clear();
        self.inputs.clear();
        self.artifacts.clear();
        self.variables.clear();
        self.summary = None;
        self.started_at = None;
        self.error = None;
    }
}

impl Execution {
    /// A fresh, not yet started execution with every stage and action `NotStarted`.
    pub fn new(
        execution_id: String,
        tenant: &str,
        pipeline: &crate::model::Pipeline,
        plugins: &dyn Fn(&str) -> PluginRef,
        variables: BTreeMap<String, String>,
    ) -> Self {
        let stages = pipeline
            .stages
            .iter()
            .map(|s| StageRun {
                name: s.name.clone(),
                status: Status::NotStarted,
                started_at: None,
                finished_at: None,
                conditions: s.conditions.clone(),
                condition: None,
                checking: None,
                auto_retried: false,
                actions: s
                    .actions
                    .iter()
                    .map(|a| ActionRun {
                        name: a.name.clone(),
                        run_order: a.run_order,
                        namespace: a.namespace.as_ref().map(|n| n.value.clone()),
                        status: Status::NotStarted,
                        attempt: 0,
                        cached_from: None,
                        plugin: plugins(&a.uses.value),
                        config: a
                            .with
                            .iter()
                            .map(|(k, v)| (k.clone(), v.value.clone()))
                            .collect(),
                        kept: BTreeMap::new(),
                        inputs: BTreeMap::new(),
                        artifacts: BTreeMap::new(),
                        variables: BTreeMap::new(),
                        summary: None,
                        started_at: None,
                        finished_at: None,
                        error: None,
                        retry: a.retry.clone(),
                        waiting: None,
                        continuation: None,
                        wake_payload: None,
                        decisions: Vec::new(),
                        runner: None,
                        held_by: None,
                    })
                    .map(super::Shared::new)
                    .collect(),
            })
            .collect();
        Execution {
            execution_id,
            tenant: tenant.to_string(),
            pipeline: pipeline.name.clone(),
            status: Status::NotStarted,
            variables,
            started_at: None,
            finished_at: None,
            stages,
            pipeline_version: 0,
            trigger: None,
            stop_reason: None,
            gated: false,
            mode: pipeline.mode,
            entering: None,
            rollback: None,
            superseded_by: None,
            outbox: Outbox::default(),
        }
    }

    /// A `Rollback` execution: re-runs `stage` of `target` (which succeeded in it) with
    /// `target`'s artifacts and variables. The stages before it are carried over as they
    /// were (they produced those artifacts); it ends when the stage does.
    pub fn rollback_of(
        target: &Execution,
        stage: usize,
        execution_id: String,
        after: Option<String>,
    ) -> Self {
        let mut exec = target.clone();
        exec.execution_id = execution_id;
        exec.status = Status::NotStarted;
        exec.started_at = None;
        exec.finished_at = None;
        exec.stop_reason = None;
        exec.entering = None;
        exec.superseded_by = None;
        exec.outbox = Outbox::default();
        exec.trigger = None;
        exec.rollback = Some(RollbackOf {
            stage: target.stages[stage].name.clone(),
            target: target.execution_id.clone(),
            after,
        });
        for s in exec.stages.iter_mut().skip(stage) {
            s.status = Status::NotStarted;
            s.started_at = None;
            s.finished_at = None;
            s.condition = None;
            s.checking = None;
            s.auto_retried = false;
            for a in s.actions.iter_mut() {
                a.reset();
            }
        }
        exec
    }

    /// Find an action by `STAGE/ACTION` names.
    pub fn find_action(&self, stage: &str, action: &str) -> Option<(usize, usize)> {
        let si = self.stages.iter().position(|s| s.name == stage)?;
        let ai = self.stages[si]
            .actions
            .iter()
            .position(|a| a.name == action)?;
        Some((si, ai))
    }
}
