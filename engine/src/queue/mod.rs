//! Work queues: trigger events and jobs wait here for an engine. Delivery is at least once:
//! a message stays until a consumer acknowledges it, and comes back if its consumer goes
//! away. Pushes carry an id, and a second push with an id seen recently is dropped.
//! Embedded: [`MemoryQueue`] (one process). NATS: `sluice_nats::queue::NatsQueue`, a JetStream stream and a
//! durable pull consumer shared by every engine.

mod memory;

pub use memory::MemoryQueue;

use futures_util::future::BoxFuture;
use std::time::Duration;

/// Errors from a queue.
#[derive(Debug, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueError(pub String);

/// The result of a queue operation.
pub type QueueResult<T> = Result<T, QueueError>;

/// One delivered message. Dropping it without [`Delivery::ack`] or [`Delivery::nak`] leaves
/// it to be redelivered after the ack deadline.
pub struct Delivery {
    /// The subject it was pushed to.
    pub subject: String,
    /// Its body.
    pub payload: Vec<u8>,
    /// How many times it has been delivered, this time included.
    pub delivered: u64,
    /// Settles it.
    pub handle: std::sync::Arc<dyn Settle>,
}

/// How a consumer settles a delivery.
pub trait Settle: Send + Sync {
    /// Done: never deliver it again.
    fn ack(&self) -> BoxFuture<'_, QueueResult<()>>;
    /// Not now: deliver it again after `delay`.
    fn nak(&self, delay: Duration) -> BoxFuture<'_, QueueResult<()>>;
    /// Still working on it: push the ack deadline back.
    fn progress(&self) -> BoxFuture<'_, QueueResult<()>>;
}

impl Delivery {
    /// Done with it.
    pub async fn ack(&self) -> QueueResult<()> {
        self.handle.ack().await
    }
    /// Deliver it again after `delay`.
    pub async fn nak(&self, delay: Duration) -> QueueResult<()> {
        self.handle.nak(delay).await
    }
}

/// A queue of messages.
pub trait WorkQueue: Send + Sync {
    /// Add a message; `id` deduplicates re-pushes.
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, QueueResult<()>>;
    /// Wait for the next message.
    fn next(&self) -> BoxFuture<'_, QueueResult<Delivery>>;
    /// How long a delivery may go without progress before it is redelivered.
    fn ack_wait(&self) -> Duration;
    /// Messages waiting for their first delivery, and how long the oldest of them has waited
    /// (for the metrics: a queue that grows, or a job that waits, means too few workers).
    fn depth(&self) -> BoxFuture<'_, QueueResult<Depth>>;
    /// Whether every message is delivered in this process (the embedded queue): what this
    /// engine did not hear of, nobody did.
    fn local(&self) -> bool {
        false
    }
}

/// See [`WorkQueue::depth`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Depth {
    /// Messages not delivered yet.
    pub waiting: u64,
    /// How long the oldest of them has waited (zero when none waits).
    pub oldest: Duration,
}
