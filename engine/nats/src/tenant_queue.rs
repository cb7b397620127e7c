//! The trigger queue on NATS, one durable consumer per tenant, taken in turns.
//!
//! One shared consumer delivers a work-queue stream in arrival order: a tenant that published
//! thousands of trigger events put every other tenant's next event behind all of them (measured:
//! another tenant's start waited 4.3 s behind 10,000 events published at once). Here each
//! tenant's events have a consumer of their own (filter `sluice.<tenant>.trigger.>`, which a
//! work-queue stream allows as no two overlap), every engine pulls each tenant's a few at a time,
//! and [`WorkQueue::next`] hands them out one tenant after another: a flood waits behind itself.
//!
//! An engine learns of a tenant when it pushes one of its events (an API `start`, a webhook) and,
//! every second, from the subjects the stream holds messages on (events published straight to
//! NATS, and tenants other engines pull for): a tenant's first event published straight to NATS
//! may wait that second. A tenant's pulling stops after [`IDLE`] without an event, and its
//! consumer is removed by the server after [`FORGOTTEN`] without anyone pulling; both come back
//! with the tenant's next event.
use crate::queue::{age_of, delivery_of, publish, work_queue_stream};
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sluice_engine::queue::{Delivery, Depth, QueueError, QueueResult, Settle, WorkQueue};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A tenant's events held by this engine at once, at most: pulled and waiting for their turn
/// here, or handed out and not yet settled (so one tenant's events never fill the intake's
/// hand, and another's is taken as soon as it arrives). The pull asks the server for up to this
/// many at a time as well.
const AHEAD: usize = 64;
/// How often the stream's subjects are read for tenants with events.
const SCAN: Duration = Duration::from_secs(1);
/// Subjects read per scan, at most.
const SCAN_SUBJECTS: usize = 10_000;
/// Tenants an engine pulls for at once, at most (each one pull request kept at the server);
/// past it, the one whose last event is oldest and that holds none stops, for the newcomer.
pub const MAX_TENANTS: usize = 4096;
/// A tenant's pulling stops after this long without an event (until then each tenant costs an
/// engine one pull request renewed every 30 s, and a heartbeat every 5 s).
const IDLE: Duration = Duration::from_secs(24 * 3600);
/// A consumer nobody pulled from for this long is removed by the server.
const FORGOTTEN: Duration = Duration::from_secs(3600);
/// The shared consumer of earlier versions, which a per-tenant one cannot sit beside.
const SHARED: &str = "sluice-engines";

/// What the per-tenant queue needs to know.
pub struct TenantQueueConfig<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// The subjects' form before and after the tenant: `sluice.` and `.trigger.>`.
    pub prefix: &'a str,
    /// See [`TenantQueueConfig::prefix`].
    pub suffix: &'a str,
    /// Redelivery deadline without progress.
    pub ack_wait: Duration,
    /// How long a message id is remembered for deduplication.
    pub duplicate_window: Duration,
}

/// A work-queue stream read through one consumer per tenant, tenants in turns.
pub struct TenantQueue {
    inner: Arc<Inner>,
    /// Looks for tenants, and keeps the events waiting here.
    _scan: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    js: Context,
    stream: stream::Stream,
    prefix: String,
    suffix: String,
    ack_wait: Duration,
    ready: Mutex<Ready>,
    arrived: Notify,
    /// The tenants this engine pulls for, and their pulling tasks.
    pulling: Mutex<Pulling>,
}

/// The pulling tasks, by tenant.
#[derive(Default)]
struct Pulling {
    tasks: HashMap<String, Puller>,
    /// Numbers the tasks, so that one that ends removes itself and not its successor.
    made: u64,
    /// The queue was dropped: no more tasks.
    closed: bool,
}

struct Puller {
    id: u64,
    /// When its last event arrived (or it started).
    last: Arc<Mutex<std::time::Instant>>,
    _task: AbortOnDrop,
}

/// Events pulled and not yet handed out, per tenant, and whose turn is next.
#[derive(Default)]
struct Ready {
    turns: VecDeque<String>,
    held: HashMap<String, VecDeque<Delivery>>,
}

/// A delivery's settling, holding its tenant's room until the delivery is dropped.
struct Counted {
    settle: Arc<dyn Settle>,
    _room: OwnedSemaphorePermit,
}

impl Settle for Counted {
    fn ack(&self) -> BoxFuture<'_, QueueResult<()>> {
        self.settle.ack()
    }
    fn nak(&self, delay: Duration) -> BoxFuture<'_, QueueResult<()>> {
        self.settle.nak(delay)
    }
    fn progress(&self) -> BoxFuture<'_, QueueResult<()>> {
        self.settle.progress()
    }
}

impl TenantQueue {
    /// Create (or bind to) the stream, and start looking for tenants with events.
    pub async fn open(js: &Context, config: TenantQueueConfig<'_>) -> QueueResult<Self> {
        let subjects = vec![format!("{}*{}", config.prefix, config.suffix)];
        let stream =
            work_queue_stream(js, config.stream, subjects, config.duplicate_window).await?;
        // A work-queue stream takes filtered consumers only when none overlaps: the shared one
        // of earlier versions goes (what it had delivered and not settled comes back to the
        // tenants' consumers). Another engine starting at the same moment may remove it first.
        if stream.consumer_info(SHARED).await.is_ok()
            && let Err(e) = stream.delete_consumer(SHARED).await
            && stream.consumer_info(SHARED).await.is_ok()
        {
            return Err(QueueError(format!("consumer {SHARED}: {e}")));
        }
        let inner = Arc::new(Inner {
            js: js.clone(),
            stream,
            prefix: config.prefix.to_string(),
            suffix: config.suffix.to_string(),
            ack_wait: config.ack_wait,
            ready: Mutex::default(),
            arrived: Notify::new(),
            pulling: Mutex::default(),
        });
        inner.scan().await;
        let scanning = inner.clone();
        let keeping = inner.clone();
        let every = (inner.ack_wait / 3).max(Duration::from_millis(100));
        let scan = tokio::spawn(async move {
            let scan = async {
                loop {
                    tokio::time::sleep(SCAN).await;
                    scanning.scan().await;
                }
            };
            let keep = async {
                loop {
                    tokio::time::sleep(every).await;
                    keeping.keep_ready().await;
                }
            };
            tokio::join!(scan, keep);
        });
        Ok(TenantQueue {
            inner,
            _scan: AbortOnDrop(scan),
        })
    }

    /// The tenants this engine pulls for now.
    pub fn tenants(&self) -> Vec<String> {
        let pulling = self.inner.pulling.lock().unwrap();
        let mut t: Vec<String> = pulling.tasks.keys().cloned().collect();
        t.sort();
        t
    }
}

impl Drop for TenantQueue {
    /// The pulling tasks hold the queue's insides: stop them with it.
    fn drop(&mut self) {
        let mut pulling = self.inner.pulling.lock().unwrap();
        pulling.closed = true;
        pulling.tasks.clear();
    }
}

/// The consumer of `tenant`'s events (a name a consumer may have, whatever the tenant).
fn consumer_name(tenant: &str) -> String {
    format!("tenant-{}", &blake3::hash(tenant.as_bytes()).to_hex()[..24])
}

impl Inner {
    /// The tenant a subject of this queue is for.
    fn tenant_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?;
        let (tenant, _) = rest.split_once('.')?;
        (!tenant.is_empty() && !tenant.contains(['*', '>', ' '])).then_some(tenant)
    }

    /// Read the stream's subjects and pull for every tenant with events.
    async fn scan(self: &Arc<Self>) {
        let filter = format!("{}*{}", self.prefix, self.suffix);
        let Ok(subjects) = self.stream.info_with_subjects(&filter).await else {
            return;
        };
        let mut tenants: Vec<String> = subjects
            .take(SCAN_SUBJECTS)
            .filter_map(|s| async move { s.ok() })
            .filter_map(|(subject, _)| async move { self.tenant_of(&subject).map(str::to_string) })
            .collect()
            .await;
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            if let Err(e) = self.ensure(&tenant).await {
                tracing::warn!("trigger events of tenant {tenant}: {e}");
            }
        }
    }

    /// Pull for `tenant` (its consumer made, or brought up to date, if need be), unless this
    /// engine already does.
    async fn ensure(self: &Arc<Self>, tenant: &str) -> QueueResult<()> {
        if self.pulling.lock().unwrap().tasks.contains_key(tenant) {
            return Ok(());
        }
        let name = consumer_name(tenant);
        // Created, or updated (a changed `--ack-wait` applies to consumers made before).
        let consumer: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("trigger events of tenant {tenant}")),
                filter_subject: format!("{}{tenant}{}", self.prefix, self.suffix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                max_ack_pending: 10_000,
                inactive_threshold: FORGOTTEN,
                ..Default::default()
            })
            .await
            .map_err(|e| QueueError(format!("consumer {name}: {e}")))?;
        let mut pulling = self.pulling.lock().unwrap();
        if pulling.closed || pulling.tasks.contains_key(tenant) {
            return Ok(());
        }
        if pulling.tasks.len() >= MAX_TENANTS {
            // The quietest tenant holding nothing makes room (its next event brings it back).
            let ready = self.ready.lock().unwrap();
            let quietest = pulling
                .tasks
                .iter()
                .filter(|(t, _)| !ready.held.contains_key(*t))
                .min_by_key(|(_, p)| *p.last.lock().unwrap())
                .map(|(t, _)| t.clone());
            drop(ready);
            match quietest {
                Some(t) => drop(pulling.tasks.remove(&t)),
                None => {
                    return Err(QueueError(format!(
                        "this engine pulls for {MAX_TENANTS} tenants, each holding events; tenant {tenant}'s wait"
                    )));
                }
            }
        }
        pulling.made += 1;
        let (id, last) = (
            pulling.made,
            Arc::new(Mutex::new(std::time::Instant::now())),
        );
        let task = tokio::spawn(
            self.clone()
                .pull(tenant.to_string(), id, last.clone(), consumer),
        );
        pulling.tasks.insert(
            tenant.to_string(),
            Puller {
                id,
                last,
                _task: AbortOnDrop(task),
            },
        );
        Ok(())
    }

    /// Pull `tenant`'s events into [`Ready`], [`AHEAD`] at most held at once (see there);
    /// stop after [`IDLE`] without one, or when pulls keep failing (the consumer is gone; the
    /// next scan or push starts again). A pull that fails (NATS reconnecting) is made again.
    async fn pull(
        self: Arc<Self>,
        tenant: String,
        id: u64,
        last: Arc<Mutex<std::time::Instant>>,
        consumer: PullConsumer,
    ) {
        let room = Arc::new(Semaphore::new(AHEAD));
        // Failures in a row: past a few, the consumer is taken to be gone.
        let mut failures = 0;
        while failures < 10 {
            // One pull kept open, asked for again before it runs out. (Separate batch pulls,
            // each asking only for the room there was, left a start in a test waiting 30 s
            // for its event, one run in three: an event sent to a pull already given up,
            // most likely, comes back only after the ack deadline.)
            let messages = consumer
                .stream()
                .max_messages_per_batch(AHEAD)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("pulling trigger events of tenant {tenant}: {e}");
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100 * failures)).await;
                    continue;
                }
            };
            let failed = loop {
                // Room first: while a tenant has 64 in hand here, its next events stay in the
                // client's buffer (at most a batch or two), unread.
                let Ok(slot) = room.clone().acquire_owned().await else {
                    break false;
                };
                match tokio::time::timeout(IDLE, messages.next()).await {
                    Err(_) | Ok(None) => break false,
                    Ok(Some(Err(e))) => {
                        tracing::debug!("pulling trigger events of tenant {tenant}: {e}");
                        break true;
                    }
                    Ok(Some(Ok(message))) => {
                        failures = 0;
                        *last.lock().unwrap() = std::time::Instant::now();
                        self.arrive(&tenant, delivery_of(message), slot);
                    }
                }
            };
            if !failed {
                break;
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100 * failures)).await;
        }
        let mut pulling = self.pulling.lock().unwrap();
        if pulling.tasks.get(&tenant).is_some_and(|p| p.id == id) {
            // Its own entry: dropping it aborts this task, which ends here anyway.
            pulling.tasks.remove(&tenant);
        }
    }

    /// Report progress on the events pulled and waiting here for their tenant's turn, so that
    /// a long wait (the intake's hand full) does not have them delivered again elsewhere.
    async fn keep_ready(&self) {
        let handles: Vec<Arc<dyn Settle>> = {
            let ready = self.ready.lock().unwrap();
            ready
                .held
                .values()
                .flatten()
                .map(|d| d.handle.clone())
                .collect()
        };
        for handle in handles {
            let _ = handle.progress().await;
        }
    }

    fn arrive(&self, tenant: &str, delivery: Delivery, room: OwnedSemaphorePermit) {
        let delivery = Delivery {
            handle: Arc::new(Counted {
                settle: delivery.handle.clone(),
                _room: room,
            }),
            ..delivery
        };
        {
            let mut ready = self.ready.lock().unwrap();
            let held = ready.held.entry(tenant.to_string()).or_default();
            let first = held.is_empty();
            held.push_back(delivery);
            if first {
                ready.turns.push_back(tenant.to_string());
            }
        }
        self.arrived.notify_one();
    }

    /// The next event of the tenant whose turn it is.
    fn take(&self) -> Option<Delivery> {
        let mut ready = self.ready.lock().unwrap();
        let tenant = ready.turns.pop_front()?;
        let held = ready.held.get_mut(&tenant)?;
        let delivery = held.pop_front()?;
        if held.is_empty() {
            ready.held.remove(&tenant);
        } else {
            ready.turns.push_back(tenant);
        }
        Some(delivery)
    }
}

impl WorkQueue for TenantQueue {
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, QueueResult<()>> {
        async move {
            // Pulled for before it is out, so that it is taken as soon as it is stored (if that
            // fails, the next scan finds it).
            if let Some(tenant) = self.inner.tenant_of(subject)
                && let Err(e) = self.inner.ensure(tenant).await
            {
                tracing::warn!("trigger events of tenant {tenant}: {e}");
            }
            publish(&self.inner.js, subject, id, payload).await
        }
        .boxed()
    }

    fn next(&self) -> BoxFuture<'_, QueueResult<Delivery>> {
        async move {
            loop {
                // Asked for before looking, so that an arrival in between is not missed.
                let arrived = self.inner.arrived.notified();
                if let Some(delivery) = self.inner.take() {
                    return Ok(delivery);
                }
                arrived.await;
            }
        }
        .boxed()
    }

    fn ack_wait(&self) -> Duration {
        self.inner.ack_wait
    }

    fn depth(&self) -> BoxFuture<'_, QueueResult<Depth>> {
        async move {
            // Waiting: what the tenants' consumers have not delivered yet, and what this engine
            // pulled and has not handed out. Oldest: the stream's first message (one being
            // handled, or put back to wait, counts too).
            let consumers: Vec<_> = self
                .inner
                .stream
                .consumers()
                .try_collect()
                .await
                .map_err(|e| QueueError(format!("consumers: {e}")))?;
            let held: usize = (self.inner.ready.lock().unwrap().held.values())
                .map(VecDeque::len)
                .sum();
            let waiting = consumers.iter().map(|c| c.num_pending).sum::<u64>() + held as u64;
            let mut stream = self.inner.stream.clone();
            let state = stream
                .info()
                .await
                .map_err(|e| QueueError(format!("stream info: {e}")))?
                .state
                .clone();
            let oldest = match waiting {
                0 => Duration::ZERO,
                _ => age_of(&stream, state.first_sequence).await,
            };
            Ok(Depth { waiting, oldest })
        }
        .boxed()
    }
}
