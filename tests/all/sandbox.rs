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
      - { name: WriteInput, uses: PROBE, with: { mode: write, path: /etc/sluice-was-here } }
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
        ("Hostile/WriteInput", "cannot write /etc/sluice-was-here"),
        ("Hostile/SymlinkOut", "leads outside /scratch"),
        ("Hostile/SymlinkAbs", "must be a relative path"),
        ("Hostile/Exec", "program `cat` is not granted"),
    ];
    for (path, needle) in expect {
        let a = action(&exec, path);
        assert_eq!(status(a), "Failed", "{path}: {a:#}");
        assert!(error(a).contains(needle), "{path}: expected {needle:?} in {:?}", error(a));
    }
    let fine = action(&exec, "Hostile/Fine");
    assert_eq!(status(fine), "Succeeded");
    assert_eq!(fine["variables"]["Value"], "still-here");
    assert_eq!(stage_status(&exec, "Never"), "NotStarted");
    assert!(!std::path::Path::new("/etc/sluice-was-here").exists());
    // The looping and sleeping guests were stopped at their 2 s timeout, not left running.
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
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
    let run = p.sluice_env(&["run", "pipeline.yaml", "--json"], &[("SECRET_TOKEN", "hunter2")]);
    assert_eq!(run.code, 1);
    let exec = run.json();
    let env = action(&exec, "Run/Env");
    assert_eq!(status(env), "Succeeded", "{env:#}");
    assert_eq!(env["variables"]["Secret"], "unset", "host environment leaked into the command");
    let id = exec["execution_id"].as_str().unwrap();
    assert_eq!(env["variables"]["Key"], format!("default/{id}/Run/Env/1").as_str());
    assert!(env["variables"]["Cwd"].as_str().unwrap().contains(".sluice/work/ws-"), "runs in the action's workspace");

    let broken = action(&exec, "Run/Broken");
    assert!(error(broken).contains("exited with code 3"), "{}", error(broken));
    assert!(error(broken).contains("error: missing semicolon"), "{}", error(broken));
    let logs = p.sluice(&["logs", id, "Run/Broken"]);
    assert!(logs.stdout.contains("compiling...") && logs.stdout.contains("missing semicolon"), "{}", logs.stdout);

    assert!(error(action(&exec, "Run/Leak")).contains("leads outside the artifact"));
    assert!(error(action(&exec, "Run/Background")).contains("timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // Workspaces are emptied after each action.
    for ws in std::fs::read_dir(p.path(".sluice/work")).unwrap() {
        let ws = ws.unwrap().path();
        assert!(!ws.join("out").exists() && std::fs::read_dir(ws.join("scratch")).unwrap().next().is_none(), "{} not emptied", ws.display());
    }
}
