//! Every tenant's sealed artifacts: its [`SealedStore`], opened on first use with the root key
//! its [`ArtifactKeys`] source gives (the tenant's data key, in the service).
use super::{BlobStore, SealedObjects, SealedStore, StoreError, TenantKey};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where each tenant's artifact root key comes from.
pub trait ArtifactKeys: Send + Sync {
    /// The tenant's root key (made on first use).
    fn root_key<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<[u8; 32], String>>;
}

/// How many bytes of artifacts each tenant may keep (its quota).
pub trait ArtifactQuotas: Send + Sync {
    /// The tenant's limit in bytes (`None`: no limit).
    fn limit<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Option<u64>, String>>;
}

/// Tenants whose stores stay open (their keys derived once).
const OPEN: usize = 1024;
/// How long a tenant's quota, once read, is used before it is read again: a quota changed
/// by the operator applies within this time on every engine.
const QUOTA_FRESH: Duration = Duration::from_secs(2);

/// An open store, with when its limit was last read (`None`: no quotas apply).
type OpenStore = (Arc<SealedStore>, Option<Instant>);

/// Each tenant's artifacts, sealed under its own key, in one backend.
pub struct TenantStores {
    objects: Arc<dyn SealedObjects>,
    keys: Arc<dyn ArtifactKeys>,
    open: Mutex<crate::runtime::Lru<String, OpenStore>>,
    quotas: OnceLock<Arc<dyn ArtifactQuotas>>,
    /// Every tenant's artifacts kept in this one namespace (a local data folder's runs).
    namespace: Option<String>,
}

/// The namespace of a local data folder's sealed artifacts (`sluice run --encrypt`): apart from
/// a service's tenants in the same folder (tenant names never start with `_`), whose collector
/// removes what their records do not name.
pub const LOCAL_NAMESPACE: &str = "_local";

impl TenantStores {
    /// Stores in `objects`, keyed from `keys`.
    pub fn new(objects: Arc<dyn SealedObjects>, keys: Arc<dyn ArtifactKeys>) -> Self {
        TenantStores {
            objects,
            keys,
            open: Mutex::new(crate::runtime::Lru::new(OPEN)),
            quotas: OnceLock::new(),
            namespace: None,
        }
    }

    /// Keep every tenant's artifacts in namespace `ns` instead of the tenant's own.
    pub fn in_namespace(self, ns: &str) -> Self {
        TenantStores {
            namespace: Some(ns.to_string()),
            ..self
        }
    }

    /// Bound each tenant's stored bytes by its quota from `quotas` from now on (a hosted
    /// service with authentication).
    pub fn limit_by(&self, quotas: Arc<dyn ArtifactQuotas>) {
        let _ = self.quotas.set(quotas);
    }

    /// The tenant's quota changed: read it again at its next store (on this engine; others
    /// read it within `QUOTA_FRESH`, 2 s).
    pub fn quota_changed(&self, tenant: &str) {
        self.open
            .lock()
            .expect("tenant stores")
            .remove(&tenant.to_string());
    }

    /// Where every tenant's sealed blobs are kept.
    pub fn objects(&self) -> &Arc<dyn SealedObjects> {
        &self.objects
    }

    /// Bytes the tenant keeps (sealed, as stored).
    pub fn stored_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        self.objects.sealed_bytes(tenant)
    }

    /// The tenant's store, its limit read again if it was read too long ago.
    pub async fn store(&self, tenant: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
        let key = tenant.to_string();
        let open = self.open.lock().expect("tenant stores").get(&key).cloned();
        let store = match open {
            Some((store, read)) if read.is_none_or(|at| at.elapsed() < QUOTA_FRESH) => {
                return Ok(store);
            }
            Some((store, _)) => store,
            None => self.open_store(tenant).await?,
        };
        let read = match self.quotas.get() {
            Some(quotas) => {
                let limit = quotas.limit(tenant).await.map_err(|e| {
                    StoreError::Invalid(format!("the artifact quota of tenant `{tenant}`: {e}"))
                })?;
                store.set_limit(limit);
                Some(Instant::now())
            }
            None => None,
        };
        self.open
            .lock()
            .expect("tenant stores")
            .insert(key, (store.clone(), read));
        Ok(store)
    }

    async fn open_store(&self, tenant: &str) -> Result<Arc<SealedStore>, StoreError> {
        let root = self.keys.root_key(tenant).await.map_err(|e| {
            StoreError::Invalid(format!("the artifact key of tenant `{tenant}`: {e}"))
        })?;
        Ok(Arc::new(SealedStore::new(
            self.objects.clone(),
            self.namespace.as_deref().unwrap_or(tenant),
            TenantKey::derive(&root),
        )))
    }
}

/// The tenant's artifact store: its sealed one where `stores` seal artifacts, else `plain`.
pub async fn store_of(
    stores: Option<&TenantStores>,
    plain: &Arc<dyn BlobStore>,
    tenant: &str,
) -> Result<Arc<dyn BlobStore>, StoreError> {
    match stores {
        Some(stores) => stores.store(tenant).await,
        None => Ok(plain.clone()),
    }
}

/// One root key for every tenant: a local data folder, which has only one.
pub struct FixedKey(pub [u8; 32]);

impl ArtifactKeys for FixedKey {
    fn root_key<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Result<[u8; 32], String>> {
        Box::pin(async move { Ok(self.0) })
    }
}
