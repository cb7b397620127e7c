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
//!    plugins names, last handed over more than the grace ago, are released: they stop
//!    counting against its quota, and it may no longer name them by digest.
//! 3. **Components nobody owns any more** and no registration of any tenant names are removed
//!    from the shared store, where it holds only components (NATS; the embedded data folder's
//!    store keeps them, see `BlobStore::remove_component`). A component stored before owners
//!    were noted was never owned, so never released: it stays.
use super::owned::{Owned, PREFIX};
use super::pipelines::{StoredPipeline, named, version_key};
use crate::artifacts::Digest;
use crate::kv::{KvError, get_json};
use crate::service::Service;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

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
    /// Tenants whose components were left as they are, with why (a record that does not say
    /// what it names); while there is one, nothing is removed from the shared store.
    pub unknown: BTreeMap<String, String>,
}

/// What an execution record says of the version it runs (the rest is not read).
#[derive(serde::Deserialize)]
struct Runs {
    pipeline: String,
    #[serde(default)]
    pipeline_version: u64,
}

/// The components a pipeline version names: its uploaded files (by path) and marketplace
/// pins, `uses: blake3:…`, and the files read from its folder when it was registered.
fn components_of(p: &StoredPipeline) -> Result<Vec<Digest>, String> {
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
            return Err(format!(
                "version {} of `{}` was registered before the components of its folder were noted",
                p.version, p.name
            ));
        }
        None => {}
    }
    Ok(out)
}

fn kv_error(e: KvError) -> String {
    e.to_string()
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
                if let Some((tenant, _)) = rest.split_once('/')
                    && let Some((l, _)) = get_json::<sluice_core::lockfile::Locked>(pipelines, &key)
                        .await
                        .map_err(kv_error)?
                    && let Ok(d) = l.blake3.parse()
                {
                    roots.entry(tenant.to_string()).or_default().insert(d);
                }
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
        let mut pinned: HashMap<String, Result<HashSet<(String, u64)>, String>> = HashMap::new();
        for ((tenant, name), (has_head, mut numbers)) in found {
            let head = match has_head {
                true => get_json::<StoredPipeline>(pipelines, &format!("{tenant}/{name}"))
                    .await
                    .map_err(kv_error)?
                    .map(|(p, _)| p),
                false => None,
            };
            numbers.sort_unstable();
            let mut versions = Vec::with_capacity(numbers.len());
            for n in &numbers {
                if let Some((p, _)) =
                    get_json::<StoredPipeline>(pipelines, &version_key(&tenant, &name, *n))
                        .await
                        .map_err(kv_error)?
                {
                    versions.push(p);
                }
            }
            let highest = numbers.last().copied();
            let mut kept: Vec<&StoredPipeline> = head.iter().collect();
            for (i, p) in versions.iter().enumerate() {
                // Current until the next version was registered.
                let current_until = versions.get(i + 1).map(|next| next.registered_at.0);
                let keep = head.as_ref().is_some_and(|h| h.version == p.version)
                    || Some(p.version) == highest
                    || current_until.is_none_or(|t| t >= before)
                    || p.registered_at.0 >= before;
                if !keep && !pinned.contains_key(&tenant) {
                    let runs = self.pinned_versions(&tenant).await;
                    pinned.insert(tenant.clone(), runs);
                }
                let named_by_a_run = match pinned.get(&tenant) {
                    Some(Ok(runs)) => runs.contains(&(name.clone(), p.version)),
                    // What its executions run is unknown: every version stays.
                    Some(Err(why)) => {
                        out.unknown.insert(tenant.clone(), why.clone());
                        true
                    }
                    None => false,
                };
                if keep || named_by_a_run {
                    kept.push(p);
                    continue;
                }
                pipelines
                    .delete(&version_key(&tenant, &name, p.version))
                    .await
                    .map_err(kv_error)?;
                out.versions += 1;
            }
            let mut named_here = Vec::new();
            for p in kept {
                match components_of(p) {
                    Ok(c) => named_here.extend(c),
                    Err(why) => drop(out.unknown.insert(tenant.clone(), why)),
                }
            }
            roots.entry(tenant).or_default().extend(named_here);
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
            if let [tenant, _] = key.split('/').collect::<Vec<_>>()[..]
                && let Some((f, _)) = get_json::<super::functions::StoredFunction>(functions, &key)
                    .await
                    .map_err(kv_error)?
                && let Ok(d) = f.digest.parse()
            {
                roots.entry(tenant.to_string()).or_default().insert(d);
            }
        }

        // Release what a tenant no longer names, by compare-and-swap: a hand-over between
        // the read and the write keeps it.
        let mut owned_still = HashSet::new();
        let mut releasing = Vec::new();
        for (tenant, digest, key) in ledger {
            let Some((o, revision)) = get_json::<Owned>(functions, &key).await.map_err(kv_error)?
            else {
                continue;
            };
            if o.released {
                // Released by a pass that did not finish.
                releasing.push((digest, key));
                continue;
            }
            let named = roots.get(&tenant).is_some_and(|r| r.contains(&digest));
            if out.unknown.contains_key(&tenant) || named || o.at.0 >= before {
                owned_still.insert(digest);
                continue;
            }
            let released = serde_json::to_vec(&Owned {
                released: true,
                ..o.clone()
            })
            .map_err(|e| e.to_string())?;
            match functions.update(&key, released, revision).await {
                Ok(_) => {
                    out.components += 1;
                    out.bytes += o.bytes;
                    releasing.push((digest, key));
                }
                Err(KvError::Conflict { .. }) => drop(owned_still.insert(digest)),
                Err(e) => return Err(e.to_string()),
            }
        }
        if releasing.is_empty() || !out.unknown.is_empty() {
            // Without every tenant's roots, a released component might still be named:
            // its mark stays for a later pass to finish.
            return Ok(out);
        }

        // Owners that came since the ledger was read.
        let released: HashSet<Digest> = releasing.iter().map(|(d, _)| *d).collect();
        for key in functions.keys(PREFIX).await.map_err(kv_error)? {
            let Some(d) = key
                .rsplit_once('/')
                .and_then(|(_, hex)| format!("blake3:{hex}").parse::<Digest>().ok())
                .filter(|d| released.contains(d))
            else {
                continue;
            };
            if get_json::<Owned>(functions, &key)
                .await
                .map_err(kv_error)?
                .is_some_and(|(o, _)| !o.released)
            {
                owned_still.insert(d);
            }
        }
        let named_anywhere: HashSet<&Digest> = roots.values().flatten().collect();
        for (digest, key) in releasing {
            if !owned_still.contains(&digest) && !named_anywhere.contains(&digest) {
                let blobs = self.engine.blobs.clone();
                let removed = tokio::task::spawn_blocking(move || blobs.remove_component(&digest))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                out.removed += usize::from(removed);
            }
            // The mark goes, unless the component was handed over again meanwhile.
            if get_json::<Owned>(functions, &key)
                .await
                .map_err(kv_error)?
                .is_some_and(|(o, _)| o.released)
            {
                functions.delete(&key).await.map_err(kv_error)?;
            }
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
    use crate::bus::MemoryBus;
    use crate::executor::Engine;
    use crate::service::tests::{service_of, shared_edges};
    use sluice_api::limits::encode_upload;
    use sluice_api::tenancy::Quotas;
    use sluice_api::verbs::{
        PipelineGet, PipelinePut, PipelineRm, TenantCreate, TenantUsage, UploadJoin, UploadPart,
    };
    use sluice_api::{ApiError, Code, Origin, Principal};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn acme() -> Principal {
        Principal::local("acme", Origin::Remote)
    }

    fn pipeline(name: &str, uses: &str) -> String {
        format!(
            "name: {name}\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: {uses}\n"
        )
    }

    async fn upload(service: &crate::service::Service, file: &[u8]) -> Result<String, ApiError> {
        let part = service
            .call(
                &acme(),
                UploadPart {
                    bytes: encode_upload(file),
                },
            )
            .await?
            .part;
        let digest = format!("blake3:{}", blake3::hash(file).to_hex());
        let join = UploadJoin {
            parts: vec![part],
            digest: digest.clone(),
        };
        service.call(&acme(), join).await?;
        Ok(digest)
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
    /// has room again, and the tenant may no longer name them by digest. A version an
    /// execution ran stays, and so does the highest of a removed pipeline (numbers are never
    /// used twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn components_nothing_names_are_released_and_their_quota_freed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        // Sealed artifacts, as the service's: the parts of an upload are not components.
        let mut engine = Engine::for_service(&dir.path().join("a"), bus.clone(), None).unwrap();
        engine.seal_artifacts(Arc::new(FixedKey([7; 32]))).unwrap();
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

        // Two components do not fit: the second is refused, and not kept.
        let a_digest = upload(&service, a).await.unwrap();
        let e = upload(&service, b).await.unwrap_err();
        assert_eq!(e.code, Code::QuotaExceeded, "{e:?}");
        assert!(e.message.contains("components"), "{}", e.message);
        let b_digest: crate::artifacts::Digest = crate::artifacts::Digest::of(b);
        assert!(!service.engine.blobs.contains(&b_digest));
        assert_eq!(used().await, a.len() as u64);

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
        tokio::time::timeout(Duration::from_secs(10), async {
            while !service
                .execution("acme", &id)
                .await
                .unwrap()
                .is_some_and(|e| e.status.is_terminal())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the execution ends");
        assert_eq!(put(&service, pipeline("q", "noop@1")).await.unwrap(), 2);

        // Within the grace, nothing goes.
        let r = service.release_unused().await.unwrap();
        assert_eq!((r.versions, r.components), (0, 0), "{r:?}");
        assert!(version(&service, "p", 1).await.is_some());

        // Past it: p's version 1 goes, and with it the only name of the component.
        service.grace_ms.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = service.release_unused().await.unwrap();
        assert_eq!(
            (r.versions, r.components, r.bytes),
            (1, 1, a.len() as u64),
            "{r:?}"
        );
        assert!(r.unknown.is_empty(), "{r:?}");
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
        // The quota has room again.
        upload(&service, b).await.unwrap();
        assert_eq!(used().await, b.len() as u64);

        // A removed pipeline keeps its highest version; registered again, it counts on.
        service
            .call(&acme(), PipelineRm { name: "p".into() })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = service.release_unused().await.unwrap();
        assert_eq!(r.versions, 0, "{r:?}");
        assert_eq!(put(&service, pipeline("p", "noop@1")).await.unwrap(), 3);
        // Nothing named the second component for longer than the (nil) grace: released too.
        assert_eq!(r.components, 1, "{r:?}");
        assert_eq!(used().await, 0);
    }
}
