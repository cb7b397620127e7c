//! Events out: every change of an execution's state leaves as an [`Event`], derived from the
//! record (a diff of statuses), so no change can go unannounced. Where they go (an in-process
//! broadcast, NATS) is the engine's `bus`.
use crate::scheduler::{Execution, Status, Timestamp};
use serde::{Deserialize, Serialize};

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The execution as a whole.
    Pipeline,
    /// A stage.
    Stage,
    /// An action.
    Action,
    /// A trigger event the engine could not act on (it went to the dead letter).
    Trigger,
    /// An action waits for an approval: notify the approvers.
    Approval,
}

impl Kind {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pipeline => "pipeline",
            Kind::Stage => "stage",
            Kind::Action => "action",
            Kind::Trigger => "trigger",
            Kind::Approval => "approval",
        }
    }
}

/// A change of state, with CodePipeline's detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (service mode): `<execution>.<change>.<n>`, the n-th event of the execution's
    /// change number `change`. An event sent again (because the engine that recorded the change
    /// may have died before sending it) has the same id: dedupe on it. The NATS stream does,
    /// within its two-minute duplicate window (`Nats-Msg-Id`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// What kind of thing changed.
    pub kind: Kind,
    /// Tenant.
    pub tenant: String,
    /// Pipeline.
    pub pipeline: String,
    /// Execution.
    pub execution_id: String,
    /// Stage, for stage and action events.
    pub stage: Option<String>,
    /// Action, for action events.
    pub action: Option<String>,
    /// New status.
    pub status: Status,
    /// Attempt, for action events.
    pub attempt: Option<u32>,
    /// When.
    pub at: Timestamp,
    /// Time since the thing started, when it ended.
    pub duration_ms: Option<u64>,
    /// Summary or error, when there is one.
    pub detail: Option<String>,
    /// The registered pipeline version (service mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_version: Option<u64>,
    /// For approval events: what to show the approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalNotice>,
}

/// What an approval notification carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalNotice {
    /// Names this wait; a decision may quote it.
    pub token: String,
    /// When the approval times out.
    pub expires_at: Option<Timestamp>,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// `external_link` of the action.
    pub external_link: Option<String>,
    /// `custom_data` of the action, `#{...}` resolved.
    pub custom_data: Option<String>,
    /// How to decide.
    pub how: String,
    /// The console page of the execution, when the service knows its public URL
    /// (`sluice serve --public-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
}

/// The approval notification for the action (stage, action) of `exec`, if it waits for one.
pub fn approval_event(exec: &Execution, stage: usize, action: usize) -> Option<Event> {
    let s = exec.stages.get(stage)?;
    let a = s.actions.get(action)?;
    let w = a.waiting.as_ref()?;
    Some(Event {
        id: String::new(),
        kind: Kind::Approval,
        tenant: exec.tenant.clone(),
        pipeline: exec.pipeline.clone(),
        execution_id: exec.execution_id.clone(),
        stage: Some(s.name.clone()),
        action: Some(a.name.clone()),
        status: a.status,
        attempt: Some(a.attempt),
        at: w.since,
        duration_ms: None,
        detail: a.summary.clone(),
        pipeline_version: (exec.pipeline_version > 0).then_some(exec.pipeline_version),
        approval: Some(ApprovalNotice {
            token: w.token.clone(),
            expires_at: w.deadline,
            approvers: crate::scheduler::approvers(&a.kept),
            external_link: a.kept.get("external_link").cloned(),
            custom_data: a.kept.get("custom_data").cloned(),
            how: format!(
                "sluice approve {} {}/{} [--summary TEXT]  (or reject)",
                exec.execution_id, s.name, a.name
            ),
            console_url: None,
        }),
    })
}

/// The statuses of an execution, its stages and actions (and action attempts): what events
/// are derived from. Cheap to take before each step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    status: Status,
    stages: Vec<(Status, Vec<(Status, u32)>)>,
}

impl Snapshot {
    /// The snapshot of `exec` before it started: diffing against it replays every change.
    pub fn blank(exec: &Execution) -> Self {
        Snapshot {
            status: Status::NotStarted,
            stages: exec
                .stages
                .iter()
                .map(|s| {
                    (
                        Status::NotStarted,
                        s.actions.iter().map(|_| (Status::NotStarted, 0)).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Take a snapshot.
    pub fn of(exec: &Execution) -> Self {
        Snapshot {
            status: exec.status,
            stages: exec
                .stages
                .iter()
                .map(|s| {
                    (
                        s.status,
                        s.actions.iter().map(|a| (a.status, a.attempt)).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// The events of the execution's last recorded change (its [`Outbox`](crate::scheduler::Outbox)),
/// with their ids: `<execution>.<change>.<n>`. The same on every engine that derives them.
pub fn outbox_events(exec: &Execution) -> Vec<Event> {
    let mut events = exec.outbox.earlier.clone();
    // Stored without what the record says already (see `stored_events`).
    for e in &mut events {
        if e.execution_id.is_empty() {
            e.tenant.clone_from(&exec.tenant);
            e.pipeline.clone_from(&exec.pipeline);
            e.execution_id.clone_from(&exec.execution_id);
            e.pipeline_version = (exec.pipeline_version > 0).then_some(exec.pipeline_version);
        }
    }
    events.extend(change_events(exec));
    events
}

/// The outbox's `earlier` events as an execution record stores them: without what the record
/// says itself (tenant, pipeline, execution, pipeline version; [`outbox_events`] puts them back)
/// and without empty fields. A chain's write may carry many; a record that keeps them (one that
/// waits for an approval, or ended) stays small. Records that stored them whole read the same.
pub(crate) mod stored_events {
    use super::{ApprovalNotice, Event, Kind};
    use crate::scheduler::{Status, Timestamp};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Stored {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        id: String,
        kind: Kind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<ApprovalNotice>,
    }

    pub(crate) fn serialize<S: Serializer>(events: &[Event], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(events.iter().map(|e| Stored {
            id: e.id.clone(),
            kind: e.kind,
            stage: e.stage.clone(),
            action: e.action.clone(),
            status: e.status,
            attempt: e.attempt,
            at: e.at,
            duration_ms: e.duration_ms,
            detail: e.detail.clone(),
            approval: e.approval.clone(),
        }))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        let stored = Vec::<Stored>::deserialize(d)?;
        Ok(stored
            .into_iter()
            .map(|s| Event {
                id: s.id,
                kind: s.kind,
                tenant: String::new(),
                pipeline: String::new(),
                execution_id: String::new(),
                stage: s.stage,
                action: s.action,
                status: s.status,
                attempt: s.attempt,
                at: s.at,
                duration_ms: s.duration_ms,
                detail: s.detail,
                pipeline_version: None,
                approval: s.approval,
            })
            .collect())
    }
}

/// The events of the last recorded change alone (without the outbox's `earlier` ones).
pub fn change_events(exec: &Execution) -> Vec<Event> {
    let outbox = &exec.outbox;
    let Some(before) = &outbox.before else {
        return Vec::new();
    };
    let mut events = diff(before, exec);
    events.extend(
        outbox
            .notices
            .iter()
            .filter_map(|&(stage, action)| approval_event(exec, stage, action)),
    );
    for (n, e) in events.iter_mut().enumerate() {
        e.id = format!("{}.{}.{n}", exec.execution_id, outbox.change);
    }
    events
}

/// The events that take the state `before` (a [`Snapshot`]) to `after`: one per execution,
/// stage or action whose status (or action attempt) changed. Deriving events from state means
/// no change can go unannounced.
pub fn diff(before: &Snapshot, after: &Execution) -> Vec<Event> {
    advance(&mut before.clone(), after)
}

/// [`diff`], and `seen` becomes the snapshot of `after`, in the same pass: an executor that
/// keeps one snapshot across its steps need not take a new one before each.
pub fn advance(seen: &mut Snapshot, after: &Execution) -> Vec<Event> {
    advance_in(seen, after, Scope::All)
}

/// Which actions one scheduler step may have changed: what [`advance_in`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Any action of the execution.
    All,
    /// The actions of this stage, and of every stage whose own status changed. True of a step
    /// whose input names this stage: the scheduler then changes actions only there, or in a
    /// stage it enters, leaves or finishes (whose status thus changes).
    Stage(usize),
}

impl Scope {
    /// The scope of one step on `input`.
    pub fn of(input: &crate::scheduler::Input) -> Scope {
        use crate::scheduler::Input;
        match input {
            Input::ActionCompleted { stage, .. }
            | Input::Decide { stage, .. }
            | Input::Expire { stage, .. }
            | Input::Wake { stage, .. }
            | Input::Checked { stage, .. }
            | Input::Admit { stage, .. }
            | Input::Supersede { stage, .. } => Scope::Stage(*stage),
            // A stop abandons waiting actions wherever they are. Start and retry are rare:
            // they compare everything.
            Input::Start { .. } | Input::Stop { .. } | Input::Retry { .. } => Scope::All,
        }
    }
}

/// [`advance`] over what one step in `scope` may have changed: a step of a long pipeline
/// compares one stage's actions, not every action of the execution.
pub fn advance_in(seen: &mut Snapshot, after: &Execution, scope: Scope) -> Vec<Event> {
    #[cfg(debug_assertions)]
    let expected = (scope != Scope::All).then(|| advance_in(&mut seen.clone(), after, Scope::All));
    let base =
        |kind, stage: Option<&str>, action: Option<&str>, status, at: Option<Timestamp>| Event {
            id: String::new(),
            kind,
            tenant: after.tenant.clone(),
            pipeline: after.pipeline.clone(),
            execution_id: after.execution_id.clone(),
            stage: stage.map(str::to_string),
            action: action.map(str::to_string),
            status,
            attempt: None,
            // The same on every engine that derives it: the record's own latest time, never the clock.
            at: at
                .or(after.finished_at)
                .or(after.started_at)
                .unwrap_or(Timestamp(0)),
            duration_ms: None,
            detail: None,
            pipeline_version: (after.pipeline_version > 0).then_some(after.pipeline_version),
            approval: None,
        };
    // Sort key: what finished first (actions before their stage), then what started
    // (pipeline, stage, its actions), and the pipeline's own end last.
    let mut out: Vec<((u8, usize, u8), Event)> = Vec::new();
    let span = |s: Option<Timestamp>, f: Option<Timestamp>| match (s, f) {
        (Some(s), Some(f)) => Some(f.since(s).as_millis() as u64),
        _ => None,
    };
    if seen.status != after.status {
        let mut e = base(
            Kind::Pipeline,
            None,
            None,
            after.status,
            after.finished_at.or(after.started_at),
        );
        e.duration_ms = span(after.started_at, after.finished_at);
        out.push((
            if after.status.is_terminal() {
                (2, 0, 0)
            } else {
                (1, 0, 0)
            },
            e,
        ));
        seen.status = after.status;
    }
    for (si, ((stage_before, actions_before), sa)) in
        seen.stages.iter_mut().zip(&after.stages).enumerate()
    {
        if *stage_before != sa.status {
            let mut e = base(
                Kind::Stage,
                Some(&sa.name),
                None,
                sa.status,
                sa.finished_at.or(sa.started_at),
            );
            e.duration_ms = span(sa.started_at, sa.finished_at);
            out.push((
                if sa.status.is_terminal() {
                    (0, si, 1)
                } else {
                    (1, si + 1, 0)
                },
                e,
            ));
            *stage_before = sa.status;
        } else if matches!(scope, Scope::Stage(only) if only != si) {
            continue;
        }
        for ((status_before, attempt_before), aa) in actions_before.iter_mut().zip(&sa.actions) {
            if *status_before != aa.status || *attempt_before != aa.attempt {
                let mut e = base(
                    Kind::Action,
                    Some(&sa.name),
                    Some(&aa.name),
                    aa.status,
                    aa.finished_at.or(aa.started_at),
                );
                e.attempt = Some(aa.attempt);
                e.duration_ms = span(aa.started_at, aa.finished_at);
                e.detail = aa
                    .error
                    .clone()
                    .or_else(|| {
                        aa.cached_from
                            .as_ref()
                            .map(|f| format!("(cached from {f})"))
                    })
                    .or_else(|| aa.summary.clone());
                out.push((
                    if aa.status.is_terminal() {
                        (0, si, 0)
                    } else {
                        (1, si + 1, 1)
                    },
                    e,
                ));
                (*status_before, *attempt_before) = (aa.status, aa.attempt);
            }
        }
    }
    out.sort_by_key(|(k, _)| *k);
    let events: Vec<Event> = out.into_iter().map(|(_, e)| e).collect();
    // Every test run checks the scope's promise against the full comparison.
    #[cfg(debug_assertions)]
    if let Some(expected) = expected {
        let key = |e: &Event| {
            (
                e.kind,
                e.stage.clone(),
                e.action.clone(),
                e.status,
                e.attempt,
            )
        };
        assert_eq!(
            events.iter().map(key).collect::<Vec<_>>(),
            expected.iter().map(key).collect::<Vec<_>>(),
            "a step in {scope:?} changed actions outside it"
        );
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events kept in a record's outbox are stored without what the record says itself, come
    /// back whole, and records that stored them whole (before) read the same.
    #[test]
    fn outbox_events_are_stored_compactly_and_read_back_whole() {
        let event = |id: &str| Event {
            id: id.into(),
            kind: Kind::Action,
            tenant: "acme".into(),
            pipeline: "web".into(),
            execution_id: "01X".into(),
            stage: Some("Build".into()),
            action: Some("Compile".into()),
            status: Status::Succeeded,
            attempt: Some(1),
            at: Timestamp(1_700_000_000_000),
            duration_ms: Some(12),
            detail: None,
            pipeline_version: Some(3),
            approval: None,
        };
        let mut exec: Execution = serde_json::from_value(serde_json::json!({
            "execution_id": "01X", "tenant": "acme", "pipeline": "web", "status": "InProgress",
            "variables": {}, "stages": [], "pipeline_version": 3
        }))
        .unwrap();
        exec.outbox.change = 2;
        exec.outbox.earlier = vec![event("01X.1.0")];
        let stored = serde_json::to_value(&exec).unwrap();
        let kept = &stored["outbox"]["earlier"][0];
        for redundant in [
            "tenant",
            "pipeline",
            "execution_id",
            "pipeline_version",
            "detail",
        ] {
            assert!(
                kept.get(redundant).is_none(),
                "{redundant} is not stored: {kept}"
            );
        }
        let read: Execution = serde_json::from_value(stored).unwrap();
        assert_eq!(outbox_events(&read), vec![event("01X.1.0")]);
        // A record written before: its events stored whole.
        let mut whole = serde_json::to_value(&exec).unwrap();
        whole["outbox"]["earlier"] =
            serde_json::json!([serde_json::to_value(event("01X.1.0")).unwrap()]);
        let read: Execution = serde_json::from_value(whole).unwrap();
        assert_eq!(outbox_events(&read), vec![event("01X.1.0")]);
    }
}
