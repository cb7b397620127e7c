//! What no registration needs any more goes, so the pipelines bucket and the store of
//! components do not grow without end: a tenant that registers a new plugin with every
//! commit would otherwise keep every version and every component it ever sent, for ever, and
//! its quota of component bytes (see `owned`) would fill up with no way back.
//!
//! One pass, with the artifact collector (every engine, now and then; what it does is
//! idempotent, so engines passing at once only repeat each other's work):
//! 1. **Pipeline versions** go when they are not a pipeline's current or highest version, no
//!    execution record names them (an execution runs, resumes and is retried on the version
//!    it started with), and they stopped being current more than the grace ago (a start reads
//!    the current version before its record names it). The highest stays, so no number is
//!    ever used twice.
//! 2. **A tenant's components** that none of its pipeline versions, functions or installed
//!    plugins names, last handed over or named more than the grace ago, are released (by
//!    compare-and-swap: a use noted meanwhile keeps them): they stop counting against its
//!    quota, and it may no longer name them by digest.
//! 3. **The shared store is swept** where it holds only components (NATS; see
//!    `BlobStore::list_components`): a component no tenant owns and no registration of any
//!    tenant names, not stored or used within the grace, is removed. Every hand-over notes
//!    its owner before it stores the component, and a store of what is kept notes a use, so
//!    a removal checked against the use it read (the store refuses it if a use was noted
//!    since) never takes a component being handed over. What a refused registration stored
//!    and components stored before owners were noted go the same way.
//!
//! A tenant whose records cannot all be read is left as it is (its versions and components
//! stay), and the sweep waits for a pass that reads everything: what it names is unknown.
use super::owned::{Owned, PREFIX};
use super::pipelines::{StoredPipeline, named, version_key};
use crate::artifacts::Digest;
use crate::kv::{KvError, get_json};
use crate::service::Service;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// A released owner's mark is kept this long (a hand-over overwrites it), then deleted.
const KEEP_RELEASE_MARKS: Duration = Duration::from_secs(30 * 86_400);

/// What one pass released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Pipeline versions removed.
    pub versions: usize,
    /// Components released by their tenant.
    pub components: usize,
    /// Their bytes (off the tenants' counts).
    pub bytes: u64,
    /// Components removed from the shared store.
    pub removed: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// This engine's cached copies of components another engine removed, forgotten.
    pub forgotten: usize,
    /// Tenants left as they are, with why (a record that cannot be read); while there is
    /// one, the shared store is not swept.
    pub unknown: BTreeMap<String, String>,
}

/// What an execution record says of the version it runs (the rest is not read).
#[derive(serde::Deserialize)]
struct Runs {
    pipeline: String,
    #[serde(default)]
    pipeline_version: u64,
}

/// What the pass needs of a pipeline version (see `Service::memo_of`).
pub(in crate::service) struct VersionMemo {
    version: u64,
    registered_at: u64,
    components: Vec<Digest>,
}

/// Versions read by the pass, by (tenant, pipeline, version): at most this many.
pub(in crate::service) const MAX_VERSION_MEMOS: usize = 20_000;

/// Per tenant, the (pipeline, version) its execution records name, or why they cannot be read.
type Pinned = HashMap<String, Result<HashSet<(String, u64)>, String>>;

fn kv_error(e: KvError) -> String {
    e.to_string()
}

/// Note the component a record of `tenant` names (its digest, read), or that the tenant's
/// records cannot all be read (then nothing of it is released).
fn note_named(
    roots: &mut HashMap<String, HashSet<Digest>>,
    out: &mut Released,
    tenant: &str,
    read: Result<Option<String>, KvError>,
) {
    match read {
        Ok(Some(digest)) => {
            if let Ok(d) = digest.parse() {
                roots.entry(tenant.to_string()).or_default().insert(d);
            }
        }
        Ok(None) => {}
        Err(e) => drop(out.unknown.insert(tenant.to_string(), e.to_string())),
    }
}

impl Service {
    /// One pass (see the module): returns what went.
    pub async fn release_unused(&self) -> Result<Released, String> {
        let grace = self.grace_ms.load(Ordering::Relaxed);
        let before = crate::clock::now().0.saturating_sub(grace);
        let mut out = Released::default();
        let mut roots: HashMap<String, HashSet<Digest>> = HashMap::new();

        // The pipelines bucket: heads `<tenant>/<name>`, versions `<tenant>/<name>/<n>`,
        // installed plugins `_plugins/<tenant>/<name>`; the service's own records start
        // with `_`.
        let pipelines = &*self.edges.pipelines;
        let mut found: BTreeMap<(String, String), (bool, Vec<u64>)> = BTreeMap::new();
        for key in pipelines.keys("").await.map_err(kv_error)? {
            if let Some(rest) = key.strip_prefix("_plugins/") {
                let Some((tenant, _)) = rest.split_once('/') else {
                    continue;
                };
                let pin = get_json::<sluice_core::lockfile::Locked>(pipelines, &key).await;
                note_named(
                    &mut roots,
                    &mut out,
                    tenant,
                    pin.map(|l| l.map(|(l, _)| l.blake3)),
                );
                continue;
            }
            if key.starts_with('_') {
                continue;
            }
            match key.split('/').collect::<Vec<_>>()[..] {
                [tenant, name] => found.entry((tenant.into(), name.into())).or_default().0 = true,
                [tenant, name, n] => {
                    if let Ok(n) = n.parse::<u64>() {
                        found
                            .entry((tenant.into(), name.into()))
                            .or_default()
                            .1
                            .push(n);
                    }
                }
                _ => {}
            }
        }
        // Versions each tenant's execution records name, read once per tenant, when needed.
        let mut pinned = Pinned::new();
        for ((tenant, name), (has_head, numbers)) in found {
            match self
                .prune_versions(&tenant, &name, has_head, numbers, before, &mut pinned)
                .await
            {
                Ok((removed, named)) => {
                    out.versions += removed;
                    roots.entry(tenant).or_default().extend(named);
                }
                Err(why) => drop(out.unknown.insert(tenant, why)),
            }
        }

        // The functions bucket: functions `<tenant>/<name>` and the ledger of owners.
        let functions = &*self.edges.functions;
        let mut ledger = Vec::new();
        for key in functions.keys("").await.map_err(kv_error)? {
            if let Some(rest) = key.strip_prefix(PREFIX) {
                if let Some((tenant, hex)) = rest.split_once('/')
                    && let Ok(d) = format!("blake3:{hex}").parse::<Digest>()
                {
                    ledger.push((tenant.to_string(), d, key.clone()));
                }
                continue;
            }
            if key.starts_with('_') {
                continue;
            }
            let [tenant, _] = key.split('/').collect::<Vec<_>>()[..] else {
                continue;
            };
            let function = get_json::<super::functions::StoredFunction>(functions, &key).await;
            note_named(
                &mut roots,
                &mut out,
                tenant,
                function.map(|f| f.map(|(f, _)| f.digest)),
            );
        }

        // Release what a tenant no longer names, by compare-and-swap: a hand-over or a use
        // between the read and the write keeps it.
        let mut owned = HashSet::new();
        let marks_until = crate::clock::now()
            .0
            .saturating_sub(KEEP_RELEASE_MARKS.as_millis() as u64);
        for (tenant, digest, key) in ledger {
            let (o, revision) = match get_json::<Owned>(functions, &key).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    // Unreadable: taken as owned.
                    out.unknown.insert(tenant, e.to_string());
                    owned.insert(digest);
                    continue;
                }
            };
            if o.released {
                // Unless it was handed over again meanwhile.
                if o.at.0 < marks_until
                    && let Err(e) = functions.delete_if(&key, revision).await
                    && !matches!(e, KvError::Conflict { .. })
                {
                    tracing::warn!("a released owner's mark {key} stays: {e}");
                }
                continue;
            }
            let named = roots.get(&tenant).is_some_and(|r| r.contains(&digest));
            if out.unknown.contains_key(&tenant) || named || o.at.0 >= before {
                owned.insert(digest);
                continue;
            }
            // Its time becomes the release's (the mark is kept from then on).
            let released = serde_json::to_vec(&Owned {
                released: true,
                at: crate::clock::now(),
                ..o.clone()
            })
            .map_err(|e| e.to_string())?;
            match functions.update(&key, released, revision).await {
                Ok(_) => {
                    out.components += 1;
                    out.bytes += o.bytes;
                }
                Err(KvError::Conflict { .. }) => drop(owned.insert(digest)),
                Err(e) => return Err(e.to_string()),
            }
        }

        // The sweep.
        if !out.unknown.is_empty() {
            return Ok(out);
        }
        let blobs = self.engine.blobs.clone();
        let listed = tokio::task::spawn_blocking(move || blobs.list_components())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(listed) = listed else {
            return Ok(out);
        };
        let kept_since = SystemTime::UNIX_EPOCH + Duration::from_millis(before);
        // This engine's copies of what another engine removed (else they stay for ever).
        let (blobs, shared) = (self.engine.blobs.clone(), listed.clone());
        match tokio::task::spawn_blocking(move || {
            blobs.forget_removed_components(&shared, kept_since)
        })
        .await
        .map_err(|e| e.to_string())?
        {
            Ok(n) => out.forgotten = n,
            Err(e) => tracing::warn!("cached copies of removed components stay: {e}"),
        }
        let named: HashSet<&Digest> = roots.values().flatten().collect();
        for c in listed {
            if c.used_at >= kept_since || owned.contains(&c.digest) || named.contains(&c.digest) {
                continue;
            }
            let blobs = self.engine.blobs.clone();
            let freed = tokio::task::spawn_blocking(move || {
                blobs.drop_unused_component(&c.digest, kept_since)
            })
            .await
            .map_err(|e| e.to_string())?;
            match freed {
                Ok(Some(bytes)) => {
                    out.removed += 1;
                    out.removed_bytes += bytes;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(component = %c.digest, "an unused component stays: {e}"),
            }
        }
        Ok(out)
    }

    /// Remove the versions of `tenant`'s pipeline `name` that may go (see the module);
    /// returns how many went and the components the others name. An error if a record
    /// cannot be read (then nothing of the pipeline goes).
    async fn prune_versions(
        &self,
        tenant: &str,
        name: &str,
        has_head: bool,
        mut numbers: Vec<u64>,
        before: u64,
        pinned: &mut Pinned,
    ) -> Result<(usize, Vec<Digest>), String> {
        let pipelines = &*self.edges.pipelines;
        let head = match has_head {
            true => match get_json::<StoredPipeline>(pipelines, &format!("{tenant}/{name}"))
                .await
                .map_err(kv_error)?
            {
                Some((p, _)) => Some(self.memo_of(tenant, &p).await?),
                None => None,
            },
            false => None,
        };
        numbers.sort_unstable();
        let mut versions = Vec::with_capacity(numbers.len());
        for n in &numbers {
            let key = (tenant.to_string(), name.to_string(), *n);
            let memo = self.release_memo.lock().unwrap().get(&key).cloned();
            let memo = match memo {
                Some(m) => m,
                None => match get_json::<StoredPipeline>(pipelines, &version_key(tenant, name, *n))
                    .await
                    .map_err(kv_error)?
                {
                    Some((p, _)) => self.memo_of(tenant, &p).await?,
                    None => continue,
                },
            };
            versions.push(memo);
        }
        let highest = numbers.last().copied();
        let mut named: Vec<Digest> = head.iter().flat_map(|h| h.components.clone()).collect();
        let mut removed = 0;
        for (i, v) in versions.iter().enumerate() {
            // Current until the next version was registered (the last one, until the
            // pipeline was removed: kept only as long as an execution names it).
            let current_until = versions.get(i + 1).map(|next| next.registered_at);
            let needed = head.as_ref().is_some_and(|h| h.version == v.version)
                || current_until.is_some_and(|t| t >= before)
                || v.registered_at >= before;
            if !needed && !pinned.contains_key(tenant) {
                let runs = self.pinned_versions(tenant).await;
                pinned.insert(tenant.to_string(), runs);
            }
            let named_by_a_run = match pinned.get(tenant) {
                Some(Ok(runs)) => runs.contains(&(name.to_string(), v.version)),
                // What its executions run is unknown: every version stays.
                Some(Err(why)) => return Err(why.clone()),
                None => false,
            };
            if needed || named_by_a_run {
                named.extend(v.components.iter().copied());
                continue;
            }
            // The highest stays for its number, naming nothing: the pipeline was removed
            // (or its head not written), and nothing runs it.
            if Some(v.version) == highest {
                continue;
            }
            pipelines
                .delete(&version_key(tenant, name, v.version))
                .await
                .map_err(kv_error)?;
            self.release_memo.lock().unwrap().remove(&(
                tenant.to_string(),
                name.to_string(),
                v.version,
            ));
            removed += 1;
        }
        Ok((removed, named))
    }

    /// What the pass reads of a version, once per engine (a version never changes).
    async fn memo_of(&self, tenant: &str, p: &StoredPipeline) -> Result<Arc<VersionMemo>, String> {
        let key = (tenant.to_string(), p.name.clone(), p.version);
        if let Some(m) = self.release_memo.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let memo = Arc::new(VersionMemo {
            version: p.version,
            registered_at: p.registered_at.0,
            components: self.components_of(tenant, p).await?,
        });
        self.release_memo.lock().unwrap().insert(key, memo.clone());
        Ok(memo)
    }

    /// The components a pipeline version names: its uploaded files (by path) and marketplace
    /// pins, `uses: blake3:…`, and the files read from its folder when it was registered (for
    /// a version registered before they were noted, read again from the folder).
    async fn components_of(&self, tenant: &str, p: &StoredPipeline) -> Result<Vec<Digest>, String> {
        let mut out: Vec<Digest> = p.plugins.values().filter_map(|d| d.parse().ok()).collect();
        // A digest that does not parse named nothing (the pipeline could not have run).
        out.extend(
            named(&p.yaml)
                .digests
                .iter()
                .filter_map(|(_, d)| d.parse::<Digest>().ok()),
        );
        match &p.components {
            Some(files) => out.extend(files.iter().filter_map(|d| d.parse::<Digest>().ok())),
            None if p.dir.is_some() || p.bundle.is_some() => {
                let loaded = self.loaded(tenant, p).await.map_err(|e| {
                    format!(
                        "version {} of `{}` (registered before the plugin files of its folder were noted) cannot be read again: {e}",
                        p.version, p.name
                    )
                })?;
                out.extend(
                    loaded
                        .plugins
                        .values()
                        .flatten()
                        .filter(|plugin| {
                            crate::service::pipelines::is_plugin_file(&plugin.reference)
                        })
                        .filter_map(|plugin| plugin.digest.parse::<Digest>().ok()),
                );
            }
            None => {}
        }
        Ok(out)
    }

    /// (pipeline, version) of every execution record of `tenant`; an error if one cannot be
    /// read.
    async fn pinned_versions(&self, tenant: &str) -> Result<HashSet<(String, u64)>, String> {
        let executions = &*self.edges.executions;
        let mut out = HashSet::new();
        for key in executions
            .keys(&format!("{tenant}/x/"))
            .await
            .map_err(kv_error)?
        {
            if let Some((r, _)) = get_json::<Runs>(executions, &key).await.map_err(kv_error)? {
                out.insert((r.pipeline, r.pipeline_version));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::artifacts::tenants::FixedKey;
    use crate::artifacts::{BlobStore, ComponentInfo, Digest, LocalStore, StoreError};
    use crate::bus::MemoryBus;
    use crate::executor::Engine;
    use crate::service::tests::{service_of, shared_edges};
    use sluice_api::tenancy::Quotas;
    use sluice_api::verbs::{PipelineGet, PipelinePut, PipelineRm, TenantCreate, TenantUsage};
    use sluice_api::{ApiError, Code, Origin, Principal};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime};

    /// The data folder's store, holding only components, as the service's store on NATS
    /// does: listed with each file's time as its last use.
    struct OnlyComponents(LocalStore);

    impl BlobStore for OnlyComponents {
        fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
            self.0.put_file(path)
        }
        fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
            self.0.put_bytes(bytes)
        }
        fn get_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
            self.0.get_to_file(digest, dest)
        }
        fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
            self.0.get_bytes(digest)
        }
        fn size_of(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
            self.0.size_of(digest)
        }
        fn verify(&self, digest: &Digest) -> Result<u64, StoreError> {
            self.0.verify(digest)
        }
        fn contains(&self, digest: &Digest) -> bool {
            self.0.contains(digest)
        }
        fn discard_corrupted(&self, digest: &Digest) -> Result<bool, StoreError> {
            self.0.discard_corrupted(digest)
        }
        fn list_components(&self) -> Result<Option<Vec<ComponentInfo>>, StoreError> {
            let mut out = Vec::new();
            for digest in self.0.digests()? {
                let m = std::fs::metadata(self.0.blob_path(&digest)).unwrap();
                out.push(ComponentInfo {
                    digest,
                    bytes: m.len(),
                    used_at: m.modified().unwrap(),
                });
            }
            Ok(Some(out))
        }
        fn drop_unused_component(
            &self,
            digest: &Digest,
            before: SystemTime,
        ) -> Result<Option<u64>, StoreError> {
            let path = self.0.blob_path(digest);
            let m = std::fs::metadata(&path).unwrap();
            if m.modified().unwrap() >= before {
                return Ok(None);
            }
            std::fs::remove_file(path).unwrap();
            Ok(Some(m.len()))
        }
    }

    fn acme() -> Principal {
        Principal::local("acme", Origin::Remote)
    }

    fn pipeline(name: &str, uses: &str) -> String {
        format!(
            "name: {name}\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: {uses}\n"
        )
    }

    async fn upload(service: &crate::service::Service, file: &[u8]) -> Result<String, ApiError> {
        crate::service::tests::upload_as(service, "acme", file).await
    }

    async fn put(service: &crate::service::Service, yaml: String) -> Result<u64, ApiError> {
        let put = PipelinePut {
            file: "p.yaml".into(),
            yaml,
            ..Default::default()
        };
        Ok(service.call(&acme(), put).await?.version)
    }

    async fn version(service: &crate::service::Service, name: &str, v: u64) -> Option<u64> {
        let get = PipelineGet {
            name: name.into(),
            version: Some(v),
        };
        service.call(&acme(), get).await.ok().map(|p| p.version)
    }

    /// A tenant's components count against its quota until nothing of its names them: then
    /// the pass releases them (with the old pipeline versions that named them), the quota
    /// has room again, the tenant may no longer name them by digest, and the shared store
    /// removes what nobody owns or names — not while a tenant's records cannot be read. A
    /// version an execution ran stays, and so does the highest of a removed pipeline (numbers
    /// are never used twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn components_nothing_names_are_released_and_their_quota_freed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        // Sealed artifacts, as the service's: the parts of an upload are not components.
        let data = dir.path().join("a");
        let mut engine = Engine::for_service(&data, bus.clone(), None).unwrap();
        engine.seal_artifacts(Arc::new(FixedKey([7; 32]))).unwrap();
        let cas = crate::executor::DataDir::create(&data).unwrap().cas();
        engine.blobs = Arc::new(OnlyComponents(LocalStore::open(cas).unwrap()));
        let service = service_of(engine, bus, &shared);
        tokio::spawn(service.clone().run(2));
        service.enable_auth(Duration::from_secs(3600));
        let names = crate::plugins::builtin::names();
        let (a, b) = (
            crate::plugins::builtin::find("noop", 1).unwrap(),
            names
                .iter()
                .filter(|n| *n != "noop@1")
                .map(|n| {
                    let (name, major) = n.split_once('@').unwrap();
                    crate::plugins::builtin::find(name, major.parse().unwrap()).unwrap()
                })
                .next()
                .unwrap(),
        );
        let quotas = Quotas {
            component_bytes: Some((a.len() + b.len() - 1) as u64),
            ..Default::default()
        };
        let create = TenantCreate {
            name: "acme".into(),
            policy: Default::default(),
            quotas,
        };
        service.call(&acme(), create).await.unwrap();
        let used = || {
            let service = service.clone();
            async move {
                service
                    .call(&acme(), TenantUsage { name: None })
                    .await
                    .unwrap()
                    .component_bytes
            }
        };
        let blobs = service.engine.blobs.clone();

        // Two components do not fit: the second is refused, and not kept.
        let a_digest = upload(&service, a).await.unwrap();
        let e = upload(&service, b).await.unwrap_err();
        assert_eq!(e.code, Code::QuotaExceeded, "{e:?}");
        assert!(e.message.contains("components"), "{}", e.message);
        assert!(!blobs.contains(&Digest::of(b)));
        assert_eq!(used().await, a.len() as u64);
        // Something stored that nobody owns (as a refused registration's plugin file).
        let stray = blobs.put_bytes(b"\0asm stray").unwrap();

        // Version 1 of `p` names the component; version 2 no longer does. `q` runs once on
        // its version 1, then gets a version 2.
        assert_eq!(put(&service, pipeline("p", &a_digest)).await.unwrap(), 1);
        assert_eq!(put(&service, pipeline("p", "noop@1")).await.unwrap(), 2);
        assert_eq!(put(&service, pipeline("q", "noop@1")).await.unwrap(), 1);
        let (id, _) = service
            .start("acme", "q", br#"{"id":"e-1"}"#, false, false)
            .await
            .unwrap()
            .unwrap();
        crate::service::tests::poll_until_in(&service, "acme", &id, |e| e.status.is_terminal())
            .await
            .expect("the execution ends");
        assert_eq!(put(&service, pipeline("q", "noop@1")).await.unwrap(), 2);

        // Within the grace, nothing goes.
        let r = service.release_unused().await.unwrap();
        assert_eq!(r, Default::default());
        assert!(version(&service, "p", 1).await.is_some());

        // Past it, but with a tenant whose records cannot be read: p's version 1 goes, and
        // the component it alone named is released, but the shared store is not swept.
        service.grace_ms.store(0, Ordering::Relaxed);
        shared
            .pipelines
            .create("broken/p/1", b"{ not a record".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = service.release_unused().await.unwrap();
        assert_eq!(
            (r.versions, r.components, r.bytes, r.removed),
            (1, 1, a.len() as u64, 0),
            "{r:?}"
        );
        assert!(r.unknown.contains_key("broken"), "{r:?}");
        assert!(blobs.contains(&Digest::of(a)) && blobs.contains(&stray));
        assert_eq!(version(&service, "p", 1).await, None);
        assert_eq!(version(&service, "p", 2).await, Some(2));
        assert_eq!(
            version(&service, "q", 1).await,
            Some(1),
            "an execution ran it"
        );
        assert_eq!(used().await, 0);
        let e = put(&service, pipeline("p", &a_digest)).await.unwrap_err();
        assert!(
            e.problem_lines().contains("not one this tenant uploaded"),
            "{e:?}"
        );

        // Every record readable: what nobody owns or names goes from the shared store.
        shared.pipelines.delete("broken/p/1").await.unwrap();
        let r = service.release_unused().await.unwrap();
        assert_eq!((r.removed, r.components), (2, 0), "{r:?}");
        assert_eq!(r.removed_bytes, (a.len() + b"\0asm stray".len()) as u64);
        assert!(!blobs.contains(&Digest::of(a)) && !blobs.contains(&stray));

        // The quota has room again. A component its owner handed over within the grace stays
        // however long ago the store last saw it used; past the grace, it is released and
        // removed in one pass.
        upload(&service, b).await.unwrap();
        assert_eq!(used().await, b.len() as u64);
        let b_path = crate::executor::DataDir::create(&data)
            .unwrap()
            .cas()
            .join("blobs")
            .join(&Digest::of(b).hex()[..2])
            .join(&Digest::of(b).hex()[2..]);
        std::fs::File::options()
            .write(true)
            .open(&b_path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(2 * 86_400))
            .unwrap();
        service.grace_ms.store(3_600_000, Ordering::Relaxed);
        let r = service.release_unused().await.unwrap();
        assert_eq!((r.components, r.removed), (0, 0), "{r:?}");
        assert!(blobs.contains(&Digest::of(b)));
        service.grace_ms.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = service.release_unused().await.unwrap();
        assert_eq!((r.components, r.removed), (1, 1), "{r:?}");
        assert!(!blobs.contains(&Digest::of(b)));
        assert_eq!(used().await, 0);

        // A removed pipeline keeps its highest version, naming nothing: its components are
        // released; registered again, it counts on.
        assert_eq!(upload(&service, a).await.unwrap(), a_digest);
        assert_eq!(put(&service, pipeline("p", &a_digest)).await.unwrap(), 3);
        service
            .call(&acme(), PipelineRm { name: "p".into() })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = service.release_unused().await.unwrap();
        assert_eq!(
            (r.versions, r.components),
            (1, 1),
            "p's version 2 went: {r:?}"
        );
        assert_eq!(version(&service, "p", 3).await, Some(3));
        assert_eq!(used().await, 0);
        assert_eq!(put(&service, pipeline("p", "noop@1")).await.unwrap(), 4);
    }
}
