//! Starting host programs so that they die with the engine. A program is started with a
//! parent-death signal (SIGKILL): if the engine is killed (`kill -9`, OOM), its programs are
//! killed too, so a redelivered attempt on another engine never runs beside a leftover of this
//! one. Linux sends that signal when the *thread* that forked the child ends, so every program
//! is forked by one thread that lives as long as the process.
use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::process::{Child, Command};

/// A command, the runtime its child belongs to (its reaper and pipes), and where the child goes.
type Request = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// Start `command` (its process group, pipes and the rest as configured) from the spawner
/// thread, with SIGKILL as its parent-death signal, confined by `confinement` if given. The
/// child belongs to the caller's tokio runtime (its reaper and pipes). The cgroup returned
/// must live until the program has ended.
pub async fn spawn(
    mut command: Command,
    confinement: Option<super::confine::Confinement>,
) -> std::io::Result<(Child, Option<super::confine::Cgroup>)> {
    // First the parent-death signal: it checks that its parent is the engine, which holds
    // only in the process the engine forked (confinement forks once more).
    die_with_engine(&mut command);
    let cgroup = confinement.and_then(|c| c.apply(&mut command));
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send((command, handle, tx))
        .map_err(|_| std::io::Error::other("the program spawner thread has ended"))?;
    let child = rx
        .await
        .map_err(|_| std::io::Error::other("the program spawner thread has ended"))??;
    Ok((child, cgroup))
}

/// The one spawner thread (started on first use).
fn spawner() -> &'static mpsc::Sender<Request> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("sluice-spawner".into())
            .spawn(move || {
                for (mut command, handle, reply) in rx {
                    let _runtime = handle.enter();
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the program spawner thread");
        tx
    })
}

#[allow(unsafe_code)]
fn die_with_engine(command: &mut Command) {
    let engine = std::process::id() as libc::pid_t;
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe calls are
    // allowed: prctl(2), getppid(2) and _exit(2) are plain system calls that touch no memory
    // the parent shares.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The engine died between fork and prctl: nobody is left to signal us.
            if libc::getppid() != engine {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
