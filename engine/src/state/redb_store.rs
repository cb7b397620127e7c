//! The embedded state store: one redb file in the data directory.
use super::{Durability, StateError, StateStore};
use crate::scheduler::Execution;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// key: "<tenant>/<execution id>", value: 8-byte big-endian revision, then the record as
/// JSON. The revision prefix lets compare-and-swap check without parsing the record.
const EXECUTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("executions");

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
        tx.commit().map_err(backend)?;
        Ok(RedbStore { db })
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
