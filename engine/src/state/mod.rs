//! Execution state. Every update is a compare-and-swap on the record's revision, so two
//! writers can never silently overwrite each other (the NATS KV backend has the same rule).

pub mod redb_store;

pub use redb_store::RedbStore;

use crate::scheduler::Execution;

/// Errors from a state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The record changed since it was read.
    #[error(
        "execution {id} was changed by someone else (expected revision {expected:?}, found {found:?})"
    )]
    Conflict {
        /// Execution id.
        id: String,
        /// The revision the writer read.
        expected: Option<u64>,
        /// The revision found.
        found: Option<u64>,
    },
    /// The backend failed.
    #[error("state store: {0}")]
    Backend(String),
}

/// How hard a write must be persisted before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk when this returns (creation, terminal states).
    Durable,
    /// May be lost if the process is killed or the power fails before the next durable write
    /// (progress within a run).
    Eventual,
}

/// Where executions live.
pub trait StateStore: Send + Sync {
    /// Write `exec` if its stored revision is `expected` (`None`: must not exist yet).
    /// Returns the new revision.
    fn put(
        &self,
        exec: &Execution,
        expected: Option<u64>,
        durability: Durability,
    ) -> Result<u64, StateError>;
    /// Read an execution and its revision.
    fn get(&self, tenant: &str, execution_id: &str)
    -> Result<Option<(Execution, u64)>, StateError>;
    /// Newest first, optionally for one pipeline.
    fn list(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>, StateError>;
}

/// The state store of an engine whose executions live elsewhere (the service's bucket).
pub struct Detached;

impl StateStore for Detached {
    fn put(&self, exec: &Execution, _: Option<u64>, _: Durability) -> Result<u64, StateError> {
        Err(StateError::Backend(format!(
            "execution {}: this engine keeps executions in the service's store",
            exec.execution_id
        )))
    }
    fn get(&self, _: &str, _: &str) -> Result<Option<(Execution, u64)>, StateError> {
        Ok(None)
    }
    fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<Vec<Execution>, StateError> {
        Ok(Vec::new())
    }
}
