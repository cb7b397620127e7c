//! CodePipeline's execution rules, end to end through the CLI.
use crate::harness::*;

#[test]
fn failure_in_a_parallel_group_lets_siblings_finish_and_stops_later_groups_and_stages() {
    let p = Project::new(
        r##"
name: groups
stages:
  - name: Build
    actions:
      - { name: Breaks, uses: PROBE, with: { mode: fail } }
      - { name: Sibling, uses: PROBE, with: { mode: ok } }
      - { name: Later, uses: PROBE, run_order: 2, with: { mode: ok } }
  - name: Deploy
    actions:
      - { name: Ship, uses: PROBE, with: { mode: ok } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1);
    let exec = run.json();
    assert_eq!(status(&exec), "Failed");
    assert_eq!(status(action(&exec, "Build/Breaks")), "Failed");
    assert_eq!(
        error(action(&exec, "Build/Breaks")),
        "the probe was told to fail"
    );
    assert_eq!(status(action(&exec, "Build/Sibling")), "Succeeded");
    assert_eq!(status(action(&exec, "Build/Later")), "NotStarted");
    assert_eq!(stage_status(&exec, "Build"), "Failed");
    assert_eq!(stage_status(&exec, "Deploy"), "NotStarted");
}

#[test]
fn variables_flow_from_earlier_actions_and_overrides_apply() {
    let p = Project::new(
        r##"
name: vars
variables: { greeting: hello }
stages:
  - name: One
    actions:
      - { name: First, uses: PROBE, namespace: First, with: { mode: ok, value: "#{variables.greeting}" } }
      - { name: Second, uses: PROBE, run_order: 2, with: { mode: ok, value: "#{First.Value}/#{sluice.pipeline}/#{sluice.stage}/#{sluice.action}" } }
  - name: Two
    actions:
      - { name: Third, uses: PROBE, with: { mode: context } }
"##,
    );
    let exec = p.run(&["--var", "greeting=bonjour"]).json();
    assert_eq!(status(&exec), "Succeeded");
    assert_eq!(exec["variables"]["greeting"], "bonjour");
    assert_eq!(
        action(&exec, "One/Second")["variables"]["Value"],
        "bonjour/vars/One/Second"
    );
    // The record keeps `with:` as written; the resolved value was only needed to run.
    assert_eq!(
        action(&exec, "One/Second")["config"]["value"],
        "#{First.Value}/#{sluice.pipeline}/#{sluice.stage}/#{sluice.action}"
    );
    let third = action(&exec, "Two/Third");
    let id = exec["execution_id"].as_str().unwrap();
    assert_eq!(third["variables"]["ExecutionId"], id);
    assert_eq!(third["variables"]["Attempt"], "1");
    assert_eq!(
        third["variables"]["IdempotencyKey"],
        format!("default/{id}/Two/Third/1").as_str()
    );
}

#[test]
fn artifacts_pass_between_stages_by_digest_and_identical_content_has_one_digest() {
    let p = Project::new(
        r##"
name: artifacts
stages:
  - name: Make
    actions:
      - name: Write
        uses: command@1
        outputs: [a]
        capabilities: { process: [sh] }
        with: { run: "mkdir -p out/a/docs && echo hi > out/a/docs/readme.txt && printf '#!/bin/sh\n' > out/a/run.sh && chmod +x out/a/run.sh && ln -s docs/readme.txt out/a/link" }
  - name: Copy
    actions:
      - { name: Copy, uses: PROBE, inputs: [a], outputs: [b], with: { mode: copy } }
  - name: Check
    actions:
      - name: Read
        uses: command@1
        inputs: [b]
        capabilities: { process: [sh] }
        with: { run: "test -x in/b/run.sh && test \"$(cat in/b/link)\" = hi && echo Ok=yes >> $SLUICE_OUTPUT" }
"##,
    );
    let run = p.run(&[]);
    let exec = run.json();
    assert_eq!(status(&exec), "Succeeded", "{}", run.stderr);
    assert_eq!(action(&exec, "Check/Read")["variables"]["Ok"], "yes");
    let a = action(&exec, "Make/Write")["artifacts"]["a"]
        .as_str()
        .unwrap();
    let b = action(&exec, "Copy/Copy")["artifacts"]["b"]
        .as_str()
        .unwrap();
    // The guest copied the tree exactly (content, exec bit, relative symlink): same digest.
    assert_eq!(a, b);
    assert_eq!(action(&exec, "Copy/Copy")["inputs"]["a"], a);
}

#[test]
fn a_pending_action_on_a_timer_is_run_again_with_its_continuation() {
    let p = Project::new(
        "name: wait\nstages:\n  - name: S\n    actions:\n      - { name: W, uses: PROBE, with: { mode: pending } }\n",
    );
    let started = std::time::Instant::now();
    let r = p.run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let exec = r.json();
    let w = action(&exec, "S/W");
    assert_eq!(
        w["variables"]["Resumed"], "step-2",
        "the third call saw the second call's continuation"
    );
    assert_eq!(w["attempt"], 3);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(100),
        "two 50 ms timers were waited out"
    );
}

#[test]
fn automatic_retry_retries_only_retryable_failures_with_backoff() {
    let p = Project::new(
        r##"
name: retries
timeout: 2s
stages:
  - name: S
    actions:
      - { name: Flaky, uses: PROBE, with: { mode: flaky, value: "3" }, retry: { max_attempts: 3, backoff: { initial: 50ms, multiplier: 2 } } }
      - { name: GivesUp, uses: PROBE, with: { mode: flaky, value: "5" }, retry: { max_attempts: 2, backoff: { initial: 10ms } } }
      - { name: Permanent, uses: PROBE, with: { mode: fail }, retry: { max_attempts: 3, backoff: { initial: 10ms } } }
      - { name: SlowOnce, uses: PROBE, with: { mode: loop }, retry: { max_attempts: 2, on_timeout: true, backoff: { initial: 10ms } } }
      - { name: SlowNoRetry, uses: PROBE, with: { mode: loop }, retry: { max_attempts: 2, backoff: { initial: 10ms } } }
"##,
    );
    let started = std::time::Instant::now();
    let run = p.run(&[]);
    let exec = run.json();
    let flaky = action(&exec, "S/Flaky");
    assert_eq!(
        (status(flaky), flaky["attempt"].as_u64()),
        ("Succeeded", Some(3)),
        "{flaky:#}"
    );
    assert_eq!(flaky["variables"]["Attempt"], "3");
    assert!(
        flaky["error"].is_null(),
        "a success clears the retried error"
    );
    let gives_up = action(&exec, "S/GivesUp");
    assert_eq!(
        (status(gives_up), gives_up["attempt"].as_u64()),
        ("Failed", Some(2))
    );
    assert!(error(gives_up).contains("attempt 2 of a flaky probe"));
    assert_eq!(
        action(&exec, "S/Permanent")["attempt"],
        1,
        "failures not marked retryable are final"
    );
    // The pipeline-level timeout applies; timeouts are retried only with on_timeout.
    let slow = action(&exec, "S/SlowOnce");
    assert_eq!(
        (status(slow), slow["attempt"].as_u64()),
        ("Failed", Some(2))
    );
    assert!(error(slow).contains("timeout"));
    assert_eq!(action(&exec, "S/SlowNoRetry")["attempt"], 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // Progress shows the attempts; the log keeps each attempt's failure.
    let id = exec["execution_id"].as_str().unwrap();
    let logs = p.sluice(&["logs", id, "S/Flaky"]).stdout;
    assert!(
        logs.contains("S/Flaky #1")
            && logs.contains("S/Flaky #2")
            && logs.contains("attempt 2 failed (Retryable)"),
        "{logs}"
    );
    // Run again, past the action cache (the flaky probe is pure: its success would be reused).
    let progress = p.sluice(&["run", "pipeline.yaml", "--no-cache"]).stdout;
    assert!(progress.contains("S/Flaky (attempt 3)"), "{progress}");
}
