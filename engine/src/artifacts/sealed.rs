//! Artifacts sealed at rest, per tenant.
//!
//! A [`SealedStore`] is one tenant's view of the artifact store. A blob's address is a
//! **keyed** blake3 of its content under the tenant's address key, so equal content in two
//! tenants gets unrelated addresses and a digest says nothing across tenants; within a tenant
//! it is as stable as a plain digest. The bytes at rest are AES-256-GCM ciphertext in 1 MiB
//! chunks, each with its own tag, under a key made for the blob from the tenant's sealing key
//! and a random salt:
//!
//! ```text
//! ciphertext (as long as the content) | tag × chunks (16 bytes each) | trailer (64 bytes)
//! trailer = "sluice-sealed-1\0" | salt (32) | chunk size (u32 LE) | 0 (u32) | length (u64 LE)
//! ```
//!
//! The ciphertext is exactly as long as the content, so an action's output is sealed where it
//! lies (no second copy of a large file is written) and its tags and trailer appended. Every
//! chunk's nonce is its index and every chunk authenticates the trailer, so chunks cannot be
//! moved, dropped or truncated unseen. Every read checks each chunk's tag and then the keyed
//! hash of the whole content against the address (a valid ciphertext of other content, say
//! a swapped file, is refused as well). Large blobs are processed a window at a time, so memory
//! stays bounded whatever their size; within a window, hashing and chunks run on every core.
//!
//! Where sealed files are kept is the backend's business ([`SealedObjects`]): a directory per
//! tenant in the embedded store, the object store (with a local cache of ciphertext) on NATS.
use super::{BlobStore, Digest, StoreError, io};
use rayon::prelude::*;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per sealed chunk.
pub const CHUNK: usize = 1 << 20;
/// Bytes processed at a time (hashed, then sealed or opened on every core).
const WINDOW: usize = 8 * CHUNK;
const TAG: usize = 16;
const TRAILER: usize = 64;
const MAGIC: &[u8; 16] = b"sluice-sealed-1\0";
/// Below this, an owned file is sealed into a new file rather than in place (not worth a map).
const IN_PLACE_MIN: u64 = 4 * CHUNK as u64;

/// Where a backend keeps sealed files: by namespace (the tenant) and address. Nothing here
/// reads the content; [`SealedStore`] checks everything it reads.
pub trait SealedObjects: Send + Sync {
    /// A local file holding the sealed blob, fetched first where the blobs live elsewhere.
    fn sealed_path(&self, ns: &str, address: &Digest) -> Result<PathBuf, StoreError>;
    /// Whether the sealed blob is kept (not checked).
    fn has_sealed(&self, ns: &str, address: &Digest) -> bool;
    /// Keep the sealed file at `file` as `address`: moved in (copied only across
    /// filesystems), and shared where the backend shares.
    fn keep_sealed(&self, ns: &str, address: &Digest, file: &Path) -> Result<(), StoreError>;
    /// Forget the sealed blob (a damaged one: the next put of its content stores it again).
    fn drop_sealed(&self, ns: &str, address: &Digest) -> Result<(), StoreError>;
    /// A directory for temporary files on the same filesystem as the kept ones.
    fn sealed_tmp(&self) -> PathBuf;
    /// Bytes kept in namespace `ns` (sealed files as stored): what a tenant's quota of
    /// artifact bytes counts.
    fn sealed_bytes(&self, ns: &str) -> Result<u64, StoreError>;
    /// Mark the sealed blob as used now (a put found it kept), so the collector spares it as
    /// it spares a new one; `false`: it is not kept (here: where every engine finds it).
    fn touch_sealed(&self, ns: &str, address: &Digest) -> Result<bool, StoreError>;
    /// Every sealed blob of every namespace, with when it was last kept or used.
    fn list_sealed(&self) -> Result<Vec<SealedInfo>, StoreError>;
    /// Remove the sealed blob if it was last kept or used before `before` (checked as it is
    /// removed: a put that uses it meanwhile keeps it); the bytes freed, if it went.
    fn drop_unused_sealed(
        &self,
        ns: &str,
        address: &Digest,
        before: std::time::SystemTime,
    ) -> Result<Option<u64>, StoreError>;
    /// Where an engine keeps copies of shared blobs: forget those the shared store's
    /// `listed` no longer holds (another engine collected them), cached before `before`;
    /// returns how many. A store of its own keeps no copies.
    fn forget_removed(
        &self,
        _listed: &[SealedInfo],
        _before: std::time::SystemTime,
    ) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// A sealed blob as listed for the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedInfo {
    /// Its namespace (tenant).
    pub ns: String,
    /// Its address.
    pub address: Digest,
    /// Bytes as stored.
    pub bytes: u64,
    /// When it was last kept or used (a backend may note a use only once in a while: within
    /// [`USE_NOTED_WITHIN`]).
    pub used_at: std::time::SystemTime,
}

/// A use of a sealed blob is noted at most this long after the last one noted (a use is a
/// write where the blobs are shared): the collector's grace must be longer.
pub const USE_NOTED_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

/// A tenant's artifact keys, derived from one root key (the tenant's data key): rotating the
/// master key, which re-seals data keys, leaves them unchanged.
#[derive(Clone)]
pub struct TenantKey {
    address: [u8; 32],
    seal: [u8; 32],
}

impl TenantKey {
    /// The keys derived from `root`.
    pub fn derive(root: &[u8; 32]) -> Self {
        TenantKey {
            address: blake3::derive_key("sluice 2026-12 artifact addresses v1", root),
            seal: blake3::derive_key("sluice 2026-12 artifact sealing v1", root),
        }
    }

    /// The address content would have under this key.
    pub fn address_of(&self, bytes: &[u8]) -> Digest {
        Digest(*blake3::keyed_hash(&self.address, bytes).as_bytes())
    }

    fn blob_key(&self, salt: &[u8; 32]) -> LessSafeKey {
        let key = blake3::keyed_hash(&self.seal, salt);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key"))
    }
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantKey(…)")
    }
}

/// The end of a sealed file.
struct Trailer {
    salt: [u8; 32],
    len: u64,
}

impl Trailer {
    fn new(len: u64) -> Result<Self, StoreError> {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt)
            .map_err(|e| StoreError::Invalid(format!("no randomness for a blob key: {e}")))?;
        Ok(Trailer { salt, len })
    }

    fn encode(&self) -> [u8; TRAILER] {
        let mut out = [0u8; TRAILER];
        out[..16].copy_from_slice(MAGIC);
        out[16..48].copy_from_slice(&self.salt);
        out[48..52].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        out[56..64].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; TRAILER]) -> Option<Self> {
        let chunk = u32::from_le_bytes(bytes[48..52].try_into().ok()?);
        if &bytes[..16] != MAGIC || chunk as usize != CHUNK || bytes[52..56] != [0; 4] {
            return None;
        }
        Some(Trailer {
            salt: bytes[16..48].try_into().ok()?,
            len: u64::from_le_bytes(bytes[56..64].try_into().ok()?),
        })
    }

    /// Chunks (an empty blob has one, empty, so its tag still vouches for the trailer).
    fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK as u64).max(1)
    }

    fn sealed_len(&self) -> u64 {
        self.len + self.chunks() * TAG as u64 + TRAILER as u64
    }
}

fn nonce(chunk: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&chunk.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Hash a window of content, then seal its chunks in place (on every core); returns their tags.
fn seal_window(
    hasher: &mut blake3::Hasher,
    key: &LessSafeKey,
    aad: &[u8; TRAILER],
    window: &mut [u8],
    first_chunk: u64,
) -> Vec<[u8; TAG]> {
    hash(hasher, window);
    let seal = |index: u64, chunk: &mut [u8]| {
        let tag = key
            .seal_in_place_separate_tag(nonce(index), Aad::from(aad), chunk)
            .expect("AES-GCM seals any chunk this size");
        tag.as_ref().try_into().expect("16-byte tag")
    };
    if window.is_empty() {
        // The one chunk of an empty blob (par_chunks gives none).
        return vec![seal(first_chunk, window)];
    }
    window
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(i, chunk)| seal(first_chunk + i as u64, chunk))
        .collect()
}

/// Open a window's chunks in place (on every core), then hash the content; `false` if a tag
/// does not match.
fn open_window(
    hasher: &mut blake3::Hasher,
    key: &LessSafeKey,
    aad: &[u8; TRAILER],
    window: &mut [u8],
    tags: &[u8],
    first_chunk: u64,
) -> bool {
    let open = |index: u64, chunk: &mut [u8], tag: &[u8]| {
        let Ok(tag) = <[u8; TAG]>::try_from(tag) else {
            return false;
        };
        key.open_in_place_separate_tag(nonce(index), Aad::from(aad), Tag::from(tag), chunk, 0..)
            .is_ok()
    };
    let opened = if window.is_empty() {
        // The one chunk of an empty blob (par_chunks gives none).
        open(first_chunk, window, tags)
    } else {
        tags.len() == window.len().div_ceil(CHUNK) * TAG
            && window
                .par_chunks_mut(CHUNK)
                .zip(tags.par_chunks(TAG))
                .enumerate()
                .all(|(i, (chunk, tag))| open(first_chunk + i as u64, chunk, tag))
    };
    if opened {
        hash(hasher, window);
    }
    opened
}

fn hash(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= 256 * 1024 {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// A window handed on by value; the sink gives back a buffer to fill next.
type Sink<'a> = &'a mut dyn FnMut(Vec<u8>) -> Result<Vec<u8>, StoreError>;

/// Run `produce`, writing the windows it hands its sink to `file` from its start, in order, on
/// a thread of its own, so the disk's time (a file's pages) overlaps the next window's work.
/// Windows move between the threads, never copied; at most three are in hand. The file is
/// written when this returns `Ok`.
fn write_behind(
    file: fs::File,
    what: &str,
    produce: impl FnOnce(Sink<'_>) -> Result<u64, StoreError>,
) -> Result<(), StoreError> {
    use std::sync::mpsc;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(0);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut at = 0u64;
            for buf in full_rx {
                file.write_all_at(&buf, at)?;
                at += buf.len() as u64;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let produced = produce(&mut |window| {
            // A writer that stopped says why below.
            full_tx
                .send(window)
                .map_err(|_| StoreError::Invalid(String::new()))?;
            Ok(empty_rx.try_recv().unwrap_or_default())
        });
        drop(full_tx);
        let written = writer.join().expect("the writer thread does not panic");
        match (produced, written) {
            (_, Err(e)) => Err(StoreError::Io {
                context: format!("write {what}"),
                source: e,
            }),
            (Err(e), Ok(())) => Err(e),
            (Ok(_), Ok(())) => Ok(()),
        }
    })
}

/// Reserve a new file's blocks before it is written: this machine's ext4 then spends a fifth
/// less of the kernel's time per page written. A filesystem that cannot is written as it is.
fn preallocate(file: &fs::File, len: u64) {
    if len > 0 {
        let _ = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len);
    }
}

/// Content to seal: a file's, or bytes in memory (read a window at a time either way).
#[derive(Clone, Copy)]
enum Plain<'a> {
    File(&'a fs::File),
    Bytes(&'a [u8]),
}

impl Plain<'_> {
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match self {
            Plain::File(f) => f.read_exact_at(buf, at),
            Plain::Bytes(b) => {
                let at = at as usize;
                buf.copy_from_slice(&b[at..at + buf.len()]);
                Ok(())
            }
        }
    }
}

/// One tenant's artifacts, sealed.
pub struct SealedStore {
    objects: Arc<dyn SealedObjects>,
    ns: String,
    key: TenantKey,
    /// The most bytes the namespace may keep (`u64::MAX`: no limit), set from the tenant's
    /// quota by its [`super::tenants::TenantStores`].
    limit: AtomicU64,
}

impl SealedStore {
    /// The artifacts of namespace `ns` (a tenant) in `objects`, under `key`.
    pub fn new(objects: Arc<dyn SealedObjects>, ns: &str, key: TenantKey) -> Self {
        SealedStore {
            objects,
            ns: ns.to_string(),
            key,
            limit: AtomicU64::new(u64::MAX),
        }
    }

    /// Keep no new blob that would bring the namespace's bytes over `limit` (`None`: any).
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Refuse a new blob of `len` bytes that the namespace's limit has no room for. Puts
    /// running at once are each checked against what is kept, so together they may pass
    /// the limit by what they are writing; the next put sees it.
    fn check_room(&self, len: u64) -> Result<(), StoreError> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == u64::MAX {
            return Ok(());
        }
        let used = self.objects.sealed_bytes(&self.ns)?;
        if used.saturating_add(len) <= limit {
            return Ok(());
        }
        use sluice_core::model::units::size;
        Err(StoreError::QuotaExceeded(format!(
            "tenant `{}` may keep {} of artifacts and keeps {}; this artifact needs {} more",
            self.ns,
            size(limit),
            size(used),
            size(len)
        )))
    }

    fn temp(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.objects.sealed_tmp();
        tempfile::Builder::new()
            .prefix(".sluice-seal-")
            .tempfile_in(&dir)
            .map_err(io(format!("create a temporary file in {}", dir.display())))
    }

    /// Keep a sealed file under its address, unless that address is kept already.
    fn keep(&self, address: Digest, file: &Path) -> Result<Digest, StoreError> {
        // Kept already: noted as used, so the collector does not take it while a record about
        // to name it is written.
        if self.objects.touch_sealed(&self.ns, &address)? {
            let _ = fs::remove_file(file);
            return Ok(address);
        }
        let len = fs::metadata(file).map_err(io("stat a sealed blob"))?.len();
        if let Err(e) = self.check_room(len) {
            // Refused: not kept. (The count unreadable: left where it is, for a retry.)
            if matches!(e, StoreError::QuotaExceeded(_)) {
                let _ = fs::remove_file(file);
            }
            return Err(e);
        }
        self.objects.keep_sealed(&self.ns, &address, file)?;
        Ok(address)
    }

    /// Seal the `len` bytes of `src` into `dest` (a new file, or `src` itself written back
    /// over), a window at a time, `dest` written by a thread of its own while the next window
    /// is sealed; then append the tags and trailer. Returns the content's address.
    fn seal_into(
        &self,
        src: Plain<'_>,
        dest: fs::File,
        len: u64,
        what: &str,
    ) -> Result<Digest, StoreError> {
        let trailer = Trailer::new(len)?;
        let (aad, key) = (trailer.encode(), self.key.blob_key(&trailer.salt));
        let mut hasher = blake3::Hasher::new_keyed(&self.key.address);
        let mut tags = Vec::with_capacity(trailer.chunks() as usize * TAG);
        let end = dest.try_clone().map_err(io(format!("seal {what}")))?;
        write_behind(dest, what, |sink| {
            let mut window = Vec::new();
            let mut at = 0u64;
            while at < len {
                let n = ((len - at) as usize).min(WINDOW);
                window.resize(n, 0);
                src.read_at(&mut window, at)
                    .map_err(io(format!("read {what}")))?;
                for tag in seal_window(&mut hasher, &key, &aad, &mut window, at / CHUNK as u64) {
                    tags.extend_from_slice(&tag);
                }
                window = sink(window)?;
                at += n as u64;
            }
            Ok(len)
        })?;
        if len == 0 {
            tags.extend_from_slice(&seal_window(&mut hasher, &key, &aad, &mut [], 0)[0]);
        }
        end.write_all_at(&tags, len)
            .and_then(|()| end.write_all_at(&aad, len + tags.len() as u64))
            .map_err(io(format!("seal {what}")))?;
        Ok(Digest(*hasher.finalize().as_bytes()))
    }

    /// Seal `len` bytes read from `src` into a new temporary file; returns it and the address.
    fn seal_from(
        &self,
        src: Plain<'_>,
        len: u64,
        what: &str,
    ) -> Result<(tempfile::TempPath, Digest), StoreError> {
        let temp = self.temp()?;
        let dest = temp.reopen().map_err(io("write a sealed blob"))?;
        preallocate(&dest, Trailer { salt: [0; 32], len }.sealed_len());
        let address = self.seal_into(src, dest, len, what)?;
        Ok((temp.into_temp_path(), address))
    }

    /// Seal a file we own where it lies: its content is written back over itself as
    /// ciphertext (through the page cache: this machine's kernel makes a writable map of the
    /// file cost more than the sealing), then moved into the store.
    fn seal_in_place(&self, path: &Path) -> Result<Digest, StoreError> {
        let what = path.display().to_string();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("open {what}")))?;
        let len = file.metadata().map_err(io(format!("stat {what}")))?.len();
        let back = file.try_clone().map_err(io(format!("open {what}")))?;
        let address = self.seal_into(Plain::File(&file), back, len, &what)?;
        drop(file);
        self.keep(address, path)
    }

    /// The sealed blob's file and trailer (the trailer checked for form, nothing opened yet).
    fn sealed(&self, address: &Digest) -> Result<(fs::File, Trailer, [u8; TRAILER]), StoreError> {
        let path = self.objects.sealed_path(&self.ns, address)?;
        let file = fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(*address),
            _ => StoreError::Io {
                context: format!("read {address}"),
                source: e,
            },
        })?;
        let size = file
            .metadata()
            .map_err(io(format!("stat {address}")))?
            .len();
        let tampered = || StoreError::Tampered(*address);
        if size < (TAG + TRAILER) as u64 {
            return Err(tampered());
        }
        let mut aad = [0u8; TRAILER];
        file.read_exact_at(&mut aad, size - TRAILER as u64)
            .map_err(io(format!("read {address}")))?;
        let trailer = Trailer::decode(&aad).ok_or_else(tampered)?;
        if trailer.len >= size || trailer.sealed_len() != size {
            return Err(tampered());
        }
        Ok((file, trailer, aad))
    }

    /// Open the sealed blob and hand its content to `sink` a window at a time, every chunk's
    /// tag checked before its content is handed on and the content's address checked at the
    /// end; returns the content's length. A sink must not make anything visible before this
    /// returns `Ok`.
    fn open_into(&self, address: &Digest, sink: Sink<'_>) -> Result<u64, StoreError> {
        let sealed = self.sealed(address)?;
        self.open_sealed_into(address, sealed, sink)
    }

    fn open_sealed_into(
        &self,
        address: &Digest,
        (file, trailer, aad): (fs::File, Trailer, [u8; TRAILER]),
        sink: Sink<'_>,
    ) -> Result<u64, StoreError> {
        let tampered = || StoreError::Tampered(*address);
        let key = self.key.blob_key(&trailer.salt);
        let mut tags = vec![0u8; trailer.chunks() as usize * TAG];
        file.read_exact_at(&mut tags, trailer.len)
            .map_err(io(format!("read {address}")))?;
        let mut hasher = blake3::Hasher::new_keyed(&self.key.address);
        let mut window = Vec::new();
        let mut at = 0u64;
        while at < trailer.len {
            let n = ((trailer.len - at) as usize).min(WINDOW);
            window.resize(n, 0);
            file.read_exact_at(&mut window, at)
                .map_err(io(format!("read {address}")))?;
            let first = at / CHUNK as u64;
            let these = &tags[first as usize * TAG..][..n.div_ceil(CHUNK) * TAG];
            if !open_window(&mut hasher, &key, &aad, &mut window, these, first) {
                return Err(tampered());
            }
            window = sink(window)?;
            at += n as u64;
        }
        if trailer.len == 0 && !open_window(&mut hasher, &key, &aad, &mut [], &tags, 0) {
            return Err(tampered());
        }
        let actual = Digest(*hasher.finalize().as_bytes());
        if actual != *address {
            return Err(StoreError::Corrupted {
                expected: *address,
                actual,
            });
        }
        Ok(trailer.len)
    }
}

impl BlobStore for SealedStore {
    fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        let what = path.display().to_string();
        let src = fs::File::open(path).map_err(io(format!("read {what}")))?;
        let len = src.metadata().map_err(io(format!("stat {what}")))?.len();
        let (temp, address) = self.seal_from(Plain::File(&src), len, &what)?;
        let kept = self.keep(address, &temp);
        // Kept: the file was moved; not kept: it goes with the guard.
        drop(temp);
        kept
    }

    fn put_owned(&self, path: &Path) -> Result<Digest, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path).map_err(io(format!("stat {}", path.display())))?;
        // A file with other names is not ours to change (see `LocalStore::put_owned`).
        if meta.nlink() > 1 || meta.len() < IN_PLACE_MIN || !meta.is_file() {
            let address = self.put_file(path)?;
            let _ = fs::remove_file(path);
            return Ok(address);
        }
        self.seal_in_place(path)
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let address = self.key.address_of(bytes);
        if self.objects.touch_sealed(&self.ns, &address)? {
            return Ok(address);
        }
        let (sealed, actual) = self.seal_from(
            Plain::Bytes(bytes),
            bytes.len() as u64,
            "a blob being stored",
        )?;
        debug_assert_eq!(actual, address);
        let kept = self.keep(actual, &sealed);
        drop(sealed);
        kept
    }

    fn get_to_file(&self, address: &Digest, dest: &Path) -> Result<(), StoreError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".sluice-tmp-")
            .tempfile_in(dir)
            .map_err(io(format!("create a temporary file in {}", dir.display())))?;
        let what = dest.display().to_string();
        let file = temp.reopen().map_err(io(format!("write {what}")))?;
        let sealed = self.sealed(address)?;
        preallocate(&file, sealed.1.len);
        write_behind(file, &what, |sink| {
            self.open_sealed_into(address, sealed, sink)
        })?;
        temp.persist(dest).map_err(|e| StoreError::Io {
            context: format!("write {what}"),
            source: e.error,
        })?;
        Ok(())
    }

    fn get_bytes(&self, address: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.open_into(address, &mut |window| {
            out.extend_from_slice(&window);
            Ok(window)
        })?;
        Ok(out)
    }

    fn verify(&self, address: &Digest) -> Result<u64, StoreError> {
        self.open_into(address, &mut Ok)
    }

    fn size_of(&self, address: &Digest) -> Result<Option<u64>, StoreError> {
        self.sealed(address)
            .map(|(_, trailer, _)| Some(trailer.len))
    }

    fn contains(&self, address: &Digest) -> bool {
        self.objects.has_sealed(&self.ns, address)
    }

    fn touch(&self, address: &Digest) -> Result<bool, StoreError> {
        self.objects.touch_sealed(&self.ns, address)
    }

    fn discard_corrupted(&self, address: &Digest) -> Result<bool, StoreError> {
        match self.verify(address) {
            Err(StoreError::Corrupted { .. } | StoreError::Tampered(_)) => {
                self.objects.drop_sealed(&self.ns, address)?;
                Ok(true)
            }
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
