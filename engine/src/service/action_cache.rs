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

    /// `cache.ls`: newest first (then by key), the page after `r.before`.
    pub async fn cache_ls(
        &self,
        tenant: &str,
        r: sluice_api::verbs::CacheLs,
    ) -> Result<Vec<Entry>, ApiError> {
        let mut all = self.action_cache()?.list(tenant).await?;
        all.retain(|e| r.pipeline.as_ref().is_none_or(|p| *p == e.pipeline));
        Ok(page(all, r.before.as_deref(), r.limit))
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

/// Order `entries` newest first (then by key) and take the page after the cursor `before` (see
/// `CacheEntry::cursor`): at most `limit` (default 100, at most `MAX_LIST`).
fn page(mut entries: Vec<Entry>, before: Option<&str>, limit: Option<usize>) -> Vec<Entry> {
    let order = |e: &Entry| (e.created.clone(), e.key.clone());
    entries.sort_by_key(|e| std::cmp::Reverse(order(e)));
    let after = before.and_then(|c| c.rsplit_once('/'));
    entries
        .into_iter()
        .filter(|e| {
            after.is_none_or(|(created, key)| (e.created.as_str(), e.key.as_str()) < (created, key))
        })
        .take(limit.unwrap_or(100).min(sluice_api::limits::MAX_LIST))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, created: &str) -> Entry {
        Entry {
            key: key.into(),
            pipeline: "p".into(),
            from: "x/S/A".into(),
            variables: Default::default(),
            artifacts: Default::default(),
            summary: None,
            created: created.into(),
        }
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        // Two entries share a second: the key orders them.
        let all = vec![
            entry("b", "2026-12-06T10:00:01Z"),
            entry("a", "2026-12-06T10:00:02Z"),
            entry("d", "2026-12-06T10:00:01Z"),
            entry("c", "2026-12-06T10:00:00Z"),
        ];
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let got = page(all.clone(), before.as_deref(), Some(1));
            let Some(last) = got.last() else { break };
            before = Some(last.cursor());
            seen.extend(got.into_iter().map(|e| e.key));
        }
        assert_eq!(seen, ["a", "d", "b", "c"]);
        assert_eq!(page(all.clone(), None, None).len(), 4);
        assert_eq!(page(all, None, Some(100_000)).len(), 4);
    }
}
