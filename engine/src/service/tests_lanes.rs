//! Lanes decided on this engine's watched copy of them (`lane_copies`).
use super::tests::{engine_in, register, shared_edges};
use super::*;
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
    super::tests::passthrough!(create, update, delete, delete_if, keys, watch);
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
    let a = engine_in(dir.path(), "a", &shared);
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
    let a = engine_in(dir.path(), "a", &shared);
    let b = engine_in(dir.path(), "b", &shared);
    register(&a, dir.path(), "par.yaml", PARALLEL).await;
    for event in ["e-1", "e-2"] {
        assert_eq!(
            run_one(&a, &shared, "par", event).await.status,
            Status::Succeeded
        );
    }
    let disabled = b
        .call(
            &super::tests::remote(),
            sluice_api::verbs::Transition {
                pipeline: "par".into(),
                stage: "Two".into(),
                enable: false,
                reason: Some("freeze".into()),
                by: None,
            },
        )
        .await;
    assert!(disabled.is_ok(), "{disabled:?}");
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

const RELAY: &str = "name: relay\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n";

/// Lanes that drifted from the executions (an execution that ended still inside a stage, so
/// that the next one waits before it for good; one whose record is gone inside another) are
/// rebuilt from the executions' records by `pipeline.repair` (`sluice pipeline state NAME
/// --repair`): the places are freed, the waiting execution is let in and runs to its end, and a
/// disabled transition stays disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairing_the_lanes_frees_places_held_by_ended_executions_and_lets_the_waiting_in() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    register(&a, dir.path(), "relay.yaml", RELAY).await;
    let ended = run_one(&a, &shared, "relay", "e-1").await;
    assert_eq!(ended.status, Status::Succeeded);
    let key = lanes::lane_key("default", "relay");
    let (_, revision) = shared.executions.get(&key).await.unwrap().unwrap();
    // The drift: the ended execution still inside Two.
    let lane = |inside: &str, disabled: Option<crate::scheduler::lanes::Disabled>| {
        crate::scheduler::lanes::Lane {
            inside: vec![inside.to_string()],
            disabled,
            ..Default::default()
        }
    };
    let mut stuck = crate::scheduler::lanes::Lanes::default();
    stuck
        .stages
        .insert("Two".into(), lane(&ended.execution_id, None));
    shared
        .executions
        .update(&key, serde_json::to_vec(&stuck).unwrap(), revision)
        .await
        .unwrap();
    let waiting = run_one(&a, &shared, "relay", "e-2").await;
    assert_eq!(
        waiting.entering,
        Some(1),
        "it waits before Two: {waiting:#?}"
    );
    // More drift: an execution whose record is gone inside One, whose transition is disabled.
    let freeze = crate::scheduler::lanes::Disabled {
        reason: "freeze".into(),
        by: "ops".into(),
        at: crate::clock::now(),
    };
    let (mut stuck, revision) =
        get_json::<crate::scheduler::lanes::Lanes>(&*shared.executions, &key)
            .await
            .unwrap()
            .unwrap();
    stuck.stages.insert(
        "One".into(),
        lane("01J0000000000000000000GONE", Some(freeze.clone())),
    );
    shared
        .executions
        .update(&key, serde_json::to_vec(&stuck).unwrap(), revision)
        .await
        .unwrap();
    let repaired = a
        .call(
            &super::tests::remote(),
            sluice_api::verbs::PipelineRepair {
                name: "relay".into(),
            },
        )
        .await;
    let lanes = repaired.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        lanes.stages.get("Two").map(|l| l.inside.clone()),
        Some(vec![waiting.execution_id.clone()]),
        "the ended execution's place is freed and the waiting one let in: {lanes:?}"
    );
    assert_eq!(
        lanes
            .stages
            .get("One")
            .map(|l| (l.inside.len(), l.disabled.clone())),
        Some((0, Some(freeze))),
        "a record that is gone frees its place; the disabled transition stays: {lanes:?}"
    );
    // Let in: its job is queued; it runs to its end and frees its place.
    let delivery = tokio::time::timeout(Duration::from_secs(10), shared.jobs.next())
        .await
        .expect("its job is queued")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), a.handle_job(delivery))
        .await
        .expect("the chain ends");
    let done = a
        .execution("default", &waiting.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, Status::Succeeded, "{done:#?}");
    assert!(
        a.lanes("default", "relay").await.unwrap().stages["One"]
            .inside
            .is_empty()
    );
    assert!(
        !a.lanes("default", "relay")
            .await
            .unwrap()
            .stages
            .contains_key("Two")
    );
    let unknown = a
        .call(
            &super::tests::remote(),
            sluice_api::verbs::PipelineRepair {
                name: "nope".into(),
            },
        )
        .await;
    assert!(
        unknown
            .as_ref()
            .is_err_and(|e| e.code == sluice_api::Code::NotFound
                && e.message.contains("no pipeline `nope`")),
        "{unknown:?}"
    );
}
