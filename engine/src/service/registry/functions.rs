//! Registered functions for `invoke@1`: `sluice function put NAME FILE.wasm` stores the
//! component in the artifact store (content-addressed, shared by every engine) and its
//! digest under `<tenant>/<name>`.
use crate::artifacts::{BlobStore, Digest};
use crate::executor::job::{FunctionError, FunctionResolver, load_function_file};
use crate::kv::{Kv, get_json};
use crate::runtime::Runtime;
use crate::service::Service;
use futures_util::future::BoxFuture;

use sluice_api::ApiError;
use std::path::Path;
use std::sync::Arc;

pub use sluice_api::verbs::StoredFunction;

/// Functions a tenant registers, at most.
pub const MAX_FUNCTIONS: usize = 1000;

/// Resolves `function:` against the registry (or a `.wasm` file).
pub struct Registered {
    /// The functions bucket.
    pub kv: Arc<dyn Kv>,
    /// The runtime to load into.
    pub runtime: Arc<Runtime>,
    /// Where the components are.
    pub blobs: Arc<dyn BlobStore>,
}

impl FunctionResolver for Registered {
    fn resolve<'a>(
        &'a self,
        tenant: &'a str,
        function: &'a str,
        pipeline_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Digest, FunctionError>> {
        Box::pin(async move {
            if function.ends_with(".wasm") {
                return load_function_file(&self.runtime, function, pipeline_dir);
            }
            let key = format!("{tenant}/{function}");
            let Some((f, _)) = get_json::<StoredFunction>(&*self.kv, &key)
                .await
                .map_err(|e| FunctionError::Unusable(e.to_string()))?
            else {
                return Err(FunctionError::NotFound(format!(
                    "no function `{function}` is registered (sluice function put {function} FILE.wasm)"
                )));
            };
            let digest: Digest = f.digest.parse().map_err(FunctionError::Unusable)?;
            if !self.runtime.has_function(&digest) {
                let (blobs, runtime) = (self.blobs.clone(), self.runtime.clone());
                tokio::task::spawn_blocking(move || {
                    let bytes = blobs
                        .get_bytes(&digest)
                        .map_err(|e| FunctionError::Unusable(format!("function component: {e}")))?;
                    runtime
                        .load_function(&bytes)
                        .map_err(|e| FunctionError::Unusable(format!("{e:#}")))
                })
                .await
                .map_err(|e| FunctionError::Unusable(e.to_string()))??;
            }
            Ok(digest)
        })
    }
}

impl Service {
    /// Register `name` as the component with `bytes` (sent by the client) or the already
    /// uploaded `digest`.
    pub async fn put_function(
        &self,
        tenant: &str,
        name: &str,
        bytes: Option<Vec<u8>>,
        digest: Option<&str>,
    ) -> Result<StoredFunction, ApiError> {
        if !crate::model::is_valid_name(name) {
            return Err(ApiError::invalid(format!(
                "function name {name:?} must be {}",
                crate::model::NAME_RULE
            )));
        }
        let key = format!("{tenant}/{name}");
        if self.edges.functions.get(&key).await?.is_none() {
            // Counted by their keys: no record needs reading.
            let kept = self
                .edges
                .functions
                .keys(&format!("{tenant}/"))
                .await?
                .len();
            if kept >= MAX_FUNCTIONS {
                return Err(ApiError::new(
                    sluice_api::Code::QuotaExceeded,
                    format!(
                        "a tenant registers at most {MAX_FUNCTIONS} functions: remove one first (sluice function rm NAME)"
                    ),
                ));
            }
        }
        let blobs = self.engine.blobs.clone();
        let runtime = self.engine.registry.runtime().clone();
        // A component named by digest must be one the tenant uploaded (see `owned`).
        let digest = match digest {
            Some(d) if bytes.is_none() => Some(self.owned(tenant, d).await?.to_string()),
            _ => None,
        };
        let blobs_for_put = blobs.clone();
        let (digest, bytes) =
            tokio::task::spawn_blocking(move || -> Result<(Digest, Vec<u8>), ApiError> {
                let bytes = match (bytes, digest) {
                    (Some(b), _) => b,
                    (None, Some(d)) => blobs
                        .get_bytes(&d.parse().map_err(ApiError::invalid)?)
                        .map_err(|e| ApiError::not_found(format!("component {d}: {e}")))?,
                    (None, None) => {
                        return Err(ApiError::invalid(
                            "give the function's component (`bytes`) or digest",
                        ));
                    }
                };
                // Binary components only: the WAT parser's errors would quote what it was given.
                if !crate::plugins::is_binary_wasm(&bytes) {
                    return Err(ApiError::invalid(
                        "the function is not a binary WebAssembly component (it does not start with \\0asm)",
                    ));
                }
                // Refuse what is not a function before registering it.
                let digest = runtime
                    .load_function(&bytes)
                    .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
                Ok((digest, bytes))
            })
            .await
            .map_err(ApiError::internal)??;
        let size = bytes.len() as u64;
        // Owned (within the tenant's quota) before it is stored: see `owned`.
        self.own(tenant, &digest, size).await?;
        tokio::task::spawn_blocking(move || blobs_for_put.put_bytes(&bytes))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let f = StoredFunction {
            name: name.to_string(),
            digest: digest.to_string(),
            size,
            registered_at: crate::clock::now(),
        };
        crate::kv::modify::<StoredFunction, _>(&*self.edges.functions, &key, |_| Some(f.clone()))
            .await
            .map_err(ApiError::from)?;
        Ok(f)
    }

    /// Registered functions of a tenant.
    pub async fn list_functions(&self, tenant: &str) -> Result<Vec<StoredFunction>, ApiError> {
        let mut out = Vec::new();
        for key in self
            .edges
            .functions
            .keys(&format!("{tenant}/"))
            .await
            .map_err(ApiError::from)?
        {
            if let Some((f, _)) = get_json::<StoredFunction>(&*self.edges.functions, &key)
                .await
                .map_err(ApiError::from)?
            {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Unregister a function (its component stays until the collector finds nothing names
    /// it, see `release`).
    pub async fn remove_function(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        let key = format!("{tenant}/{name}");
        if self
            .edges
            .functions
            .get(&key)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::not_found(format!(
                "no function `{name}` is registered"
            )));
        }
        self.edges
            .functions
            .delete(&key)
            .await
            .map_err(ApiError::from)
    }
}
