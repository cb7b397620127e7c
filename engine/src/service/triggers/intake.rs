//! Taking trigger events off the queue: different pipelines' events side by side, each
//! pipeline's in the order they came.
//!
//! Handling a trigger waits for the store (its claim, often its record) more than it computes.
//! Handled one at a time, every event waited for the whole of the one before it, whatever its
//! pipeline or tenant: under one tenant's flood, another tenant's event waited 0.1–3.5 ms
//! (measured) of its 5–8 ms start behind the flood's event in hand. Now events of different
//! subjects (pipelines) are handled at once, while each subject's wait in its line here and are
//! handled in turn, as before. The events in hand are bounded, in number and in bytes; the bound
//! must exceed what one tenant has in flight, or another tenant's event waits behind the flood's
//! events in the queue instead (on NATS, with 64 in hand, B's start took 250 ms beside 256 of A's
//! starts in flight; with 1,024, 23–39 ms).
//!
//! An event waiting in its line (or for the bytes in hand) is still this engine's: every third
//! of the queue's ack deadline its delivery reports progress, so a long wait does not make the
//! queue hand it to another engine meanwhile (which would handle it twice, and whose delivery
//! this engine's later acknowledgement would settle while the other engine still works on it).
use crate::queue::{Delivery, WorkQueue};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Events in hand at most, and their bytes at most (in KiB; an event under 1 KiB counts none).
const IN_HAND: usize = 1024;
const IN_HAND_KIB: usize = 64 << 10;

/// An event's share of the bounds, given back when it has been handled.
struct Held {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The events in hand waiting for their subject's turn (a subject present: one of its events
/// is being handled).
type Lines = Arc<Mutex<HashMap<String, VecDeque<(Delivery, Held)>>>>;

/// Handle every event of `queue` with `handle`, for ever; a failing queue (NATS reconnecting)
/// is retried. Two events of one subject are never handled at once, and are handled in the
/// order the queue delivered them. `in_line` counts the events waiting here for their turn (the
/// queue's depth no longer does: the metrics add them).
pub(in crate::service) async fn intake<F>(
    queue: &dyn WorkQueue,
    handle: impl Fn(Delivery) -> F + Clone + Send + 'static,
    in_line: Arc<AtomicUsize>,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let in_hand = Arc::new(tokio::sync::Semaphore::new(IN_HAND));
    let in_hand_kib = Arc::new(tokio::sync::Semaphore::new(IN_HAND_KIB));
    let lines: Lines = Arc::default();
    // The embedded queue has no deadline to keep (nothing else takes its messages).
    let every = (!queue.local()).then(|| (queue.ack_wait() / 3).max(Duration::from_millis(100)));
    let _keeping = every.map(|every| KeepOnDrop(tokio::spawn(keep_in_hand(lines.clone(), every))));
    loop {
        let Ok(count) = in_hand.clone().acquire_owned().await else {
            return;
        };
        let delivery = match queue.next().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("trigger queue: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let kib = (delivery.payload.len() >> 10).min(IN_HAND_KIB) as u32;
        let bytes = match kib {
            0 => None,
            kib => keeping(
                &delivery,
                every,
                in_hand_kib.clone().acquire_many_owned(kib),
            )
            .await
            .ok(),
        };
        let permit = Held {
            _count: count,
            _bytes: bytes,
        };
        let subject = delivery.subject.clone();
        {
            let mut lines = lines.lock().unwrap();
            if let Some(line) = lines.get_mut(&subject) {
                line.push_back((delivery, permit));
                in_line.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            lines.insert(subject.clone(), VecDeque::new());
        }
        let (handle, lines, in_line) = (handle.clone(), lines.clone(), in_line.clone());
        tokio::spawn(async move {
            let mut next = Some((delivery, permit));
            while let Some((delivery, permit)) = next {
                // A panic is this event's (delivered again later), not its line's.
                let handled = std::panic::AssertUnwindSafe(handle(delivery));
                if futures_util::FutureExt::catch_unwind(handled)
                    .await
                    .is_err()
                {
                    tracing::error!("handling an event of {subject} panicked");
                }
                drop(permit);
                let mut lines = lines.lock().unwrap();
                next = lines.get_mut(&subject).and_then(VecDeque::pop_front);
                if next.is_none() {
                    lines.remove(&subject);
                } else {
                    in_line.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Aborts the task when the intake ends.
struct KeepOnDrop(tokio::task::JoinHandle<()>);

impl Drop for KeepOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Await `wait` while reporting progress on `delivery` every `every` (if any): an event
/// waiting for the byte budget is this engine's as much as one waiting in a line.
async fn keeping<T>(
    delivery: &Delivery,
    every: Option<Duration>,
    wait: impl Future<Output = T>,
) -> T {
    let Some(every) = every else {
        return wait.await;
    };
    tokio::pin!(wait);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            done = &mut wait => return done,
            _ = ticks.tick() => {
                if let Err(e) = delivery.handle.progress().await {
                    tracing::warn!("progress report failed: {e}");
                }
            }
        }
    }
}

/// Every `every`, report progress on each delivery waiting in a line.
async fn keep_in_hand(lines: Lines, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let waiting: Vec<Arc<dyn crate::queue::Settle>> = lines
            .lock()
            .unwrap()
            .values()
            .flatten()
            .map(|(delivery, _)| delivery.handle.clone())
            .collect();
        futures_util::future::join_all(waiting.iter().map(|h| h.progress())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::MemoryQueue;
    use std::time::Instant;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subject_holds_up_only_its_own_events_which_keep_their_order() {
        let queue = MemoryQueue::new(Duration::from_secs(60));
        for i in 0..5 {
            queue.push("t.a", &format!("a{i}"), vec![i]).await.unwrap();
        }
        queue.push("t.b", "b0", vec![0]).await.unwrap();
        // (subject, payload, started, ended) of each event handled.
        type Handled = (String, u8, Instant, Instant);
        let log: Arc<Mutex<Vec<Handled>>> = Arc::default();
        let handle = {
            let log = log.clone();
            move |d: Delivery| {
                let log = log.clone();
                async move {
                    let started = Instant::now();
                    if d.subject == "t.a" {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = d.ack().await;
                    log.lock().unwrap().push((
                        d.subject.clone(),
                        d.payload[0],
                        started,
                        Instant::now(),
                    ));
                }
            }
        };
        let q = queue.clone();
        let in_line = Arc::new(AtomicUsize::new(0));
        let counted = in_line.clone();
        let consumer = tokio::spawn(async move { intake(&*q, handle, counted).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 6 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        consumer.abort();
        assert_eq!(
            in_line.load(Ordering::Relaxed),
            0,
            "nothing is left in line"
        );
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 6, "every event handled: {log:?}");
        let a: Vec<_> = log.iter().filter(|e| e.0 == "t.a").collect();
        let b = log.iter().find(|e| e.0 == "t.b").unwrap();
        // B did not wait for A's line: it ended before A's first event did.
        assert!(b.3 < a[0].3, "B waited behind A's events: {log:?}");
        // A's in order, one at a time.
        assert_eq!(
            a.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        for pair in a.windows(2) {
            assert!(pair[1].2 >= pair[0].3, "two of A's events at once: {log:?}");
        }
    }

    /// A shared queue's events (deadline 300 ms) whose deliveries count the progress reported.
    struct Shared {
        inner: Arc<MemoryQueue>,
        progress: Arc<Mutex<Vec<u8>>>,
    }

    struct Counting {
        inner: Arc<dyn crate::queue::Settle>,
        payload: u8,
        progress: Arc<Mutex<Vec<u8>>>,
    }

    impl crate::queue::Settle for Counting {
        fn ack(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
            self.inner.ack()
        }
        fn nak(
            &self,
            delay: Duration,
        ) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
            self.inner.nak(delay)
        }
        fn progress(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
            self.progress.lock().unwrap().push(self.payload);
            self.inner.progress()
        }
    }

    impl WorkQueue for Shared {
        fn push<'a>(
            &'a self,
            subject: &'a str,
            id: &'a str,
            payload: Vec<u8>,
        ) -> futures_util::future::BoxFuture<'a, crate::queue::QueueResult<()>> {
            self.inner.push(subject, id, payload)
        }
        fn next(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<Delivery>> {
            Box::pin(async move {
                let mut d = self.inner.next().await?;
                d.handle = Arc::new(Counting {
                    inner: d.handle.clone(),
                    payload: d.payload[0],
                    progress: self.progress.clone(),
                });
                Ok(d)
            })
        }
        fn ack_wait(&self) -> Duration {
            Duration::from_millis(300)
        }
        fn depth(
            &self,
        ) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<crate::queue::Depth>>
        {
            self.inner.depth()
        }
    }

    /// Run the intake over `queue`, each event taking 400 ms (longer than its deadline),
    /// until `n` are handled (or 10 s); the intake, still running, is returned.
    async fn handle_slowly(queue: &Arc<Shared>, n: usize) -> tokio::task::JoinHandle<()> {
        let handled = Arc::new(AtomicUsize::new(0));
        let handle = {
            let handled = handled.clone();
            move |d: Delivery| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let _ = d.ack().await;
                    handled.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let q = queue.clone();
        let consumer =
            tokio::spawn(async move { intake(&*q, handle, Arc::new(AtomicUsize::new(0))).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while handled.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handled.load(Ordering::Relaxed), n, "every event handled");
        consumer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_waiting_in_line_keep_their_deliveries() {
        let progress: Arc<Mutex<Vec<u8>>> = Arc::default();
        let queue = Arc::new(Shared {
            inner: MemoryQueue::new(Duration::from_secs(60)),
            progress: progress.clone(),
        });
        for i in 0..3 {
            queue.push("t.a", &format!("a{i}"), vec![i]).await.unwrap();
        }
        let consumer = handle_slowly(&queue, 3).await;
        let seen = progress.lock().unwrap().clone();
        // The second event waited 400 ms in line, the third 800 ms: a report every 100 ms.
        let of = |i: u8| seen.iter().filter(|p| **p == i).count();
        assert!(of(1) >= 2 && of(2) >= 5, "progress reported: {seen:?}");
        assert_eq!(
            of(0),
            0,
            "the event in hand is its handler's to keep: {seen:?}"
        );
        // Nothing waits now: nothing more is reported.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(progress.lock().unwrap().len(), seen.len());
        consumer.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_waiting_for_the_byte_budget_keeps_its_delivery() {
        let progress: Arc<Mutex<Vec<u8>>> = Arc::default();
        let queue = Arc::new(Shared {
            inner: MemoryQueue::new(Duration::from_secs(60)),
            progress: progress.clone(),
        });
        // Two events of two subjects, together over the bytes in hand: the second waits until
        // the first is handled.
        let big = IN_HAND_KIB / 2 + 1;
        for i in 0..2u8 {
            let payload = vec![i; big << 10];
            queue
                .push(&format!("t.{i}"), &format!("e{i}"), payload)
                .await
                .unwrap();
        }
        handle_slowly(&queue, 2).await.abort();
        let seen = progress.lock().unwrap().clone();
        let of = |i: u8| seen.iter().filter(|p| **p == i).count();
        // The second waited about 400 ms for the first's bytes: a report every 100 ms.
        assert!(of(1) >= 2, "progress reported: {seen:?}");
        assert_eq!(of(0), 0, "the event in hand is its handler's: {seen:?}");
    }
}
