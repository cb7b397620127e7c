//! What the host gives a guest: logging, granted host programs, file metadata, and the
//! store's resource limits.
use super::bindings::sluice::action::{files, log, process, types};
use crate::model::{Access, normalize};
use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Log levels, as in the WIT `log` interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Receives an action's log entries as they happen.
pub trait LogSink: Send + Sync {
    /// Record one entry.
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]);
}

pub(super) struct NullLog;
impl LogSink for NullLog {
    fn log(&self, _: Level, _: &str, _: &[(String, String)]) {}
}

/// A host directory visible to the guest.
#[derive(Clone, Debug)]
pub struct Mount {
    /// Host path.
    pub host: PathBuf,
    /// Guest path (absolute).
    pub guest: PathBuf,
    /// Read-only or read-write.
    pub access: Access,
}

/// Memory and table limits; remembers when the guest hit the memory cap.
pub(super) struct Limits {
    memory: u64,
    pub(super) exceeded: Option<u64>,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.exceeded = Some(self.memory);
            // An error (not `Ok(false)`) traps the guest at once instead of letting it
            // observe a failed grow and limp on.
            return Err(wasmtime::Error::msg(format!("memory limit of {} bytes exceeded", self.memory)));
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Per-call host state.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    log: Arc<dyn LogSink>,
    workspace: PathBuf,
    mounts: Vec<super::Mount>,
    programs: Vec<String>,
    program_env: Vec<(String, String)>,
}

impl HostState {
    pub(super) fn new(
        wasi: WasiCtx,
        memory: u64,
        log: Arc<dyn LogSink>,
        workspace: PathBuf,
        mounts: Vec<Mount>,
        programs: Vec<String>,
        program_env: Vec<(String, String)>,
    ) -> Self {
        HostState { wasi, table: ResourceTable::new(), limits: Limits { memory, exceeded: None }, log, workspace, mounts, programs, program_env }
    }

    /// Map a guest path to (mount, path relative to the mount), refusing anything outside.
    fn resolve(&self, guest: &str, need_write: bool) -> Result<(&Mount, PathBuf), String> {
        let path = Path::new(guest);
        if !path.is_absolute() {
            return Err(format!("{guest}: paths must be absolute (e.g. /out/site/run.sh)"));
        }
        let path = normalize(path);
        let mount = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.guest))
            .max_by_key(|m| m.guest.components().count())
            .ok_or_else(|| format!("{guest}: not inside any directory this action was granted"))?;
        if need_write && mount.access != Access::Rw {
            return Err(format!("{guest}: {} is mounted read-only", mount.guest.display()));
        }
        let rel = path.strip_prefix(&mount.guest).expect("prefix checked").to_path_buf();
        Ok((mount, rel))
    }

    fn open_mount(mount: &Mount) -> Result<cap_std::fs::Dir, String> {
        cap_std::fs::Dir::open_ambient_dir(&mount.host, cap_std::ambient_authority()).map_err(|e| format!("{}: {e}", mount.guest.display()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.log.log(level, &message, &fields);
    }
}

impl files::Host for HostState {
    fn is_executable(&mut self, path: String) -> Result<bool, String> {
        use cap_std::fs::PermissionsExt;
        let (mount, rel) = self.resolve(&path, false)?;
        let dir = Self::open_mount(mount)?;
        let meta = dir.metadata(&rel).map_err(|e| format!("{path}: {e}"))?;
        Ok(meta.permissions().mode() & 0o100 != 0)
    }

    fn set_executable(&mut self, path: String, executable: bool) -> Result<(), String> {
        use cap_std::fs::PermissionsExt;
        let (mount, rel) = self.resolve(&path, true)?;
        let dir = Self::open_mount(mount)?;
        let meta = dir.symlink_metadata(&rel).map_err(|e| format!("{path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path}: not a regular file"));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        dir.set_permissions(&rel, cap_std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{path}: {e}"))
    }

    fn symlink(&mut self, target: String, link: String) -> Result<(), String> {
        let (mount, rel) = self.resolve(&link, true)?;
        // The link must resolve inside its mount: count depth lexically from the link's directory.
        let mut depth = rel.components().count() as i64 - 1;
        for c in Path::new(&target).components() {
            match c {
                Component::Normal(_) => depth += 1,
                Component::ParentDir => depth -= 1,
                Component::CurDir => {}
                _ => return Err(format!("symlink target {target:?} must be a relative path")),
            }
            if depth < 0 {
                return Err(format!("symlink target {target:?} leads outside {}", mount.guest.display()));
            }
        }
        let dir = Self::open_mount(mount)?;
        dir.symlink(&target, &rel).map_err(|e| format!("{link}: {e}"))
    }
}

/// Lines of program output kept for the error message.
const TAIL_LINES: usize = 20;

impl process::Host for HostState {
    async fn run(&mut self, cmd: process::Command) -> Result<process::ExitStatus, String> {
        if !self.programs.iter().any(|p| p == &cmd.program) {
            return Err(format!(
                "program `{}` is not granted to this action; add it to `capabilities: {{ process: [{}] }}`",
                cmd.program, cmd.program
            ));
        }
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .envs(["PATH", "HOME"].iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
            .envs(self.program_env.iter().cloned())
            .envs(cmd.env.iter().filter(|(k, _)| !k.starts_with("SLUICE_")).cloned())
            .current_dir(&self.workspace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("cannot start `{}`: {e}", cmd.program))?;
        // Whatever happens (timeout drops this future, or the program exits leaving
        // background children), the whole process group is killed.
        let _group = ProcessGroup(child.id());
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tail = std::sync::Mutex::new(VecDeque::with_capacity(TAIL_LINES));
        let pump = |stream, level| {
            let (log, tail) = (self.log.clone(), &tail);
            async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.log(level, &line, &[]);
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        };
        let (status, _, _) = tokio::join!(child.wait(), pump(Box::pin(stdout) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>, Level::Info), pump(Box::pin(stderr), Level::Warn));
        let status = status.map_err(|e| format!("waiting for `{}`: {e}", cmd.program))?;
        let output_tail = tail.into_inner().unwrap().into_iter().collect::<Vec<_>>().join("\n");
        Ok(process::ExitStatus { code: status.code(), output_tail })
    }
}

/// Kills a process group when dropped.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the group we created with
            // process_group(0); it has no memory-safety preconditions.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}
