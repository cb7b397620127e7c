//! The events the HTTP port streams (`GET /api/v1/events`): every state change this engine
//! sees — its own bus in the embedded service, the shared event subjects on NATS — numbered in
//! arrival order, the newest [`KEPT`] kept so that a client reconnecting with `Last-Event-ID`
//! misses nothing that is still held.
use crate::bus::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many events a reconnecting client can catch up on.
pub const KEPT: usize = 4096;

/// An event and its number in the feed.
pub type Numbered = (u64, Arc<Event>);

/// The last number given, and the newest events.
type Kept = (u64, VecDeque<Numbered>);

/// Numbered events, fanned out to every open stream.
pub struct EventFeed {
    tx: broadcast::Sender<Numbered>,
    kept: Mutex<Kept>,
}

/// Where the feed's events come from.
pub enum EventSource {
    /// The embedded service's bus.
    Memory(Arc<crate::bus::MemoryBus>),
    /// Events from elsewhere: on NATS, the state-change subjects (every engine's events,
    /// `sluice_nats::bus::all_events`).
    Stream(futures_util::stream::BoxStream<'static, Event>),
}

impl EventFeed {
    /// A feed of `source`'s events, forwarded until the process ends.
    pub fn start(source: EventSource) -> Arc<Self> {
        let feed = Arc::new(EventFeed {
            tx: broadcast::channel(KEPT).0,
            kept: Mutex::new((0, VecDeque::new())),
        });
        let forward = feed.clone();
        tokio::spawn(async move {
            match source {
                EventSource::Memory(bus) => {
                    let mut rx = bus.subscribe();
                    loop {
                        match rx.recv().await {
                            Ok(e) => forward.push(e),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!("http event feed: {n} events missed");
                            }
                            Err(_) => return,
                        }
                    }
                }
                EventSource::Stream(mut events) => {
                    use futures_util::StreamExt as _;
                    while let Some(e) = events.next().await {
                        forward.push(e);
                    }
                }
            }
        });
        feed
    }

    /// Number `event` and send it to every stream.
    pub fn push(&self, event: Event) {
        let mut kept = self.kept.lock().unwrap();
        kept.0 += 1;
        let item = (kept.0, Arc::new(event));
        if kept.1.len() == KEPT {
            kept.1.pop_front();
        }
        kept.1.push_back(item.clone());
        // Sent under the lock: a new stream sees each event either kept or live, never both
        // or neither.
        let _ = self.tx.send(item);
    }

    /// The kept events after number `after` (none without it), and the live ones from now.
    pub fn follow(&self, after: Option<u64>) -> (Vec<Numbered>, broadcast::Receiver<Numbered>) {
        let kept = self.kept.lock().unwrap();
        let rx = self.tx.subscribe();
        let backlog = match after {
            Some(n) => kept.1.iter().filter(|(i, _)| *i > n).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Event {
        serde_json::from_value(serde_json::json!({
            "kind": "pipeline", "tenant": "default", "pipeline": "p", "execution_id": format!("e{n}"),
            "stage": null, "action": null, "status": "InProgress", "attempt": null,
            "at": "2026-01-01T00:00:00Z", "duration_ms": null, "detail": null
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_client_resuming_after_an_id_gets_what_followed_then_live_events() {
        let feed = Arc::new(EventFeed {
            tx: broadcast::channel(16).0,
            kept: Mutex::new((0, VecDeque::new())),
        });
        for n in 1..=3 {
            feed.push(event(n));
        }
        let (backlog, mut live) = feed.follow(Some(1));
        let ids: Vec<u64> = backlog.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, [2, 3]);
        feed.push(event(4));
        assert_eq!(live.recv().await.unwrap().0, 4);
        // Only the newest KEPT are held.
        for n in 5..(KEPT as u64 + 10) {
            feed.push(event(n));
        }
        let (backlog, _) = feed.follow(Some(0));
        assert_eq!(backlog.len(), KEPT);
        assert_eq!(backlog[0].0, 10);
    }
}
