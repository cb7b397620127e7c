//! A plugin author's loop: scaffold, build, test outside a pipeline, use in a pipeline.
use crate::harness::*;
use std::process::Command;

#[test]
fn a_scaffolded_plugin_builds_tests_and_runs_in_a_pipeline() {
    let p = Project::new("name: placeholder\nstages: []\n");
    let new = p.sluice(&["plugin", "new", "greeter"]);
    assert_eq!(new.code, 0, "{}", new.stderr);
    assert!(
        p.path("greeter/wit/action.wit").exists()
            && p.path("greeter/vendor/sluice-sdk/src/lib.rs").exists()
    );
    // Build it exactly as the scaffold says (sharing the guests' target dir keeps this quick).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = repo().join("target/guests");
    let out = Command::new(cargo)
        .args(["build", "--release"])
        .current_dir(p.path("greeter"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/greeter.wasm");
    let wasm = wasm.to_str().unwrap();

    let t = p.sluice(&[
        "plugin",
        "test",
        wasm,
        "--config",
        "name=tester",
        "--output",
        "greeting",
        "--out",
        "result",
    ]);
    assert_eq!(t.code, 0, "{}\n{}", t.stdout, t.stderr);
    assert!(
        t.stdout.contains("outcome Succeeded")
            && t.stdout.contains("var     Greeting = hello, tester"),
        "{}",
        t.stdout
    );
    assert!(t.stdout.contains("log      INFO hello, tester"));
    assert_eq!(p.read("result/greeting/greeting.txt"), "hello, tester\n");
    // Wrong configuration is caught before anything runs.
    let bad = p.sluice(&["plugin", "test", wasm, "--config", "nmae=x"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("does not accept configuration key `nmae`")
    );

    p.write(
        "pipeline.yaml",
        &format!("name: greet\nstages:\n  - name: S\n    actions:\n      - {{ name: Greet, uses: {wasm}, outputs: [g], namespace: G, with: {{ name: pipeline }} }}\n      - {{ name: Echo, uses: PROBE, run_order: 2, with: {{ mode: ok, value: \"#{{G.Greeting}}\" }} }}\n").replace("PROBE", probe()),
    );
    let exec = p.run(&[]).json();
    assert_eq!(status(&exec), "Succeeded");
    assert_eq!(
        action(&exec, "S/Echo")["variables"]["Value"],
        "hello, pipeline"
    );
}

#[test]
fn python_and_javascript_scaffolds_build_and_pass_plugin_test() {
    let p = Project::new("name: placeholder\nstages: []\n");
    // Python, built as its README says.
    assert_eq!(
        p.sluice(&["plugin", "new", "hello-py", "--lang", "python"])
            .code,
        0
    );
    let out = Command::new("componentize-py")
        .args([
            "-d",
            "wit",
            "-w",
            "sluice:action/action@0.1.0",
            "componentize",
            "app",
            "-o",
            "hello-py.wasm",
        ])
        .current_dir(p.path("hello-py"))
        .output()
        .expect("componentize-py is needed (pip install componentize-py==0.25.1)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The compile cache is kept between tests of a plugin: a Python component takes seconds
    // to compile, the second test loads it.
    let cache = p.path("compiled");
    let cache = cache.to_str().unwrap();
    let test_py = |out: &str| {
        p.sluice_env(
            &[
                "plugin",
                "test",
                "hello-py/hello-py.wasm",
                "--config",
                "name=py",
                "--output",
                "greeting",
                "--out",
                out,
            ],
            &[("SLUICE_CACHE", cache)],
        )
    };
    let t = test_py("py");
    assert!(
        t.code == 0 && t.stdout.contains("var     Greeting = hello, py"),
        "{}\n{}",
        t.stdout,
        t.stderr
    );
    assert_eq!(p.read("py/greeting/greeting.txt"), "hello, py\n");
    assert!(t.stdout.contains("), compiled in "), "{}", t.stdout);
    let again = test_py("py2");
    assert!(
        again.code == 0
            && again
                .stdout
                .contains("), loaded from the compile cache in "),
        "{}",
        again.stdout
    );

    // JavaScript, with the repository's componentize-js (instead of a second `npm install`).
    assert_eq!(
        p.sluice(&["plugin", "new", "hello-js", "--lang", "js"])
            .code,
        0
    );
    std::os::unix::fs::symlink(
        crate::plugins::componentize_js_modules(),
        p.path("hello-js/node_modules"),
    )
    .unwrap();
    let built = crate::plugins::node_tool(&p.path("hello-js"), "node", &["build.mjs"]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // Through the same compile cache: the second test of it loads it compiled.
    let t = p.sluice_env(
        &[
            "plugin",
            "test",
            "hello-js/hello-js.wasm",
            "--config",
            "name=js",
        ],
        &[("SLUICE_CACHE", cache)],
    );
    assert!(
        t.code == 0 && t.stdout.contains("var     Greeting = hello, js"),
        "{}\n{}",
        t.stdout,
        t.stderr
    );
    let bad = p.sluice_env(
        &[
            "plugin",
            "test",
            "hello-js/hello-js.wasm",
            "--config",
            "name= ",
        ],
        &[("SLUICE_CACHE", cache)],
    );
    assert!(
        bad.stdout
            .contains("configuration error: `name` must not be empty"),
        "{}",
        bad.stdout
    );
    assert!(
        p.sluice(&["plugin", "new", "x", "--lang", "cobol"])
            .stderr
            .contains("choose rust, python or js")
    );
}

/// A pending plugin's later calls can be tested too: the continuation it returned (and a
/// wake payload) go into the next call.
#[test]
fn plugin_test_calls_a_pending_plugin_again_with_its_continuation() {
    let p = Project::new("name: placeholder\nstages: []\n");
    let first = p.sluice(&["plugin", "test", probe(), "--config", "mode=pending"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first.stdout.contains("outcome Pending") && first.stdout.contains("continuation step-1"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("--continuation 'step-1'"),
        "{}",
        first.stdout
    );
    let second = p.sluice(&[
        "plugin",
        "test",
        probe(),
        "--config",
        "mode=pending",
        "--continuation",
        "step-1",
    ]);
    assert!(
        second.stdout.contains("continuation step-2"),
        "{}",
        second.stdout
    );
    let last = p.sluice(&[
        "plugin",
        "test",
        probe(),
        "--config",
        "mode=pending",
        "--continuation",
        "step-2",
        "--wake-payload",
        "{}",
    ]);
    assert_eq!(last.code, 0, "{last:?}");
    assert!(
        last.stdout.contains("outcome Succeeded")
            && last.stdout.contains("var     Resumed = step-2"),
        "{}",
        last.stdout
    );
}

#[test]
fn plugin_test_runs_built_in_plugins_with_inputs_grants_and_failures() {
    let p = Project::new("name: placeholder\nstages: []\n");
    p.write("src/a.txt", "a");
    let ok = p.sluice(&[
        "plugin",
        "test",
        "command@1",
        "--config",
        "run=cp -r in/src/. out/copy && echo N=1 >> $SLUICE_OUTPUT",
        "--input",
        "src=src",
        "--output",
        "copy",
        "--grant",
        "process=sh",
    ]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("var     N = 1") && ok.stdout.contains("a.txt"),
        "{}",
        ok.stdout
    );
    let ungranted = p.sluice(&["plugin", "test", "command@1", "--config", "run=true"]);
    assert_eq!(ungranted.code, 2);
    assert!(ungranted.stderr.contains("--grant process=sh"));
    let failing = p.sluice(&[
        "plugin",
        "test",
        "command@1",
        "--config",
        "run=echo nope; exit 4",
        "--grant",
        "process=sh",
    ]);
    assert_eq!(failing.code, 1);
    assert!(
        failing.stdout.contains("outcome Failed") && failing.stdout.contains("exited with code 4"),
        "{}",
        failing.stdout
    );
}

/// `sluice init` writes a starter pipeline that runs as it is (and refuses to overwrite one);
/// `sluice completions` prints a completion script for the shell.
#[test]
fn init_writes_a_starter_pipeline_that_runs_and_completions_are_printed() {
    let p = Project::new("");
    std::fs::remove_file(p.path("pipeline.yaml")).unwrap();
    p.write("notes.txt", "a file to list\n");
    let init = p.sluice(&["init"]);
    assert_eq!(init.code, 0, "{init:?}");
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let exec = run.json();
    assert_eq!(action(&exec, "Build/List")["variables"]["Listed"], "yes");
    assert_eq!(
        action(&exec, "Source/Snapshot")["variables"]["FileCount"],
        "2"
    );
    let again = p.sluice(&["init"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(p.sluice(&["init", "--force"]).code, 0);
    for shell in ["bash", "zsh", "fish"] {
        let c = p.sluice(&["completions", shell]);
        assert!(
            c.code == 0 && c.stdout.contains("executions") && c.stdout.contains("serve"),
            "{shell}: {c:?}"
        );
    }
}
