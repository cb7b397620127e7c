//! Content-addressed artifacts: blobs named by their blake3 digest, and trees (directory
//! manifests, themselves blobs) that name an artifact as a whole — like git trees or the
//! Bazel CAS. Every read is verified against the digest.
//!
//! [`BlobStore`] is the edge: [`local::LocalStore`] is the embedded backend (a directory);
//! a NATS Object Store backend implements the same trait. Trees are built on top in [`tree`].

pub mod collect;
pub mod local;
pub mod sealed;
pub mod tenants;
pub mod tree;

pub use local::LocalStore;
pub use sealed::{SealedInfo, SealedObjects, SealedStore, TenantKey};
pub use tree::{Entry, Tree};

use std::path::Path;

pub use sluice_core::Digest;

/// Errors from a blob store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No blob with that digest.
    #[error("{0} is not in the artifact store")]
    NotFound(Digest),
    /// The stored bytes no longer hash to their name.
    #[error("{expected} is corrupted: its content hashes to {actual}; it was not used")]
    Corrupted {
        /// The blob's name.
        expected: Digest,
        /// What its content hashes to now.
        actual: Digest,
    },
    /// A sealed blob whose ciphertext does not open under its tenant's key: changed at rest.
    #[error("{0} does not decrypt: its stored bytes were changed; it was not used")]
    Tampered(Digest),
    /// Keeping it would bring its tenant over its quota of artifact bytes (it was not kept).
    #[error("quota_exceeded: {0}")]
    QuotaExceeded(String),
    /// A tree that cannot be stored or restored safely.
    #[error("{0}")]
    Invalid(String),
    /// The filesystem failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Attach context to an I/O error.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Where blobs live. Implementations stream (memory stays bounded whatever the blob size),
/// write atomically, deduplicate, and verify every read.
pub trait BlobStore: Send + Sync {
    /// Store the file at `path` as a blob; returns its digest.
    fn put_file(&self, path: &Path) -> Result<Digest, StoreError>;
    /// Store a file the caller gives up (an action's output): the store may move it in
    /// instead of copying. The file must not be written by anyone afterwards.
    fn put_owned(&self, path: &Path) -> Result<Digest, StoreError> {
        self.put_file(path)
    }
    /// Store bytes as a blob.
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError>;
    /// Write the blob to `dest` (atomically), verifying it on the way.
    fn get_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError>;
    /// Like [`BlobStore::get_to_file`], but `dest` may share storage with the blob (a hard
    /// link): only for readers that cannot write it. Verified all the same.
    fn link_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        self.get_to_file(digest, dest)
    }
    /// Read a (small) blob into memory, verified.
    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError>;
    /// The blob's size in bytes, as the store records it (not verified), where the store can
    /// tell without reading the blob; `None` where it cannot.
    fn size_of(&self, _digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Re-hash a stored blob and report corruption.
    fn verify(&self, digest: &Digest) -> Result<u64, StoreError>;
    /// Whether the blob is present (not verified).
    fn contains(&self, digest: &Digest) -> bool;
    /// Whether the blob is present, noting a use where the store collects what nothing names
    /// (see [`collect`]): for a record about to name a blob stored long ago.
    fn touch(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.contains(digest))
    }
    /// Every blob kept, with its last use, where the store holds only components (plugins
    /// and functions: the service's shared store on NATS), for the service's component
    /// collector (`release`); `None` where it holds other blobs too (the embedded data
    /// folder's store also keeps local runs' plain artifacts, which may share their bytes):
    /// nothing is collected there.
    fn list_components(&self) -> Result<Option<Vec<ComponentInfo>>, StoreError> {
        Ok(None)
    }
    /// Forget this engine's cached copies of components the shared store no longer lists
    /// (`listed`, from [`BlobStore::list_components`]: another engine removed them), kept or
    /// used here before `before`; how many went.
    fn forget_removed_components(
        &self,
        listed: &[ComponentInfo],
        before: std::time::SystemTime,
    ) -> Result<usize, StoreError> {
        let _ = (listed, before);
        Ok(0)
    }
    /// Remove the component `digest` if it was last kept or used before `before` (checked
    /// again as it goes: a use noted meanwhile keeps it); the bytes freed, if it went.
    fn drop_unused_component(
        &self,
        digest: &Digest,
        before: std::time::SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        let _ = (digest, before);
        Ok(None)
    }
    /// Remove the stored blob `digest` if its bytes no longer hash to it, so the next put
    /// of its content stores it again; `true` if it was removed.
    fn discard_corrupted(&self, digest: &Digest) -> Result<bool, StoreError>;
}

/// A component as [`BlobStore::list_components`] lists it.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub bytes: u64,
    /// When it was last kept or used (noted at most every [`sealed::USE_NOTED_WITHIN`]).
    pub used_at: std::time::SystemTime,
}

#[cfg(test)]
mod tests;
