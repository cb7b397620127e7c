//! Action workspaces (`in/`, `out/`, `scratch/` on the host), reused from a pool: creating and
//! deleting directories per action costs more than running a small component, so an
//! emptied workspace goes back to the pool instead of being deleted. Its `scratch/` stays open
//! for the guest's preopen.
use crate::model::Access;
use crate::runtime::{Mount, Preopened};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Used workspaces are emptied by a background thread, so that emptying (several system
/// calls) stays off the actions' critical path. While there is work it looks every `NAP`
/// rather than being woken: waking another thread cost an action about a microsecond.
const NAP: Duration = Duration::from_millis(1);
/// After this many naps with nothing to empty the cleaner sleeps until woken.
const NAPS_BEFORE_SLEEP: u32 = 100;
/// Beyond this many workspaces, `take` empties a used one itself instead of creating more.
/// (Each keeps two descriptors open.)
const MAX_WORKSPACES: usize = 128;

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
    free: Vec<Workspace>,
    dirty: Vec<(Workspace, Used)>,
    total: usize,
    /// The cleaner sleeps until woken (else it looks again within a `NAP`).
    cleaner_idle: bool,
    /// The cleaner is emptying a batch it took.
    cleaning: bool,
    /// Times `take` found nothing free since the cleaner last looked: it makes that many more
    /// (creating a directory costs far more than emptying one, so not on an action's path).
    short: usize,
    closed: bool,
}

impl WorkspacePool {
    /// Workspaces under `root`; whatever a previous process left there is removed.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        Self::start(root, true)
    }

    fn start(root: PathBuf, cleaner: bool) -> std::io::Result<Self> {
        if std::fs::symlink_metadata(&root).is_ok() {
            // What a guest left there must not keep the engine from starting: if it cannot
            // be removed, it is moved aside.
            if let Err(e) = remove_tree(&root) {
                let aside = quarantine(&root)?;
                tracing::warn!(
                    "could not empty {} ({e}); moved it to {}",
                    root.display(),
                    aside.display()
                );
            }
        }
        std::fs::create_dir_all(&root)?;
        let shared = Arc::new(Shared {
            root,
            state: Mutex::new(PoolState::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        if cleaner {
            std::thread::Builder::new()
                .name("sluice-workspaces".into())
                .spawn(move || s.clean_loop())?;
        }
        Ok(WorkspacePool { shared })
    }

    /// An empty workspace with `scratch/` in it.
    pub fn take(&self) -> std::io::Result<Workspace> {
        let used = {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(ws) = st.free.pop() {
                return Ok(ws);
            }
            if st.total < MAX_WORKSPACES {
                st.short += 1;
            }
            let used = st.dirty.pop();
            if used.is_none() {
                st.total += 1;
            }
            used
        };
        match used {
            // Nothing free: empty a used workspace here (usually two system calls) rather
            // than create one.
            Some((ws, used)) => match ws.empty(used) {
                Ok(()) => Ok(ws),
                Err(e) => {
                    self.shared.state.lock().unwrap().total -= 1;
                    discard(&ws.path, &e);
                    Err(e)
                }
            },
            None => self
                .shared
                .create()
                .inspect_err(|_| self.shared.state.lock().unwrap().total -= 1),
        }
    }

    /// Hand a workspace back; it is emptied in the background and then reused. `used` says
    /// what the job may have created besides `scratch/`.
    pub fn give_back(&self, ws: Workspace, used: Used) {
        let mut st = self.shared.state.lock().unwrap();
        st.dirty.push((ws, used));
        if st.cleaner_idle {
            st.cleaner_idle = false;
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
        let mut naps = 0;
        loop {
            let (dirty, grow) = {
                let mut st = self.state.lock().unwrap();
                while st.dirty.is_empty() && st.short == 0 && !st.closed {
                    if naps < NAPS_BEFORE_SLEEP {
                        naps += 1;
                        st = self.wake.wait_timeout(st, NAP).unwrap().0;
                    } else {
                        // Asleep until `give_back` (or the pool's drop) wakes it.
                        st.cleaner_idle = true;
                        st = self.wake.wait(st).unwrap();
                    }
                }
                st.cleaner_idle = false;
                if st.closed {
                    return;
                }
                naps = 0;
                st.cleaning = true;
                let grow =
                    std::mem::take(&mut st.short).min(MAX_WORKSPACES.saturating_sub(st.total));
                st.total += grow;
                (std::mem::take(&mut st.dirty), grow)
            };
            self.clean(dirty);
            for _ in 0..grow {
                match self.create() {
                    Ok(ws) => self.state.lock().unwrap().free.push(ws),
                    Err(_) => self.state.lock().unwrap().total -= 1,
                }
            }
            self.state.lock().unwrap().cleaning = false;
            // `flush` may be waiting for this batch.
            self.wake.notify_all();
        }
    }

    /// A new workspace.
    fn create(&self) -> std::io::Result<Workspace> {
        let path = self.root.join(format!("ws-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(path.join("scratch"))?;
        // (A workspace whose `scratch/` cannot be kept open opens it per call.)
        let scratch = Preopened::open(scratch_mount(&path)).ok();
        let listing = std::fs::File::open(path.join("scratch")).ok();
        Ok(Workspace {
            path,
            scratch,
            listing,
        })
    }

    fn clean(&self, dirty: Vec<(Workspace, Used)>) {
        for (ws, used) in dirty {
            match ws.empty(used) {
                Ok(()) => self.state.lock().unwrap().free.push(ws),
                Err(e) => {
                    // A workspace that cannot be emptied leaves the pool.
                    discard(&ws.path, &e);
                    self.state.lock().unwrap().total -= 1;
                }
            }
        }
    }
}

impl Workspace {
    /// Empty it after use, keeping `scratch/`.
    fn empty(&self, used: Used) -> std::io::Result<()> {
        let ws = &self.path;
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
                    remove_tree(&ws.join(sub))?;
                }
            }
        }
        // Most actions leave `scratch/` empty: two system calls on the kept descriptor say so,
        // where listing it by path takes five and a path walk.
        if self
            .listing
            .as_ref()
            .is_some_and(|d| is_empty_dir(d).unwrap_or(false))
        {
            return Ok(());
        }
        empty_dir(&ws.join("scratch"))
    }
}

/// Whether the open directory `dir` has no entries (read from its start).
#[cfg(target_os = "linux")]
fn is_empty_dir(dir: &std::fs::File) -> std::io::Result<bool> {
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0))?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    let mut entries = rustix::fs::RawDir::new(dir, &mut buf);
    while let Some(entry) = entries.next() {
        if !matches!(entry?.file_name().to_bytes(), b"." | b"..") {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn is_empty_dir(_dir: &std::fs::File) -> std::io::Result<bool> {
    Ok(false)
}

/// One action's workspace.
pub struct Workspace {
    /// Its directory on the host.
    pub path: PathBuf,
    /// `scratch/`, kept open for the guest's preopen.
    pub scratch: Option<Preopened>,
    /// `scratch/`, kept open to see cheaply that it is still empty.
    listing: Option<std::fs::File>,
}

/// How the guest sees a workspace's `scratch/`.
pub fn scratch_mount(ws: &Path) -> Mount {
    Mount {
        host: ws.join("scratch"),
        guest: "/scratch".into(),
        access: Access::Rw,
    }
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
        remove_tree(&entry.path())
    } else {
        std::fs::remove_file(entry.path())
    }
}

/// A workspace that could not be emptied: deleted, or if even that fails moved aside, so
/// the pool and the engine carry on.
fn discard(ws: &Path, why: &std::io::Error) {
    match remove_tree(ws) {
        Ok(()) => tracing::warn!("could not empty workspace {}: {why}", ws.display()),
        Err(e) => match quarantine(ws) {
            Ok(aside) => tracing::warn!(
                "could not empty workspace {} ({why}) nor delete it ({e}); moved it to {}",
                ws.display(),
                aside.display()
            ),
            Err(q) => tracing::error!(
                "could not empty, delete or move aside workspace {}: {why}; {e}; {q}",
                ws.display()
            ),
        },
    }
}

/// Move `dir` into `quarantine/` next to the workspace root (same file system), out of the
/// engine's way; returns where it went.
fn quarantine(dir: &Path) -> std::io::Result<PathBuf> {
    let data = dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "work"))
        .and_then(Path::parent)
        .or_else(|| dir.parent())
        .unwrap_or(Path::new("."));
    let aside_dir = data.join("quarantine");
    std::fs::create_dir_all(&aside_dir)?;
    let aside = aside_dir.join(format!("{}", ulid::Ulid::new()));
    std::fs::rename(dir, &aside)?;
    Ok(aside)
}

/// Delete the file or directory tree at `path`, however deep: no recursion (a guest's
/// 20,000 nested directories overflowed the cleaner's stack) and two descriptors at a time
/// (`std::fs::remove_dir_all` keeps one per level and ran out). Paths are never joined, so
/// depth is not bounded by `PATH_MAX` either.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no entry", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let parent = rustix::fs::open(parent, dir_flags, Mode::empty())?;
    let top = match rustix::fs::openat(&parent, name, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        // Not a directory (or a symlink to one): remove the entry itself.
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Ok(rustix::fs::unlinkat(&parent, name, AtFlags::empty())?);
        }
        Err(e) => return Err(e.into()),
    };
    empty_tree(top)?;
    Ok(rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)?)
}

/// Empty the open directory `top`, depth first, walking back up through `..` (checked
/// against the directory it came from).
fn empty_tree(top: rustix::fd::OwnedFd) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Per level below `top`: the directory's name in its parent and the parent's identity.
    let mut up: Vec<(std::ffi::CString, (u64, u64))> = Vec::new();
    let mut cur = top;
    loop {
        let fd = &cur;
        let mut sub = None;
        let mut files = Vec::new();
        let mut list = rustix::fs::Dir::read_from(fd)?;
        while let Some(entry) = list.read() {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                ),
                kind => kind,
            };
            if kind == FileType::Directory {
                sub = Some(name.to_owned());
                break;
            }
            files.push(name.to_owned());
            // Bounded memory for a directory of many files: remove them and list again.
            if files.len() >= 1024 {
                break;
            }
        }
        for f in &files {
            rustix::fs::unlinkat(fd, f.as_c_str(), AtFlags::empty())?;
        }
        if let Some(sub) = sub {
            let st = rustix::fs::fstat(fd)?;
            let next = rustix::fs::openat(fd, sub.as_c_str(), dir_flags, Mode::empty())?;
            up.push((sub, (st.st_dev as u64, st.st_ino as u64)));
            cur = next;
            continue;
        }
        if !files.is_empty() {
            continue;
        }
        // Empty: go back up and remove it.
        let Some((name, (dev, ino))) = up.pop() else {
            return Ok(());
        };
        let parent = rustix::fs::openat(fd, c"..", dir_flags, Mode::empty())?;
        let st = rustix::fs::fstat(&parent)?;
        if (st.st_dev as u64, st.st_ino as u64) != (dev, ino) {
            return Err(std::io::Error::other(
                "a directory was moved while its tree was being deleted",
            ));
        }
        rustix::fs::unlinkat(&parent, name.as_c_str(), AtFlags::REMOVEDIR)?;
        cur = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A reused workspace comes back with `scratch/` empty, whatever the last action left in
    /// it, and its kept descriptors still serve the next action.
    #[test]
    fn a_reused_workspace_comes_back_empty() {
        let root = tempfile::tempdir().unwrap();
        let pool = WorkspacePool::new(root.path().join("work")).unwrap();
        let ws = pool.take().unwrap();
        let path = ws.path.clone();
        assert!(ws.scratch.is_some() && ws.listing.is_some());
        assert!(
            is_empty_dir(ws.listing.as_ref().unwrap()).unwrap() || cfg!(not(target_os = "linux"))
        );
        std::fs::create_dir_all(path.join("scratch/notes")).unwrap();
        std::fs::write(path.join("scratch/notes/left"), "behind").unwrap();
        std::fs::write(path.join("scratch/top"), "level").unwrap();
        assert!(!is_empty_dir(ws.listing.as_ref().unwrap()).unwrap());
        pool.give_back(ws, Used::default());
        pool.flush();
        let again = pool.take().unwrap();
        assert_eq!(again.path, path, "the pool reuses its one workspace");
        assert!(
            files(&path.join("scratch")).is_empty(),
            "{:?}",
            files(&path.join("scratch"))
        );
        // The kept descriptor sees what the next action writes (not a stale listing).
        std::fs::write(path.join("scratch/next"), "x").unwrap();
        assert!(
            !is_empty_dir(again.listing.as_ref().unwrap()).unwrap()
                || cfg!(not(target_os = "linux"))
        );
        pool.give_back(
            again,
            Used {
                outputs: false,
                inputs: false,
                anything: false,
            },
        );
        pool.flush();
        assert!(files(&path.join("scratch")).is_empty());
    }

    /// With nothing free, `take` empties a used workspace rather than create one (on an
    /// action's path), and the cleaner makes the workspaces that were short in the background.
    #[test]
    fn a_short_pool_reuses_used_workspaces_and_grows_in_the_background() {
        let root = tempfile::tempdir().unwrap();
        let pool = WorkspacePool::start(root.path().join("work"), false);
        let pool = pool.unwrap();
        let ws = pool.take().unwrap();
        let path = ws.path.clone();
        std::fs::write(path.join("scratch/left"), "behind").unwrap();
        pool.give_back(ws, Used::default());
        let again = pool.take().unwrap();
        assert_eq!(again.path, path);
        assert!(files(&path.join("scratch")).is_empty());
        let st = pool.shared.state.lock().unwrap();
        assert_eq!((st.total, st.short), (1, 2), "one workspace, short twice");
        drop(st);
        pool.give_back(again, Used::default());

        // The cleaner starts after both takes: one polling in between would make up the first
        // shortfall before the second take, which then finds it free.
        let grown = WorkspacePool::start(root.path().join("grown"), false).unwrap();
        let (a, b) = (grown.take().unwrap(), grown.take().unwrap());
        grown.give_back(a, Used::default());
        grown.give_back(b, Used::default());
        let cleaner = grown.shared.clone();
        std::thread::spawn(move || cleaner.clean_loop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let free = grown.shared.state.lock().unwrap().free.len();
            if free == 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pool did not grow: {free} free"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(grown.shared.state.lock().unwrap().total, 4);
    }

    /// `levels` nested directories under `dir`, made one level at a time from an open
    /// descriptor as a guest does (no path could name the deepest).
    fn deep_tree(dir: &Path, levels: usize) {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        std::fs::create_dir_all(dir).unwrap();
        let mut fd = rustix::fs::open(dir, flags, Mode::empty()).unwrap();
        for _ in 0..levels {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", flags, Mode::empty()).unwrap();
        }
        rustix::fs::openat(
            &fd,
            "file",
            flags.difference(OFlags::DIRECTORY) | OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
    }

    /// A guest's 20,000 nested directories are emptied like any other output (they
    /// overflowed the cleaner's stack), and a tree left behind by a killed engine does not
    /// keep the next one from starting (it ran out of descriptors).
    #[test]
    fn a_tree_20000_levels_deep_is_emptied_and_does_not_block_a_restart() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        // Run on a thread with a small stack, as the cleaner would.
        let w = work.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let pool = WorkspacePool::start(w, false).unwrap();
                let ws = pool.take().unwrap();
                deep_tree(&ws.path.join("out/o"), 20_000);
                deep_tree(&ws.path.join("scratch/s"), 2_000);
                let path = ws.path.clone();
                pool.give_back(
                    ws,
                    Used {
                        outputs: true,
                        ..Used::default()
                    },
                );
                pool.flush();
                assert!(!path.join("out").exists());
                assert!(files(&path.join("scratch")).is_empty());
            })
            .unwrap()
            .join()
            .unwrap();
        deep_tree(&work.join("ws-left/out/o"), 20_000);
        let pool = WorkspacePool::start(work.clone(), false).unwrap();
        assert!(files(&work).is_empty(), "{:?}", files(&work));
        drop(pool);
    }

    /// Without `flush`, the cleaner empties used workspaces on its own soon after.
    #[test]
    fn the_cleaner_empties_used_workspaces_in_the_background() {
        let root = tempfile::tempdir().unwrap();
        let pool = WorkspacePool::new(root.path().join("work")).unwrap();
        // Let the cleaner fall asleep first: `give_back` must wake it.
        std::thread::sleep(NAP * (NAPS_BEFORE_SLEEP + 20));
        let ws = pool.take().unwrap();
        std::fs::write(ws.path.join("scratch/left"), "behind").unwrap();
        std::fs::create_dir_all(ws.path.join("out/site")).unwrap();
        let path = ws.path.clone();
        pool.give_back(
            ws,
            Used {
                outputs: true,
                ..Used::default()
            },
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.shared.state.lock().unwrap().free.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the used workspace was not emptied"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(files(&path.join("scratch")).is_empty() && !path.join("out").exists());
    }
}
