//! The embedded queue: an in-process channel. Messages do not survive the process; the
//! embedded service rebuilds its jobs from the execution records when it starts.
use super::{Delivery, Depth, QueueResult, Settle, WorkQueue};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Message = (String, String, Vec<u8>, u64);

/// The sending side, which also notes when each waiting message was sent (the channel is
/// first in, first out, so the front is the oldest).
struct Inbox {
    tx: mpsc::UnboundedSender<Message>,
    sent: Mutex<VecDeque<Instant>>,
}

impl Inbox {
    fn send(&self, m: Message) {
        let mut sent = self.sent.lock().unwrap();
        if self.tx.send(m).is_ok() {
            sent.push_back(Instant::now());
        }
    }
}

/// An in-process queue.
pub struct MemoryQueue {
    tx: Arc<Inbox>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    /// Ids pushed recently, for deduplication.
    seen: Mutex<HashMap<String, Instant>>,
    window: Duration,
}

impl MemoryQueue {
    /// A queue that drops re-pushes of an id within `window`.
    pub fn new(window: Duration) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(MemoryQueue {
            tx: Arc::new(Inbox {
                tx,
                sent: Mutex::new(VecDeque::new()),
            }),
            rx: tokio::sync::Mutex::new(rx),
            seen: Mutex::new(HashMap::new()),
            window,
        })
    }
}

struct Handle {
    tx: Arc<Inbox>,
    message: Mutex<Option<Message>>,
}

impl Settle for Handle {
    fn ack(&self) -> BoxFuture<'_, QueueResult<()>> {
        self.message.lock().unwrap().take();
        async { Ok(()) }.boxed()
    }
    fn nak(&self, delay: Duration) -> BoxFuture<'_, QueueResult<()>> {
        if let Some(mut m) = self.message.lock().unwrap().take() {
            let tx = self.tx.clone();
            m.3 += 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                tx.send(m);
            });
        }
        async { Ok(()) }.boxed()
    }
    fn progress(&self) -> BoxFuture<'_, QueueResult<()>> {
        async { Ok(()) }.boxed()
    }
}

impl Drop for Handle {
    // Unsettled: deliver again, as a broker would after the deadline.
    fn drop(&mut self) {
        if let Some(mut m) = self.message.lock().unwrap().take() {
            m.3 += 1;
            self.tx.send(m);
        }
    }
}

impl WorkQueue for MemoryQueue {
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, QueueResult<()>> {
        {
            let mut seen = self.seen.lock().unwrap();
            let now = Instant::now();
            seen.retain(|_, at| now.duration_since(*at) < self.window);
            if seen.insert(id.to_string(), now).is_none() {
                self.tx
                    .send((subject.to_string(), id.to_string(), payload, 1));
            }
        }
        async { Ok(()) }.boxed()
    }

    fn next(&self) -> BoxFuture<'_, QueueResult<Delivery>> {
        async move {
            let message = self
                .rx
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| super::QueueError("queue closed".into()))?;
            self.tx.sent.lock().unwrap().pop_front();
            let (subject, payload, delivered) = (message.0.clone(), message.2.clone(), message.3);
            Ok(Delivery {
                subject,
                payload,
                delivered,
                handle: Box::new(Handle {
                    tx: self.tx.clone(),
                    message: Mutex::new(Some(message)),
                }),
            })
        }
        .boxed()
    }

    fn ack_wait(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn depth(&self) -> BoxFuture<'_, QueueResult<Depth>> {
        let sent = self.tx.sent.lock().unwrap();
        let depth = Depth {
            waiting: sent.len() as u64,
            oldest: sent.front().map(Instant::elapsed).unwrap_or_default(),
        };
        async move { Ok(depth) }.boxed()
    }
}
