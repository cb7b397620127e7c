//! Sluice on a JetStream cluster, not one server: three `nats-server` nodes with routes on
//! loopback, every stream, bucket and object store with three replicas (`--replicas 3`), two
//! engines. A node is killed with `kill -9` mid-run and later restarted: every execution
//! completes, its side effect happens once, no trigger is lost and no event is stored twice.
use crate::harness::nats::{Engine, NatsCluster, wait_for};
use crate::harness::*;
use crate::service::{client, stored};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

// Parallel: every start runs (the default, superseded, would skip those overtaken).
const PIPELINE: &str = r##"
name: svc
execution_mode: parallel
stages:
  - name: Build
    actions:
      - { name: Compile, uses: PROBE, with: { mode: ok, value: built } }
  - name: Deploy
    actions:
      - name: Release
        uses: PROBE
        with: { mode: effect, dir: "EFFECTS", pause_ms: "20" }
        capabilities: { dirs: { "EFFECTS": rw } }
"##;

const EXECUTIONS: usize = 100;

/// Start `EXECUTIONS` executions (one trigger event id each) on two engines while the node
/// `kill` picks is killed (after a third of them) and restarted (after two thirds); check
/// what was lost or doubled.
fn through_a_node_loss(name: &str, kill: impl Fn(&NatsCluster) -> usize) {
    // One cluster at a time: three servers and two engines each already fill two cores.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    let effects = tempfile::tempdir().unwrap();
    let p = Project::new(&PIPELINE.replace("EFFECTS", &effects.path().display().to_string()));
    let args = [
        "--nats",
        url.as_str(),
        "--replicas",
        "3",
        "--ack-wait",
        "2s",
    ];
    let engines = [
        Engine::start(p.dir.path(), "engine-a", &args),
        Engine::start(p.dir.path(), "engine-b", &args),
    ];
    register_when_answering(&p, &url, || {
        format!(
            "engine-a:\n{}\nengine-b:\n{}",
            tail(&engines[0].log()),
            tail(&engines[1].log())
        )
    });
    let mut victim = None;
    for n in 0..EXECUTIONS {
        if n == EXECUTIONS / 3 {
            let i = kill(&cluster);
            cluster.kill9(i);
            victim = Some(i);
        }
        if n == 2 * EXECUTIONS / 3 {
            cluster.restart(victim.unwrap());
        }
        // A start refused while the cluster elects new leaders is sent again, with the same
        // event id: at most one execution per id, whatever happened to the first try.
        let id = format!("{name}-{n}");
        wait_for(Duration::from_secs(60), &format!("start {id}"), || {
            (client(&p, &url, &["start", "svc", "--event-id", &id]).code == 0).then_some(())
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let executions: Vec<Value> = loop {
        let r = client(
            &p,
            &url,
            &["executions", "svc", "--json", "--limit", "1000"],
        );
        let list: Vec<Value> = serde_json::from_str(&r.stdout).unwrap_or_default();
        if list.len() >= EXECUTIONS && list.iter().all(|e| status(e) == "Succeeded") {
            break list;
        }
        if std::time::Instant::now() > deadline {
            let unfinished: Vec<String> = list
                .iter()
                .filter(|e| status(e) != "Succeeded")
                .map(|e| format!("{} {}", e["execution_id"], status(e)))
                .collect();
            panic!(
                "{} executions, not succeeded: {unfinished:?}\nengine-a:\n{}\nengine-b:\n{}",
                list.len(),
                tail(&engines[0].log()),
                tail(&engines[1].log())
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // (The list shows the trigger as "manual EVENT-ID".)
    let mut by_event: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for e in &executions {
        let event = e["trigger"]
            .as_str()
            .and_then(|t| t.split_whitespace().last());
        by_event
            .entry(event.unwrap_or_default())
            .or_default()
            .push(e["execution_id"].as_str().unwrap_or_default());
    }
    let doubled: Vec<_> = by_event.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "event ids that started more than one execution: {doubled:?}\nengine-a:\n{}\nengine-b:\n{}",
        engines[0].log(),
        engines[1].log()
    );
    assert_eq!(
        by_event.len(),
        EXECUTIONS,
        "every event id started one execution"
    );
    assert_eq!(
        executions.len(),
        EXECUTIONS,
        "one execution per trigger event"
    );
    // One side effect per execution: its key names the execution and attempt, so a second
    // execution or attempt would add one, and a repeated run of an attempt finds its marker.
    let keys = crate::harness::effects(effects.path());
    assert_eq!(keys.len(), EXECUTIONS, "{keys:?}");
    // No event id stored twice in the events stream.
    let stored = stored(&url, "SLUICE_EVENTS", "sluice.default.events.>");
    let ids: Vec<&str> = stored.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "an event id was stored twice");
    assert!(
        ids.len() >= EXECUTIONS * 6,
        "{} events for {EXECUTIONS} executions",
        ids.len()
    );
}

#[test]
fn a_cluster_node_killed_and_restarted_loses_nothing() {
    // A node that does not lead the meta group.
    through_a_node_loss("follower", |c| {
        let leader = c.meta_leader().unwrap_or(0);
        (leader + 1) % c.nodes.len()
    });
}

#[test]
fn the_meta_leader_killed_and_restarted_loses_nothing() {
    through_a_node_loss("leader", |c: &NatsCluster| {
        wait_for(Duration::from_secs(30), "a meta leader", || c.meta_leader())
    });
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Register `pipeline.yaml` once the engines answer (they wait for JetStream first); `logs`
/// says what they did if they never do.
pub fn register_when_answering(p: &Project, url: &str, logs: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let put = client(p, url, &["pipeline", "put", "pipeline.yaml"]);
        if put.code == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engines did not answer within 90 s: {put:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
