//! The sealed records in a key-value bucket, and the operations on them.
use super::keys::{self, MasterKey, Sealed};
use crate::kv::{Kv, KvError, get_json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A tenant's data key, sealed under a master key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DataKey {
    /// Which master key sealed it.
    master_key: String,
    /// Names it in the values it seals.
    id: String,
    sealed: Sealed,
}

/// One stored secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    info: SecretInfo,
    /// The data key that sealed it.
    data_key: String,
    sealed: Sealed,
}

pub use sluice_api::verbs::SecretInfo;

/// Secrets a tenant keeps, at most.
pub const MAX_SECRETS: usize = 1000;

/// Why a secret operation failed. No variant carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No such secret.
    #[error("no secret `{0}` is stored (sluice secret put {0})")]
    NotFound(String),
    /// The pipeline may not use it.
    #[error(
        "secret `{name}` is limited to the pipelines {allowed:?}; `{pipeline}` is not one of them"
    )]
    OutOfScope {
        /// The secret.
        name: String,
        /// The pipeline asking.
        pipeline: String,
        /// Its scope.
        allowed: Vec<String>,
    },
    /// The master key given is not the one the data key was sealed with.
    #[error(
        "the master key given (id {given}) is not the one this store's keys were sealed with (id {stored}): nothing was decrypted or changed; pass the right --master-key-file"
    )]
    WrongMasterKey {
        /// The key given.
        given: String,
        /// The key the store needs.
        stored: String,
    },
    /// A sealed record does not open: changed on disk or in the bucket.
    #[error("{0} does not decrypt: it was changed after it was sealed; nothing was used")]
    Tampered(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The tenant keeps as many secrets as it may.
    #[error(
        "a tenant keeps at most {MAX_SECRETS} secrets: remove one first (sluice secret rm NAME)"
    )]
    TooMany,
    /// The bucket failed.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// Secrets in a bucket, sealed under a master key.
pub struct SecretStore {
    kv: Arc<dyn Kv>,
    master: MasterKey,
    /// The master key being rotated away from: data keys sealed under it still open (never
    /// re-sealed implicitly: engines not yet given the new key must keep opening them until
    /// an operator rotates).
    previous: Option<MasterKey>,
}

fn key_key(tenant: &str) -> String {
    format!("_secrets/{tenant}/key")
}

fn value_key(tenant: &str, name: &str) -> String {
    format!("_secrets/{tenant}/value/{name}")
}

fn data_key_aad(tenant: &str) -> Vec<u8> {
    format!("sluice data key\0{tenant}").into_bytes()
}

fn value_aad(tenant: &str, name: &str) -> Vec<u8> {
    format!("sluice secret\0{tenant}\0{name}").into_bytes()
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl SecretStore {
    /// A store over `kv` with `master`.
    pub fn new(kv: Arc<dyn Kv>, master: MasterKey) -> Self {
        SecretStore {
            kv,
            master,
            previous: None,
        }
    }

    /// Also open data keys sealed under `previous` (a rotation in progress).
    pub fn with_previous(mut self, previous: Option<MasterKey>) -> Self {
        self.previous = previous;
        self
    }

    /// Re-seal every data key under this store's master key, opening those still sealed under
    /// the previous one; returns how many. The last step of an online rotation.
    pub async fn rotate_to_current(&self) -> Result<usize, SecretError> {
        self.rotate(&self.master).await
    }

    /// The id of the master key in use.
    pub fn master_key_id(&self) -> &str {
        &self.master.id
    }

    /// The tenant's data key, made (and sealed) on first use.
    async fn data_key(
        &self,
        tenant: &str,
        create: bool,
    ) -> Result<Option<(String, [u8; 32])>, SecretError> {
        let key = key_key(tenant);
        let record = match get_json::<DataKey>(&*self.kv, &key).await? {
            Some((r, _)) => r,
            None if !create => return Ok(None),
            None => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| SecretError::Invalid(format!("no randomness: {e}")))?;
                let mut id = [0u8; 8];
                getrandom::fill(&mut id)
                    .map_err(|e| SecretError::Invalid(format!("no randomness: {e}")))?;
                let record = DataKey {
                    master_key: self.master.id.clone(),
                    id: id.iter().map(|b| format!("{b:02x}")).collect(),
                    sealed: keys::seal(self.master.bytes(), &bytes, &data_key_aad(tenant)),
                };
                let json = serde_json::to_vec(&record).expect("json");
                match self.kv.create(&key, json).await {
                    Ok(_) => record,
                    // Another writer made it first: use theirs.
                    Err(KvError::Conflict { .. }) => get_json::<DataKey>(&*self.kv, &key)
                        .await?
                        .map(|(r, _)| r)
                        .ok_or_else(|| SecretError::Invalid("the data key vanished".into()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let master = if record.master_key == self.master.id {
            &self.master
        } else if let Some(previous) = self.previous.as_ref().filter(|p| p.id == record.master_key)
        {
            previous
        } else {
            return Err(SecretError::WrongMasterKey {
                given: match &self.previous {
                    Some(p) => format!("{} (previous: {})", self.master.id, p.id),
                    None => self.master.id.clone(),
                },
                stored: record.master_key,
            });
        };
        let bytes = keys::open(master.bytes(), &record.sealed, &data_key_aad(tenant))
            .ok_or_else(|| SecretError::Tampered(format!("the data key of tenant `{tenant}`")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::Tampered(format!("the data key of tenant `{tenant}`")))?;
        Ok(Some((record.id, bytes)))
    }

    /// Store (or replace) a secret's value, optionally limited to `pipelines`.
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        value: &str,
        pipelines: Vec<String>,
    ) -> Result<SecretInfo, SecretError> {
        if !super::valid_name(name) {
            return Err(SecretError::Invalid(format!(
                "`{name}` is not a secret name: letters, digits and _, starting with a letter, at most 64"
            )));
        }
        if value.len() < sluice_core::redact::MIN_SECRET_BYTES {
            return Err(SecretError::Invalid(format!(
                "a secret must be at least {} bytes: a shorter value could not be told apart from ordinary log text, so it could not be kept out of logs",
                sluice_core::redact::MIN_SECRET_BYTES
            )));
        }
        if value.len() > 64 << 10 {
            return Err(SecretError::Invalid(
                "a secret may be at most 64 KiB".into(),
            ));
        }
        if let Some(p) = pipelines.iter().find(|p| !crate::model::is_valid_name(p)) {
            return Err(SecretError::Invalid(format!(
                "`{p}` is not a pipeline name"
            )));
        }
        let (key_id, key) = self.data_key(tenant, true).await?.expect("created");
        let sealed = keys::seal(&key, value.as_bytes(), &value_aad(tenant, name));
        let created = match get_json::<Record>(&*self.kv, &value_key(tenant, name)).await? {
            Some((r, _)) => r.info.created,
            None => {
                let kept = self
                    .kv
                    .keys(&format!("_secrets/{tenant}/value/"))
                    .await?
                    .len();
                if kept >= MAX_SECRETS {
                    return Err(SecretError::TooMany);
                }
                now()
            }
        };
        let info = SecretInfo {
            name: name.to_string(),
            pipelines,
            created,
            updated: now(),
        };
        let record = Record {
            info: info.clone(),
            data_key: key_id,
            sealed,
        };
        crate::kv::modify::<Record, _>(&*self.kv, &value_key(tenant, name), |_| {
            Some(record.clone())
        })
        .await?;
        Ok(info)
    }

    /// The tenant's secrets (names, scopes, dates), by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>, SecretError> {
        let mut out = Vec::new();
        for key in self.kv.keys(&format!("_secrets/{tenant}/value/")).await? {
            if let Some((r, _)) = get_json::<Record>(&*self.kv, &key).await? {
                out.push(r.info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove a secret; `false` if there was none.
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<bool, SecretError> {
        let key = value_key(tenant, name);
        if self.kv.get(&key).await?.is_none() {
            return Ok(false);
        }
        self.kv.delete(&key).await?;
        Ok(true)
    }

    /// The value of `name` for `pipeline`: only for the engine, to pass where it may go.
    pub async fn reveal(
        &self,
        tenant: &str,
        name: &str,
        pipeline: &str,
    ) -> Result<String, SecretError> {
        let record = self.record_for(tenant, name, pipeline).await?;
        let Some((key_id, key)) = self.data_key(tenant, false).await? else {
            return Err(SecretError::Tampered(format!(
                "secret `{name}` (its tenant has no data key)"
            )));
        };
        if key_id != record.data_key {
            return Err(SecretError::Tampered(format!(
                "secret `{name}` (sealed with another data key)"
            )));
        }
        let bytes = keys::open(&key, &record.sealed, &value_aad(tenant, name))
            .ok_or_else(|| SecretError::Tampered(format!("secret `{name}`")))?;
        String::from_utf8(bytes).map_err(|_| SecretError::Tampered(format!("secret `{name}`")))
    }

    /// Whether this master key opens the data keys already stored (the first few tenants'):
    /// an engine given another key learns it when it starts, not at its first action.
    pub async fn check_master_key(&self) -> Result<(), SecretError> {
        let keys = self.kv.keys("_secrets/").await?;
        for tenant in keys
            .iter()
            .filter_map(|k| k.strip_prefix("_secrets/")?.strip_suffix("/key"))
            .filter(|t| !t.contains('/'))
            .take(3)
        {
            // Only a key that is not the service's stops an engine; a damaged data key fails
            // its own tenant's operations, not everyone's.
            match self.data_key(tenant, false).await {
                Err(e @ SecretError::WrongMasterKey { .. }) => return Err(e),
                Err(e) => tracing::warn!("tenant `{tenant}`: {e}"),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Whether this master key opens the tenant's data key (a wrong key is found before
    /// anything runs).
    pub async fn check_key(&self, tenant: &str) -> Result<(), SecretError> {
        self.data_key(tenant, false).await.map(|_| ())
    }

    /// Whether `name` exists and `pipeline` may use it (no value is opened).
    pub async fn check(&self, tenant: &str, name: &str, pipeline: &str) -> Result<(), SecretError> {
        self.record_for(tenant, name, pipeline).await.map(|_| ())
    }

    /// The stored record of `name`, if `pipeline` may use it.
    async fn record_for(
        &self,
        tenant: &str,
        name: &str,
        pipeline: &str,
    ) -> Result<Record, SecretError> {
        let Some((record, _)) = get_json::<Record>(&*self.kv, &value_key(tenant, name)).await?
        else {
            return Err(SecretError::NotFound(name.to_string()));
        };
        if !record.info.pipelines.is_empty() && !record.info.pipelines.iter().any(|p| p == pipeline)
        {
            return Err(SecretError::OutOfScope {
                name: name.to_string(),
                pipeline: pipeline.to_string(),
                allowed: record.info.pipelines,
            });
        }
        Ok(record)
    }

    /// Re-seal every tenant's data key under `new` (values are untouched); returns how many.
    /// Every data key must open with the current master key first, or nothing is changed.
    pub async fn rotate(&self, new: &MasterKey) -> Result<usize, SecretError> {
        let mut keys_found = Vec::new();
        for key in self.kv.keys("_secrets/").await? {
            if let Some(tenant) = key
                .strip_prefix("_secrets/")
                .and_then(|k| k.strip_suffix("/key"))
            {
                let (_, bytes) = self.data_key(tenant, false).await?.expect("listed");
                let (record, rev) = get_json::<DataKey>(&*self.kv, &key).await?.expect("listed");
                keys_found.push((key.clone(), tenant.to_string(), bytes, record, rev));
            }
        }
        for (key, tenant, bytes, record, rev) in &keys_found {
            let resealed = DataKey {
                master_key: new.id.clone(),
                id: record.id.clone(),
                sealed: keys::seal(new.bytes(), bytes, &data_key_aad(tenant)),
            };
            self.kv
                .update(key, serde_json::to_vec(&resealed).expect("json"), *rev)
                .await?;
        }
        Ok(keys_found.len())
    }
}

/// A tenant's artifacts are sealed under a key derived from its data key: made with it, and
/// unchanged when the master key is rotated (which re-seals data keys only).
impl crate::artifacts::tenants::ArtifactKeys for SecretStore {
    fn root_key<'a>(
        &'a self,
        tenant: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<[u8; 32], String>> {
        Box::pin(async move {
            let (_, key) = self
                .data_key(tenant, true)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("tenant `{tenant}` has no data key"))?;
            Ok(blake3::derive_key("sluice 2026-12 artifact root v1", &key))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path, key: &str) -> (SecretStore, Arc<dyn Kv>) {
        let db = crate::kv::RedbKv::open_database(&dir.join("s.redb")).unwrap();
        let kv: Arc<dyn Kv> = Arc::new(crate::kv::RedbKv::bucket(db, "secrets").unwrap());
        let (master, _) = MasterKey::read_or_create(&dir.join(key)).unwrap();
        (SecretStore::new(kv.clone(), master), kv)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_keeps_a_bounded_number_of_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path(), "master.key");
        let puts = (0..MAX_SECRETS).map(|i| {
            let s = &s;
            async move {
                s.put("acme", &format!("S{i}"), "value-0123456789", vec![])
                    .await
            }
        });
        for put in futures_util::future::join_all(puts).await {
            put.unwrap();
        }
        let e = s
            .put("acme", "ONE_MORE", "value-0123456789", vec![])
            .await
            .unwrap_err();
        assert!(matches!(e, SecretError::TooMany), "{e}");
        assert!(e.to_string().contains("at most 1000 secrets"), "{e}");
        // A secret kept may change; another tenant has its own count.
        s.put("acme", "S0", "value-9876543210", vec![])
            .await
            .unwrap();
        s.put("globex", "S0", "value-0123456789", vec![])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn values_are_sealed_scoped_and_survive_a_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (s, kv) = store(dir.path(), "master.key");
        s.put(
            "acme",
            "DEPLOY_TOKEN",
            "tok-0123456789",
            vec!["ship".into()],
        )
        .await
        .unwrap();
        s.put("acme", "OPEN", "open-value-123", vec![])
            .await
            .unwrap();
        assert_eq!(
            s.reveal("acme", "DEPLOY_TOKEN", "ship").await.unwrap(),
            "tok-0123456789"
        );
        assert!(matches!(
            s.reveal("acme", "DEPLOY_TOKEN", "other").await,
            Err(SecretError::OutOfScope { .. })
        ));
        assert!(matches!(
            s.reveal("zeta", "DEPLOY_TOKEN", "ship").await,
            Err(SecretError::NotFound(_))
        ));
        // The bucket never holds the value in the clear.
        for key in kv.keys("").await.unwrap() {
            let (bytes, _) = kv.get(&key).await.unwrap().unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("tok-0123456789"),
                "{key}"
            );
        }
        let names: Vec<_> = s
            .list("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["DEPLOY_TOKEN", "OPEN"]);
        assert!(s.put("acme", "SHORT", "abc", vec![]).await.is_err());

        // A wrong master key decrypts nothing and changes nothing.
        let (other, _) = MasterKey::read_or_create(&dir.path().join("other.key")).unwrap();
        let wrong = SecretStore::new(kv.clone(), other);
        assert!(matches!(
            wrong.reveal("acme", "OPEN", "x").await,
            Err(SecretError::WrongMasterKey { .. })
        ));
        assert!(
            wrong
                .rotate(&MasterKey::create(&dir.path().join("new0.key")).unwrap())
                .await
                .is_err()
        );
        assert_eq!(
            s.reveal("acme", "OPEN", "x").await.unwrap(),
            "open-value-123"
        );

        // Rotation re-seals the data key; values open under the new master key only.
        let new = MasterKey::create(&dir.path().join("new.key")).unwrap();
        assert_eq!(s.rotate(&new).await.unwrap(), 1);
        let rotated = SecretStore::new(
            kv.clone(),
            MasterKey::read(&dir.path().join("new.key"))
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            rotated
                .reveal("acme", "DEPLOY_TOKEN", "ship")
                .await
                .unwrap(),
            "tok-0123456789"
        );
        assert!(matches!(
            s.reveal("acme", "OPEN", "x").await,
            Err(SecretError::WrongMasterKey { .. })
        ));

        // A tampered value is refused and named.
        let key = "_secrets/acme/value/OPEN";
        let (bytes, rev) = kv.get(key).await.unwrap().unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let ct = record["sealed"]["ciphertext"].as_str().unwrap().to_string();
        let flipped = format!(
            "{}{}",
            if ct.starts_with('A') { "B" } else { "A" },
            &ct[1..]
        );
        record["sealed"]["ciphertext"] = flipped.into();
        kv.update(key, serde_json::to_vec(&record).unwrap(), rev)
            .await
            .unwrap();
        let e = rotated.reveal("acme", "OPEN", "x").await.unwrap_err();
        assert!(
            matches!(e, SecretError::Tampered(_)) && e.to_string().contains("OPEN"),
            "{e}"
        );
    }
}
