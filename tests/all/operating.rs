//! Operating pipelines the CodePipeline way, through the CLI: execution modes with
//! concurrent executions, disabled transitions, rollback, and stage conditions — on the
//! embedded service and on NATS (two engines).
use crate::harness::nats::{Engine, NatsServer, wait_for};
use crate::harness::{Project, Run, action, stage_status, status};
use serde_json::Value;
use std::time::Duration;

/// Build holds until woken, so a test decides when an execution leaves it.
const LANES: &str = r##"
name: lanes
execution_mode: MODE
variables:
  version: "1"
stages:
  - name: Build
    actions:
      - name: Hold
        uses: PROBE
        with: { mode: hold }
  - name: Deploy
    actions:
      - name: Ship
        uses: PROBE
        with: { mode: ok, value: "v#{variables.version}" }
"##;

/// A service to talk to: the embedded one in the project, or engines on NATS.
struct Service<'a> {
    p: &'a Project,
    nats: Option<String>,
    _engines: Vec<Engine>,
}

impl<'a> Service<'a> {
    fn embedded(p: &'a Project) -> Self {
        let s = Service {
            p,
            nats: None,
            _engines: vec![Engine::start(p.dir.path(), ".sluice", &[])],
        };
        wait_for(Duration::from_secs(30), "the engine to answer", || {
            (s.sluice(&["pipeline", "ls"]).code == 0).then_some(())
        });
        s
    }

    fn on_nats(p: &'a Project, url: &str) -> Self {
        let engines = vec![
            Engine::start(p.dir.path(), "engine-a", &["--nats", url]),
            Engine::start(p.dir.path(), "engine-b", &["--nats", url]),
        ];
        let s = Service {
            p,
            nats: Some(url.to_string()),
            _engines: engines,
        };
        wait_for(Duration::from_secs(30), "the engines to answer", || {
            (s.sluice(&["pipeline", "ls"]).code == 0).then_some(())
        });
        s
    }

    fn sluice(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        if let Some(url) = &self.nats {
            all.extend(["--nats", url.as_str()]);
        }
        self.p.sluice(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.sluice(args);
        assert_eq!(r.code, 0, "sluice {args:?}: {r:?}");
        r.stdout
    }

    fn start(&self, vars: &[&str]) -> String {
        self.start_pipeline("lanes", vars)
    }

    fn start_pipeline(&self, pipeline: &str, vars: &[&str]) -> String {
        let mut args = vec!["start", pipeline];
        for v in vars {
            args.extend(["--var", v]);
        }
        self.ok(&args).trim().to_string()
    }

    fn record(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", id, "--json"])).unwrap()
    }

    /// Wait until `id`'s record satisfies `test`.
    fn until(&self, id: &str, what: &str, test: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(30), what, || {
            let e = self.record(id);
            test(&e).then_some(e)
        })
    }

    fn holding(&self, id: &str) -> Value {
        self.until(id, &format!("{id} to hold in Build"), |e| {
            action(e, "Build/Hold")["waiting"].is_object()
        })
    }

    fn release(&self, id: &str) {
        self.ok(&["wake", id, "Build/Hold"]);
    }

    fn done(&self, id: &str) -> Value {
        self.until(id, &format!("{id} to end"), |e| {
            !matches!(status(e), "InProgress" | "Stopping")
        })
    }

    fn lanes(&self) -> String {
        self.ok(&["pipeline", "state", "lanes"])
    }

    /// Whether an engine logged `what`.
    fn logged(&self, what: &str) -> bool {
        self._engines.iter().any(|e| e.log().contains(what))
    }
}

fn project(mode: &str) -> Project {
    Project::new(&LANES.replace("MODE", mode))
}

/// Waiting before a stage: the record says which.
fn entering(e: &Value) -> Option<u64> {
    e["entering"].as_u64()
}

fn superseded_mode(s: &Service<'_>) {
    s.ok(&["pipeline", "put", "pipeline.yaml"]);
    let e1 = s.start(&[]);
    s.holding(&e1);
    let e2 = s.start(&[]);
    s.until(&e2, "e2 to wait before Build", |e| entering(e) == Some(0));
    let e3 = s.start(&[]);
    // The newer waiting execution replaces the older one; e1, inside, is untouched.
    let old = s.until(&e2, "e2 to be superseded", |e| status(e) == "Superseded");
    assert_eq!(old["superseded_by"], e3.as_str());
    assert_eq!(
        stage_status(&old, "Build"),
        "NotStarted",
        "superseded between stages, never inside one"
    );
    assert!(
        s.lanes().contains(&format!("waiting: {e3}")),
        "{}",
        s.lanes()
    );
    s.release(&e1);
    assert_eq!(status(&s.done(&e1)), "Succeeded");
    s.holding(&e3);
    s.release(&e3);
    assert_eq!(status(&s.done(&e3)), "Succeeded");
    let list = s.ok(&["executions", "lanes", "--status", "Superseded"]);
    assert!(list.contains(&e2) && !list.contains(&e1), "{list}");
}

fn queued_mode_and_transitions(s: &Service<'_>) {
    s.p.write(
        "pipeline.yaml",
        &s.p.read("pipeline.yaml")
            .replace("execution_mode: superseded", "execution_mode: queued"),
    );
    s.ok(&["pipeline", "put", "pipeline.yaml"]);
    let e1 = s.start(&[]);
    s.holding(&e1);
    let e2 = s.start(&[]);
    let e3 = s.start(&[]);
    s.until(&e3, "e3 to wait before Build", |e| entering(e) == Some(0));
    // Disabled transition into Deploy: e1 leaves Build but waits before Deploy.
    let refused = s.sluice(&["transition", "disable", "lanes", "Build", "--reason", "x"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("first stage"), "{}", refused.stderr);
    let state = s.ok(&[
        "transition",
        "disable",
        "lanes",
        "Deploy",
        "--reason",
        "change freeze",
    ]);
    assert!(
        state.contains("transition disabled") && state.contains("change freeze"),
        "{state}"
    );
    s.release(&e1);
    s.until(&e1, "e1 to wait before Deploy", |e| {
        entering(e) == Some(1) && stage_status(e, "Build") == "Succeeded"
    });
    // First in, first out: e2 (not e3) enters Build as e1 leaves it; nobody is superseded.
    s.holding(&e2);
    assert_eq!(entering(&s.record(&e3)), Some(0));
    s.release(&e2);
    s.until(&e2, "e2 to queue before Deploy", |e| entering(e) == Some(1));
    let state = s.lanes();
    assert!(state.contains(&format!("waiting: {e1}, {e2}")), "{state}");
    s.ok(&["transition", "enable", "lanes", "Deploy"]);
    assert_eq!(status(&s.done(&e1)), "Succeeded");
    assert_eq!(status(&s.done(&e2)), "Succeeded");
    s.holding(&e3);
    // Stopping an execution frees its place.
    s.ok(&["stop", &e3, "--abandon"]);
    assert_eq!(status(&s.done(&e3)), "Stopped");
    let e4 = s.start(&[]);
    s.holding(&e4);
    s.release(&e4);
    assert_eq!(status(&s.done(&e4)), "Succeeded");
}

fn parallel_mode(s: &Service<'_>) {
    s.p.write(
        "pipeline.yaml",
        &s.p.read("pipeline.yaml")
            .replace("execution_mode: queued", "execution_mode: parallel"),
    );
    s.ok(&["pipeline", "put", "pipeline.yaml"]);
    let (e1, e2) = (s.start(&[]), s.start(&[]));
    // Both inside Build at once.
    s.holding(&e1);
    s.holding(&e2);
    s.release(&e2);
    assert_eq!(status(&s.done(&e2)), "Succeeded");
    s.release(&e1);
    assert_eq!(status(&s.done(&e1)), "Succeeded");
}

fn rollback(s: &Service<'_>) {
    let e1 = s.start(&["version=1"]);
    s.holding(&e1);
    s.release(&e1);
    s.done(&e1);
    let e2 = s.start(&["version=2"]);
    s.holding(&e2);
    s.release(&e2);
    assert_eq!(
        action(&s.done(&e2), "Deploy/Ship")["variables"]["Value"],
        "v2"
    );
    // Roll Deploy back to e1: a new execution re-runs Deploy with e1's variables.
    let r = s
        .ok(&["rollback", "lanes", "Deploy", "--to", &e1])
        .trim()
        .to_string();
    let rb = s.done(&r);
    assert_eq!(status(&rb), "Succeeded", "{rb:#}");
    assert_eq!(action(&rb, "Deploy/Ship")["variables"]["Value"], "v1");
    assert_eq!(rb["rollback"]["target"], e1.as_str());
    assert_eq!(rb["trigger"]["kind"], "rollback");
    let shown = s.ok(&["status", &r]);
    assert!(
        shown.contains(&format!("rollback of stage Deploy to {e1}")),
        "{shown}"
    );
    // `show` finds service executions too: everything about it, `with:` as written (what it
    // resolved to is in the variables, not kept as configuration).
    let shown = s.ok(&["show", &r]);
    assert!(
        shown.contains(&format!("rollback  of stage Deploy to {e1}"))
            && shown.contains("with      value = v#{variables.version}")
            && shown.contains("variable  Value = v1"),
        "{shown}"
    );
    // Guards: not the first stage; only to an execution that succeeded in the stage.
    let first = s.sluice(&["rollback", "lanes", "Build", "--to", &e1]);
    assert!(
        first.code == 2 && first.stderr.contains("first (source) stage"),
        "{first:?}"
    );
    let e3 = s.start(&[]);
    s.holding(&e3);
    s.ok(&["stop", &e3, "--abandon"]);
    s.done(&e3);
    let never = s.sluice(&["rollback", "lanes", "Deploy", "--to", &e3]);
    assert!(
        never.code == 2 && never.stderr.contains("did not succeed in stage `Deploy`"),
        "{never:?}"
    );
}

#[test]
fn execution_modes_transitions_and_rollback_on_the_embedded_service() {
    let p = project("superseded");
    let s = Service::embedded(&p);
    superseded_mode(&s);
    queued_mode_and_transitions(&s);
    parallel_mode(&s);
    rollback(&s);
}

#[test]
fn execution_modes_transitions_and_rollback_on_nats_with_two_engines() {
    let nats = NatsServer::start();
    let p = project("superseded");
    let s = Service::on_nats(&p, &nats.url());
    superseded_mode(&s);
    queued_mode_and_transitions(&s);
    parallel_mode(&s);
    rollback(&s);
}

/// Build runs a host program for a while, so that a stop finds it running; Deploy follows.
const STOPPING: &str = r##"
name: stopping
stages:
  - name: Build
    actions:
      - name: Compile
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "sleep 2" }
  - name: Deploy
    actions:
      - { name: Ship, uses: noop@1 }
"##;

/// [`STOPPING`] with a parallel group in Build: the stop comes after one action of the group
/// ended, while the other still runs, whose end then ends the execution.
const STOPPING_GROUP: &str = r##"
name: stopping-group
stages:
  - name: Build
    actions:
      - name: Compile
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "sleep 1" }
      - name: Lint
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "sleep 3" }
  - name: Deploy
    actions:
      - { name: Ship, uses: noop@1 }
"##;

/// `sluice stop ID` (no `--abandon`) while Build's actions run: they finish, the execution
/// ends `Stopped` without entering Deploy, holds no place in any lane, and the next execution
/// runs through Deploy. Then `pipeline state --repair` rebuilds the lanes from the executions.
fn a_graceful_stop_frees_the_next_stage(s: &Service<'_>) {
    s.p.write("stopping.yaml", STOPPING);
    s.p.write("group.yaml", STOPPING_GROUP);
    s.ok(&["pipeline", "put", "stopping.yaml"]);
    s.ok(&["pipeline", "put", "group.yaml"]);
    for (pipeline, actions) in [
        ("stopping", &["Compile"][..]),
        ("stopping-group", &["Compile", "Lint"][..]),
    ] {
        let e1 = s.start_pipeline(pipeline, &[]);
        wait_for(Duration::from_secs(30), "Build's programs to run", || {
            actions
                .iter()
                .all(|a| s.logged(&format!("running {e1}/Build/{a} attempt 1")))
                .then_some(())
        });
        if actions.len() > 1 {
            s.until(&e1, "Compile to end while Lint runs", |e| {
                status(action(e, "Build/Compile")) == "Succeeded"
            });
        }
        let stop = s.ok(&["stop", &e1]);
        assert!(stop.contains("Stopping"), "{pipeline}: {stop}");
        let end = s.done(&e1);
        assert_eq!(status(&end), "Stopped", "{pipeline}: {end:#}");
        assert_eq!(stage_status(&end, "Deploy"), "NotStarted", "{pipeline}");
        for a in actions {
            assert_eq!(
                status(action(&end, &format!("Build/{a}"))),
                "Succeeded",
                "{pipeline}: a running action finishes"
            );
        }
        // The record says Stopped first; the place is given back just after (it stayed taken
        // for good before the fix).
        wait_for(
            Duration::from_secs(10),
            &format!("{pipeline}: the stopped execution to free its place"),
            || {
                s.ok(&["pipeline", "state", pipeline])
                    .contains("no execution inside or waiting")
                    .then_some(())
            },
        );
        let e2 = s.start_pipeline(pipeline, &[]);
        let after = s.done(&e2);
        assert_eq!(status(&after), "Succeeded", "{pipeline}: {after:#}");
        assert_eq!(stage_status(&after, "Deploy"), "Succeeded");
    }
    let repaired = s.ok(&["pipeline", "state", "stopping", "--repair"]);
    assert!(
        repaired.contains("lanes of stopping rebuilt from its executions")
            && repaired.contains("no execution inside or waiting"),
        "{repaired}"
    );
    let unknown = s.sluice(&["pipeline", "state", "nope", "--repair"]);
    assert!(
        unknown.code == 2 && unknown.stderr.contains("no pipeline `nope`"),
        "{unknown:?}"
    );
}

#[test]
fn a_graceful_stop_frees_the_next_stage_on_the_embedded_service() {
    let p = project("superseded");
    a_graceful_stop_frees_the_next_stage(&Service::embedded(&p));
}

#[test]
fn a_graceful_stop_frees_the_next_stage_on_nats_with_two_engines() {
    let nats = NatsServer::start();
    let p = project("superseded");
    a_graceful_stop_frees_the_next_stage(&Service::on_nats(&p, &nats.url()));
}

const CONDITIONED: &str = r##"
name: conditioned
variables:
  env: dev
  outcome: ok
  version: "1"
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok, value: "#{variables.version}" }
        namespace: build
  - name: Audit
    before_entry:
      result: SKIP
      rules:
        - rule: variable-check
          input: "#{variables.env}"
          operator: equals
          value: prod
    actions:
      - name: Scan
        uses: PROBE
        with: { mode: ok }
  - name: Deploy
    before_entry:
      result: FAIL
      rules:
        - rule: variable-check
          input: "#{build.Value}"
          operator: matches
          value: "^[0-9]+$"
    on_failure:
      result: ROLLBACK
    actions:
      - name: Ship
        uses: PROBE
        with: { mode: "#{variables.outcome}", value: "v#{variables.version}" }
"##;

#[test]
fn stage_conditions_skip_fail_and_roll_back_in_the_service() {
    let p = Project::new(CONDITIONED);
    stage_conditions(&Service::embedded(&p));
}

#[test]
fn stage_conditions_skip_fail_and_roll_back_on_nats() {
    let nats = NatsServer::start();
    let p = Project::new(CONDITIONED);
    stage_conditions(&Service::on_nats(&p, &nats.url()));
}

fn stage_conditions(s: &Service<'_>) {
    s.ok(&["pipeline", "put", "pipeline.yaml"]);
    let start = |vars: &[&str]| s.start_pipeline("conditioned", vars);
    // env=dev: Audit is skipped by its before_entry rule, Deploy runs.
    let good = start(&[]);
    let e = s.done(&good);
    assert_eq!(status(&e), "Succeeded", "{e:#}");
    assert_eq!(stage_status(&e, "Audit"), "Skipped");
    let shown = s.ok(&["status", &good]);
    assert!(
        shown.contains("before_entry SKIP: variable-check: #{variables.env} is \"dev\""),
        "{shown}"
    );
    // env=prod: Audit runs.
    let prod = start(&["env=prod"]);
    let e = s.done(&prod);
    assert_eq!(stage_status(&e, "Audit"), "Succeeded");
    // A version that is not a number: Deploy's before_entry fails the stage before it runs.
    let e = s.done(&start(&["version=1.x"]));
    assert_eq!(
        (status(&e), stage_status(&e, "Deploy")),
        ("Failed", "Failed".to_string())
    );
    assert_eq!(status(action(&e, "Deploy/Ship")), "Skipped");
    assert!(
        e["stages"][2]["condition"]
            .as_str()
            .unwrap()
            .starts_with("before_entry FAIL"),
        "{e:#}"
    );
    // Deploy fails: on_failure rolls it back to the last execution that succeeded in it.
    let bad = start(&["version=7", "outcome=fail"]);
    let e = s.done(&bad);
    assert_eq!(status(&e), "Failed");
    let rb = wait_for(Duration::from_secs(30), "the automatic rollback", || {
        let list: Value =
            serde_json::from_str(&s.ok(&["executions", "conditioned", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| {
                x["trigger"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("rollback"))
            })
            .map(|x| x["execution_id"].as_str().unwrap().to_string())
    });
    let rolled = s.done(&rb);
    assert_eq!(status(&rolled), "Succeeded", "{rolled:#}");
    assert_eq!(
        rolled["rollback"]["target"],
        prod.as_str(),
        "the newest execution that succeeded in Deploy"
    );
    assert_eq!(
        action(&rolled, "Deploy/Ship")["variables"]["Value"],
        "v1",
        "with that execution's variables"
    );
    assert_eq!(rolled["rollback"]["after"], bad.as_str());
}

const RULED: &str = r##"
name: ruled
variables:
  version: "1.4.0"
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok, value: "#{variables.version}" }
        namespace: build
  - name: Production
    before_entry:
      result: FAIL
      rules:
        - rule: ./release_version.wasm
          with: { version: "#{build.Value}" }
    actions:
      - name: Ship
        uses: PROBE
        with: { mode: ok }
"##;

#[test]
fn custom_rule_components_decide_conditions_locally_and_in_the_service() {
    let p = Project::new(RULED);
    std::fs::copy(crate::harness::rust_rule(), p.path("release_version.wasm")).unwrap();
    // Local run: a release version passes, a pre-release fails the stage with the rule's reason.
    let r = p.run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(stage_status(&r.json(), "Production"), "Succeeded");
    let r = p.run(&["--var", "version=1.5.0-rc.1"]);
    assert_eq!(r.code, 1);
    let e = r.json();
    assert_eq!(stage_status(&e, "Production"), "Failed");
    assert_eq!(status(action(&e, "Production/Ship")), "Skipped");
    assert_eq!(
        e["stages"][1]["condition"],
        "before_entry FAIL: rule ./release_version.wasm: 1.5.0-rc.1 is a pre-release (rc.1)"
    );
    // The rule's log lines are kept with the execution.
    let logs = p.sluice(&["logs", e["execution_id"].as_str().unwrap()]);
    assert!(
        logs.stdout.contains("checking version \"1.5.0-rc.1\""),
        "{logs:?}"
    );

    // The service runs the check as a job, the same way.
    let s = Service::embedded(&p);
    s.ok(&["pipeline", "put", "pipeline.yaml"]);
    let good = s.ok(&["start", "ruled"]).trim().to_string();
    assert_eq!(status(&s.done(&good)), "Succeeded");
    let bad = s
        .ok(&["start", "ruled", "--var", "version=2"])
        .trim()
        .to_string();
    let e = s.done(&bad);
    assert_eq!(
        e["stages"][1]["condition"],
        "before_entry FAIL: rule ./release_version.wasm: \"2\" is not a MAJOR.MINOR.PATCH version"
    );

    // A rule that is not a rule component is refused when the pipeline is validated.
    p.write("not-a-rule.wasm", "\0asm nope");
    p.write(
        "bad.yaml",
        &p.read("pipeline.yaml")
            .replace("./release_version.wasm", "./not-a-rule.wasm"),
    );
    let v = p.sluice(&["validate", "bad.yaml"]);
    assert_eq!(v.code, 2);
    assert!(
        v.stderr
            .contains("bad.yaml:12:5: stage `Production`: `before_entry` rule ./not-a-rule.wasm:"),
        "{}",
        v.stderr
    );
    // Neither is an action component (the probe plugin).
    std::fs::copy(crate::harness::probe(), p.path("action.wasm")).unwrap();
    p.write(
        "bad.yaml",
        &p.read("pipeline.yaml")
            .replace("./release_version.wasm", "./action.wasm"),
    );
    let v = p.sluice(&["validate", "bad.yaml"]);
    assert!(
        v.code == 2
            && v.stderr.contains(
                "does not export the sluice:action@0.1.0 `rule` world: no export `check` found"
            ),
        "{}",
        v.stderr
    );
}
