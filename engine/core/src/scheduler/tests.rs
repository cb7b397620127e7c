//! Table-driven tests of CodePipeline's execution rules.
#![allow(clippy::type_complexity)] // table tests: each row is a tuple
use super::*;

/// Build an execution from a layout: one `&[u32]` of run_orders per stage.
pub(super) fn exec(layout: &[&[u32]]) -> Execution {
    Execution {
        execution_id: "e1".into(),
        tenant: "default".into(),
        pipeline: "p".into(),
        status: Status::NotStarted,
        variables: BTreeMap::new(),
        started_at: None,
        finished_at: None,
        stages: layout
            .iter()
            .enumerate()
            .map(|(si, orders)| StageRun {
                name: format!("S{si}"),
                status: Status::NotStarted,
                started_at: None,
                finished_at: None,
                conditions: StageConditions::default(),
                condition: None,
                checking: None,
                auto_retried: false,
                actions: orders
                    .iter()
                    .enumerate()
                    .map(|(ai, ro)| ActionRun {
                        name: format!("A{ai}"),
                        run_order: *ro,
                        namespace: None,
                        status: Status::NotStarted,
                        attempt: 0,
                        cached_from: None,
                        plugin: PluginRef {
                            reference: "noop@1".into(),
                            digest: "blake3:00".into(),
                        },
                        config: BTreeMap::new(),
                        kept: BTreeMap::new(),
                        inputs: BTreeMap::new(),
                        artifacts: BTreeMap::new(),
                        variables: BTreeMap::new(),
                        summary: None,
                        started_at: None,
                        finished_at: None,
                        error: None,
                        retry: None,
                        waiting: None,
                        continuation: None,
                        wake_payload: None,
                        decisions: Vec::new(),
                        runner: None,
                        held_by: None,
                    })
                    .map(Shared::new)
                    .collect(),
            })
            .collect(),
        pipeline_version: 0,
        trigger: None,
        stop_reason: None,
        gated: false,
        mode: Mode::Superseded,
        entering: None,
        rollback: None,
        superseded_by: None,
        outbox: Default::default(),
    }
}

pub(super) fn ok(stage: usize, action: usize) -> Input {
    done(stage, action, 1, true)
}
pub(super) fn fail(stage: usize, action: usize) -> Input {
    done(stage, action, 1, false)
}
fn done(stage: usize, action: usize, attempt: u32, success: bool) -> Input {
    let result = if success {
        ActionResult::Succeeded {
            variables: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            summary: None,
            cached_from: None,
        }
    } else {
        ActionResult::Failed {
            error: "boom".into(),
            kind: FailureKind::Permanent,
        }
    };
    Input::ActionCompleted {
        stage,
        action,
        attempt,
        result,
        kept: BTreeMap::new(),
        inputs: BTreeMap::new(),
        at: Timestamp(2),
    }
}
pub(super) fn run(stage: usize, action: usize) -> Command {
    Command::RunAction {
        stage,
        action,
        attempt: 1,
        delay_ms: 0,
    }
}

struct Case {
    name: &'static str,
    layout: &'static [&'static [u32]],
    /// Inputs after Start, each with the commands it must produce.
    steps: Vec<(Input, Vec<Command>)>,
    /// Commands Start must produce.
    on_start: Vec<Command>,
    status: Status,
    stage_status: Vec<Status>,
}

#[test]
fn codepipeline_rules() {
    use Status::*;
    let cases = vec![
        Case {
            name: "stages run in order, one action each",
            layout: &[&[1], &[1]],
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(1, 0)]),
                (ok(1, 0), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded, Succeeded],
        },
        Case {
            name: "same run_order runs in parallel; next group waits for the whole group",
            layout: &[&[1, 1, 2]],
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![
                (ok(0, 1), vec![]),
                (ok(0, 0), vec![run(0, 2)]),
                (ok(0, 2), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded],
        },
        Case {
            name: "a failure lets the running group finish, then fails stage and execution",
            layout: &[&[1, 1, 2], &[1]],
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![
                (fail(0, 0), vec![]),
                (ok(0, 1), vec![Command::Finish { status: Failed }]),
            ],
            status: Failed,
            stage_status: vec![Failed, NotStarted],
        },
        Case {
            name: "a failure in the last group of a stage stops later stages",
            layout: &[&[1], &[1, 2], &[1]],
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(1, 0)]),
                (ok(1, 0), vec![run(1, 1)]),
                (fail(1, 1), vec![Command::Finish { status: Failed }]),
            ],
            status: Failed,
            stage_status: vec![Succeeded, Failed, NotStarted],
        },
        Case {
            name: "run_order gaps are fine: groups run in ascending order",
            layout: &[&[5, 2, 9]],
            on_start: vec![run(0, 1)],
            steps: vec![
                (ok(0, 1), vec![run(0, 0)]),
                (ok(0, 0), vec![run(0, 2)]),
                (ok(0, 2), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded],
        },
        Case {
            name: "duplicate and stale completions are ignored",
            layout: &[&[1, 1]],
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![
                (ok(0, 0), vec![]),
                (ok(0, 0), vec![]),
                (done(0, 1, 7, false), vec![]),
                (ok(0, 1), vec![Command::Finish { status: Succeeded }]),
                (fail(0, 1), vec![]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded],
        },
        Case {
            name: "completions for unknown actions change nothing",
            layout: &[&[1]],
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(3, 0), vec![]),
                (ok(0, 4), vec![]),
                (ok(0, 0), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded],
        },
    ];
    for case in cases {
        let start = exec(case.layout);
        let (mut state, cmds) = step(&start, &Input::Start { at: Timestamp(1) });
        assert_eq!(cmds, case.on_start, "{}: start", case.name);
        for (i, (input, expected)) in case.steps.iter().enumerate() {
            let (next, cmds) = step(&state, input);
            assert_eq!(&cmds, expected, "{}: step {i} ({input:?})", case.name);
            state = next;
        }
        assert_eq!(state.status, case.status, "{}", case.name);
        let stages: Vec<Status> = state.stages.iter().map(|s| s.status).collect();
        assert_eq!(stages, case.stage_status, "{}", case.name);
        assert_eq!(
            state.finished_at.is_some(),
            state.status.is_terminal(),
            "{}",
            case.name
        );
    }
}

#[test]
fn second_start_is_a_no_op() {
    let (state, _) = step(&exec(&[&[1]]), &Input::Start { at: Timestamp(1) });
    let (again, cmds) = step(&state, &Input::Start { at: Timestamp(5) });
    assert!(cmds.is_empty());
    assert_eq!(again, state);
}

#[test]
fn failed_action_records_error_and_not_started_actions_stay_untouched() {
    let (s, _) = step(&exec(&[&[1, 2]]), &Input::Start { at: Timestamp(1) });
    let (s, _) = step(&s, &fail(0, 0));
    assert_eq!(s.stages[0].actions[0].error.as_deref(), Some("boom"));
    assert_eq!(s.stages[0].actions[1].status, Status::NotStarted);
    assert_eq!(s.stages[0].actions[1].attempt, 0);
}

fn failed(attempt: u32, kind: FailureKind) -> Input {
    Input::ActionCompleted {
        stage: 0,
        action: 0,
        attempt,
        result: ActionResult::Failed {
            error: format!("attempt {attempt} failed"),
            kind,
        },
        kept: BTreeMap::new(),
        inputs: BTreeMap::new(),
        at: Timestamp(attempt as u64 * 10),
    }
}

fn with_retry(on_timeout: bool) -> Execution {
    let mut e = exec(&[&[1]]);
    e.stages[0].actions[0].retry = Some(RetryPolicy {
        max_attempts: 3,
        initial_ms: 100,
        max_ms: 150,
        multiplier: 2.0,
        on_timeout,
    });
    e
}

fn retry_cmd(attempt: u32, delay_ms: u64) -> Command {
    Command::RunAction {
        stage: 0,
        action: 0,
        attempt,
        delay_ms,
    }
}

#[test]
fn automatic_retry_rules() {
    use FailureKind::*;
    use Status::*;
    // (policy allows timeouts?, failures in order, expected commands after each, final status, attempts)
    let cases: Vec<(&str, bool, Vec<(Input, Vec<Command>)>, Status, u32)> = vec![
        (
            "retryable failures are retried with growing, capped backoff until success",
            false,
            vec![
                (failed(1, Retryable), vec![retry_cmd(2, 100)]),
                (failed(2, Retryable), vec![retry_cmd(3, 150)]),
                (
                    done(0, 0, 3, true),
                    vec![Command::Finish { status: Succeeded }],
                ),
            ],
            Succeeded,
            3,
        ),
        (
            "permanent failures are not retried",
            false,
            vec![(
                failed(1, Permanent),
                vec![Command::Finish { status: Failed }],
            )],
            Failed,
            1,
        ),
        (
            "attempts stop at max_attempts; the last error stays",
            false,
            vec![
                (failed(1, Retryable), vec![retry_cmd(2, 100)]),
                (failed(2, Retryable), vec![retry_cmd(3, 150)]),
                (
                    failed(3, Retryable),
                    vec![Command::Finish { status: Failed }],
                ),
            ],
            Failed,
            3,
        ),
        (
            "timeouts are not retried unless on_timeout",
            false,
            vec![(failed(1, Timeout), vec![Command::Finish { status: Failed }])],
            Failed,
            1,
        ),
        (
            "timeouts are retried with on_timeout",
            true,
            vec![
                (failed(1, Timeout), vec![retry_cmd(2, 100)]),
                (
                    done(0, 0, 2, true),
                    vec![Command::Finish { status: Succeeded }],
                ),
            ],
            Succeeded,
            2,
        ),
        (
            "a stale failure of an earlier attempt is ignored",
            false,
            vec![
                (failed(1, Retryable), vec![retry_cmd(2, 100)]),
                (failed(1, Retryable), vec![]),
                (
                    done(0, 0, 2, true),
                    vec![Command::Finish { status: Succeeded }],
                ),
            ],
            Succeeded,
            2,
        ),
    ];
    for (name, on_timeout, steps, final_status, attempts) in cases {
        let (mut state, _) = step(&with_retry(on_timeout), &Input::Start { at: Timestamp(1) });
        for (i, (input, expected)) in steps.iter().enumerate() {
            let (next, cmds) = step(&state, input);
            assert_eq!(&cmds, expected, "{name}: step {i}");
            state = next;
        }
        let a = &state.stages[0].actions[0];
        assert_eq!(
            (state.status, a.attempt),
            (final_status, attempts),
            "{name}"
        );
        if final_status == Failed {
            assert_eq!(
                a.error.as_deref(),
                Some(format!("attempt {attempts} failed").as_str()),
                "{name}"
            );
        } else {
            assert_eq!(a.error, None, "{name}");
        }
    }
}

fn stop(abandon: bool) -> Input {
    Input::Stop {
        abandon,
        reason: Some("bad deploy".into()),
        at: Timestamp(3),
    }
}

fn retry(stage: usize, all: bool) -> Input {
    Input::Retry {
        stage,
        all,
        at: Timestamp(4),
    }
}

fn statuses(e: &Execution) -> Vec<Vec<Status>> {
    e.stages
        .iter()
        .map(|s| s.actions.iter().map(|a| a.status).collect())
        .collect()
}

fn attempt(stage: usize, action: usize, attempt: u32) -> Command {
    Command::RunAction {
        stage,
        action,
        attempt,
        delay_ms: 0,
    }
}

#[test]
fn operator_controls_stop_and_retry() {
    use Status::*;
    struct Control {
        name: &'static str,
        layout: &'static [&'static [u32]],
        steps: Vec<(Input, Vec<Command>)>,
        status: Status,
        stages: Vec<Status>,
        actions: Vec<Vec<Status>>,
    }
    let finish = |status| Command::Finish { status };
    let cases = vec![
        Control {
            name: "stop without abandon: running actions finish, nothing new starts",
            layout: &[&[1, 1, 2], &[1]],
            steps: vec![
                (stop(false), vec![]),
                (ok(0, 0), vec![]),
                (fail(0, 1), vec![finish(Stopped)]),
            ],
            status: Stopped,
            stages: vec![Stopped, NotStarted],
            actions: vec![vec![Succeeded, Failed, NotStarted], vec![NotStarted]],
        },
        Control {
            name: "stop with abandon: running actions are abandoned at once; late results are ignored",
            layout: &[&[1, 1], &[1]],
            steps: vec![
                (ok(0, 0), vec![]),
                (stop(true), vec![finish(Stopped)]),
                (ok(0, 1), vec![]),
            ],
            status: Stopped,
            stages: vec![Stopped, NotStarted],
            actions: vec![vec![Succeeded, Abandoned], vec![NotStarted]],
        },
        Control {
            name: "abandon escalates a stop that is waiting",
            layout: &[&[1]],
            steps: vec![(stop(false), vec![]), (stop(true), vec![finish(Stopped)])],
            status: Stopped,
            stages: vec![Stopped],
            actions: vec![vec![Abandoned]],
        },
        Control {
            name: "stopping a finished execution changes nothing",
            layout: &[&[1]],
            steps: vec![(ok(0, 0), vec![finish(Succeeded)]), (stop(true), vec![])],
            status: Succeeded,
            stages: vec![Succeeded],
            actions: vec![vec![Succeeded]],
        },
        Control {
            name: "retry re-runs only the failed action of the failed stage (attempt 2), then carries on",
            layout: &[&[1, 1], &[1]],
            steps: vec![
                (ok(0, 0), vec![]),
                (fail(0, 1), vec![finish(Failed)]),
                (retry(0, false), vec![attempt(0, 1, 2)]),
                (done(0, 1, 2, true), vec![run(1, 0)]),
                (ok(1, 0), vec![finish(Succeeded)]),
            ],
            status: Succeeded,
            stages: vec![Succeeded, Succeeded],
            actions: vec![vec![Succeeded, Succeeded], vec![Succeeded]],
        },
        Control {
            name: "retry --all re-runs every action of the stage",
            layout: &[&[1, 1]],
            steps: vec![
                (ok(0, 0), vec![]),
                (fail(0, 1), vec![finish(Failed)]),
                (retry(0, true), vec![attempt(0, 0, 2), attempt(0, 1, 2)]),
            ],
            status: InProgress,
            stages: vec![InProgress],
            actions: vec![vec![InProgress, InProgress]],
        },
        Control {
            name: "retry of a stopped stage runs its abandoned and never-started actions in run order",
            layout: &[&[1, 2]],
            steps: vec![
                (stop(true), vec![finish(Stopped)]),
                (retry(0, false), vec![attempt(0, 0, 2)]),
                (done(0, 0, 2, true), vec![run(0, 1)]),
            ],
            status: InProgress,
            stages: vec![InProgress],
            actions: vec![vec![Succeeded, InProgress]],
        },
        Control {
            name: "retry is refused for a running execution or a stage that did not fail",
            layout: &[&[1], &[1]],
            steps: vec![
                (retry(0, false), vec![]),
                (ok(0, 0), vec![run(1, 0)]),
                (fail(1, 0), vec![finish(Failed)]),
                (retry(0, false), vec![]),
            ],
            status: Failed,
            stages: vec![Succeeded, Failed],
            actions: vec![vec![Succeeded], vec![Failed]],
        },
    ];
    for case in cases {
        let (mut state, _) = step(&exec(case.layout), &Input::Start { at: Timestamp(1) });
        for (i, (input, expected)) in case.steps.iter().enumerate() {
            let (next, cmds) = step(&state, input);
            assert_eq!(&cmds, expected, "{}: step {i} ({input:?})", case.name);
            state = next;
        }
        assert_eq!(state.status, case.status, "{}", case.name);
        assert_eq!(
            state.stages.iter().map(|s| s.status).collect::<Vec<_>>(),
            case.stages,
            "{}",
            case.name
        );
        assert_eq!(statuses(&state), case.actions, "{}", case.name);
        assert_eq!(
            state.finished_at.is_some(),
            state.status.is_terminal(),
            "{}",
            case.name
        );
    }
}

#[test]
fn refusals_explain_why_a_control_does_not_apply() {
    let (running, _) = step(&exec(&[&[1]]), &Input::Start { at: Timestamp(1) });
    assert!(super::refusal(&running, &stop(false)).is_none());
    assert!(
        super::refusal(&running, &retry(0, false))
            .unwrap()
            .contains("only a failed or stopped execution")
    );
    let (stopping, _) = step(&running, &stop(false));
    assert!(
        super::refusal(&stopping, &stop(false))
            .unwrap()
            .contains("--abandon")
    );
    let (done, _) = step(&running, &ok(0, 0));
    assert!(
        super::refusal(&done, &stop(true))
            .unwrap()
            .contains("Succeeded")
    );
    assert_eq!(stopping.stop_reason.as_deref(), Some("bad deploy"));
}

fn pending(stage: usize, action: usize, attempt: u32, wake: Wake) -> Input {
    Input::ActionCompleted {
        stage,
        action,
        attempt,
        result: ActionResult::Pending {
            continuation: format!("c{attempt}"),
            wake,
            summary: Some("waiting".into()),
            percent: Some(40),
            deadline: Some(Timestamp(1000)),
        },
        kept: BTreeMap::from([("approvers".to_string(), "ana, bo".to_string())]),
        inputs: BTreeMap::new(),
        at: Timestamp(5),
    }
}

fn decide(by: &str, approved: bool) -> Input {
    Input::Decide {
        stage: 0,
        action: 0,
        decision: Decision {
            approved,
            by: by.into(),
            at: Timestamp(6),
            summary: None,
        },
        at: Timestamp(6),
    }
}

fn started_by(who: &str) -> Execution {
    let mut e = exec(&[&[1], &[1]]);
    e.trigger = Some(TriggerInfo {
        event_id: "e".into(),
        kind: "manual".into(),
        started_by: Some(who.into()),
        ..Default::default()
    });
    e
}

#[test]
fn waiting_rules() {
    use Status::*;
    let await_cmd = |attempt| Command::Await {
        stage: 0,
        action: 0,
        attempt,
    };
    // (name, inputs after start with expected commands, final action status, attempt, decisions)
    let cases: Vec<(&str, Vec<(Input, Vec<Command>)>, Status, u32, usize)> = vec![
        (
            "pending on approval waits (InProgress); a decision wakes attempt 2 with the decisions",
            vec![
                (pending(0, 0, 1, Wake::Approval), vec![await_cmd(1)]),
                (decide("ana", true), vec![attempt(0, 0, 2)]),
                (done(0, 0, 2, true), vec![run(1, 0)]),
            ],
            Succeeded,
            2,
            1,
        ),
        (
            "a timer is a delayed next attempt",
            vec![(
                pending(0, 0, 1, Wake::Timer(250)),
                vec![Command::RunAction {
                    stage: 0,
                    action: 0,
                    attempt: 2,
                    delay_ms: 250,
                }],
            )],
            InProgress,
            2,
            0,
        ),
        (
            "the one who started the execution may not approve it; strangers neither; nothing changes",
            vec![
                (pending(0, 0, 1, Wake::Approval), vec![await_cmd(1)]),
                (decide("cy", true), vec![]),
                (decide("zed", true), vec![]),
            ],
            InProgress,
            1,
            0,
        ),
        (
            "a second decision by the same approver is refused; the other approver's counts",
            vec![
                (pending(0, 0, 1, Wake::Approval), vec![await_cmd(1)]),
                (decide("ana", true), vec![attempt(0, 0, 2)]),
                (pending(0, 0, 2, Wake::Approval), vec![await_cmd(2)]),
                (decide("ana", false), vec![]),
                (decide("bo", false), vec![attempt(0, 0, 3)]),
            ],
            InProgress,
            3,
            2,
        ),
        (
            "a decision for an action that is not waiting changes nothing",
            vec![(decide("ana", true), vec![])],
            InProgress,
            1,
            0,
        ),
        (
            "expiry fails the waiting action with the reason; a stale expiry is ignored",
            vec![
                (pending(0, 0, 1, Wake::Approval), vec![await_cmd(1)]),
                (
                    Input::Expire {
                        stage: 0,
                        action: 0,
                        attempt: 9,
                        reason: "stale".into(),
                        at: Timestamp(7),
                    },
                    vec![],
                ),
                (
                    Input::Expire {
                        stage: 0,
                        action: 0,
                        attempt: 1,
                        reason: "timeout: no decision within 7d".into(),
                        at: Timestamp(7),
                    },
                    vec![Command::Finish { status: Failed }],
                ),
            ],
            Failed,
            1,
            0,
        ),
        (
            "an event wake carries its payload to the next attempt",
            vec![
                (
                    pending(0, 0, 1, Wake::Event("deploys.done".into())),
                    vec![await_cmd(1)],
                ),
                (decide("ana", true), vec![]),
                (
                    Input::Wake {
                        stage: 0,
                        action: 0,
                        payload: Some("{\"ok\":true}".into()),
                        at: Timestamp(8),
                    },
                    vec![attempt(0, 0, 2)],
                ),
            ],
            InProgress,
            2,
            0,
        ),
        (
            "stop abandons a waiting action at once",
            vec![
                (pending(0, 0, 1, Wake::Approval), vec![await_cmd(1)]),
                (stop(false), vec![Command::Finish { status: Stopped }]),
            ],
            Abandoned,
            1,
            0,
        ),
    ];
    for (name, steps, final_status, attempts, decisions) in cases {
        let (mut state, _) = step(&started_by("cy"), &Input::Start { at: Timestamp(1) });
        for (i, (input, expected)) in steps.iter().enumerate() {
            let (next, cmds) = step(&state, input);
            assert_eq!(&cmds, expected, "{name}: step {i} ({input:?})");
            state = next;
        }
        let a = &state.stages[0].actions[0];
        assert_eq!(
            (a.status, a.attempt, a.decisions.len()),
            (final_status, attempts, decisions),
            "{name}"
        );
    }
}

#[test]
fn a_woken_attempt_gets_its_continuation_and_payload() {
    let (s, _) = step(&started_by("cy"), &Input::Start { at: Timestamp(1) });
    let (s, _) = step(&s, &pending(0, 0, 1, Wake::Approval));
    let w = s.stages[0].actions[0].waiting.clone().unwrap();
    assert_eq!(
        (w.wake, w.percent, w.deadline),
        (Wake::Approval, Some(40), Some(Timestamp(1000)))
    );
    assert!(
        super::refusal(&s, &decide("cy", true))
            .unwrap()
            .contains("started this execution")
    );
    assert!(
        super::refusal(&s, &decide("zed", true))
            .unwrap()
            .contains("not an approver")
    );
    let (s, _) = step(&s, &decide("bo", false));
    let a = &s.stages[0].actions[0];
    assert_eq!(a.continuation.as_deref(), Some("c1"));
    assert!(a.wake_payload.as_deref().unwrap().contains("\"by\":\"bo\""));
    assert!(a.waiting.is_none());
    // While bo's decision is taken in: ana's waits for the approval to wait again, a second
    // one from bo is told so at once.
    assert!(
        super::refusal(&s, &decide("ana", true))
            .unwrap()
            .contains("not waiting for an approval")
    );
    assert!(super::settling(&s, &decide("ana", true)));
    assert!(
        super::refusal(&s, &decide("bo", true))
            .unwrap()
            .contains("bo has already decided on")
    );
    assert!(!super::settling(&s, &decide("bo", true)));
    let (s, _) = step(&s, &pending(0, 0, 2, Wake::Approval));
    assert!(!super::settling(&s, &decide("ana", true)));
    assert!(super::refusal(&s, &decide("ana", true)).is_none());
}
