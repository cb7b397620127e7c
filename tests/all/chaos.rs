//! A bounded soak under chaos: three engines on NATS, 300 executions of a pipeline with a
//! parallel group, a retry, an approval answered by a bot and a side-effecting deploy, while
//! every 2–5 s one engine is killed with `kill -9` and started again. Every execution must
//! complete, each with one side effect, and no state change may be announced under two event
//! ids. It prints a report (docs/reliability.md keeps the figures of a run).
use crate::harness::nats::{Engine, NatsServer};
use crate::harness::*;
use crate::service::collect;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PIPELINE: &str = r##"
name: svc
execution_mode: parallel
stages:
  - name: Build
    actions:
      - { name: Lint, uses: PROBE, with: { mode: ok } }
      - { name: Compile, uses: PROBE, with: { mode: ok } }
      - name: Flaky
        uses: PROBE
        with: { mode: flaky, value: "2" }
        retry: { max_attempts: 3, backoff: { initial: 100ms, max: 100ms, multiplier: 2 } }
  - name: Approve
    actions:
      - { name: Gate, uses: approval@1, with: { approvers: bot } }
  - name: Deploy
    actions:
      - name: Release
        uses: PROBE
        with: { mode: effect, dir: "EFFECTS", pause_ms: "100" }
        capabilities: { dirs: { "EFFECTS": rw } }
"##;

const EXECUTIONS: usize = 300;
const BOUND: Duration = Duration::from_secs(300);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn three_engines_killed_at_random_lose_and_double_nothing() {
    let nats = NatsServer::start();
    let url = nats.url();
    let effects = tempfile::tempdir().unwrap();
    let p = Project::new(&PIPELINE.replace("EFFECTS", &effects.path().display().to_string()));
    let args = ["--nats", url.as_str(), "--ack-wait", "2s"];
    let names = ["engine-a", "engine-b", "engine-c"];
    let engines = std::sync::Mutex::new(
        names
            .iter()
            .map(|n| Engine::start(p.dir.path(), n, &args))
            .collect::<Vec<_>>(),
    );
    crate::cluster::register_when_answering(&p, &url, || engines.lock().unwrap()[0].log());
    let largest_rss = || {
        engines
            .lock()
            .unwrap()
            .iter()
            .map(|e| rss_kib(e.pid()))
            .max()
            .unwrap_or(0)
    };
    let rss_start = largest_rss();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let approved = AtomicUsize::new(0);
    let mut executions: Vec<Value> = Vec::new();
    let events = collect(
        &url,
        "sluice.default.events.>",
        Duration::from_secs(2),
        || {
            std::thread::scope(|s| {
                // Whatever ends this body (a failed assertion included) stops the helpers.
                let _stop = StopOnDrop(&done);
                // The chaos: every 2–5 s (seeded), one engine killed and started again.
                s.spawn(|| {
                    let mut seed: u64 = 0x5eed;
                    while !done.load(Ordering::Relaxed) {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        std::thread::sleep(Duration::from_millis(2000 + (seed >> 33) % 3000));
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = (seed >> 40) as usize % names.len();
                        let mut engines = engines.lock().unwrap();
                        engines[i].kill9();
                        engines[i] = Engine::start(p.dir.path(), names[i], &args);
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                });
                // The approver: a bot that approves whatever waits, over the API as any NATS
                // client would (one connection, no process per request).
                s.spawn(|| {
                    let bot = Nats::connect(&url);
                    while !done.load(Ordering::Relaxed) {
                        let waiting = bot.request("approvals", json!({})).unwrap_or_default();
                        for a in waiting.as_array().into_iter().flatten() {
                            let (Some(id), Some(stage), Some(action)) = (
                                a["execution_id"].as_str(),
                                a["stage"].as_str(),
                                a["action"].as_str(),
                            ) else {
                                continue;
                            };
                            let decision = json!({"execution_id": id,
                                "action": format!("{stage}/{action}"), "by": "bot"});
                            if bot.request("approve", decision).is_some() {
                                approved.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
                // Trigger events published to JetStream as a producer would (the stream keeps
                // them while engines die), paced over about a minute so the chaos meets
                // executions in every state.
                let producer = Nats::connect(&url);
                for n in 0..EXECUTIONS {
                    std::thread::sleep(Duration::from_millis(150));
                    let id = format!("chaos-{n}");
                    producer.publish_event("sluice.default.trigger.svc", &id);
                }
                let lister = Nats::connect(&url);
                executions = loop {
                    let list: Vec<Value> = lister
                        .request("executions", json!({"pipeline": "svc", "limit": 1000}))
                        .and_then(|v| serde_json::from_value(v).ok())
                        .unwrap_or_default();
                    let events: HashSet<&str> = list.iter().filter_map(event_of).collect();
                    if events.len() >= EXECUTIONS && list.iter().all(|e| status(e) == "Succeeded") {
                        break list;
                    }
                    // (A listing that fails while an engine restarts is asked again.)
                    if started.elapsed() > BOUND
                        && (!list.is_empty() || started.elapsed() > BOUND * 2)
                    {
                        done.store(true, Ordering::Relaxed);
                        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
                        for e in &list {
                            *by_status.entry(status(e).to_string()).or_default() += 1;
                        }
                        // The unfinished ones, whole: where each stands says what stuck.
                        let unfinished: Vec<&Value> = list
                            .iter()
                            .filter(|e| status(e) != "Succeeded")
                            .take(5)
                            .collect();
                        // Their records' stages (who runs what, which attempt) and the
                        // approvals the bot was shown: where each stands says what stuck.
                        let records: Vec<Value> = unfinished
                            .iter()
                            .filter_map(|e| e["execution_id"].as_str())
                            .map(|id| {
                                lister
                                    .request("status", json!({"execution_id": id}))
                                    .map_or(Value::Null, |r| r["stages"].clone())
                            })
                            .collect();
                        let waiting = lister.request("approvals", json!({}));
                        panic!(
                            "after {BOUND:?}: {} executions {by_status:?}; unfinished: {unfinished:#?}\n\
                             their stages: {records:#?}\napprovals waiting: {waiting:#?}",
                            list.len()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                done.store(true, Ordering::Relaxed);
            });
        },
    );
    let took = started.elapsed();
    let rss_end = largest_rss();

    let mut by_event: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &executions {
        let id = e["execution_id"].as_str().unwrap_or_default();
        by_event
            .entry(event_of(e).unwrap_or("(none)"))
            .or_default()
            .push(id);
    }
    let doubled_starts: Vec<_> = by_event.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        doubled_starts.is_empty(),
        "one execution per event id; started twice: {doubled_starts:?}"
    );
    assert_eq!(executions.len(), EXECUTIONS);
    // One side effect per execution: its key names the execution and attempt, so a second
    // execution or attempt would add one, and a repeated run of an attempt finds its marker.
    let keys = crate::harness::effects(effects.path());
    let missing: Vec<&str> = executions
        .iter()
        .filter_map(|e| e["execution_id"].as_str())
        .filter(|id| !keys.iter().any(|k| k.contains(id)))
        .collect();
    assert!(
        missing.is_empty(),
        "executions without their effect: {missing:?}"
    );
    assert_eq!(
        keys.len(),
        EXECUTIONS,
        "one side effect per execution: {keys:?}"
    );
    // Events are delivered at least once (an engine resends what it may not have stored);
    // deduplicated by id, no state change may appear twice under different ids.
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let mut changes: HashMap<String, HashSet<String>> = HashMap::new();
    for e in &events {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        *seen_ids.entry(id.clone()).or_default() += 1;
        let change = format!(
            "{} {} {} {} {} {}",
            e["execution_id"], e["kind"], e["stage"], e["action"], e["attempt"], e["status"]
        );
        changes.entry(change).or_default().insert(id);
    }
    let redelivered: usize = seen_ids.values().map(|n| n - 1).sum();
    let doubled: Vec<_> = changes.iter().filter(|(_, ids)| ids.len() > 1).collect();
    let mut took_ms: Vec<i64> = executions
        .iter()
        .filter_map(|e| {
            let t = |k: &str| chrono_ms(e[k].as_str()?);
            Some(t("finished_at")? - t("started_at")?)
        })
        .collect();
    took_ms.sort_unstable();
    let p99 = took_ms[(took_ms.len() * 99 / 100).min(took_ms.len() - 1)];
    println!(
        "chaos report: {EXECUTIONS} executions completed in {took:?}; {} engine kills; {} approvals; \
         side effects {} (one per execution); events seen {} ({} redelivered, {} state changes under two ids); \
         p50 {} ms, p99 {} ms per execution; engine RSS {} MiB at the start, {} MiB at the end",
        kills.load(Ordering::Relaxed),
        approved.load(Ordering::Relaxed),
        keys.len(),
        events.len(),
        redelivered,
        doubled.len(),
        took_ms[took_ms.len() / 2],
        p99,
        rss_start / 1024,
        rss_end / 1024,
    );
    assert!(
        doubled.is_empty(),
        "state changes announced twice: {doubled:?}"
    );
    assert!(
        kills.load(Ordering::Relaxed) >= 10,
        "the chaos killed too few engines to count"
    );
}

/// The trigger event an execution summary names (`nats chaos-7`).
fn event_of(e: &Value) -> Option<&str> {
    e["trigger"].as_str()?.split_whitespace().last()
}

/// Sets the flag the test's helper threads watch, when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One NATS connection with its own runtime: trigger events to JetStream, API requests.
struct Nats {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl Nats {
    fn connect(url: &str) -> Nats {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(async_nats::connect(sluice_nats::servers(url)))
            .unwrap();
        // (The JetStream context spawns a task: made inside the runtime.)
        let js = rt.block_on(async { async_nats::jetstream::new(client.clone()) });
        Nats { rt, client, js }
    }

    /// Publish a trigger event with its id as `Nats-Msg-Id`, until the stream acknowledges it.
    fn publish_event(&self, subject: &str, id: &str) {
        let payload = json!({ "id": id }).to_string();
        self.rt.block_on(async {
            for _ in 0..100 {
                let msg = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload.clone().into())
                    .message_id(id);
                if let Ok(ack) = self.js.send_publish(subject.to_string(), msg).await
                    && ack.await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the stream never acknowledged event {id}");
        })
    }

    /// One API request; its `ok` value, or `None` when refused or unanswered (an engine may
    /// be restarting).
    fn request(&self, verb: &str, body: Value) -> Option<Value> {
        self.rt.block_on(async {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                self.client.request(
                    format!("sluice.default.api.{verb}"),
                    body.to_string().into(),
                ),
            )
            .await
            .ok()?
            .ok()?;
            let value: Value = serde_json::from_slice(&reply.payload).ok()?;
            sluice_api::wire::decode(value).ok()
        })
    }
}

/// Milliseconds since the epoch of an RFC 3339 timestamp.
fn chrono_ms(t: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}
