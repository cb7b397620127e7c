//! Service behaviour that needs two engines sharing one set of edges, with one of them made
//! to fail at a chosen point.
use super::*;
use crate::bus::MemoryBus;
use crate::kv::RedbKv;
use crate::queue::MemoryQueue;
use sluice_api::verbs::{Approve, FunctionPut, PipelinePut};
use sluice_api::{ApiError, Code, Origin, Principal};
use std::path::Path;

/// The `Kv` methods a store double passes through to `self.inner` unchanged.
macro_rules! passthrough {
    ($($method:ident),*) => { $(super::tests::passthrough!(@ $method);)* };
    (@ get) => {
        fn get<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<Option<(Vec<u8>, u64)>>> {
            self.inner.get(key)
        }
    };
    (@ create) => {
        fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
            self.inner.create(key, value)
        }
    };
    (@ update) => {
        fn update<'a>(&'a self, key: &'a str, value: Vec<u8>, revision: u64) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
            self.inner.update(key, value, revision)
        }
    };
    (@ delete) => {
        fn delete<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<()>> {
            self.inner.delete(key)
        }
    };
    (@ delete_if) => {
        fn delete_if<'a>(&'a self, key: &'a str, revision: u64) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<()>> {
            self.inner.delete_if(key, revision)
        }
    };
    (@ keys) => {
        fn keys<'a>(&'a self, prefix: &'a str) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<Vec<String>>> {
            self.inner.keys(prefix)
        }
    };
    (@ watch) => {
        fn watch<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<Option<crate::kv::KvChanges>>> {
            self.inner.watch(key)
        }
    };
}
pub(super) use passthrough;

/// A bus that loses everything: an engine that died right after recording a change, before
/// its events were stored.
struct LostBus;

impl EventBus for LostBus {
    fn publish(&self, _event: Event) {}
}

pub(super) fn engine(data: &Path, bus: Arc<dyn EventBus>, shared: &Edges) -> Arc<Service> {
    let engine = Engine::for_service(data, bus.clone(), None).unwrap();
    service_of(engine, bus, shared)
}

/// A service on `shared` running jobs with `engine`.
/// An engine named `name` in `dir` on the `shared` edges, its events on a bus of its own.
pub(super) fn engine_in(dir: &Path, name: &str, shared: &Edges) -> Arc<Service> {
    engine(&dir.join(name), Arc::new(MemoryBus::default()), shared)
}

pub(super) fn service_of(engine: Engine, bus: Arc<dyn EventBus>, shared: &Edges) -> Arc<Service> {
    let edges = Edges {
        pipelines: shared.pipelines.clone(),
        executions: shared.executions.clone(),
        functions: shared.functions.clone(),
        waits: shared.waits.clone(),
        audit: shared.audit.clone(),
        triggers: shared.triggers.clone(),
        jobs: shared.jobs.clone(),
        bus,
        cluster: Arc::new(super::Alone),
        archive_log: None,
        secrets: None,
    };
    Service::new(engine, edges)
}

/// Embedded edges in `dir` for engines to share (each engine gets its own bus).
pub(super) fn shared_edges(dir: &Path) -> Edges {
    let db = RedbKv::open_database(&dir.join("service.redb")).unwrap();
    Edges {
        pipelines: Arc::new(RedbKv::bucket(db.clone(), "pipelines").unwrap()),
        executions: Arc::new(RedbKv::bucket(db.clone(), "executions").unwrap()),
        functions: Arc::new(RedbKv::bucket(db.clone(), "functions").unwrap()),
        waits: Arc::new(RedbKv::bucket(db.clone(), "waits").unwrap()),
        audit: Arc::new(RedbKv::bucket(db, "audit").unwrap()),
        triggers: MemoryQueue::new(Duration::from_secs(3600)),
        jobs: MemoryQueue::new(Duration::from_secs(3600)),
        bus: Arc::new(LostBus),
        cluster: Arc::new(super::Alone),
        archive_log: None,
        secrets: None,
    }
}

/// Register `yaml` (from `file` in `dir`) on `service`.
pub(super) async fn register(service: &Service, dir: &Path, file: &str, yaml: &str) {
    let put = service
        .call(
            &host_user(),
            PipelinePut {
                file: file.into(),
                dir: Some(dir.to_path_buf()),
                yaml: yaml.into(),
                plugins: Default::default(),
                bundle: None,
            },
        )
        .await;
    assert!(put.is_ok(), "{put:?}");
}

/// The embedded service's own user, for tenant `default`.
pub(super) fn host_user() -> Principal {
    Principal::local("default", Origin::HostUser)
}

/// A remote caller with every role in tenant `default`.
pub(super) fn remote() -> Principal {
    Principal::local("default", Origin::Remote)
}

const PIPELINE: &str = "name: relay\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_change_whose_engine_died_before_sending_them_are_sent_by_the_next_engine() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    // Engine A records the start and "dies" before its events are stored; engine B runs the jobs.
    let a = engine(&dir.path().join("a"), Arc::new(LostBus), &shared);
    let bus_b = Arc::new(MemoryBus::default());
    let mut seen = bus_b.subscribe();
    let b = engine(&dir.path().join("b"), bus_b.clone(), &shared);
    register(&a, dir.path(), "relay.yaml", PIPELINE).await;
    let (id, _) = a
        .start("default", "relay", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    tokio::spawn(b.clone().run(1));

    let mut events = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = seen.recv().await.unwrap();
            let end = e.kind == Kind::Pipeline && e.status.is_terminal();
            events.push(e);
            if end {
                break;
            }
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "the execution did not finish: {events:#?}"
    );
    let has = |kind: Kind, name: Option<&str>, status: Status| {
        events.iter().any(|e| {
            e.kind == kind
                && e.status == status
                && (e.action.as_deref() == name || e.stage.as_deref() == name || name.is_none())
        })
    };
    // What A recorded: the pipeline and its first stage and action started.
    assert!(has(Kind::Pipeline, None, Status::InProgress), "{events:#?}");
    assert!(
        has(Kind::Stage, Some("One"), Status::InProgress)
            && has(Kind::Action, Some("A"), Status::InProgress),
        "{events:#?}"
    );
    // What B recorded.
    assert!(
        has(Kind::Action, Some("B"), Status::Succeeded)
            && has(Kind::Pipeline, None, Status::Succeeded),
        "{events:#?}"
    );
    // Ids name the execution, the change and the event; none repeats here.
    let first = events.iter().find(|e| e.kind == Kind::Pipeline).unwrap();
    assert_eq!(first.id, format!("{id}.1.0"));
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{events:#?}");
}

/// When a job chain's delivery comes back (its engine died), the engine that gets it queues
/// again only what that chain ran, not what another engine's live chain is running; a
/// restarted embedded service queues everything; a trigger delivered again, only runs that
/// no chain holds.
#[test]
fn a_dead_chain_hands_back_only_its_own_runs() {
    let yaml = "name: fan\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n      - { name: B, uses: noop@1 }\n      - { name: C, uses: noop@1 }\n";
    let (pipeline, problems) =
        crate::model::parse::parse("fan.yaml", std::path::PathBuf::new(), yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let pin = |uses: &str| crate::scheduler::PluginRef {
        reference: uses.to_string(),
        digest: String::new(),
    };
    let mut exec = Execution::new(
        "x1".into(),
        "default",
        &pipeline.unwrap(),
        &pin,
        Default::default(),
    );
    for (action, runner) in
        exec.stages[0]
            .actions
            .iter_mut()
            .zip([Some("lease-1"), Some("lease-2"), None])
    {
        action.status = Status::InProgress;
        action.attempt = 1;
        action.runner = runner.map(str::to_string);
    }
    let names = |jobs: Vec<JobMessage>| {
        jobs.iter()
            .map(|j| exec.stages[j.stage].actions[j.action].name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(outstanding(&exec, |runner| runner != "lease-1")),
        ["A", "C"]
    );
    assert_eq!(names(outstanding(&exec, |_| false)), ["A", "B", "C"]);
    assert_eq!(names(outstanding(&exec, |_| true)), ["C"]);
}

/// An engine dies in the middle of a job chain: the action its chain was running is named in
/// the record with the chain's delivery, and when that delivery comes back, the engine that
/// gets it runs the action again (same attempt, so the same idempotency key) and the
/// execution finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_whose_engine_dies_is_finished_by_the_engine_its_delivery_comes_back_to() {
    const CHAIN: &str = "name: chain\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - name: B\n        uses: command@1\n        with: { run: sleep 1 }\n        capabilities: { process: [sh] }\n";
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    let bus_b = Arc::new(MemoryBus::default());
    let mut seen = bus_b.subscribe();
    let b = engine(&dir.path().join("b"), bus_b.clone(), &shared);
    register(&a, dir.path(), "chain.yaml", CHAIN).await;
    let (id, _) = a
        .start("default", "chain", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();

    // Engine A takes A's job, runs it, and its chain goes on to B; A dies while B sleeps.
    let delivery = shared.jobs.next().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), a.handle_job(delivery))
            .await
            .is_err(),
        "the chain should still be running B"
    );
    assert_eq!(
        a.places.busy.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a chain dropped mid-run gives its worker place back"
    );
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    let (one, two) = (&exec.stages[0].actions[0], &exec.stages[1].actions[0]);
    assert_eq!(
        (one.status, one.runner.as_deref()),
        (Status::Succeeded, None)
    );
    assert_eq!(two.status, Status::InProgress);
    assert_eq!(
        two.runner.as_deref(),
        Some(format!("default/{id}/0/0/1").as_str()),
        "B runs in the chain of A's delivery"
    );

    // A's delivery comes back to engine B, which finds A recorded and runs B again.
    tokio::spawn(b.clone().run(1));
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = seen.recv().await.unwrap();
            if e.kind == Kind::Pipeline && e.status.is_terminal() {
                return e.status;
            }
        }
    })
    .await;
    assert_eq!(finished, Ok(Status::Succeeded));
    let exec = b.execution("default", &id).await.unwrap().unwrap();
    let two = &exec.stages[1].actions[0];
    assert_eq!(
        (two.status, two.attempt, two.runner.as_deref()),
        (Status::Succeeded, 1, None)
    );
}

/// Upload `file` as `tenant`'s (one part, then the join, as a remote client does); its digest.
pub(super) async fn upload_as(
    service: &Service,
    tenant: &str,
    file: &[u8],
) -> Result<String, ApiError> {
    use sluice_api::verbs::{UploadJoin, UploadPart};
    let who = Principal::local(tenant, Origin::Remote);
    let bytes = sluice_api::limits::encode_upload(file);
    let part = service.call(&who, UploadPart { bytes }).await?.part;
    let digest = format!("blake3:{}", blake3::hash(file).to_hex());
    let join = UploadJoin {
        parts: vec![part],
        digest: digest.clone(),
    };
    service.call(&who, join).await?;
    Ok(digest)
}

/// The execution `id` as soon as it satisfies `until` (within 10 s), else `None`.
pub(super) async fn poll_until(
    service: &Service,
    id: &str,
    until: impl Fn(&Execution) -> bool,
) -> Option<Execution> {
    poll_until_in(service, "default", id, until).await
}

/// [`poll_until`] for an execution of `tenant`.
pub(super) async fn poll_until_in(
    service: &Service,
    tenant: &str,
    id: &str,
    until: impl Fn(&Execution) -> bool,
) -> Option<Execution> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = service.execution(tenant, id).await.unwrap().unwrap();
            if until(&e) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .ok()
}

/// A bus whose stores acknowledge a batch of events only when the test lets them (one permit
/// each).
struct GatedBus(Arc<tokio::sync::Semaphore>);

impl EventBus for GatedBus {
    fn publish(&self, _event: Event) {}
    fn publish_all(&self, events: Vec<Event>) -> futures_util::future::BoxFuture<'static, ()> {
        let gate = self.0.clone();
        Box::pin(async move {
            if !events.is_empty() {
                gate.acquire().await.unwrap().forget();
            }
        })
    }
}

/// A chain records its changes one after another without waiting for their events: each
/// record carries the events the bus has not stored yet (its outbox's `earlier`), so an engine
/// that dies before they are stored leaves them to the next; and the chain's delivery is
/// acknowledged only once they are. Parallel actions of one chain record one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_records_its_changes_while_their_events_are_stored() {
    const FAN: &str = "name: fan\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n      - { name: C, uses: noop@1 }\n";
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let a = engine(
        &dir.path().join("a"),
        Arc::new(GatedBus(gate.clone())),
        &shared,
    );
    a.places
        .workers
        .store(4, std::sync::atomic::Ordering::Relaxed); // idle workers: B and C both run here
    register(&a, dir.path(), "fan.yaml", FAN).await;
    gate.add_permits(1); // the start's events
    let (id, _) = a
        .start("default", "fan", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let delivery = shared.jobs.next().await.unwrap();
    let job = delivery.payload.clone();
    let chain = tokio::spawn({
        let a = a.clone();
        async move { a.handle_job(delivery).await }
    });
    // Every result is recorded while none of their events is stored.
    let exec = poll_until(&a, &id, |e| e.status.is_terminal())
        .await
        .expect("the chain records without waiting for the bus");
    assert_eq!(exec.status, Status::Succeeded);
    // The last record carries the events of every change the chain made (A, then B and C one
    // after the other: changes 2 to 4), as the bus has stored none of them.
    assert_eq!(exec.outbox.change, 4);
    let carried = crate::bus::outbox_events(&exec);
    for change in 2..=4 {
        assert!(
            carried.iter().any(|e| e.id == format!("{id}.{change}.0")),
            "change {change} is carried: {carried:#?}"
        );
    }
    let succeeded = |name: &str| {
        carried.iter().any(|e| {
            e.kind == Kind::Action
                && e.action.as_deref() == Some(name)
                && e.status == Status::Succeeded
        })
    };
    assert!(
        succeeded("A") && succeeded("B") && succeeded("C"),
        "{carried:#?}"
    );
    assert!(
        carried
            .iter()
            .any(|e| e.kind == Kind::Pipeline && e.status == Status::Succeeded)
    );
    // The chain's delivery waits for the bus.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !chain.is_finished(),
        "the chain ends only once its events are stored"
    );
    // Engine A dies now: its job comes back to engine B, which finds the execution ended and
    // sends the events the record carries.
    chain.abort();
    assert!(chain.await.unwrap_err().is_cancelled());
    assert_eq!(
        a.places.busy.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every worker place the chain took is given back"
    );
    let bus_b = Arc::new(MemoryBus::default());
    let mut seen = bus_b.subscribe();
    let b = engine(&dir.path().join("b"), bus_b.clone(), &shared);
    let counts = Counts::default();
    let acks = counts.acks.clone();
    b.handle_job(Delivery {
        subject: "sluice.default.jobs".into(),
        payload: job,
        delivered: 2,
        handle: Arc::new(counts),
    })
    .await;
    let mut sent = Vec::new();
    while let Ok(e) = seen.try_recv() {
        sent.push(e.id);
    }
    assert_eq!(
        sent,
        carried.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(acks.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A job queue whose deliveries must report progress every 100 ms (a 300 ms deadline).
struct ShortDeadline(Arc<MemoryQueue>);

impl WorkQueue for ShortDeadline {
    fn push<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'a, crate::queue::QueueResult<()>> {
        self.0.push(subject, id, payload)
    }
    fn next(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<Delivery>> {
        self.0.next()
    }
    fn ack_wait(&self) -> Duration {
        Duration::from_millis(300)
    }
    fn depth(
        &self,
    ) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<crate::queue::Depth>> {
        self.0.depth()
    }
}

/// Counts a delivery's acknowledgements and progress reports.
#[derive(Clone, Default)]
pub(super) struct Counts {
    pub(super) acks: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) progress: Arc<std::sync::atomic::AtomicUsize>,
}

impl crate::queue::Settle for Counts {
    fn ack(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
        self.acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
    fn nak(
        &self,
        _delay: Duration,
    ) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn progress(&self) -> futures_util::future::BoxFuture<'_, crate::queue::QueueResult<()>> {
        self.progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// A chain of steps each shorter than the progress period still reports progress: the lease
/// is kept for the whole chain, not restarted at each step (or another engine would get the
/// delivery while the chain still runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_short_steps_keeps_its_lease() {
    let step = |n: usize| {
        format!(
            "  - name: S{n}\n    actions:\n      - name: A\n        uses: command@1\n        with: {{ run: sleep 0.03 }}\n        capabilities: {{ process: [sh] }}\n"
        )
    };
    let yaml = format!(
        "name: steps\nstages:\n{}",
        (1..=8).map(step).collect::<String>()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    shared.jobs = Arc::new(ShortDeadline(MemoryQueue::new(Duration::from_secs(3600))));
    let a = engine_in(dir.path(), "a", &shared);
    register(&a, dir.path(), "steps.yaml", &yaml).await;
    let (id, _) = a
        .start("default", "steps", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let queued = shared.jobs.next().await.unwrap();
    let counts = Counts::default();
    let watched = Delivery {
        subject: queued.subject.clone(),
        payload: queued.payload.clone(),
        delivered: 1,
        handle: Arc::new(counts.clone()),
    };
    queued.ack().await.unwrap();
    let t = std::time::Instant::now();
    a.handle_job(watched).await;
    let took = t.elapsed();
    assert_eq!(
        a.execution("default", &id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
    assert!(
        took >= Duration::from_millis(240),
        "8 steps of 30 ms ran in {took:?}"
    );
    let reports = counts.progress.load(std::sync::atomic::Ordering::Relaxed);
    // A timer restarted at each step (each shorter than the period) would never report;
    // half the periods is the bar, as a loaded machine delays the reporter's ticks.
    assert!(
        reports >= 1 && reports as u128 >= took.as_millis() / 200,
        "{reports} progress reports in {took:?}"
    );
}

/// Each engine tries its own last copy of a pipeline's lanes first. When another engine has
/// changed them since, the compare-and-swap refuses the stale copy and the change is made to
/// the current lanes; a change that writes nothing is decided on a fresh read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_of_the_lanes_never_decides_a_change() {
    use crate::scheduler::lanes::{Effect, LaneOp, Mode};
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    let b = engine_in(dir.path(), "b", &shared);
    let arrive = |x: &str| LaneOp::Arrive {
        execution: x.into(),
        stage: "Deploy".into(),
        mode: Mode::Queued,
    };
    let leave = |x: &str| LaneOp::Leave {
        execution: x.into(),
        stage: "Deploy".into(),
    };
    let admit = |x: &str| {
        vec![Effect::Admit {
            execution: x.into(),
            stage: "Deploy".into(),
        }]
    };

    assert_eq!(
        a.lane("default", "p", &arrive("X")).await.unwrap(),
        admit("X")
    );
    // B queues Y behind X: A's copy no longer says so.
    assert_eq!(b.lane("default", "p", &arrive("Y")).await.unwrap(), vec![]);
    // X leaves on A: from A's copy nobody waits, but Y does, and is let in.
    assert_eq!(
        a.lane("default", "p", &leave("X")).await.unwrap(),
        admit("Y")
    );
    let lane = &a.lanes("default", "p").await.unwrap().stages["Deploy"];
    assert_eq!(
        (lane.inside.clone(), lane.waiting.clone()),
        (vec!["Y".to_string()], vec![])
    );

    // A's copy now says Y is inside; B lets Y leave. Y arriving again on A would change
    // nothing in A's copy (inside already), so A reads: Y is let in again, and recorded.
    assert_eq!(b.lane("default", "p", &leave("Y")).await.unwrap(), vec![]);
    assert_eq!(
        a.lane("default", "p", &arrive("Y")).await.unwrap(),
        admit("Y")
    );
    assert_eq!(
        b.lanes("default", "p").await.unwrap().stages["Deploy"].inside,
        vec!["Y".to_string()]
    );
}

/// A trigger's chain runs its first action while the bus stores the start's events, and records
/// its result without waiting for them: the record carries them until they are stored. The
/// trigger is acknowledged only once they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_chain_runs_its_first_action_while_the_starts_events_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    // Host programs reach only what is granted: a directory of their own, outside the data.
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let ran = marks.join("ran-A");
    let yaml = format!(
        "name: overlap\nstages:\n  - name: One\n    actions:\n      - name: A\n        uses: command@1\n        with: {{ run: touch {} }}\n        capabilities: {{ process: [sh], dirs: {{ {}: rw }} }}\n  - name: Two\n    actions:\n      - {{ name: B, uses: noop@1 }}\n",
        ran.display(),
        marks.display()
    );
    let shared = shared_edges(dir.path());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let a = engine(
        &dir.path().join("a"),
        Arc::new(GatedBus(gate.clone())),
        &shared,
    );
    a.places
        .workers
        .store(4, std::sync::atomic::Ordering::Relaxed);
    register(&a, dir.path(), "overlap.yaml", &yaml).await;
    let counts = Counts::default();
    let acks = counts.acks.clone();
    let trigger = Delivery {
        subject: "sluice.default.trigger.overlap".into(),
        payload: br#"{"id":"e-1"}"#.to_vec(),
        delivered: 1,
        handle: Arc::new(counts),
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        a.handle_trigger_for("default", "overlap", trigger, Duration::from_secs(30)),
    )
    .await
    .expect("the trigger goes to its chain without waiting for the start's events");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exec = a
        .executions("default", Some("overlap"), None, 10)
        .await
        .unwrap()
        .pop()
        .expect("the execution is recorded");
    assert!(ran.exists(), "A ran before the start's events were stored");
    assert_eq!(
        exec.stages[0].actions[0].status,
        Status::Succeeded,
        "and its result is recorded"
    );
    let carried = crate::bus::outbox_events(&exec);
    assert!(
        carried
            .iter()
            .any(|e| e.id == format!("{}.1.0", exec.execution_id)),
        "with the start's events, not stored yet: {carried:#?}"
    );
    assert_eq!(
        acks.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the trigger's acknowledgement waits for them"
    );
    gate.add_permits(100);
    let done = poll_until(&a, &exec.execution_id, |e| {
        e.status.is_terminal() && acks.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        done.expect("the execution ends and the trigger is acknowledged")
            .status,
        Status::Succeeded
    );
}

/// A store whose reads (and claims) take a while, counting how many are in flight at once.
struct SlowReads {
    inner: Arc<dyn crate::kv::Kv>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    keys: Arc<std::sync::Mutex<Vec<String>>>,
}

impl crate::kv::Kv for SlowReads {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<Option<(Vec<u8>, u64)>>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            self.keys.lock().unwrap().push(key.to_string());
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let read = self.inner.get(key).await;
            self.in_flight.fetch_sub(1, SeqCst);
            read
        })
    }
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
        use std::sync::atomic::Ordering::SeqCst;
        if !key.contains("/claim/") {
            return self.inner.create(key, value);
        }
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let created = self.inner.create(key, value).await;
            self.in_flight.fetch_sub(1, SeqCst);
            created
        })
    }
    passthrough!(update, delete, delete_if, keys);
}

/// Starting an execution reads the pipeline and the lanes of its first stage and writes the
/// event's claim at the same time (one round trip, not three, before the record is created),
/// and the stage is entered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reads_the_pipeline_and_its_lanes_while_it_claims_the_event() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    let (in_flight, most, keys) = (
        Arc::default(),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let slow = |inner: Arc<dyn crate::kv::Kv>| -> Arc<dyn crate::kv::Kv> {
        Arc::new(SlowReads {
            inner,
            in_flight: Arc::clone(&in_flight),
            most: most.clone(),
            keys: keys.clone(),
        })
    };
    shared.pipelines = slow(shared.pipelines.clone());
    shared.executions = slow(shared.executions.clone());
    let a = engine_in(dir.path(), "a", &shared);
    register(&a, dir.path(), "relay.yaml", PIPELINE).await;
    most.store(0, SeqCst);
    keys.lock().unwrap().clear();
    let (id, _) = a
        .start("default", "relay", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        most.load(SeqCst),
        3,
        "the pipeline and the lanes are read, and the claim written, together"
    );
    let lane_reads = keys
        .lock()
        .unwrap()
        .iter()
        .filter(|k| k.as_str() == "default/lane/relay")
        .count();
    assert_eq!(
        lane_reads,
        1,
        "and the stage entry uses that read: {:?}",
        keys.lock().unwrap()
    );
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(
        (exec.stages[0].status, exec.entering),
        (Status::InProgress, None),
        "the first stage is entered"
    );
}

/// A bus whose stores never acknowledge what is sent while `hold` is set (and acknowledge at
/// once otherwise).
struct HoldBus(Arc<std::sync::atomic::AtomicBool>);

impl EventBus for HoldBus {
    fn publish(&self, _event: Event) {}
    fn publish_all(&self, events: Vec<Event>) -> futures_util::future::BoxFuture<'static, ()> {
        if !events.is_empty() && self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        Box::pin(std::future::ready(()))
    }
}

/// Every change an engine records carries the events it sent that are not stored yet, also a
/// change that does not come from the chain that sent them: here an approval recorded while the
/// chain's events are still on their way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_recorded_beside_a_chain_carries_the_chains_events_not_yet_stored() {
    const GATE: &str = "name: gate\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: Ok, uses: approval@1, with: { approvers: ana } }\n";
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = engine(
        &dir.path().join("a"),
        Arc::new(HoldBus(hold.clone())),
        &shared,
    );
    register(&a, dir.path(), "gate.yaml", GATE).await;
    let (id, _) = a
        .start("default", "gate", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    hold.store(true, SeqCst); // what the chain sends is never stored
    let delivery = shared.jobs.next().await.unwrap();
    let chain = tokio::spawn({
        let a = a.clone();
        async move { a.handle_job(delivery).await }
    });
    let waiting = poll_until(&a, &id, |e| e.stages[1].actions[0].waiting.is_some())
        .await
        .expect("the approval waits");
    let chains = crate::bus::outbox_events(&waiting)
        .into_iter()
        .map(|e| e.id)
        .collect::<Vec<_>>();
    assert!(chains.contains(&format!("{id}.2.0")), "{chains:?}");
    hold.store(false, SeqCst);
    let approved = a
        .call(
            &remote(),
            Approve {
                execution_id: id.clone(),
                action: "Two/Ok".into(),
                approved: true,
                by: "ana".into(),
                summary: None,
                token: None,
            },
        )
        .await;
    assert!(approved.is_ok(), "{approved:?}");
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert!(
        exec.outbox.change > waiting.outbox.change,
        "the approval is recorded"
    );
    let carried = exec
        .outbox
        .earlier
        .iter()
        .map(|e| e.id.clone())
        .collect::<Vec<_>>();
    for id in &chains {
        assert!(
            carried.contains(id),
            "the approval's record carries {id}, which the chain sent and the bus has not stored: {carried:?}"
        );
    }
    chain.abort();
}

/// The idle workers' places a start takes for the parallel jobs its chain will run are given
/// back with those jobs, also when the chain never runs (its task aborted in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_never_runs_gives_back_its_places() {
    const WIDE: &str = "name: wide\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n      - { name: B, uses: noop@1 }\n      - { name: C, uses: noop@1 }\n";
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    a.places.workers.store(4, SeqCst);
    register(&a, dir.path(), "wide.yaml", WIDE).await;
    let (_, recorded) = a
        .start("default", "wide", br#"{"id":"e-1"}"#, false, true)
        .await
        .unwrap()
        .unwrap();
    let recorded = recorded.expect("the start keeps its first jobs");
    assert_eq!(
        a.places.busy.load(SeqCst),
        2,
        "B and C each took an idle worker's place (A runs in the trigger's)"
    );
    drop(recorded);
    assert_eq!(a.places.busy.load(SeqCst), 0, "given back with the jobs");
}

/// An event the pipeline refuses (here: no such pipeline yet) keeps the claim written for it
/// while the pipeline was read: once the pipeline is registered, a delivery of the same event
/// starts its execution under the claimed id, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_started_under_its_claim_once_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    let refused = a
        .start("default", "relay", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(crate::service::triggers::NotStarted::Rejected(reason)) if reason.contains("unknown pipeline")),
        "refused"
    );
    let (claimed, _) =
        crate::kv::get_json::<String>(&*shared.executions, &claim_key("default", "relay", "e-1"))
            .await
            .unwrap()
            .expect("the claim stays");
    register(&a, dir.path(), "relay.yaml", PIPELINE).await;
    let (id, _) = a
        .start("default", "relay", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, claimed);
    assert!(a.execution("default", &id).await.unwrap().is_some());
    let (again, _) = a
        .start("default", "relay", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, id, "one event id, one execution");
}

/// Two approvers deciding at nearly the same time: the second decision arrives while the
/// approval takes in the first (its next attempt runs) and is applied once it waits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_waits_while_the_approval_takes_in_an_earlier_one() {
    const TWO: &str = "name: two\nstages:\n  - name: Gate\n    actions:\n      - { name: Ok, uses: approval@1, with: { approvers: 'ana, bo', min_approvals: '2' } }\n";
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine_in(dir.path(), "a", &shared);
    register(&a, dir.path(), "two.yaml", TWO).await;
    let (id, _) = a
        .start("default", "two", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let approve = |who: &str| {
        let (a, id, who) = (a.clone(), id.clone(), who.to_string());
        async move {
            a.call(
                &remote(),
                Approve {
                    execution_id: id,
                    action: "Gate/Ok".into(),
                    approved: true,
                    by: who,
                    summary: None,
                    token: None,
                },
            )
            .await
        }
    };
    a.handle_job(shared.jobs.next().await.unwrap()).await;
    poll_until(&a, &id, |e| e.stages[0].actions[0].waiting.is_some())
        .await
        .expect("the approval waits");
    let ana = approve("ana").await;
    assert!(ana.is_ok(), "{ana:?}");
    // The attempt that takes in ana's decision has not run yet: bo's decision waits for it.
    let mut timers = Vec::new(); // (the approval's deadlines, queued as delayed jobs)
    let rerun = attempt(&*shared.jobs, 2, &mut timers).await;
    let bo = tokio::spawn(approve("bo"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !bo.is_finished(),
        "bo's decision is not refused while ana's is taken in: {:?}",
        bo.await
    );
    // (The decision that waits gives up after SETTLING; one already made is refused before.)
    let again = tokio::time::timeout(SETTLING / 2, approve("ana"))
        .await
        .expect("ana is answered at once");
    assert!(
        again.as_ref().is_err_and(
            |e| e.code == Code::Conflict && e.message.contains("ana has already decided on Ok")
        ),
        "{again:?}"
    );
    a.handle_job(rerun).await;
    let bo = bo.await.unwrap();
    assert!(bo.is_ok(), "{bo:?}");
    a.handle_job(attempt(&*shared.jobs, 3, &mut timers).await)
        .await;
    let done = poll_until(&a, &id, |e| e.status.is_terminal())
        .await
        .expect("the execution ends");
    assert_eq!(done.status, Status::Succeeded);
    let by = done.stages[0].actions[0]
        .decisions
        .iter()
        .map(|d| d.by.as_str())
        .collect::<Vec<_>>();
    assert_eq!(by, ["ana", "bo"]);
}

/// The queued job of an action's `n`th attempt (the deadline jobs met on the way are kept).
async fn attempt(
    jobs: &dyn crate::queue::WorkQueue,
    n: u32,
    timers: &mut Vec<crate::queue::Delivery>,
) -> crate::queue::Delivery {
    loop {
        let d = jobs.next().await.unwrap();
        let job: JobMessage = serde_json::from_slice(&d.payload).unwrap();
        if job.attempt == n && !job.expire {
            return d;
        }
        timers.push(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_put_takes_the_component_never_a_path_on_the_engines_host() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine(&dir.path().join("a"), Arc::new(LostBus), &shared);
    let file = dir.path().join("f.wasm");
    std::fs::write(&file, b"\0asm not a component").unwrap();
    // A request naming a file on the engine's host is refused before anything reads it.
    let body = serde_json::json!({ "name": "f", "path": file }).to_string();
    let named = sluice_api::Request::for_verb("function.put", body.as_bytes());
    assert!(
        named
            .as_ref()
            .is_err_and(|e| e.code == Code::Invalid && e.message.contains("unknown field `path`")),
        "{named:?}"
    );
    // The component travels in the request…
    let put = a
        .call(
            &remote(),
            FunctionPut {
                name: "f".into(),
                bytes: Some(sluice_api::limits::encode_upload(b"\0asm not a component")),
                digest: None,
            },
        )
        .await;
    let e = put.unwrap_err();
    assert!(
        e.code == Code::Invalid && !e.message.contains("cannot read"),
        "{e:?}"
    );
    // …bounded in size, refused before it is decoded.
    let huge = "A".repeat(api::MAX_UPLOAD / 3 * 4 + 8);
    let put = a
        .call(
            &remote(),
            FunctionPut {
                name: "f".into(),
                bytes: Some(huge),
                digest: None,
            },
        )
        .await;
    assert!(
        put.as_ref()
            .is_err_and(|e| e.message.contains("larger than 64 MiB")),
        "{put:?}"
    );
    assert!(a.list_functions("default").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_put_from_a_remote_client_resolves_no_path_on_the_engines_host() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine(&dir.path().join("a"), Arc::new(LostBus), &shared);
    std::fs::create_dir(dir.path().join("app")).unwrap();
    let put = |yaml: &str, dir: Option<&Path>, caller: Principal| {
        let request = PipelinePut {
            file: "snap.yaml".into(),
            dir: dir.map(Path::to_path_buf),
            yaml: yaml.into(),
            plugins: Default::default(),
            bundle: None,
        };
        let a = a.clone();
        async move { a.call(&caller, request).await }
    };
    let snap = "name: snap\nstages:\n  - name: Source\n    actions:\n      - { name: Snap, uses: source-dir@1, with: { path: app }, outputs: [src] }\n";
    // A remote client may not name a directory on the engine's host…
    let r = put(snap, Some(dir.path()), remote()).await;
    assert!(
        r.as_ref().is_err_and(|e| e.code == Code::Forbidden
            && e.message
                .contains("`dir` names a directory on the engine's host")),
        "{r:?}"
    );
    // …and without one, its relative paths are refused with the line to fix.
    let r = put(snap, None, remote()).await;
    let d = r.as_ref().map_err(ApiError::problem_lines).unwrap_err();
    assert!(
        d.contains("snap.yaml:5:") && d.contains("`with.path` \"app\" is a path relative"),
        "{r:?}"
    );
    let files = "name: files\nstages:\n  - name: S\n    actions:\n      - name: P\n        uses: ./probe.wasm\n      - name: G\n        uses: noop@1\n        capabilities: { dirs: { out: rw } }\n      - name: F\n        uses: invoke@1\n        with: { function: ./f.wasm }\n";
    let r = put(files, None, remote()).await;
    let d = r.as_ref().map_err(ApiError::problem_lines).unwrap_err();
    assert!(
        d.contains("action `P`: `uses: ./probe.wasm` is a file")
            && d.contains("action `G`: `capabilities.dirs` path \"out\" is relative")
            && d.contains("action `F`: `function: ./f.wasm` is a file")
            && d.contains("sluice function put NAME ./f.wasm"),
        "{r:?}"
    );
    // Absolute paths name the engine's host as written.
    let absolute = snap.replace("path: app", &format!("path: {}/app", dir.path().display()));
    let r = put(&absolute, None, remote()).await;
    assert!(r.is_ok(), "{r:?}");
    // The engine's own user on its host registers relative paths, as `sluice run` runs them.
    let r = put(snap, Some(dir.path()), host_user()).await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_checks_the_principals_role_before_it_touches_anything() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine(&dir.path().join("a"), Arc::new(LostBus), &shared);
    register(&a, dir.path(), "relay.yaml", PIPELINE).await;
    let with = |roles: &[sluice_api::Role]| Principal {
        roles: roles.to_vec(),
        ..remote()
    };
    use sluice_api::Role::{Approver, Developer, Viewer};
    use sluice_api::verbs::{PipelineLs, PipelineRm, Start};
    let start = || Start {
        pipeline: "relay".into(),
        ..Default::default()
    };
    // A viewer reads, and may not start or remove anything…
    assert_eq!(
        a.call(&with(&[Viewer]), PipelineLs {}).await.unwrap().len(),
        1
    );
    for refused in [
        a.call(&with(&[Viewer]), start()).await.map(|_| ()),
        a.call(&with(&[Approver]), start()).await.map(|_| ()),
        a.call(
            &with(&[Viewer]),
            PipelineRm {
                name: "relay".into(),
            },
        )
        .await
        .map(|_| ()),
    ] {
        let e = refused.unwrap_err();
        assert_eq!(e.code, Code::Forbidden, "{e:?}");
        assert!(e.message.contains("the developer role"), "{e}");
    }
    // …nor approve, which a developer may not either: only approvers (and admins) decide.
    let approve = || Approve {
        execution_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        action: "One/A".into(),
        approved: true,
        by: "ana".into(),
        summary: None,
        token: None,
    };
    let e = a.call(&with(&[Developer]), approve()).await.unwrap_err();
    assert_eq!(e.code, Code::Forbidden, "{e:?}");
    // An approver gets past the role check (to the execution, which does not exist).
    let e = a.call(&with(&[Approver]), approve()).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e:?}");
    // Nothing was started or removed.
    assert!(
        a.executions("default", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.call(&remote(), PipelineLs {}).await.unwrap().len(), 1);
}

/// Dead letters are kept for [`super::triggers::DEAD_LETTER_KEEP`]: an older one is gone once
/// they are listed, a recent one stays.
#[tokio::test]
async fn dead_letters_expire() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let service = engine(dir.path(), Arc::new(LostBus), &shared);
    let letter = |at: u64| {
        serde_json::to_vec(&super::DeadLetter {
            tenant: "default".into(),
            pipeline: "p".into(),
            reason: "refused".into(),
            payload: "{}".into(),
            at: crate::scheduler::Timestamp(at),
        })
        .unwrap()
    };
    let now = crate::clock::now().0;
    let old_at = now - super::triggers::DEAD_LETTER_KEEP.as_millis() as u64 - 86_400_000;
    let old = ulid::Ulid::from_parts(old_at, 1);
    let recent = ulid::Ulid::from_parts(now, 2);
    for (id, at) in [(old, old_at), (recent, now)] {
        shared
            .executions
            .create(&format!("default/dead/{id}"), letter(at))
            .await
            .unwrap();
    }
    let listed = service.dead_letters("default", None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        vec![recent.to_string()]
    );
    assert!(
        shared
            .executions
            .get(&format!("default/dead/{old}"))
            .await
            .unwrap()
            .is_none()
    );
}

/// What refused trigger events leave goes with the sweep once older than the dead letters
/// are kept: their dead letters, and the claims that started no execution. A claim whose
/// execution is kept stays (it goes with the record), and so does anything recent.
#[tokio::test]
async fn the_sweep_removes_old_dead_letters_and_claims_of_refused_events() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let service = engine(dir.path(), Arc::new(LostBus), &shared);
    let kv = &*shared.executions;
    let now = crate::clock::now().0;
    let old_at = now - super::triggers::DEAD_LETTER_KEEP.as_millis() as u64 - 86_400_000;
    let (old, recent) = (
        ulid::Ulid::from_parts(old_at, 1).to_string(),
        ulid::Ulid::from_parts(now, 2).to_string(),
    );
    let ran = ulid::Ulid::from_parts(old_at, 3).to_string();
    let json = |id: &str| serde_json::to_vec(id).unwrap();
    kv.create(&format!("acme/dead/{old}"), b"{}".to_vec())
        .await
        .unwrap();
    kv.create(&format!("acme/dead/{recent}"), b"{}".to_vec())
        .await
        .unwrap();
    kv.create("acme/claim/p/refused", json(&old)).await.unwrap();
    // (A pipeline may be named `dead`.)
    kv.create("acme/claim/dead/refused", json(&old))
        .await
        .unwrap();
    kv.create("acme/claim/p/fresh", json(&recent))
        .await
        .unwrap();
    kv.create("acme/claim/p/ran", json(&ran)).await.unwrap();
    kv.create(&exec_key("acme", &ran), b"{}".to_vec())
        .await
        .unwrap();
    // Dead letters only, unless claims are swept too (once a day).
    assert_eq!(service.sweep_refused_triggers(false).await.unwrap(), 1);
    assert_eq!(service.sweep_refused_triggers(true).await.unwrap(), 2);
    let mut left = kv.keys("acme/").await.unwrap();
    left.sort();
    let mut want = vec![
        format!("acme/dead/{recent}"),
        "acme/claim/p/fresh".to_string(),
        "acme/claim/p/ran".to_string(),
        exec_key("acme", &ran),
    ];
    want.sort();
    assert_eq!(left, want);
}

/// The index of actions waiting for events keeps those still waiting (or about to), and
/// loses those whose wait ended without an event — a newer attempt, an ended action or
/// execution, a record gone — with the subject once nobody waits for it.
#[tokio::test]
async fn the_sweep_takes_out_of_the_wait_index_those_no_longer_waiting() {
    use super::wakes::Waiter;
    use crate::scheduler::{Waiting, Wake};
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let service = engine(dir.path(), Arc::new(LostBus), &shared);
    let yaml = "name: w\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n      - { name: B, uses: noop@1 }\n      - { name: C, uses: noop@1 }\n";
    let (pipeline, _) = crate::model::parse::parse("w.yaml", std::path::PathBuf::new(), yaml);
    let pin = |uses: &str| crate::scheduler::PluginRef {
        reference: uses.to_string(),
        digest: String::new(),
    };
    let mut exec = Execution::new(
        "x1".into(),
        "acme",
        &pipeline.unwrap(),
        &pin,
        Default::default(),
    );
    exec.status = Status::InProgress;
    for (i, run) in exec.stages[0].actions.iter_mut().enumerate() {
        run.status = Status::InProgress;
        run.attempt = 1;
        // A waits for the subject; B is about to (its wait not recorded yet); C has moved on
        // to its second attempt.
        if i == 0 {
            run.waiting = Some(Waiting {
                wake: Wake::Event("deploys.done".into()),
                since: crate::clock::now(),
                deadline: None,
                percent: None,
                token: "t".into(),
            });
        }
        if i == 2 {
            run.attempt = 2;
        }
    }
    shared
        .executions
        .create(&exec_key("acme", "x1"), serde_json::to_vec(&exec).unwrap())
        .await
        .unwrap();
    let waiter = |execution: &str, action: usize| Waiter {
        tenant: "acme".into(),
        execution: execution.into(),
        stage: 0,
        action,
        attempt: 1,
    };
    // Written as `await_event` writes them (it writes only on NATS).
    let write = |subject: &str, waiters: Vec<Waiter>| {
        let kv = shared.waits.clone();
        let index = super::wakes::WaitIndex {
            subject: subject.into(),
            waiters,
        };
        let key = format!(
            "{}{}",
            super::wakes::INDEX_PREFIX,
            &blake3::hash(subject.as_bytes()).to_hex()[..32]
        );
        async move {
            kv.create(&key, serde_json::to_vec(&index).unwrap())
                .await
                .unwrap()
        }
    };
    write(
        "deploys.done",
        vec![
            waiter("x1", 0),
            waiter("x1", 1),
            waiter("x1", 2),
            waiter("gone", 0),
        ],
    )
    .await;
    write("other.subject", vec![waiter("gone", 1)]).await;
    assert_eq!(service.sweep_waits().await.unwrap(), 3);
    assert_eq!(
        service.awaited_subjects().await.unwrap(),
        vec!["deploys.done"]
    );
    // Once the execution ends, its waiters go too, and the subject with them.
    exec.status = Status::Stopped;
    let (_, revision) = shared
        .executions
        .get(&exec_key("acme", "x1"))
        .await
        .unwrap()
        .unwrap();
    shared
        .executions
        .update(
            &exec_key("acme", "x1"),
            serde_json::to_vec(&exec).unwrap(),
            revision,
        )
        .await
        .unwrap();
    assert_eq!(service.sweep_waits().await.unwrap(), 2);
    assert!(service.awaited_subjects().await.unwrap().is_empty());
    assert!(shared.waits.keys("").await.unwrap().is_empty());
}

/// A tenant whose calls hold every turn of an engine makes its next call wait, not another
/// tenant's; the waiting call goes on once a turn is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_every_turn_in_hand_does_not_hold_up_another_tenants_calls() {
    use sluice_api::verbs::PipelineLs;
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_edges(dir.path());
    let a = engine(&dir.path().join("a"), Arc::new(LostBus), &shared);
    let mut held = Vec::new();
    for _ in 0..control::turns::CALLS {
        held.push(
            a.turns
                .take("default", control::turns::Kind::Other)
                .await
                .unwrap(),
        );
    }
    let other = Principal::local("other", Origin::Remote);
    let answered = tokio::time::timeout(Duration::from_secs(5), a.call(&other, PipelineLs {}))
        .await
        .expect("another tenant's call is answered at once");
    assert!(answered.is_ok(), "{answered:?}");
    let caller = remote();
    let mut waiting = Box::pin(a.call(&caller, PipelineLs {}));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "the tenant's own call waits for a turn"
    );
    held.pop();
    let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a turn given back lets it go on");
    assert!(answered.is_ok(), "{answered:?}");
}
