//! Table-driven tests of the operating rules: execution modes and transitions (lanes),
//! gated stage entry, supersession, rollback executions and stage conditions.
use super::conditions::{Condition, Operator, Outcome, Phase, Rule, check};
use super::lanes::{self, Disabled, Effect, LaneOp, Lanes};
use super::tests::{exec, fail, ok, run};
use super::*;

fn arrive(id: &str, stage: &str, mode: Mode) -> LaneOp {
    LaneOp::Arrive {
        execution: id.into(),
        stage: stage.into(),
        mode,
    }
}
fn leave(id: &str, stage: &str) -> LaneOp {
    LaneOp::Leave {
        execution: id.into(),
        stage: stage.into(),
    }
}
fn disable(stage: &str) -> LaneOp {
    LaneOp::Disable {
        stage: stage.into(),
        disabled: Disabled {
            reason: "freeze".into(),
            by: "ops".into(),
            at: Timestamp(1),
        },
    }
}
fn enable(stage: &str) -> LaneOp {
    LaneOp::Enable {
        stage: stage.into(),
    }
}
fn admit(id: &str, stage: &str) -> Effect {
    Effect::Admit {
        execution: id.into(),
        stage: stage.into(),
    }
}
fn supersede(id: &str, stage: &str, by: &str) -> Effect {
    Effect::Supersede {
        execution: id.into(),
        stage: stage.into(),
        by: by.into(),
    }
}

struct LaneCase {
    name: &'static str,
    steps: Vec<(LaneOp, Vec<Effect>)>,
    /// (stage, inside, waiting) at the end.
    end: Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)>,
}

#[test]
fn execution_modes_and_transitions() {
    use Mode::*;
    let cases = vec![
        LaneCase {
            name: "superseded: one inside; a newer arrival replaces the one waiting",
            steps: vec![
                (
                    arrive("e1", "Build", Superseded),
                    vec![admit("e1", "Build")],
                ),
                (arrive("e2", "Build", Superseded), vec![]),
                (
                    arrive("e3", "Build", Superseded),
                    vec![supersede("e2", "Build", "e3")],
                ),
                (leave("e1", "Build"), vec![admit("e3", "Build")]),
            ],
            end: vec![("Build", vec!["e3"], vec![])],
        },
        LaneCase {
            name: "superseded: an older execution arriving after a newer one is the one replaced",
            steps: vec![
                (
                    arrive("e1", "Build", Superseded),
                    vec![admit("e1", "Build")],
                ),
                (arrive("e3", "Build", Superseded), vec![]),
                (
                    arrive("e2", "Build", Superseded),
                    vec![supersede("e2", "Build", "e3")],
                ),
            ],
            end: vec![("Build", vec!["e1"], vec!["e3"])],
        },
        LaneCase {
            name: "queued: first in, first out, one inside at a time",
            steps: vec![
                (arrive("e1", "Build", Queued), vec![admit("e1", "Build")]),
                (arrive("e2", "Build", Queued), vec![]),
                (arrive("e3", "Build", Queued), vec![]),
                (leave("e1", "Build"), vec![admit("e2", "Build")]),
                (leave("e2", "Build"), vec![admit("e3", "Build")]),
            ],
            end: vec![("Build", vec!["e3"], vec![])],
        },
        LaneCase {
            name: "parallel: no stage lock, nothing recorded while transitions are enabled",
            steps: vec![
                (arrive("e1", "Build", Parallel), vec![admit("e1", "Build")]),
                (arrive("e2", "Build", Parallel), vec![admit("e2", "Build")]),
                (leave("e1", "Build"), vec![]),
            ],
            end: vec![],
        },
        LaneCase {
            name: "a disabled transition holds arrivals; enabling lets them in",
            steps: vec![
                (disable("Deploy"), vec![]),
                (arrive("e1", "Deploy", Queued), vec![]),
                (arrive("e2", "Deploy", Queued), vec![]),
                (enable("Deploy"), vec![admit("e1", "Deploy")]),
            ],
            end: vec![("Deploy", vec!["e1"], vec!["e2"])],
        },
        LaneCase {
            name: "superseded behind a disabled transition: the newest waits",
            steps: vec![
                (disable("Deploy"), vec![]),
                (arrive("e1", "Deploy", Superseded), vec![]),
                (
                    arrive("e2", "Deploy", Superseded),
                    vec![supersede("e1", "Deploy", "e2")],
                ),
                (enable("Deploy"), vec![admit("e2", "Deploy")]),
            ],
            end: vec![("Deploy", vec!["e2"], vec![])],
        },
        LaneCase {
            name: "parallel behind a disabled transition: all enter on enable",
            steps: vec![
                (disable("Deploy"), vec![]),
                (arrive("e1", "Deploy", Parallel), vec![]),
                (arrive("e2", "Deploy", Parallel), vec![]),
                (
                    enable("Deploy"),
                    vec![admit("e1", "Deploy"), admit("e2", "Deploy")],
                ),
            ],
            end: vec![],
        },
        LaneCase {
            name: "repeats are harmless: arriving twice (admitted again), leaving twice",
            steps: vec![
                (arrive("e1", "Build", Queued), vec![admit("e1", "Build")]),
                (arrive("e1", "Build", Queued), vec![admit("e1", "Build")]),
                (leave("e1", "Build"), vec![]),
                (leave("e1", "Build"), vec![]),
            ],
            end: vec![],
        },
        LaneCase {
            name: "a waiting execution that stops leaves the queue",
            steps: vec![
                (arrive("e1", "Build", Queued), vec![admit("e1", "Build")]),
                (arrive("e2", "Build", Queued), vec![]),
                (arrive("e3", "Build", Queued), vec![]),
                (leave("e2", "Build"), vec![]),
                (leave("e1", "Build"), vec![admit("e3", "Build")]),
            ],
            end: vec![("Build", vec!["e3"], vec![])],
        },
    ];
    for case in cases {
        let mut l = Lanes::default();
        for (i, (op, expected)) in case.steps.iter().enumerate() {
            assert_eq!(
                &lanes::step(&mut l, op),
                expected,
                "{}: step {i} ({op:?})",
                case.name
            );
        }
        let end: Vec<(&str, Vec<&str>, Vec<&str>)> = l
            .stages
            .iter()
            .map(|(s, lane)| {
                (
                    s.as_str(),
                    lane.inside.iter().map(String::as_str).collect(),
                    lane.waiting.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(end, case.end, "{}", case.name);
    }
}

fn gated(layout: &[&[u32]]) -> Execution {
    let mut e = exec(layout);
    e.gated = true;
    e
}

#[test]
fn gated_executions_enter_and_leave_stages_through_lanes() {
    let (e, cmds) = step(&gated(&[&[1], &[1]]), &Input::Start { at: Timestamp(1) });
    assert_eq!(cmds, vec![Command::Enter { stage: 0 }]);
    assert_eq!(
        (e.entering, e.stages[0].status),
        (Some(0), Status::NotStarted)
    );
    // An admission for another stage, or a second one, does nothing.
    assert!(
        step(
            &e,
            &Input::Admit {
                stage: 1,
                at: Timestamp(2)
            }
        )
        .1
        .is_empty()
    );
    let (e, cmds) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    assert_eq!(cmds, vec![run(0, 0)]);
    assert!(
        step(
            &e,
            &Input::Admit {
                stage: 0,
                at: Timestamp(2)
            }
        )
        .1
        .is_empty()
    );
    let (e, cmds) = step(&e, &ok(0, 0));
    assert_eq!(
        cmds,
        vec![Command::Leave { stage: 0 }, Command::Enter { stage: 1 }]
    );
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 1,
            at: Timestamp(3),
        },
    );
    let (e, cmds) = step(&e, &ok(1, 0));
    assert_eq!(
        cmds,
        vec![
            Command::Leave { stage: 1 },
            Command::Finish {
                status: Status::Succeeded
            }
        ]
    );
    assert_eq!(e.status, Status::Succeeded);
}

#[test]
fn a_waiting_execution_is_superseded_only_between_stages() {
    let (e, _) = step(&gated(&[&[1], &[1]]), &Input::Start { at: Timestamp(1) });
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    // Inside stage 0: a supersession for stage 1 does not apply.
    assert!(
        step(
            &e,
            &Input::Supersede {
                stage: 1,
                by: "e9".into(),
                at: Timestamp(3)
            }
        )
        .1
        .is_empty()
    );
    let (e, _) = step(&e, &ok(0, 0));
    let (e, cmds) = step(
        &e,
        &Input::Supersede {
            stage: 1,
            by: "e9".into(),
            at: Timestamp(3),
        },
    );
    assert_eq!(
        cmds,
        vec![Command::Finish {
            status: Status::Superseded
        }]
    );
    assert_eq!(
        (e.status, e.superseded_by.as_deref(), e.stages[1].status),
        (Status::Superseded, Some("e9"), Status::NotStarted)
    );
}

#[test]
fn stopping_while_waiting_for_a_stage_frees_the_place() {
    let (e, _) = step(&gated(&[&[1], &[1]]), &Input::Start { at: Timestamp(1) });
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    let (e, _) = step(&e, &ok(0, 0));
    let (e, cmds) = step(
        &e,
        &Input::Stop {
            abandon: false,
            reason: None,
            at: Timestamp(4),
        },
    );
    assert_eq!(
        cmds,
        vec![
            Command::Leave { stage: 1 },
            Command::Finish {
                status: Status::Stopped
            }
        ]
    );
    assert_eq!((e.status, e.entering), (Status::Stopped, None));
    // Stopping inside a stage frees that stage once its actions end.
    let (e, _) = step(&gated(&[&[1]]), &Input::Start { at: Timestamp(1) });
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    let (e, cmds) = step(
        &e,
        &Input::Stop {
            abandon: false,
            reason: None,
            at: Timestamp(3),
        },
    );
    assert!(cmds.is_empty());
    let (_, cmds) = step(&e, &ok(0, 0));
    assert_eq!(
        cmds,
        vec![
            Command::Leave { stage: 0 },
            Command::Finish {
                status: Status::Stopped
            }
        ]
    );
}

/// The pure core of issue 20's graceful stop: stopped while stage 0's parallel group runs, the
/// execution leaves stage 0 when the last action ends and never asks to enter stage 1. (The
/// place it was left holding came from the service applying a completion to a copy of the record
/// older than the stop: see `service::journal`.)
#[test]
fn a_graceful_stop_inside_a_stage_never_enters_the_next() {
    let (e, _) = step(&gated(&[&[1, 1], &[1]]), &Input::Start { at: Timestamp(1) });
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    let stop = Input::Stop {
        abandon: false,
        reason: None,
        at: Timestamp(3),
    };
    let (e, cmds) = step(&e, &stop);
    assert!(cmds.is_empty());
    assert_eq!(e.status, Status::Stopping);
    let (e, cmds) = step(&e, &ok(0, 0));
    assert!(cmds.is_empty(), "the group still runs: {cmds:?}");
    let (e, cmds) = step(&e, &ok(0, 1));
    assert_eq!(
        cmds,
        vec![
            Command::Leave { stage: 0 },
            Command::Finish {
                status: Status::Stopped
            }
        ]
    );
    assert_eq!((e.entering, e.stages[1].status), (None, Status::NotStarted));
}

#[test]
fn a_retried_gated_stage_goes_back_through_its_lane() {
    let (e, _) = step(&gated(&[&[1]]), &Input::Start { at: Timestamp(1) });
    let (e, _) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(2),
        },
    );
    let (e, cmds) = step(&e, &fail(0, 0));
    assert_eq!(
        cmds,
        vec![
            Command::Leave { stage: 0 },
            Command::Finish {
                status: Status::Failed
            }
        ]
    );
    let (e, cmds) = step(
        &e,
        &Input::Retry {
            stage: 0,
            all: false,
            at: Timestamp(5),
        },
    );
    assert_eq!(cmds, vec![Command::Enter { stage: 0 }]);
    let (_, cmds) = step(
        &e,
        &Input::Admit {
            stage: 0,
            at: Timestamp(6),
        },
    );
    assert_eq!(
        cmds,
        vec![Command::RunAction {
            stage: 0,
            action: 0,
            attempt: 2,
            delay_ms: 0
        }]
    );
}

#[test]
fn a_rollback_execution_reruns_only_its_stage_with_the_targets_earlier_results() {
    let mut target = exec(&[&[1], &[1], &[1]]);
    for input in [
        Input::Start { at: Timestamp(1) },
        ok(0, 0),
        ok(1, 0),
        ok(2, 0),
    ] {
        target = step(&target, &input).0;
    }
    target.stages[0].actions[0]
        .artifacts
        .insert("source".into(), "blake3:aa".into());
    let rb = Execution::rollback_of(&target, 1, "r1".into(), None);
    assert_eq!(
        rb.stages[0].status,
        Status::Succeeded,
        "earlier stages are carried over"
    );
    assert_eq!(rb.stages[0].actions[0].artifacts["source"], "blake3:aa");
    assert_eq!(
        (rb.stages[1].status, rb.stages[1].actions[0].attempt),
        (Status::NotStarted, 0)
    );
    let (rb, cmds) = step(&rb, &Input::Start { at: Timestamp(10) });
    assert_eq!(cmds, vec![run(1, 0)]);
    let (rb, cmds) = step(&rb, &ok(1, 0));
    assert_eq!(
        cmds,
        vec![Command::Finish {
            status: Status::Succeeded
        }],
        "it ends with its stage"
    );
    assert_eq!(rb.stages[2].status, Status::NotStarted);
    assert_eq!(
        rb.rollback
            .as_ref()
            .map(|r| (r.stage.as_str(), r.target.as_str())),
        Some(("S1", "e1"))
    );
}

fn cond(result: Outcome, rules: Vec<Rule>) -> Option<Condition> {
    Some(Condition {
        result,
        rules,
        retry_all: false,
    })
}
fn equals(input: &str, value: &str) -> Rule {
    Rule::VariableCheck {
        input: input.into(),
        operator: Operator::Equals,
        value: value.into(),
    }
}

struct ConditionCase {
    name: &'static str,
    layout: &'static [&'static [u32]],
    /// Sets the conditions and variables.
    setup: fn(&mut Execution),
    steps: Vec<(Input, Vec<Command>)>,
    on_start: Vec<Command>,
    status: Status,
    stage_status: Vec<Status>,
}

#[test]
fn stage_conditions() {
    use Status::*;
    let cases = vec![
        ConditionCase {
            name: "before_entry SKIP: a failing rule skips the stage, the next one runs",
            layout: &[&[1], &[1], &[1]],
            setup: |e| {
                e.variables.insert("env".into(), "dev".into());
                e.stages[1].conditions.before_entry =
                    cond(Outcome::Skip, vec![equals("#{variables.env}", "prod")]);
            },
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(2, 0)]),
                (ok(2, 0), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded, Skipped, Succeeded],
        },
        ConditionCase {
            name: "before_entry whose rules pass: the stage runs",
            layout: &[&[1], &[1]],
            setup: |e| {
                e.variables.insert("env".into(), "prod".into());
                e.stages[1].conditions.before_entry =
                    cond(Outcome::Fail, vec![equals("#{variables.env}", "prod")]);
            },
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(1, 0)]),
                (ok(1, 0), vec![Command::Finish { status: Succeeded }]),
            ],
            status: Succeeded,
            stage_status: vec![Succeeded, Succeeded],
        },
        ConditionCase {
            name: "before_entry FAIL: the stage fails without running",
            layout: &[&[1], &[1]],
            setup: |e| {
                e.stages[1].conditions.before_entry =
                    cond(Outcome::Fail, vec![equals("#{variables.missing}", "x")])
            },
            on_start: vec![run(0, 0)],
            steps: vec![(ok(0, 0), vec![Command::Finish { status: Failed }])],
            status: Failed,
            stage_status: vec![Succeeded, Failed],
        },
        ConditionCase {
            name: "on_success FAIL: a stage whose actions succeeded fails",
            layout: &[&[1], &[1]],
            setup: |e| {
                e.stages[0].conditions.on_success =
                    cond(Outcome::Fail, vec![equals("#{sluice.pipeline}", "other")])
            },
            on_start: vec![run(0, 0)],
            steps: vec![(ok(0, 0), vec![Command::Finish { status: Failed }])],
            status: Failed,
            stage_status: vec![Failed, NotStarted],
        },
        ConditionCase {
            name: "on_success ROLLBACK: the stage fails and asks for a rollback",
            layout: &[&[1], &[1]],
            setup: |e| {
                e.stages[1].conditions.on_success = cond(
                    Outcome::Rollback,
                    vec![equals("#{sluice.pipeline}", "other")],
                )
            },
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(1, 0)]),
                (
                    ok(1, 0),
                    vec![
                        Command::Rollback { stage: 1 },
                        Command::Finish { status: Failed },
                    ],
                ),
            ],
            status: Failed,
            stage_status: vec![Succeeded, Failed],
        },
        ConditionCase {
            name: "on_failure RETRY: the failed actions run once more, then the failure stands",
            layout: &[&[1, 1]],
            setup: |e| e.stages[0].conditions.on_failure = cond(Outcome::Retry, vec![]),
            on_start: vec![run(0, 0), run(0, 1)],
            steps: vec![
                (ok(0, 0), vec![]),
                (
                    fail(0, 1),
                    vec![Command::RunAction {
                        stage: 0,
                        action: 1,
                        attempt: 2,
                        delay_ms: 0,
                    }],
                ),
                (
                    super::tests_operating::failed_at(0, 1, 2),
                    vec![Command::Finish { status: Failed }],
                ),
            ],
            status: Failed,
            stage_status: vec![Failed],
        },
        ConditionCase {
            name: "on_failure ROLLBACK with no rules: always asks for a rollback",
            layout: &[&[1], &[1]],
            setup: |e| e.stages[1].conditions.on_failure = cond(Outcome::Rollback, vec![]),
            on_start: vec![run(0, 0)],
            steps: vec![
                (ok(0, 0), vec![run(1, 0)]),
                (
                    fail(1, 0),
                    vec![
                        Command::Rollback { stage: 1 },
                        Command::Finish { status: Failed },
                    ],
                ),
            ],
            status: Failed,
            stage_status: vec![Succeeded, Failed],
        },
        ConditionCase {
            name: "a rollback execution never asks for another rollback",
            layout: &[&[1], &[1]],
            setup: |e| {
                e.stages[1].conditions.on_failure = cond(Outcome::Rollback, vec![]);
                e.rollback = Some(RollbackOf {
                    stage: "S1".into(),
                    target: "e0".into(),
                    after: None,
                });
                e.stages[0].status = Status::Succeeded;
                e.stages[0].actions[0].status = Status::Succeeded;
            },
            on_start: vec![run(1, 0)],
            steps: vec![(fail(1, 0), vec![Command::Finish { status: Failed }])],
            status: Failed,
            stage_status: vec![Succeeded, Failed],
        },
    ];
    for case in cases {
        let mut start = exec(case.layout);
        (case.setup)(&mut start);
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
        let conditioned = state.stages.iter().any(|s| s.condition.is_some());
        assert_eq!(
            conditioned,
            case.name.contains("SKIP")
                || case.name.contains("FAIL:")
                || case.name.contains("ROLLBACK") && !case.name.contains("never")
                || case.name.contains("RETRY"),
            "{}: the record says what the condition did",
            case.name
        );
    }
}

pub(super) fn failed_at(stage: usize, action: usize, attempt: u32) -> Input {
    Input::ActionCompleted {
        stage,
        action,
        attempt,
        result: ActionResult::Failed {
            error: "boom again".into(),
            kind: FailureKind::Permanent,
        },
        kept: BTreeMap::new(),
        inputs: BTreeMap::new(),
        at: Timestamp(9),
    }
}

#[test]
fn built_in_rules() {
    let mut e = exec(&[&[1], &[1]]);
    e.variables.insert("count".into(), "12".into());
    e.variables.insert("branch".into(), "release/1.4".into());
    e.stages[0].actions[0].namespace = Some("Build".into());
    e.stages[0].actions[0].status = Status::Succeeded;
    e.stages[0].actions[0]
        .variables
        .insert("Version".into(), "1.4.2".into());
    let vc = |input: &str, operator, value: &str| Rule::VariableCheck {
        input: input.into(),
        operator,
        value: value.into(),
    };
    use Operator::*;
    let table: Vec<(Rule, bool)> = vec![
        (vc("#{Build.Version}", Equals, "1.4.2"), true),
        (vc("#{Build.Version}", Equals, "1.4.3"), false),
        (vc("#{Build.Version}", NotEquals, "1.4.3"), true),
        (vc("v#{Build.Version}", Matches, r"^v1\.4\.\d+$"), true),
        (vc("#{variables.branch}", Matches, "^main$"), false),
        (vc("#{variables.count}", GreaterThan, "9"), true), // numeric, not string, comparison
        (vc("#{variables.count}", LessThan, "9"), false),
        (vc("#{variables.count}", LessThanOrEqual, "12"), true),
        (vc("#{variables.count}", GreaterThanOrEqual, "12.5"), false),
        (vc("#{variables.branch}", GreaterThan, "1"), false), // not a number: fails, with the reason
        (vc("#{Missing.Key}", Equals, ""), false),
    ];
    for (rule, pass) in table {
        assert_eq!(
            check(&rule, &e, Timestamp(0)).is_ok(),
            pass,
            "{rule:?}: {:?}",
            check(&rule, &e, Timestamp(0))
        );
    }
    assert!(
        check(
            &vc("#{variables.branch}", GreaterThan, "1"),
            &e,
            Timestamp(0)
        )
        .unwrap_err()
        .contains("not a number")
    );
    // 2026-11-26 is a Thursday; 14:30 UTC is 15:30 in Berlin.
    let at = Timestamp(
        jiff::Timestamp::from_second(1_795_703_400)
            .unwrap()
            .as_millisecond() as u64,
    );
    assert_eq!(
        jiff::Timestamp::from_millisecond(at.0 as i64)
            .unwrap()
            .to_string(),
        "2026-11-26T14:30:00Z"
    );
    let window = |cron: &str, tz: Option<&str>| Rule::DeploymentWindow {
        cron: cron.into(),
        timezone: tz.map(str::to_string),
    };
    assert!(check(&window("* 9-16 * * MON-FRI", None), &e, at).is_ok());
    assert!(
        check(
            &window("* 15-16 * * MON-FRI", Some("Europe/Berlin")),
            &e,
            at
        )
        .is_ok(),
        "15:30 in Berlin"
    );
    assert!(
        check(
            &window("* 16-17 * * MON-FRI", Some("Europe/Berlin")),
            &e,
            at
        )
        .is_err()
    );
    let closed = check(&window("* * * * SAT,SUN", None), &e, at).unwrap_err();
    assert!(closed.contains("outside"), "{closed}");
}

#[test]
fn conditions_with_custom_rules_wait_for_the_executors_verdict() {
    let custom = Rule::Custom {
        uses: "./rule.wasm".into(),
        with: BTreeMap::new(),
    };
    let mut e = exec(&[&[1], &[1]]);
    e.stages[1].conditions.before_entry = cond(
        Outcome::Fail,
        vec![equals("#{sluice.pipeline}", "p"), custom],
    );
    let (e, _) = step(&e, &Input::Start { at: Timestamp(1) });
    let (e, cmds) = step(&e, &ok(0, 0));
    assert_eq!(
        cmds,
        vec![Command::CheckRules {
            stage: 1,
            phase: Phase::BeforeEntry
        }]
    );
    assert_eq!(
        (e.stages[1].status, e.stages[1].checking),
        (Status::InProgress, Some(Phase::BeforeEntry))
    );
    // A verdict for another phase is stale; a passing one starts the stage.
    let checked = |phase, failure: Option<&str>| Input::Checked {
        stage: 1,
        phase,
        failure: failure.map(str::to_string),
        at: Timestamp(3),
    };
    assert!(step(&e, &checked(Phase::OnSuccess, None)).1.is_empty());
    let (passed, cmds) = step(&e, &checked(Phase::BeforeEntry, None));
    assert_eq!(cmds, vec![run(1, 0)]);
    assert!(
        step(&passed, &checked(Phase::BeforeEntry, Some("late")))
            .1
            .is_empty(),
        "a second verdict changes nothing"
    );
    // A failing one applies the result, with the rule's reason on the record.
    let (failed, cmds) = step(
        &e,
        &checked(
            Phase::BeforeEntry,
            Some("rule ./rule.wasm: 1.0-rc is a pre-release"),
        ),
    );
    assert_eq!(
        cmds,
        vec![Command::Finish {
            status: Status::Failed
        }]
    );
    assert_eq!(
        failed.stages[1].condition.as_deref(),
        Some("before_entry FAIL: rule ./rule.wasm: 1.0-rc is a pre-release")
    );
    // Stopping while a rule is checked ends it; the verdict that arrives later is ignored.
    let (stopped, _) = step(
        &e,
        &Input::Stop {
            abandon: false,
            reason: None,
            at: Timestamp(4),
        },
    );
    assert_eq!(
        (stopped.status, stopped.stages[1].checking),
        (Status::Stopped, None)
    );
    assert!(
        step(&stopped, &checked(Phase::BeforeEntry, None))
            .1
            .is_empty()
    );
}
