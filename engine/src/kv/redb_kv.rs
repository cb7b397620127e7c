//! The embedded bucket: one redb table per bucket. Values carry an 8-byte big-endian
//! revision prefix, like the embedded state store.
use super::redb_writes::{Failure, Gathered, Write, revision_of};
use super::{Kv, KvError, KvResult};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// A bucket in a redb database file. Several buckets may share one [`Database`]. Watches see
/// the changes made through the same `RedbKv` (share it, as the embedded service does).
pub struct RedbKv {
    db: Arc<Database>,
    table: String,
    changes: tokio::sync::broadcast::Sender<Change>,
    health: Arc<StoreHealth>,
    /// Writes wait here for the transaction that commits them (see `redb_writes`).
    gathered: Gathered,
}

/// Whether the database file can still be written. After one I/O error (a full disk) redb
/// refuses every later write ("previous I/O error") until the file is opened again, even
/// once space is freed; the embedded service stops on the first one (`sluice serve` exits
/// for its supervisor to start it again) instead of accepting work it cannot record.
#[derive(Debug)]
pub struct StoreHealth {
    failed: tokio::sync::watch::Sender<Option<String>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            failed: tokio::sync::watch::channel(None).0,
        }
    }
}

impl StoreHealth {
    fn fail(&self, why: String) {
        self.failed.send_if_modified(|f| {
            if f.is_none() {
                tracing::error!("the embedded store can no longer be written: {why}");
                *f = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the first write failure that left the file unwritable.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// A committed change, for watches: the key and its new value and revision (`None`: deleted).
type Change = (String, Option<(Vec<u8>, u64)>);

/// The embedded store's page cache.
const CACHE: usize = 16 << 20;

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

impl RedbKv {
    /// Open (or create) the database file at `path`. Its page cache is bounded (redb's default
    /// is 1 GiB): records at rest (executions waiting for days) are read from the file, through
    /// the operating system's cache, instead of each costing the engine memory.
    pub fn open_database(path: &Path) -> KvResult<Arc<Database>> {
        Database::builder()
            .set_cache_size(CACHE)
            .create(path)
            .map(Arc::new)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => KvError::Backend(format!(
                    "{} is in use by another sluice process; pass a different --data directory",
                    path.display()
                )),
                other => KvError::Backend(format!("{}: {other}", path.display())),
            })
    }

    /// The bucket `name` in `db` (created if missing).
    pub fn bucket(db: Arc<Database>, name: &str) -> KvResult<Self> {
        let table = name.to_string();
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(TableDefinition::<&str, &[u8]>::new(&table))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        let changes = tokio::sync::broadcast::channel(1024).0;
        let announce = changes.clone();
        Ok(RedbKv {
            db,
            table,
            changes,
            health: Arc::default(),
            gathered: Gathered::new(move |key, value| {
                // Only when somebody watches (a copy of the value each).
                if announce.receiver_count() > 0 {
                    let _ = announce.send((key.to_string(), value.map(|(v, r)| (v.to_vec(), r))));
                }
            }),
        })
    }

    /// Report write failures that leave the file unwritable to `health` (shared by the
    /// buckets of one database).
    pub fn reporting_to(mut self, health: Arc<StoreHealth>) -> Self {
        self.health = health;
        self
    }

    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    fn read(&self, key: &str) -> KvResult<Option<(Vec<u8>, u64)>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(self.def()).map_err(backend)?;
        Ok(table.get(key).map_err(backend)?.map(|v| split(v.value())))
    }

    /// Write `value` if the current revision is `expected` (`None`: absent), or (`value`
    /// `None`) remove the key; answered once its transaction is committed.
    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: Option<u64>,
    ) -> KvResult<u64> {
        if value.is_some() && !super::valid_key(key) {
            return Err(KvError::Backend(format!("invalid key `{key}`")));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.gathered.submit(
            &self.db,
            &self.table,
            Write {
                key: key.to_string(),
                value,
                expected,
                reply,
            },
        );
        match answer.await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(Failure::Conflict)) => Err(KvError::Conflict {
                key: key.to_string(),
            }),
            Ok(Err(Failure::Store { why, io })) => {
                // After an I/O error redb refuses every later write: see `StoreHealth`.
                if io {
                    self.health.fail(why.clone());
                }
                Err(KvError::Backend(why))
            }
            Err(_) => Err(KvError::Backend(
                "the write's transaction ended abnormally; it may not have been made".into(),
            )),
        }
    }
}

fn split(stored: &[u8]) -> (Vec<u8>, u64) {
    (stored[8..].to_vec(), revision_of(stored))
}

// redb calls are short and synchronous; running them inline keeps the embedded service simple.
impl Kv for RedbKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Option<(Vec<u8>, u64)>>> {
        async move { self.read(key) }.boxed()
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, KvResult<u64>> {
        self.write(key, Some(value), None).boxed()
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, KvResult<u64>> {
        self.write(key, Some(value), Some(revision)).boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<()>> {
        async move { self.write(key, None, None).await.map(|_| ()) }.boxed()
    }

    fn delete_if<'a>(&'a self, key: &'a str, revision: u64) -> BoxFuture<'a, KvResult<()>> {
        async move { self.write(key, None, Some(revision)).await.map(|_| ()) }.boxed()
    }

    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Option<super::KvChanges>>> {
        let rx = self.changes.subscribe();
        let key = key.to_string();
        let changes = futures_util::stream::unfold(Some(rx), move |rx| {
            let key = key.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok((k, value)) if k == key => return Some((Ok(value), Some(rx))),
                        Ok(_) => continue,
                        // A watch that fell behind has lost changes: it ends with the reason.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            return Some((
                                Err(KvError::Backend(format!(
                                    "watch of `{key}` missed {n} changes"
                                ))),
                                None,
                            ));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        async move { Ok(Some(changes.boxed())) }.boxed()
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, KvResult<Vec<String>>> {
        async move {
            let tx = self.db.begin_read().map_err(backend)?;
            let table = tx.open_table(self.def()).map_err(backend)?;
            let mut out = Vec::new();
            for item in table.range(prefix..).map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push(k.value().to_string());
            }
            Ok(out)
        }
        .boxed()
    }
}
