//! A guest that loops, eats memory, panics or reaches outside its grants fails its own action;
//! the engine and the other actions carry on.
use crate::harness::*;

#[test]
fn misbehaving_guests_fail_only_their_own_action() {
    let p = Project::new(
        r##"
name: hostile
stages:
  - name: Hostile
    actions:
      - { name: Loop, uses: PROBE, with: { mode: loop }, timeout: 2s }
      - { name: Sleep, uses: PROBE, with: { mode: sleep }, timeout: 2s }
      - { name: Alloc, uses: PROBE, with: { mode: alloc }, limits: { memory: 32MiB } }
      - { name: Panic, uses: PROBE, with: { mode: panic } }
      - { name: EtcPasswd, uses: PROBE, with: { mode: read, path: /etc/passwd } }
      - { name: DotDot, uses: PROBE, with: { mode: read, path: /scratch/../../etc/passwd } }
      - { name: WriteOutsideMounts, uses: PROBE, with: { mode: write, path: /etc/sluice-was-here } }
      - { name: SymlinkOut, uses: PROBE, with: { mode: symlink, path: /scratch/leak, target: ../../etc/passwd } }
      - { name: SymlinkAbs, uses: PROBE, with: { mode: symlink, path: /scratch/leak, target: /etc/passwd } }
      - { name: Exec, uses: PROBE, with: { mode: exec, program: cat } }
      - { name: Fine, uses: PROBE, with: { mode: ok, value: still-here } }
  - name: Never
    actions:
      - { name: Skipped, uses: PROBE, with: { mode: ok } }
"##,
    );
    let started = std::time::Instant::now();
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    assert_eq!(status(&exec), "Failed");
    let expect = [
        ("Hostile/Loop", "timeout"),
        ("Hostile/Sleep", "timeout"),
        ("Hostile/Alloc", "memory limit exceeded"),
        ("Hostile/Panic", "crashed"),
        ("Hostile/EtcPasswd", "cannot read /etc/passwd"),
        ("Hostile/DotDot", "cannot read /scratch/../../etc/passwd"),
        (
            "Hostile/WriteOutsideMounts",
            "cannot write /etc/sluice-was-here",
        ),
        ("Hostile/SymlinkOut", "leads outside /scratch"),
        ("Hostile/SymlinkAbs", "must be a relative path"),
        ("Hostile/Exec", "program `cat` is not granted"),
    ];
    for (path, needle) in expect {
        let a = action(&exec, path);
        assert_eq!(status(a), "Failed", "{path}: {a:#}");
        assert!(
            error(a).contains(needle),
            "{path}: expected {needle:?} in {:?}",
            error(a)
        );
    }
    let fine = action(&exec, "Hostile/Fine");
    assert_eq!(status(fine), "Succeeded");
    assert_eq!(fine["variables"]["Value"], "still-here");
    assert_eq!(stage_status(&exec, "Never"), "NotStarted");
    assert!(!std::path::Path::new("/etc/sluice-was-here").exists());
    // The looping and sleeping guests were stopped at their 2 s timeout, not left running.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn command_environment_is_cleared_and_failures_carry_exit_code_and_output() {
    let p = Project::new(
        r##"
name: commands
stages:
  - name: Run
    actions:
      - name: Env
        uses: command@1
        capabilities: { process: [sh] }
        with:
          run: |
            echo "Secret=${SECRET_TOKEN:-unset}" >> "$SLUICE_OUTPUT"
            echo "Key=$SLUICE_IDEMPOTENCY_KEY" >> "$SLUICE_OUTPUT"
            echo "Cwd=$(pwd)" >> "$SLUICE_OUTPUT"
      - name: Broken
        uses: command@1
        capabilities: { process: [sh] }
        with:
          run: |
            echo "compiling..."; echo "error: missing semicolon" >&2; exit 3
      - name: Leak
        uses: command@1
        outputs: [leaky]
        capabilities: { process: [sh] }
        with:
          run: ln -s /etc/passwd out/leaky/passwd
      - name: Background
        uses: command@1
        timeout: 2s
        capabilities: { process: [sh] }
        with:
          run: sleep 600
"##,
    );
    let started = std::time::Instant::now();
    let run = p.sluice_env(
        &["run", "pipeline.yaml", "--json"],
        &[("SECRET_TOKEN", "hunter2")],
    );
    assert_eq!(run.code, 1);
    let exec = run.json();
    let env = action(&exec, "Run/Env");
    assert_eq!(status(env), "Succeeded", "{env:#}");
    assert_eq!(
        env["variables"]["Secret"], "unset",
        "host environment leaked into the command"
    );
    let id = exec["execution_id"].as_str().unwrap();
    assert_eq!(
        env["variables"]["Key"],
        format!("default/{id}/Run/Env/1").as_str()
    );
    assert!(
        env["variables"]["Cwd"]
            .as_str()
            .unwrap()
            .contains(".sluice/work/ws-"),
        "runs in the action's workspace"
    );

    let broken = action(&exec, "Run/Broken");
    assert!(
        error(broken).contains("exited with code 3"),
        "{}",
        error(broken)
    );
    assert!(
        error(broken).contains("error: missing semicolon"),
        "{}",
        error(broken)
    );
    let logs = p.sluice(&["logs", id, "Run/Broken"]);
    assert!(
        logs.stdout.contains("compiling...") && logs.stdout.contains("missing semicolon"),
        "{}",
        logs.stdout
    );

    assert!(error(action(&exec, "Run/Leak")).contains("leads outside the artifact"));
    assert!(error(action(&exec, "Run/Background")).contains("timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // Workspaces are emptied after each action.
    for ws in std::fs::read_dir(p.path(".sluice/work")).unwrap() {
        let ws = ws.unwrap().path();
        assert!(
            !ws.join("out").exists()
                && std::fs::read_dir(ws.join("scratch"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{} not emptied",
            ws.display()
        );
    }
}

#[test]
fn host_programs_cannot_be_redirected_and_their_output_cannot_stall_the_engine() {
    let p = Project::new(
        r##"
name: programs
stages:
  - name: Run
    actions:
      - name: Background
        uses: command@1
        timeout: 60s
        capabilities: { process: [sh] }
        with:
          run: |
            sleep 6001 &
            echo "Pid=$!" >> "$SLUICE_OUTPUT"
      - name: Binary
        uses: command@1
        capabilities: { process: [sh] }
        with:
          run: head -c 3000000 /dev/urandom; echo; echo done-marker
      - { name: PathOverride, uses: PROBE, capabilities: { process: [sh] }, with: { mode: exec, program: sh, env: "PATH=/tmp" } }
      - { name: PreloadOverride, uses: PROBE, capabilities: { process: [sh] }, with: { mode: exec, program: sh, env: "LD_PRELOAD=/tmp/x.so" } }
      - { name: Chatty, uses: PROBE, with: { mode: spam } }
"##,
    );
    let started = std::time::Instant::now();
    let run = p.run(&[]);
    let exec = run.json();
    // A program that leaves a background child does not wait for it: the child is killed.
    let bg = action(&exec, "Run/Background");
    assert_eq!(status(bg), "Succeeded", "{bg:#}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "waited for the background child"
    );
    // (Its pid is one of the program's PID namespace: found by its command line.)
    assert!(bg["variables"]["Pid"].as_str().is_some());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alive = processes_with("sleep 6001");
    assert!(
        alive.is_empty(),
        "background child survived its action: {alive:?}"
    );
    // Binary output without newlines neither stalls nor breaks the log.
    assert_eq!(status(action(&exec, "Run/Binary")), "Succeeded");
    let id = exec["execution_id"].as_str().unwrap();
    assert!(
        p.sluice(&["logs", id, "Run/Binary"])
            .stdout
            .contains("done-marker")
    );
    // The guest cannot change which program runs or what it loads.
    for name in ["Run/PathOverride", "Run/PreloadOverride"] {
        assert!(
            error(action(&exec, name)).contains("cannot be set for a host program"),
            "{name}: {}",
            error(action(&exec, name))
        );
    }
    // A guest printing 2 MiB is not failed for it.
    assert_eq!(
        status(action(&exec, "Run/Chatty")),
        "Succeeded",
        "{:#}",
        action(&exec, "Run/Chatty")
    );
}

#[test]
fn outputs_cannot_smuggle_links_or_take_the_users_files() {
    let p = Project::new(
        r##"
name: smuggling
stages:
  - name: Make
    actions:
      - name: Chain
        uses: command@1
        outputs: [chain]
        capabilities: { process: [sh] }
        with: { run: "ln -s . out/chain/a && ln -s a/a/a/../../../etc/passwd out/chain/x" }
      - name: RootLink
        uses: command@1
        outputs: [root]
        capabilities: { process: [sh] }
        with: { run: "rmdir out/root && ln -s / out/root" }
      - name: HardLink
        uses: PROBE
        outputs: [linked]
        capabilities: { dirs: { ./mine: rw } }
        with: { mode: hardlink, path: MINE/precious.txt, target: /out/linked/precious.txt }
      - name: Internals
        uses: PROBE
        capabilities: { dirs: { ./.sluice: rw } }
        with: { mode: ok }
      - name: Data
        uses: command@1
        outputs: [data]
        capabilities: { process: [sh] }
        with: { run: "echo data > out/data/file" }
  - name: Use
    actions:
      - { name: WriteInput, uses: PROBE, inputs: [data], with: { mode: write, path: /in/data/file, value: changed } }
      - { name: NewInInput, uses: PROBE, inputs: [data], with: { mode: write, path: /in/data/new, value: x } }
"##
        .replace("MINE", &format!("{}/mine", "PIPELINE_DIR"))
        .as_str(),
    );
    // The probe resolves nothing itself: give it the absolute path of the granted directory.
    let yaml = p.read("pipeline.yaml").replace(
        "PIPELINE_DIR",
        p.dir.path().canonicalize().unwrap().to_str().unwrap(),
    );
    p.write("pipeline.yaml", &yaml);
    p.write("mine/precious.txt", "mine");
    let exec = p.run(&[]).json();
    assert!(
        error(action(&exec, "Make/Chain")).contains("leads outside the artifact"),
        "{}",
        error(action(&exec, "Make/Chain"))
    );
    assert!(
        error(action(&exec, "Make/RootLink")).contains("must be a directory"),
        "{}",
        error(action(&exec, "Make/RootLink"))
    );
    // A hard link to the user's file is copied into the store, never moved or made read-only.
    assert_eq!(
        status(action(&exec, "Make/HardLink")),
        "Succeeded",
        "{:#}",
        action(&exec, "Make/HardLink")
    );
    assert_eq!(p.read("mine/precious.txt"), "mine");
    assert!(
        !std::fs::metadata(p.path("mine/precious.txt"))
            .unwrap()
            .permissions()
            .readonly()
    );
    std::fs::write(p.path("mine/precious.txt"), "still mine")
        .expect("the user's file stays writable");
    assert!(
        error(action(&exec, "Make/Internals"))
            .contains("would let the action write Sluice's own data")
    );
    // Stage Make failed, so Use never ran; run the input checks on their own.
    assert_eq!(stage_status(&exec, "Use"), "NotStarted");
    let q = Project::new(
        r##"
name: inputs
stages:
  - name: Make
    actions:
      - { name: Data, uses: command@1, outputs: [data], capabilities: { process: [sh] }, with: { run: "echo data > out/data/file" } }
  - name: Use
    actions:
      - { name: WriteInput, uses: PROBE, inputs: [data], with: { mode: write, path: /in/data/file, value: changed } }
      - { name: NewInInput, uses: PROBE, inputs: [data], with: { mode: write, path: /in/data/new, value: x } }
  - name: Check
    actions:
      - { name: Read, uses: command@1, inputs: [data], capabilities: { process: [sh] }, with: { run: "echo Content=$(cat in/data/file) >> $SLUICE_OUTPUT" } }
"##,
    );
    let exec = q.run(&[]).json();
    for name in ["Use/WriteInput", "Use/NewInInput"] {
        assert_eq!(
            status(action(&exec, name)),
            "Failed",
            "{name} wrote into a read-only input"
        );
    }
    let data = action(&exec, "Make/Data")["artifacts"]["data"]
        .as_str()
        .unwrap()
        .to_string();
    let verify = q.sluice(&["artifact", "verify", &data]);
    assert_eq!(
        verify.code, 0,
        "the shared input blob was modified: {}",
        verify.stderr
    );
}

/// The engine admits guests against a memory budget, each counted at its cap: those that do
/// not fit wait for memory instead of the engine being OOM-killed.
#[test]
fn guests_beyond_the_memory_budget_wait_for_it() {
    let p = Project::new(
        r##"
name: budget
stages:
  - name: Parallel
    actions:
      - { name: A, uses: PROBE, limits: { memory: 64MiB }, with: { mode: sleep, ms: "1000" } }
      - { name: B, uses: PROBE, limits: { memory: 64MiB }, with: { mode: sleep, ms: "1000" } }
      - { name: C, uses: PROBE, limits: { memory: 64MiB }, with: { mode: sleep, ms: "1000" } }
      - { name: D, uses: PROBE, with: { mode: sleep, ms: "1000" } }
"##,
    );
    // A budget of 100 MiB: one 64 MiB guest at a time; D's 256 MiB cap waits for all of it.
    let started = std::time::Instant::now();
    let run = p.sluice_env(
        &["run", "pipeline.yaml", "--json"],
        &[("SLUICE_GUEST_MEMORY", "100MiB")],
    );
    let waited = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in ["A", "B", "C", "D"] {
        assert_eq!(
            status(action(&run.json(), &format!("Parallel/{name}"))),
            "Succeeded"
        );
    }
    assert!(
        waited >= std::time::Duration::from_secs(4),
        "four 1 s guests ran side by side within a budget for one: {waited:?}"
    );
    // With the default budget (half the machine's memory) they run side by side.
    let started = std::time::Instant::now();
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
}

/// A component the engine dropped from memory (beyond its bound of loaded components) is
/// loaded again when an action needs it.
#[test]
fn components_dropped_from_memory_are_loaded_again() {
    let p = Project::new(
        r##"
name: churn
stages:
  - name: One
    actions:
      - { name: Probe, uses: PROBE, with: { mode: ok, value: first } }
  - name: Two
    actions:
      - { name: Noop, uses: noop@1 }
  - name: Three
    actions:
      - { name: ProbeAgain, uses: PROBE, with: { mode: ok, value: again } }
      - { name: NoopAgain, uses: noop@1, run_order: 2 }
"##,
    );
    let run = p.sluice_env(
        &["run", "pipeline.yaml", "--json"],
        &[("SLUICE_MAX_LOADED", "1")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exec = run.json();
    assert_eq!(
        action(&exec, "Three/ProbeAgain")["variables"]["Value"],
        "again"
    );
    assert_eq!(status(action(&exec, "Three/NoopAgain")), "Succeeded");
}
