//! Compiled components cached on disk, named by component digest and the engine's
//! compatibility hash, loaded by mmap. A cold compile of a large component takes seconds;
//! loading it from here takes milliseconds.
//!
//! Loading compiled code runs it unchecked, so every file written here has its blake3 digest
//! recorded beside it (`.blake3`), and a file is loaded only from memory, after its bytes
//! matched that record: code put in its place (a guest once wrote its own over another
//! plugin's) is discarded and recompiled.
use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use sluice_core::Digest;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How often the cache was used and missed, counted for the whole process (the engine's
/// metrics register these counters).
pub struct CompileCounters {
    /// Components loaded from the cache.
    pub hits: Counter,
    /// Components compiled.
    pub misses: Counter,
}

/// The process's [`CompileCounters`].
pub fn counters() -> &'static CompileCounters {
    static COUNTERS: std::sync::LazyLock<CompileCounters> =
        std::sync::LazyLock::new(|| CompileCounters {
            hits: Counter::default(),
            misses: Counter::default(),
        });
    &COUNTERS
}

/// Compiled components kept on disk; beyond this many the least recently used are removed
/// (a hosted service compiles every distinct plugin version any tenant ever ran).
pub const MAX_COMPILED_FILES: usize = 512;

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
        // Text would go to the WAT parser, whose errors quote the text.
        anyhow::ensure!(
            sluice_core::plugin::is_binary_wasm(bytes),
            "not a binary WebAssembly component (it does not start with \\0asm)"
        );
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes)
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .context("compile component");
        };
        let path = dir.join(format!("{}-{}.cwasm", digest.hex(), self.engine_key));
        let record = path.with_extension("blake3");
        if path.exists() {
            match verified(&path, &record).and_then(|code| deserialize(engine, &code)) {
                Ok(c) => {
                    counters().hits.inc();
                    // Recently used: pruning goes by modification time.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok(c);
                }
                Err(e) => tracing::warn!(
                    "discarding unusable compile cache entry {}: {e:#}",
                    path.display()
                ),
            }
        }
        counters().misses.inc();
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("compile component")?;
        // The record first: a crash between the two leaves a record without its file, which
        // is never loaded.
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(temp.path(), Digest::of(&compiled).to_string())?;
        temp.persist(&record).map_err(|e| e.error)?;
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(temp.path(), &compiled)?;
        temp.persist(&path).map_err(|e| e.error)?;
        prune(dir, MAX_COMPILED_FILES);
        deserialize(engine, &compiled)
    }
}

/// Keep at most `keep` compiled files in `dir`, removing the least recently used (and their
/// digest records). Another engine sharing the directory that loses a file compiles again.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut compiled: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if compiled.len() <= keep {
        return;
    }
    compiled.sort();
    for (_, path) in &compiled[..compiled.len() - keep] {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path.with_extension("blake3"));
    }
}

/// The bytes of the compiled file at `path`, if they hash to the digest recorded in `record`.
fn verified(path: &Path, record: &Path) -> anyhow::Result<Vec<u8>> {
    let expected: Digest = std::fs::read_to_string(record)
        .with_context(|| format!("no digest recorded for {}", path.display()))?
        .trim()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", record.display()))?;
    let code = std::fs::read(path)?;
    let actual = Digest::of(&code);
    anyhow::ensure!(
        actual == expected,
        "{} hashes to {actual}, not to the {expected} recorded when it was written",
        path.display()
    );
    Ok(code)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `code` is what `precompile_component` of an engine with the same compatibility
    // hash (it is in the name) produced: just compiled, or read back from a file whose bytes
    // match the digest recorded when it was written. wasmtime additionally checks the header
    // and version.
    unsafe { Component::deserialize(engine, code) }.map_err(|e| anyhow::anyhow!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiled code put in place of another component's (a guest copied its own `.cwasm`
    /// over `noop@1`'s) is not loaded: it is discarded and the right code compiled again.
    #[test]
    fn compiled_code_replaced_on_disk_is_discarded_not_loaded() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(&engine, Some(dir.path().to_path_buf())).unwrap();
        // `(component)` and `(component (core module))`, encoded by hand: a component's
        // preamble, then a core module section (id 1, 8 bytes) holding an empty module.
        let noop: &[u8] = b"\0asm\x0d\0\x01\0";
        let other: &[u8] = b"\0asm\x0d\0\x01\0\x01\x08\0asm\x01\0\0\0";
        let (noop_digest, other_digest) = (Digest::of(noop), Digest::of(other));
        cache.load(&engine, &noop_digest, noop).unwrap();
        cache.load(&engine, &other_digest, other).unwrap();
        let file = |d: &Digest| {
            dir.path()
                .join(format!("{}-{}.cwasm", d.hex(), cache.engine_key))
        };
        let good = std::fs::read(file(&noop_digest)).unwrap();
        std::fs::copy(file(&other_digest), file(&noop_digest)).unwrap();
        cache.load(&engine, &noop_digest, noop).unwrap();
        assert!(
            std::fs::read(file(&noop_digest)).unwrap() == good,
            "the replaced code was kept"
        );
    }

    /// The disk cache keeps the most recently used compiled files and removes the others.
    #[test]
    fn the_disk_cache_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.path().join(format!("{name}.cwasm"));
            std::fs::write(&path, b"code").unwrap();
            std::fs::write(path.with_extension("blake3"), b"digest").unwrap();
            let when = old + std::time::Duration::from_secs(i as u64);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        prune(dir.path(), 2);
        let left = |n: &str| dir.path().join(n).exists();
        assert!(!left("a.cwasm") && !left("a.blake3"), "the oldest stays");
        assert!(left("b.cwasm") && left("c.cwasm") && left("c.blake3"));
    }

    /// Text is refused before it reaches the WAT parser, whose errors quote it.
    #[test]
    fn text_is_never_compiled() {
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, None).unwrap();
        let err = cache
            .load(&engine, &Digest::of(b"(component)"), b"(component)")
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a binary WebAssembly component"));
    }
}
