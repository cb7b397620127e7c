//! What the host gives a guest: logging, granted host programs, file metadata, and the
//! store's resource limits.
use super::bindings::sluice::action::{files, log, messaging, process, types};
use sluice_core::model::{Access, normalize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::logging::{Level, LogSink, NullLog};

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

/// A mount opened once and kept open, for calls that reuse it (a pooled workspace's
/// `scratch/`): opening a directory for a preopen (an `openat` with its path walk) and closing
/// it after the call were a fifth of a no-op job's cost.
/// (Cloned per call: an `Arc`, so a clone allocates nothing.)
#[derive(Clone)]
pub struct Preopened(Arc<PreopenedMount>);

struct PreopenedMount {
    mount: Mount,
    /// A filesystem context whose only preopen is `mount` (it shares the open directory).
    fs: wasmtime_wasi::filesystem::WasiFilesystemCtx,
}

impl Preopened {
    /// Open `mount`'s directory.
    pub fn open(mount: Mount) -> anyhow::Result<Self> {
        let mut wasi = WasiCtx::builder();
        wasi.preopened_dir(
            &mount.host,
            mount.guest.to_string_lossy(),
            perms(mount.access),
        )?;
        let fs = wasi.build().filesystem().clone();
        Ok(Preopened(Arc::new(PreopenedMount { mount, fs })))
    }

    /// The filesystem context for a call whose mounts are exactly this one.
    pub(super) fn serves(
        &self,
        mounts: &[Mount],
    ) -> Option<wasmtime_wasi::filesystem::WasiFilesystemCtx> {
        let own = &self.0.mount;
        match mounts {
            [m] if m.host == own.host && m.guest == own.guest && m.access == own.access => {
                Some(self.0.fs.clone())
            }
            _ => None,
        }
    }
}

/// WASI's permissions for a mount.
pub(super) fn perms(access: Access) -> wasmtime_wasi::FsPerms {
    match access {
        Access::Ro => wasmtime_wasi::FsPerms::ReadOnly,
        Access::Rw => wasmtime_wasi::FsPerms::ReadWrite,
    }
}

/// Memory and table limits; remembers when the guest hit the memory cap.
pub(super) struct Limits {
    memory: u64,
    pub(super) exceeded: Option<u64>,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.exceeded = Some(self.memory);
            // An error (not `Ok(false)`) traps the guest at once instead of letting it
            // observe a failed grow and limp on.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded",
                self.memory
            )));
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
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
    /// What confines those programs beyond the grants themselves.
    program_bounds: ProgramBounds,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_guard: super::http::OriginGuard,
    nats_grants: Vec<String>,
    nats: Option<Arc<super::messaging::NatsAccess>>,
    /// Bytes the guest sent through the `log` import; past `LOG_LIMIT` entries are dropped.
    log_bytes: usize,
    /// Resources it may hold at once (its share of the engine's descriptors).
    pub(super) resources: usize,
    /// Secrets it may hold (`reveal`): name → value.
    revealable: Vec<(String, String)>,
}

impl HostState {
    // One argument per part of an action's sandbox; a struct of them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        wasi: WasiCtx,
        memory: u64,
        log: Arc<dyn LogSink>,
        workspace: PathBuf,
        mounts: Vec<Mount>,
        programs: Vec<String>,
        program_env: Vec<(String, String)>,
        http_origins: &[String],
        resources: usize,
    ) -> Self {
        let http_guard = super::http::OriginGuard::new(http_origins, log.clone());
        // Only programs need them: an action without any skips the parsing.
        let ports = if programs.is_empty() {
            None
        } else {
            http_ports(http_origins)
        };
        HostState {
            wasi,
            table: {
                // Each open file holds a host descriptor: a guest opening one file 20,000
                // times must fail inside the guest, not exhaust the engine's descriptors.
                let mut t = ResourceTable::new();
                t.set_max_capacity(resources);
                t
            },
            limits: Limits {
                memory,
                exceeded: None,
            },
            log,
            workspace,
            mounts,
            programs,
            program_env,
            program_bounds: ProgramBounds {
                hidden: Vec::new(),
                file_size: sluice_core::limits::MAX_OUTPUT_BYTES,
                ports,
            },
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_guard,
            nats_grants: Vec::new(),
            nats: None,
            log_bytes: 0,
            resources,
            revealable: Vec::new(),
        }
    }

    /// Secrets the guest may hold through `reveal`.
    pub(super) fn revealable(&mut self, secrets: Vec<(String, String)>) {
        self.revealable = secrets;
    }

    /// The `secrets.reveal` import: a value only of a secret the action lists, for a plugin
    /// that declared it holds them. Each call is logged, without the value.
    pub(super) fn reveal(&self, name: &str) -> Result<String, String> {
        match self.revealable.iter().find(|(n, _)| n == name) {
            Some((_, value)) => {
                self.log.log(
                    super::logging::Level::Info,
                    &format!("the plugin was given secret `{name}` (reveal)"),
                    &[],
                );
                Ok(value.clone())
            }
            None => Err(format!(
                "secret `{name}` is not revealed to this action: its plugin must declare `reveal` \
                 (the `secrets` capability) and the action must list it under `secrets:`"
            )),
        }
    }

    /// Values the host puts in place of their placeholders in outgoing HTTP headers (and bodies,
    /// when `in_body`).
    pub(super) fn http_secrets(&mut self, secrets: Vec<(String, String)>, in_body: bool) {
        self.http_guard.set_secrets(secrets, in_body);
    }

    /// The engine's directories programs never reach, and their largest file.
    pub(super) fn bound_programs(&mut self, hidden: Vec<PathBuf>, file_size: u64) {
        self.program_bounds.hidden = hidden;
        self.program_bounds.file_size = file_size;
    }

    /// Let the guest publish to NATS subjects matching `grants`.
    pub(super) fn grant_nats(
        &mut self,
        grants: Vec<String>,
        access: Arc<super::messaging::NatsAccess>,
    ) {
        self.nats_grants = grants;
        self.nats = Some(access);
    }

    /// A store with nothing granted and nothing logged (`describe`, the bare benchmark).
    pub(super) fn without_grants() -> Self {
        Self::new(
            WasiCtx::builder().build(),
            super::DEFAULT_MEMORY,
            Arc::new(NullLog),
            PathBuf::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            &[],
            super::MIN_GUEST_RESOURCES,
        )
    }

    /// Map a guest path to (mount, path relative to the mount), refusing anything outside.
    fn resolve(&self, guest: &str, need_write: bool) -> Result<(&Mount, PathBuf), String> {
        let path = Path::new(guest);
        if !path.is_absolute() {
            return Err(format!(
                "{guest}: paths must be absolute (e.g. /out/site/run.sh)"
            ));
        }
        let path = normalize(path);
        let mount = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.guest))
            .max_by_key(|m| m.guest.components().count())
            .ok_or_else(|| format!("{guest}: not inside any directory this action was granted"))?;
        if need_write && mount.access != Access::Rw {
            return Err(format!(
                "{guest}: {} is mounted read-only",
                mount.guest.display()
            ));
        }
        let rel = path
            .strip_prefix(&mount.guest)
            .expect("prefix checked")
            .to_path_buf();
        Ok((mount, rel))
    }

    fn open_mount(mount: &Mount) -> Result<cap_std::fs::Dir, String> {
        cap_std::fs::Dir::open_ambient_dir(&mount.host, cap_std::ambient_authority())
            .map_err(|e| format!("{}: {e}", mount.guest.display()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_guard,
        }
    }
}

impl types::Host for HostState {}

impl messaging::Host for HostState {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        server: Option<String>,
    ) -> Result<(), String> {
        if let Err(denied) = super::messaging::subject_granted(&self.nats_grants, &subject) {
            let message = denied.to_string();
            self.log.log(Level::Warn, &message, &[]);
            return Err(message);
        }
        let access = self
            .nats
            .clone()
            .ok_or("NATS is not available to this call")?;
        access
            .publish(&self.nats_grants, server.as_deref(), &subject, payload)
            .await
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        // Bounded like stdout: past the limit entries are dropped, once said so.
        if self.log_bytes > super::LOG_LIMIT {
            return;
        }
        self.log_bytes +=
            message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.log_bytes > super::LOG_LIMIT {
            self.log.log(
                Level::Warn,
                &format!(
                    "the plugin logged more than {} in this attempt; further log entries are dropped",
                    bytesize::ByteSize(super::LOG_LIMIT as u64)
                ),
                &[],
            );
            return;
        }
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
        let meta = dir
            .symlink_metadata(&rel)
            .map_err(|e| format!("{path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path}: not a regular file"));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        dir.set_permissions(&rel, cap_std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{path}: {e}"))
    }

    fn symlink(&mut self, target: String, link: String) -> Result<(), String> {
        let (mount, rel) = self.resolve(&link, true)?;
        // The same rule as artifacts: relative, `..` only leading, never above the mount.
        if Path::new(&target).is_absolute() {
            return Err(format!("symlink target {target:?} must be a relative path"));
        }
        if !sluice_core::model::link_stays_inside(
            rel.parent().unwrap_or(Path::new("")),
            Path::new(&target),
        ) {
            return Err(format!(
                "symlink target {target:?} leads outside {}",
                mount.guest.display()
            ));
        }
        let dir = Self::open_mount(mount)?;
        dir.symlink(&target, &rel)
            .map_err(|e| format!("{link}: {e}"))
    }
}

/// Lines of program output kept for the error message.
const TAIL_LINES: usize = 20;
/// Longest line kept from a program's output; the rest of the line is dropped.
const MAX_LINE: usize = 16 << 10;
/// Output logged per stream; the rest is read and dropped (the tail is still kept).
const MAX_LOGGED: usize = 32 << 20;
/// After the program exits, how long its output may still drain (background children that
/// inherited the pipes are killed with the group; this only bounds the final read).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Environment variables a guest may not set for a host program: they would change which
/// program runs or what it loads, turning one granted program into any program.
fn forbidden_env(key: &str) -> bool {
    matches!(
        key,
        "PATH"
            | "HOME"
            | "IFS"
            | "ENV"
            | "BASH_ENV"
            | "SHELLOPTS"
            | "BASHOPTS"
            | "PS4"
            | "CDPATH"
            | "GLOBIGNORE"
    ) || key.starts_with("LD_")
        || key.starts_with("SLUICE_")
        || key.starts_with("BASH_FUNC_")
}

/// Resolve a granted program name on the engine's own PATH (never the workspace's).
fn resolve_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return None;
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// How host programs are confined beyond their grants (see `confine`).
struct ProgramBounds {
    /// The engine's own directories (data directory, workspaces), even inside a grant.
    hidden: Vec<PathBuf>,
    /// Largest file a program may write.
    file_size: u64,
    /// TCP ports of the granted HTTP origins; `None` when no origin is granted (no network).
    ports: Option<Vec<u16>>,
}

/// The TCP ports of `scheme://host[:port]` origins.
fn http_ports(origins: &[String]) -> Option<Vec<u16>> {
    if origins.is_empty() {
        return None;
    }
    let mut ports: Vec<u16> = origins
        .iter()
        .filter_map(|o| {
            let (scheme, rest) = o.split_once("://")?;
            let authority = rest.split('/').next()?;
            match authority.rsplit_once(':') {
                Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
                _ => Some(if scheme == "https" { 443 } else { 80 }),
            }
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

impl HostState {
    /// The confinement of one program run by this action (`None`: run unconfined).
    fn confinement(&self, program: &Path) -> Result<Option<super::confine::Confinement>, String> {
        if super::confine::unconfined() {
            return Ok(None);
        }
        let grants = super::confine::Grants {
            workspace: &self.workspace,
            dirs: self
                .mounts
                .iter()
                .map(|m| (m.host.as_path(), m.access == Access::Rw))
                .collect(),
            hidden: &self.program_bounds.hidden,
            program,
            network: self.program_bounds.ports.clone(),
            memory: self.limits.memory,
            file_size: self.program_bounds.file_size,
        };
        super::confine::Confinement::prepare(&grants).map(Some)
    }
}

impl process::Host for HostState {
    async fn run(&mut self, cmd: process::Command) -> Result<process::ExitStatus, String> {
        if !self.programs.iter().any(|p| p == &cmd.program) {
            return Err(format!(
                "program `{}` is not granted to this action; add it to `capabilities: {{ process: [{}] }}`",
                cmd.program, cmd.program
            ));
        }
        if let Some((k, _)) = cmd.env.iter().find(|(k, _)| forbidden_env(k)) {
            return Err(format!(
                "environment variable `{k}` cannot be set for a host program"
            ));
        }
        let program = resolve_program(&cmd.program).ok_or_else(|| {
            format!(
                "program `{}` was not found on the engine's PATH",
                cmd.program
            )
        })?;
        let confinement = self.confinement(&program)?;
        let mut command = tokio::process::Command::new(&program);
        command.args(&cmd.args).env_clear().envs(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        );
        if confinement.is_some() {
            // The engine's home and /tmp are out of reach: the workspace stands in for both.
            command
                .env("HOME", &self.workspace)
                .env("TMPDIR", self.workspace.join("scratch"));
        }
        command
            .envs(self.program_env.iter().cloned())
            .envs(cmd.env.iter().cloned())
            .current_dir(&self.workspace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let (mut child, _cgroup) = super::spawner::spawn(command, confinement)
            .await
            .map_err(|e| format!("cannot start `{}`: {e}", cmd.program))?;
        // Whatever happens (a timeout drops this future, or the program exits leaving
        // background children), the whole process group is killed.
        let group = ProcessGroup(child.id());
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tail = std::sync::Mutex::new(VecDeque::with_capacity(TAIL_LINES));
        let pump = |stream: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>, level| {
            let (log, tail) = (self.log.clone(), &tail);
            async move {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                let mut logged = 0usize;
                loop {
                    buf.clear();
                    // Read by bytes with a cap: output that is not UTF-8 or has no newlines
                    // must neither stop the draining nor grow without bound.
                    match (&mut reader)
                        .take(MAX_LINE as u64)
                        .read_until(b'\n', &mut buf)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    logged += buf.len();
                    if logged <= MAX_LOGGED {
                        log.log(level, &line, &[]);
                    } else if logged - buf.len() <= MAX_LOGGED {
                        log.log(
                            Level::Warn,
                            &format!("output beyond {} MiB is not logged", MAX_LOGGED >> 20),
                            &[],
                        );
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        };
        let drain = async {
            tokio::join!(
                pump(Box::pin(stdout), Level::Info),
                pump(Box::pin(stderr), Level::Warn)
            )
        };
        tokio::pin!(drain);
        let mut drained = false;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut drain => {
                drained = true;
                child.wait().await
            }
        };
        let status = status.map_err(|e| format!("waiting for `{}`: {e}", cmd.program))?;
        // The program is done: background children go with its group, then the pipes close.
        drop(group);
        if !drained {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut drain).await;
        }
        let mut output_tail = tail
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                // The guest only learns there was no exit code: say which signal, and why
                // when the engine's limits send it.
                if !output_tail.is_empty() {
                    output_tail.push('\n');
                }
                output_tail.push_str(&signal_line(signal));
            }
        }
        Ok(process::ExitStatus {
            code: status.code(),
            output_tail,
        })
    }
}

/// How a program killed by `signal` is described.
fn signal_line(signal: i32) -> String {
    let (name, why) = match signal {
        libc::SIGKILL => ("SIGKILL", " (killed: out of memory, or stopped)"),
        libc::SIGSEGV => (
            "SIGSEGV",
            " (invalid memory access, or out of memory under its data limit)",
        ),
        libc::SIGABRT => ("SIGABRT", " (aborted)"),
        libc::SIGXFSZ => ("SIGXFSZ", " (file size limit: limits.output.size)"),
        libc::SIGXCPU => ("SIGXCPU", " (CPU time limit)"),
        libc::SIGTERM => ("SIGTERM", ""),
        libc::SIGINT => ("SIGINT", ""),
        libc::SIGPIPE => ("SIGPIPE", " (wrote to a closed pipe)"),
        libc::SIGBUS => ("SIGBUS", " (bus error)"),
        _ => ("signal", ""),
    };
    format!("killed by {name} ({signal}){why}")
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
