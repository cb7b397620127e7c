//! Key-value buckets with compare-and-swap: where the service keeps pipelines, executions
//! and trigger claims. Embedded: a redb file ([`RedbKv`]). NATS: a JetStream KV bucket
//! (`sluice_nats::kv::NatsKv`). Both pass the same conformance suite (`tests/all/conformance.rs`).
//!
//! Keys are `/`-separated paths that start with the tenant, e.g. `default/quickstart`;
//! they use only `[A-Za-z0-9._/-]`, which every backend accepts.

mod redb_kv;
mod redb_writes;

pub use redb_kv::{RedbKv, StoreHealth};

use futures_util::future::BoxFuture;

/// Errors from a bucket.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// `create` found the key, or `update` found another revision.
    #[error("`{key}` was changed by someone else")]
    Conflict {
        /// The key.
        key: String,
    },
    /// The backend failed (I/O, connection).
    #[error("key-value store: {0}")]
    Backend(String),
}

/// The result of a bucket operation.
pub type KvResult<T> = Result<T, KvError>;

/// A value and its revision, or `None` when the key is absent (or deleted).
pub type Versioned = Option<(Vec<u8>, u64)>;

/// A bucket of byte values with per-key revisions.
pub trait Kv: Send + Sync {
    /// The value and its revision, or `None` when the key is absent (or deleted).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Versioned>>;
    /// Write a key that must not exist yet. Returns the new revision.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, KvResult<u64>>;
    /// Write a key whose current revision is `revision`. Returns the new revision.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, KvResult<u64>>;
    /// Remove a key (absent keys are fine).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<()>>;
    /// Remove a key whose current revision is `revision` (`Conflict` if it changed).
    fn delete_if<'a>(&'a self, key: &'a str, revision: u64) -> BoxFuture<'a, KvResult<()>>;
    /// Keys that start with `prefix`, sorted.
    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, KvResult<Vec<String>>>;
    /// Drop what removals of keys more than `older_than` ago left behind, where the backend
    /// leaves anything (NATS KV's markers); returns how many went.
    fn purge_markers(&self, older_than: std::time::Duration) -> BoxFuture<'_, KvResult<usize>> {
        let _ = older_than;
        Box::pin(async { Ok(0) })
    }
    /// Watch `key`: once this returns, every later change of it is delivered, in order. The
    /// stream ends, or yields an error, when the watch is lost. `None`: this bucket cannot
    /// watch (callers read instead).
    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Option<KvChanges>>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }
}

/// The changes of one watched key: each new value with its revision, `None` for a deletion.
pub type KvChanges = futures_util::stream::BoxStream<'static, KvResult<Option<(Vec<u8>, u64)>>>;

/// Whether `key` is acceptable to every backend.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && !key.contains("//")
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !key
            .split('/')
            .any(|part| part.starts_with('.') || part.ends_with('.'))
}

/// Read-modify-write with compare-and-swap, retried on conflict: `change` gets the current
/// value (or `None`) and returns the new one, or `None` to leave the key as it is. Returns
/// what was written, if anything.
pub async fn modify<T, F>(kv: &dyn Kv, key: &str, mut change: F) -> KvResult<Option<T>>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    F: FnMut(Option<T>) -> Option<T>,
{
    loop {
        let current = kv.get(key).await?;
        let (value, revision) = match current {
            Some((bytes, rev)) => (Some(decode::<T>(key, &bytes)?), Some(rev)),
            None => (None, None),
        };
        let Some(next) = change(value) else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&next).map_err(|e| KvError::Backend(e.to_string()))?;
        let written = match revision {
            Some(rev) => kv.update(key, bytes, rev).await,
            None => kv.create(key, bytes).await,
        };
        match written {
            Ok(_) => return Ok(Some(next)),
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Read a JSON value.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    kv: &dyn Kv,
    key: &str,
) -> KvResult<Option<(T, u64)>> {
    match kv.get(key).await? {
        Some((bytes, rev)) => Ok(Some((decode(key, &bytes)?, rev))),
        None => Ok(None),
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> KvResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        KvError::Backend(format!(
            "`{key}` holds a record this version cannot read: {e}"
        ))
    })
}

impl From<KvError> for sluice_api::ApiError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Conflict { .. } => sluice_api::ApiError::conflict(e.to_string()),
            KvError::Backend(_) => sluice_api::ApiError::unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_every_backend_accepts() {
        for ok in ["default/quickstart", "t/executions/01J0", "a.b_c-d/e"] {
            assert!(super::valid_key(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "a b", "a/*", "a/>", "a/.b", "a..b", "ü",
        ] {
            assert!(!super::valid_key(bad), "{bad}");
        }
    }
}
