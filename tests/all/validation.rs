//! `sluice validate`: every problem as FILE:LINE:COL: message, all at once, exit code 2.
use crate::harness::*;

/// (pipeline, expected "LINE:COL: message fragment")
const CASES: &[(&str, &str)] = &[
    ("name: x\nstages:\n  - name: [a\n", "4:1: YAML syntax error"),
    ("name: x\nstages: []\n", "2:9: `stages` is empty"),
    (
        "name: bad name\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n",
        "1:7: pipeline name \"bad name\"",
    ),
    (
        "name: x\nstagse: []\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n",
        "2:1: unknown key `stagse` in the pipeline; did you mean `stages`?",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, run_ordr: 2 }\n",
        "5:34: unknown key `run_ordr` in an action; did you mean `run_order`?",
    ),
    (
        "stages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n",
        "1:1: the pipeline is missing required key `name`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A }\n",
        "5:11: action `A` is missing required key `uses`",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - { name: S, actions: [{ name: B, uses: noop@1 }] }\n",
        "4:7: duplicate stage name `S` (first at line 3)",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n      - { name: A, uses: noop@1 }\n",
        "6:11: duplicate action name `A` in stage `S`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, outputs: [o] }\n      - { name: B, uses: noop@1, outputs: [o] }\n",
        "6:44: artifact `o` is already produced at line 5",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, inputs: [ghost] }\n",
        "5:43: input artifact `ghost` is not produced by any action",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, inputs: [o] }\n      - { name: B, uses: noop@1, outputs: [o] }\n",
        "5:43: input artifact `o` is produced at line 6, which does not run before action `A`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { mode: \"#{variables.nope}\" } }\n",
        "`#{variables.nope}`: no such pipeline variable",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { mode: \"#{B.X}\" } }\n      - { name: B, uses: noop@1, namespace: B }\n",
        "`#{B.X}` points forward",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { mode: \"#{Who.X}\" } }\n",
        "`#{Who.X}`: no action has namespace `Who`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { mode: \"#{oops\" } }\n",
        "`with.mode`: unclosed `#{`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: nope@1 }\n",
        "5:26: `uses: nope@1`: no built-in or installed plugin `nope@1`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: comand@1 }\n",
        "5:26: `uses: comand@1`: no built-in or installed plugin `comand@1`; did you mean `command@1`?",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: command@1\n        capabilities: { process: [sh] }\n        with:\n          run: ./deploy.sh #{variables.target}\n",
        "9:28: `with.run`: `#{` starts a YAML comment here; quote the value",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, retry: { max_attempts: 3, backoff: { multiplier: 1 } } }\n",
        "5:83: `retry.backoff.multiplier` must be more than 1",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: ./missing.wasm }\n",
        "5:26: `uses: ./missing.wasm`: cannot read",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { mode: ok, colour: red } }\n",
        "does not accept configuration key `colour`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, with: { path: x } }\n",
        "5:11: action `A`: `PROBE` requires configuration key `mode`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, timeout: forever }\n",
        "5:43: `timeout`: invalid duration \"forever\"",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, limits: { memory: 12 bananas } }\n",
        "5:52: `limits.memory`: invalid size",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [] }\n",
        "3:25: stage `S` has no actions",
    ),
    (
        "name: x\nvariables: { d: /tmp }\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, capabilities: { dirs: { \"#{variables.d}\": ro } } }\n",
        "6:58: capabilities are static grants",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: command@1, with: { run: ls } }\n",
        "5:11: action `A`: `command@1` runs host program `sh`; grant it with `capabilities: { process: [sh] }`",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: deploy-release@1, with: { target: ./out } }\n",
        "5:60: action `A`: `deploy-release@1` writes to \"./out\"; grant it",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, run_order: 0 }\n",
        "5:45: `run_order` must be a whole number from 1 to 999",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, retry: { max_attmpts: 3 } }\n",
        "5:43: unknown key `max_attmpts` in `retry`; did you mean `max_attempts`?",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, retry: { max_attempts: 0 } }\n",
        "5:57: `retry.max_attempts` must be a number from 1 to 100",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, limits: { memory: 8GiB } }\n",
        "5:52: `limits.memory`: 8GiB is more than the maximum of 4GiB",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, namespace: A, outputs: [o], with: { mode: ok } }\n      - { name: B, uses: source-dir@1, run_order: 2, outputs: [p], with: { path: \"#{A.Value}\" } }\n",
        "6:82: `with.path` names a directory the action is granted, so it cannot come from another action's output",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: B, uses: source-dir@1, outputs: [p], with: { path: \"#{trigger.ref}\" } }\n",
        "5:68: `with.path` names a directory the action is granted, so it cannot come from the event that started the execution (`#{trigger.ref}`)",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1, with: { x: \"#{trigger.sha}\" } }\n",
        "`#{trigger.sha}`: unknown; available: id, type, commit, ref, branch, tag, pusher, repository, data.KEY",
    ),
    (
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: ./broken.wasm }\n",
        "5:26: `uses: ./broken.wasm`: compile component: failed to parse WebAssembly",
    ),
    (
        "name: x\nexecution_mode: fifo\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n",
        "2:17: `execution_mode` must be one of superseded, queued, parallel, got \"fifo\"",
    ),
    (
        "name: x\nstages:\n  - name: S\n    on_failure: { result: ROLLBACK }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "3:5: stage `S`: the first stage cannot be rolled back",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - name: T\n    before_entry: { result: RETRY }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "5:29: `before_entry.result` must be FAIL or SKIP, got \"RETRY\"",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - name: T\n    before_entry:\n      result: SKIP\n      rules:\n        - { rule: variable-chek, input: x, operator: equals, value: y }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "8:13: unknown rule `variable-chek`: the rules are variable-check, deployment-window, or a custom rule component",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - name: T\n    before_entry:\n      result: SKIP\n      rules:\n        - { rule: variable-check, input: x, operator: like, value: y }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "8:55: `operator` must be one of equals, not-equals, matches",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - name: T\n    on_success:\n      result: FAIL\n      rules:\n        - { rule: deployment-window, cron: \"* 25 * * *\" }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "8:44: bad cron expression \"* 25 * * *\"",
    ),
    (
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n  - name: T\n    on_success:\n      result: FAIL\n      rules:\n        - { rule: variable-check, input: x, operator: matches, value: \"(\" }\n    actions: [{ name: A, uses: noop@1 }]\n",
        "8:71: `value` is not a regular expression: unclosed group",
    ),
];

#[test]
fn each_problem_is_reported_with_file_line_and_column() {
    for (yaml, expected) in CASES {
        let p = Project::new(yaml);
        p.write("broken.wasm", "\0asm this is not a component");
        let run = p.sluice(&["validate", "pipeline.yaml"]);
        assert_eq!(
            run.code, 2,
            "expected a validation failure for:\n{yaml}\n{}",
            run.stderr
        );
        let expected = expected.replace("PROBE", probe());
        let wanted = if expected.chars().next().unwrap().is_ascii_digit() {
            format!("pipeline.yaml:{expected}")
        } else {
            expected.clone()
        };
        assert!(
            run.stderr.contains(&wanted),
            "expected {wanted:?} for:\n{yaml}\ngot:\n{}",
            run.stderr
        );
    }
}

#[test]
fn all_problems_are_reported_at_once_and_run_refuses_to_start() {
    let p = Project::new(
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: nope@1, inputs: [ghost] }\n      - { name: A, uses: noop@1, timeout: never }\n",
    );
    let run = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(run.code, 2);
    let problems: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("pipeline.yaml:"))
        .collect();
    assert_eq!(problems.len(), 4, "{}", run.stderr);
    assert!(run.stderr.contains("4 problems found"));
    let r = p.sluice(&["run", "pipeline.yaml"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        p.sluice(&["history"]).stdout.trim(),
        "no executions yet",
        "nothing was recorded"
    );
}

#[test]
fn counts_of_one_are_written_in_the_singular() {
    let p =
        Project::new("name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n");
    let ok = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("ok (1 stage, 1 action)"),
        "{}",
        ok.stdout
    );
    p.write(
        "bad.yaml",
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1, timeout: never }] }\n",
    );
    let bad = p.sluice(&["validate", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("1 problem found"), "{}", bad.stderr);
}

#[test]
fn unknown_variable_override_is_rejected_and_valid_pipelines_pass() {
    let p = Project::copy_of("examples/quickstart");
    let ok = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("ok (3 stages, 4 actions)"));
    let bad = p.sluice(&["validate", "pipeline.yaml", "--var", "titel=x"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("--var titel: the pipeline declares no variable `titel`")
    );
    // A target outside the granted directory is caught before anything runs.
    let outside = p.sluice(&[
        "validate",
        "pipeline.yaml",
        "--var",
        "target=/tmp/elsewhere",
    ]);
    assert_eq!(outside.code, 2);
    assert!(
        outside.stderr.contains("writes to \"/tmp/elsewhere\""),
        "{}",
        outside.stderr
    );
}

#[test]
fn hostile_nesting_and_extra_documents_are_refused_not_crashed_on() {
    // 20,000 nested block sequences (40 KB) used to overflow the stack: exit 134.
    let p = Project::new(&format!("{}x", "- ".repeat(20_000)));
    let run = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "pipeline.yaml:1:129: lists and mappings are nested more than 64 levels deep"
        ),
        "{}",
        run.stderr
    );
    // A second document was silently dropped.
    p.write(
        "two.yaml",
        "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n---\nname: y\n",
    );
    let run = p.sluice(&["validate", "two.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("two.yaml:4:1: a second YAML document"),
        "{}",
        run.stderr
    );
}

/// First-party plugins say their keys' types (`typed-action`): a value that is not one is
/// refused by `validate` at its line, before anything runs; a value with a reference is left
/// to the plugin; `plugin describe` shows the type.
#[test]
fn typed_configuration_values_are_checked_at_their_line() {
    let p = Project::new(
        r##"name: typed
variables:
  keep: "3"
stages:
  - name: Test
    actions:
      - name: Report
        uses: test-report@1
        with: { max_failures: none }
  - name: Deploy
    actions:
      - name: Release
        uses: deploy-release@1
        capabilities: { dirs: { ./out: rw } }
        with:
          target: ./out
          keep: five
      - name: FromVariable
        uses: deploy-release@1
        capabilities: { dirs: { ./out: rw } }
        with: { target: ./out, keep: "#{variables.keep}" }
      - name: Hook
        uses: deploy-http@1
        capabilities: { http: ["https://example.com"] }
        with: { url: example.com/hook }
"##,
    );
    std::fs::create_dir_all(p.path("out")).unwrap();
    let r = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(r.code, 2, "{r:?}");
    for expected in [
        "pipeline.yaml:9:31: `max_failures` of `test-report@1` expects a whole number, e.g. 5, got \"none\"",
        "pipeline.yaml:17:17: `keep` of `deploy-release@1` expects a whole number, e.g. 5, got \"five\"",
        "pipeline.yaml:25:22: `url` of `deploy-http@1` expects an absolute URL",
        "3 problems found",
    ] {
        assert!(
            r.stderr.contains(expected),
            "missing {expected:?} in\n{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("FromVariable"), "{}", r.stderr);

    let described = p.sluice(&["plugin", "describe", "deploy-release@1"]);
    assert!(
        described
            .stdout
            .contains("[default: 5] [a whole number, e.g. 5]"),
        "{}",
        described.stdout
    );
}
