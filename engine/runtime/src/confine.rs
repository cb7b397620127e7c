//! Confining the host programs an action is granted (Linux). The WASM sandbox bounds the
//! guest; a program it starts through a `process:` grant runs on the host, so it gets a sandbox
//! of its own:
//!
//! - **Namespaces**: its own user namespace (it keeps no capability of the engine's user, even
//!   root's), PID namespace (it is PID 1 of a namespace the kernel empties when it exits, so
//!   nothing it starts — `setsid` and double forks included — outlives it) and, unless the
//!   action is granted HTTP origins, network namespace (no interface but a downed loopback).
//! - **Landlock**: read-write only beneath its workspace and the directories granted `rw`;
//!   read-only (and executable) in the system's program and library directories, a few files
//!   of `/etc`, `/proc`, and the directories granted `ro` — never the engine's own directories
//!   inside a grant; no TCP except connecting to the ports of granted origins; no signals to
//!   and no abstract Unix sockets of processes outside.
//! - **Limits**: file size (`limits.output.size`), data size (`limits.memory`, per process),
//!   no core files, and a process count (a `pids` cgroup where the engine can make one, which
//!   holds for root too; else `RLIMIT_NPROC`, which the kernel does not apply to root).
//!
//! Everything that allocates is prepared before `fork`; between `fork` and `exec` only system
//! calls run. Where the kernel lacks these features, programs are refused unless the engine
//! runs with `--unconfined-programs`.
use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Processes (and threads) one action's programs may have at once: enough for a build's
/// parallel compilers, few enough that a fork bomb stops inside the action.
pub const MAX_PROCESSES: u64 = 512;

/// The flag that turns confinement off, named in every refusal.
pub const UNCONFINED_FLAG: &str = "--unconfined-programs";

/// System directories a program may read and execute from (those that exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Files and directories of `/etc` programs commonly need; not the rest (`/etc/shadow`, keys).
const ETC: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/mime.types",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/gitconfig",
    "/etc/inputrc",
    "/etc/profile",
    "/etc/bash.bashrc",
    "/etc/environment",
];
/// Devices a program may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

static UNCONFINED: AtomicBool = AtomicBool::new(false);

/// Let host programs run unconfined (`--unconfined-programs`): as the engine's user, with all
/// its rights. For trusted pipelines on machines without the kernel features.
pub fn allow_unconfined(yes: bool) {
    UNCONFINED.store(yes, Ordering::Relaxed);
}

/// Whether host programs run unconfined.
pub fn unconfined() -> bool {
    UNCONFINED.load(Ordering::Relaxed)
}

/// What a program of one action may reach.
pub struct Grants<'a> {
    /// The action's workspace (read-write).
    pub workspace: &'a Path,
    /// Directories granted to the action: host path and whether writable.
    pub dirs: Vec<(&'a Path, bool)>,
    /// The engine's own directories, never reachable even inside a granted one.
    pub hidden: &'a [PathBuf],
    /// The program itself (its directory becomes readable if it is not a system one).
    pub program: &'a Path,
    /// TCP ports of granted HTTP origins; `None`: no network at all.
    pub network: Option<Vec<u16>>,
    /// Data size of each process, in bytes.
    pub memory: u64,
    /// Largest file a process may write, in bytes.
    pub file_size: u64,
}

/// A program's confinement, prepared before it is started.
pub struct Confinement {
    ruleset: OwnedFd,
    flags: libc::c_int,
    rlimits: [(libc::__rlimit_resource_t, u64); 4],
    cgroup: Option<Cgroup>,
}

impl Confinement {
    /// Prepare the confinement of one program. Fails with a message naming
    /// `--unconfined-programs` where the kernel lacks what it needs.
    pub fn prepare(grants: &Grants<'_>) -> Result<Self, String> {
        support()?;
        let fs_all = AccessFs::from_all(landlock::ABI::V7);
        let read = AccessFs::from_read(landlock::ABI::V7);
        let file_rw = AccessFs::from_file(landlock::ABI::V7);
        let mut rules: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
        for dir in SYSTEM_DIRS.iter().chain(ETC).chain(["/proc"].iter()) {
            rules.push((PathBuf::from(dir), read));
        }
        for dev in DEVICES {
            rules.push((PathBuf::from(dev), file_rw));
        }
        if let Some(dir) = grants.program.parent() {
            allow_around(dir, grants.hidden, read, &mut rules)?;
        }
        // The workspace lies inside the data directory: allowed as a whole, as what it holds.
        rules.push((grants.workspace.to_path_buf(), fs_all));
        for (dir, writable) in &grants.dirs {
            let access = if *writable { fs_all } else { read };
            if dir.starts_with(grants.workspace) {
                rules.push((dir.to_path_buf(), access));
            } else {
                allow_around(dir, grants.hidden, access, &mut rules)?;
            }
        }
        let ruleset = build_ruleset(&rules, grants.network.as_deref())?;
        let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
        if grants.network.is_none() {
            flags |= libc::CLONE_NEWNET;
        }
        Ok(Confinement {
            ruleset,
            flags,
            rlimits: [
                (libc::RLIMIT_FSIZE, grants.file_size),
                (libc::RLIMIT_DATA, grants.memory),
                (libc::RLIMIT_CORE, 0),
                (libc::RLIMIT_NPROC, MAX_PROCESSES),
            ],
            cgroup: Cgroup::create(),
        })
    }

    /// Install the confinement in `command` (after the engine's own `pre_exec` steps, which
    /// must run in the process the engine forked). Returns what must live until the program
    /// has ended (its cgroup).
    #[allow(unsafe_code)]
    pub fn apply(self, command: &mut tokio::process::Command) -> Option<Cgroup> {
        let Confinement {
            ruleset,
            flags,
            rlimits,
            cgroup,
        } = self;
        let procs = cgroup.as_ref().map(|c| c.procs.clone());
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: it makes system calls only (no allocation, no
        // lock), on values prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                // Join the cgroup first: every process the program starts counts.
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                for (resource, value) in rlimits {
                    if resource == libc::RLIMIT_NPROC {
                        continue;
                    }
                    set_limit(resource, value)?;
                }
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Counted per user namespace: set after entering the new one, so the limit
                // holds for this action's processes only.
                set_limit(libc::RLIMIT_NPROC, MAX_PROCESSES)?;
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32)
                        != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(ruleset.as_raw_fd());
                become_init_of_namespace()
            });
        }
        cgroup
    }
}

#[allow(unsafe_code)]
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit(2) reads the struct we pass; async-signal-safe.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// After `unshare(CLONE_NEWPID)` only the caller's next child is inside the new namespace:
/// fork it, let it go on to exec the program as PID 1, and stay as its reaper, exiting as it
/// exits (the engine waits for this process, kills it on timeout, and the program dies with it).
#[allow(unsafe_code)]
unsafe fn become_init_of_namespace() -> std::io::Result<()> {
    // SAFETY (whole function): plain system calls between fork and exec, on stack values.
    unsafe {
        // Tells the program whether this process died before it could ask to die with it.
        let mut pipe = [0; 2];
        if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let child = libc::fork();
        if child < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if child == 0 {
            libc::close(pipe[1]);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut poll = libc::pollfd {
                fd: pipe[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // The write end is closed only if the parent already ended: nobody would kill us.
            if libc::poll(&mut poll, 1, 0) != 0 {
                libc::_exit(1);
            }
            libc::close(pipe[0]);
            return Ok(());
        }
        // The reaper keeps nothing open but the pipe's write end: the engine's pipes (the
        // program's output, the exec-status pipe) must close when the program's copies do.
        libc::syscall(libc::SYS_close_range, 0u32, (pipe[1] - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (pipe[1] + 1) as u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        // Killed by a signal: end the same way, so the engine sees which.
        let signal = libc::WTERMSIG(status);
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal);
    }
}

/// Rules one program's confinement may hold: a granted directory that holds the data directory
/// costs one per entry along the way, and a directory of a million files must not cost a
/// million rules (and path opens) per program started.
const MAX_RULES: usize = 4096;

/// Allow `access` beneath `root`, except beneath any `hidden` path: a granted directory that
/// holds the engine's data directory is allowed entry by entry around it.
fn allow_around(
    root: &Path,
    hidden: &[PathBuf],
    access: landlock::BitFlags<AccessFs>,
    rules: &mut Vec<(PathBuf, landlock::BitFlags<AccessFs>)>,
) -> Result<(), String> {
    if hidden.iter().any(|h| root.starts_with(h)) {
        return Ok(());
    }
    if !hidden.iter().any(|h| h.starts_with(root)) {
        rules.push((root.to_path_buf(), access));
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if rules.len() >= MAX_RULES {
            return Err(format!(
                "{} holds the engine's data directory and too many entries to grant around it (more than {MAX_RULES}); grant a directory that does not hold the data directory",
                root.display()
            ));
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => allow_around(&path, hidden, access, rules)?,
            Ok(_) if !hidden.contains(&path) => {
                rules.push((path, access & AccessFs::from_file(landlock::ABI::V7)))
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
    Ok(())
}

fn build_ruleset(
    rules: &[(PathBuf, landlock::BitFlags<AccessFs>)],
    ports: Option<&[u16]>,
) -> Result<OwnedFd, String> {
    let failed =
        |e: landlock::RulesetError| format!("cannot prepare the program's Landlock rules: {e}");
    let mut ruleset = Ruleset::default()
        // Older kernels get what they support: the file system part is required (checked by
        // `support`), network rules and scopes come with newer ABIs.
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(landlock::ABI::V7))
        .and_then(|r| r.handle_access(AccessNet::from_all(landlock::ABI::V7)))
        .and_then(|r| r.scope(Scope::from_all(landlock::ABI::V7)))
        .and_then(|r| r.create())
        .map_err(failed)?;
    for (path, access) in rules {
        // What does not exist on this system is skipped.
        let Ok(fd) = PathFd::new(path) else { continue };
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        let access = if is_dir {
            *access
        } else {
            *access & AccessFs::from_file(landlock::ABI::V7)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(failed)?;
    }
    for port in ports.unwrap_or_default() {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(failed)?;
    }
    Option::<OwnedFd>::from(ruleset).ok_or_else(|| {
        format!("host programs cannot be confined: this kernel's Landlock enforces nothing; start the engine with {UNCONFINED_FLAG} to run them with the engine's own rights")
    })
}

/// Whether this kernel can confine programs (checked once): Landlock and user namespaces.
pub fn support() -> Result<(), String> {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    SUPPORT.get_or_init(probe).clone()
}

#[allow(unsafe_code)]
fn probe() -> Result<(), String> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: landlock_create_ruleset(2) with no attribute only returns the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Err(format!(
            "host programs cannot be confined: this kernel has no Landlock ({}); start the engine with {UNCONFINED_FLAG} to run them with the engine's own rights",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the child makes system calls only, then _exit; the parent waits for it.
    let errno = unsafe {
        let child = libc::fork();
        if child == 0 {
            let r = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNET);
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        }
        if child < 0 {
            return Err(format!(
                "host programs cannot be confined: fork: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            libc::EINVAL
        }
    };
    if errno != 0 {
        return Err(format!(
            "host programs cannot be confined: user namespaces are not available here ({}); start the engine with {UNCONFINED_FLAG} to run them with the engine's own rights",
            std::io::Error::from_raw_os_error(errno)
        ));
    }
    Ok(())
}

/// A `pids` cgroup holding one program and everything it starts, removed when dropped.
pub struct Cgroup {
    dir: PathBuf,
    procs: CString,
}

impl Cgroup {
    /// A fresh cgroup with the process limit, if this engine can make one.
    fn create() -> Option<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = cgroup_root()?;
        let dir = root.join(format!("a{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).ok()?;
        let cgroup = Cgroup {
            procs: CString::new(
                dir.join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .ok()?,
            dir,
        };
        std::fs::write(cgroup.dir.join("pids.max"), MAX_PROCESSES.to_string()).ok()?;
        Some(cgroup)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the program's namespace is (its init waits for the others to go).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        tracing::warn!("could not remove the cgroup {}", self.dir.display());
    }
}

/// This engine's directory of program cgroups: `sluice-<pid>` under its own `pids` cgroup
/// (cgroup v1's `pids` hierarchy, or v2 where `pids` is delegated). Leftovers of engines that
/// are gone are removed.
fn cgroup_root() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let candidates = own.lines().filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "pids") {
                Some(Path::new("/sys/fs/cgroup/pids").join(path))
            } else if id == "0" && controllers.is_empty() {
                Some(Path::new("/sys/fs/cgroup").join(path))
            } else {
                None
            }
        });
        for parent in candidates.collect::<Vec<_>>() {
            remove_stale(&parent);
            let dir = parent.join(format!("sluice-{}", std::process::id()));
            if std::fs::create_dir(&dir).is_ok() || dir.is_dir() {
                if dir.join("pids.max").exists() {
                    return Some(dir);
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        tracing::info!(
            "no pids cgroup available: host programs' process count is bounded by RLIMIT_NPROC (not applied to root)"
        );
        None
    })
    .as_deref()
}

/// Remove `sluice-<pid>` cgroups of engines no longer running.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sluice-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(entry.path()) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_around_the_data_directory_leaves_it_out_and_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join(".sluice");
        std::fs::create_dir_all(data.join("cas")).unwrap();
        std::fs::write(data.join("master.key"), b"k").unwrap();
        std::fs::write(data.join("notes.txt"), b"n").unwrap();
        std::fs::write(root.path().join("src.rs"), b"s").unwrap();
        let hidden = [data.join("cas"), data.join("master.key")];
        let read = AccessFs::from_read(landlock::ABI::V7);
        let mut rules = Vec::new();
        allow_around(root.path(), &hidden, read, &mut rules).unwrap();
        let paths: Vec<&Path> = rules.iter().map(|(p, _)| p.as_path()).collect();
        assert!(paths.contains(&root.path().join("src.rs").as_path()));
        assert!(paths.contains(&data.join("notes.txt").as_path()));
        assert!(
            !paths
                .iter()
                .any(|p| hidden.iter().any(|h| p.starts_with(h)))
        );
        assert!(
            !paths.contains(&root.path()),
            "the root itself would reach the hidden"
        );
        // A directory of many entries around the data directory is refused, not walked.
        for i in 0..MAX_RULES + 10 {
            std::fs::write(root.path().join(format!("f{i}")), b"").unwrap();
        }
        let mut rules = Vec::new();
        let refused = allow_around(root.path(), &hidden, read, &mut rules).unwrap_err();
        assert!(refused.contains("too many entries"), "{refused}");
        assert!(rules.len() <= MAX_RULES);
    }
}
