//! Live logs: `sluice logs -f` follows an execution's log while it is written (a local run,
//! the embedded service), `sluice watch --logs` interleaves the lines with the state changes,
//! and a whole execution's log is ordered by time, not by action name.
use crate::harness::Project;
use crate::harness::nats::{Engine, wait_for};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Two actions logging in turns for about two seconds.
const SLOW: &str = r#"
name: slow
stages:
  - name: Build
    actions:
      - name: Tick
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "for i in 1 2 3 4 5; do echo tick $i; sleep 0.4; done" }
      - name: Tock
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "sleep 0.2; for i in 1 2 3; do echo tock $i; sleep 0.5; done" }
"#;

fn sluice(p: &Project, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .current_dir(p.dir.path())
        .env_remove("SLUICE_DATA")
        .env_remove("SLUICE_NATS_URL");
    c
}

/// Follow `id`'s log: the first line arrives while `running` still says so, and the command
/// ends once the execution has, with every line in time order.
fn follow_live(p: &Project, id: &str, running: impl Fn() -> bool) {
    let mut logs = sluice(p, &["logs", "-f", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(logs.stdout.take().unwrap()).lines();
    let first = out.next().expect("a first line").unwrap();
    assert!(
        running(),
        "the first line ({first}) came only after the run ended"
    );
    let mut lines = vec![first];
    lines.extend(out.map(|l| l.unwrap()));
    let status = logs.wait().unwrap();
    assert!(status.success(), "{lines:?}");
    check_order(&lines);
}

/// All eight lines, by time: the two actions' lines interleave.
fn check_order(lines: &[String]) {
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit("INFO ").next().unwrap_or(l))
        .collect();
    assert_eq!(messages.len(), 8, "{lines:#?}");
    let stamps: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "not in time order: {lines:#?}");
    let first_tock = messages.iter().position(|m| m.starts_with("tock")).unwrap();
    let last_tick = messages
        .iter()
        .rposition(|m| m.starts_with("tick"))
        .unwrap();
    assert!(first_tock < last_tick, "not interleaved: {lines:#?}");
}

#[test]
fn logs_follow_a_local_run_while_it_writes_them_in_time_order() {
    let p = Project::new(SLOW);
    let mut run = sluice(&p, &["run", "pipeline.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The run names its execution on its first line.
    let mut progress = BufReader::new(run.stdout.take().unwrap()).lines();
    let head = progress.next().unwrap().unwrap();
    let id = head
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_else(|| panic!("{head}"))
        .to_string();
    let drain = std::thread::spawn(move || progress.count());
    let pid = run.id();
    follow_live(&p, &id, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    });
    assert!(run.wait().unwrap().success());
    drain.join().unwrap();
    // Afterwards, the whole log: by time, not Tick's lines then Tock's.
    let all = p.sluice(&["logs", &id]);
    assert_eq!(all.code, 0, "{all:?}");
    check_order(&all.stdout.lines().map(String::from).collect::<Vec<_>>());
}

#[test]
fn logs_follow_and_watch_logs_on_the_embedded_service() {
    let p = Project::new(SLOW);
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (p.sluice(&["pipeline", "ls"]).code == 0).then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);
    let id = p.sluice(&["start", "slow"]).stdout.trim().to_string();
    follow_live(&p, &id, || {
        let r = p.sluice(&["status", &id, "--json"]);
        r.json()["status"] == "InProgress"
    });
    // watch --logs: state changes and log lines on one stream, in the order they happened.
    let id = p.sluice(&["start", "slow"]).stdout.trim().to_string();
    let watch = sluice(&p, &["watch", &id, "--logs"]).output().unwrap();
    let text = String::from_utf8_lossy(&watch.stderr);
    assert!(watch.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let tick1 = lines
        .iter()
        .position(|l| l.contains("| Build/Tick #1") && l.ends_with("tick 1"))
        .unwrap_or_else(|| panic!("{text}"));
    let done = lines
        .iter()
        .position(|l| l.contains("Succeeded") && l.contains("Build/Tick"))
        .unwrap_or_else(|| panic!("{text}"));
    // The first line came while the action ran, before its end was reported.
    assert!(tick1 < done, "{text}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("| Build/")).count(),
        8,
        "{text}"
    );
}
