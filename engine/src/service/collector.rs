//! The artifact collector: each tenant's sealed artifacts that no execution record, pipeline
//! version (its uploaded folder) or action-cache entry names any more are removed once they
//! have not been kept or used for `--artifact-grace`, and come off the tenant's count of
//! stored bytes (its quota). Records go with the retention of executions, so their artifacts
//! go a sweep later.
//!
//! Every engine sweeps now and then (with the retention sweep); removals are idempotent, so
//! engines sweeping at once only repeat each other's work. Roots are read from the records
//! before anything is removed; a record written later names blobs put after the listing or
//! used within the grace, which stay.
use crate::artifacts::collect::{Collected, collect};
use crate::artifacts::{Digest, SealedInfo};
use crate::kv::get_json;
use crate::service::Service;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// How long an artifact nothing names is kept after it was last kept or used, unless
/// `--artifact-grace` says otherwise: longer than any action runs between storing its
/// outputs and recording them, and than a folder waits between its upload and the pipeline
/// registered with it.
pub const ARTIFACT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The least grace accepted: a use of a shared blob is noted only this often.
pub const MIN_GRACE: Duration = crate::artifacts::sealed::USE_NOTED_WITHIN;

impl Service {
    /// Keep artifacts nothing names for `grace` after their last use (at least [`MIN_GRACE`]).
    pub fn artifact_grace(&self, grace: Duration) {
        let grace = grace.max(MIN_GRACE);
        self.grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Remove, in every tenant's sealed store, the artifacts nothing names that were last
    /// kept or used more than the grace ago; per tenant, what was done. (A service that keeps
    /// artifacts plain — none in this codebase — collects nothing.)
    pub async fn collect_artifacts(&self) -> Result<BTreeMap<String, Collected>, String> {
        let mut done = BTreeMap::new();
        let Some(stores) = self.engine.artifacts.clone() else {
            return Ok(done);
        };
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::Relaxed));
        let before = SystemTime::now() - grace;
        let objects = stores.objects().clone();
        let listed = tokio::task::spawn_blocking(move || objects.list_sealed())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut by_tenant: BTreeMap<String, Vec<SealedInfo>> = BTreeMap::new();
        for blob in listed {
            by_tenant.entry(blob.ns.clone()).or_default().push(blob);
        }
        for (tenant, blobs) in by_tenant {
            // Nothing old enough: the records need not be read.
            if blobs.iter().all(|b| b.used_at >= before) {
                continue;
            }
            let roots = self.artifact_roots(&tenant).await?;
            let store = stores.store(&tenant).await.map_err(|e| e.to_string())?;
            let objects = stores.objects().clone();
            let ns = tenant.clone();
            let collected = tokio::task::spawn_blocking(move || {
                collect(&*store, &*objects, &ns, &blobs, roots, before)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("tenant `{tenant}`: {e}"))?;
            done.insert(tenant, collected);
        }
        Ok(done)
    }

    /// Every artifact the tenant's records name: its executions' inputs and outputs, its
    /// pipelines' uploaded folders (every version: a running execution may run an older
    /// one), its action-cache entries' outputs.
    async fn artifact_roots(&self, tenant: &str) -> Result<Vec<Digest>, String> {
        let mut roots = Vec::new();
        let mut named = |digest: &str| {
            if let Ok(d) = digest.parse::<Digest>() {
                roots.push(d);
            }
        };
        let executions = &*self.edges.executions;
        for key in executions
            .keys(&format!("{tenant}/x/"))
            .await
            .map_err(|e| e.to_string())?
        {
            // A record that cannot be read stops the collection: what it names is unknown.
            let Some((exec, _)) = get_json::<crate::scheduler::Execution>(executions, &key)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            for action in exec.stages.iter().flat_map(|s| &s.actions) {
                action
                    .inputs
                    .values()
                    .chain(action.artifacts.values())
                    .for_each(|d| named(d));
            }
        }
        // Pipelines (heads and versions) share the bucket with other records: only the
        // field read here matters.
        #[derive(serde::Deserialize)]
        struct WithBundle {
            bundle: Option<String>,
        }
        let pipelines = &*self.edges.pipelines;
        for key in pipelines
            .keys(&format!("{tenant}/"))
            .await
            .map_err(|e| e.to_string())?
        {
            let Some((bytes, _)) = pipelines.get(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if let Ok(WithBundle {
                bundle: Some(bundle),
            }) = serde_json::from_slice(&bytes)
            {
                named(&bundle);
            }
        }
        if let Some(cache) = &self.engine.cache {
            for entry in cache.list(tenant).await.map_err(|e| e.to_string())? {
                entry.artifacts.values().for_each(|d| named(d));
            }
        }
        Ok(roots)
    }

    /// One sweep of the collector, logged.
    pub(in crate::service) async fn collect_and_log(&self) {
        match self.collect_artifacts().await {
            Ok(done) => {
                for (tenant, c) in done.iter().filter(|(_, c)| c.removed > 0) {
                    tracing::info!(
                        tenant = %tenant,
                        removed = c.removed,
                        bytes = c.bytes,
                        kept = c.kept,
                        "artifacts nothing names any more removed"
                    );
                }
            }
            Err(e) => tracing::warn!("the artifact collector failed (tried again later): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::tenants::FixedKey;
    use crate::artifacts::tree;
    use crate::bus::MemoryBus;
    use crate::executor::Engine;
    use crate::scheduler::Status;
    use crate::service::exec_key;
    use crate::service::tests::{poll_until, register, service_of, shared_edges};
    use std::sync::Arc;

    const SNAP: &str = "name: snap\nstages:\n  - name: Source\n    actions:\n      - { name: Snap, uses: source-dir@1, with: { path: app }, outputs: [src] }\n";

    /// Make every sealed blob look last used two days ago (past any grace).
    fn age_all(service: &Service) {
        let objects = service.engine.artifacts.as_ref().unwrap().objects().clone();
        let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
        for b in objects.list_sealed().unwrap() {
            let path = objects.sealed_path(&b.ns, &b.address).unwrap();
            std::fs::File::open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn artifacts_go_when_no_record_names_them_and_their_grace_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        let mut engine = Engine::for_service(&dir.path().join("a"), bus.clone(), None).unwrap();
        engine.seal_artifacts(Arc::new(FixedKey([7; 32]))).unwrap();
        let cache = Arc::new(crate::cache::ActionCache::new(shared.pipelines.clone()));
        engine.cache = Some(cache.clone());
        let service = service_of(engine, bus, &shared);
        tokio::spawn(service.clone().run(2));
        std::fs::create_dir_all(dir.path().join("app/sub")).unwrap();
        std::fs::write(dir.path().join("app/index.html"), "hello").unwrap();
        std::fs::write(dir.path().join("app/sub/style.css"), "body {}").unwrap();
        register(&service, dir.path(), "snap.yaml", SNAP).await;
        let (id, _) = service
            .start("default", "snap", br#"{"id":"e-1"}"#, false, false)
            .await
            .unwrap()
            .unwrap();
        let exec = poll_until(&service, &id, |e| e.status.is_terminal())
            .await
            .expect("the execution ends");
        assert_eq!(exec.status, Status::Succeeded, "{exec:#?}");
        let src: Digest = exec.stages[0].actions[0].artifacts["src"].parse().unwrap();
        let store = service.engine.artifacts_for("default").await.unwrap();
        // An upload nothing came to name, a folder a pipeline version names, a cache entry's
        // output.
        let loose = store.put_bytes(b"an upload never used").unwrap();
        let bundle_dir = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle_dir).unwrap();
        std::fs::write(bundle_dir.join("pipeline.yaml"), SNAP).unwrap();
        let (bundle, _) = tree::put_tree(&*store, &bundle_dir).unwrap();
        let mut stored =
            crate::service::registry::pipelines::get(&*shared.pipelines, "default", "snap", None)
                .await
                .unwrap()
                .unwrap();
        stored.bundle = Some(bundle.to_string());
        crate::service::registry::pipelines::put(&*shared.pipelines, "default", stored)
            .await
            .unwrap();
        let cached = store.put_bytes(b"a cached output").unwrap();
        cache
            .put(
                "default",
                crate::cache::Entry {
                    key: "k".into(),
                    pipeline: "snap".into(),
                    from: format!("{id}/Source/Snap"),
                    variables: Default::default(),
                    artifacts: [("out".to_string(), cached.to_string())].into(),
                    summary: None,
                    created: "2026-12-07T00:00:00Z".into(),
                },
            )
            .await
            .unwrap();
        let listed = |service: &Service| -> std::collections::HashSet<Digest> {
            let objects = service.engine.artifacts.as_ref().unwrap().objects();
            objects
                .list_sealed()
                .unwrap()
                .into_iter()
                .map(|b| b.address)
                .collect()
        };
        let all = listed(&service);
        assert!(all.contains(&loose) && all.contains(&src) && all.contains(&bundle));

        // Within the grace nothing goes, named or not.
        assert!(service.collect_artifacts().await.unwrap().is_empty());
        assert_eq!(listed(&service), all);

        // Past it, only what nothing names.
        age_all(&service);
        let done = service.collect_artifacts().await.unwrap();
        assert_eq!(done["default"].removed, 1, "{done:?}");
        let now = listed(&service);
        assert!(!now.contains(&loose));
        assert_eq!(now.len(), all.len() - 1);
        tree::materialize(&*store, &src, &dir.path().join("restored")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("restored/sub/style.css")).unwrap(),
            "body {}"
        );

        // The execution's record deleted (as its retention does): its artifacts go, and the
        // tenant's stored bytes with them.
        let used = service
            .engine
            .artifacts
            .as_ref()
            .unwrap()
            .stored_bytes("default")
            .unwrap();
        shared
            .executions
            .delete(&exec_key("default", &id))
            .await
            .unwrap();
        age_all(&service);
        let done = service.collect_artifacts().await.unwrap();
        let gone = done["default"];
        assert!(gone.removed >= 3, "a tree, a subtree, two files: {done:?}");
        let now = listed(&service);
        assert!(!now.contains(&src) && now.contains(&bundle) && now.contains(&cached));
        assert_eq!(
            service
                .engine
                .artifacts
                .as_ref()
                .unwrap()
                .stored_bytes("default")
                .unwrap(),
            used - gone.bytes
        );
    }
}
