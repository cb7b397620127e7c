//! Lanes decided on this engine's watched copy of them (`lane_copies`).
use super::tests::{engine, register, shared_edges};
use super::*;
use crate::bus::MemoryBus;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// An execution store that counts reads of lanes keys (and passes everything else through,
/// watches too).
struct CountLaneReads {
    inner: Arc<dyn Kv>,
    reads: Arc<AtomicUsize>,
}

impl Kv for CountLaneReads {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<Option<(Vec<u8>, u64)>>> {
        if key.contains("/lane/") {
            self.reads.fetch_add(1, SeqCst);
        }
        self.inner.get(key)
    }
    super::tests::passthrough!(create, update, delete, keys, watch);
}

const PARALLEL: &str = "name: par\nexecution_mode: parallel\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n  - name: Three\n    actions:\n      - { name: C, uses: noop@1 }\n";

/// Run one execution of `pipeline` to its end on `service` (started, its chain run here).
async fn run_one(service: &Arc<Service>, shared: &Edges, pipeline: &str, event: &str) -> Execution {
    let (id, _) = service
        .start(
            "default",
            pipeline,
            format!(r#"{{"id":"{event}"}}"#).as_bytes(),
            false,
            false,
        )
        .await
        .unwrap()
        .unwrap();
    let delivery = shared.jobs.next().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), service.handle_job(delivery))
        .await
        .expect("the chain ends");
    service.execution("default", &id).await.unwrap().unwrap()
}

/// In `parallel` mode, passing an enabled transition writes nothing to the lanes; it is decided
/// on the engine's copy of them while a watch keeps that copy current, so the stage entries and
/// exits of an execution read nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_entries_decide_on_a_watched_copy_of_the_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    let reads = Arc::new(AtomicUsize::new(0));
    shared.executions = Arc::new(CountLaneReads {
        inner: shared.executions.clone(),
        reads: reads.clone(),
    });
    let a = engine(
        &dir.path().join("a"),
        Arc::new(MemoryBus::default()),
        &shared,
    );
    register(&a, dir.path(), "par.yaml", PARALLEL).await;
    // The first executions read (and start the watch; a copy read after it is live is current).
    for event in ["e-1", "e-2"] {
        assert_eq!(
            run_one(&a, &shared, "par", event).await.status,
            Status::Succeeded
        );
    }
    reads.store(0, SeqCst);
    assert_eq!(
        run_one(&a, &shared, "par", "e-3").await.status,
        Status::Succeeded
    );
    assert_eq!(
        reads.load(SeqCst),
        0,
        "three stage entries and exits, decided on the watched copy"
    );
}

/// A transition disabled on another engine reaches this engine's copy through the watch: an
/// execution that arrives afterwards waits before the stage instead of passing on a stale copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_disabled_elsewhere_stops_an_execution_decided_on_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine(
        &dir.path().join("a"),
        Arc::new(MemoryBus::default()),
        &shared,
    );
    let b = engine(
        &dir.path().join("b"),
        Arc::new(MemoryBus::default()),
        &shared,
    );
    register(&a, dir.path(), "par.yaml", PARALLEL).await;
    for event in ["e-1", "e-2"] {
        assert_eq!(
            run_one(&a, &shared, "par", event).await.status,
            Status::Succeeded
        );
    }
    let disabled = b
        .handle(
            "default",
            api::Request::Transition {
                pipeline: "par".into(),
                stage: "Two".into(),
                enable: false,
                reason: Some("freeze".into()),
                by: None,
            },
        )
        .await;
    assert!(disabled.get("ok").is_some(), "{disabled}");
    tokio::time::sleep(Duration::from_millis(100)).await; // the watch delivers the change
    let (id, _) = a
        .start("default", "par", br#"{"id":"e-3"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let delivery = shared.jobs.next().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), a.handle_job(delivery))
        .await
        .expect("the chain ends");
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(
        (exec.entering, exec.stages[1].status),
        (Some(1), Status::NotStarted),
        "it waits before Two: {exec:#?}"
    );
}
