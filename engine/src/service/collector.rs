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

/// The least grace accepted: twice as long as a use of a shared blob may go unnoted, with room
/// for the engines' clocks to differ.
pub const MIN_GRACE: Duration = Duration::from_secs(3600);

/// Between collections (the retention sweep may come sooner while it has a backlog).
const COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// What one collection did, per tenant.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Tenants collected.
    pub done: BTreeMap<String, Collected>,
    /// Tenants whose collection stopped (nothing removed after the error), with why.
    pub failed: BTreeMap<String, String>,
}

impl Service {
    /// Keep artifacts nothing names for `grace` after their last use (at least [`MIN_GRACE`]).
    pub fn artifact_grace(&self, grace: Duration) {
        let grace = grace.max(MIN_GRACE);
        self.grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Remove, in every tenant's sealed store, the artifacts nothing names that were last
    /// kept or used more than the grace ago. A tenant whose records or trees cannot all be
    /// read is left as it is (reported in [`Sweep::failed`]); the others are collected.
    pub async fn collect_artifacts(&self) -> Result<Sweep, String> {
        let mut sweep = Sweep::default();
        let Some(stores) = self.engine.artifacts.clone() else {
            return Ok(sweep);
        };
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::Relaxed));
        let before = SystemTime::now() - grace;
        let objects = stores.objects().clone();
        let listed = tokio::task::spawn_blocking(move || list_sealed_forgetting(&*objects, before))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut by_tenant: BTreeMap<String, Vec<SealedInfo>> = BTreeMap::new();
        // Namespaces that are not tenants (`_local`: the runs of a data folder the embedded
        // service shares) are not the service's to collect.
        for blob in listed.into_iter().filter(|b| !b.ns.starts_with('_')) {
            by_tenant.entry(blob.ns.clone()).or_default().push(blob);
        }
        for (tenant, blobs) in by_tenant {
            // Nothing old enough: the records need not be read.
            if blobs.iter().all(|b| b.used_at >= before) {
                continue;
            }
            match self.collect_tenant(&stores, &tenant, blobs, before).await {
                Ok(collected) => drop(sweep.done.insert(tenant, collected)),
                Err(e) => drop(sweep.failed.insert(tenant, e)),
            }
        }
        Ok(sweep)
    }

    async fn collect_tenant(
        &self,
        stores: &crate::artifacts::tenants::TenantStores,
        tenant: &str,
        blobs: Vec<SealedInfo>,
        before: SystemTime,
    ) -> Result<Collected, String> {
        let roots = self.artifact_roots(tenant).await?;
        let store = stores.store(tenant).await.map_err(|e| e.to_string())?;
        let objects = stores.objects().clone();
        let ns = tenant.to_string();
        tokio::task::spawn_blocking(move || collect(&*store, &*objects, &ns, &blobs, roots, before))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Every artifact the tenant's records name: its action-cache entries' outputs, its
    /// pipelines' uploaded folders (every version: a running execution may run an older
    /// one), its executions' inputs and outputs — read in that order, so a cache hit recorded
    /// while they are read is found in its entry or in the execution that took it. A record
    /// that cannot be read, or names what is not a digest, stops the tenant's collection:
    /// what it names is unknown.
    async fn artifact_roots(&self, tenant: &str) -> Result<Vec<Digest>, String> {
        let mut roots = Vec::new();
        let mut named = |digest: &str, whose: &str| -> Result<(), String> {
            roots.push(
                digest
                    .parse::<Digest>()
                    .map_err(|e| format!("{whose} names {e}"))?,
            );
            Ok(())
        };
        if let Some(cache) = &self.engine.cache {
            for entry in cache.list(tenant).await.map_err(|e| e.to_string())? {
                for d in entry.artifacts.values() {
                    named(d, &format!("cache entry {}", entry.key))?;
                }
            }
        }
        // Pipelines (heads and versions) share the bucket with other records of the tenant,
        // all JSON objects: only the field read here matters.
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
            if let Some((WithBundle { bundle: Some(b) }, _)) =
                get_json::<WithBundle>(pipelines, &key)
                    .await
                    .map_err(|e| e.to_string())?
            {
                named(&b, &key)?;
            }
        }
        let executions = &*self.edges.executions;
        for key in executions
            .keys(&format!("{tenant}/x/"))
            .await
            .map_err(|e| e.to_string())?
        {
            let Some((exec, _)) = get_json::<crate::scheduler::Execution>(executions, &key)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            for action in exec.stages.iter().flat_map(|s| &s.actions) {
                for d in action.inputs.values().chain(action.artifacts.values()) {
                    named(d, &key)?;
                }
            }
        }
        Ok(roots)
    }

    /// On an engine whose turn it is not to sweep: forget its cached copies of the artifacts
    /// and components the sweeping engine removed, logged, unless this ran less than
    /// [`COLLECT_EVERY`] ago. (The sweeping engine does it as part of its collection.)
    pub(in crate::service) async fn forget_and_log(&self, last: &mut Option<std::time::Instant>) {
        if !due(last) {
            return;
        }
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::Relaxed));
        let before = SystemTime::now() - grace;
        let (artifacts, blobs) = (self.engine.artifacts.clone(), self.engine.blobs.clone());
        // The two are independent: one failing leaves the other to do.
        let done = tokio::task::spawn_blocking(move || {
            if let Some(Err(e)) =
                artifacts.map(|stores| list_sealed_forgetting(&**stores.objects(), before))
            {
                tracing::warn!("cached copies of removed artifacts stay: {e}");
            }
            match blobs.list_components().and_then(|listed| match listed {
                Some(listed) => blobs.forget_removed_components(&listed, before),
                None => Ok(0),
            }) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    forgotten = n,
                    "cached copies of removed components forgotten"
                ),
                Err(e) => tracing::warn!("cached copies of removed components stay: {e}"),
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!("cached copies of removed artifacts and components stay: {e}");
        }
    }

    /// One collection, logged, unless one ran less than [`COLLECT_EVERY`] ago.
    pub(in crate::service) async fn collect_and_log(&self, last: &mut Option<std::time::Instant>) {
        if !due(last) {
            return;
        }
        // First the versions and components nothing needs: the folders of the versions that
        // go are collected with the artifacts right after.
        match self.release_unused().await {
            Ok(r) => {
                if r.versions + r.components + r.removed + r.forgotten > 0 {
                    tracing::info!(
                        versions = r.versions,
                        components = r.components,
                        bytes = r.bytes,
                        removed = r.removed,
                        removed_bytes = r.removed_bytes,
                        forgotten = r.forgotten,
                        "pipeline versions and components nothing names any more released"
                    );
                }
                for (tenant, why) in &r.unknown {
                    tracing::warn!(tenant = %tenant, "the tenant's versions and components stay as they are, and the shared store is not swept: {why}");
                }
            }
            Err(e) => tracing::warn!("releasing unused components failed (tried again later): {e}"),
        }
        match self.collect_artifacts().await {
            Ok(sweep) => {
                for (tenant, c) in sweep.done.iter().filter(|(_, c)| c.removed > 0) {
                    tracing::info!(
                        tenant = %tenant,
                        removed = c.removed,
                        bytes = c.bytes,
                        kept = c.kept,
                        "artifacts nothing names any more removed"
                    );
                }
                for (tenant, e) in &sweep.failed {
                    tracing::warn!(tenant = %tenant, "the artifact collector left the tenant's artifacts as they are: {e}");
                }
            }
            Err(e) => tracing::warn!("the artifact collector failed (tried again later): {e}"),
        }
    }
}

/// Whether the hourly work is due (none ran, or the last ran [`COLLECT_EVERY`] ago); if so,
/// it counts as run now.
pub(in crate::service) fn due(last: &mut Option<std::time::Instant>) -> bool {
    if last.is_some_and(|at| at.elapsed() < COLLECT_EVERY) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// The sealed blobs every engine shares, listed after this engine forgot its cached copies of
/// those another engine collected (else they stay for ever).
fn list_sealed_forgetting(
    objects: &dyn crate::artifacts::SealedObjects,
    before: SystemTime,
) -> Result<Vec<SealedInfo>, crate::artifacts::StoreError> {
    let listed = objects.list_sealed()?;
    let forgotten = objects.forget_removed(&listed, before)?;
    if forgotten > 0 {
        tracing::info!(forgotten, "cached copies of collected artifacts removed");
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::BlobStore;
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
        let cached_dir = dir.path().join("cached");
        std::fs::create_dir_all(&cached_dir).unwrap();
        std::fs::write(cached_dir.join("out.txt"), "a cached output").unwrap();
        let (cached, _) = tree::put_tree(&*store, &cached_dir).unwrap();
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
        // A local run's artifact in the same data folder (not a tenant's: never collected).
        let local_run = crate::artifacts::SealedStore::new(
            service.engine.artifacts.as_ref().unwrap().objects().clone(),
            crate::artifacts::tenants::LOCAL_NAMESPACE,
            crate::artifacts::TenantKey::derive(&[9; 32]),
        )
        .put_bytes(b"a local run's output")
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
        // Another tenant with a record this version cannot read: what its blobs are named by
        // is unknown, so they stay; the other tenants are collected all the same.
        let broken = service.engine.artifacts_for("broken").await.unwrap();
        let unknown = broken.put_bytes(b"named by who knows").unwrap();
        shared
            .executions
            .create(
                &exec_key("broken", "01KB0000000000000000000000"),
                b"{ not a record".to_vec(),
            )
            .await
            .unwrap();
        let all = listed(&service);
        assert!(all.contains(&loose) && all.contains(&src) && all.contains(&bundle));

        // Within the grace nothing goes, named or not.
        let sweep = service.collect_artifacts().await.unwrap();
        assert!(
            sweep.done.is_empty() && sweep.failed.is_empty(),
            "{sweep:?}"
        );
        assert_eq!(listed(&service), all);

        // Past it, only what nothing names.
        age_all(&service);
        let sweep = service.collect_artifacts().await.unwrap();
        assert!(
            sweep.failed.len() == 1 && sweep.failed["broken"].contains("cannot read"),
            "{sweep:?}"
        );
        let done = sweep.done;
        assert_eq!(done["default"].removed, 1, "{done:?}");
        let now = listed(&service);
        assert!(!now.contains(&loose) && now.contains(&unknown));
        assert_eq!(now.len(), all.len() - 1);
        assert!(now.contains(&local_run));
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
        let done = service.collect_artifacts().await.unwrap().done;
        let gone = done["default"];
        assert_eq!(gone.removed, 4, "a tree, a subtree, two files: {done:?}");
        let now = listed(&service);
        assert!(!now.contains(&src) && now.contains(&bundle) && now.contains(&cached));
        assert!(
            now.contains(&local_run),
            "a local run's artifacts are not the service's"
        );
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
