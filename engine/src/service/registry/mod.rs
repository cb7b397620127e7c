//! The registry: pipelines (`pipelines`: versions, heads), their uploaded folders (`bundles`),
//! functions (`functions`) and files uploaded in parts (`uploads`), which components each tenant
//! may name by digest (`owned`), what no registration needs any more (`release`), and each
//! pipeline version parsed and resolved once per engine.
pub mod bundles;
pub mod functions;
pub mod installed;
pub mod owned;
pub mod pipelines;
pub mod release;
pub mod uploads;

use super::*;

/// A parsed, resolved pipeline version.
pub struct Loaded {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    pub(in crate::service) plugins: ResolvedPlugins,
    /// Its registered version.
    pub version: u64,
}

impl Service {
    /// Load (and cache) one version of a registered pipeline, parsed and with its plugins
    /// resolved.
    pub(in crate::service) async fn load(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<Arc<Loaded>>, String> {
        // A version, once registered, never changes: no need to read it again.
        if let Some(v) = version
            && let Some(hit) =
                self.loaded
                    .lock()
                    .unwrap()
                    .get(&(tenant.to_string(), name.to_string(), v))
        {
            return Ok(Some(hit.clone()));
        }
        let found = pipelines::get(&*self.edges.pipelines, tenant, name, version)
            .await
            .map_err(|e| e.to_string());
        let loaded = match found? {
            Some(stored) => self.loaded(tenant, &stored).await.map(Some)?,
            None => None,
        };
        if version.is_none() {
            let key = (tenant.to_string(), name.to_string());
            let mut heads = self.heads.lock().unwrap();
            match &loaded {
                Some(l) => heads.insert(key, l.clone()),
                None => drop(heads.remove(&key)),
            }
        }
        Ok(loaded)
    }

    /// A stored pipeline version, parsed and resolved once per engine.
    pub async fn loaded(
        &self,
        tenant: &str,
        stored: &StoredPipeline,
    ) -> Result<Arc<Loaded>, String> {
        let key = (tenant.to_string(), stored.name.clone(), stored.version);
        if let Some(hit) = self.loaded.lock().unwrap().get(&key) {
            return Ok(hit.clone());
        }
        let loaded = Arc::new(
            self.check(tenant, stored)
                .await
                .map_err(|d| d.to_string())?,
        );
        self.loaded.lock().unwrap().insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Parse and validate a pipeline as registered.
    pub(in crate::service) async fn check(
        &self,
        tenant: &str,
        stored: &StoredPipeline,
    ) -> Result<Loaded, Diagnostics> {
        // Without a directory (registered over NATS) nothing may resolve against one: an empty
        // `dir` resolves nothing, and every relative reference is refused here.
        let dir = match (&stored.bundle, &stored.dir) {
            (Some(bundle), _) => {
                Some(
                    self.bundle_dir(tenant, bundle)
                        .await
                        .map_err(|e| Diagnostics {
                            file: stored.file.clone(),
                            items: vec![crate::model::Diagnostic {
                                loc: Default::default(),
                                message: format!("the pipeline's uploaded folder {bundle}: {e}"),
                            }],
                        })?,
                )
            }
            (None, dir) => dir.clone(),
        };
        let (pipeline, mut problems) =
            crate::model::parse::parse(&stored.file, dir.clone().unwrap_or_default(), &stored.yaml);
        let Some(mut pipeline) = pipeline else {
            return Err(Diagnostics {
                file: stored.file.clone(),
                items: problems,
            });
        };
        problems.extend(pipelines::pin_marketplace(&mut pipeline, &stored.plugins));
        if dir.is_none() {
            problems.extend(pipelines::without_dir(&mut pipeline, &stored.plugins));
        }
        pipeline.confined = stored.bundle.is_some();
        let plugins = self
            .engine
            .check(&pipeline, problems, &Default::default())
            .await?;
        if stored.bundle.is_some() {
            let items = pipelines::outside_bundle(&pipeline, &plugins);
            if !items.is_empty() {
                return Err(Diagnostics {
                    file: stored.file.clone(),
                    items,
                });
            }
        }
        if dir.is_none() {
            let items = pipelines::relative_config_paths(&pipeline, &plugins);
            if !items.is_empty() {
                return Err(Diagnostics {
                    file: stored.file.clone(),
                    items,
                });
            }
        }
        Ok(Loaded {
            pipeline: Arc::new(pipeline),
            plugins,
            version: stored.version,
        })
    }

    /// The folder a pipeline was uploaded with (an artifact tree), on this engine's disk:
    /// `<data>/bundles/<tenant>/<hex>/`, written (each blob verified) the first time any
    /// pipeline of the tenant needs it. It is the pipeline's working folder, as a local
    /// checkout is for `sluice run`: what its actions' grants write there stays.
    pub(in crate::service) async fn bundle_dir(
        &self,
        tenant: &str,
        bundle: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        let digest: crate::artifacts::Digest = bundle.parse().map_err(anyhow::Error::msg)?;
        let root = self.engine.data.join("bundles").join(tenant);
        let dir = root.join(digest.hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        let blobs = self.engine.artifacts_for(tenant).await?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<std::path::PathBuf> {
            std::fs::create_dir_all(&root)?;
            // Written aside, then renamed into place: a half-written folder is never used.
            let temp = tempfile::Builder::new().prefix(".new-").tempdir_in(&root)?;
            crate::artifacts::tree::materialize(&*blobs, &digest, &temp.path().join("b"))?;
            match std::fs::rename(temp.path().join("b"), &dir) {
                Ok(()) => Ok(dir),
                // Another job of this engine got there first.
                Err(_) if dir.is_dir() => Ok(dir),
                Err(e) => Err(e.into()),
            }
        })
        .await?
    }
}
