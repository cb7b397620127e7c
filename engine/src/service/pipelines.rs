//! Registered pipelines: every `pipeline put` stores a new version; executions record the
//! version they run, so a pipeline changed mid-run does not change running executions.
//! Keys: `<tenant>/<name>` (the current version) and `<tenant>/<name>/<version>`.
use crate::kv::{Kv, KvError, get_json};
use crate::scheduler::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One version of a registered pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPipeline {
    /// Pipeline name.
    pub name: String,
    /// Version, from 1.
    pub version: u64,
    /// The file it was registered from (for messages).
    pub file: String,
    /// The file's directory: relative paths in the pipeline resolve against it.
    pub dir: PathBuf,
    /// The YAML as registered.
    pub yaml: String,
    /// When it was registered.
    pub registered_at: Timestamp,
}

fn head(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

fn versioned(tenant: &str, name: &str, version: u64) -> String {
    format!("{tenant}/{name}/{version}")
}

/// Store `p` as the next version of its pipeline; returns the version.
pub async fn put(kv: &dyn Kv, tenant: &str, mut p: StoredPipeline) -> Result<u64, KvError> {
    loop {
        let current = get_json::<StoredPipeline>(kv, &head(tenant, &p.name)).await?;
        // Versions keep counting after `rm`: the version keys stay for running executions.
        let mut version = current.as_ref().map(|(c, _)| c.version).unwrap_or(0) + 1;
        while kv
            .get(&versioned(tenant, &p.name, version))
            .await?
            .is_some()
        {
            version += 1;
        }
        p.version = version;
        let bytes = serde_json::to_vec(&p).map_err(|e| KvError::Backend(e.to_string()))?;
        match kv
            .create(&versioned(tenant, &p.name, version), bytes.clone())
            .await
        {
            Err(KvError::Conflict { .. }) => continue,
            other => other?,
        };
        let written = match current {
            Some((_, rev)) => kv.update(&head(tenant, &p.name), bytes, rev).await,
            None => kv.create(&head(tenant, &p.name), bytes).await,
        };
        match written {
            Ok(_) => return Ok(version),
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The current version, or a given one.
pub async fn get(
    kv: &dyn Kv,
    tenant: &str,
    name: &str,
    version: Option<u64>,
) -> Result<Option<StoredPipeline>, KvError> {
    let key = match version {
        Some(v) => versioned(tenant, name, v),
        None => head(tenant, name),
    };
    Ok(get_json::<StoredPipeline>(kv, &key).await?.map(|(p, _)| p))
}

/// Current versions of every registered pipeline of `tenant`.
pub async fn list(kv: &dyn Kv, tenant: &str) -> Result<Vec<StoredPipeline>, KvError> {
    let prefix = format!("{tenant}/");
    let mut out = Vec::new();
    for key in kv.keys(&prefix).await? {
        if key[prefix.len()..].contains('/') {
            continue;
        }
        if let Some((p, _)) = get_json::<StoredPipeline>(kv, &key).await? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Unregister a pipeline (its versions stay for executions that run them). Returns whether
/// it was registered.
pub async fn remove(kv: &dyn Kv, tenant: &str, name: &str) -> Result<bool, KvError> {
    let key = head(tenant, name);
    let found = kv.get(&key).await?.is_some();
    if found {
        kv.delete(&key).await?;
    }
    Ok(found)
}

/// Current versions of every registered pipeline of every tenant: (tenant, pipeline).
pub async fn all_heads(kv: &dyn Kv) -> Result<Vec<(String, StoredPipeline)>, KvError> {
    let mut out = Vec::new();
    for key in kv.keys("").await? {
        let mut parts = key.split('/');
        if let (Some(tenant), Some(_), None) = (parts.next(), parts.next(), parts.next()) {
            if let Some((p, _)) = get_json::<StoredPipeline>(kv, &key).await? {
                out.push((tenant.to_string(), p));
            }
        }
    }
    Ok(out)
}
