//! What an engine shares with the other engines of its service beyond the stores and queues:
//! dead letters announced, trigger and wake subjects captured, abandoned jobs cancelled
//! wherever they run. The embedded service is a cluster of one ([`Alone`]); the NATS
//! implementation lives with the NATS edges (`sluice-nats`).
use super::DeadLetter;
use futures_util::future::BoxFuture;

/// Why the cluster could not do what was asked (the message says what and where).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

/// The engines of one service, seen from one of them.
pub trait Cluster: Send + Sync {
    /// Announce a rejected event (the bucket keeps it either way).
    fn dead_letter(&self, letter: &DeadLetter);

    /// Make a pipeline's extra `triggers.nats` subjects deliver to the engines; an error
    /// refuses the registration.
    fn capture_triggers(
        &self,
        tenant: &str,
        pipeline: &str,
        subjects: Vec<String>,
    ) -> BoxFuture<'static, Result<(), ClusterError>>;

    /// Tell the other engines to cancel these jobs (by id), abandoned by `stop --abandon`.
    fn cancel_elsewhere(&self, tenant: &str, job_ids: Vec<String>);

    /// Whether events on NATS subjects reach this service, so that `wake: event(subject)`
    /// can wake an action without `sluice wake`.
    fn hears_subjects(&self) -> bool;

    /// Capture `subject`, which an action now waits for (only when [`Self::hears_subjects`]).
    fn capture_wake(&self, subject: &str) -> BoxFuture<'static, Result<(), ClusterError>>;

    /// Whether this engine is the service's only one (the hourly sweeps then need no turn).
    fn alone(&self) -> bool {
        false
    }
}

/// The embedded service: one engine, nothing to tell anyone. Extra trigger subjects and event
/// wakes need NATS; on the embedded service only `sluice wake` wakes a waiting action.
pub struct Alone;

impl Cluster for Alone {
    fn dead_letter(&self, _letter: &DeadLetter) {}

    fn capture_triggers(
        &self,
        _tenant: &str,
        _pipeline: &str,
        _subjects: Vec<String>,
    ) -> BoxFuture<'static, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }

    fn cancel_elsewhere(&self, _tenant: &str, _job_ids: Vec<String>) {}

    fn hears_subjects(&self) -> bool {
        false
    }

    fn alone(&self) -> bool {
        true
    }

    fn capture_wake(&self, _subject: &str) -> BoxFuture<'static, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }
}
