//! The hostile guest (tests/guests/hostile) attacks the engine that runs it: every attack
//! fails its own action (or is cut down to size), the engine and its data dir stay usable,
//! and nothing outside the sandbox is reached.
use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn hostile(yaml: &str) -> Project {
    Project::new(&yaml.replace("HOSTILE", crate::harness::hostile()))
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

const OK: &str = "name: ok\nstages:\n  - name: S\n    actions:\n      - { name: Fine, uses: PROBE, with: { mode: ok } }\n";

/// 20,000 nested directories in an output: the action fails naming the depth limit, the
/// engine finishes the run (the workspace cleaner overflowed its stack), and the next run on
/// the same data dir starts (it failed with "Too many open files").
#[test]
fn a_deep_output_tree_fails_its_action_and_the_data_dir_stays_usable() {
    let p = hostile(
        r##"
name: deep
stages:
  - name: S
    actions:
      - { name: Deep, uses: HOSTILE, outputs: [o], with: { mode: deep, path: /out/o, count: "20000" } }
      - { name: DeepScratch, uses: HOSTILE, with: { mode: deep, path: /scratch, count: "20000" } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    let deep = action(&exec, "S/Deep");
    assert_eq!(status(deep), "Failed");
    assert!(
        error(deep).contains("nested more than 64 directories deep"),
        "{}",
        error(deep)
    );
    assert_eq!(status(action(&exec, "S/DeepScratch")), "Succeeded");
    p.write("ok.yaml", &OK.replace("PROBE", probe()));
    let again = p.sluice(&["run", "ok.yaml", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
}

/// A guest opening one file 20,000 times is stopped at its resource bound (it held almost
/// all of the engine's descriptors); the sibling action runs.
#[test]
fn a_descriptor_bomb_fails_inside_the_guest() {
    let p = hostile(
        r##"
name: fds
stages:
  - name: S
    actions:
      - { name: Bomb, uses: HOSTILE, with: { mode: descriptors, path: /scratch/f, count: "20000" } }
      - { name: Fine, uses: PROBE, with: { mode: ok } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    let bomb = action(&exec, "S/Bomb");
    assert_eq!(status(bomb), "Failed");
    // Its bound is its share of the engine's open-file limit (64 to 1024).
    let bound: usize = error(bomb)
        .split("held more than ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", error(bomb)));
    assert!(
        (64..=1024).contains(&bound) && error(bomb).contains("open files"),
        "{}",
        error(bomb)
    );
    assert_eq!(status(action(&exec, "S/Fine")), "Succeeded");
}

/// Guests share three quarters of the engine's descriptors, never the engine's reserve:
/// under `ulimit -n 256`, six guests each holding 60 open files (360 in all) take turns
/// instead of running out (they failed with I/O errors, and the engine's own files with
/// them), and the run records its end.
#[test]
fn guests_cannot_take_the_descriptors_the_engine_keeps_for_itself() {
    let mut yaml = String::from("name: fds\nstages:\n  - name: S\n    actions:\n");
    for i in 1..=6 {
        yaml.push_str(&format!(
            "      - {{ name: Hold{i}, uses: HOSTILE, with: {{ mode: descriptors, path: /scratch/f, count: \"60\", hold: \"500\" }} }}\n"
        ));
    }
    yaml.push_str("      - { name: Fine, uses: PROBE, outputs: [o], with: { mode: write, path: /out/o/f, value: x } }\n");
    yaml.push_str("  - name: T\n    actions:\n      - { name: After, uses: PROBE, inputs: [o], with: { mode: ok } }\n");
    let p = hostile(&yaml);
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -n 256 && exec \"$0\" run pipeline.yaml --json",
        ])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(p.dir.path())
        .env_remove("SLUICE_DATA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let exec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in 1..=6 {
        let a = action(&exec, &format!("S/Hold{i}"));
        assert_eq!(status(a), "Succeeded", "Hold{i}: {}", error(a));
    }
    assert_eq!(status(action(&exec, "T/After")), "Succeeded");
}

/// 32 MiB through the `log` import: the log keeps at most a few MiB of it and says the rest
/// was dropped.
#[test]
fn guest_logging_is_capped_per_attempt() {
    let p = hostile(
        r##"
name: spam
stages:
  - name: S
    actions:
      - { name: Spam, uses: HOSTILE, with: { mode: logspam, count: "33554432" } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let logged = dir_bytes(&p.path(".sluice/logs"));
    assert!(logged < 6 << 20, "{logged} bytes of log");
    let id = run.json()["execution_id"].as_str().unwrap().to_string();
    let logs = p.sluice(&["logs", &id, "--data", ".sluice"]);
    assert!(
        logs.stdout.contains("further log entries are dropped"),
        "{}",
        &logs.stdout[logs.stdout.len().saturating_sub(500)..]
    );
}

/// 1.5 MiB of output variables fail the action with a message that says why (on NATS the
/// record exceeded the payload limit and was redelivered for ever); a 1 MiB error message
/// is cut.
#[test]
fn huge_variables_fail_and_huge_errors_are_cut() {
    let p = hostile(
        r##"
name: huge
stages:
  - name: S
    actions:
      - { name: Vars, uses: HOSTILE, with: { mode: variables, count: "1572864" } }
      - { name: Error, uses: HOSTILE, with: { mode: error, count: "1048576" } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    let vars = action(&exec, "S/Vars");
    assert_eq!(status(vars), "Failed");
    assert!(
        error(vars).contains("at most 256.0 KiB are kept"),
        "{}",
        error(vars)
    );
    let err = error(action(&exec, "S/Error"));
    assert!(
        err.len() < 9 << 10 && err.ends_with("more bytes cut)"),
        "{} bytes",
        err.len()
    );
    assert!(
        run.stdout.len() < 64 << 10,
        "{} bytes of record",
        run.stdout.len()
    );
}

/// A 50 GiB sparse file under `timeout: 5s` fails at once as too large (collecting it took
/// 20.7 s and succeeded), and 10,000 files under an entry bound would fail too.
#[test]
fn a_huge_sparse_output_fails_fast() {
    let p = hostile(
        r##"
name: sparse
stages:
  - name: S
    actions:
      - { name: Sparse, uses: HOSTILE, outputs: [o], timeout: 5s, with: { mode: sparse, path: /out/o/big, count: "53687091200" } }
"##,
    );
    let started = Instant::now();
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    let sparse = action(&exec, "S/Sparse");
    assert_eq!(status(sparse), "Failed");
    assert!(
        error(sparse).contains("the output is too large"),
        "{}",
        error(sparse)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// `limits.output` lowers the bounds on an action's outputs: each bound fails the action
/// that passes it, naming it, and an output within them is stored; a bound above the
/// engine's maximum is refused at its line.
#[test]
fn limits_output_lowers_the_output_bounds() {
    let p = hostile(
        r##"
name: bounded
stages:
  - name: S
    actions:
      - { name: Size, uses: HOSTILE, outputs: [a], limits: { output: { size: 1MiB } }, with: { mode: sparse, path: /out/a/big, count: "2097152" } }
      - { name: Entries, uses: HOSTILE, outputs: [b], limits: { output: { entries: 10 } }, with: { mode: files, path: /out/b, count: "20" } }
      - { name: Depth, uses: HOSTILE, outputs: [c], limits: { output: { depth: 3 } }, with: { mode: deep, path: /out/c, count: "5" } }
      - { name: Within, uses: HOSTILE, outputs: [o], limits: { output: { size: 1MiB, entries: 30, depth: 3 } }, with: { mode: files, path: /out/o, count: "20" } }
"##,
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let exec = run.json();
    for (name, words) in [
        ("S/Size", "the output is too large"),
        ("S/Entries", "more than 10 files and directories"),
        ("S/Depth", "nested more than 3 directories deep"),
    ] {
        let a = action(&exec, name);
        assert_eq!(status(a), "Failed", "{name}");
        assert!(error(a).contains(words), "{name}: {}", error(a));
    }
    assert_eq!(status(action(&exec, "S/Within")), "Succeeded");
    p.write(
        "over.yaml",
        "name: over\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: noop@1\n        limits:\n          output:\n            depth: 100\n            size: 9GiB\n",
    );
    let v = p.sluice(&["validate", "over.yaml"]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(
        v.stderr
            .contains("over.yaml:9:20: `limits.output.depth`: 100 is more than the maximum of 64"),
        "{}",
        v.stderr
    );
    assert!(
        v.stderr.contains(
            "over.yaml:10:19: `limits.output.size`: 9GiB is more than the maximum of 8GiB"
        ),
        "{}",
        v.stderr
    );
}

/// `dirs: { ./alias: rw }` with alias -> the data dir is refused like the data dir itself
/// (it was compared as written; the guest then wrote the CAS and compiled code).
#[test]
fn a_symlinked_rw_grant_to_the_data_dir_is_refused() {
    let p = Project::new(OK);
    assert_eq!(p.run(&[]).code, 0);
    std::os::unix::fs::symlink(p.path(".sluice"), p.path("alias")).unwrap();
    let target = p.path("alias/compiled/planted");
    p.write(
        "pipeline.yaml",
        &format!(
            "name: alias\nstages:\n  - name: S\n    actions:\n      - {{ name: Plant, uses: {probe}, capabilities: {{ dirs: {{ ./alias: rw }} }}, with: {{ mode: write, path: {} }} }}\n",
            target.display(),
            probe = probe()
        ),
    );
    let run = p.run(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let plant = action(&run.json(), "S/Plant").clone();
    assert!(
        error(&plant).contains("would let the action write Sluice's own data"),
        "{plant:#}"
    );
    assert!(!p.path(".sluice/compiled/planted").exists());
}

/// `uses:` naming a device, or a text file, fails with a clear error that quotes nothing.
#[test]
fn component_paths_must_name_binary_component_files() {
    let p = Project::new(OK);
    p.write(
        "secret.wasm",
        "root:$6$very-secret-hash:19000:0:99999:7:::\n",
    );
    for (uses, needle) in [
        ("/dev/zero", "is not a regular file"),
        ("./secret.wasm", "not a binary WebAssembly component"),
    ] {
        p.write(
            "pipeline.yaml",
            &format!(
                "name: c\nstages:\n  - name: S\n    actions:\n      - {{ name: A, uses: {uses} }}\n"
            ),
        );
        let run = p.run(&[]);
        assert_ne!(run.code, 0);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(all.contains(needle), "{uses}: {all}");
        assert!(!all.contains("very-secret"), "{all}");
    }
}

/// A data dir inside the snapshotted directory under another name than `.sluice` is left
/// out of the snapshot, and a relative `--data` keeps `$SLUICE_OUTPUT` working.
#[test]
fn source_dir_leaves_out_a_data_dir_under_any_name() {
    let p = Project::new(
        r##"
name: snap
stages:
  - name: Source
    actions:
      - { name: Snap, uses: source-dir@1, outputs: [src], with: { path: . } }
  - name: Use
    actions:
      - name: Count
        uses: command@1
        inputs: [src]
        capabilities: { process: [sh] }
        with: { run: 'echo "Files=$(find in/src -type f | wc -l)" >> $SLUICE_OUTPUT' }
"##,
    );
    p.write("app/main.txt", "hello");
    let run = p.run(&["--data", "state-here"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let exec = run.json();
    let src = action(&exec, "Source/Snap")["artifacts"]["src"]
        .as_str()
        .unwrap()
        .to_string();
    let ls = p.sluice(&["artifact", "ls", &src, "--data", "state-here"]);
    assert!(ls.stdout.contains("main.txt"), "{}", ls.stdout);
    assert!(!ls.stdout.contains("state-here"), "{}", ls.stdout);
    // pipeline.yaml and app/main.txt.
    assert_eq!(action(&exec, "Use/Count")["variables"]["Files"], "2");
}

/// POST to the webhook port and return the status line ("" when nothing answered).
fn post_status(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = "POST /hooks/default/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

/// A flood of idle connections to the webhook port exhausts the engine's descriptors: the
/// accept loop waits it out (it used to end `sluice serve`), answers again once they close,
/// and drops a connection that sends nothing.
#[test]
fn a_connection_flood_that_exhausts_descriptors_does_not_end_the_service() {
    use std::io::Read;
    let p = Project::new(OK);
    let http_port = crate::harness::nats::port();
    let addr = format!("127.0.0.1:{http_port}");
    // A low descriptor limit (soft and hard: the engine raises its soft limit to the hard one).
    let mut engine = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -n 256 && exec \"$0\" serve --data d --http \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(&addr)
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(p.path("engine.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !post_status(&addr).contains("404") {
        assert!(
            Instant::now() < deadline,
            "the webhook port never answered: {}",
            p.read("engine.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let flood: Vec<_> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        engine.try_wait().unwrap().is_none(),
        "sluice serve ended under the flood: {}",
        p.read("engine.log")
    );
    // More than its descriptors: the kernel's backlog holds what the engine cannot take.
    assert!(
        flood.len() > 300,
        "only {} connections were made",
        flood.len()
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !post_status(&addr).contains("404") {
        assert!(
            Instant::now() < deadline,
            "the webhook port did not recover: {}",
            p.read("engine.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A connection that sends nothing is closed by the engine (header read timeout).
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf);
    assert!(
        n.is_ok() && started.elapsed() < Duration::from_secs(25),
        "an idle connection was kept open: {n:?} after {:?}",
        started.elapsed()
    );
    let _ = engine.kill();
    let _ = engine.wait();
}

/// A host program dies with the engine that started it: after a `kill -9` of the engine, no
/// leftover keeps running beside the attempt that another engine runs again.
#[test]
fn a_host_program_dies_with_the_engine_that_started_it() {
    let p = Project::new("");
    std::fs::create_dir_all(p.path("run")).unwrap();
    // Found by its command line: the program's own pid is one of its PID namespace.
    p.write(
        "pipeline.yaml",
        &format!(
            "name: linger\nstages:\n  - name: S\n    actions:\n      - name: Run\n        uses: command@1\n        capabilities: {{ process: [sh], dirs: {{ ./run: rw }} }}\n        with: {{ run: \"touch {}/started && exec sleep 7301\" }}\n",
            p.path("run").display()
        ),
    );
    let mut engine = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "pipeline.yaml"])
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.path("run/started").exists() || processes_with("sleep 7301").is_empty() {
        assert!(Instant::now() < deadline, "the host program never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.kill().unwrap(); // SIGKILL
    engine.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with("sleep 7301").is_empty() {
        if Instant::now() > deadline {
            // Leave nothing behind, then fail.
            let _ = std::process::Command::new("pkill")
                .args(["-9", "-f", "sleep 7301"])
                .status();
            panic!("the host program outlived the engine that started it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The killed run's record is not left `InProgress` for ever: the next command that opens
    // the data dir ends it, saying why.
    let id = latest(&p, &[]);
    let shown = p.sluice(&["show", &id, "--json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    let exec = shown.json();
    crate::harness::assert_ended_by_a_dead_run(&exec, "S/Run");
}
