//! A full disk (issue: hostile input, item 6), on a small tmpfs the test mounts (the tests
//! run as root, as CI does): a guest that fills it is told so, a `sluice run` that could not
//! record its end is ended with the reason on the next open instead of staying `InProgress`,
//! and the embedded service stops instead of accepting work it cannot record, then carries
//! on once space is freed.
use crate::harness::nats::wait_for;
use crate::harness::{Project, action, error, hostile, latest, probe, status};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A tmpfs of `size` mounted at a directory; unmounted on drop (declare it after the
/// project that holds it, so it goes first).
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the full-disk tests mount a small tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            at: at.to_path_buf(),
        }
    }

    /// Fill what is left with a file; returns it.
    fn fill(&self) -> PathBuf {
        let filler = self.at.join("filler");
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .arg("bs=64k")
            .stderr(Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// A guest writing past the end of the disk fails its action naming the cause; the run's
/// record, which could not be written then, is not left `InProgress`: the next command that
/// opens the data dir ends it with the reason.
#[test]
fn a_run_that_fills_its_disk_is_told_so_and_is_not_left_in_progress() {
    let p = Project::new(&format!(
        "name: fill\nstages:\n  - name: S\n    actions:\n      - {{ name: Fill, uses: {}, with: {{ mode: fill, path: /scratch/big, count: \"268435456\" }} }}\n",
        hostile()
    ));
    let _disk = SmallDisk::mount(&p.path("disk"), "32m");
    let run = p.run(&["--data", "disk/data"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("insufficient space"),
        "the action's error does not name the full disk: {}",
        run.stderr
    );
    // Whether the run could record its end depends on whether the store's file had to grow
    // while the disk was full; either way the record has ended.
    let id = latest(&p, &["--data", "disk/data"]);
    let id = id.as_str();
    let shown = p.sluice(&["show", id, "--json", "--data", "disk/data"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    let exec = shown.json();
    if run.stderr.contains("No space left on device") && exec["started_at"].is_null() {
        // The disk filled before the run recorded its start (the write behind it failed):
        // ended on open all the same, with the reason.
        crate::harness::assert_stopped_as_orphan(&exec);
    } else if run.stderr.contains("No space left on device") {
        crate::harness::assert_ended_by_a_dead_run(&exec, "S/Fill");
    } else {
        assert_eq!(status(&exec), "Failed", "{exec:#}");
    }
    // The data dir is usable again: a run on it records its end.
    p.write(
        "ok.yaml",
        &format!(
            "name: ok\nstages:\n  - name: S\n    actions:\n      - {{ name: Fine, uses: {}, with: {{ mode: ok }} }}\n",
            probe()
        ),
    );
    let ok = p.sluice(&["run", "ok.yaml", "--json", "--data", "disk/data"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(error(action(&ok.json(), "S/Fine")).is_empty());
}

/// A process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(p: &Project, log: &str) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--data", "disk/data"])
            .current_dir(p.dir.path())
            .env_remove("SLUICE_DATA")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.path(log)).unwrap())
            .spawn()
            .expect("start sluice serve"),
    )
}

fn answering(p: &Project) {
    wait_for(Duration::from_secs(30), "the service to answer", || {
        (p.sluice(&["pipeline", "ls", "--data", "disk/data"]).code == 0).then_some(())
    });
}

/// The embedded service on a disk that fills up stops (exit 75, saying why) instead of
/// accepting starts it cannot record (its store refused every later write, even after space
/// was freed); started again once there is space, it has lost no start it acknowledged.
#[test]
fn the_embedded_service_stops_on_a_full_disk_and_loses_no_acknowledged_start() {
    let p = Project::new(&format!(
        "name: ok\nstages:\n  - name: S\n    actions:\n      - {{ name: Fine, uses: {}, with: {{ mode: ok }} }}\n",
        probe()
    ));
    let disk = SmallDisk::mount(&p.path("disk"), "32m");
    let mut engine = serve(&p, "engine.log");
    answering(&p);
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml", "--data", "disk/data"]);
    assert_eq!(put.code, 0, "{put:?}");
    let mut acknowledged = Vec::new();
    let first = p.sluice(&["start", "ok", "--data", "disk/data"]);
    assert_eq!(first.code, 0, "{first:?}");
    acknowledged.push(first.stdout.trim().to_string());
    let filler = disk.fill();
    // Starts until the store's file must grow: each is either acknowledged (and recorded)
    // or refused; the service then ends.
    let ended = wait_for(Duration::from_secs(60), "the service to stop", || {
        if let Some(code) = engine.0.try_wait().unwrap() {
            return Some(code);
        }
        let start = p.sluice(&["start", "ok", "--data", "disk/data"]);
        if start.code == 0 {
            acknowledged.push(start.stdout.trim().to_string());
        }
        None
    });
    let log = p.read("engine.log");
    assert_eq!(ended.code(), Some(75), "{log}");
    assert!(
        log.contains("can no longer be written") && log.contains("No space left on device"),
        "{log}"
    );
    // Space is back: the same data dir serves again, with every acknowledged start.
    std::fs::remove_file(filler).unwrap();
    let _engine = serve(&p, "engine-again.log");
    answering(&p);
    for id in &acknowledged {
        wait_for(
            Duration::from_secs(30),
            "an acknowledged start to end",
            || {
                let s = p.sluice(&["status", id, "--json", "--data", "disk/data"]);
                assert_eq!(s.code, 0, "{id} was acknowledged and lost: {s:?}");
                (status(&s.json()) == "Succeeded").then_some(())
            },
        );
    }
    let again = p.sluice(&["start", "ok", "--data", "disk/data"]);
    assert_eq!(again.code, 0, "{again:?}");
}
