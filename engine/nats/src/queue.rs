//! The NATS queue: a JetStream stream read through one durable pull consumer that every
//! engine shares, so each message goes to one engine at a time. Pushes carry `Nats-Msg-Id`
//! for the stream's duplicate window. A jobs queue fetches one message per free worker, so no
//! job waits in a client buffer while its ack deadline runs; a triggers queue pulls ahead
//! (`prefetch`), as its one intake takes events in hand anyway: fetched one at a time, each a
//! round trip, another tenant's event waited 9–135 ms behind a flood's (measured).
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::{AckKind, Acker, PublishMessage};
use async_nats::jetstream::stream::{self, RetentionPolicy};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use sluice_engine::queue::{Delivery, Depth, QueueError, QueueResult, Settle, WorkQueue};
use std::time::Duration;

/// A JetStream work queue.
pub struct NatsQueue {
    js: Context,
    stream: async_nats::jetstream::stream::Stream,
    consumer: PullConsumer,
    ack_wait: Duration,
    prefetch: usize,
    /// The pull stream when pulling ahead: made on first use, dropped on an error so the
    /// next call makes another.
    pulled: tokio::sync::Mutex<Option<pull::Stream>>,
}

fn err(context: &str) -> impl Fn(async_nats::Error) -> QueueError + '_ {
    move |e| QueueError(format!("{context}: {e}"))
}

/// What a queue stream looks like.
pub struct QueueConfig<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Durable consumer name.
    pub consumer: &'a str,
    /// Redelivery deadline without progress.
    pub ack_wait: Duration,
    /// How long a message id is remembered for deduplication.
    pub duplicate_window: Duration,
    /// Messages asked for ahead of `next` (1: one per call, nothing waits in this process).
    pub prefetch: usize,
}

impl NatsQueue {
    /// Create (or bind to) the stream and its durable consumer.
    pub async fn open(js: &Context, config: QueueConfig<'_>) -> QueueResult<Self> {
        let stream = work_queue_stream(
            js,
            config.stream,
            config.subjects.clone(),
            config.duplicate_window,
        )
        .await?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                config.consumer,
                pull::Config {
                    durable_name: Some(config.consumer.to_string()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| QueueError(format!("consumer {}: {e}", config.consumer)))?;
        // An existing consumer keeps the deadline it was created with: report progress by that.
        let ack_wait = consumer.cached_info().config.ack_wait;
        Ok(NatsQueue {
            js: js.clone(),
            stream,
            consumer,
            ack_wait,
            prefetch: config.prefetch.max(1),
            pulled: tokio::sync::Mutex::new(None),
        })
    }
}

impl NatsQueue {
    /// One message, asked for when wanted.
    async fn fetch_one(&self) -> QueueResult<async_nats::jetstream::Message> {
        loop {
            // `batch` waits at the server (up to `expires`) for a message; `fetch` would
            // return at once when the queue is empty and turn this loop into a busy poll.
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(10))
                .messages()
                .await
                .map_err(|e| QueueError(format!("fetch: {e}")))?;
            if let Some(message) = batch.next().await {
                return message.map_err(|e| QueueError(format!("fetch: {e}")));
            }
        }
    }

    /// The next message of a pull stream that keeps up to `prefetch` asked for.
    async fn pull_ahead(&self) -> QueueResult<async_nats::jetstream::Message> {
        let mut pulled = self.pulled.lock().await;
        loop {
            let stream = match &mut *pulled {
                Some(stream) => stream,
                None => pulled.insert(
                    self.consumer
                        .stream()
                        .max_messages_per_batch(self.prefetch)
                        .expires(Duration::from_secs(30))
                        .heartbeat(Duration::from_secs(5))
                        .messages()
                        .await
                        .map_err(|e| QueueError(format!("pull: {e}")))?,
                ),
            };
            match stream.next().await {
                Some(Ok(message)) => return Ok(message),
                Some(Err(e)) => {
                    *pulled = None;
                    return Err(QueueError(format!("pull: {e}")));
                }
                None => *pulled = None,
            }
        }
    }
}

/// Create (or bind to) work-queue stream `name` capturing `subjects`.
pub(crate) async fn work_queue_stream(
    js: &Context,
    name: &str,
    subjects: Vec<String>,
    duplicate_window: Duration,
) -> QueueResult<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: name.to_string(),
        subjects,
        retention: RetentionPolicy::WorkQueue,
        duplicate_window,
        num_replicas: crate::replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| QueueError(format!("stream {name}: {e}")))
}

/// Publish to a queue's stream, with `id` for its duplicate window; waits for the stream to
/// have it.
pub(crate) async fn publish(
    js: &Context,
    subject: &str,
    id: &str,
    payload: Vec<u8>,
) -> QueueResult<()> {
    let ack = js
        .send_publish(
            subject.to_string(),
            PublishMessage::build()
                .message_id(id)
                .payload(payload.into()),
        )
        .await
        .map_err(|e| QueueError(format!("publish to {subject}: {e}")))?;
    ack.await
        .map_err(|e| QueueError(format!("publish to {subject}: {e}")))?;
    Ok(())
}

/// How long ago message `sequence` of `stream` was stored (zero if it cannot be read).
pub(crate) async fn age_of(
    stream: &async_nats::jetstream::stream::Stream,
    sequence: u64,
) -> Duration {
    let Ok(m) = stream.get_raw_message(sequence).await else {
        return Duration::ZERO;
    };
    let sent = m.time.unix_timestamp_nanos();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    Duration::from_nanos((now - sent).max(0) as u64)
}

/// A delivered message as the engine takes it.
pub(crate) fn delivery_of(message: async_nats::jetstream::Message) -> Delivery {
    let delivered = message.info().map(|i| i.delivered as u64).unwrap_or(1);
    let subject = message.subject.to_string();
    let (message, acker) = message.split();
    // A CloudEvent in binary mode becomes the structured event the trigger path reads.
    let binary = message.headers.as_ref().and_then(|h| {
        sluice_engine::service::trigger::structured_from_binary(
            h.iter()
                .flat_map(|(name, values)| values.iter().map(move |v| (name.as_ref(), v.as_str()))),
            &message.payload,
        )
    });
    Delivery {
        subject,
        payload: binary.unwrap_or_else(|| message.payload.to_vec()),
        delivered,
        handle: std::sync::Arc::new(Handle(acker)),
    }
}

struct Handle(Acker);

impl Settle for Handle {
    fn ack(&self) -> BoxFuture<'_, QueueResult<()>> {
        // Double ack: wait for the server to confirm, so an acknowledged message is gone.
        async move { self.0.double_ack().await.map_err(err("ack")) }.boxed()
    }
    fn nak(&self, delay: Duration) -> BoxFuture<'_, QueueResult<()>> {
        async move {
            self.0
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(err("nak"))
        }
        .boxed()
    }
    fn progress(&self) -> BoxFuture<'_, QueueResult<()>> {
        async move {
            self.0
                .ack_with(AckKind::Progress)
                .await
                .map_err(err("progress"))
        }
        .boxed()
    }
}

impl WorkQueue for NatsQueue {
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, QueueResult<()>> {
        publish(&self.js, subject, id, payload).boxed()
    }

    fn next(&self) -> BoxFuture<'_, QueueResult<Delivery>> {
        async move {
            let message = match self.prefetch {
                1 => self.fetch_one().await?,
                _ => self.pull_ahead().await?,
            };
            Ok(delivery_of(message))
        }
        .boxed()
    }

    fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    fn depth(&self) -> BoxFuture<'_, QueueResult<Depth>> {
        async move {
            // What the shared consumer has not delivered yet: the messages after its delivered
            // position. The first of them is the oldest waiting (a job held back by a timer
            // has been delivered and put back, so it does not count as waiting for a worker).
            let mut consumer = self.consumer.clone();
            let info = consumer
                .info()
                .await
                .map_err(|e| QueueError(format!("consumer info: {e}")))?;
            let (waiting, next) = (info.num_pending, info.delivered.stream_sequence + 1);
            let oldest = match waiting {
                0 => Duration::ZERO,
                _ => age_of(&self.stream, next).await,
            };
            Ok(Depth { waiting, oldest })
        }
        .boxed()
    }
}
