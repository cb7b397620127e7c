//! The engine on one machine, without the service: what `sluice run`, `sluice validate` and the
//! commands that inspect a data directory use. A caller names a pipeline file or a data
//! directory; it never opens the engine's stores, its runtime or its bus itself.
//!
//! - [`LocalRun`]: check and run a pipeline in a data directory, watching its events;
//! - [`validate`]: check a pipeline file without running it;
//! - [`History`]: the runs, logs and artifacts a data directory keeps.
use crate::artifacts::tree::{self, TreeStats};
use crate::artifacts::{BlobStore, LocalStore, StoreError};
use crate::bus::MemoryBus;
use crate::executor::{DataDir, Engine, LogStore};
use crate::model::{Diagnostics, Pipeline};
use crate::scheduler::Execution;
use crate::state::{RedbStore, StateStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::artifacts::{Digest, Entry};
pub use crate::bus::Event;
pub use crate::executor::logs::LiveLog;
pub use crate::executor::{LocalApprovals, LogLine, load_pipeline, succeeded};
pub use crate::model::validate::ResolvedPlugins;
pub use crate::runtime::messaging::Publisher;
pub use crate::scheduler::TriggerInfo;

/// One pipeline run in a data directory (created if missing), its events on an in-process bus.
pub struct LocalRun {
    engine: Engine,
    bus: Arc<MemoryBus>,
    data: PathBuf,
}

impl LocalRun {
    /// An engine in `data`; with `live`, every log line is also sent there as it is written.
    pub fn open(data: &Path, live: Option<LiveLog>) -> anyhow::Result<Self> {
        let bus = Arc::new(MemoryBus::default());
        let logs = LogStore::new(data.join("logs"));
        let logs = match live {
            Some(tx) => logs.with_live(tx),
            None => logs,
        };
        Ok(LocalRun {
            engine: Engine::embedded(data, bus.clone(), logs)?,
            bus,
            data: data.to_path_buf(),
        })
    }

    /// Let guests publish to NATS through `publisher` (the runtime checks their grants).
    pub fn publish_with(&self, publisher: Arc<dyn Publisher>) {
        self.engine.registry.runtime().nats.set_publisher(publisher);
    }

    /// Give the run the data folder's secrets, when the pipeline declares any: each must be
    /// stored and allowed for this pipeline, or it is a problem at its `from:` line (a run
    /// never starts to fail at the action).
    pub async fn use_secrets(
        &mut self,
        pipeline: &Pipeline,
        master_key: Option<&Path>,
    ) -> Result<(), Diagnostics> {
        if pipeline.secrets.is_empty() {
            return Ok(());
        }
        let fail = |items: Vec<crate::model::Diagnostic>| Diagnostics {
            file: pipeline.file.clone(),
            items,
        };
        let store = match secret_store(&self.data, master_key, false) {
            Ok((Some(s), _)) => s,
            Ok((None, _)) => {
                return Err(fail(
                    pipeline
                        .secrets
                        .iter()
                        .map(|(name, from)| crate::model::Diagnostic {
                            loc: from.loc,
                            message: format!(
                                "secret `{name}`: no secret `{}` is stored in {} (sluice secret put {} --data {})",
                                from.value,
                                self.data.display(),
                                from.value,
                                self.data.display()
                            ),
                        })
                        .collect(),
                ));
            }
            Err(e) => {
                return Err(fail(vec![crate::model::Diagnostic {
                    loc: Default::default(),
                    message: format!("{e:#}"),
                }]));
            }
        };
        if let Err(e) = store.check_key(crate::executor::DEFAULT_TENANT).await {
            return Err(fail(vec![crate::model::Diagnostic {
                loc: Default::default(),
                message: e.to_string(),
            }]));
        }
        let mut items = Vec::new();
        for (name, from) in &pipeline.secrets {
            if let Err(e) = store
                .check(crate::executor::DEFAULT_TENANT, &from.value, &pipeline.name)
                .await
            {
                items.push(crate::model::Diagnostic {
                    loc: from.loc,
                    message: format!("secret `{name}`: {e}"),
                });
            }
        }
        if !items.is_empty() {
            return Err(fail(items));
        }
        self.engine.secrets = Some(Arc::new(store));
        Ok(())
    }

    /// Seal this run's artifacts at rest (`--encrypt`), under a key derived from the data
    /// folder's data key (itself sealed under the master key, made on first use). Returns
    /// where the master key was made, if it was made now (the caller says so).
    pub async fn encrypt_artifacts(
        &mut self,
        master_key: Option<&Path>,
    ) -> anyhow::Result<Option<PathBuf>> {
        let (root, made) = local_artifact_key(&self.data, master_key, true).await?;
        let root = root.expect("made on demand");
        self.engine.seal_artifacts_in(
            Arc::new(crate::artifacts::tenants::FixedKey(root)),
            Some(crate::artifacts::tenants::LOCAL_NAMESPACE),
        )?;
        Ok(made.then(|| master_key_path(&self.data, master_key)))
    }

    /// Take pure actions' successes from the data folder's action cache (`cache.redb`), and
    /// keep theirs there.
    pub fn use_cache(&mut self) -> anyhow::Result<()> {
        self.engine.cache = Some(Arc::new(action_cache(&self.data)?));
        Ok(())
    }

    /// The run's events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.bus.subscribe()
    }

    /// Resolve the pipeline's plugins and validate it with `vars`, reporting `problems` (the
    /// parser's) with every other problem found.
    pub async fn check(
        &self,
        pipeline: &Pipeline,
        problems: Vec<crate::model::Diagnostic>,
        vars: &BTreeMap<String, String>,
    ) -> Result<ResolvedPlugins, Diagnostics> {
        self.engine.check(pipeline, problems, vars).await
    }

    /// Run a checked pipeline to its end, answering approvals as `approvals` says and with
    /// `trigger` as what started it (`#{trigger.*}`; none: every value empty). The engine
    /// is closed when the run ends (its events end with it); the data directory's
    /// [`History`] has the record and the logs.
    pub async fn run(
        self,
        pipeline: Arc<Pipeline>,
        plugins: &ResolvedPlugins,
        vars: &BTreeMap<String, String>,
        approvals: LocalApprovals,
        trigger: Option<TriggerInfo>,
    ) -> anyhow::Result<(Execution, History)> {
        let exec = self
            .engine
            .run_triggered(pipeline, plugins, vars, approvals, trigger)
            .await?;
        let data = self.data.clone();
        drop(self);
        Ok((exec, History { data, sealed: None }))
    }
}

pub use crate::secrets::master_key_path;

/// The root key of the data folder's sealed artifacts (`None`: no key yet, and `create` not
/// asked), and whether the master key was made now. The secret store is closed again before
/// this returns, so a run can open it after.
async fn local_artifact_key(
    data: &Path,
    master_key: Option<&Path>,
    create: bool,
) -> anyhow::Result<(Option<[u8; 32]>, bool)> {
    use crate::artifacts::tenants::ArtifactKeys;
    let (Some(store), made) = secret_store(data, master_key, create)? else {
        return Ok((None, false));
    };
    let root = store
        .root_key(crate::executor::DEFAULT_TENANT)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((Some(root), made))
}

/// The data folder's sealed artifacts (`sluice run --encrypt`), if it has any.
pub async fn sealed_artifacts(
    data: &Path,
    master_key: Option<&Path>,
) -> anyhow::Result<Option<Arc<dyn BlobStore>>> {
    let dirs = DataDir {
        root: data.to_path_buf(),
    };
    if !dirs.cas().join("sealed").is_dir() {
        return Ok(None);
    }
    let (Some(root), _) = local_artifact_key(data, master_key, false).await? else {
        anyhow::bail!(
            "{} holds encrypted artifacts but no master key opens them: pass --master-key-file",
            data.display()
        );
    };
    let objects = Arc::new(LocalStore::open(dirs.cas())?);
    let sealed_in = |ns: &str| -> Arc<dyn BlobStore> {
        Arc::new(crate::artifacts::SealedStore::new(
            objects.clone(),
            ns,
            crate::artifacts::TenantKey::derive(&root),
        ))
    };
    // Runs sealed theirs under the tenant's name before they had a namespace of their own.
    Ok(Some(Arc::new(PlainOrSealed {
        sealed: sealed_in(crate::artifacts::tenants::LOCAL_NAMESPACE),
        plain: sealed_in(crate::executor::DEFAULT_TENANT),
    })))
}

/// The data folder's secret store (`<data>/secrets.redb`, sealed under the master key). With
/// `create`, a missing master key is made (the flag says so); without, a store that was never
/// used is `None`.
pub fn secret_store(
    data: &Path,
    master_key: Option<&Path>,
    create: bool,
) -> anyhow::Result<(Option<crate::secrets::SecretStore>, bool)> {
    let key_path = master_key_path(data, master_key);
    let file = data.join("secrets.redb");
    let (key, made) = if create {
        std::fs::create_dir_all(data)?;
        let (k, made) = crate::secrets::MasterKey::read_or_create(&key_path)?;
        (k, made)
    } else {
        match crate::secrets::MasterKey::read(&key_path)? {
            Some(k) if file.exists() => (k, false),
            Some(_) => return Ok((None, false)),
            None if file.exists() => anyhow::bail!(
                "{} holds secrets but the master key {} is missing: pass --master-key-file",
                file.display(),
                key_path.display()
            ),
            None => return Ok((None, false)),
        }
    };
    let db = crate::kv::RedbKv::open_database(&file)?;
    let kv: Arc<dyn crate::kv::Kv> = Arc::new(crate::kv::RedbKv::bucket(db, "secrets")?);
    Ok((Some(crate::secrets::SecretStore::new(kv, key)), made))
}

/// The data folder's action cache.
pub fn action_cache(data: &Path) -> anyhow::Result<crate::cache::ActionCache> {
    std::fs::create_dir_all(data)?;
    let db = crate::kv::RedbKv::open_database(&data.join("cache.redb"))?;
    let kv: Arc<dyn crate::kv::Kv> = Arc::new(crate::kv::RedbKv::bucket(db, "cache")?);
    Ok(crate::cache::ActionCache::new(kv))
}

/// Who approves in a local run: `name`, else the user running it.
pub fn approver(name: Option<&str>) -> String {
    crate::identity::resolve(name)
}

/// Check the pipeline file at `file` with `vars`, without running it: every problem at once.
pub async fn validate(
    file: &Path,
    vars: &BTreeMap<String, String>,
) -> anyhow::Result<Result<Pipeline, Diagnostics>> {
    let (pipeline, problems) = match load_pipeline(file) {
        Ok(loaded) => loaded,
        Err(d) => return Ok(Err(d)),
    };
    let scratch = tempfile::tempdir()?;
    let run = LocalRun::open(scratch.path(), None)?;
    Ok(run.check(&pipeline, problems, vars).await.map(|_| pipeline))
}

/// The plugin `reference` names (a built-in `name@major`, a component file relative to `base`,
/// or a digest), loaded and described, in a scratch engine.
/// With `data`, the component is compiled through that data folder's compile cache, so a
/// run there after describing (or a second description) loads it compiled.
pub async fn describe_plugin(
    reference: &str,
    base: &Path,
    data: Option<&Path>,
) -> anyhow::Result<Arc<crate::plugins::Plugin>> {
    let scratch = tempfile::tempdir()?;
    let cache_dir = match data {
        Some(data) => Some(DataDir::create(data)?.compiled()),
        None => None,
    };
    let runtime = Arc::new(crate::runtime::Runtime::new(
        crate::runtime::RuntimeConfig { cache_dir },
    )?);
    let store = Arc::new(LocalStore::open(scratch.path())?);
    Ok(crate::plugins::Registry::new(runtime, store)
        .resolve(reference, base)
        .await?)
}

/// Load a marketplace component into `data`'s compile cache (so the first run finds it
/// compiled) and describe it. Nothing is stored: [`store_component`] does that once the
/// user accepted it.
pub async fn load_component(
    data: &Path,
    bytes: &[u8],
) -> anyhow::Result<Arc<crate::plugins::Plugin>> {
    let dirs = DataDir::create(data)?;
    let runtime = Arc::new(crate::runtime::Runtime::new(
        crate::runtime::RuntimeConfig {
            cache_dir: Some(dirs.compiled()),
        },
    )?);
    let scratch = tempfile::tempdir()?;
    let store = Arc::new(LocalStore::open(scratch.path())?);
    Ok(crate::plugins::Registry::new(runtime, store)
        .load("(installing)", bytes)
        .await?)
}

/// Keep a component in `data`'s store, where `uses:` through `sluice.lock` finds it.
pub fn store_component(data: &Path, bytes: &[u8]) -> anyhow::Result<crate::artifacts::Digest> {
    let dirs = DataDir::create(data)?;
    Ok(LocalStore::open(dirs.cas())?.put_bytes(bytes)?)
}

/// Whether `data`'s store holds `digest`.
pub fn has_component(data: &Path, digest: &crate::artifacts::Digest) -> bool {
    LocalStore::open(data.join("cas")).is_ok_and(|s| s.get_bytes(digest).is_ok())
}

/// What a data directory keeps: the executions of local runs, their logs and their artifacts,
/// and those of an embedded service that is not running.
pub struct History {
    data: PathBuf,
    /// Artifacts sealed at rest, when runs made some.
    sealed: Option<Arc<dyn BlobStore>>,
}

/// The executions bucket of a stopped embedded service, opened for reading.
struct StoppedService(crate::kv::RedbKv);

/// What [`History::check_blobs`] found.
#[derive(Debug, Default)]
pub struct BlobCheck {
    /// Blobs that hash to their name.
    pub intact: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs that do not (removed, with `repair`).
    pub corrupted: Vec<Digest>,
    /// Blobs an artifact names that are not stored.
    pub missing: Vec<Digest>,
}

impl History {
    /// The data directory at `data`, which must exist.
    pub fn open(data: &Path) -> anyhow::Result<Self> {
        if !data.is_dir() {
            anyhow::bail!(
                "no Sluice data directory at {} (run a pipeline first, or pass --data DIR)",
                data.display()
            );
        }
        Ok(History {
            data: data.to_path_buf(),
            sealed: None,
        })
    }

    fn dirs(&self) -> DataDir {
        DataDir {
            root: self.data.clone(),
        }
    }

    /// Executions, newest first (of `pipeline` only, if given), at most `limit`.
    pub fn executions(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Execution>> {
        let state = RedbStore::open(&self.dirs().state())?;
        Ok(state.list(crate::executor::DEFAULT_TENANT, pipeline, limit)?)
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The embedded service's store here, if it has one and no service holds it.
    fn stopped_service(&self) -> Option<StoppedService> {
        let path = self.data.join("service.redb");
        if !path.is_file() {
            return None;
        }
        let db = crate::kv::RedbKv::open_database(&path).ok()?;
        crate::kv::RedbKv::bucket(db, "executions")
            .ok()
            .map(StoppedService)
    }

    /// Executions of the embedded service kept here, newest first, when no service is running
    /// on this data directory (`None`: there is no such store, or a service holds it).
    pub async fn service_executions(
        &self,
        pipeline: Option<&str>,
        status: Option<crate::scheduler::Status>,
        limit: usize,
    ) -> anyhow::Result<Option<Vec<Execution>>> {
        let Some(StoppedService(kv)) = self.stopped_service() else {
            return Ok(None);
        };
        Ok(Some(
            crate::service::control::list_executions(
                &kv,
                crate::executor::DEFAULT_TENANT,
                pipeline,
                status,
                None,
                limit,
            )
            .await?,
        ))
    }

    /// The execution `id` of the embedded service kept here, when no service is running.
    pub async fn service_execution(&self, id: &str) -> anyhow::Result<Option<Execution>> {
        let Some(StoppedService(kv)) = self.stopped_service() else {
            return Ok(None);
        };
        let key = crate::service::exec_key(crate::executor::DEFAULT_TENANT, id);
        Ok(crate::kv::get_json::<Execution>(&kv, &key)
            .await?
            .map(|(e, _)| e))
    }

    /// The execution `id`, if a local run recorded it here.
    pub fn execution(&self, id: &str) -> anyhow::Result<Option<Execution>> {
        let path = self.dirs().state();
        if !path.exists() {
            return Ok(None);
        }
        Ok(RedbStore::open(&path)?
            .get(crate::executor::DEFAULT_TENANT, id)?
            .map(|(e, _)| e))
    }

    fn logs(&self) -> LogStore {
        LogStore::new(self.dirs().logs())
    }

    /// The (stage, action) pairs of execution `id` that have a log.
    pub fn logged_actions(&self, id: &str) -> Vec<(String, String)> {
        self.logs().actions(id)
    }

    /// Every line an action of execution `id` logged, all attempts.
    pub fn log(&self, id: &str, stage: &str, action: &str) -> std::io::Result<Vec<LogLine>> {
        self.logs().read(id, stage, action)
    }

    fn blobs(&self) -> anyhow::Result<Box<dyn BlobStore>> {
        let plain = LocalStore::open(self.dirs().cas())?;
        Ok(match &self.sealed {
            Some(sealed) => Box::new(PlainOrSealed {
                plain: Arc::new(plain),
                sealed: sealed.clone(),
            }),
            None => Box::new(plain),
        })
    }

    /// Also read artifacts sealed at rest (runs with `--encrypt`): see [`sealed_artifacts`].
    pub fn with_sealed(mut self, sealed: Option<Arc<dyn BlobStore>>) -> Self {
        self.sealed = sealed;
        self
    }

    /// Every entry of the artifact `digest`, by path.
    pub fn artifact_entries(&self, digest: &Digest) -> anyhow::Result<Vec<(PathBuf, Entry)>> {
        Ok(tree::list(&*self.blobs()?, digest)?)
    }

    /// Write the artifact `digest` to `dest`, each file verified as it is written.
    pub fn artifact_get(&self, digest: &Digest, dest: &Path) -> anyhow::Result<TreeStats> {
        Ok(tree::materialize(&*self.blobs()?, digest, dest)?)
    }

    /// Re-hash stored blobs: those of the artifact `digest` (its listing included), or every
    /// blob in the store. With `repair`, remove those that no longer hash to their name, so
    /// the next run that makes their content stores it again.
    pub fn check_blobs(
        &self,
        artifact: Option<&Digest>,
        repair: bool,
    ) -> anyhow::Result<BlobCheck> {
        let store = self.blobs()?;
        let mut check = BlobCheck::default();
        let examine = |d: &Digest, check: &mut BlobCheck| -> anyhow::Result<()> {
            match store.verify(d) {
                Ok(bytes) => {
                    check.intact += 1;
                    check.bytes += bytes;
                }
                Err(StoreError::Corrupted { .. } | StoreError::Tampered(_)) => {
                    if repair {
                        store.discard_corrupted(d)?;
                    }
                    check.corrupted.push(*d);
                }
                Err(StoreError::NotFound(_)) => check.missing.push(*d),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        };
        match artifact {
            None => {
                // The plain blobs (sealed ones are checked artifact by artifact).
                for d in LocalStore::open(self.dirs().cas())?.digests()? {
                    examine(&d, &mut check)?;
                }
            }
            Some(root) => match tree::list(&*store, root) {
                Ok(entries) => {
                    examine(root, &mut check)?;
                    for (_, entry) in entries {
                        if let Entry::File { digest, .. } | Entry::Dir { digest, .. } = entry {
                            examine(&digest, &mut check)?;
                        }
                    }
                }
                // The listing itself is damaged: it is the one blob to remove.
                Err(StoreError::Corrupted { expected, .. }) => {
                    examine(&expected, &mut check)?;
                }
                Err(e) => return Err(e.into()),
            },
        }
        Ok(check)
    }

    /// Check every blob of the artifact `digest` against its digest.
    pub fn artifact_verify(
        &self,
        digest: &Digest,
    ) -> anyhow::Result<Result<TreeStats, StoreError>> {
        Ok(tree::verify(&*self.blobs()?, digest))
    }
}

/// The data folder's artifacts when some runs sealed theirs: an address is looked up among the
/// sealed ones first (keyed addresses never equal plain digests), else among the plain ones.
/// (Also the sealed ones of two namespaces: `_local`, then `default` where runs sealed theirs
/// before they had a namespace of their own.)
struct PlainOrSealed {
    plain: Arc<dyn BlobStore>,
    sealed: Arc<dyn BlobStore>,
}

impl PlainOrSealed {
    fn of(&self, d: &Digest) -> &dyn BlobStore {
        if self.sealed.contains(d) {
            &*self.sealed
        } else {
            &*self.plain
        }
    }
}

impl BlobStore for PlainOrSealed {
    fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        self.plain.put_file(path)
    }
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.plain.put_bytes(bytes)
    }
    fn get_to_file(&self, d: &Digest, dest: &Path) -> Result<(), StoreError> {
        self.of(d).get_to_file(d, dest)
    }
    fn get_bytes(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        self.of(d).get_bytes(d)
    }
    fn verify(&self, d: &Digest) -> Result<u64, StoreError> {
        self.of(d).verify(d)
    }
    fn contains(&self, d: &Digest) -> bool {
        self.sealed.contains(d) || self.plain.contains(d)
    }
    fn discard_corrupted(&self, d: &Digest) -> Result<bool, StoreError> {
        self.of(d).discard_corrupted(d)
    }
}
