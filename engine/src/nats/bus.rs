//! Events out on NATS: each event is published to the `SLUICE_EVENTS` stream on
//! `sluice.<tenant>.events.<kind>.<pipeline>` and the publish acknowledged, retried until it
//! is (at least once). Core subscribers see the same messages live.
use crate::bus::{Event, EventBus};
use async_nats::jetstream::Context;
use std::time::Duration;
use tokio::sync::mpsc;

/// An [`EventBus`] on JetStream. Publishing never blocks the engine: events queue in
/// order and a background task sends them.
pub struct NatsBus {
    tx: mpsc::UnboundedSender<Event>,
}

impl NatsBus {
    /// Start the sender task.
    pub fn new(js: Context) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let subject = super::event_subject(&event.tenant, event.kind.as_str(), &event.pipeline);
                let payload: bytes::Bytes = serde_json::to_vec(&event).unwrap_or_default().into();
                // Sent in order; the stream's acknowledgements are awaited off this loop, so one
                // event's round trip does not hold up the next (a failure is sent again).
                match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => {
                        let js = js.clone();
                        tokio::spawn(async move {
                            if ack.await.is_err() {
                                resend(&js, subject, payload).await;
                            }
                        });
                    }
                    Err(_) => resend(&js, subject, payload).await,
                }
            }
        });
        NatsBus { tx }
    }
}

/// Publish until the stream acknowledges, backing off.
async fn resend(js: &Context, subject: String, payload: bytes::Bytes) {
    let mut delay = Duration::from_millis(50);
    loop {
        let sent = match js.publish(subject.clone(), payload.clone()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("publishing an event to {subject} failed ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl EventBus for NatsBus {
    fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}
