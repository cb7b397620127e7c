//! Granted host programs are confined (Linux): a `process:` grant lets an action start a
//! program, not act as the engine's user. Each test lets a granted shell try what a hostile
//! pipeline would and checks it was refused or stopped, with the engine unharmed.
use crate::harness::nats::wait_for;
use crate::harness::*;
use std::time::Duration;

/// Lines of shell that record, for each attempt, `NAME=refused` or `NAME=LEAKED` as the
/// action's output variables.
fn attempt(name: &str, command: &str) -> String {
    format!(
        "if {command} >/dev/null 2>&1; then echo {name}=LEAKED; else echo {name}=refused; fi >> \"$SLUICE_OUTPUT\"\n"
    )
}

#[test]
fn a_granted_program_reaches_only_its_workspace_and_its_grants() {
    let p = Project::new("");
    p.write("granted-ro/readme.txt", "read me");
    std::fs::create_dir_all(p.path("granted-rw")).unwrap();
    let project = p.dir.path().display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret.txt"), "not granted").unwrap();
    let elsewhere = elsewhere.path().display().to_string();
    let mut script = String::from("set -u\n");
    for (name, cmd) in [
        ("DataDir", format!("ls {project}/.sluice")),
        ("State", format!("cat {project}/.sluice/state.redb")),
        ("Logs", format!("ls {project}/.sluice/logs")),
        (
            "OtherWorkspace",
            "cat \"$SLUICE_WORKSPACE\"/../*/scratch/neighbour.txt".to_string(),
        ),
        ("Root", "ls /root".to_string()),
        ("Ungranted", format!("cat {elsewhere}/secret.txt")),
        ("Shadow", "cat /etc/shadow".to_string()),
        ("WriteProject", format!("touch {project}/written")),
        ("WriteTmp", "touch /tmp/sluice-confined-escape".to_string()),
        ("WriteGrantedRo", format!("touch {project}/granted-ro/x")),
        // Through the grant of the whole project (read-only): its files, not the data dir.
        (
            "DataThroughGrant",
            format!("cat {project}/.sluice/state.redb"),
        ),
    ] {
        script.push_str(&attempt(name, &cmd));
    }
    // What the action may do.
    script.push_str(&format!(
        "echo \"ReadGranted=$(cat {project}/granted-ro/readme.txt)\" >> \"$SLUICE_OUTPUT\"\n\
         echo ok > {project}/granted-rw/out.txt && echo WroteGranted=yes >> \"$SLUICE_OUTPUT\"\n\
         echo \"ProjectFile=$(head -c 5 {project}/probe.sh)\" >> \"$SLUICE_OUTPUT\"\n\
         echo ok > scratch/mine.txt && echo WroteWorkspace=yes >> \"$SLUICE_OUTPUT\"\n\
         echo \"Pid=$$\" >> \"$SLUICE_OUTPUT\"\n"
    ));
    p.write("probe.sh", &script);
    p.write(
        "pipeline.yaml",
        &format!(
            r##"
name: confined
stages:
  - name: Probe
    actions:
      - name: Neighbour
        uses: command@1
        capabilities: {{ process: [sh] }}
        with:
          run: echo secret > scratch/neighbour.txt && sleep 3
      - name: Escape
        uses: command@1
        capabilities:
          process: [sh]
          dirs: {{ ./granted-ro: ro, ./granted-rw: rw, {project}: ro }}
        with:
          run: sleep 1 && exec sh {project}/probe.sh
"##
        ),
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exec = run.json();
    let vars = &action(&exec, "Probe/Escape")["variables"];
    for name in [
        "DataDir",
        "State",
        "Logs",
        "OtherWorkspace",
        "Root",
        "Ungranted",
        "Shadow",
        "WriteProject",
        "WriteTmp",
        "WriteGrantedRo",
        "DataThroughGrant",
    ] {
        assert_eq!(vars[name], "refused", "{name}: {vars:#}");
    }
    assert_eq!(vars["ReadGranted"], "read me", "{vars:#}");
    assert_eq!(vars["WroteGranted"], "yes", "{vars:#}");
    assert_eq!(vars["ProjectFile"], "set -", "{vars:#}");
    assert_eq!(vars["WroteWorkspace"], "yes", "{vars:#}");
    // Its own PID namespace: the program is its init.
    assert_eq!(vars["Pid"], "1", "{vars:#}");
    assert!(!p.path("written").exists());
    assert!(!std::path::Path::new("/tmp/sluice-confined-escape").exists());
    assert_eq!(
        std::fs::read_to_string(p.path("granted-rw/out.txt")).unwrap(),
        "ok\n"
    );
}

#[test]
fn nothing_a_program_starts_outlives_its_action() {
    let p = Project::new(
        r##"
name: leftovers
stages:
  - name: Leave
    actions:
      - name: Behind
        uses: command@1
        capabilities: { process: [sh] }
        with:
          run: |
            setsid sleep 9871 &
            ( setsid sh -c 'sleep 9872 & sleep 9873' & )
            nohup sleep 9874 >/dev/null 2>&1 &
            sleep 0.3
            echo "left three behind"
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The namespace's init (the program) exited: the kernel killed the rest with it.
    let left = wait_until_none(|| {
        ["sleep 9871", "sleep 9872", "sleep 9873", "sleep 9874"]
            .iter()
            .flat_map(|n| processes_with(n))
            .collect()
    });
    assert!(left.is_empty(), "still running: {left:?}");
}

fn wait_until_none(mut f: impl FnMut() -> Vec<String>) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = f();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fork_bomb_a_huge_file_and_a_memory_hog_fail_inside_their_actions() {
    let p = Project::new(
        r##"
name: exhaustion
stages:
  - name: Exhaust
    actions:
      - name: ForkBomb
        uses: command@1
        timeout: 60s
        capabilities: { process: [sh] }
        with:
          run: |
            i=0
            while [ $i -lt 5000 ]; do sleep 9875 & i=$((i+1)); done
            echo "started $i"
      - name: HugeFile
        uses: command@1
        limits: { output: { size: 16MiB } }
        capabilities: { process: [sh] }
        with:
          run: head -c 10G /dev/zero > scratch/big
      - name: MemoryHog
        uses: command@1
        limits: { memory: 64MiB }
        capabilities: { process: [sh] }
        with:
          run: x=$(head -c 200000000 /dev/zero | tr '\0' a); echo ${#x}
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    for (path, needle) in [
        ("Exhaust/ForkBomb", "cannot fork"),
        ("Exhaust/HugeFile", "file size limit exceeded"),
        ("Exhaust/MemoryHog", "killed by a signal"),
    ] {
        let a = action(&exec, path);
        assert_eq!(status(a), "Failed", "{path}: {a:#}");
        assert!(
            error(a).to_lowercase().contains(needle),
            "{path}: {needle:?} not in {:?}",
            error(a)
        );
    }
    let left = wait_until_none(|| processes_with("sleep 9875"));
    assert!(left.is_empty(), "{} sleeps left", left.len());
    // The engine is unharmed: the next run works.
    p.write(
        "after.yaml",
        "name: after\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: command@1, capabilities: { process: [sh] }, with: { run: echo fine } }\n",
    );
    let after = p.sluice(&["run", "after.yaml"]);
    assert_eq!(after.code, 0, "{}", after.stderr);
}

#[test]
fn a_program_has_no_network_unless_the_action_is_granted_an_origin() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = other.local_addr().unwrap().port();
    let connect = |port: u16| format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'");
    let p = Project::new(&format!(
        r##"
name: network
stages:
  - name: Net
    actions:
      - name: NoGrant
        uses: command@1
        capabilities: {{ process: [sh, bash] }}
        with:
          run: |
            {no_grant}
      - name: Granted
        uses: command@1
        capabilities: {{ process: [sh, bash], http: ["http://127.0.0.1:{open}"] }}
        with:
          run: |
            {granted_port}
            {other_port}
"##,
        no_grant = attempt("Connect", &connect(open)).trim_end(),
        granted_port = attempt("GrantedPort", &connect(open)).trim_end(),
        other_port = attempt("OtherPort", &connect(closed)).trim_end(),
    ));
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exec = run.json();
    assert_eq!(
        action(&exec, "Net/NoGrant")["variables"]["Connect"],
        "refused"
    );
    let granted = &action(&exec, "Net/Granted")["variables"];
    assert_eq!(granted["GrantedPort"], "LEAKED", "{granted:#}");
    assert_eq!(granted["OtherPort"], "refused", "{granted:#}");
    // Only the granted action's connection reached the listener.
    listener.set_nonblocking(true).unwrap();
    let mut accepted = 0;
    while listener.accept().is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, 1);
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err());
}

#[test]
fn unconfined_programs_is_an_explicit_choice() {
    let p = Project::new(
        r##"
name: unconfined
stages:
  - name: S
    actions:
      - name: Outside
        uses: command@1
        capabilities: { process: [sh] }
        with:
          run: touch ../written-outside && echo "Pid=$$" >> "$SLUICE_OUTPUT"
"##,
    );
    // Confined by default: the write outside the workspace fails.
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // With the flag the program runs as the engine's user, as before confinement.
    let run = p.run(&["--unconfined-programs"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(action(&run.json(), "S/Outside")["variables"]["Pid"], "1");
}

/// The embedded service's control socket lies in its data directory, which a confined program
/// cannot read; but Landlock does not govern connecting to a named Unix socket, and a program
/// connecting as the engine's own user would act for it (without `--auth`, with the rights of
/// the host's user). The service refuses peers in another user namespace: every confined
/// program's.
#[test]
fn a_granted_program_cannot_control_the_service_through_its_socket() {
    let p = Project::new("");
    let project = p.dir.path().display().to_string();
    let socket = p.path(".sluice/sluice.sock").display().to_string();
    // perl-base (essential on Debian) speaks to a Unix socket; one request line, one reply.
    p.write(
        "reach.sh",
        &format!(
            r#"perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!"; print $s qq({{"tenant":"default","request":{{"verb":"pipeline.ls"}}}}\n); print scalar <$s>' {socket} > scratch/reply.txt 2>&1
if grep -q '"ok"' scratch/reply.txt; then echo Control=LEAKED; else echo Control=refused; fi >> "$SLUICE_OUTPUT"
echo "Reply=$(head -c 300 scratch/reply.txt | tr -d '\n')" >> "$SLUICE_OUTPUT"
"#
        ),
    );
    p.write(
        "pipeline.yaml",
        &format!(
            r##"
name: reach
stages:
  - name: Probe
    actions:
      - name: Socket
        uses: command@1
        capabilities:
          process: [sh]
          dirs: {{ {project}: ro }}
        with:
          run: exec sh {project}/reach.sh
"##
        ),
    );
    let engine = crate::harness::nats::Engine::start(p.dir.path(), ".sluice", &[]);
    wait_for(Duration::from_secs(30), "the service to answer", || {
        (p.sluice(&["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let started = p.sluice(&["start", "reach"]);
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_string();
    let exec: serde_json::Value = wait_for(Duration::from_secs(60), "the execution", || {
        let r = p.sluice(&["status", &id, "--json"]);
        let e: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
        matches!(status(&e), "Succeeded" | "Failed").then_some(e)
    });
    assert_eq!(status(&exec), "Succeeded", "{exec:#}\n{}", engine.log());
    let vars = &action(&exec, "Probe/Socket")["variables"];
    assert_eq!(vars["Control"], "refused", "{vars:#}");
    assert!(
        vars["Reply"]
            .as_str()
            .is_some_and(|r| r.contains("forbidden") && r.contains("user namespace")),
        "the refusal says why: {vars:#}"
    );
    // The engine's own user still controls it.
    let listed = p.sluice(&["pipeline", "ls"]);
    assert!(listed.stdout.contains("reach"), "{listed:?}");
}
