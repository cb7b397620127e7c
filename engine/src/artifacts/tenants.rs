//! Every tenant's sealed artifacts: its [`SealedStore`], opened on first use with the root key
//! its [`ArtifactKeys`] source gives (the tenant's data key, in the service).
use super::{BlobStore, SealedObjects, SealedStore, StoreError, TenantKey};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};

/// Where each tenant's artifact root key comes from.
pub trait ArtifactKeys: Send + Sync {
    /// The tenant's root key (made on first use).
    fn root_key<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<[u8; 32], String>>;
}

/// Tenants whose stores stay open (their keys derived once).
const OPEN: usize = 1024;

/// Each tenant's artifacts, sealed under its own key, in one backend.
pub struct TenantStores {
    objects: Arc<dyn SealedObjects>,
    keys: Arc<dyn ArtifactKeys>,
    open: Mutex<crate::runtime::Lru<String, Arc<SealedStore>>>,
}

impl TenantStores {
    /// Stores in `objects`, keyed from `keys`.
    pub fn new(objects: Arc<dyn SealedObjects>, keys: Arc<dyn ArtifactKeys>) -> Self {
        TenantStores {
            objects,
            keys,
            open: Mutex::new(crate::runtime::Lru::new(OPEN)),
        }
    }

    /// The tenant's store.
    pub async fn store(&self, tenant: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
        if let Some(s) = self
            .open
            .lock()
            .expect("tenant stores")
            .get(&tenant.to_string())
        {
            return Ok(s.clone());
        }
        let root = self.keys.root_key(tenant).await.map_err(|e| {
            StoreError::Invalid(format!("the artifact key of tenant `{tenant}`: {e}"))
        })?;
        let store = Arc::new(SealedStore::new(
            self.objects.clone(),
            tenant,
            TenantKey::derive(&root),
        ));
        self.open
            .lock()
            .expect("tenant stores")
            .insert(tenant.to_string(), store.clone());
        Ok(store)
    }
}

/// One root key for every tenant: a local data folder, which has only one.
pub struct FixedKey(pub [u8; 32]);

impl ArtifactKeys for FixedKey {
    fn root_key<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Result<[u8; 32], String>> {
        Box::pin(async move { Ok(self.0) })
    }
}
