//! `invoke@1`: Lambda-style functions (components of the `function` world), in Rust and in
//! Python, called with a job document; success, continue-later with a token, failure.
use crate::harness::nats::{Engine, wait_for};
use crate::harness::{Project, action, error, repo, rust_function, status};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const INVOKING: &str = r##"
name: inv
stages:
  - name: Notes
    actions:
      - name: Now
        uses: invoke@1
        namespace: now
        outputs: [notes]
        with: { function: FN, parameters: "version=1.2" }
      - name: Later
        uses: invoke@1
        namespace: later
        with: { function: FN, parameters: "version=2.0 steps=2" }
  - name: Use
    actions:
      - name: Check
        uses: PROBE
        with: { mode: ok, value: "#{now.Calls}/#{later.Calls}" }
      - name: Read
        uses: PROBE
        inputs: [notes]
        with: { mode: read, path: /in/notes/NOTES.md }
  - name: Fails
    actions:
      - name: Broken
        uses: invoke@1
        with: { function: FN, parameters: "fail" }
"##;

/// What every function run must show: immediate success, two continuations then success,
/// failure, and outputs (variables, artifact) used by later actions.
fn check(exec: &Value, notes_contain: &str) {
    assert_eq!(
        status(exec),
        "Failed",
        "Fails/Broken fails the last stage: {exec:#}"
    );
    let now = action(exec, "Notes/Now");
    assert_eq!(status(now), "Succeeded", "{now:#}");
    assert_eq!(now["attempt"], 1);
    assert!(
        now["variables"]["Notes"]
            .as_str()
            .unwrap()
            .contains(notes_contain),
        "{now:#}"
    );
    let later = action(exec, "Notes/Later");
    assert_eq!(
        (status(later), later["attempt"].as_u64()),
        ("Succeeded", Some(3)),
        "two continuations, then success: {later:#}"
    );
    assert_eq!(action(exec, "Use/Check")["variables"]["Value"], "1/3");
    assert!(
        action(exec, "Use/Read")["variables"]["Bytes"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 10
    );
    assert_eq!(
        error(action(exec, "Fails/Broken")),
        "asked to fail by its parameters (fail)"
    );
}

#[test]
fn a_rust_function_runs_locally_from_a_file() {
    let p = Project::new(&INVOKING.replace("FN", "release_notes.wasm"));
    std::fs::copy(rust_function(), p.path("release_notes.wasm")).unwrap();
    let r = p.run(&[]);
    check(&r.json(), "Release 1.2 of inv");
    // A name needs the service's registry; the message says so.
    let p = Project::new(&INVOKING.replace("FN", "release-notes"));
    let exec = p.run(&[]).json();
    assert!(error(action(&exec, "Notes/Now")).contains("registered functions (`sluice function put release-notes FILE.wasm`) run in the service"), "{exec:#}");
}

fn componentize(out: &std::path::Path) {
    let status = Command::new("componentize-py")
        .args(["-d", repo().join("wit").to_str().unwrap(), "-w", "sluice:action/function@0.1.0", "componentize", "app", "-p"])
        .arg(repo().join("examples/functions/python-release-notes"))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("componentize-py is needed to build the Python example function ({e}); install it: pip install componentize-py==0.25.1"));
    assert!(status.success(), "componentize-py failed");
}

#[test]
fn registered_functions_in_rust_and_python_run_in_the_service() {
    let p = Project::new(&INVOKING.replace("FN", "release-notes"));
    componentize(&p.path("release-notes-py.wasm"));
    let _engine = Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (p.sluice(&["pipeline", "ls"]).code == 0).then_some(())
    });
    assert_eq!(p.sluice(&["pipeline", "put", "pipeline.yaml"]).code, 0);

    // Not a function: refused, nothing registered.
    let bad = p.sluice(&["function", "put", "release-notes", crate::harness::probe()]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("does not export the sluice:action@0.1.0 `function` world"),
        "{}",
        bad.stderr
    );

    for (file, notes) in [
        (rust_function().to_string(), "Release 1.2 of inv"),
        (
            p.path("release-notes-py.wasm").display().to_string(),
            "[python]",
        ),
    ] {
        let put = p.sluice(&["function", "put", "release-notes", &file]);
        assert_eq!(put.code, 0, "{put:?}");
        assert!(
            put.stdout
                .contains("registered function release-notes blake3:"),
            "{}",
            put.stdout
        );
        assert!(
            p.sluice(&["function", "ls"])
                .stdout
                .starts_with("release-notes\tblake3:")
        );
        let start = p.sluice(&["start", "inv", "--watch"]);
        let exec: Value =
            serde_json::from_str(&p.sluice(&["status", start.stdout.trim(), "--json"]).stdout)
                .unwrap();
        check(&exec, notes);
    }
    assert_eq!(p.sluice(&["function", "rm", "release-notes"]).code, 0);
    assert!(p.sluice(&["function", "ls"]).stdout.is_empty());
}
