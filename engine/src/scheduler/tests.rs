//! Table-driven tests of CodePipeline's execution rules.
use super::*;

/// Build an execution from a layout: one `&[u32]` of run_orders per stage.
fn exec(layout: &[&[u32]]) -> Execution {
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
                actions: orders
                    .iter()
                    .enumerate()
                    .map(|(ai, ro)| ActionRun {
                        name: format!("A{ai}"),
                        run_order: *ro,
                        status: Status::NotStarted,
                        attempt: 0,
                        plugin: PluginRef { reference: "noop@1".into(), digest: "blake3:00".into() },
                        config: BTreeMap::new(),
                        inputs: BTreeMap::new(),
                        artifacts: BTreeMap::new(),
                        variables: BTreeMap::new(),
                        summary: None,
                        started_at: None,
                        finished_at: None,
                        error: None,
                        retry: None,
                    })
                    .collect(),
            })
            .collect(),
        pipeline_version: 0,
        trigger: None,
    }
}

fn ok(stage: usize, action: usize) -> Input {
    done(stage, action, 1, true)
}
fn fail(stage: usize, action: usize) -> Input {
    done(stage, action, 1, false)
}
fn done(stage: usize, action: usize, attempt: u32, success: bool) -> Input {
    let result = if success {
        ActionResult::Succeeded { variables: BTreeMap::new(), artifacts: BTreeMap::new(), summary: None }
    } else {
        ActionResult::Failed { error: "boom".into(), kind: FailureKind::Permanent }
    };
    Input::ActionCompleted { stage, action, attempt, result, config: BTreeMap::new(), inputs: BTreeMap::new(), at: Timestamp(2) }
}
fn run(stage: usize, action: usize) -> Command {
    Command::RunAction { stage, action, attempt: 1, delay_ms: 0 }
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
            steps: vec![(ok(0, 0), vec![run(1, 0)]), (ok(1, 0), vec![Command::Finish { status: Succeeded }])],
            status: Succeeded,
            stage_status: vec![Succeeded, Succeeded],
        },
        Case {
            name: "same run_order runs in parallel; next group waits for the whole group",
            layout: &[&[1, 1, 2]],
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![(ok(0, 1), vec![]), (ok(0, 0), vec![run(0, 2)]), (ok(0, 2), vec![Command::Finish { status: Succeeded }])],
            status: Succeeded,
            stage_status: vec![Succeeded],
        },
        Case {
            name: "a failure lets the running group finish, then fails stage and execution",
            layout: &[&[1, 1, 2], &[1]],
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![(fail(0, 0), vec![]), (ok(0, 1), vec![Command::Finish { status: Failed }])],
            status: Failed,
            stage_status: vec![Failed, NotStarted],
        },
        Case {
            name: "a failure in the last group of a stage stops later stages",
            layout: &[&[1], &[1, 2], &[1]],
            on_start: vec![run(0, 0)],
            steps: vec![(ok(0, 0), vec![run(1, 0)]), (ok(1, 0), vec![run(1, 1)]), (fail(1, 1), vec![Command::Finish { status: Failed }])],
            status: Failed,
            stage_status: vec![Succeeded, Failed, NotStarted],
        },
        Case {
            name: "run_order gaps are fine: groups run in ascending order",
            layout: &[&[5, 2, 9]],
            on_start: vec![run(0, 1)],
            steps: vec![(ok(0, 1), vec![run(0, 0)]), (ok(0, 0), vec![run(0, 2)]), (ok(0, 2), vec![Command::Finish { status: Succeeded }])],
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
            steps: vec![(ok(3, 0), vec![]), (ok(0, 4), vec![]), (ok(0, 0), vec![Command::Finish { status: Succeeded }])],
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
        assert_eq!(state.finished_at.is_some(), state.status.is_terminal(), "{}", case.name);
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
        result: ActionResult::Failed { error: format!("attempt {attempt} failed"), kind },
        config: BTreeMap::new(),
        inputs: BTreeMap::new(),
        at: Timestamp(attempt as u64 * 10),
    }
}

fn with_retry(on_timeout: bool) -> Execution {
    let mut e = exec(&[&[1]]);
    e.stages[0].actions[0].retry = Some(RetryPolicy { max_attempts: 3, initial_ms: 100, max_ms: 150, multiplier: 2.0, on_timeout });
    e
}

fn retry_cmd(attempt: u32, delay_ms: u64) -> Command {
    Command::RunAction { stage: 0, action: 0, attempt, delay_ms }
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
            vec![(failed(1, Retryable), vec![retry_cmd(2, 100)]), (failed(2, Retryable), vec![retry_cmd(3, 150)]), (done(0, 0, 3, true), vec![Command::Finish { status: Succeeded }])],
            Succeeded,
            3,
        ),
        ("permanent failures are not retried", false, vec![(failed(1, Permanent), vec![Command::Finish { status: Failed }])], Failed, 1),
        (
            "attempts stop at max_attempts; the last error stays",
            false,
            vec![(failed(1, Retryable), vec![retry_cmd(2, 100)]), (failed(2, Retryable), vec![retry_cmd(3, 150)]), (failed(3, Retryable), vec![Command::Finish { status: Failed }])],
            Failed,
            3,
        ),
        ("timeouts are not retried unless on_timeout", false, vec![(failed(1, Timeout), vec![Command::Finish { status: Failed }])], Failed, 1),
        ("timeouts are retried with on_timeout", true, vec![(failed(1, Timeout), vec![retry_cmd(2, 100)]), (done(0, 0, 2, true), vec![Command::Finish { status: Succeeded }])], Succeeded, 2),
        ("a stale failure of an earlier attempt is ignored", false, vec![(failed(1, Retryable), vec![retry_cmd(2, 100)]), (failed(1, Retryable), vec![]), (done(0, 0, 2, true), vec![Command::Finish { status: Succeeded }])], Succeeded, 2),
    ];
    for (name, on_timeout, steps, final_status, attempts) in cases {
        let (mut state, _) = step(&with_retry(on_timeout), &Input::Start { at: Timestamp(1) });
        for (i, (input, expected)) in steps.iter().enumerate() {
            let (next, cmds) = step(&state, input);
            assert_eq!(&cmds, expected, "{name}: step {i}");
            state = next;
        }
        let a = &state.stages[0].actions[0];
        assert_eq!((state.status, a.attempt), (final_status, attempts), "{name}");
        if final_status == Failed {
            assert_eq!(a.error.as_deref(), Some(format!("attempt {attempts} failed").as_str()), "{name}");
        } else {
            assert_eq!(a.error, None, "{name}");
        }
    }
}
