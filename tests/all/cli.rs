//! The inspection commands: history, show, logs, plugin describe, artifact ls/get/verify.
use crate::harness::*;

#[test]
fn history_show_logs_and_artifacts_after_a_run() {
    let p = Project::copy_of("examples/quickstart");
    let exec = p.run(&[]).json();
    let id = exec["execution_id"].as_str().unwrap();

    let history = p.sluice(&["history", "--data", ".sluice"]);
    assert!(
        history.stdout.contains(id) && history.stdout.contains("Succeeded"),
        "{}",
        history.stdout
    );

    let show = p.sluice(&["show", id, "--data", ".sluice"]);
    assert!(
        show.stdout.contains("action Compile  Succeeded  attempt 1"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("with      path = app"));
    let shown: serde_json::Value = serde_json::from_str(
        &p.sluice(&["show", id, "--json", "--data", ".sluice"])
            .stdout,
    )
    .unwrap();
    assert_eq!(shown, exec, "show --json returns the stored record");

    let logs = p.sluice(&["logs", id, "--data", ".sluice"]);
    assert!(
        logs.stdout.contains("Build/Compile #1") && logs.stdout.contains("built 3 pages"),
        "{}",
        logs.stdout
    );
    assert!(logs.stdout.contains("Build/Test #1") && logs.stdout.contains("all links resolve"));

    let site = action(&exec, "Build/Compile")["artifacts"]["site"]
        .as_str()
        .unwrap();
    let ls = p.sluice(&["artifact", "ls", site, "--data", ".sluice"]);
    assert!(
        ls.stdout.contains("index.html")
            && ls
                .stdout
                .lines()
                .any(|l| l.starts_with('x') && l.ends_with("healthcheck.sh")),
        "{}",
        ls.stdout
    );
    let verify = p.sluice(&["artifact", "verify", site, "--data", ".sluice"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    let got = p.sluice(&["artifact", "get", site, "restored", "--data", ".sluice"]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(
        p.read("restored/index.html"),
        p.read(".sluice/site/current/index.html")
    );

    // Corrupt the blob behind index.html: verify and get both refuse, naming the digest.
    let line = ls
        .stdout
        .lines()
        .find(|l| l.ends_with("index.html"))
        .unwrap();
    let blob = line
        .split_whitespace()
        .find(|w| w.starts_with("blake3:"))
        .unwrap();
    let hex = &blob["blake3:".len()..];
    let path = p.path(&format!(".sluice/cas/blobs/{}/{}", &hex[..2], &hex[2..]));
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, "tampered").unwrap();
    let verify = p.sluice(&["artifact", "verify", site, "--data", ".sluice"]);
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains(&format!("{blob} is corrupted")),
        "{}",
        verify.stderr
    );
    let got = p.sluice(&["artifact", "get", site, "again", "--data", ".sluice"]);
    assert_ne!(got.code, 0);
    assert!(
        !p.path("again/index.html").exists(),
        "a corrupted blob is never served"
    );
    // The whole store is checked without a digest; --repair removes the corrupted blob, and
    // the next run that makes its content stores it again (it deduplicated onto it before).
    let all = p.sluice(&["artifact", "verify", "--data", ".sluice"]);
    assert_eq!(all.code, 1, "{all:?}");
    assert!(
        all.stderr.contains(&format!("{blob} is corrupted")) && all.stderr.contains("--repair"),
        "{}",
        all.stderr
    );
    let repair = p.sluice(&["artifact", "verify", "--repair", "--data", ".sluice"]);
    assert_eq!(repair.code, 0, "{repair:?}");
    assert!(
        repair
            .stderr
            .contains(&format!("{blob} is corrupted: removed"))
            && repair.stdout.contains("removed 1 corrupted blob"),
        "{repair:?}"
    );
    assert!(!path.exists());
    let again = p.run(&[]).json();
    assert_eq!(status(&again), "Succeeded");
    // (The page carries its build time, so the new site is a new artifact.)
    let site = action(&again, "Build/Compile")["artifacts"]["site"]
        .as_str()
        .unwrap();
    let verify = p.sluice(&["artifact", "verify", site, "--data", ".sluice"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let all = p.sluice(&["artifact", "verify", "--data", ".sluice"]);
    assert_eq!(all.code, 0, "{all:?}");
    assert!(
        all.stdout.contains("the artifact store: ok"),
        "{}",
        all.stdout
    );
}

#[test]
fn plugin_describe_shows_configuration_and_capabilities() {
    let p = Project::new("name: x\nstages: []\n");
    let d = p.sluice(&["plugin", "describe", "deploy-release@1"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(d.stdout.contains("deploy-release 1.0.0 (deploy)"));
    assert!(d.stdout.contains("side effects: yes"));
    // `command@1` runs a host program: it is not a contained action.
    let c = p.sluice(&["plugin", "describe", "command@1"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stdout.contains("side effects: yes"), "{}", c.stdout);
    assert!(d.stdout.contains("target") && d.stdout.contains("required"));
    assert!(d.stdout.contains("[default: 5]"));
    let probe = p.sluice(&["plugin", "describe", probe(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&probe.stdout).unwrap();
    assert_eq!(json["description"]["name"], "probe");
    assert_eq!(json["description"]["side_effects"], false);
    let missing = p.sluice(&["plugin", "describe", "./missing.wasm"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);
    p.write("garbage.wasm", "\0asm\x0d\0\x01\0 not really a component");
    let garbage = p.sluice(&["plugin", "describe", "./garbage.wasm"]);
    assert_ne!(garbage.code, 0);
    assert!(
        garbage.stderr.contains("compile component"),
        "{}",
        garbage.stderr
    );
}

#[test]
fn show_displays_with_as_written_and_the_record_keeps_no_resolved_configuration() {
    let p = Project::new(
        r##"
name: written
variables:
  region: eu-west-1
stages:
  - name: Build
    actions:
      - name: Compile
        uses: PROBE
        with: { mode: ok, target: "deploy-to-#{variables.region}-now" }
"##,
    );
    let r = p.run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.json()["execution_id"].as_str().unwrap().to_string();
    let show = p.sluice(&["show", &id, "--data", ".sluice"]);
    assert!(
        show.stdout
            .contains("with      target = deploy-to-#{variables.region}-now"),
        "{}",
        show.stdout
    );
    // The resolved value was needed to run, never to keep: not in the record, not on disk.
    let resolved = "deploy-to-eu-west-1-now";
    let shown = p.sluice(&["show", &id, "--json", "--data", ".sluice"]);
    assert!(!shown.stdout.contains(resolved), "{}", shown.stdout);
    assert!(!r.stdout.contains(resolved), "{}", r.stdout);
    for entry in walk(&p.path(".sluice")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(resolved.len())
                .any(|w| w == resolved.as_bytes()),
            "{} holds the resolved configuration",
            entry.display()
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `sluice run --encrypt`: the run's artifacts are sealed at rest under the data folder's key
/// (made on first use), addressed by a keyed digest, and still listed and fetched by the
/// `artifact` commands; a run without it keeps plain blobs.
#[test]
fn run_with_encrypt_keeps_artifacts_sealed_and_readable() {
    let p = Project::new(
        r##"
name: sealed
stages:
  - name: Build
    actions:
      - { name: Make, uses: PROBE, outputs: [site], with: { mode: write, path: /out/site/page.txt, value: "local-plain-text-never-at-rest" } }
  - name: Use
    actions:
      - { name: Read, uses: PROBE, inputs: [site], with: { mode: read, path: /in/site/page.txt } }
"##,
    );
    let sealed = p.run(&["--encrypt", "--no-cache"]);
    assert_eq!(sealed.code, 0, "{sealed:?}");
    let exec = sealed.json();
    assert_eq!(action(&exec, "Use/Read")["variables"]["Bytes"], "30");
    assert!(
        p.path(".sluice/master.key").exists() && sealed.stderr.contains("made a master key at"),
        "the key is made on first use, and the run says so: {}",
        sealed.stderr
    );
    let site = action(&exec, "Build/Make")["artifacts"]["site"]
        .as_str()
        .unwrap()
        .to_string();

    let mut files = Vec::new();
    files_under(&p.path(".sluice/cas"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("/sealed/_local/")),
        "a local run's namespace, never a tenant's: {files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"never-at-rest"),
            "{} holds the content plain",
            f.display()
        );
    }

    let ls = p.sluice(&["artifact", "ls", &site, "--data", ".sluice"]);
    assert!(ls.code == 0 && ls.stdout.contains("page.txt"), "{ls:?}");
    let get = p.sluice(&["artifact", "get", &site, "out", "--data", ".sluice"]);
    assert_eq!(get.code, 0, "{get:?}");
    assert_eq!(p.read("out/page.txt"), "local-plain-text-never-at-rest");

    // Without --encrypt: the same content, a plain digest (another address).
    let plain = p.run(&["--no-cache"]).json();
    let plain_site = action(&plain, "Build/Make")["artifacts"]["site"]
        .as_str()
        .unwrap();
    assert_ne!(plain_site, site);
}
