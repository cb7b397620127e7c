//! Manual approvals: `pending` on an approval, decisions with who may decide, timeouts, and
//! waits that survive a restart — with `sluice run` (local) and `sluice serve` (embedded and NATS).
use crate::harness::nats::{Engine, NatsServer, wait_for};
use crate::harness::{Project, action, error, status};
use serde_json::Value;
use std::time::Duration;

const GATED: &str = r##"
name: gated
variables:
  version: "1.0"
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok, value: "v#{variables.version}" }
        namespace: build
  - name: Production
    actions:
      - name: Gate
        uses: approval@1
        with:
          approvers: "ana, bo"
          min_approvals: "APPROVALS"
          custom_data: "release #{build.Value}"
          external_link: https://example.com/release-notes
      - name: Deploy
        uses: PROBE
        run_order: 2
        with: { mode: ok, value: "#{gate.ApprovedBy}" }
"##;

fn gated(approvals: u32) -> Project {
    Project::new(&GATED.replace("APPROVALS", &approvals.to_string()).replace(
        "      - name: Gate\n        uses: approval@1\n",
        "      - name: Gate\n        uses: approval@1\n        namespace: gate\n",
    ))
}

#[test]
fn local_runs_pre_approve_or_fail_clearly_without_a_terminal() {
    let p = gated(1);
    let r = p.run(&["--approve", "Production/Gate", "--as", "ana"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let exec = r.json();
    assert_eq!(
        action(&exec, "Production/Gate")["variables"]["ApprovedBy"],
        "ana"
    );
    assert_eq!(
        action(&exec, "Production/Deploy")["variables"]["Value"],
        "ana"
    );
    assert_eq!(
        action(&exec, "Production/Gate")["attempt"],
        2,
        "waiting and deciding: two runs of the plugin"
    );

    // No terminal (tests have none) and no --approve: a clear failure, not a hang.
    let r = p.run(&[]);
    assert_eq!(r.code, 1);
    let exec = r.json();
    assert!(
        error(action(&exec, "Production/Gate")).contains("pass --approve Production/Gate"),
        "{exec:#}"
    );
    assert_eq!(status(action(&exec, "Production/Deploy")), "NotStarted");

    // Pre-approving as someone who is not an approver is refused.
    let r = p.run(&["--approve", "Production/Gate", "--as", "mallory"]);
    assert_eq!(r.code, 1);
    assert!(
        error(action(&r.json(), "Production/Gate")).contains("mallory is not an approver"),
        "{}",
        r.stdout
    );

    // Limits are checked when the pipeline is validated.
    p.write(
        "bad.yaml",
        &p.read("pipeline.yaml").replace(
            "min_approvals: \"1\"",
            "min_approvals: \"0\"\n          timeout: 90d",
        ),
    );
    let v = p.sluice(&["validate", "bad.yaml"]);
    assert_eq!(v.code, 2);
    assert!(
        v.stderr
            .contains("`min_approvals` must be a whole number of at least 1"),
        "{}",
        v.stderr
    );
    assert!(
        v.stderr
            .contains("approval `timeout` must be between 5m and 60d"),
        "{}",
        v.stderr
    );
}

fn serve(p: &Project) -> Engine {
    let e = Engine::start(p.dir.path(), ".sluice", &[]);
    // A killed engine leaves its socket file behind: wait for an answer, not for the file.
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (p.sluice(&["pipeline", "ls"]).code == 0).then_some(())
    });
    e
}

fn as_user(p: &Project, who: &str, args: &[&str]) -> crate::harness::Run {
    p.sluice_env(args, &[("SLUICE_USER", who)])
}

fn record(p: &Project, id: &str) -> Value {
    serde_json::from_str(&p.sluice(&["status", id, "--json"]).stdout).unwrap()
}

fn waiting(p: &Project, id: &str) -> Value {
    wait_for(Duration::from_secs(30), "the gate to wait", || {
        let e = record(p, id);
        action(&e, "Production/Gate")["waiting"]
            .is_object()
            .then_some(e)
    })
}

fn finished(p: &Project, id: &str) -> Value {
    wait_for(Duration::from_secs(30), "the execution to end", || {
        let e = record(p, id);
        matches!(status(&e), "Succeeded" | "Failed" | "Stopped").then_some(e)
    })
}

/// At a terminal, `sluice run` asks with the custom data and the link, and asks again after
/// an answer that is neither yes nor no (it used to reject the release).
#[test]
fn the_local_prompt_shows_what_to_decide_and_asks_again_after_a_wrong_answer() {
    use std::io::Write;
    let p = gated(1);
    // `script` gives the run a terminal; the answers arrive through it.
    let mut run = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} run pipeline.yaml --as ana",
            env!("CARGO_BIN_EXE_sluice")
        ))
        .arg("/dev/null")
        .current_dir(p.dir.path())
        .env_remove("SLUICE_DATA")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut answers = run.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        answers.write_all(b"maybe\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        answers.write_all(b"y\n").unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let out = run.wait_with_output().unwrap();
    feeder.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in [
        "Production/Gate needs approval.",
        "release v1.0",
        "https://example.com/release-notes",
        "Approve as ana? [y/N]",
        "Please answer y or n (not \"maybe\")",
        "approved by ana",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
}

#[test]
fn service_approvals_check_who_decides_and_survive_a_restart() {
    let p = gated(2);
    let mut engine = serve(&p);
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let id = as_user(&p, "cy", &["start", "gated"])
        .stdout
        .trim()
        .to_string();
    let e = waiting(&p, &id);
    let gate = action(&e, "Production/Gate");
    assert_eq!(status(gate), "InProgress");
    assert_eq!(gate["summary"], "waiting for 0 of 2 approvals from ana, bo");
    let token = gate["waiting"]["token"].as_str().unwrap().to_string();
    // `status` says what the action waits for, since when, and what the approvers need.
    let text = p.sluice(&["status", &id]);
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains("Gate InProgress"))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(
        line.contains("waiting for approval since ")
            && line
                .contains(" ago) from ana, bo: release v1.0 (https://example.com/release-notes)")
            && !line.contains("attempt"),
        "{line}"
    );
    // `start --as` names who started it.
    let other = p.sluice(&["start", "gated", "--as", "dora"]);
    assert_eq!(other.code, 0, "{other:?}");
    let started = record(&p, other.stdout.trim());
    assert_eq!(started["trigger"]["started_by"], "dora");
    assert_eq!(
        p.sluice(&["stop", other.stdout.trim(), "--abandon"]).code,
        0
    );

    // `sluice approvals` lists it, with what the approvers need to decide; `--mine` only for
    // those who may decide; never with its token.
    let listed = as_user(&p, "ana", &["approvals"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    for expected in [
        format!("{id} Production/Gate  gated  waiting "),
        "approvers: ana, bo".to_string(),
        "release v1.0".to_string(),
        "https://example.com/release-notes".to_string(),
        format!("sluice approve {id} Production/Gate"),
    ] {
        assert!(
            listed.stdout.contains(&expected),
            "{expected:?} in {}",
            listed.stdout
        );
    }
    assert!(!listed.stdout.contains(&token), "{}", listed.stdout);
    let mine = |who: &str| {
        let r = as_user(&p, who, &["approvals", "--mine", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str::<Vec<Value>>(&r.stdout).unwrap().len()
    };
    assert_eq!((mine("ana"), mine("mallory")), (1, 0));

    // Refusals change nothing and say why.
    let refused = |who: &str, args: &[&str], why: &str| {
        let r = as_user(&p, who, args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains(why), "{why:?} not in {}", r.stderr);
    };
    refused(
        "mallory",
        &["approve", &id, "Production/Gate"],
        "mallory is not an approver of Gate (approvers: ana, bo)",
    );
    refused(
        "ana",
        &[
            "approve",
            &id,
            "Production/Gate",
            "--approval-token",
            "wrong",
        ],
        "does not match the pending approval",
    );
    // A wrong token never learns the right one.
    let wrong = as_user(
        &p,
        "ana",
        &[
            "approve",
            &id,
            "Production/Gate",
            "--approval-token",
            "wrong",
        ],
    );
    assert!(!wrong.stderr.contains(&token), "{}", wrong.stderr);
    refused(
        "ana",
        &["approve", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "Production/Gate"],
        "no execution",
    );
    refused(
        "ana",
        &["approve", &id, "Build/Compile"],
        "Compile is not waiting for an approval",
    );

    // One approval of two: still waiting, and it survives a restart of the engine.
    let ok = as_user(
        &p,
        "ana",
        &[
            "approve",
            &id,
            "Production/Gate",
            "--summary",
            "looks good",
            "--approval-token",
            &token,
        ],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    refused(
        "ana",
        &["approve", &id, "Production/Gate"],
        "ana has already decided on Gate",
    );
    let e = waiting(&p, &id);
    assert_eq!(action(&e, "Production/Gate")["decisions"][0]["by"], "ana");
    // Ana has decided: it is no longer hers to decide, still bo's.
    assert_eq!((mine("ana"), mine("bo")), (0, 1));
    engine.kill9();
    let _engine = serve(&p);
    let e = waiting(&p, &id);
    assert_eq!(
        action(&e, "Production/Gate")["summary"],
        "waiting for 1 of 2 approvals from ana, bo, approved so far by ana"
    );
    let ok = as_user(
        &p,
        "bo",
        &["approve", &id, "Production/Gate", "--summary", "ship it"],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    let e = finished(&p, &id);
    assert_eq!(status(&e), "Succeeded", "{e:#}");
    assert_eq!(
        action(&e, "Production/Deploy")["variables"]["Value"],
        "ana, bo"
    );
    assert!(
        as_user(&p, "bo", &["approvals"])
            .stdout
            .contains("no approval waits"),
        "nothing waits once decided"
    );
    let decisions = action(&e, "Production/Gate")["decisions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        decisions
            .iter()
            .map(|d| d["by"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ana", "bo"]
    );
    assert_eq!(decisions[1]["summary"], "ship it");
    assert!(decisions[1]["at"].is_string());
    // Deciding on what is no longer pending is refused.
    refused(
        "bo",
        &["reject", &id, "Production/Gate"],
        "not waiting for an approval",
    );

    // The starter may not approve; a rejection fails the action with the approver's words.
    let id = as_user(&p, "ana", &["start", "gated"])
        .stdout
        .trim()
        .to_string();
    waiting(&p, &id);
    refused(
        "ana",
        &["approve", &id, "Production/Gate"],
        "ana started this execution and may not approve it",
    );
    assert_eq!(
        as_user(
            &p,
            "bo",
            &[
                "reject",
                &id,
                "Production/Gate",
                "--summary",
                "not on a Friday"
            ]
        )
        .code,
        0
    );
    let e = finished(&p, &id);
    assert_eq!(status(&e), "Failed");
    assert_eq!(
        error(action(&e, "Production/Gate")),
        "rejected by bo: not on a Friday"
    );
}

const SHORT_WAIT: &str = r##"
name: short
stages:
  - name: Gate
    actions:
      - name: Wait
        uses: PROBE
        with: { mode: approval, approvers: ana, timeout: 2s }
"##;

#[test]
fn an_approval_that_nobody_decides_times_out() {
    let p = Project::new(SHORT_WAIT);
    let _engine = serve(&p);
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let start = p.sluice(&["start", "short", "--watch"]);
    assert_eq!(start.code, 1, "{start:?}");
    let e = record(&p, start.stdout.trim());
    assert_eq!(status(action(&e, "Gate/Wait")), "Failed");
    assert!(
        error(action(&e, "Gate/Wait")).starts_with("timeout: no approval decision within 2"),
        "{e:#}"
    );
}

#[test]
fn approvals_over_nats_notify_survive_an_engine_restart_and_accept_decisions_by_request() {
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let url = nats.url();
    let p = gated(1);
    let mut engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    let client = |who: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", &url]);
        p.sluice_env(&all, &[("SLUICE_USER", who)])
    };
    wait_for(Duration::from_secs(30), "the engine", || {
        (client("x", &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nc = async_nats::connect(&url).await.unwrap();
        let mut notices = nc.subscribe("sluice.default.events.approval.gated").await.unwrap();
        nc.flush().await.unwrap(); // the server knows the subscription before anything starts
        let id = client("cy", &["start", "gated"]).stdout.trim().to_string();
        let notice: Value = serde_json::from_slice(&tokio::time::timeout(Duration::from_secs(30), notices.next()).await.unwrap().unwrap().payload).unwrap();
        assert_eq!(notice["execution_id"], id.as_str());
        assert_eq!((notice["stage"].as_str(), notice["action"].as_str()), (Some("Production"), Some("Gate")));
        let a = &notice["approval"];
        assert_eq!(a["custom_data"], "release v1.0");
        assert_eq!(a["external_link"], "https://example.com/release-notes");
        assert_eq!(a["approvers"], serde_json::json!(["ana", "bo"]));
        assert!(a["expires_at"].is_string() && a["token"].is_string(), "{notice:#}");
        // The wait survives the engine: kill -9 it and start another.
        engine.kill9();
        let _engine = Engine::start(p.dir.path(), "engine-2", &["--nats", &url]);
        // Decide with a plain NATS request, as a chat bot would (retried until an engine answers).
        let body = serde_json::json!({"execution_id": id, "action": "Production/Gate", "by": "bo", "summary": "go", "token": a["token"]});
        let mut reply = None;
        for _ in 0..300 {
            match nc.request("sluice.default.api.approve", body.to_string().into()).await {
                Ok(r) => {
                    reply = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let reply = reply.expect("an engine answers");
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"]["decision"], "approved", "{reply}");
        let bad = nc.request("sluice.default.api.approve", serde_json::json!({"execution_id": id, "action": "Production/Gate", "by": "bo"}).to_string().into()).await.unwrap();
        let bad: Value = serde_json::from_slice(&bad.payload).unwrap();
        let message = bad["error"]["message"].as_str().unwrap();
        assert!(message.contains("bo has already decided") || message.contains("not waiting"), "{bad}");
        assert_eq!(bad["error"]["code"], "conflict", "{bad}");
        let e = wait_for(Duration::from_secs(30), "the execution to end", || {
            let r = client("x", &["status", &id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            (status(&e) == "Succeeded").then_some(e)
        });
        assert_eq!(action(&e, "Production/Deploy")["variables"]["Value"], "bo");
    });
}

#[test]
fn an_action_waiting_for_a_nats_event_wakes_on_it_even_when_published_while_no_engine_runs() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(
        r##"
name: deploy
stages:
  - name: Deploy
    actions:
      - { name: Wait, uses: PROBE, with: { mode: hold, subject: deploys.done.42 } }
      - { name: Wildcard, uses: PROBE, with: { mode: hold, subject: "deploys.*" } }
"##,
    );
    let client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", &url]);
        p.sluice(&all)
    };
    let mut engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine", || {
        (client(&["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let started = client(&["start", "deploy"]);
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_string();
    // None while no engine answers (it restarts below).
    let record = |id: &str| -> Option<Value> {
        serde_json::from_str(&client(&["status", id, "--json"]).stdout).ok()
    };
    let e = wait_for(
        Duration::from_secs(30),
        "the action to wait for its event",
        || {
            let e = record(&id)?;
            (action(&e, "Deploy/Wait")["waiting"]["wake"]["event"] == "deploys.done.42"
                && status(action(&e, "Deploy/Wildcard")) == "Failed")
                .then_some(e)
        },
    );
    assert!(
        error(action(&e, "Deploy/Wildcard")).contains(
            "cannot wait for an event on deploys.*: \"deploys.*\": wait for a concrete subject"
        ),
        "{e:#}"
    );
    // The engine goes away; the deploy system reports completion meanwhile.
    engine.kill9();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nc = async_nats::connect(&url).await.unwrap();
        nc.publish("deploys.done.42", "{\"status\":\"deployed\"}".into())
            .await
            .unwrap();
        nc.flush().await.unwrap();
    });
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    let e = wait_for(
        Duration::from_secs(30),
        "the event to wake the action",
        || {
            let e = record(&id)?;
            (status(action(&e, "Deploy/Wait")) == "Succeeded").then_some(e)
        },
    );
    let wait = action(&e, "Deploy/Wait");
    assert_eq!(wait["variables"]["Released"], "{\"status\":\"deployed\"}");
    assert_eq!(
        wait["attempt"], 2,
        "woken: a new attempt with the event as its payload"
    );
}
