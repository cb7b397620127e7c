//! A bounded soak under chaos: three engines on NATS, 300 executions of a pipeline with a
//! parallel group, a retry, an approval answered by a bot and a side-effecting deploy, while
//! every 2–5 s one engine is killed with `kill -9` and started again. Every execution must
//! complete, each with one side effect, and no state change may be announced under two event
//! ids. It prints a report (docs/reliability.md keeps the figures of a run).
use crate::harness::nats::{Engine, NatsServer};
use crate::harness::*;
use crate::service::{client, collect};
use serde_json::Value;
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
                // The approver: a bot that approves whatever waits.
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        let r = client(&p, &url, &["approvals", "--json"]);
                        let waiting: Vec<Value> =
                            serde_json::from_str(&r.stdout).unwrap_or_default();
                        for a in waiting {
                            let (Some(id), Some(stage), Some(action)) = (
                                a["execution_id"].as_str(),
                                a["stage"].as_str(),
                                a["action"].as_str(),
                            ) else {
                                continue;
                            };
                            let gate = format!("{stage}/{action}");
                            if client(&p, &url, &["approve", id, &gate, "--as", "bot"]).code == 0 {
                                approved.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
                // Paced over about a minute, so the chaos meets executions in every state.
                for n in 0..EXECUTIONS {
                    std::thread::sleep(Duration::from_millis(50));
                    let id = format!("chaos-{n}");
                    while client(&p, &url, &["start", "svc", "--event-id", &id]).code != 0 {
                        assert!(started.elapsed() < BOUND, "start {id} kept failing");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                executions = loop {
                    let r = client(
                        &p,
                        &url,
                        &["executions", "svc", "--json", "--limit", "1000"],
                    );
                    let list: Vec<Value> = serde_json::from_str(&r.stdout).unwrap_or_default();
                    if list.len() >= EXECUTIONS && list.iter().all(|e| status(e) == "Succeeded") {
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
                        panic!("after {BOUND:?}: {} executions {by_status:?}", list.len());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                done.store(true, Ordering::Relaxed);
            });
        },
    );
    let took = started.elapsed();
    let rss_end = largest_rss();

    assert_eq!(executions.len(), EXECUTIONS, "one execution per event id");
    let ids: HashSet<&str> = executions
        .iter()
        .filter_map(|e| e["trigger"].as_str()?.split_whitespace().last())
        .collect();
    assert_eq!(ids.len(), EXECUTIONS);
    let log = std::fs::read_to_string(effects.path().join("effects.log")).unwrap();
    let effects_done: HashSet<&str> = log.lines().collect();
    assert_eq!(
        log.lines().count(),
        EXECUTIONS,
        "one side effect per execution"
    );
    assert_eq!(effects_done.len(), EXECUTIONS);
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
        log.lines().count(),
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

/// Milliseconds since the epoch of an RFC 3339 timestamp.
fn chrono_ms(t: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}
