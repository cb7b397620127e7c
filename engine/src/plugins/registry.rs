//! Resolves `uses:` references to loaded components and their descriptions.
use super::{Plugin, builtin};
use crate::artifacts::{BlobStore, Digest};
use crate::model::Pipeline;
use crate::model::validate::ResolvedPlugins;
use crate::runtime::Runtime;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Plugin descriptions one engine keeps in memory.
pub const MAX_DESCRIPTIONS: usize = 1024;

/// Plugin resolution with a per-process cache of descriptions.
pub struct Registry {
    runtime: Arc<Runtime>,
    store: Arc<dyn BlobStore>,
    /// Descriptions by component digest, at most `MAX_DESCRIPTIONS` (described again when
    /// dropped).
    by_digest: Mutex<crate::runtime::Lru<Digest, super::Description>>,
}

impl Registry {
    /// A registry loading components into `runtime` and plugin files into `store`.
    pub fn new(runtime: Arc<Runtime>, store: Arc<dyn BlobStore>) -> Self {
        Registry {
            runtime,
            store,
            by_digest: Mutex::new(crate::runtime::Lru::new(MAX_DESCRIPTIONS)),
        }
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Resolve one `uses:` value: `NAME@MAJOR` (built-in), `blake3:<hex>` (in the store), or a
    /// path to a `.wasm` file (relative to the pipeline file; stored so its digest works later).
    pub async fn resolve(&self, uses: &str, base: &Path) -> Result<Arc<Plugin>, PluginError> {
        let bytes: Vec<u8> = if uses.starts_with("blake3:") {
            let digest: Digest = uses.parse().map_err(PluginError::Reference)?;
            self.store.get_bytes(&digest).map_err(|e| {
                PluginError::NotStored(format!("{e} (store a plugin first by using it by path)"))
            })?
        } else if uses.ends_with(".wasm")
            || uses.starts_with("./")
            || uses.starts_with('/')
            || uses.starts_with("../")
        {
            let path = base.join(uses);
            let bytes = super::read_component(&path)?;
            self.store.put_bytes(&bytes)?;
            bytes
        } else if let Some((name, major)) = sluice_core::lockfile::marketplace_reference(uses) {
            self.locked(uses, name, major, base)?
        } else {
            let (name, major) = uses.split_once('@').ok_or_else(|| {
                PluginError::Reference(
                    "expected NAME@MAJOR (e.g. command@1), blake3:<hex> or a path to a .wasm file"
                        .to_string(),
                )
            })?;
            let major: u32 = major.parse().map_err(|_| {
                PluginError::Reference(format!(
                    "`{major}` is not a major version; write e.g. {name}@1"
                ))
            })?;
            builtin::find(name, major)
                .ok_or_else(|| {
                    let names = builtin::names();
                    let known: Vec<&str> = names.iter().map(String::as_str).collect();
                    PluginError::Reference(match crate::model::parse::suggest(uses, &known) {
                        Some(s) => format!(
                            "no built-in or installed plugin `{name}@{major}`; did you mean `{s}`?"
                        ),
                        None => format!(
                            "no built-in or installed plugin `{name}@{major}`; built-in: {}",
                            known.join(", ")
                        ),
                    })
                })?
                .to_vec()
        };
        self.load(uses, &bytes).await
    }

    /// A marketplace plugin (`NAMESPACE/NAME@MAJOR`): only through `sluice.lock` next to the
    /// pipeline, and only the bytes it pins (already in the store: `sluice plugin install`
    /// put them there).
    fn locked(
        &self,
        uses: &str,
        name: &str,
        major: u64,
        base: &Path,
    ) -> Result<Vec<u8>, PluginError> {
        use sluice_core::lockfile::{FILE_NAME, Lockfile, MAX_BYTES, major_of};
        let path = base.join(FILE_NAME);
        let fix = format!(
            "run `sluice plugin install REGISTRY/{name}@{major}` in {}",
            base.display()
        );
        if !path.exists() {
            return Err(PluginError::Reference(format!(
                "`{uses}` is a marketplace plugin and resolves only through {FILE_NAME}, which is missing: {fix}"
            )));
        }
        let text = super::read_text(&path, MAX_BYTES)
            .map_err(|e| PluginError::Reference(format!("{}: {e}", path.display())))?;
        let lock = Lockfile::parse(&text)
            .map_err(|e| PluginError::Reference(format!("{}: {e}", path.display())))?;
        let Some(entry) = lock.get(name) else {
            return Err(PluginError::Reference(format!(
                "`{name}` is not in {FILE_NAME}: {fix}"
            )));
        };
        if major_of(&entry.version) != Some(major) {
            return Err(PluginError::Reference(format!(
                "{FILE_NAME} has {name} {}, not a version {major}: {fix}",
                entry.version
            )));
        }
        let digest: Digest = entry
            .blake3
            .parse()
            .map_err(|e| PluginError::Reference(format!("{FILE_NAME}: {name}: {e}")))?;
        // The store checks a blob against its digest as it reads it.
        self.store.get_bytes(&digest).map_err(|e| match e {
            crate::artifacts::StoreError::NotFound(_) => PluginError::NotStored(format!(
                "{name} {} ({digest}) is in {FILE_NAME} but not in this data folder: run `sluice plugin install` in {} to fetch what the lock pins",
                entry.version,
                base.display()
            )),
            other => PluginError::Store(other),
        })
    }

    /// Load component bytes and describe them.
    pub async fn load(&self, reference: &str, bytes: &[u8]) -> Result<Arc<Plugin>, PluginError> {
        let digest = Digest::of(bytes);
        let cached = self.by_digest.lock().unwrap().get(&digest).cloned();
        let description = match cached {
            Some(d) => d,
            None => {
                let runtime = self.runtime.clone();
                let owned = bytes.to_vec();
                tokio::task::spawn_blocking(move || runtime.load(&owned))
                    .await
                    .map_err(|e| PluginError::Invalid(e.to_string()))?
                    .map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
                let d = self
                    .runtime
                    .describe(&digest)
                    .await
                    .map_err(|e| PluginError::Invalid(format!("`describe` failed: {e}")))?;
                self.by_digest.lock().unwrap().insert(digest, d.clone());
                d
            }
        };
        Ok(Arc::new(Plugin {
            reference: reference.to_string(),
            digest: digest.to_string(),
            description,
        }))
    }

    /// Resolve every distinct `uses:` of a pipeline.
    pub async fn resolve_all(&self, pipeline: &Pipeline) -> ResolvedPlugins {
        let mut out = ResolvedPlugins::new();
        for (_, _, a) in pipeline.actions() {
            let uses = &a.uses.value;
            if !uses.is_empty() && !out.contains_key(uses) {
                // Kept as the words a diagnostic shows.
                let r = self.resolve(uses, &pipeline.dir).await;
                out.insert(uses.clone(), r.map_err(|e| e.to_string()));
            }
        }
        out
    }
}

/// Why a `uses:` value names no usable plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The reference is malformed, or names no built-in plugin.
    #[error("{0}")]
    Reference(String),
    /// A digest the store does not hold.
    #[error("{0}")]
    NotStored(String),
    /// A component file that cannot be used.
    #[error(transparent)]
    File(#[from] super::ComponentFileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::artifacts::StoreError),
    /// Not a component of the action world, or its `describe` failed.
    #[error("{0}")]
    Invalid(String),
}
