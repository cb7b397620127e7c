//! Events out on NATS: each event is published to the `SLUICE_EVENTS` stream on
//! `sluice.<tenant>.events.<kind>.<pipeline>` with its id as `Nats-Msg-Id` (so an event sent
//! again is stored once), and the publish acknowledged, retried until it is. Core subscribers
//! see the same messages live.
use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage;
use futures_util::future::BoxFuture;
use sluice_engine::bus::{Event, EventBus};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Events to send in order, and who to tell once the stream has them all.
struct Batch {
    events: Vec<Event>,
    done: Option<oneshot::Sender<()>>,
}

/// An [`EventBus`] on JetStream. Publishing never blocks the engine: events queue in
/// order and a background task sends them.
pub struct NatsBus {
    tx: mpsc::UnboundedSender<Batch>,
}

impl NatsBus {
    /// Start the sender task.
    pub fn new(js: Context) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                // Sent in order; the stream's acknowledgements are awaited off this loop, so one
                // event's round trip does not hold up the next (a failure is sent again).
                let mut acks = Vec::with_capacity(batch.events.len());
                for event in batch.events {
                    let subject =
                        super::event_subject(&event.tenant, event.kind.as_str(), &event.pipeline);
                    let payload: bytes::Bytes =
                        serde_json::to_vec(&event).unwrap_or_default().into();
                    let sent = js
                        .send_publish(subject.clone(), message(&event.id, payload.clone()))
                        .await;
                    acks.push((sent, subject, event.id, payload));
                }
                let js = js.clone();
                tokio::spawn(async move {
                    for (sent, subject, id, payload) in acks {
                        let acked = match sent {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        };
                        if !acked {
                            resend(&js, subject, &id, payload).await;
                        }
                    }
                    if let Some(done) = batch.done {
                        let _ = done.send(());
                    }
                });
            }
        });
        NatsBus { tx }
    }
}

fn message(id: &str, payload: bytes::Bytes) -> PublishMessage {
    let message = PublishMessage::build().payload(payload);
    if id.is_empty() {
        message
    } else {
        message.message_id(id)
    }
}

async fn resend(js: &Context, subject: String, id: &str, payload: bytes::Bytes) {
    let mut delay = Duration::from_millis(50);
    loop {
        let sent = match js
            .send_publish(subject.clone(), message(id, payload.clone()))
            .await
        {
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
        let _ = self.tx.send(Batch {
            events: vec![event],
            done: None,
        });
    }

    fn publish_all(&self, events: Vec<Event>) -> BoxFuture<'static, ()> {
        if events.is_empty() {
            return Box::pin(std::future::ready(()));
        }
        let (done, acked) = oneshot::channel();
        let _ = self.tx.send(Batch {
            events,
            done: Some(done),
        });
        Box::pin(async move {
            let _ = acked.await;
        })
    }
}

/// Every engine's events, live, from the state-change subjects (`sluice.*.events.>`): what the
/// HTTP port streams on NATS. A message that is not an event is skipped.
pub async fn all_events(
    client: &async_nats::Client,
) -> anyhow::Result<futures_util::stream::BoxStream<'static, Event>> {
    use futures_util::StreamExt as _;
    let sub = client
        .subscribe("sluice.*.events.>")
        .await
        .map_err(|e| anyhow::anyhow!("subscribe to the event subjects: {e}"))?;
    Ok(sub
        .filter_map(|m| async move { serde_json::from_slice::<Event>(&m.payload).ok() })
        .boxed())
}
