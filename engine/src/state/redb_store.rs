//! The embedded state store: one redb file in the data directory.
use super::{Durability, StateError, StateStore};
use crate::scheduler::Execution;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// key: "<tenant>/<execution id>", value: 8-byte big-endian revision, then the record as
/// JSON. The revision prefix lets compare-and-swap check without parsing the record.
const EXECUTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("executions");

/// The keys of executions not ended yet. A `sluice run` holds the file (redb locks it) while
/// it runs, so whoever opens the file finds here only runs whose process ended without
/// recording their end (killed, crashed, or its disk filled): they are ended on open.
const RUNNING: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("running");

/// Why an orphaned run was ended, in its record.
pub const ORPHANED: &str = "the sluice run that ran it ended without recording its end (killed, crashed, or its disk was full)";

fn revision_of(value: &[u8]) -> Result<u64, StateError> {
    let prefix: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StateError::Backend("truncated record".into()))?;
    Ok(u64::from_be_bytes(prefix))
}

fn decode(value: &[u8]) -> Result<(Execution, u64), StateError> {
    let revision = revision_of(value)?;
    Ok((
        serde_json::from_slice(&value[8..]).map_err(backend)?,
        revision,
    ))
}

/// Executions in a redb database file.
pub struct RedbStore {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(e.to_string())
}

impl RedbStore {
    /// Open or create the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::Backend(format!(
                "{} is in use by another sluice process; wait for it to finish or pass a different --data directory",
                path.display()
            )),
            other => StateError::Backend(format!("{}: {other}", path.display())),
        })?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(EXECUTIONS).map_err(backend)?;
        tx.open_table(RUNNING).map_err(backend)?;
        tx.commit().map_err(backend)?;
        let store = RedbStore { db };
        // Best effort: on a still-full disk the next open tries again.
        if let Err(e) = store.end_orphans() {
            tracing::warn!("{}: could not end interrupted runs: {e}", path.display());
        }
        Ok(store)
    }

    /// End the executions whose `sluice run` died: stopped, their running actions abandoned,
    /// with the reason [`ORPHANED`].
    fn end_orphans(&self) -> Result<usize, StateError> {
        let keys: Vec<String> = {
            let tx = self.db.begin_read().map_err(backend)?;
            let table = tx.open_table(RUNNING).map_err(backend)?;
            table
                .iter()
                .map_err(backend)?
                .map(|item| item.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()
                .map_err(backend)?
        };
        let mut ended = 0;
        for key in keys {
            let Some((tenant, id)) = key.split_once('/') else {
                continue;
            };
            match self.get(tenant, id)? {
                Some((exec, revision)) if !exec.status.is_terminal() => {
                    let input = crate::scheduler::Input::Stop {
                        abandon: true,
                        reason: Some(ORPHANED.to_string()),
                        at: crate::clock::now(),
                    };
                    let (mut next, _) = crate::scheduler::step(&exec, &input);
                    // A stop settles once nothing runs; nothing does any more.
                    if !next.status.is_terminal() {
                        next.status = crate::scheduler::Status::Stopped;
                    }
                    if next.finished_at.is_none() {
                        next.finished_at = Some(input.at());
                    }
                    // A run that died before it recorded its start (its disk filled first) is
                    // not stopped by the step above, yet ends for the same reason.
                    if next.stop_reason.is_none() {
                        next.stop_reason = Some(ORPHANED.to_string());
                    }
                    self.put(&next, Some(revision), Durability::Durable)?;
                    ended += 1;
                }
                _ => {
                    let tx = self.db.begin_write().map_err(backend)?;
                    tx.open_table(RUNNING)
                        .map_err(backend)?
                        .remove(key.as_str())
                        .map_err(backend)?;
                    tx.commit().map_err(backend)?;
                }
            }
        }
        Ok(ended)
    }
}

impl StateStore for RedbStore {
    fn put(
        &self,
        exec: &Execution,
        expected: Option<u64>,
        durability: Durability,
    ) -> Result<u64, StateError> {
        let key = format!("{}/{}", exec.tenant, exec.execution_id);
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(match durability {
            Durability::Durable => redb::Durability::Immediate,
            Durability::Eventual => redb::Durability::None,
        })
        .map_err(backend)?;
        let revision = {
            let mut table = tx.open_table(EXECUTIONS).map_err(backend)?;
            let found = match table.get(key.as_str()).map_err(backend)? {
                Some(v) => Some(revision_of(v.value())?),
                None => None,
            };
            if found != expected {
                return Err(StateError::Conflict {
                    id: exec.execution_id.clone(),
                    expected,
                    found,
                });
            }
            let revision = found.unwrap_or(0) + 1;
            let mut bytes = revision.to_be_bytes().to_vec();
            serde_json::to_writer(&mut bytes, exec).map_err(backend)?;
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(backend)?;
            let mut running = tx.open_table(RUNNING).map_err(backend)?;
            if exec.status.is_terminal() {
                running.remove(key.as_str()).map_err(backend)?;
            } else if found.is_none() {
                running
                    .insert(key.as_str(), [].as_slice())
                    .map_err(backend)?;
            }
            revision
        };
        tx.commit().map_err(backend)?;
        Ok(revision)
    }

    fn get(
        &self,
        tenant: &str,
        execution_id: &str,
    ) -> Result<Option<(Execution, u64)>, StateError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(EXECUTIONS).map_err(backend)?;
        match table
            .get(format!("{tenant}/{execution_id}").as_str())
            .map_err(backend)?
        {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn list(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>, StateError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(EXECUTIONS).map_err(backend)?;
        let prefix = format!("{tenant}/");
        let mut out = Vec::new();
        // ULIDs sort by time, so walking the tenant's keys backwards is newest first.
        for item in table.range(prefix.as_str()..).map_err(backend)?.rev() {
            let (k, v) = item.map_err(backend)?;
            if !k.value().starts_with(&prefix) {
                continue;
            }
            let (execution, _) = decode(v.value())?;
            if pipeline.is_none_or(|p| p == execution.pipeline) {
                out.push(execution);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
