//! The embedded queue: an in-process channel. Messages do not survive the process; the
//! embedded service rebuilds its jobs from the execution records when it starts.
use super::{Delivery, Depth, QueueResult, Settle, WorkQueue};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Message = (String, String, Vec<u8>, u64);

/// Messages waiting, one line per subject, taken in turns: the job subjects are per tenant
/// (`sluice.<tenant>.jobs`) and the trigger subjects per pipeline, so a tenant with thousands
/// of jobs queued does not hold up another's (each subject's own messages stay in order).
#[derive(Default)]
struct Waiting {
    lines: HashMap<String, VecDeque<(Message, Instant)>>,
    /// Subjects with messages, in the order their turn comes.
    turns: VecDeque<String>,
    count: usize,
}

/// The sending side: the waiting lines, and one permit per waiting message for the consumers
/// (a count, so no wake-up is ever lost between consumers).
struct Inbox {
    waiting: Mutex<Waiting>,
    ready: tokio::sync::Semaphore,
}

impl Inbox {
    fn send(&self, m: Message) {
        {
            let mut w = self.waiting.lock().unwrap();
            let line = w.lines.entry(m.0.clone()).or_default();
            let first = line.is_empty();
            line.push_back((m.clone(), Instant::now()));
            if first {
                w.turns.push_back(m.0);
            }
            w.count += 1;
        }
        self.ready.add_permits(1);
    }

    /// The next message: the front of the subject whose turn it is.
    fn take(&self) -> Option<Message> {
        let mut w = self.waiting.lock().unwrap();
        let subject = w.turns.pop_front()?;
        let line = w.lines.get_mut(&subject)?;
        let (m, _) = line.pop_front()?;
        if line.is_empty() {
            w.lines.remove(&subject);
        } else {
            w.turns.push_back(subject);
        }
        w.count -= 1;
        Some(m)
    }
}

/// An in-process queue.
pub struct MemoryQueue {
    tx: Arc<Inbox>,
    /// Ids pushed recently, for deduplication.
    seen: Mutex<HashMap<String, Instant>>,
    window: Duration,
}

impl MemoryQueue {
    /// A queue that drops re-pushes of an id within `window`.
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(MemoryQueue {
            tx: Arc::new(Inbox {
                waiting: Mutex::new(Waiting::default()),
                ready: tokio::sync::Semaphore::new(0),
            }),
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
    fn local(&self) -> bool {
        true
    }

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
            let message = loop {
                // A permit per message: holding one, there is a message to take.
                self.tx
                    .ready
                    .acquire()
                    .await
                    .map_err(|_| super::QueueError("queue closed".into()))?
                    .forget();
                if let Some(m) = self.tx.take() {
                    break m;
                }
            };
            let (subject, payload, delivered) = (message.0.clone(), message.2.clone(), message.3);
            Ok(Delivery {
                subject,
                payload,
                delivered,
                handle: Arc::new(Handle {
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
        let w = self.tx.waiting.lock().unwrap();
        let depth = Depth {
            waiting: w.count as u64,
            oldest: w
                .lines
                .values()
                .filter_map(|line| line.front())
                .map(|(_, at)| at.elapsed())
                .max()
                .unwrap_or_default(),
        };
        async move { Ok(depth) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subjects take turns: a flood on one does not hold up another, and each keeps its order.
    #[tokio::test]
    async fn subjects_take_turns_and_keep_their_own_order() {
        let q = MemoryQueue::new(Duration::from_secs(60));
        for i in 0..1000 {
            q.push(
                "sluice.a.jobs",
                &format!("a{i}"),
                format!("a{i}").into_bytes(),
            )
            .await
            .unwrap();
        }
        for i in 0..3 {
            q.push(
                "sluice.b.jobs",
                &format!("b{i}"),
                format!("b{i}").into_bytes(),
            )
            .await
            .unwrap();
        }
        let depth = q.depth().await.unwrap();
        assert_eq!(depth.waiting, 1003);
        let mut got = Vec::new();
        for _ in 0..8 {
            let d = q.next().await.unwrap();
            got.push(String::from_utf8(d.payload.clone()).unwrap());
            d.ack().await.unwrap();
        }
        // B's three came within the first six, not after A's thousand.
        assert_eq!(got, ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"]);
        assert_eq!(q.depth().await.unwrap().waiting, 995);
    }

    /// Many consumers waiting at once: every message pushed in a burst is taken (none waits
    /// for a later push to wake someone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_reaches_every_waiting_consumer() {
        let q = MemoryQueue::new(Duration::from_secs(60));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..8 {
            let (q, done) = (q.clone(), done_tx.clone());
            tokio::spawn(async move {
                loop {
                    let d = q.next().await.unwrap();
                    d.ack().await.unwrap();
                    let _ = done.send(());
                }
            });
        }
        for round in 0..50 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            for i in 0..8 {
                q.push("s", &format!("{round}-{i}"), vec![]).await.unwrap();
            }
            for _ in 0..8 {
                tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
                    .await
                    .expect("a message was left waiting")
                    .unwrap();
            }
        }
    }

    /// A consumer waiting on an empty queue is woken by the next push.
    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let q = MemoryQueue::new(Duration::from_secs(60));
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await.unwrap().payload })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push("s", "1", b"x".to_vec()).await.unwrap();
        let payload = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(payload, b"x");
    }
}
