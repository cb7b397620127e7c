//! Group commit for the embedded bucket: writes that arrive while a transaction commits are
//! gathered into the next one.
//!
//! A redb commit waits for the disk (two syncs), and redb has one writer at a time. Committing
//! each write on its own made every write wait for all those queued before it, one sync pair
//! each, on the runtime's own threads: under one tenant's flood, another tenant's start waited
//! behind thousands of syncs with the cores stalled. Now the first writer of a burst leads: on
//! a blocking thread it takes every write waiting, applies them in order in one transaction
//! (each checked against the revision it expects, as before, and seeing the ones before it),
//! commits once, and answers each; then it takes what arrived meanwhile, until none is left.
//! A write is answered only once its transaction is durable, as before.
use redb::{Database, ReadableTable, TableDefinition};
use std::sync::{Arc, Mutex};

/// One write: `value` written if the key's revision is `expected` (`None`: absent), or
/// (`value` `None`) the key removed — if its revision is `expected`, when one is given.
pub(super) struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expected: Option<u64>,
    pub reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// A write's outcome: its new revision (0 for a removal).
pub(super) type Outcome = Result<u64, Failure>;

/// Why a write was not made.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// The key's revision is not the one expected.
    Conflict,
    /// redb failed; `io`: the file can no longer be written (a full disk).
    Store { why: String, io: bool },
}

/// The writes waiting for a transaction, and whether one is being led.
#[derive(Default)]
pub(super) struct Waiting {
    writes: Vec<Write>,
    leading: bool,
}

/// Called with each committed write (key, new value and revision; `None`: removed).
type Committed = Arc<dyn Fn(&str, Option<(&[u8], u64)>) + Send + Sync>;

/// Where a bucket's writes gather; shared by the bucket's handles.
#[derive(Clone)]
pub(super) struct Gathered {
    waiting: Arc<Mutex<Waiting>>,
    committed: Committed,
}

impl Gathered {
    /// Writes that tell `committed` of each change once it is durable (for the watches).
    pub(super) fn new(
        committed: impl Fn(&str, Option<(&[u8], u64)>) + Send + Sync + 'static,
    ) -> Self {
        Gathered {
            waiting: Arc::default(),
            committed: Arc::new(committed),
        }
    }

    /// Queue `write`; the caller that finds no transaction being led starts one (on a blocking
    /// thread). Every caller then waits for its own write's reply.
    pub(super) fn submit(&self, db: &Arc<Database>, table: &str, write: Write) {
        let lead = {
            let mut w = self.waiting.lock().unwrap();
            w.writes.push(write);
            !std::mem::replace(&mut w.leading, true)
        };
        if lead {
            let (leading, db, table) = (Leading(Some(self.clone())), db.clone(), table.to_string());
            tokio::task::spawn_blocking(move || leading.lead(&db, &table));
        }
    }
}

/// The leader's hold on a bucket's writes. Should its task end abnormally (a commit panics, or
/// the runtime shuts down before the task runs), the writes waiting are answered with an error
/// (their callers learn it) and the next writer leads.
struct Leading(Option<Gathered>);

impl Drop for Leading {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            let mut w = g.waiting.lock().unwrap();
            w.writes.clear();
            w.leading = false;
        }
    }
}

impl Leading {
    fn lead(mut self, db: &Database, table: &str) {
        if let Some(g) = &self.0 {
            g.lead(db, table);
        }
        // Ended normally: `lead` let go of the writes (nothing is left to answer).
        self.0 = None;
    }
}

impl Gathered {
    /// Commit the writes waiting, and those that come meanwhile, until none is left.
    fn lead(&self, db: &Database, table: &str) {
        loop {
            let writes = {
                let mut w = self.waiting.lock().unwrap();
                if w.writes.is_empty() {
                    w.leading = false;
                    return;
                }
                std::mem::take(&mut w.writes)
            };
            match commit(db, table, &writes) {
                Ok(outcomes) => {
                    for (write, outcome) in writes.into_iter().zip(outcomes) {
                        if let Ok(revision) = outcome {
                            (self.committed)(
                                &write.key,
                                write.value.as_deref().map(|v| (v, revision)),
                            );
                        }
                        let _ = write.reply.send(outcome);
                    }
                }
                Err(failure) => {
                    for write in writes {
                        let _ = write.reply.send(Err(failure.clone()));
                    }
                }
            }
        }
    }
}

/// The revision a stored value carries in its first 8 bytes (big-endian; the value follows).
pub(super) fn revision_of(stored: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&stored[..8]);
    u64::from_be_bytes(prefix)
}

/// Apply `writes` in order in one transaction and commit it: each write's outcome, or the
/// failure of the whole transaction (then none was made).
fn commit(db: &Database, table: &str, writes: &[Write]) -> Result<Vec<Outcome>, Failure> {
    let failed = |e: redb::Error| Failure::Store {
        io: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
        why: e.to_string(),
    };
    let def = TableDefinition::<&str, &[u8]>::new(table);
    let tx = db.begin_write().map_err(|e| failed(e.into()))?;
    let mut outcomes = Vec::with_capacity(writes.len());
    {
        let mut t = tx.open_table(def).map_err(|e| failed(e.into()))?;
        for w in writes {
            let found = t
                .get(w.key.as_str())
                .map_err(|e| failed(e.into()))?
                .map(|v| revision_of(v.value()));
            let outcome = match &w.value {
                None if w.expected.is_some() && found != w.expected => Err(Failure::Conflict),
                None => {
                    t.remove(w.key.as_str()).map_err(|e| failed(e.into()))?;
                    Ok(0)
                }
                Some(_) if found != w.expected => Err(Failure::Conflict),
                Some(value) => {
                    let revision = found.unwrap_or(0) + 1;
                    let mut bytes = Vec::with_capacity(8 + value.len());
                    bytes.extend_from_slice(&revision.to_be_bytes());
                    bytes.extend_from_slice(value);
                    t.insert(w.key.as_str(), bytes.as_slice())
                        .map_err(|e| failed(e.into()))?;
                    Ok(revision)
                }
            };
            outcomes.push(outcome);
        }
    }
    tx.commit().map_err(|e| failed(e.into()))?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use crate::kv::{Kv, KvError, RedbKv};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_gathered_in_one_transaction_keep_their_checks_and_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = Arc::new(RedbKv::bucket(RedbKv::open_database(&path).unwrap(), "b").unwrap());
            // Many writers at once: most of them gather in shared transactions.
            let mut tasks = Vec::new();
            for i in 0..200 {
                let kv = kv.clone();
                tasks.push(tokio::spawn(async move {
                    // Everybody races for `claim`; each writes a key of its own too.
                    let claimed = kv.create("claim", vec![i as u8]).await;
                    kv.create(&format!("k/{i:03}"), vec![i as u8])
                        .await
                        .unwrap();
                    claimed.is_ok()
                }));
            }
            let mut winners = 0;
            for t in tasks {
                winners += t.await.unwrap() as usize;
            }
            assert_eq!(
                winners, 1,
                "one event id, one claim: exactly one create of a key wins"
            );
            // Revisions are checked write by write, also within one transaction.
            let (_, revision) = kv.get("k/007").await.unwrap().unwrap();
            let (a, b) = tokio::join!(
                kv.update("k/007", b"a".to_vec(), revision),
                kv.update("k/007", b"b".to_vec(), revision)
            );
            assert!(
                matches!(
                    (&a, &b),
                    (Ok(_), Err(KvError::Conflict { .. })) | (Err(KvError::Conflict { .. }), Ok(_))
                ),
                "{a:?} {b:?}"
            );
            kv.delete("k/199").await.unwrap();
        }
        // Durable once answered: all of it is there after the file is opened again (once the
        // last leader's blocking task, which answers before it ends, has let go of it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match RedbKv::open_database(&path) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let kv = RedbKv::bucket(db, "b").unwrap();
        assert_eq!(kv.keys("k/").await.unwrap().len(), 199);
        assert!(kv.get("claim").await.unwrap().is_some());
        let (value, revision) = kv.get("k/007").await.unwrap().unwrap();
        assert!(value == b"a" || value == b"b");
        assert_eq!(revision, 2);
    }

    #[tokio::test]
    async fn a_watch_sees_each_committed_write_in_order() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let kv = RedbKv::bucket(
            RedbKv::open_database(&dir.path().join("kv.redb")).unwrap(),
            "b",
        )
        .unwrap();
        let mut changes = kv.watch("w").await.unwrap().unwrap();
        let r1 = kv.create("w", b"1".to_vec()).await.unwrap();
        kv.update("w", b"2".to_vec(), r1).await.unwrap();
        kv.delete("w").await.unwrap();
        assert_eq!(
            changes.next().await.unwrap().unwrap(),
            Some((b"1".to_vec(), 1))
        );
        assert_eq!(
            changes.next().await.unwrap().unwrap(),
            Some((b"2".to_vec(), 2))
        );
        assert_eq!(changes.next().await.unwrap().unwrap(), None);
    }
}
