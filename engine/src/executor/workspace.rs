//! Action workspaces (`in/`, `out/`, `scratch/` on the host), reused from a pool: creating and
//! deleting directories per action costs more than running a small component, so an
//! emptied workspace goes back to the pool instead of being deleted.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A pool of workspace directories under one root.
pub struct WorkspacePool {
    root: PathBuf,
    free: Mutex<Vec<PathBuf>>,
}

impl WorkspacePool {
    /// Workspaces under `root`; whatever a previous process left there is removed.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        Ok(WorkspacePool { root, free: Mutex::new(Vec::new()) })
    }

    /// An empty workspace with `scratch/` in it.
    pub fn take(&self) -> std::io::Result<PathBuf> {
        if let Some(ws) = self.free.lock().unwrap().pop() {
            return Ok(ws);
        }
        let ws = self.root.join(format!("ws-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(ws.join("scratch"))?;
        Ok(ws)
    }

    /// Empty a workspace and keep it for the next action; a workspace that cannot be
    /// emptied is deleted instead.
    pub fn give_back(&self, ws: PathBuf) -> std::io::Result<()> {
        let emptied = (|| {
            for sub in ["in", "out"] {
                let dir = ws.join(sub);
                if dir.symlink_metadata().is_ok() {
                    std::fs::remove_dir_all(dir)?;
                }
            }
            empty_dir(&ws.join("scratch"))
        })();
        match emptied {
            Ok(()) => {
                self.free.lock().unwrap().push(ws);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&ws);
                Err(e)
            }
        }
    }
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
