//! The tenants' action caches on the service: `cache.ls` and `cache.clear`. The entries are the
//! ones every engine of the service shares (the pipelines bucket), so what one lists or clears
//! holds for all of them.
use super::Service;
use crate::cache::{ActionCache, Entry};
use sluice_api::ApiError;
use std::sync::Arc;

impl Service {
    fn action_cache(&self) -> Result<&Arc<ActionCache>, ApiError> {
        self.engine
            .cache
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("this service keeps no action cache"))
    }

    /// `cache.ls`: newest first.
    pub async fn cache_ls(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<Entry>, ApiError> {
        let mut all = self.action_cache()?.list(tenant).await?;
        all.retain(|e| pipeline.is_none_or(|p| p == e.pipeline));
        all.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(all)
    }

    /// `cache.clear`: how many entries went.
    pub async fn cache_clear(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
    ) -> Result<usize, ApiError> {
        Ok(self.action_cache()?.clear(tenant, pipeline).await?)
    }
}
