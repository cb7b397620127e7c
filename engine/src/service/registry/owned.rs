//! Which components a tenant may name by digest. Plugins and functions are kept in one store
//! every engine shares (content-addressed: one copy of a component however many tenants use
//! it), so a digest alone must not be enough to use a component: another tenant's private
//! plugin, named by a digest seen in a lockfile, would run, and registering it would tell
//! whether it exists. Each component a tenant hands over (an upload joined, a function or
//! plugin sent with its bytes, a plugin file the embedded service read from the client's
//! folder or an uploaded folder) is noted under `_components/<tenant>/<hex>` in the functions
//! bucket (which no engine lists whole); a registration that names a component by digest (`uses: blake3:…`, the files of
//! `pipeline put`, `function put --digest`, an install by digest) names only the tenant's own.
//! One it does not own gets the same answer whether or not the store holds it.
//!
//! The ledger is also what bounds the store: a tenant's components count against its
//! `component_bytes` quota, and the collector (see `release`) releases those no registration
//! of the tenant names any more, then removes from the shared store what nobody owns.
use crate::artifacts::Digest;
use crate::kv::get_json;
use crate::service::Service;
use serde::{Deserialize, Serialize};
use sluice_api::ApiError;
use sluice_core::scheduler::Timestamp;

/// A component a tenant handed over.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(in crate::service) struct Owned {
    pub bytes: u64,
    /// When it was last handed over.
    pub at: Timestamp,
    /// Being released by the collector (owned by nobody from then on): written by
    /// compare-and-swap, so a hand-over between the collector's read and its write wins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

pub(in crate::service) const PREFIX: &str = "_components/";

/// A use of an owned component is noted at most this often (the collector's grace is an hour
/// at least).
const USE_NOTED_WITHIN_MS: u64 = 10 * 60 * 1000;

pub(in crate::service) fn key(tenant: &str, digest: &Digest) -> String {
    format!("{PREFIX}{tenant}/{}", digest.hex())
}

/// The refusal for a component the tenant does not own, the same whether or not the shared
/// store holds it.
pub(in crate::service) fn not_owned(digest: &str) -> ApiError {
    ApiError::not_found(format!(
        "component {digest} is not one this tenant uploaded: name it by its file (`uses: ./plugin.wasm`; `sluice pipeline put` uploads it) or send its bytes (`sluice function put NAME FILE`)"
    ))
}

impl Service {
    /// Note that `tenant` hands over the component `digest` (`bytes` long), unless it would
    /// pass the tenant's quota of component bytes. Called before the component is stored: a
    /// refused one is not kept, and the collector never sees a stored component with no
    /// owner that it should have removed.
    pub(in crate::service) async fn own(
        &self,
        tenant: &str,
        digest: &Digest,
        bytes: u64,
    ) -> Result<(), ApiError> {
        self.check_component_quota(tenant, &[(*digest, bytes)])
            .await?;
        self.note_owned(tenant, digest, bytes).await
    }

    /// Refuse components (digest, bytes) that would take `tenant` past its quota of
    /// component bytes (counting the others it keeps: handing one over again does not count
    /// twice).
    async fn check_component_quota(
        &self,
        tenant: &str,
        components: &[(Digest, u64)],
    ) -> Result<(), ApiError> {
        let Some((_, quotas)) = self.rules_of(tenant).await? else {
            return Ok(());
        };
        let Some(max) = quotas.component_bytes else {
            return Ok(());
        };
        let digests: Vec<Digest> = components.iter().map(|(d, _)| *d).collect();
        let others = self.component_bytes(tenant, &digests).await?;
        let bytes = components.iter().map(|(_, b)| b).sum::<u64>();
        if others.saturating_add(bytes) > max {
            use sluice_core::model::units::size;
            return Err(ApiError::new(
                sluice_api::Code::QuotaExceeded,
                format!(
                    "tenant `{tenant}` may keep {} of components (plugins and functions) and keeps {}: {} more would pass it. A component no pipeline version, function or installed plugin names any more stops counting once `--artifact-grace` (a day by default) has passed since it was last handed over",
                    size(max),
                    size(others),
                    size(bytes)
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of the components `tenant` keeps, but those in `except`.
    pub(in crate::service) async fn component_bytes(
        &self,
        tenant: &str,
        except: &[Digest],
    ) -> Result<u64, ApiError> {
        let skip: Vec<String> = except.iter().map(|d| key(tenant, d)).collect();
        let mut total = 0u64;
        let kv = &*self.edges.functions;
        for k in kv.keys(&format!("{PREFIX}{tenant}/")).await? {
            if skip.contains(&k) {
                continue;
            }
            if let Some((o, _)) = get_json::<Owned>(kv, &k).await?
                && !o.released
            {
                total = total.saturating_add(o.bytes);
            }
        }
        Ok(total)
    }

    /// Note the hand-over, whatever the quota.
    async fn note_owned(&self, tenant: &str, digest: &Digest, bytes: u64) -> Result<(), ApiError> {
        let owned = Owned {
            bytes,
            at: crate::clock::now(),
            released: false,
        };
        crate::kv::modify::<Owned, _>(&*self.edges.functions, &key(tenant, digest), |_| {
            Some(owned.clone())
        })
        .await
        .map_err(ApiError::from)?;
        Ok(())
    }

    /// Note as `tenant`'s the plugins of a pipeline resolved from files (by path), all or
    /// none: refused when together they would take the tenant past its quota. (Resolving
    /// them stored them; refused, nobody owns them and the collector removes them.) Returns
    /// their digests, for the version's record (see `release`).
    pub(in crate::service) async fn own_files(
        &self,
        tenant: &str,
        plugins: &crate::model::validate::ResolvedPlugins,
    ) -> Result<Vec<String>, ApiError> {
        let mut files: Vec<(Digest, u64)> = Vec::new();
        for plugin in plugins.values().flatten() {
            if !crate::service::pipelines::is_plugin_file(&plugin.reference) {
                continue;
            }
            let Ok(digest) = plugin.digest.parse::<Digest>() else {
                continue;
            };
            if files.iter().any(|(d, _)| *d == digest) {
                continue;
            }
            let blobs = self.engine.blobs.clone();
            let bytes = tokio::task::spawn_blocking(move || match blobs.size_of(&digest) {
                Ok(Some(size)) => Ok(size),
                _ => blobs.get_bytes(&digest).map(|b| b.len() as u64),
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::unavailable(format!("the component store: {e}")))?;
            files.push((digest, bytes));
        }
        self.check_component_quota(tenant, &files).await?;
        for (digest, bytes) in &files {
            self.note_owned(tenant, digest, *bytes).await?;
        }
        let mut noted: Vec<String> = files.iter().map(|(d, _)| d.to_string()).collect();
        noted.sort();
        Ok(noted)
    }

    /// `digest` (as a client wrote it) if `tenant` handed that component over; otherwise
    /// [`not_owned`] (also for what does not parse as a digest).
    pub(in crate::service) async fn owned(
        &self,
        tenant: &str,
        digest: &str,
    ) -> Result<Digest, ApiError> {
        let Ok(parsed) = digest.parse::<Digest>() else {
            return Err(not_owned(digest));
        };
        // A registration about to name it is a use: noted (at most every ten minutes, by
        // compare-and-swap), so the collector does not release it meanwhile — its release,
        // written by compare-and-swap too, fails, or came first and the answer is no.
        let (kv, k) = (&*self.edges.functions, key(tenant, &parsed));
        loop {
            let Some((o, revision)) = get_json::<Owned>(kv, &k).await? else {
                return Err(not_owned(digest));
            };
            if o.released {
                return Err(not_owned(digest));
            }
            let now = crate::clock::now();
            if now.0.saturating_sub(o.at.0) < USE_NOTED_WITHIN_MS {
                return Ok(parsed);
            }
            let used = serde_json::to_vec(&Owned { at: now, ..o }).map_err(ApiError::internal)?;
            match kv.update(&k, used, revision).await {
                Ok(_) => return Ok(parsed),
                Err(crate::kv::KvError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::bus::MemoryBus;
    use crate::service::tests::{engine, shared_edges};
    use sluice_api::verbs::{FunctionPut, PipelinePut};
    use sluice_api::{ApiError, Code, Origin, Principal};
    use std::sync::Arc;

    fn of(tenant: &str) -> Principal {
        Principal::local(tenant, Origin::Remote)
    }

    fn pipeline(uses: &str) -> String {
        format!(
            "name: p\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: {uses}\n"
        )
    }

    /// Upload `file` as `tenant`, in one part.
    async fn upload(service: &crate::service::Service, tenant: &str, file: &[u8]) {
        crate::service::tests::upload_as(service, tenant, file)
            .await
            .unwrap();
    }

    /// What a refusal says, with the digest it names taken out.
    fn said(e: &ApiError, digest: &str) -> String {
        format!("{:?} {} {}", e.code, e.message, e.problem_lines()).replace(digest, "D")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_names_by_digest_only_the_components_it_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        let service = engine(&dir.path().join("a"), bus, &shared);
        // ACME uploads a component (the no-op plugin's bytes): it is in the shared store.
        let file = crate::plugins::builtin::find("noop", 1).unwrap().to_vec();
        let acmes = format!("blake3:{}", blake3::hash(&file).to_hex());
        upload(&service, "acme", &file).await;
        assert!(service.engine.blobs.contains(&acmes.parse().unwrap()));
        let nobodys = format!("blake3:{}", "ab".repeat(32));
        let put = |tenant: &str, yaml: String, plugins: Vec<(&str, &str)>| {
            let (service, p) = (service.clone(), of(tenant));
            let plugins = plugins
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            async move {
                service
                    .call(
                        &p,
                        PipelinePut {
                            file: "p.yaml".into(),
                            yaml,
                            plugins,
                            ..Default::default()
                        },
                    )
                    .await
            }
        };
        // ACME may name it, in the YAML or as the file it uploaded.
        put("acme", pipeline(&acmes), vec![]).await.unwrap();
        put(
            "acme",
            pipeline("./noop.wasm"),
            vec![("./noop.wasm", &acmes)],
        )
        .await
        .unwrap();

        // GLOBEX may not, and is told the same as for a digest nobody uploaded: the line of
        // the `uses:`, nothing about whether the store holds it.
        for (yaml, plugins) in [
            (pipeline("DIGEST"), vec![]),
            (pipeline("./noop.wasm"), vec![("./noop.wasm", "DIGEST")]),
        ] {
            let mut refusals = Vec::new();
            for digest in [&acmes, &nobodys] {
                let plugins = plugins
                    .iter()
                    .map(|(f, d)| (*f, if *d == "DIGEST" { digest.as_str() } else { d }))
                    .collect();
                let e = put("globex", yaml.replace("DIGEST", digest), plugins)
                    .await
                    .unwrap_err();
                refusals.push(said(&e, digest));
            }
            assert_eq!(refusals[0], refusals[1]);
            assert!(
                refusals[0].contains("not one this tenant uploaded"),
                "{}",
                refusals[0]
            );
        }
        let e = put("globex", pipeline(&acmes), vec![]).await.unwrap_err();
        assert_eq!(e.code, Code::Invalid);
        assert_eq!(
            (e.problems[0].line, e.problems[0].column),
            (6, 15),
            "{}",
            e.problem_lines()
        );
        // Nor register it as a function.
        let mut refusals = Vec::new();
        for digest in [&acmes, &nobodys] {
            let e = service
                .call(
                    &of("globex"),
                    FunctionPut {
                        name: "f".into(),
                        bytes: None,
                        digest: Some(digest.clone()),
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::NotFound);
            refusals.push(said(&e, digest));
        }
        assert_eq!(refusals[0], refusals[1]);
        // Once GLOBEX uploads the same bytes itself, it may.
        upload(&service, "globex", &file).await;
        put("globex", pipeline(&acmes), vec![]).await.unwrap();
    }

    /// A plugin the embedded service read from the client's folder may be named by digest
    /// afterwards, by the same tenant only (`uses:` by path, then by digest, as locally).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_used_by_path_is_the_tenants_to_name_by_digest() {
        use crate::service::tests::{host_user, register, remote};
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        let service = engine(&dir.path().join("a"), bus, &shared);
        let file = crate::plugins::builtin::find("noop", 1).unwrap().to_vec();
        std::fs::write(dir.path().join("mine.wasm"), &file).unwrap();
        let digest = format!("blake3:{}", blake3::hash(&file).to_hex());
        let by_digest = |p: Principal| {
            let (service, yaml) = (service.clone(), pipeline(&digest));
            async move {
                let put = PipelinePut {
                    file: "p.yaml".into(),
                    yaml,
                    ..Default::default()
                };
                service.call(&p, put).await
            }
        };
        by_digest(remote()).await.unwrap_err();
        register(&service, dir.path(), "p.yaml", &pipeline("./mine.wasm")).await;
        assert_eq!(host_user().tenant, remote().tenant);
        by_digest(remote()).await.unwrap();
        by_digest(of("globex")).await.unwrap_err();
    }
}
