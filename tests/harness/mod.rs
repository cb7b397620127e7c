//! Shared test harness: temporary projects, the real `sluice` binary, JSON helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod guests;
pub use guests::{
    greet_v1, greet_v2, hostile, poster, probe, rust_function, rust_rule, site_tools,
};

/// The repository root.
pub fn repo() -> PathBuf {
    // The tests belong to engine/cli.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The result of one `sluice` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The execution record printed by `--json`.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A temporary directory holding a pipeline and whatever else a test writes.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project whose `pipeline.yaml` is `yaml`, with `PROBE` replaced by the probe plugin's path.
    pub fn new(yaml: &str) -> Self {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        p.write("pipeline.yaml", &yaml.replace("PROBE", probe()));
        p
    }

    /// A copy of a directory of the repository (modes kept).
    pub fn copy_of(rel: &str) -> Self {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", repo().join(rel).display()))
            .arg(p.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let _ = std::fs::remove_dir_all(p.path(".sluice"));
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Run `sluice ARGS` in the project directory.
    pub fn sluice(&self, args: &[&str]) -> Run {
        sluice_in(self.dir.path(), args, &[])
    }

    /// Run `sluice ARGS` with extra environment.
    pub fn sluice_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        sluice_in(self.dir.path(), args, env)
    }

    /// `sluice run pipeline.yaml --json EXTRA...`
    pub fn run(&self, extra: &[&str]) -> Run {
        let mut args = vec!["run", "pipeline.yaml", "--json"];
        args.extend_from_slice(extra);
        self.sluice(&args)
    }
}

/// `sluice ARGS` in `dir` with `input` on its stdin (answers to questions, secret values).
pub fn sluice_with_input(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Run {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env_remove("SLUICE_DATA")
        .env_remove("SLUICE_MASTER_KEY_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub fn sluice_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env_remove("SLUICE_DATA")
        .env_remove("SLUICE_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run sluice");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The newest execution `sluice executions --json ARGS` lists in the project.
pub fn latest(p: &Project, args: &[&str]) -> String {
    let mut all = vec!["executions", "--json"];
    all.extend_from_slice(args);
    let list = p.sluice(&all);
    let rows: Value = serde_json::from_str(&list.stdout)
        .unwrap_or_else(|e| panic!("sluice executions --json: {e}: {list:?}"));
    rows[0]["execution_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no execution listed: {list:?}"))
        .to_string()
}

/// Assert that `exec` was ended on open because its `sluice run` died: stopped, with the
/// reason, and its running action `running` abandoned.
pub fn assert_ended_by_a_dead_run(exec: &Value, running: &str) {
    assert_stopped_as_orphan(exec);
    assert_eq!(status(action(exec, running)), "Abandoned");
}

/// `exec` was ended on open because the run that owned it died: stopped, with the reason.
pub fn assert_stopped_as_orphan(exec: &Value) {
    assert_eq!(status(exec), "Stopped", "{exec:#}");
    assert!(
        exec["stop_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("ended without recording its end"),
        "{exec:#}"
    );
}

/// The action `STAGE/ACTION` of an execution record.
pub fn action<'a>(exec: &'a Value, path: &str) -> &'a Value {
    let (stage, action) = path.split_once('/').unwrap();
    exec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| {
            s["actions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == action)
        })
        .unwrap_or_else(|| panic!("no action {path} in {exec:#}"))
}

/// The status of stage `name`.
pub fn stage_status(exec: &Value, name: &str) -> String {
    exec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap()
}

pub fn error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}
pub mod http;
pub mod nats;
pub mod registry;

/// Live processes (not zombies) whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| !s.contains(") Z "))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// The side effects the probe's `effect` mode made in `dir`: the idempotency key of each
/// (one marker file per key, created atomically), as the marker's name has it (`/` as `_`).
/// The name, not the content: an engine killed between creating the marker and writing the
/// key into it leaves it empty, and the effect is made all the same (a second run of the
/// attempt finds the marker and makes none).
pub fn effects(dir: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            Some(name.to_str()?.strip_prefix("done-")?.to_string())
        })
        .collect();
    keys.sort();
    keys
}

/// Every file under `dir` (recursively), added to `out`; a missing `dir` adds nothing.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}
