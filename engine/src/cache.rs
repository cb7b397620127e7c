//! The action cache: an action that changes nothing outside its outputs, given exactly the
//! same plugin, configuration, inputs and limits, is not run again — its recorded success is
//! used. Every part of the key is content-addressed already (the plugin's and the inputs'
//! blake3 digests), and such an action runs with a fixed clock and a seeded random source, so
//! the same key always means the same result.
//!
//! Entries live in a key-value bucket under `_cache/<tenant>/<key>`: the data folder's
//! `cache.redb` for `sluice run`, the service's pipelines bucket (shared by every engine on
//! NATS) for the service. The key is the job's ([`crate::executor::job::JobSpec::cache_key`]). Only successes are kept, at most [`MAX_ENTRIES`] per tenant (the
//! oldest go first).
use crate::kv::{Kv, KvError, get_json};
use std::sync::Arc;

/// Entries kept per tenant before the oldest are dropped.
pub const MAX_ENTRIES: usize = 10_000;

/// One cached success (the API's type: `sluice cache ls` shows it as stored).
pub use sluice_api::verbs::CacheEntry as Entry;

/// The cache over a bucket.
pub struct ActionCache {
    kv: Arc<dyn Kv>,
}

fn entry_key(tenant: &str, key: &str) -> String {
    format!("_cache/{tenant}/{key}")
}

impl ActionCache {
    /// A cache in `kv`.
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        ActionCache { kv }
    }

    /// The entry for `key`, if any.
    pub async fn get(&self, tenant: &str, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(get_json::<Entry>(&*self.kv, &entry_key(tenant, key))
            .await?
            .map(|(e, _)| e))
    }

    /// Keep a success (replacing an older one), dropping the oldest entries beyond the bound.
    pub async fn put(&self, tenant: &str, entry: Entry) -> Result<(), KvError> {
        let key = entry_key(tenant, &entry.key);
        crate::kv::modify::<Entry, _>(&*self.kv, &key, |_| Some(entry.clone())).await?;
        let mut all = self.list(tenant).await?;
        if all.len() > MAX_ENTRIES {
            all.sort_by(|a, b| a.created.cmp(&b.created));
            let excess = all.len() - MAX_ENTRIES + MAX_ENTRIES / 10;
            for e in all.iter().take(excess) {
                self.kv.delete(&entry_key(tenant, &e.key)).await?;
            }
        }
        Ok(())
    }

    /// Every entry of a tenant.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Entry>, KvError> {
        let mut out = Vec::new();
        for k in self.kv.keys(&format!("_cache/{tenant}/")).await? {
            if let Some((e, _)) = get_json::<Entry>(&*self.kv, &k).await? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Remove a tenant's entries (of one pipeline, if given); returns how many.
    pub async fn clear(&self, tenant: &str, pipeline: Option<&str>) -> Result<usize, KvError> {
        let mut n = 0;
        for e in self.list(tenant).await? {
            if pipeline.is_none_or(|p| p == e.pipeline) {
                self.kv.delete(&entry_key(tenant, &e.key)).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}
