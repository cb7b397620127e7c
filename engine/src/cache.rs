//! The action cache: an action that changes nothing outside its outputs, given exactly the
//! same plugin, configuration, inputs and limits, is not run again — its recorded success is
//! used. Every part of the key is content-addressed already (the plugin's and the inputs'
//! blake3 digests), and such an action runs with a fixed clock and a seeded random source, so
//! the same key always means the same result.
//!
//! Entries live in a key-value bucket under `_cache/<tenant>/<key>`: the data folder's
//! `cache.redb` for `sluice run`, the service's pipelines bucket (shared by every engine on
//! NATS) for the service. Only successes are kept, at most [`MAX_ENTRIES`] per tenant (the
//! oldest go first).
use crate::executor::job::JobSpec;
use crate::kv::{Kv, KvError, get_json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Entries kept per tenant before the oldest are dropped.
pub const MAX_ENTRIES: usize = 10_000;
/// Changes when what a key covers changes, so old entries are never taken for new ones.
const SALT: &str = "sluice-action-cache-v1";

/// One cached success.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// The pipeline it was recorded in.
    pub pipeline: String,
    /// The attempt that recorded it: `EXECUTION/STAGE/ACTION`.
    pub from: String,
    /// Output variables.
    pub variables: BTreeMap<String, String>,
    /// Output artifacts: name → digest.
    pub artifacts: BTreeMap<String, String>,
    /// Its summary.
    pub summary: Option<String>,
    /// When it was recorded (RFC 3339).
    pub created: String,
}

/// The canonical content of a job's key: everything that can change its result.
#[derive(Serialize)]
struct KeyParts<'a> {
    salt: &'a str,
    world: &'a str,
    plugin: String,
    config: &'a BTreeMap<String, String>,
    inputs: BTreeMap<&'a String, String>,
    outputs: &'a [String],
    memory: u64,
    timeout_ms: u128,
    output_limits: &'a crate::limits::OutputLimits,
}

/// The cache key of a job (blake3 hex of its canonical parts).
pub fn key(job: &JobSpec) -> String {
    let parts = KeyParts {
        salt: SALT,
        world: "sluice:action/action@0.1.0",
        plugin: job.plugin.to_string(),
        config: &job.config,
        inputs: job.inputs.iter().map(|(k, v)| (k, v.to_string())).collect(),
        outputs: &job.outputs,
        memory: job.memory,
        timeout_ms: job.timeout.as_millis(),
        output_limits: &job.output_limits,
    };
    blake3::hash(&serde_json::to_vec(&parts).expect("json"))
        .to_hex()
        .to_string()
}

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
