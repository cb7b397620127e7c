//! Compiled components cached on disk, named by component digest and the engine's
//! compatibility hash, loaded by mmap. A cold compile of a large component takes seconds;
//! loading it from here takes milliseconds.
use crate::artifacts::Digest;
use anyhow::Context as _;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use wasmtime::Engine;
use wasmtime::component::Component;

pub(super) struct CompileCache {
    dir: Option<PathBuf>,
    /// Changes when wasmtime's version or settings change, so stale code is never loaded.
    engine_key: String,
}

impl CompileCache {
    pub(super) fn new(engine: &Engine, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)
                .with_context(|| format!("create compile cache {}", d.display()))?;
        }
        Ok(CompileCache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    pub(super) fn load(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> anyhow::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes)
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .context("compile component");
        };
        let path = dir.join(format!("{}-{}.cwasm", digest.hex(), self.engine_key));
        if path.exists() {
            match deserialize(engine, &path) {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(
                    "discarding unusable compile cache entry {}: {e:#}",
                    path.display()
                ),
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("compile component")?;
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(temp.path(), &compiled)?;
        temp.persist(&path).map_err(|e| e.error)?;
        deserialize(engine, &path)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Component> {
    // SAFETY: the file was written by `precompile_component` of an engine with the same
    // compatibility hash (it is in the name), atomically, into a directory only this
    // data dir's owner writes. wasmtime additionally checks the header and version.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| anyhow::anyhow!("{e:#}"))
}
