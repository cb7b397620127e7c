//! The service, end to end: `sluice serve` (embedded and on a real nats-server), pipelines
//! registered, started by `sluice start` and by events published to NATS, one execution per
//! event id, git filters, the dead letter, and engines that die mid-run.
use crate::harness::nats::{Engine, NatsServer, http, port, wait_for};
use crate::harness::{Project, Run, action, status};
use serde_json::{Value, json};
use std::time::Duration;

const PIPELINE: &str = r##"
name: svc
variables:
  who: nobody
triggers:
  git:
    - branches: { include: [main, "release/*"], exclude: ["release/old*"] }
      file_paths: { include: ["src/**"] }
stages:
  - name: Source
    actions:
      - name: Fetch
        uses: PROBE
        with: { mode: ok, value: "#{variables.who}" }
        namespace: fetched
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok, value: "built for #{fetched.Value}" }
      - name: Lint
        uses: PROBE
        with: { mode: context }
"##;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publish to JetStream (optionally with a `Nats-Msg-Id`), as any NATS client would.
pub(crate) fn publish(url: &str, subject: &str, payload: &str, msg_id: Option<&str>) {
    rt().block_on(async {
        let client = async_nats::connect(sluice_nats::servers(url))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.to_string().into());
        if let Some(id) = msg_id {
            msg = msg.message_id(id);
        }
        js.send_publish(subject.to_string(), msg)
            .await
            .unwrap()
            .await
            .unwrap();
    })
}

/// Publish to JetStream with headers (a CloudEvent in binary mode), as any NATS client would.
fn publish_with_headers(url: &str, subject: &str, payload: &str, headers: &[(&str, &str)]) {
    rt().block_on(async {
        let client = async_nats::connect(sluice_nats::servers(url))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        js.publish_with_headers(subject.to_string(), map, payload.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    })
}

/// A core NATS publish, as any client would make it (credentials in the URL).
pub fn raw_publish(url: &str, subject: &str, payload: &[u8]) {
    rt().block_on(async {
        let (options, plain) = sluice_nats::options_for(url);
        let client = options.connect(plain.as_str()).await.unwrap();
        client
            .publish(subject.to_string(), payload.to_vec().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    })
}

/// The JSON messages on `subject` (a pattern) that arrive at `url`'s client while `during`
/// runs and for `window` after.
pub fn collect(url: &str, subject: &str, window: Duration, during: impl FnOnce()) -> Vec<Value> {
    let rt = rt();
    let mut sub = rt.block_on(async {
        let (options, plain) = sluice_nats::options_for(url);
        let client = options.connect(plain.as_str()).await.unwrap();
        let sub = client.subscribe(subject.to_string()).await.unwrap();
        client.flush().await.unwrap();
        (client, sub)
    });
    during();
    rt.block_on(async {
        use futures_util::StreamExt;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.1.next()).await {
            if let Ok(v) = serde_json::from_slice(&m.payload) {
                out.push(v);
            }
        }
        out
    })
}

/// One NATS request, as any client would make it; the reply's payload as text.
pub fn raw_request(url: &str, subject: &str, payload: &[u8]) -> String {
    raw_request_with(url, subject, None, payload)
}

/// [`raw_request`] with `token` in the `Authorization` header, as the CLI sends it.
pub fn raw_request_with(url: &str, subject: &str, token: Option<&str>, payload: &[u8]) -> String {
    rt().block_on(async {
        let (options, plain) = sluice_nats::options_for(url);
        let client = options.connect(plain.as_str()).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(token) = token {
            headers.insert("Authorization", format!("Bearer {token}").as_str());
        }
        let reply = client
            .request_with_headers(subject.to_string(), headers, payload.to_vec().into())
            .await
            .unwrap();
        String::from_utf8_lossy(&reply.payload).into_owned()
    })
}

/// Messages stored on a JetStream stream subject so far.
pub fn stored(url: &str, stream: &str, subject: &str) -> Vec<Value> {
    rt().block_on(async {
        use futures_util::StreamExt;
        let client = async_nats::connect(sluice_nats::servers(url))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut messages = consumer.messages().await.unwrap();
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        {
            out.push(serde_json::from_slice(&m.payload).unwrap_or(Value::Null));
        }
        out
    })
}

pub fn client(p: &Project, url: &str, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--nats", url]);
    p.sluice_env(&all, &[("SLUICE_USER", "tester")])
}

fn executions(p: &Project, url: &str) -> Vec<Value> {
    let r = client(p, url, &["executions", "svc", "--json", "--limit", "100"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn exec_status(p: &Project, url: &str, id: &str) -> Value {
    let r = client(p, url, &["status", id, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

/// Wait for an execution to end (status requests may fail while NATS restarts).
fn wait_done(p: &Project, url: &str, id: &str) -> Value {
    wait_for(
        Duration::from_secs(60),
        &format!("execution {id} to end"),
        || {
            let r = client(p, url, &["status", id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            matches!(status(&e), "Succeeded" | "Failed" | "Stopped").then_some(e)
        },
    )
}

#[test]
fn embedded_service_registers_starts_and_watches_pipelines() {
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });

    let put = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "{put:?}");
    assert!(
        put.stdout.contains("registered svc version 1"),
        "{}",
        put.stdout
    );
    let again = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert!(again.stdout.contains("version 2"), "{}", again.stdout);
    let ls = p.sluice(&["pipeline", "ls"]);
    assert!(ls.stdout.contains("svc\tv2"), "{}", ls.stdout);

    // Start and follow: the events of every stage and action, exit 0 on success.
    let start = p.sluice_env(
        &["start", "svc", "--var", "who=alice", "--watch"],
        &[("SLUICE_USER", "tester")],
    );
    assert_eq!(start.code, 0, "{start:?}");
    let id = start.stdout.trim().to_string();
    for line in [
        "stage Source",
        "Source/Fetch",
        "Build/Compile",
        "Build/Lint",
        "✓ Succeeded pipeline svc",
    ] {
        assert!(
            start.stderr.contains(line),
            "missing {line:?} in\n{}",
            start.stderr
        );
    }
    let r = p.sluice(&["status", &id, "--json"]);
    let exec: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status(&exec), "Succeeded");
    assert_eq!(exec["pipeline_version"], 2);
    assert_eq!(exec["trigger"]["kind"], "manual");
    assert_eq!(exec["trigger"]["started_by"], "tester");
    assert_eq!(
        action(&exec, "Build/Compile")["variables"]["Value"],
        "built for alice"
    );
    let list = p.sluice(&["executions"]);
    assert!(
        list.stdout.contains(&id) && list.stdout.contains("Succeeded"),
        "{}",
        list.stdout
    );

    // A bad pipeline is refused with its positions and nothing is registered.
    p.write(
        "bad.yaml",
        "name: svc\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: nope@1\n",
    );
    let bad = p.sluice(&["pipeline", "put", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("bad.yaml:6:15"), "{}", bad.stderr);
    assert!(p.sluice(&["pipeline", "ls"]).stdout.contains("svc\tv2"));
    // Unknown pipelines and executions get clear errors.
    let unknown = p.sluice(&["start", "nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("no pipeline `nope` is registered"),
        "{}",
        unknown.stderr
    );
    let missing = p.sluice(&["status", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(
        missing.stderr.contains("no execution"),
        "{}",
        missing.stderr
    );
    // rm: gone from the list, and starting it is refused.
    assert_eq!(p.sluice(&["pipeline", "rm", "svc"]).code, 0);
    assert!(!p.sluice(&["pipeline", "ls"]).stdout.contains("svc"));
}

#[test]
fn without_a_service_client_commands_say_how_to_start_one() {
    let p = Project::new(PIPELINE);
    let r = p.sluice(&["start", "svc"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("no service is running: start one with `sluice serve`"),
        "{}",
        r.stderr
    );
    // Listing needs no service: there is nothing yet.
    let list = p.sluice(&["executions"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.stdout.trim(), "no executions yet");
}

/// One history: `sluice executions` lists local runs and the embedded service's executions
/// of a data dir together, marked, under a header; with the service stopped its executions
/// are read from its store (`executions`, `show`, `status`), and from another directory
/// with `--data`.
#[test]
fn one_history_of_local_runs_and_service_executions_readable_with_the_service_stopped() {
    let p = Project::new(PIPELINE);
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let local = run.json()["execution_id"].as_str().unwrap().to_string();
    let mut engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (p.sluice(&["pipeline", "ls"]).code == 0).then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let served = p.sluice(&["start", "svc"]).stdout.trim().to_string();
    wait_for(Duration::from_secs(30), "the start to succeed", || {
        let r = p.sluice(&["status", &served, "--json"]);
        (r.code == 0 && status(&r.json()) == "Succeeded").then_some(())
    });
    let listed = |args: &[&str]| -> Vec<(String, String)> {
        let mut all = vec!["executions", "--json"];
        all.extend_from_slice(args);
        let r = p.sluice(&all);
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str::<Vec<Value>>(&r.stdout)
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["execution_id"].as_str().unwrap().to_string(),
                    e["source"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // Newest first: the service's start came after the local run.
    assert_eq!(
        listed(&[]),
        vec![
            (served.clone(), "service".into()),
            (local.clone(), "run".into())
        ]
    );
    engine.kill9();
    assert_eq!(
        listed(&[]),
        vec![
            (served.clone(), "service (stopped)".into()),
            (local.clone(), "run".into())
        ]
    );
    let text = p.sluice(&["executions"]);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("SOURCE"),
        "{}",
        text.stdout
    );
    // Aligned: every row's status starts in the header's STATUS column.
    let column = lines[0].find("STATUS").unwrap();
    for row in &lines[1..] {
        assert!(row[column..].starts_with("Succeeded"), "{}", text.stdout);
    }
    let shown = p.sluice(&["show", &served]);
    assert!(
        shown.stdout.contains("pipeline svc v1  Succeeded"),
        "{shown:?}"
    );
    let st = p.sluice(&["status", &served, "--json"]);
    assert_eq!(status(&st.json()), "Succeeded");
    // From another directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let data = p.path(".sluice");
    let r = crate::harness::sluice_in(
        elsewhere.path(),
        &["executions", "--data", data.to_str().unwrap()],
        &[],
    );
    assert!(
        r.stdout.contains(&served) && r.stdout.contains(&local),
        "{r:?}"
    );
}

#[test]
fn nats_events_start_pipelines_once_per_event_id_and_filters_apply() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), "engine-a", &["--nats", &url]);
    let put = wait_for(Duration::from_secs(30), "the engine to answer", || {
        let r = client(&p, &url, &["pipeline", "put", "pipeline.yaml"]);
        (r.code == 0).then_some(r)
    });
    assert!(put.stdout.contains("registered svc version 1"), "{put:?}");

    // A push to main touching src/ starts the pipeline, with the event's variables.
    let event = json!({"id": "push-1", "source": {"type": "git", "repository": "acme/app", "ref": "refs/heads/main", "commit": "abc123",
        "changed_files": ["src/main.rs"], "pusher": "alice"}, "variables": {"who": "bob"}});
    publish(
        &url,
        "sluice.default.trigger.svc",
        &event.to_string(),
        Some("push-1"),
    );
    // The same event again: deduplicated by the stream (same Nats-Msg-Id)…
    publish(
        &url,
        "sluice.default.trigger.svc",
        &event.to_string(),
        Some("push-1"),
    );
    // …and without the header (as if outside the dedup window): the claim stops it.
    publish(&url, "sluice.default.trigger.svc", &event.to_string(), None);
    // Filtered out: a branch not in the filters, an excluded branch, no file under src/.
    for (id, git_ref, file) in [
        ("push-2", "refs/heads/feature", "src/a.rs"),
        ("push-3", "refs/heads/release/old-1", "src/a.rs"),
        ("push-4", "refs/heads/main", "README.md"),
    ] {
        let e =
            json!({"id": id, "source": {"type": "git", "ref": git_ref, "changed_files": [file]}});
        publish(&url, "sluice.default.trigger.svc", &e.to_string(), Some(id));
    }
    // Accepted: a release branch.
    let e = json!({"id": "push-5", "source": {"type": "git", "ref": "refs/heads/release/1.2", "changed_files": ["src/lib.rs"]}});
    publish(
        &url,
        "sluice.default.trigger.svc",
        &e.to_string(),
        Some("push-5"),
    );
    // Malformed: not JSON, no id, an unknown pipeline. The engine keeps consuming.
    publish(&url, "sluice.default.trigger.svc", "this is not json", None);
    publish(
        &url,
        "sluice.default.trigger.svc",
        r#"{"source": {"type": "git"}}"#,
        None,
    );
    publish(&url, "sluice.default.trigger.ghost", r#"{"id": "x"}"#, None);

    let dead = wait_for(Duration::from_secs(30), "six dead letters", || {
        let d = stored(&url, "SLUICE_DEADLETTER", "sluice.default.deadletter.>");
        (d.len() >= 6).then_some(d)
    });
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("filtered out"))
            .count(),
        3,
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not a trigger event: expected")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing field `id`")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown pipeline `ghost`")),
        "{reasons:#?}"
    );
    assert!(
        dead.iter().any(|d| d["payload"] == "this is not json"),
        "the event is kept as received"
    );
    // Each rejection is also an event.
    let rejected = stored(&url, "SLUICE_EVENTS", "sluice.default.events.trigger.>");
    assert!(rejected.len() >= 6, "{rejected:#?}");

    let runs = wait_for(Duration::from_secs(60), "two finished executions", || {
        let list = executions(&p, &url);
        (list.len() >= 2 && list.iter().all(|e| e["status"] == "Succeeded")).then_some(list)
    });
    assert_eq!(
        runs.len(),
        2,
        "push-1 (three publishes) and push-5 only: {runs:#?}"
    );
    let by_event = |id: &str| {
        runs.iter()
            .find(|e| e["trigger"].as_str().unwrap().ends_with(id))
            .unwrap_or_else(|| panic!("{id}: {runs:#?}"))
    };
    let first = exec_status(
        &p,
        &url,
        by_event("push-1")["execution_id"].as_str().unwrap(),
    );
    assert_eq!(first["trigger"]["commit"], "abc123");
    assert_eq!(first["trigger"]["started_by"], "alice");
    assert_eq!(
        action(&first, "Build/Compile")["variables"]["Value"],
        "built for bob"
    );
    by_event("push-5");

    // Every state change went out as an event with CodePipeline's detail.
    let id = first["execution_id"].as_str().unwrap();
    let events: Vec<Value> = stored(&url, "SLUICE_EVENTS", "sluice.default.events.>")
        .into_iter()
        .filter(|e| e["execution_id"] == id)
        .collect();
    let has = |kind: &str, what: &str, st: &str| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["status"] == st
                && (e["stage"] == what || e["action"] == what || what.is_empty())
        })
    };
    assert!(
        has("pipeline", "", "InProgress") && has("pipeline", "", "Succeeded"),
        "{events:#?}"
    );
    assert!(
        has("stage", "Build", "Succeeded") && has("action", "Lint", "Succeeded"),
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| e["pipeline_version"] == 1),
        "{events:#?}"
    );

    // `start` goes through the same path: a repeated event id starts nothing new.
    let a = client(&p, &url, &["start", "svc", "--event-id", "manual-7"]);
    let b = client(&p, &url, &["start", "svc", "--event-id", "manual-7"]);
    assert_eq!(a.code, 0, "{a:?}");
    assert_eq!(a.stdout, b.stdout);
    wait_done(&p, &url, a.stdout.trim());
}

const EFFECT: &str = r##"
name: svc
stages:
  - name: Source
    actions:
      - name: Fetch
        uses: PROBE
        with: { mode: write, path: /out/site/index.html, value: "<h1>hi</h1>" }
        outputs: [site]
  - name: Deploy
    actions:
      - name: Release
        uses: PROBE
        with: { mode: effect, dir: "EFFECTS", pause_ms: "4000" }
        capabilities: { dirs: { "EFFECTS": rw } }
  - name: Verify
    actions:
      - name: Check
        uses: PROBE
        with: { mode: read, path: /in/site/index.html }
        inputs: [site]
"##;

/// Two engines on NATS with `--ack-wait ACK_WAIT`, the project's pipeline `svc` registered and
/// started: the engines and the execution's id.
fn two_engines_start_svc(p: &Project, url: &str, ack_wait: &str) -> ([Engine; 2], String) {
    let engines = ["engine-a", "engine-b"]
        .map(|name| Engine::start(p.dir.path(), name, &["--nats", url, "--ack-wait", ack_wait]));
    wait_for(Duration::from_secs(30), "the engines to answer", || {
        (client(p, url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let start = client(p, url, &["start", "svc"]);
    assert_eq!(start.code, 0, "{start:?}");
    (engines, start.stdout.trim().to_string())
}

/// Which of `engines` started the first attempt of `action` (STAGE/ACTION).
fn runner_of(engines: &[Engine], action: &str) -> usize {
    wait_for(
        Duration::from_secs(60),
        &format!("an engine to run {action}"),
        || {
            engines
                .iter()
                .position(|e| e.log().contains(&format!("/{action} attempt 1")))
        },
    )
}

/// `status` says which engine runs a long attempt, and once that engine is gone (kill -9),
/// that it is lost and when the queue gives the job to another engine — which then runs it.
#[test]
fn status_names_the_engine_running_an_attempt_and_says_when_it_is_lost() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(
        "name: svc\nstages:\n  - name: Hold\n    actions:\n      - { name: Sleep, uses: PROBE, cache: false, with: { mode: sleep, ms: \"5000\" } }\n",
    );
    let (mut engines, id) = two_engines_start_svc(&p, &url, "6s");
    let victim = runner_of(&engines, "Hold/Sleep");
    let pid = engines[victim].pid();
    // After one heartbeat period (2 s) the attempt names its engine.
    let running = wait_for(Duration::from_secs(10), "status to name the engine", || {
        let r = client(&p, &url, &["status", &id]);
        r.stdout.contains("running on").then_some(r.stdout)
    });
    assert!(running.contains(&format!("/{pid}, heartbeat")), "{running}");

    engines[victim].kill9();
    let lost = wait_for(
        Duration::from_secs(10),
        "status to say the engine is lost",
        || {
            let r = client(&p, &url, &["status", &id]);
            r.stdout.contains("engine lost").then_some(r.stdout)
        },
    );
    assert!(
        lost.contains(&format!("/{pid}, last heartbeat"))
            && lost.contains("redelivery to another engine"),
        "{lost}"
    );
    let json: Value =
        serde_json::from_str(&client(&p, &url, &["status", &id, "--json"]).stdout).unwrap();
    let held = &action(&json, "Hold/Sleep")["held_by"];
    assert!(
        held["lost"] == true || held.is_null(),
        "lost, or already taken by the other engine: {held}"
    );

    let exec = wait_done(&p, &url, &id);
    assert_eq!(status(&exec), "Succeeded", "{exec:#}");
    assert!(
        engines[1 - victim].log().contains("/Hold/Sleep attempt 1"),
        "the other engine ran it:\n{}",
        engines[1 - victim].log()
    );
    assert!(
        action(&exec, "Hold/Sleep")["held_by"].is_null(),
        "an ended attempt has no holder: {exec:#}"
    );
}

#[test]
fn kill_9_of_an_engine_mid_deploy_finishes_on_the_other_with_one_side_effect() {
    let nats = NatsServer::start();
    let url = nats.url();
    let effects = tempfile::tempdir().unwrap();
    let p = Project::new(&EFFECT.replace("EFFECTS", &effects.path().display().to_string()));
    let (mut engines, id) = two_engines_start_svc(&p, &url, "2s");

    // Find the engine running the deploy, wait for its side effect, and kill it.
    let victim = runner_of(&engines, "Deploy/Release");
    // Made means written, not only created: a kill between the guest's open and its write
    // would leave an empty log (the survivor then finds the marker and writes nothing).
    wait_for(Duration::from_secs(30), "the side effect", || {
        std::fs::read_to_string(effects.path().join("effects.log"))
            .is_ok_and(|log| log.ends_with('\n'))
            .then_some(())
    });
    engines[victim].kill9();
    let survivor = &engines[1 - victim];

    let exec = wait_done(&p, &url, &id);
    assert_eq!(status(&exec), "Succeeded", "{exec:#}");
    // The deploy ran in the victim's job chain: the chain's delivery came back to the survivor,
    // which found the deploy unfinished and ran it again.
    assert!(
        survivor.log().contains("/Deploy/Release attempt 1 ("),
        "the survivor ran the deploy again:\n{}",
        survivor.log()
    );
    let release = action(&exec, "Deploy/Release");
    assert_eq!(
        release["attempt"], 1,
        "the same attempt, so the same idempotency key"
    );
    assert_eq!(
        release["variables"]["Repeated"], "true",
        "the second run found the first one's marker"
    );
    let log = std::fs::read_to_string(effects.path().join("effects.log")).unwrap();
    assert_eq!(
        log.lines().count(),
        1,
        "side effect recorded exactly once: {log}"
    );
    assert_eq!(log.trim(), format!("default/{id}/Deploy/Release/1"));
    // The survivor read the artifact, whichever engine wrote it (shared through the Object Store).
    assert_eq!(action(&exec, "Verify/Check")["variables"]["Bytes"], "11");

    // Every action's end went out as an event, and each event is stored once, even when an
    // engine sent again the events of a change the other recorded.
    let events: Vec<Value> = stored(&url, "SLUICE_EVENTS", "sluice.default.events.>")
        .into_iter()
        .filter(|e| e["execution_id"] == id.as_str())
        .collect();
    for stage in exec["stages"].as_array().unwrap() {
        for a in stage["actions"].as_array().unwrap() {
            assert!(
                events.iter().any(|e| e["kind"] == "action"
                    && e["action"] == a["name"]
                    && e["status"] == "Succeeded"),
                "no Succeeded event for {}: {events:#?}",
                a["name"]
            );
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "pipeline" && e["status"] == "Succeeded"),
        "{events:#?}"
    );
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("every event has an id"))
        .collect();
    let stored_events = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        stored_events,
        "an event was stored twice: {events:#?}"
    );

    // Every action's log is readable through NATS, whichever engine ran it: the client has no
    // data directory with logs of its own.
    let logs = client(&p, &url, &["logs", &id]);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert!(
        logs.stdout.contains(&format!(
            "side effect already done for default/{id}/Deploy/Release/1"
        )),
        "the survivor's attempt:\n{}",
        logs.stdout
    );
    assert!(
        logs.stdout
            .lines()
            .any(|l| l.starts_with("Verify/Check #1")),
        "{}",
        logs.stdout
    );
    let one = client(&p, &url, &["logs", &id, "Deploy/Release"]);
    assert_eq!(one.code, 0, "{one:?}");
    assert!(
        one.stdout
            .lines()
            .all(|l| l.starts_with("Deploy/Release #1")),
        "only that action: {}",
        one.stdout
    );
    let none = client(&p, &url, &["logs", &id, "Nope/Nothing"]);
    assert_ne!(none.code, 0, "{none:?}");
    assert!(none.stderr.contains("no logs for Nope/Nothing"), "{none:?}");
}

#[test]
fn a_nats_restart_mid_pipeline_delays_but_loses_nothing() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let effects = tempfile::tempdir().unwrap();
    let p = Project::new(&EFFECT.replace("EFFECTS", &effects.path().display().to_string()));
    let engine = Engine::start(
        p.dir.path(),
        "engine-a",
        &["--nats", &url, "--ack-wait", "2s"],
    );
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let id = client(&p, &url, &["start", "svc"])
        .stdout
        .trim()
        .to_string();
    wait_for(Duration::from_secs(60), "Deploy/Release to run", || {
        engine
            .log()
            .contains("/Deploy/Release attempt 1")
            .then_some(())
    });
    nats.restart(Duration::from_millis(500));
    let exec = wait_done(&p, &url, &id);
    assert_eq!(status(&exec), "Succeeded", "{exec:#}\n{}", engine.log());
    let log = std::fs::read_to_string(effects.path().join("effects.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
}

const HOOKED: &str = r##"
name: hooked
triggers:
  webhook: { secret_env: HOOK_SECRET }
  git:
    - branches: [main]
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok }
"##;

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn webhooks_verify_signatures_and_apply_git_filters() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(HOOKED);
    let http_port = port();
    let addr = format!("127.0.0.1:{http_port}");
    let _engine = Engine::start_env(
        p.dir.path(),
        "engine",
        &["--nats", &url, "--http", &addr],
        &[("HOOK_SECRET", "s3cret")],
    );
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });

    let push = |git_ref: &str, after: &str| {
        json!({"ref": git_ref, "after": after, "repository": {"full_name": "acme/app"}, "pusher": {"name": "carol"},
        "commits": [{"added": ["src/new.rs"], "modified": [], "removed": []}]}).to_string()
    };
    let body = push("refs/heads/main", "c0ffee");
    let headers = |sig: &str, guid: &'static str| {
        vec![
            ("x-github-event", "push"),
            ("x-github-delivery", guid),
            ("content-type", "application/json"),
            ("x-hub-signature-256", sig),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect::<Vec<_>>()
    };
    let send = |h: &[(&str, String)], body: &str| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(
            http_port,
            "POST",
            "/hooks/default/hooked",
            &h,
            body.as_bytes(),
        )
    };

    // Bad signature (wrong secret, or none): 401 and nothing published.
    let (code, _) = send(&headers(&sign("wrong", body.as_bytes()), "g-bad"), &body);
    assert_eq!(code, 401);
    let (code, _) = http(
        http_port,
        "POST",
        "/hooks/default/hooked",
        &[],
        body.as_bytes(),
    );
    assert_eq!(code, 401);
    // Good signature: accepted and run.
    let (code, reply) = send(&headers(&sign("s3cret", body.as_bytes()), "g-1"), &body);
    assert_eq!(code, 202, "{reply}");
    assert!(reply.contains("\"started\":true"), "{reply}");
    // Filtered out by the git filters: accepted, not started, dead-lettered.
    let other = push("refs/heads/feature", "bad1dea");
    let (code, reply) = send(&headers(&sign("s3cret", other.as_bytes()), "g-2"), &other);
    assert_eq!(code, 202, "{reply}");
    assert!(reply.contains("filtered out"), "{reply}");
    // Unknown pipeline: 404.
    let (code, _) = http(http_port, "POST", "/hooks/default/nope", &[], b"{}");
    assert_eq!(code, 404);

    let list = wait_for(
        Duration::from_secs(60),
        "the webhook's execution to finish",
        || {
            let r = client(&p, &url, &["executions", "--json"]);
            let list: Vec<Value> = serde_json::from_str(&r.stdout).ok()?;
            (!list.is_empty() && list.iter().all(|e| e["status"] == "Succeeded")).then_some(list)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        client(&p, &url, &["executions", "--json"])
            .stdout
            .matches("execution_id")
            .count(),
        1,
        "only the good, matching push ran: {list:#?}"
    );
    let exec = exec_status(&p, &url, list[0]["execution_id"].as_str().unwrap());
    assert_eq!(exec["trigger"]["event_id"], "g-1");
    assert_eq!(exec["trigger"]["commit"], "c0ffee");
    assert_eq!(exec["trigger"]["started_by"], "carol");
    let dead = stored(
        &url,
        "SLUICE_DEADLETTER",
        "sluice.default.deadletter.hooked",
    );
    assert_eq!(dead.len(), 1, "{dead:#?}");
}

#[test]
fn cron_schedules_start_pipelines() {
    let p = Project::new(&HOOKED.replace(
        "  webhook: { secret_env: HOOK_SECRET }\n",
        "  schedule:\n    - cron: \"*/2 * * * * *\"\n      timezone: Europe/Berlin\n",
    ));
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "{put:?}");
    let runs = wait_for(Duration::from_secs(30), "two scheduled executions", || {
        let list: Vec<Value> =
            serde_json::from_str(&p.sluice(&["executions", "--json"]).stdout).ok()?;
        (list.iter().filter(|e| e["status"] == "Succeeded").count() >= 2).then_some(list)
    });
    assert!(
        runs.iter().all(|e| e["trigger"]
            .as_str()
            .unwrap()
            .starts_with("schedule schedule-hooked-0-")),
        "{runs:#?}"
    );
    // An invalid schedule is refused at registration, with its position.
    p.write(
        "bad.yaml",
        &p.read("pipeline.yaml")
            .replace("*/2 * * * * *", "99 * * * *"),
    );
    let bad = p.sluice(&["pipeline", "put", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("bad.yaml:5:13: `triggers.schedule`: bad cron expression"),
        "{}",
        bad.stderr
    );
}

const CONTROLLED: &str = r##"
name: ctl
stages:
  - name: Build
    actions:
      - name: Flaky
        uses: PROBE
        with: { mode: flaky, value: "2" }
  - name: Deploy
    actions:
      - name: Wait
        uses: PROBE
        with: { mode: sleep }
"##;

#[test]
fn operators_retry_a_failed_stage_and_stop_a_running_execution() {
    let p = Project::new(CONTROLLED);
    let engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let status_of = |id: &str| -> Value {
        serde_json::from_str(&p.sluice(&["status", id, "--json"]).stdout).unwrap()
    };

    // Attempt 1 fails (no automatic retry configured): the execution fails in Build.
    let start = p.sluice(&["start", "ctl", "--watch"]);
    assert_eq!(start.code, 1, "{start:?}");
    let id = start.stdout.trim().to_string();
    assert_eq!(status(&status_of(&id)), "Failed");

    // Retry the failed stage: attempt 2 succeeds and the execution carries on into Deploy.
    let retry = p.sluice(&["retry", &id, "Build"]);
    assert_eq!(retry.code, 0, "{retry:?}");
    let running = wait_for(Duration::from_secs(30), "Deploy/Wait to run", || {
        let e = status_of(&id);
        (status(action(&e, "Deploy/Wait")) == "InProgress"
            && engine.log().contains("/Deploy/Wait attempt 1"))
        .then_some(e)
    });
    assert_eq!(action(&running, "Build/Flaky")["attempt"], 2);
    assert_eq!(status(action(&running, "Build/Flaky")), "Succeeded");
    // A stage that did not fail cannot be retried.
    let refused = p.sluice(&["retry", &id, "Build"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused
            .stderr
            .contains("only a failed or stopped execution can be retried"),
        "{}",
        refused.stderr
    );

    // Stop without --abandon waits for the running action (which never ends)…
    let stop = p.sluice(&["stop", &id, "--reason", "wrong build"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.contains("Stopping"), "{}", stop.stdout);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&status_of(&id)), "Stopping");
    // …--abandon cancels it: the guest is stopped and the action marked Abandoned.
    let abandon = p.sluice(&["stop", &id, "--abandon"]);
    assert_eq!(abandon.code, 0, "{abandon:?}");
    let stopped = status_of(&id);
    assert_eq!(status(&stopped), "Stopped");
    assert_eq!(stopped["stop_reason"], "wrong build");
    assert_eq!(status(action(&stopped, "Deploy/Wait")), "Abandoned");
    wait_for(
        Duration::from_secs(10),
        "the engine to cancel the job",
        || engine.log().contains("cancelled").then_some(()),
    );
    let again = p.sluice(&["stop", &id]);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("the execution is Stopped"),
        "{}",
        again.stderr
    );
    let unknown = p.sluice(&["retry", &id, "Nope"]);
    assert!(
        unknown.stderr.contains("has no stage `Nope`"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn the_quickstart_runs_in_the_embedded_service_as_the_readme_shows() {
    let p = Project::copy_of("examples/quickstart");
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (p.sluice(&["pipeline", "ls"]).code == 0).then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let r = p.sluice(&["start", "quickstart", "--var", "title=Hi", "--watch"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Replayed and live events come in the order things happened.
    let first = r.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("InProgress pipeline quickstart"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.find("Source/Snapshot").unwrap() < r.stderr.find("Deploy/Release").unwrap(),
        "{}",
        r.stderr
    );
    assert!(
        p.read(".sluice/site/current/index.html")
            .contains("<h1>Hi</h1>")
    );
}

const EXTRA: &str = r##"
name: extra
triggers:
  nats: ["acme.deploys.>"]
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok }
"##;

#[test]
fn events_on_a_pipelines_own_nats_subjects_start_it() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(EXTRA);
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    // Plain core NATS publishes (as `nats pub` would) are captured durably; one id, one execution.
    let runs = wait_for(
        Duration::from_secs(60),
        "an execution from acme.deploys.prod",
        || {
            rt().block_on(async {
                let nc = async_nats::connect(&url).await.unwrap();
                nc.publish("acme.deploys.prod", r#"{"id": "deploy-1"}"#.into())
                    .await
                    .unwrap();
                nc.flush().await.unwrap();
            });
            let r = client(&p, &url, &["executions", "extra", "--json"]);
            let list: Vec<Value> = serde_json::from_str(&r.stdout).ok()?;
            list.iter()
                .any(|e| e["status"] == "Succeeded")
                .then_some(list)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let list: Vec<Value> =
        serde_json::from_str(&client(&p, &url, &["executions", "extra", "--json"]).stdout).unwrap();
    assert_eq!(
        list.len(),
        1,
        "the same event id published repeatedly started one execution: {runs:#?}"
    );
    assert_eq!(list[0]["trigger"], "nats deploy-1");
    // Subjects under sluice.> are Sluice's own: refused with the position.
    p.write(
        "bad.yaml",
        &EXTRA.replace("acme.deploys.>", "sluice.default.trigger.x"),
    );
    let bad = client(&p, &url, &["pipeline", "put", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("bad.yaml:4:10: `triggers.nats`: \"sluice.default.trigger.x\" is reserved"),
        "{}",
        bad.stderr
    );
    // Removed, the pipeline's stream goes too (it had no limit but a month's age, and nobody
    // would consume it again).
    let stream = sluice_nats::cluster::extra_stream_name("default", "extra");
    let present = || {
        rt().block_on(async {
            let nc = async_nats::connect(&url).await.unwrap();
            async_nats::jetstream::new(nc)
                .get_stream(&stream)
                .await
                .is_ok()
        })
    };
    assert!(present());
    assert_eq!(client(&p, &url, &["pipeline", "rm", "extra"]).code, 0);
    wait_for(
        Duration::from_secs(90),
        "the removed pipeline's stream to go",
        || (!present()).then_some(()),
    );
}

#[test]
fn a_hostile_pipeline_file_is_refused_and_the_embedded_service_keeps_answering() {
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    // 5,000 nested block sequences (10 KB) and 1,400 nested mappings (just under the 1 MiB a
    // pipeline file may be) used to abort the engine.
    p.write("deep.yaml", &format!("{}x", "- ".repeat(5_000)));
    let mappings: String = (0..1_400)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    p.write(
        "deeper.yaml",
        &format!("{mappings}{}x\n", " ".repeat(1_400)),
    );
    for (file, at) in [("deep.yaml", "1:129"), ("deeper.yaml", "65:68")] {
        let put = p.sluice(&["pipeline", "put", file]);
        assert_eq!(put.code, 2, "{put:?}");
        assert!(
            put.stderr.contains(&format!(
                "{file}:{at}: lists and mappings are nested more than 64 levels deep"
            )),
            "{}",
            put.stderr
        );
    }
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "the service still answers: {put:?}");
    // Over-long ids are refused by the client before anything is sent.
    let long = "x".repeat(5_000);
    let status = p.sluice(&["status", &long]);
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status
            .stderr
            .contains("the execution id is 5000 bytes long; at most 256 are accepted"),
        "{}",
        status.stderr
    );
}

#[test]
fn over_long_ids_on_nats_get_an_error_reply_and_the_engine_keeps_serving() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let long = "x".repeat(5_000);
    let id = json!(long);
    // Sent as any NATS client would, past the CLI's own check: the engine must refuse them.
    let requests = [
        ("status", json!({ "execution_id": id })),
        ("stop", json!({ "execution_id": id })),
        ("retry", json!({ "execution_id": id, "stage": "Build" })),
        (
            "approve",
            json!({ "execution_id": id, "action": "S/A", "by": "me" }),
        ),
        ("wake", json!({ "execution_id": id, "action": "S/A" })),
        (
            "rollback",
            json!({ "pipeline": id, "stage": "Build", "to": "x" }),
        ),
        (
            "rollback",
            json!({ "pipeline": "svc", "stage": "Build", "to": id }),
        ),
        (
            "transition",
            json!({ "pipeline": id, "stage": "Build", "enable": true }),
        ),
        ("pipeline.get", json!({ "name": id })),
        ("pipeline.state", json!({ "name": id })),
        ("pipeline.rm", json!({ "name": id })),
        ("function.rm", json!({ "name": id })),
        ("start", json!({ "pipeline": id })),
        ("start", json!({ "pipeline": "svc", "event_id": id })),
    ];
    rt().block_on(async {
        let nc = async_nats::connect(&url).await.unwrap();
        for (verb, body) in &requests {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                nc.request(
                    format!("sluice.default.api.{verb}"),
                    body.to_string().into(),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("no reply to {verb} with a 5,000-byte id"))
            .unwrap_or_else(|e| panic!("{verb}: {e}"));
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .is_some_and(|e| e.contains("is 5000 bytes long; at most 256 are accepted"))
                    && reply["error"]["code"] == "invalid",
                "{verb}: {reply}"
            );
        }
    });
    // Still connected and serving.
    let ls = client(&p, &url, &["pipeline", "ls"]);
    assert_eq!(ls.code, 0, "{ls:?}");
    assert!(ls.stdout.contains("svc"), "{}", ls.stdout);
    // The client refuses before sending, the tenant included.
    for args in [
        vec!["status", long.as_str()],
        vec!["pipeline", "get", long.as_str()],
        vec!["pipeline", "ls", "--tenant", long.as_str()],
    ] {
        let r = client(&p, &url, &args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr
                .contains("is 5000 bytes long; at most 256 are accepted"),
            "{}",
            r.stderr
        );
    }
}

/// `sluice run`'s words for `--var typo=x` on the test pipeline (without the `FILE:1:1: `).
fn run_refuses_typo(p: &Project) -> String {
    let run = p.run(&["--var", "typo=x"]);
    assert_eq!(run.code, 2, "{run:?}");
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("--var typo"))
        .unwrap_or_else(|| panic!("{run:?}"));
    line.split_once(": ").unwrap().1.to_string()
}

/// `start` (as `start(args)` runs it) of an unknown pipeline, or with an undeclared variable,
/// fails at once, in the words of `sluice run`; nothing is queued for the dead letter.
fn assert_bad_starts_refused_at_once(p: &Project, start: impl Fn(&[&str]) -> Run) {
    let words = run_refuses_typo(p);
    assert!(
        words.contains("the pipeline declares no variable `typo` (declared: who)"),
        "{words}"
    );
    for (args, want) in [
        (vec!["start", "svc", "--var", "typo=x"], words.as_str()),
        (vec!["start", "nope"], "no pipeline `nope` is registered"),
    ] {
        let t = std::time::Instant::now();
        let r = start(&args);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            t.elapsed()
        );
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains(want),
            "{args:?}: want {want:?} in {}",
            r.stderr
        );
    }
    let dead = start(&["deadletter"]);
    assert_eq!(dead.code, 0, "{dead:?}");
    assert_eq!(dead.stdout, "", "a refused start is no dead letter");
}

#[test]
fn a_bad_start_is_refused_at_once_in_the_words_of_sluice_run_embedded() {
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    assert_bad_starts_refused_at_once(&p, |args| p.sluice(args));
}

#[test]
fn a_bad_start_is_refused_at_once_in_the_words_of_sluice_run_on_nats() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    assert_bad_starts_refused_at_once(&p, |args| client(&p, &url, args));
    // A raw request, as any NATS client sends it, gets the error as its reply.
    let words = run_refuses_typo(&p);
    rt().block_on(async {
        let nc = async_nats::connect(&url).await.unwrap();
        let body = json!({ "pipeline": "svc", "variables": { "typo": "x" } });
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            nc.request("sluice.default.api.start", body.to_string().into()),
        )
        .await
        .expect("a reply to api.start with an undeclared variable")
        .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["error"]["message"], words.as_str(), "{reply}");
        assert_eq!(reply["error"]["code"], "invalid", "{reply}");
    });
}

/// Ids of the dead letters `list` printed, in order.
fn letter_ids(list: &Run) -> Vec<String> {
    assert_eq!(list.code, 0, "{list:?}");
    list.stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

#[test]
fn refused_events_wait_in_the_dead_letter_and_replay_after_a_fix_on_nats() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(PIPELINE);
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    // Events nobody waits on, setting a variable the pipeline does not declare (yet).
    for (n, id) in ["late-1", "late-2"].iter().enumerate() {
        let e = json!({"id": id, "variables": {"region": "eu"}});
        publish(&url, "sluice.default.trigger.svc", &e.to_string(), Some(id));
        wait_for(Duration::from_secs(30), "the dead letter", || {
            let r = client(&p, &url, &["deadletter", "svc"]);
            (r.stdout.lines().count() == n + 1).then_some(())
        });
    }
    let list = client(&p, &url, &["deadletter"]);
    let ids = letter_ids(&list);
    assert_eq!(ids.len(), 2, "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    // Newest first, with the pipeline, the event id and the reason.
    assert!(lines[0].contains("\tsvc\tlate-2\t"), "{}", list.stdout);
    assert!(lines[1].contains("\tsvc\tlate-1\t"), "{}", list.stdout);
    assert!(
        lines[1].contains("variable `region`, which pipeline `svc` does not declare"),
        "{}",
        list.stdout
    );
    assert_eq!(
        letter_ids(&client(&p, &url, &["deadletter", "--limit", "1"])),
        ids[..1]
    );
    assert!(letter_ids(&client(&p, &url, &["deadletter", "other"])).is_empty());

    // Replayed before the fix: still refused, and kept.
    let early = client(&p, &url, &["deadletter", "replay", &ids[1]]);
    assert_eq!(early.code, 2, "{early:?}");
    assert!(early.stderr.contains("still refused"), "{}", early.stderr);
    // The fix: the pipeline declares the variable. The replay starts the event's execution.
    p.write(
        "pipeline.yaml",
        &p.read("pipeline.yaml")
            .replace("  who: nobody\n", "  who: nobody\n  region: us\n"),
    );
    assert_eq!(
        client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code,
        0
    );
    let replay = client(&p, &url, &["deadletter", "replay", &ids[1]]);
    assert_eq!(replay.code, 0, "{replay:?}");
    let exec = wait_done(&p, &url, replay.stdout.trim());
    assert_eq!(status(&exec), "Succeeded", "{exec:#}");
    assert_eq!(exec["trigger"]["event_id"], "late-1");
    assert_eq!(exec["variables"]["region"], "eu", "{exec:#}");
    assert_eq!(exec["pipeline_version"], 2);
    // Replayed letters leave the dead letter; an unknown id is named.
    assert_eq!(letter_ids(&client(&p, &url, &["deadletter"])), ids[..1]);
    let again = client(&p, &url, &["deadletter", "replay", &ids[1]]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again
            .stderr
            .contains(&format!("no dead letter `{}`", ids[1])),
        "{}",
        again.stderr
    );
}

#[test]
fn refused_webhook_events_wait_in_the_dead_letter_and_replay_after_a_fix_embedded() {
    let p = Project::new(HOOKED);
    let http_port = port();
    let addr = format!("127.0.0.1:{http_port}");
    let _engine = Engine::start_env(
        p.dir.path(),
        ".sluice",
        &["--http", &addr],
        &[("HOOK_SECRET", "s3cret")],
    );
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    // A push to a branch the git filters leave out: accepted, not started.
    let body = json!({"ref": "refs/heads/feature", "after": "f00d", "repository": {"full_name": "acme/app"},
        "pusher": {"name": "carol"}, "commits": [{"added": ["src/a.rs"], "modified": [], "removed": []}]})
    .to_string();
    let sig = sign("s3cret", body.as_bytes());
    let headers = [
        ("x-github-event", "push"),
        ("x-github-delivery", "g-feature"),
        ("content-type", "application/json"),
        ("x-hub-signature-256", sig.as_str()),
    ];
    let (code, reply) = http(
        http_port,
        "POST",
        "/hooks/default/hooked",
        &headers,
        body.as_bytes(),
    );
    assert_eq!(code, 202, "{reply}");
    let list = wait_for(Duration::from_secs(30), "the dead letter", || {
        let r = p.sluice(&["deadletter"]);
        (r.stdout.lines().count() == 1).then_some(r)
    });
    assert!(
        list.stdout.contains("\thooked\tg-feature\tfiltered out"),
        "{}",
        list.stdout
    );
    let id = letter_ids(&list).remove(0);
    // The fix: the filters take the branch. The replay starts it.
    p.write(
        "pipeline.yaml",
        &p.read("pipeline.yaml")
            .replace("branches: [main]", "branches: [main, feature]"),
    );
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let replay = p.sluice(&["deadletter", "replay", &id]);
    assert_eq!(replay.code, 0, "{replay:?}");
    let exec_id = replay.stdout.trim().to_string();
    let exec = wait_for(Duration::from_secs(60), "the replayed execution", || {
        let r = p.sluice(&["status", &exec_id, "--json"]);
        let e: Value = serde_json::from_str(&r.stdout).ok()?;
        matches!(status(&e), "Succeeded" | "Failed").then_some(e)
    });
    assert_eq!(status(&exec), "Succeeded", "{exec:#}");
    assert_eq!(exec["trigger"]["event_id"], "g-feature");
    assert_eq!(exec["trigger"]["commit"], "f00d");
    assert!(letter_ids(&p.sluice(&["deadletter"])).is_empty());
}

const TRIGGER_VALUES: &str = r#"
name: tv
# Every event runs (the default, superseded, may replace one waiting to enter S).
execution_mode: parallel
stages:
  - name: S
    actions:
      - name: Echo
        uses: command@1
        namespace: T
        capabilities: { process: [sh] }
        with:
          run: |
            echo "Commit=#{trigger.commit}" >> "$SLUICE_OUTPUT"
            echo "Branch=#{trigger.branch}" >> "$SLUICE_OUTPUT"
            echo "Tag=#{trigger.tag}" >> "$SLUICE_OUTPUT"
            echo "Type=#{trigger.type}" >> "$SLUICE_OUTPUT"
            echo "Pusher=#{trigger.pusher}" >> "$SLUICE_OUTPUT"
            echo "Build=#{trigger.data.build}" >> "$SLUICE_OUTPUT"
"#;

/// An event's commit, ref, pusher and data reach `#{trigger.*}`, from Sluice's own event
/// format (with a field it does not know) and from a CloudEvent; a manual start and `sluice run`
/// have them empty unless given (`--trigger-commit`, `--trigger-ref`); an unknown key is
/// refused at registration with its line.
#[test]
fn trigger_values_reach_references_from_sluice_events_and_cloudevents_on_nats() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(TRIGGER_VALUES);
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (client(&p, &url, &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let sluice_event = json!({"id": "push-7", "source": {"type": "git", "ref": "refs/heads/main",
        "commit": "abc123", "pusher": "alice"}, "data": {"build": "nightly"}, "producer": "ci-9"});
    publish(
        &url,
        "sluice.default.trigger.tv",
        &sluice_event.to_string(),
        None,
    );
    let cloud_event = json!({"specversion": "1.0", "id": "ce-1", "type": "dev.knative.release",
        "source": "https://git.example.com/acme/app", "data": {"ref": "refs/tags/v2.0.0",
        "commit": "def456", "pusher": "bo", "build": "release"}});
    publish(
        &url,
        "sluice.default.trigger.tv",
        &cloud_event.to_string(),
        None,
    );
    // The same in the NATS binding's binary mode: attributes in `ce-` headers, data the body.
    publish_with_headers(
        &url,
        "sluice.default.trigger.tv",
        r#"{"ref": "refs/heads/release", "commit": "bead01", "pusher": "cy", "build": "binary"}"#,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "ce-bin-1"),
            ("ce-type", "dev.tekton.push"),
            ("ce-source", "https://git.example.com/acme/app"),
        ],
    );
    let manual = client(
        &p,
        &url,
        &[
            "start",
            "tv",
            "--trigger-commit",
            "c0ffee",
            "--trigger-ref",
            "refs/tags/v3",
        ],
    );
    assert_eq!(manual.code, 0, "{manual:?}");
    let values = |trigger: &str| {
        let list = wait_for(Duration::from_secs(60), trigger, || {
            let r = client(&p, &url, &["executions", "tv", "--json"]);
            let list: Vec<Value> = serde_json::from_str(&r.stdout).ok()?;
            list.iter()
                .find(|e| e["trigger"].as_str().is_some_and(|t| t.contains(trigger)))
                .filter(|e| e["status"] != "InProgress")
                .cloned()
        });
        let e = wait_done(&p, &url, list["execution_id"].as_str().unwrap());
        assert_eq!(status(&e), "Succeeded", "{e:#}");
        e["stages"][0]["actions"][0]["variables"].clone()
    };
    let v = values("push-7");
    assert_eq!(
        (
            &v["Commit"],
            &v["Branch"],
            &v["Tag"],
            &v["Type"],
            &v["Pusher"],
            &v["Build"]
        ),
        (
            &json!("abc123"),
            &json!("main"),
            &json!(""),
            &json!("git"),
            &json!("alice"),
            &json!("nightly")
        ),
        "{v:#}"
    );
    let v = values("ce-1");
    assert_eq!(
        (
            &v["Commit"],
            &v["Branch"],
            &v["Tag"],
            &v["Type"],
            &v["Pusher"],
            &v["Build"]
        ),
        (
            &json!("def456"),
            &json!(""),
            &json!("v2.0.0"),
            &json!("dev.knative.release"),
            &json!("bo"),
            &json!("release")
        ),
        "{v:#}"
    );
    let v = values("ce-bin-1");
    assert_eq!(
        (
            &v["Commit"],
            &v["Branch"],
            &v["Type"],
            &v["Pusher"],
            &v["Build"]
        ),
        (
            &json!("bead01"),
            &json!("release"),
            &json!("dev.tekton.push"),
            &json!("cy"),
            &json!("binary")
        ),
        "{v:#}"
    );
    let e = wait_done(&p, &url, manual.stdout.trim());
    assert_eq!(status(&e), "Succeeded", "{e:#}");
    let v = e["stages"][0]["actions"][0]["variables"].clone();
    assert_eq!(
        (&v["Commit"], &v["Tag"], &v["Type"], &v["Build"]),
        (&json!("c0ffee"), &json!("v3"), &json!("manual"), &json!("")),
        "{v:#}"
    );
    // `sluice run`: empty unless given.
    let local = |extra: &[&str]| {
        let mut args = vec!["run", "pipeline.yaml", "--json"];
        args.extend_from_slice(extra);
        let r = p.sluice(&args);
        assert_eq!(r.code, 0, "{r:?}");
        let e: Value = serde_json::from_str(&r.stdout).unwrap();
        e["stages"][0]["actions"][0]["variables"].clone()
    };
    let v = local(&[]);
    assert_eq!(
        (&v["Commit"], &v["Branch"]),
        (&json!(""), &json!("")),
        "{v:#}"
    );
    let v = local(&[
        "--trigger-commit",
        "f00d",
        "--trigger-ref",
        "refs/heads/dev",
    ]);
    assert_eq!(
        (&v["Commit"], &v["Branch"]),
        (&json!("f00d"), &json!("dev")),
        "{v:#}"
    );
    // A key that is not one: refused at registration, at its line.
    p.write(
        "bad.yaml",
        &TRIGGER_VALUES
            .replace("name: tv", "name: tv2")
            .replace("trigger.tag", "trigger.sha"),
    );
    let bad = client(&p, &url, &["pipeline", "put", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("bad.yaml:1") && bad.stderr.contains("`#{trigger.sha}`: unknown"),
        "{}",
        bad.stderr
    );
}

/// `sluice serve` says what it does at info by default, without colour codes when its
/// stderr is a file, and as JSON lines with `--log-format json`.
#[test]
fn the_engine_says_what_it_does_as_text_or_json() {
    for json in [false, true] {
        let p = Project::new(PIPELINE);
        let log = p.path("engine.log");
        let mut args = vec!["serve", "--data", ".sluice"];
        if json {
            args.extend(["--log-format", "json"]);
        }
        let mut engine = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .current_dir(p.dir.path())
            .env_remove("SLUICE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("SLUICE_DATA")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(30), "the engine to answer", || {
            (p.sluice(&["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
        });
        let id = p.sluice(&["start", "svc"]).stdout.trim().to_string();
        let text = wait_for(Duration::from_secs(30), "the engine to log the end", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("execution ended").then_some(text)
        });
        let _ = engine.kill();
        let _ = engine.wait();
        assert!(!text.contains('\u{1b}'), "colour codes in a file: {text}");
        for said in ["trigger accepted", "execution started", "execution ended"] {
            let line = text
                .lines()
                .find(|l| l.contains(said))
                .unwrap_or_else(|| panic!("`{said}` not logged: {text}"));
            assert!(line.contains(&id), "{line}");
            if json {
                let v: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert_eq!(v["level"], "INFO", "{line}");
                assert_eq!(v["fields"]["message"], said, "{line}");
                assert_eq!(v["fields"]["execution"], id.as_str(), "{line}");
            } else {
                assert!(line.contains(" INFO ") && line.contains("svc"), "{line}");
            }
        }
        if json {
            let ended: Value = serde_json::from_str(
                text.lines()
                    .find(|l| l.contains("execution ended"))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(ended["fields"]["status"], "Succeeded");
        }
    }
}
