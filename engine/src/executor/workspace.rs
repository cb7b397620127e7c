//! Action workspaces (`in/`, `out/`, `scratch/` on the host), reused from a pool: creating and
//! deleting directories per action costs more than running a small component, so an
//! emptied workspace goes back to the pool instead of being deleted.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Used workspaces are emptied by a background thread in batches of this many, so that
/// emptying (several system calls) stays off the actions' critical path and the thread is
/// woken once per batch rather than once per action.
const CLEAN_BATCH: usize = 8;
/// Beyond this many workspaces, `take` empties a used one itself instead of creating more.
const MAX_WORKSPACES: usize = 256;

/// A pool of workspace directories under one root.
pub struct WorkspacePool {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Default)]
struct PoolState {
    free: Vec<PathBuf>,
    dirty: Vec<(PathBuf, Used)>,
    total: usize,
    cleaner_idle: bool,
    /// The cleaner is emptying a batch it took.
    cleaning: bool,
    closed: bool,
}

impl WorkspacePool {
    /// Workspaces under `root`; whatever a previous process left there is removed.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        let shared = Arc::new(Shared {
            root,
            state: Mutex::new(PoolState::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sluice-workspaces".into())
            .spawn(move || s.clean_loop())?;
        Ok(WorkspacePool { shared })
    }

    /// An empty workspace with `scratch/` in it.
    pub fn take(&self) -> std::io::Result<PathBuf> {
        let used = {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(ws) = st.free.pop() {
                return Ok(ws);
            }
            if st.total < MAX_WORKSPACES || st.dirty.is_empty() {
                st.total += 1;
                None
            } else {
                st.dirty.pop()
            }
        };
        match used {
            // The pool is at its size: empty a used workspace here rather than grow it.
            Some((ws, used)) => match empty(&ws, used) {
                Ok(()) => Ok(ws),
                Err(e) => {
                    self.shared.state.lock().unwrap().total -= 1;
                    let _ = std::fs::remove_dir_all(&ws);
                    Err(e)
                }
            },
            None => {
                let ws = self.shared.root.join(format!("ws-{}", ulid::Ulid::new()));
                std::fs::create_dir_all(ws.join("scratch"))
                    .inspect_err(|_| self.shared.state.lock().unwrap().total -= 1)?;
                Ok(ws)
            }
        }
    }

    /// Hand a workspace back; it is emptied in the background and then reused. `used` says
    /// what the job may have created besides `scratch/`.
    pub fn give_back(&self, ws: PathBuf, used: Used) {
        let mut st = self.shared.state.lock().unwrap();
        st.dirty.push((ws, used));
        if st.dirty.len() >= CLEAN_BATCH && st.cleaner_idle {
            self.shared.wake.notify_all();
        }
    }

    /// Empty every used workspace now, and wait for the cleaner's batch: at the end of a
    /// run, nothing an action wrote stays on disk.
    pub fn flush(&self) {
        let dirty = std::mem::take(&mut self.shared.state.lock().unwrap().dirty);
        self.shared.clean(dirty);
        let mut st = self.shared.state.lock().unwrap();
        while st.cleaning {
            st = self.shared.wake.wait(st).unwrap();
        }
    }
}

impl Drop for WorkspacePool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closed = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn clean_loop(&self) {
        loop {
            let dirty = {
                let mut st = self.state.lock().unwrap();
                // Wake for a full batch, or now and then for what a quiet engine left.
                while st.dirty.len() < CLEAN_BATCH && !st.closed {
                    st.cleaner_idle = true;
                    let (next, timeout) = self
                        .wake
                        .wait_timeout(st, std::time::Duration::from_millis(100))
                        .unwrap();
                    st = next;
                    if timeout.timed_out() && !st.dirty.is_empty() {
                        break;
                    }
                }
                st.cleaner_idle = false;
                if st.closed {
                    return;
                }
                st.cleaning = true;
                std::mem::take(&mut st.dirty)
            };
            self.clean(dirty);
            self.state.lock().unwrap().cleaning = false;
            // `flush` may be waiting for this batch.
            self.wake.notify_all();
        }
    }

    fn clean(&self, dirty: Vec<(PathBuf, Used)>) {
        for (ws, used) in dirty {
            match empty(&ws, used) {
                Ok(()) => self.state.lock().unwrap().free.push(ws),
                Err(e) => {
                    // A workspace that cannot be emptied is deleted instead.
                    tracing::warn!("could not empty workspace {}: {e}", ws.display());
                    let _ = std::fs::remove_dir_all(&ws);
                    self.state.lock().unwrap().total -= 1;
                }
            }
        }
    }
}

/// Empty a used workspace, keeping `scratch/`.
fn empty(ws: &Path, used: Used) -> std::io::Result<()> {
    if used.anything {
        // Host programs run in the workspace: anything may be there.
        for entry in std::fs::read_dir(ws)? {
            let entry = entry?;
            if entry.file_name() != "scratch" {
                remove(&entry)?;
            }
        }
    } else {
        for (sub, created) in [("in", used.inputs), ("out", used.outputs)] {
            if created {
                std::fs::remove_dir_all(ws.join(sub))?;
            }
        }
    }
    empty_dir(&ws.join("scratch"))
}

/// What a job may have created in its workspace besides `scratch/`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Used {
    /// `in/` (the job had inputs).
    pub inputs: bool,
    /// `out/` (the job had outputs).
    pub outputs: bool,
    /// Anything (host programs ran in the workspace).
    pub anything: bool,
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        remove(&entry?)?;
    }
    Ok(())
}

fn remove(entry: &std::fs::DirEntry) -> std::io::Result<()> {
    if entry.file_type()?.is_dir() {
        std::fs::remove_dir_all(entry.path())
    } else {
        std::fs::remove_file(entry.path())
    }
}
