//! First-party plugins against real inputs, and plugins written in other languages.
use crate::harness::*;
use std::process::Command;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn source_git_exports_branches_tags_and_commits_without_dot_git() {
    let p = Project::new("name: placeholder\nstages: []\n");
    let repo = p.path("app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    p.write("app/README.md", "v1\n");
    p.write("app/build.sh", "#!/bin/sh\necho build\n");
    Command::new("chmod")
        .args(["+x", repo.join("build.sh").to_str().unwrap()])
        .status()
        .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "First commit"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["tag", "v1"]);
    p.write("app/README.md", "v2\n");
    git(&repo, &["commit", "-q", "-am", "Second commit"]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    p.write("app/feature.txt", "feature\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "Feature work"]);
    let feature = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["checkout", "-q", "main"]);

    p.write(
        "pipeline.yaml",
        r##"
name: git
stages:
  - name: Source
    actions:
      - { name: Main, uses: source-git@1, outputs: [main], capabilities: { process: [git], dirs: { app: ro } }, with: { repository: app, branch: main } }
      - { name: Feature, uses: source-git@1, outputs: [feature], capabilities: { process: [git], dirs: { app: ro } }, with: { repository: app, branch: feature } }
      - { name: Tag, uses: source-git@1, outputs: [tagged], capabilities: { process: [git], dirs: { app: ro } }, with: { repository: app, tag: v1 } }
      - { name: Commit, uses: source-git@1, outputs: [pinned], capabilities: { process: [git], dirs: { app: ro } }, with: { repository: app, commit: FIRST } }
      - { name: Missing, uses: source-git@1, outputs: [missing], capabilities: { process: [git], dirs: { app: ro } }, with: { repository: app, branch: nope } }
      - { name: Ungranted, uses: source-git@1, outputs: [ungranted], capabilities: { process: [git] }, with: { repository: app, branch: main } }
  - name: Check
    actions:
      - name: Files
        uses: command@1
        inputs: [main, feature, tagged, pinned]
        capabilities: { process: [sh] }
        with:
          run: |
            set -e
            test ! -e in/main/.git
            test -x in/main/build.sh
            test "$(cat in/main/README.md)" = v2 && test ! -e in/main/feature.txt
            test -f in/feature/feature.txt
            test "$(cat in/tagged/README.md)" = v1 && test "$(cat in/pinned/README.md)" = v1
"##
        .replace("FIRST", &first)
        .as_str(),
    );
    let exec = p.run(&[]).json();
    let main = action(&exec, "Source/Main");
    assert_eq!(status(main), "Succeeded", "{main:#}");
    assert_eq!(main["variables"]["CommitMessage"], "Second commit");
    assert_eq!(main["variables"]["BranchName"], "main");
    assert_eq!(main["variables"]["RepositoryName"], "app");
    assert!(
        main["variables"]["AuthorDate"]
            .as_str()
            .unwrap()
            .contains('T')
    );
    assert_eq!(
        action(&exec, "Source/Feature")["variables"]["CommitId"],
        feature.as_str()
    );
    assert_eq!(
        action(&exec, "Source/Tag")["variables"]["CommitId"],
        first.as_str()
    );
    assert_eq!(
        action(&exec, "Source/Commit")["variables"]["CommitMessage"],
        "First commit"
    );
    assert!(
        error(action(&exec, "Source/Missing")).contains("git checkout failed"),
        "{}",
        error(action(&exec, "Source/Missing"))
    );
    // git runs confined: a repository the action is not granted is out of its reach.
    assert!(
        error(action(&exec, "Source/Ungranted"))
            .contains("grant it read-only with `capabilities: { dirs: { app: ro } }`"),
        "{}",
        error(action(&exec, "Source/Ungranted"))
    );
    // The repository was only read.
    assert_eq!(git(&repo, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(
        stage_status(&exec, "Check"),
        "NotStarted",
        "Missing failed the Source stage"
    );
}

#[test]
fn source_git_clones_over_http_from_a_granted_origin() {
    let p = Project::new("name: placeholder\nstages: []\n");
    let work = p.path("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    p.write("work/app.txt", "served over http\n");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "Over the wire"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(p.dir.path(), &["clone", "-q", "--bare", "work", "repo.git"]);
    git(&p.path("repo.git"), &["update-server-info"]);
    // A "dumb" HTTP git server: the bare repository's files, as static files.
    let server = crate::harness::http::HttpServer::start();
    fn walk(
        dir: &std::path::Path,
        root: &std::path::Path,
        server: &crate::harness::http::HttpServer,
    ) {
        for e in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), root, server);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                server.file(
                    &format!("/repo.git/{rel}"),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    walk(&p.path("repo.git"), &p.path("repo.git"), &server);
    server.file(
        "/repo.git/info/refs?service=git-upload-pack",
        std::fs::read(p.path("repo.git/info/refs")).unwrap(),
    );
    let url = format!("{}/repo.git", server.origin());
    p.write(
        "pipeline.yaml",
        &format!(
            "name: remote\nstages:\n  - name: Source\n    actions:\n      - {{ name: Granted, uses: source-git@1, outputs: [a], capabilities: {{ process: [git], http: [\"{}\"] }}, with: {{ repository: \"{url}\", branch: main }} }}\n      - {{ name: NotGranted, uses: source-git@1, outputs: [b], capabilities: {{ process: [git] }}, with: {{ repository: \"{url}\", branch: main }} }}\n",
            server.origin()
        ),
    );
    let exec = p.run(&[]).json();
    let granted = action(&exec, "Source/Granted");
    assert_eq!(status(granted), "Succeeded", "{granted:#}");
    assert_eq!(granted["variables"]["CommitId"], head.as_str());
    assert_eq!(granted["variables"]["RepositoryName"], "repo");
    assert!(
        error(action(&exec, "Source/NotGranted")).contains("is not granted"),
        "{exec:#}"
    );
}

#[test]
fn source_git_refuses_remote_urls_and_ambiguous_revisions() {
    let p = Project::new(
        r##"
name: git-config
stages:
  - name: Source
    actions:
      - { name: Remote, uses: source-git@1, outputs: [a], capabilities: { process: [git] }, with: { repository: "https://example.com/x.git", branch: main } }
      - { name: Both, uses: source-git@1, outputs: [b], capabilities: { process: [git] }, with: { repository: ., branch: main, tag: v1 } }
      - { name: Option, uses: source-git@1, outputs: [c], capabilities: { process: [git] }, with: { repository: ., commit: "--upload-pack=touch /tmp/pwned" } }
"##,
    );
    let exec = p.run(&[]).json();
    assert!(error(action(&exec, "Source/Remote")).contains("https://example.com/x.git is not granted; add its origin to `capabilities: { http: [...] }`"), "{}", error(action(&exec, "Source/Remote")));
    assert!(error(action(&exec, "Source/Both")).contains("set one of `branch`, `tag`, `commit`"));
    assert!(error(action(&exec, "Source/Option")).contains("not a valid revision"));
}

/// Build a Python plugin from source with componentize-py (PyPI, pinned in .ci/run), once per
/// source for all the tests of this run (a build takes a core for 10–20 s), copied to `out`.
pub fn componentize_python(src: &std::path::Path, out: &std::path::Path) {
    type Built = std::collections::HashMap<std::path::PathBuf, std::path::PathBuf>;
    static BUILT: std::sync::Mutex<Option<Built>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap();
    let built = built.get_or_insert_with(Built::new);
    if !built.contains_key(src) {
        // Built anew by each run of the tests (never a stale one from before).
        let wasm = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("python-plugin-{}.wasm", built.len()));
        build_python(src, &wasm);
        built.insert(src.to_path_buf(), wasm);
    }
    std::fs::copy(&built[src], out).unwrap();
}

fn build_python(src: &std::path::Path, out: &std::path::Path) {
    let status = Command::new("componentize-py")
        .args(["-d", repo().join("wit").to_str().unwrap(), "-w", "sluice:action/action@0.1.0", "componentize", "app", "-p"])
        .arg(src)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("componentize-py is needed to build the Python example plugin ({e}); install it: pip install componentize-py==0.25.1"));
    assert!(status.success(), "componentize-py failed");
}

/// Run a Node.js tool in `dir`; a missing one is a loud failure that says what to install.
pub fn node_tool(dir: &std::path::Path, cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed to build JavaScript plugins ({e}); install Node.js 18 or newer (apt-get install nodejs npm)"))
}

/// componentize-js, installed once for the repository (npm, pinned in the JS example's
/// package-lock.json; `npm ci` fetches it when node_modules is missing).
pub fn componentize_js_modules() -> std::path::PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap();
    let dir = repo().join("examples/plugins/js-semver");
    let installed = ["componentize-js", "preview2-shim"]
        .iter()
        .all(|p| dir.join("node_modules/@bytecodealliance").join(p).exists());
    if !installed {
        let ci = node_tool(&dir, "npm", &["ci", "--no-audit", "--no-fund"]);
        assert!(
            ci.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&ci.stderr)
        );
    }
    dir.join("node_modules")
}

/// Build the JavaScript example plugin from source with componentize-js.
fn componentize_js(out: &std::path::Path) {
    componentize_js_modules();
    let built = node_tool(
        &repo().join("examples/plugins/js-semver"),
        "node",
        &["build.mjs", out.to_str().unwrap()],
    );
    assert!(
        built.status.success(),
        "building the JavaScript plugin failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

#[test]
fn a_javascript_plugin_runs_in_a_pipeline() {
    let p = Project::new(
        r##"
name: js
variables:
  version: "1.4.2"
stages:
  - name: Version
    actions:
      - { name: Next, uses: ./semver.wasm, namespace: Semver, with: { version: "#{variables.version}", bump: minor } }
      - { name: Bad, uses: ./semver.wasm, with: { version: "one" } }
  - name: Use
    actions:
      - { name: Echo, uses: PROBE, with: { mode: ok, value: "v#{Semver.Next}" } }
"##,
    );
    componentize_js(&p.path("semver.wasm"));
    // Compiled once, through the project's compile cache, for `plugin describe` and the run.
    let d = p.sluice(&["plugin", "describe", "./semver.wasm", "--data", ".sluice"]);
    assert!(
        d.stdout.contains("semver-bump 1.0.0 (other)"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    let exec = p.run(&[]).json();
    let next = action(&exec, "Version/Next");
    assert_eq!(status(next), "Succeeded", "{next:#}");
    assert_eq!(
        (next["variables"]["Next"].as_str(), next["summary"].as_str()),
        (Some("1.5.0"), Some("1.4.2 → 1.5.0 (minor)"))
    );
    assert!(
        error(action(&exec, "Version/Bad"))
            .contains("configuration error: `version` must be MAJOR.MINOR.PATCH")
    );
    // Fix the bad one: the next stage sees the JavaScript action's output.
    p.write(
        "pipeline.yaml",
        &p.read("pipeline.yaml")
            .replace("version: \"one\"", "version: \"2.0.0\""),
    );
    // Past the action cache: this run's log of Version/Next is read below.
    let exec = p.run(&["--no-cache"]).json();
    assert_eq!(action(&exec, "Use/Echo")["variables"]["Value"], "v1.5.0");
    let logs = p.sluice(&[
        "logs",
        exec["execution_id"].as_str().unwrap(),
        "Version/Next",
    ]);
    assert!(
        logs.stdout.contains("js/Version/Next: 1.4.2 -> 1.5.0"),
        "{}",
        logs.stdout
    );
}

#[test]
fn a_python_plugin_runs_in_a_pipeline() {
    let p = Project::new("name: placeholder\nstages: []\n");
    componentize_python(
        &repo().join("examples/plugins/python-wordcount"),
        &p.path("wordcount.wasm"),
    );
    let d = p.sluice(&[
        "plugin",
        "describe",
        "./wordcount.wasm",
        "--data",
        ".sluice",
    ]);
    assert!(
        d.stdout.contains("wordcount 1.0.0 (test)"),
        "{}\n{}",
        d.stdout,
        d.stderr
    );
    // Described through the project's compile cache: the run below loads it compiled.
    let compiled = std::fs::read_dir(p.path(".sluice/compiled"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(compiled > 0, "nothing in .sluice/compiled after describing");
    p.write("docs/a.txt", "one two three\nfour\n");
    p.write("docs/sub/b.txt", "five six\n");
    p.write("docs/skip.md", "not counted at all\n");
    p.write(
        "pipeline.yaml",
        r##"
name: python
stages:
  - name: Source
    actions:
      - { name: Docs, uses: source-dir@1, outputs: [docs], with: { path: docs } }
  - name: Count
    actions:
      - { name: Words, uses: ./wordcount.wasm, inputs: [docs], outputs: [report], namespace: WC }
      - { name: TooMany, uses: ./wordcount.wasm, inputs: [docs], outputs: [report2], with: { max_words: "3" } }
"##,
    );
    let run = p.run(&[]);
    let exec = run.json();
    let words = action(&exec, "Count/Words");
    assert_eq!(status(words), "Succeeded", "{words:#}\n{}", run.stderr);
    assert_eq!(words["variables"]["Words"], "6");
    assert_eq!(words["variables"]["Files"], "2");
    assert_eq!(words["variables"]["Lines"], "3");
    assert!(error(action(&exec, "Count/TooMany")).contains("6 words is more than the limit of 3"));
    let digest = words["artifacts"]["report"].as_str().unwrap();
    let got = p.sluice(&["artifact", "get", digest, "report"]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(p.read("report/wordcount.tsv"), "a.txt\t4\nsub/b.txt\t2\n");
}

#[test]
fn test_report_counts_junit_results_and_fails_above_the_threshold() {
    let p = Project::new(
        r##"
name: reports
stages:
  - name: Test
    actions:
      - name: Run
        uses: command@1
        outputs: [results]
        capabilities: { process: [sh] }
        with:
          run: |
            mkdir -p out/results/junit
            cat > out/results/junit/unit.xml <<'XML'
            <?xml version="1.0"?>
            <testsuites>
              <testsuite name="unit" tests="4">
                <testcase classname="math" name="adds"/>
                <testcase classname="math" name="divides"><failure message="by zero">boom</failure></testcase>
                <testcase classname="io" name="reads"><skipped/></testcase>
                <testcase classname="io" name="writes"><error type="IOError"/></testcase>
              </testsuite>
            </testsuites>
            XML
            echo '<testsuite><testcase name="broken"' > out/results/bad.xml.txt
  - name: Report
    actions:
      - { name: Lenient, uses: test-report@1, inputs: [results], with: { path: junit, max_failures: "2" } }
      - { name: Strict, uses: test-report@1, inputs: [results], with: { path: junit } }
      - { name: Nothing, uses: test-report@1, inputs: [results], with: { path: nowhere } }
"##,
    );
    let exec = p.run(&[]).json();
    let lenient = action(&exec, "Report/Lenient");
    assert_eq!(status(lenient), "Succeeded", "{lenient:#}");
    for (k, v) in [
        ("Tests", "4"),
        ("Failures", "1"),
        ("Errors", "1"),
        ("Skipped", "1"),
    ] {
        assert_eq!(lenient["variables"][k], v, "{k}");
    }
    let strict = error(action(&exec, "Report/Strict"));
    assert!(
        strict.contains("4 tests, 1 failures, 1 errors, 1 skipped")
            && strict.contains("math.divides")
            && strict.contains("io.writes"),
        "{strict}"
    );
    assert!(error(action(&exec, "Report/Nothing")).contains("no JUnit XML report found"));
}

#[test]
fn the_release_example_takes_a_git_project_through_build_tests_approval_and_deploy() {
    let p = Project::copy_of("examples/release");
    let made = Command::new("sh")
        .arg("make-repo.sh")
        .arg("repo")
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let head = git(&p.path("repo"), &["rev-parse", "main"]);

    let r = p.run(&["--approve", "Approve/Gate", "--as", "ana"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let exec = r.json();
    let checkout = action(&exec, "Source/Checkout");
    assert_eq!(checkout["variables"]["CommitId"], head.as_str());
    assert_eq!(checkout["variables"]["BranchName"], "main");
    assert_eq!(action(&exec, "Build/Report")["variables"]["Tests"], "2");
    assert_eq!(
        action(&exec, "Approve/Gate")["kept"]["custom_data"],
        format!("greeter 1.0.0+{head}: 2 tests passed").as_str()
    );
    // The release is live: the packaged greeter, stamped with the commit.
    assert_eq!(
        p.read(".sluice/releases/current/VERSION").trim(),
        format!("1.0.0+{head}")
    );
    let greet = Command::new(p.path(".sluice/releases/current/bin/greet"))
        .arg("Ana")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&greet.stdout), "Hello, Ana!\n");

    // The `broken` branch fails its tests: the report names them and nothing is approved or deployed.
    let r = p.run(&[
        "--var",
        "branch=broken",
        "--approve",
        "Approve/Gate",
        "--as",
        "ana",
    ]);
    assert_eq!(r.code, 1);
    let exec = r.json();
    let report = action(&exec, "Build/Report");
    assert!(
        error(report).contains("2 tests, 2 failures") && error(report).contains("greet.named"),
        "{report:#}"
    );
    assert_eq!(status(action(&exec, "Approve/Gate")), "NotStarted");
    assert_eq!(
        std::fs::read_link(p.path(".sluice/releases/current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        head_release(&p)
    );

    // An event's commit wins over the branch (`commit: "#{trigger.commit}"`): the broken commit,
    // named on `main`, is what gets built, and fails the same way.
    let broken = git(&p.path("repo"), &["rev-parse", "broken"]);
    let r = p.run(&[
        "--trigger-commit",
        broken.as_str(),
        "--trigger-ref",
        "refs/heads/main",
        "--approve",
        "Approve/Gate",
        "--as",
        "ana",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let exec = r.json();
    assert_eq!(
        action(&exec, "Source/Checkout")["variables"]["CommitId"],
        broken.as_str()
    );
    assert!(error(action(&exec, "Build/Report")).contains("2 failures"));
}

/// The release `current` points to (there is exactly one).
fn head_release(p: &Project) -> String {
    let mut entries: Vec<String> = std::fs::read_dir(p.path(".sluice/releases/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.pop().unwrap()
}
