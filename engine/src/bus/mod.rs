//! Where events go: the [`EventBus`] edge. The events themselves, and how they are derived
//! from an execution's record, are pure and live in `sluice_core::events`.
pub use sluice_core::events::*;

/// Where events go.
pub trait EventBus: Send + Sync {
    /// Publish one event (sent at least once while this process lives).
    fn publish(&self, event: Event);

    /// Publish events in order; the future ends once the bus holds them durably (on NATS: the
    /// stream acknowledged each). Whoever acknowledges the cause of a change (a job, a trigger)
    /// waits for this first, so a crash before it leads to a redelivery, which sends them again.
    fn publish_all(&self, events: Vec<Event>) -> futures_util::future::BoxFuture<'static, ()> {
        for event in events {
            self.publish(event);
        }
        Box::pin(std::future::ready(()))
    }
}

/// The embedded bus: a tokio broadcast channel; slow subscribers miss old events rather
/// than slowing the engine.
pub struct MemoryBus {
    tx: tokio::sync::broadcast::Sender<Event>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            tx: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl MemoryBus {
    /// Receive events published from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl EventBus for MemoryBus {
    fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}
