//! The embedded blob store: one file per blob under `<root>/blobs/<2 hex>/<62 hex>`.
//!
//! Writes go to a temporary file in `<root>/tmp` and are renamed into place, so a crash
//! never leaves a partial blob under a digest name. Copies use the kernel's copy path
//! (`copy_file_range`, reflinks where the filesystem has them) and hashing memory-maps the
//! copy, so a blob of any size needs no more than a constant amount of anonymous memory.
use super::{BlobStore, Digest, StoreError, io};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Blobs in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Bytes kept in each sealed namespace: counted from the files on first ask, then kept up
    /// to date by this store's own keeps and drops (shared by its clones; one process owns
    /// an embedded data directory).
    sealed_usage: Arc<Mutex<HashMap<String, u64>>>,
}

impl LocalStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs")).map_err(io(format!("create {}", root.display())))?;
        fs::create_dir_all(root.join("tmp")).map_err(io(format!("create {}", root.display())))?;
        Ok(LocalStore {
            root,
            sealed_usage: Arc::default(),
        })
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs").join(&hex[..2]).join(&hex[2..])
    }

    fn temp_in(&self, dir: &Path) -> Result<tempfile::TempPath, StoreError> {
        Ok(tempfile::Builder::new()
            .prefix(".sluice-tmp-")
            .tempfile_in(dir)
            .map_err(io(format!("create a temporary file in {}", dir.display())))?
            .into_temp_path())
    }

    /// A copy of `src` in a new temporary file in `dir`, with `src`'s permissions (as
    /// `fs::copy` makes). The copy goes into the file as created: `fs::copy` would open it
    /// again with `O_TRUNC`, and ext4 (`auto_da_alloc`) then flushes a truncated-and-rewritten
    /// file on close — a quarter of a second per GiB spent waiting on the disk.
    fn copy_to_temp(
        &self,
        src: &Path,
        dir: &Path,
        what: &str,
    ) -> Result<tempfile::TempPath, StoreError> {
        let mut temp = tempfile::Builder::new()
            .prefix(".sluice-tmp-")
            .tempfile_in(dir)
            .map_err(io(format!("create a temporary file in {}", dir.display())))?;
        let mut from = fs::File::open(src).map_err(io(format!("read {what}")))?;
        let perms = from
            .metadata()
            .map_err(io(format!("stat {what}")))?
            .permissions();
        // File to file: the kernel copies (copy_file_range), as `fs::copy` does.
        std::io::copy(&mut from, temp.as_file_mut()).map_err(io(format!("read {what}")))?;
        temp.as_file()
            .set_permissions(perms)
            .map_err(io("set permissions of a copy"))?;
        Ok(temp.into_temp_path())
    }

    /// Move a fully written, hashed temp file to its digest name (dedup if already there).
    fn commit(&self, temp: tempfile::TempPath, digest: Digest) -> Result<Digest, StoreError> {
        let dest = self.blob_path(&digest);
        if intact(&dest, &digest) {
            return Ok(digest); // dedup: the temp file is removed on drop
        }
        fs::create_dir_all(dest.parent().expect("blob path has a parent"))
            .map_err(io("create blob directory"))?;
        let mut perms = fs::metadata(&temp)
            .map_err(io("stat temporary blob"))?
            .permissions();
        perms.set_readonly(true);
        fs::set_permissions(&temp, perms).map_err(io("make blob read-only"))?;
        temp.persist(&dest).map_err(|e| StoreError::Io {
            context: format!("store {digest}"),
            source: e.error,
        })?;
        Ok(digest)
    }
}

/// Whether the blob at `path` exists and still hashes to `digest`. A corrupted blob must not
/// absorb new puts of its content (a re-run deduplicated onto it and failed again): the put
/// replaces it instead.
fn intact(path: &Path, digest: &Digest) -> bool {
    path.exists() && hash_file(path).is_ok_and(|(actual, _)| actual == *digest)
}

/// Hash a file without reading it into memory: mmap + multithreaded for large files.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), StoreError> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(io(format!("hash {}", path.display())))?;
    Ok((Digest(*hasher.finalize().as_bytes()), hasher.count()))
}

impl BlobStore for LocalStore {
    fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        // Hash the copy we own, not the source, so a source changing under us cannot put
        // bytes under the wrong name.
        let temp = self.copy_to_temp(path, &self.root.join("tmp"), &path.display().to_string())?;
        let (digest, _) = hash_file(&temp)?;
        self.commit(temp, digest)
    }

    fn put_owned(&self, path: &Path) -> Result<Digest, StoreError> {
        use std::os::unix::fs::MetadataExt;
        // A file with other names (a hard link from somewhere the writer could reach) is not
        // ours to take: moving it would turn someone else's file into a blob.
        if fs::symlink_metadata(path)
            .map_err(io(format!("stat {}", path.display())))?
            .nlink()
            > 1
        {
            return self.put_file(path);
        }
        // Hash in place, then rename into the store: no copy at all on the same filesystem.
        let (digest, _) = hash_file(path)?;
        let dest = self.blob_path(&digest);
        if intact(&dest, &digest) {
            let _ = fs::remove_file(path);
            return Ok(digest);
        }
        fs::create_dir_all(dest.parent().expect("blob path has a parent"))
            .map_err(io("create blob directory"))?;
        let mut perms = fs::metadata(path)
            .map_err(io(format!("stat {}", path.display())))?
            .permissions();
        perms.set_readonly(true);
        fs::set_permissions(path, perms).map_err(io("make blob read-only"))?;
        match fs::rename(path, &dest) {
            Ok(()) => Ok(digest),
            // Another filesystem: fall back to copying.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.put_file(path),
            Err(e) => Err(StoreError::Io {
                context: format!("store {digest}"),
                source: e,
            }),
        }
    }

    fn link_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        self.verify(digest)?;
        match fs::hard_link(self.blob_path(digest), dest) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.get_to_file(digest, dest),
            Err(e) => Err(StoreError::Io {
                context: format!("link {digest} to {}", dest.display()),
                source: e,
            }),
        }
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if intact(&self.blob_path(&digest), &digest) {
            return Ok(digest);
        }
        let temp = self.temp_in(&self.root.join("tmp"))?;
        fs::write(&temp, bytes).map_err(io("write blob"))?;
        self.commit(temp, digest)
    }

    fn get_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        let src = self.blob_path(digest);
        if !src.exists() {
            return Err(StoreError::NotFound(*digest));
        }
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = self.copy_to_temp(&src, dir, &digest.to_string())?;
        // Verify the bytes actually delivered, then make them visible.
        let (actual, _) = hash_file(&temp)?;
        if actual != *digest {
            return Err(StoreError::Corrupted {
                expected: *digest,
                actual,
            });
        }
        let mut perms = fs::metadata(&temp).map_err(io("stat"))?.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&temp, perms).map_err(io("chmod"))?;
        temp.persist(dest).map_err(|e| StoreError::Io {
            context: format!("write {}", dest.display()),
            source: e.error,
        })?;
        Ok(())
    }

    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let bytes = fs::read(self.blob_path(digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(*digest),
            _ => StoreError::Io {
                context: format!("read {digest}"),
                source: e,
            },
        })?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::Corrupted {
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    fn size_of(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(*digest))
            }
            Err(e) => Err(StoreError::Io {
                context: format!("stat {digest}"),
                source: e,
            }),
        }
    }

    fn verify(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest);
        if !path.exists() {
            return Err(StoreError::NotFound(*digest));
        }
        let (actual, size) = hash_file(&path)?;
        if actual != *digest {
            return Err(StoreError::Corrupted {
                expected: *digest,
                actual,
            });
        }
        Ok(size)
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    fn discard_corrupted(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.verify(digest) {
            Err(StoreError::Corrupted { .. }) => {
                fs::remove_file(self.blob_path(digest))
                    .map_err(io(format!("remove the corrupted blob {digest}")))?;
                Ok(true)
            }
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl LocalStore {
    /// Every blob stored here, by the name it is stored under (not verified).
    pub fn digests(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        let blobs = self.root.join("blobs");
        for dir in fs::read_dir(&blobs).map_err(io(format!("list {}", blobs.display())))? {
            let dir = dir.map_err(io("list blobs"))?;
            let prefix = dir.file_name().to_string_lossy().into_owned();
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = format!("blake3:{prefix}{}", file.file_name().to_string_lossy());
                if let Ok(d) = name.parse() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Sealed blobs (see [`super::sealed`]) live beside the plain ones, a directory per namespace:
/// `<root>/sealed/<ns>/<2 hex>/<62 hex>`.
impl super::SealedObjects for LocalStore {
    fn sealed_path(&self, ns: &str, address: &Digest) -> Result<PathBuf, StoreError> {
        let path = self.sealed_blob_path(ns, address)?;
        if !path.exists() {
            return Err(StoreError::NotFound(*address));
        }
        Ok(path)
    }

    fn has_sealed(&self, ns: &str, address: &Digest) -> bool {
        self.sealed_blob_path(ns, address).is_ok_and(|p| p.exists())
    }

    fn keep_sealed(&self, ns: &str, address: &Digest, file: &Path) -> Result<(), StoreError> {
        let dest = self.sealed_blob_path(ns, address)?;
        fs::create_dir_all(dest.parent().expect("blob path has a parent"))
            .map_err(io("create blob directory"))?;
        let meta = fs::metadata(file).map_err(io(format!("stat {}", file.display())))?;
        let mut perms = meta.permissions();
        perms.set_readonly(true);
        fs::set_permissions(file, perms).map_err(io("make blob read-only"))?;
        // Counted under the lock, so a first count (a walk) never misses or doubles it.
        let mut usage = self.sealed_usage.lock().expect("sealed usage");
        let mut new = !dest.exists();
        match fs::rename(file, &dest) {
            Ok(()) => {}
            // Another filesystem: copied onto ours (outside the lock), then moved into place.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                drop(usage);
                let temp = self.copy_to_temp(file, &self.root.join("tmp"), "a sealed blob")?;
                let _ = fs::remove_file(file);
                usage = self.sealed_usage.lock().expect("sealed usage");
                new = !dest.exists();
                temp.persist(&dest).map_err(|e| StoreError::Io {
                    context: format!("store {address}"),
                    source: e.error,
                })?;
            }
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("store {address}"),
                    source: e,
                });
            }
        }
        if let Some(used) = usage.get_mut(ns).filter(|_| new) {
            *used += meta.len();
        }
        Ok(())
    }

    fn drop_sealed(&self, ns: &str, address: &Digest) -> Result<(), StoreError> {
        let path = self.sealed_blob_path(ns, address)?;
        let mut usage = self.sealed_usage.lock().expect("sealed usage");
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(path) {
            Ok(()) => {
                if let Some(used) = usage.get_mut(ns) {
                    *used = used.saturating_sub(len);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io {
                context: format!("remove {address}"),
                source: e,
            }),
        }
    }

    fn sealed_bytes(&self, ns: &str) -> Result<u64, StoreError> {
        let mut usage = self.sealed_usage.lock().expect("sealed usage");
        if let Some(used) = usage.get(ns) {
            return Ok(*used);
        }
        let dir = self
            .sealed_blob_path(ns, &Digest([0; 32]))?
            .parent()
            .and_then(Path::parent)
            .expect("a namespace directory")
            .to_path_buf();
        let mut used = 0;
        if let Ok(prefixes) = fs::read_dir(&dir) {
            for prefix in prefixes.flatten() {
                let Ok(files) = fs::read_dir(prefix.path()) else {
                    continue;
                };
                used += files
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum::<u64>();
            }
        }
        usage.insert(ns.to_string(), used);
        Ok(used)
    }

    fn sealed_tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn touch_sealed(&self, ns: &str, address: &Digest) -> Result<bool, StoreError> {
        let path = self.sealed_blob_path(ns, address)?;
        // Under the lock the collector removes under: a blob touched is not removed as unused.
        let _usage = self.sealed_usage.lock().expect("sealed usage");
        match fs::File::open(&path) {
            Ok(file) => {
                file.set_modified(std::time::SystemTime::now())
                    .map_err(io(format!("note a use of {address}")))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io {
                context: format!("open {address}"),
                source: e,
            }),
        }
    }

    fn list_sealed(&self) -> Result<Vec<super::SealedInfo>, StoreError> {
        let mut out = Vec::new();
        let Ok(namespaces) = fs::read_dir(self.root.join("sealed")) else {
            return Ok(out);
        };
        // `<ns>/<2 hex>/<62 hex>`; anything else there is not a blob of ours.
        for ns in namespaces.flatten() {
            let Some(name) = ns.file_name().to_str().map(str::to_string) else {
                continue;
            };
            for prefix in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let prefix_name = prefix.file_name();
                for file in fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
                    let hex = format!(
                        "blake3:{}{}",
                        prefix_name.to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    let (Ok(address), Ok(meta)) = (hex.parse::<Digest>(), file.metadata()) else {
                        continue;
                    };
                    if meta.is_file() {
                        out.push(super::SealedInfo {
                            ns: name.clone(),
                            address,
                            bytes: meta.len(),
                            used_at: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn drop_unused_sealed(
        &self,
        ns: &str,
        address: &Digest,
        before: std::time::SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        let path = self.sealed_blob_path(ns, address)?;
        let mut usage = self.sealed_usage.lock().expect("sealed usage");
        let Ok(meta) = fs::metadata(&path) else {
            return Ok(None);
        };
        if meta.modified().map_err(io(format!("stat {address}")))? >= before {
            return Ok(None);
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(used) = usage.get_mut(ns) {
                    *used = used.saturating_sub(meta.len());
                }
                Ok(Some(meta.len()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                context: format!("remove {address}"),
                source: e,
            }),
        }
    }
}

impl LocalStore {
    /// Where a sealed blob lives; `ns` must be one plain path part.
    pub(crate) fn sealed_blob_path(&self, ns: &str, d: &Digest) -> Result<PathBuf, StoreError> {
        let plain = !ns.is_empty()
            && !ns.starts_with('.')
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain {
            return Err(StoreError::Invalid(format!(
                "`{ns}` cannot name an artifact namespace"
            )));
        }
        let hex = d.hex();
        Ok(self
            .root
            .join("sealed")
            .join(ns)
            .join(&hex[..2])
            .join(&hex[2..]))
    }
}
