//! Backstops: a change made by an API call, carried on by another engine when the engine that
//! recorded it died before queueing what follows.
use super::tests::{engine_in, poll_until, register, remote, shared_edges};
use super::*;
use crate::bus::MemoryBus;
use crate::queue::{Depth, QueueResult};
use futures_util::future::BoxFuture;
use sluice_api::verbs::Approve;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// The embedded queue seen as a shared one (as NATS is): engines may die apart from it. With
/// `late`, every backstop is queued as if made that long ago (a queue stalled meanwhile).
struct SharedQueue(Arc<dyn WorkQueue>, Option<Duration>);

impl WorkQueue for SharedQueue {
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        mut payload: Vec<u8>,
    ) -> BoxFuture<'a, QueueResult<()>> {
        if let Some(late) = self.1
            && let Ok(mut job) = serde_json::from_slice::<JobMessage>(&payload)
            && job.backstop.is_some()
        {
            job.not_before -= late.as_millis() as u64;
            payload = serde_json::to_vec(&job).unwrap();
        }
        self.0.push(subject, id, payload)
    }
    fn next(&self) -> BoxFuture<'_, QueueResult<Delivery>> {
        self.0.next()
    }
    fn ack_wait(&self) -> Duration {
        self.0.ack_wait()
    }
    fn depth(&self) -> BoxFuture<'_, QueueResult<Depth>> {
        self.0.depth()
    }
}

/// An execution store through which, once armed, one write of a record is stored and never
/// answered: the engine that made it is dead from then on.
struct DiesAfterWrite {
    inner: Arc<dyn Kv>,
    armed: Arc<AtomicBool>,
    written: Arc<AtomicBool>,
}

impl Kv for DiesAfterWrite {
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, crate::kv::KvResult<u64>> {
        Box::pin(async move {
            if self.armed.swap(false, SeqCst) {
                self.inner.update(key, value.clone(), revision).await?;
                self.written.store(true, SeqCst);
                std::future::pending::<()>().await;
            }
            self.inner.update(key, value, revision).await
        })
    }
    super::tests::passthrough!(get, create, delete, delete_if, keys);
}

const GATED: &str = "name: gated\nstages:\n  - name: Approve\n    actions:\n      - { name: Gate, uses: approval@1, with: { approvers: ana } }\n  - name: Deploy\n    actions:\n      - { name: Ship, uses: noop@1 }\n";

/// Engine B, which only runs queued jobs, and engine A, which dies after its first write once
/// armed; both on one shared queue, [`GATED`] registered.
struct Two {
    _dir: tempfile::TempDir,
    a: Arc<Service>,
    b: Arc<Service>,
    armed: Arc<AtomicBool>,
    written: Arc<AtomicBool>,
}

async fn two_engines() -> Two {
    two_engines_with_backstops_late(None).await
}

async fn two_engines_with_backstops_late(late: Option<Duration>) -> Two {
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    shared.jobs = Arc::new(SharedQueue(shared.jobs.clone(), late));
    let b = engine_in(dir.path(), "b", &shared);
    register(&b, dir.path(), "gated.yaml", GATED).await;
    tokio::spawn({
        let b = b.clone();
        async move { b.consume_jobs().await }
    });
    let (armed, written) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let a = {
        let bus = Arc::new(MemoryBus::default());
        let edges = Edges {
            pipelines: shared.pipelines.clone(),
            executions: Arc::new(DiesAfterWrite {
                inner: shared.executions.clone(),
                armed: armed.clone(),
                written: written.clone(),
            }),
            functions: shared.functions.clone(),
            waits: shared.waits.clone(),
            audit: shared.audit.clone(),
            triggers: shared.triggers.clone(),
            jobs: shared.jobs.clone(),
            bus: bus.clone(),
            cluster: Arc::new(super::Alone),
            archive_log: None,
            secrets: None,
        };
        let engine = Engine::for_service(&dir.path().join("a"), bus, None).unwrap();
        Service::new(engine, edges)
    };
    Two {
        _dir: dir,
        a,
        b,
        armed,
        written,
    }
}

/// An approval is recorded by engine A, which dies before it queues the job that takes the
/// decision in: engine B, which only runs queued jobs, carries the execution to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_engine_died_after_recording_it_goes_on_elsewhere() {
    let (b, id, _dir) = approved_by_an_engine_that_died(None).await;
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = b.execution("default", &id).await.unwrap().unwrap();
            if e.status.is_terminal() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the execution ends without engine A");
    assert_eq!(done.status, Status::Succeeded, "{done:#?}");
    assert_eq!(done.stages[1].actions[0].status, Status::Succeeded);
}

/// A backstop delivered past the queue's deduplication window (an hour) could queue a second
/// copy of a job its engine did queue: it queues nothing and leaves the execution to recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backstop_delivered_an_hour_late_queues_nothing() {
    let (b, id, _dir) = approved_by_an_engine_that_died(Some(Duration::from_secs(2 * 3600))).await;
    // The backstop is due at once; give it time to be handled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = b.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(
        (
            e.stages[0].actions[0].status,
            &e.stages[1].actions[0].status
        ),
        (Status::InProgress, &Status::NotStarted),
        "nothing was queued: {e:#?}"
    );
}

/// Engine A records an approval of an execution engine B runs and dies before queueing the
/// job that takes the decision in; B and the execution's id are returned.
async fn approved_by_an_engine_that_died(
    late: Option<Duration>,
) -> (Arc<Service>, String, tempfile::TempDir) {
    let Two {
        _dir,
        a,
        b,
        armed,
        written,
    } = two_engines_with_backstops_late(late).await;
    let (id, _) = b
        .start("default", "gated", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    poll_until(&b, &id, |e| e.stages[0].actions[0].waiting.is_some())
        .await
        .expect("the approval waits");
    armed.store(true, SeqCst);
    let approving = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move {
            a.call(
                &remote(),
                Approve {
                    execution_id: id,
                    action: "Approve/Gate".into(),
                    approved: true,
                    by: "ana".into(),
                    summary: None,
                    token: None,
                },
            )
            .await
        }
    });
    let recorded = poll_until(&b, &id, |e| !e.stages[0].actions[0].decisions.is_empty())
        .await
        .expect("the approval is recorded");
    assert!(written.load(SeqCst));
    approving.abort(); // A is dead: nothing after its write happens there
    assert_eq!(
        (
            recorded.stages[0].actions[0].status,
            &recorded.stages[1].actions[0].status
        ),
        (Status::InProgress, &Status::NotStarted),
        "the decision is taken in by a job queued after the write: {recorded:#?}"
    );
    (b, id, _dir)
}

/// A stop is recorded by engine A, which dies before it tells the stage's lane that the
/// execution left: the backstop does, and the execution waiting to enter is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_engine_died_after_recording_it_frees_the_lane_elsewhere() {
    let Two {
        _dir,
        a,
        b,
        armed,
        written,
    } = two_engines().await;
    let start = |event: &'static str| {
        let b = b.clone();
        async move {
            b.start("default", "gated", event.as_bytes(), false, false)
                .await
                .unwrap()
                .unwrap()
                .0
        }
    };
    let first = start(r#"{"id":"e-1"}"#).await;
    poll_until(&b, &first, |e| e.stages[0].actions[0].waiting.is_some())
        .await
        .expect("the first execution waits at the approval");
    let second = start(r#"{"id":"e-2"}"#).await;
    poll_until(&b, &second, |e| e.entering == Some(0))
        .await
        .expect("the second waits to enter the stage the first holds");
    armed.store(true, SeqCst);
    let stopping = tokio::spawn({
        let (a, id) = (a.clone(), first.clone());
        async move {
            a.call(
                &remote(),
                sluice_api::verbs::Stop {
                    execution_id: id,
                    abandon: true,
                    reason: None,
                },
            )
            .await
        }
    });
    let stopped = poll_until(&b, &first, |e| e.status.is_terminal())
        .await
        .expect("the stop is recorded");
    assert!(written.load(SeqCst));
    stopping.abort(); // A is dead: the lane never hears of the stop from it
    assert_eq!(stopped.status, Status::Stopped, "{stopped:#?}");
    let let_in = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = b.execution("default", &second).await.unwrap().unwrap();
            if e.stages[0].actions[0].waiting.is_some() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the second execution enters the stage without engine A");
    assert_eq!(let_in.entering, None);
}
