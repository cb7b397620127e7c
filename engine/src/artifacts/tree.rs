//! Trees: an artifact is a directory manifest naming its files' blobs and its
//! subdirectories' trees, serialised canonically (sorted, compact JSON) and stored as a blob.
use super::{BlobStore, Digest, StoreError, io};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// One directory level of an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Format version.
    pub sluice_tree: u32,
    /// Entries sorted by name.
    pub entries: Vec<Entry>,
}

/// An entry of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// A regular file.
    File {
        /// Name within the directory.
        name: String,
        /// Its blob.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Owner-executable.
        executable: bool,
    },
    /// A subdirectory.
    Dir {
        /// Name within the directory.
        name: String,
        /// Its tree.
        digest: Digest,
    },
    /// A relative symbolic link that stays inside the artifact.
    Symlink {
        /// Name within the directory.
        name: String,
        /// Link target, relative.
        target: String,
    },
}

impl Entry {
    /// The entry's name.
    pub fn name(&self) -> &str {
        match self {
            Entry::File { name, .. } | Entry::Dir { name, .. } | Entry::Symlink { name, .. } => {
                name
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "unsafe entry name {name:?} in artifact"
        )));
    }
    Ok(())
}

pub use sluice_core::model::link_stays_inside;

/// Summary of a stored artifact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Total bytes of regular files.
    pub bytes: u64,
}

pub use crate::limits::{
    MAX_OUTPUT_BYTES as MAX_BYTES, MAX_OUTPUT_DEPTH as MAX_DEPTH, MAX_OUTPUT_ENTRIES as MAX_ENTRIES,
};

/// Bounds on a directory stored by [`put_tree_bounded`]: what a guest leaves in `/out`.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Levels of subdirectories (at most [`MAX_DEPTH`]).
    pub depth: usize,
    /// Files, directories and links.
    pub entries: u64,
    /// Bytes of regular files, by their size.
    pub bytes: u64,
    /// Stop when this passes (the action's own time limit).
    pub deadline: Option<std::time::Instant>,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            depth: MAX_DEPTH,
            entries: MAX_ENTRIES,
            bytes: MAX_BYTES,
            deadline: None,
        }
    }
}

/// How files travel between the store and a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Copy; the directory and the store never share storage.
    Copy,
    /// Share storage where possible: on put, files are moved into the store (the directory
    /// is the caller's and is discarded); on get, read-only files are hard links. Only for
    /// directories nobody writes afterwards.
    Share,
}

/// Store the directory `root` as an artifact. Symlinks leading out of it, absolute symlinks,
/// non-UTF-8 names and special files are rejected with the offending path.
pub fn put_tree(store: &dyn BlobStore, root: &Path) -> Result<(Digest, TreeStats), StoreError> {
    put_tree_with(store, root, Transfer::Copy)
}

/// [`put_tree`] with a choice of [`Transfer`].
pub fn put_tree_with(
    store: &dyn BlobStore,
    root: &Path,
    transfer: Transfer,
) -> Result<(Digest, TreeStats), StoreError> {
    put_tree_bounded(store, root, transfer, &Bounds::default())
}

/// [`put_tree_with`] within `bounds`; exceeding one is an error that names it.
pub fn put_tree_bounded(
    store: &dyn BlobStore,
    root: &Path,
    transfer: Transfer,
    bounds: &Bounds,
) -> Result<(Digest, TreeStats), StoreError> {
    // The root itself must be a directory, not a link to one (`ln -s ~ out/site`).
    let meta = fs::symlink_metadata(root).map_err(io(format!("stat {}", root.display())))?;
    if !meta.is_dir() {
        return Err(StoreError::Invalid(format!(
            "{} must be a directory, not a symlink or a file",
            root.display()
        )));
    }
    let mut stats = TreeStats::default();
    let bounds = Bounds {
        depth: bounds.depth.min(MAX_DEPTH),
        ..*bounds
    };
    let mut entries = 0;
    let mut walk = Walk {
        transfer,
        bounds: &bounds,
        stats: &mut stats,
        entries: &mut entries,
    };
    let d = put_dir(store, root, Path::new(""), 0, &mut walk)?;
    Ok((d, stats))
}

/// What one `put_dir` walk carries and counts.
struct Walk<'a> {
    transfer: Transfer,
    bounds: &'a Bounds,
    stats: &'a mut TreeStats,
    entries: &'a mut u64,
}

impl Walk<'_> {
    /// Count one more entry of `size` bytes at `shown`, refusing it past a bound.
    fn count(&mut self, shown: &Path, size: u64) -> Result<(), StoreError> {
        *self.entries += 1;
        if *self.entries > self.bounds.entries {
            return Err(StoreError::Invalid(format!(
                "more than {} files and directories (at {}); the output is too large",
                self.bounds.entries,
                shown.display()
            )));
        }
        if self.stats.bytes.saturating_add(size) > self.bounds.bytes {
            return Err(StoreError::Invalid(format!(
                "more than {} of files (at {}, {}); the output is too large",
                bytesize::ByteSize(self.bounds.bytes),
                shown.display(),
                bytesize::ByteSize(size)
            )));
        }
        if self
            .bounds
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            return Err(StoreError::Invalid(format!(
                "{DEADLINE_PASSED} (at {})",
                shown.display()
            )));
        }
        Ok(())
    }
}

/// The start of the error when [`Bounds::deadline`] passes.
pub const DEADLINE_PASSED: &str = "the time limit passed while the directory was being stored";

fn too_deep(shown: &Path, max: usize) -> StoreError {
    StoreError::Invalid(format!(
        "{} is nested more than {max} directories deep",
        shown.display()
    ))
}

fn put_dir(
    store: &dyn BlobStore,
    root: &Path,
    rel: &Path,
    depth: usize,
    walk: &mut Walk<'_>,
) -> Result<Digest, StoreError> {
    let dir = root.join(rel);
    let mut entries = Vec::new();
    for item in fs::read_dir(&dir).map_err(io(format!("list {}", dir.display())))? {
        let item = item.map_err(io(format!("list {}", dir.display())))?;
        let name = item.file_name().into_string().map_err(|n| {
            StoreError::Invalid(format!(
                "{}: file names must be UTF-8",
                rel.join(n).display()
            ))
        })?;
        check_name(&name)?;
        let path = item.path();
        let meta = fs::symlink_metadata(&path).map_err(io(format!("stat {}", path.display())))?;
        let shown = rel.join(&name);
        walk.count(&shown, if meta.is_file() { meta.len() } else { 0 })?;
        if meta.is_symlink() {
            let target =
                fs::read_link(&path).map_err(io(format!("readlink {}", path.display())))?;
            if !link_stays_inside(rel, &target) {
                return Err(StoreError::Invalid(format!(
                    "symlink {} -> {} leads outside the artifact; only relative links inside it are kept",
                    shown.display(),
                    target.display()
                )));
            }
            let target = target.into_os_string().into_string().map_err(|_| {
                StoreError::Invalid(format!("{}: link target must be UTF-8", shown.display()))
            })?;
            entries.push(Entry::Symlink { name, target });
        } else if meta.is_dir() {
            if depth + 1 > walk.bounds.depth {
                return Err(too_deep(&shown, walk.bounds.depth));
            }
            entries.push(Entry::Dir {
                digest: put_dir(store, root, &shown, depth + 1, walk)?,
                name,
            });
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let digest = match walk.transfer {
                Transfer::Copy => store.put_file(&path)?,
                Transfer::Share => store.put_owned(&path)?,
            };
            walk.stats.files += 1;
            walk.stats.bytes += meta.len();
            entries.push(Entry::File {
                name,
                digest,
                size: meta.len(),
                executable: meta.permissions().mode() & 0o100 != 0,
            });
        } else {
            return Err(StoreError::Invalid(format!(
                "{} is not a regular file, directory or symlink",
                shown.display()
            )));
        }
    }
    entries.sort_by(|a, b| a.name().cmp(b.name()));
    let tree = Tree {
        sluice_tree: 1,
        entries,
    };
    store.put_bytes(&serde_json::to_vec(&tree).expect("trees serialise"))
}

/// Read and check one tree.
pub fn get_tree(store: &dyn BlobStore, digest: &Digest) -> Result<Tree, StoreError> {
    decode(&store.get_bytes(digest)?)
        .map_err(|e| StoreError::Invalid(format!("{digest} is not a tree: {e}")))
}

/// Decode and check one tree manifest (bytes from the store: verified, but written by
/// whoever could put a blob).
pub fn decode(bytes: &[u8]) -> Result<Tree, String> {
    let tree: Tree = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    for e in &tree.entries {
        check_name(e.name()).map_err(|e| e.to_string())?;
    }
    Ok(tree)
}

/// Write the artifact `digest` into `dest` (created), verifying every blob.
pub fn materialize(
    store: &dyn BlobStore,
    digest: &Digest,
    dest: &Path,
) -> Result<TreeStats, StoreError> {
    materialize_with(store, digest, dest, Transfer::Copy)
}

/// [`materialize`] with a choice of [`Transfer`]. Shared files are read-only; executable
/// files are always copied (their mode cannot be shared with the blob's).
pub fn materialize_with(
    store: &dyn BlobStore,
    digest: &Digest,
    dest: &Path,
    transfer: Transfer,
) -> Result<TreeStats, StoreError> {
    let mut stats = TreeStats::default();
    materialize_dir(store, digest, dest, Path::new(""), transfer, &mut stats)?;
    Ok(stats)
}

fn materialize_dir(
    store: &dyn BlobStore,
    digest: &Digest,
    root: &Path,
    rel: &Path,
    transfer: Transfer,
    stats: &mut TreeStats,
) -> Result<(), StoreError> {
    if rel.components().count() > MAX_DEPTH {
        return Err(too_deep(rel, MAX_DEPTH));
    }
    let dir = root.join(rel);
    fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    for entry in get_tree(store, digest)?.entries {
        match entry {
            Entry::File {
                name,
                digest,
                size,
                executable,
            } => {
                use std::os::unix::fs::PermissionsExt;
                let path = dir.join(&name);
                if transfer == Transfer::Share && !executable {
                    store.link_to_file(&digest, &path)?;
                } else {
                    store.get_to_file(&digest, &path)?;
                    let mode = if executable { 0o755 } else { 0o644 };
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                        .map_err(io(format!("chmod {}", path.display())))?;
                }
                stats.files += 1;
                stats.bytes += size;
            }
            Entry::Dir { name, digest } => {
                materialize_dir(store, &digest, root, &rel.join(name), transfer, stats)?
            }
            Entry::Symlink { name, target } => {
                if !link_stays_inside(rel, Path::new(&target)) {
                    return Err(StoreError::Invalid(format!(
                        "symlink {} -> {target} leads outside the artifact",
                        rel.join(&name).display()
                    )));
                }
                std::os::unix::fs::symlink(&target, dir.join(&name))
                    .map_err(io(format!("symlink {}", rel.join(&name).display())))?;
            }
        }
    }
    Ok(())
}

/// Every file of an artifact with its path, for `sluice artifact ls`.
pub fn list(store: &dyn BlobStore, digest: &Digest) -> Result<Vec<(PathBuf, Entry)>, StoreError> {
    let mut out = Vec::new();
    list_into(store, digest, Path::new(""), &mut out)?;
    Ok(out)
}

fn list_into(
    store: &dyn BlobStore,
    digest: &Digest,
    rel: &Path,
    out: &mut Vec<(PathBuf, Entry)>,
) -> Result<(), StoreError> {
    if rel.components().count() > MAX_DEPTH {
        return Err(too_deep(rel, MAX_DEPTH));
    }
    for entry in get_tree(store, digest)?.entries {
        let path = rel.join(entry.name());
        if let Entry::Dir { digest, .. } = &entry {
            let d = *digest;
            out.push((path.clone(), entry));
            list_into(store, &d, &path, out)?;
        } else {
            out.push((path, entry));
        }
    }
    Ok(())
}

/// Verify an artifact: every tree and blob re-hashed.
pub fn verify(store: &dyn BlobStore, digest: &Digest) -> Result<TreeStats, StoreError> {
    let mut stats = TreeStats::default();
    for (_, entry) in list(store, digest)? {
        if let Entry::File { digest, .. } = entry {
            stats.bytes += store.verify(&digest)?;
            stats.files += 1;
        }
    }
    Ok(stats)
}
