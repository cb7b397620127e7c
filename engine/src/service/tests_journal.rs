//! A chain's record written behind (`journal`): what runs before a change is stored, what
//! waits for it, a write that conflicts, and a new record created by its chain; and writes
//! whose answer was lost, in a chain and outside one.
use super::tests::{Counts, engine, register, shared_edges};
use super::*;
use crate::bus::MemoryBus;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// An execution store that holds the first update of an execution record until the test
/// releases it (or, with `lose_answer`, stores it and answers with an error, as when the reply
/// is lost on the way back), and keeps every update of one as it was attempted.
struct HeldWrite {
    inner: Arc<dyn Kv>,
    release: Arc<tokio::sync::Semaphore>,
    updates: Arc<Mutex<Vec<Execution>>>,
    held: Arc<AtomicUsize>,
    lose_answer: bool,
}

impl Kv for HeldWrite {
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
        Box::pin(async move {
            if key.starts_with("default/x/") {
                let first = {
                    let mut updates = self.updates.lock().unwrap();
                    updates.push(serde_json::from_slice(&value).unwrap());
                    updates.len() == 1
                };
                if first && self.lose_answer {
                    self.inner.update(key, value, revision).await?;
                    return Err(crate::kv::KvError::Backend("no answer".into()));
                }
                if first {
                    self.held.store(1, SeqCst);
                    self.release.acquire().await.unwrap().forget();
                }
            }
            self.inner.update(key, value, revision).await
        })
    }
    super::tests::passthrough!(get, create, delete, delete_if, keys);
}

struct Held {
    dir: tempfile::TempDir,
    shared: Edges,
    release: Arc<tokio::sync::Semaphore>,
    updates: Arc<Mutex<Vec<Execution>>>,
    held: Arc<AtomicUsize>,
}

fn held_edges() -> Held {
    first_update(false)
}

/// Edges whose first update of an execution record is held, or stored with its answer lost.
fn first_update(lose_answer: bool) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    let (release, updates, held) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    shared.executions = Arc::new(HeldWrite {
        inner: shared.executions.clone(),
        release: release.clone(),
        updates: updates.clone(),
        held: held.clone(),
        lose_answer,
    });
    Held {
        dir,
        shared,
        release,
        updates,
        held,
    }
}

impl Held {
    /// Wait until the first update is being held.
    async fn until_held(&self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.held.load(SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the chain writes its first result");
    }
}

/// Start `pipeline` (queued, not chained) and run its first job's chain on `service`.
async fn start_chain(
    service: &Arc<Service>,
    shared: &Edges,
    pipeline: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    let (id, _) = service
        .start("default", pipeline, br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let delivery = shared.jobs.next().await.unwrap();
    let service = service.clone();
    (
        id,
        tokio::spawn(async move {
            service.handle_job(delivery).await;
        }),
    )
}

/// Three contained actions one after another, in three stages.
const RELAY: &str = "name: relay3\nstages:\n  - name: One\n    actions:\n      - { name: A, uses: noop@1 }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n  - name: Three\n    actions:\n      - { name: C, uses: noop@1 }\n";

struct Relay {
    h: Held,
    a: Arc<Service>,
    seen: tokio::sync::broadcast::Receiver<Event>,
    id: String,
    chain: tokio::task::JoinHandle<()>,
}

/// [`RELAY`] started on an engine whose chain is writing A's result, held.
async fn relay_held() -> Relay {
    let h = held_edges();
    let bus = Arc::new(MemoryBus::default());
    let seen = bus.subscribe();
    let a = engine(&h.dir.path().join("a"), bus.clone(), &h.shared);
    // Each change written at once: A's result alone is the held write.
    a.gather_for(Duration::ZERO);
    register(&a, h.dir.path(), "relay3.yaml", RELAY).await;
    let (id, chain) = start_chain(&a, &h.shared, "relay3").await;
    h.until_held().await;
    Relay {
        h,
        a,
        seen,
        id,
        chain,
    }
}

/// Contained actions run while the change that made them runnable is being written, and the
/// changes made meanwhile are written together: three actions one after another cost two
/// writes, not three, and every change's events are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_goes_on_while_its_record_is_written_and_writes_what_came_meanwhile_at_once() {
    let Relay {
        h,
        a,
        mut seen,
        id,
        chain,
    } = relay_held().await;
    // B and C run meanwhile (microseconds each); nothing of theirs is stored or sent yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.updates.lock().unwrap().len(),
        1,
        "no second write while the first is in flight"
    );
    let stored = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(
        stored.stages[0].actions[0].status,
        Status::InProgress,
        "A's result is not stored yet"
    );
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let updates = h.updates.lock().unwrap().clone();
    assert_eq!(
        updates.len(),
        3,
        "A's result, then B's and C's in one write, then the record without the events it carried"
    );
    assert_eq!(updates[0].stages[0].actions[0].status, Status::Succeeded);
    assert_eq!(updates[0].stages[1].actions[0].status, Status::InProgress);
    assert_eq!(
        updates[1].status,
        Status::Succeeded,
        "the second write holds B's and C's results"
    );
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(exec.status, Status::Succeeded);
    // Every change's events, each once, in order of the changes.
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    let said = |name: &str, status: Status| {
        events
            .iter()
            .filter(|e| {
                e.kind == Kind::Action && e.action.as_deref() == Some(name) && e.status == status
            })
            .count()
    };
    for name in ["A", "B", "C"] {
        assert_eq!(
            (
                said(name, Status::InProgress),
                said(name, Status::Succeeded)
            ),
            (1, 1),
            "{name}: {events:#?}"
        );
    }
    let changes: Vec<u64> = events
        .iter()
        .map(|e| e.id.split('.').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(changes.windows(2).all(|w| w[0] <= w[1]), "{changes:?}");
    assert_eq!(changes.last(), Some(&exec.outbox.change));
}

/// A source snapshot, then a deploy into `target` (which declares side effects).
struct Ship {
    h: Held,
    a: Arc<Service>,
    target: std::path::PathBuf,
    id: String,
    chain: tokio::task::JoinHandle<()>,
}

/// [`Ship`] started on an engine whose chain is writing the snapshot's result, held.
async fn ship_held() -> Ship {
    let h = held_edges();
    let target = h.dir.path().join("site");
    std::fs::create_dir_all(h.dir.path().join("app")).unwrap();
    std::fs::write(h.dir.path().join("app/index.html"), "hi").unwrap();
    let ship = format!(
        "name: ship\nstages:\n  - name: Source\n    actions:\n      - {{ name: Snap, uses: source-dir@1, with: {{ path: app }}, outputs: [src] }}\n  - name: Deploy\n    actions:\n      - name: Release\n        uses: deploy-release@1\n        inputs: [src]\n        with: {{ target: '{t}' }}\n        capabilities: {{ dirs: {{ '{t}': rw }} }}\n",
        t = target.display()
    );
    let a = engine(
        &h.dir.path().join("a"),
        Arc::new(MemoryBus::default()),
        &h.shared,
    );
    register(&a, h.dir.path(), "ship.yaml", &ship).await;
    let (id, chain) = start_chain(&a, &h.shared, "ship").await;
    h.until_held().await;
    Ship {
        h,
        a,
        target,
        id,
        chain,
    }
}

/// An action that is not contained (here a deploy, which declares side effects) starts only
/// once the record that shows it running is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_with_side_effects_waits_until_its_start_is_stored() {
    let Ship {
        h,
        a,
        target,
        id,
        chain,
    } = ship_held().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !target.join("current").exists(),
        "the deploy did not start before its start was stored"
    );
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(20), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(exec.status, Status::Succeeded, "{exec:#?}");
    assert!(target.join("current/index.html").exists());
    let updates = h.updates.lock().unwrap();
    assert_eq!(
        updates[0].stages[1].actions[0].status,
        Status::InProgress,
        "the first write is the deploy's start"
    );
}

/// A change recorded beside the chain (here a stop) makes the chain's write conflict: the
/// chain's results are applied again to the stored record, so what the stop forbids does not
/// stand even though it already ran here, and nothing of it is sent or queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_change_undoes_what_the_chain_ran_ahead() {
    let Relay {
        h,
        a,
        mut seen,
        id,
        chain,
    } = relay_held().await;
    tokio::time::sleep(Duration::from_millis(300)).await; // B and C ran ahead
    // A stop (letting running actions finish) is recorded while A's result is being written.
    let stopped = a
        .control("default", &id, |_| {
            Ok(Input::Stop {
                abandon: false,
                reason: Some("test".into()),
                at: crate::clock::now(),
            })
        })
        .await
        .unwrap();
    assert_eq!(stopped.status, Status::Stopping);
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(exec.status, Status::Stopped, "{exec:#?}");
    assert_eq!(
        exec.stages[0].actions[0].status,
        Status::Succeeded,
        "A's result still counts"
    );
    for stage in &exec.stages[1..] {
        assert_ne!(
            stage.actions[0].status,
            Status::Succeeded,
            "{} ran ahead, but the stop came first",
            stage.actions[0].name
        );
    }
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.action.as_deref(), Some("B") | Some("C"))),
        "nothing of B or C is sent: {events:#?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), h.shared.jobs.next())
            .await
            .is_err(),
        "nothing is queued"
    );
}

/// A stop (letting running actions finish) recorded while a chain writes the result that took
/// the execution into the next stages: the chain entered their lanes ahead of the store, and
/// once the execution is `Stopped` it holds no place there, so a later execution goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_chains_write_frees_the_stages_it_ran_ahead_into() {
    let Relay {
        h, a, id, chain, ..
    } = relay_held().await;
    tokio::time::sleep(Duration::from_millis(300)).await; // B and C ran ahead
    let ahead = a.lanes("default", "relay3").await.unwrap();
    assert!(
        ahead.stages.values().any(|l| l.inside.contains(&id)),
        "the chain entered the next stages ahead of the store: {ahead:?}"
    );
    let stopped = a
        .control("default", &id, |_| {
            Ok(Input::Stop {
                abandon: false,
                reason: None,
                at: crate::clock::now(),
            })
        })
        .await
        .unwrap();
    assert_eq!(stopped.status, Status::Stopping);
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(exec.status, Status::Stopped, "{exec:#?}");
    let lanes = a.lanes("default", "relay3").await.unwrap();
    assert!(lanes.stages.is_empty(), "no place held: {lanes:?}");
    // A later execution is not held up before Two.
    let (later, _) = a
        .start("default", "relay3", br#"{"id":"e-2"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    let delivery = h.shared.jobs.next().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), a.handle_job(delivery))
        .await
        .expect("the chain ends");
    let later = a.execution("default", &later).await.unwrap().unwrap();
    assert_eq!(later.status, Status::Succeeded, "{later:#?}");
}

/// A conflicting change that leaves the chain's runs alone (here the record written again as
/// it was, as by another engine): the chain's results are applied again, its runs are not
/// queued for another engine, and every change's events are sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_chain_started_are_not_queued_again_after_a_conflict() {
    let Relay {
        h,
        a,
        mut seen,
        id,
        chain,
    } = relay_held().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = exec_key("default", &id);
    let (bytes, revision) = h.shared.executions.get(&key).await.unwrap().unwrap();
    h.shared
        .executions
        .update(&key, bytes, revision)
        .await
        .unwrap();
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let exec = a.execution("default", &id).await.unwrap().unwrap();
    assert_eq!(exec.status, Status::Succeeded, "{exec:#?}");
    for stage in &exec.stages {
        let run = &stage.actions[0];
        assert_eq!(
            (run.status, run.attempt, run.runner.as_deref()),
            (Status::Succeeded, 1, None),
            "{}",
            run.name
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), h.shared.jobs.next())
            .await
            .is_err(),
        "nothing is queued again"
    );
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{events:#?}");
    for name in ["A", "B", "C"] {
        assert_eq!(
            events
                .iter()
                .filter(|e| e.action.as_deref() == Some(name) && e.status == Status::Succeeded)
                .count(),
            1,
            "{name}: {events:#?}"
        );
    }
}

/// A conflict whose results, applied again, change nothing (here a stop that abandons the
/// execution while the chain's first result is being written) leaves nothing to write: what
/// waits for the chain's changes to be stored (a deploy) is let go, finds the run stopped, and
/// the chain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_that_leaves_nothing_to_write_lets_the_waiting_runs_go() {
    let Ship {
        h,
        a,
        target,
        id,
        chain,
    } = ship_held().await;
    let stopped = a
        .control("default", &id, |_| {
            Ok(Input::Stop {
                abandon: true,
                reason: Some("test".into()),
                at: crate::clock::now(),
            })
        })
        .await
        .unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    h.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    assert!(!target.join("current").exists(), "the deploy never ran");
    assert_eq!(
        a.execution("default", &id).await.unwrap().unwrap().status,
        Status::Stopped
    );
}

/// A write that was stored although the store answered with an error is recognised as the
/// chain's own when the retry conflicts with it: its changes' events are sent (once), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stored_though_its_answer_was_lost_still_sends_its_events() {
    let h = first_update(true);
    let bus = Arc::new(MemoryBus::default());
    let mut seen = bus.subscribe();
    let a = engine(&h.dir.path().join("a"), bus.clone(), &h.shared);
    register(&a, h.dir.path(), "relay3.yaml", RELAY).await;
    let (id, chain) = start_chain(&a, &h.shared, "relay3").await;
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    assert_eq!(
        a.execution("default", &id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    for name in ["A", "B", "C"] {
        let said = |status: Status| {
            events
                .iter()
                .filter(|e| {
                    e.kind == Kind::Action
                        && e.action.as_deref() == Some(name)
                        && e.status == status
                })
                .count()
        };
        assert_eq!(
            (said(Status::InProgress), said(Status::Succeeded)),
            (1, 1),
            "{name}: {events:#?}"
        );
    }
}

/// The execution `id` once it exists and `until` holds (none after 10 s).
async fn once_recorded(
    a: &Service,
    id: &str,
    until: impl Fn(&Execution) -> bool,
) -> Option<Execution> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.execution("default", id).await.unwrap() {
                Some(e) if until(&e) => return e,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .ok()
}

/// Events sent so far.
fn drain(seen: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(e) = seen.try_recv() {
        events.push(e);
    }
    events
}

/// Each action's (started, succeeded) events.
fn told(events: &[Event], name: &str) -> (usize, usize) {
    let said = |status: Status| {
        events
            .iter()
            .filter(|e| {
                e.kind == Kind::Action && e.action.as_deref() == Some(name) && e.status == status
            })
            .count()
    };
    (said(Status::InProgress), said(Status::Succeeded))
}

/// While a chain's contained runs go on, their changes are gathered: three short actions one
/// after another cost one write, at the end, with every change's events sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_contained_actions_writes_once_when_its_runs_are_done() {
    let h = held_edges();
    h.release.add_permits(1); // nothing held
    let bus = Arc::new(MemoryBus::default());
    let mut seen = bus.subscribe();
    let a = engine(&h.dir.path().join("a"), bus.clone(), &h.shared);
    // (Long enough that only the runs' end, not the time limit, makes the write go.)
    a.gather_for(Duration::from_secs(30));
    register(&a, h.dir.path(), "relay3.yaml", RELAY).await;
    let (id, chain) = start_chain(&a, &h.shared, "relay3").await;
    tokio::time::timeout(Duration::from_secs(10), chain)
        .await
        .expect("the chain ends")
        .unwrap();
    let updates = h.updates.lock().unwrap().clone();
    assert_eq!(
        updates[0].status,
        Status::Succeeded,
        "A's, B's and C's results in one write"
    );
    assert_eq!(
        updates.len(),
        2,
        "then only the record without the events it carried"
    );
    assert_eq!(
        (updates[1].outbox.change, updates[1].outbox.earlier.len()),
        (updates[0].outbox.change, 0)
    );
    assert_eq!(
        a.execution("default", &id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
    let events = drain(&mut seen);
    for name in ["A", "B", "C"] {
        assert_eq!(told(&events, name), (1, 1), "{name}: {events:#?}");
    }
}

/// An execution store that holds the creation of execution records until the test releases
/// it, and keeps each record as it was created.
struct HeldCreate {
    inner: Arc<dyn Kv>,
    release: Arc<tokio::sync::Semaphore>,
    created: Arc<Mutex<Vec<Execution>>>,
}

impl Kv for HeldCreate {
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
        Box::pin(async move {
            if key.starts_with("default/x/") {
                self.created
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&value).unwrap());
                self.release.acquire().await.unwrap().forget();
            }
            self.inner.create(key, value).await
        })
    }
    super::tests::passthrough!(get, update, delete, delete_if, keys);
}

/// A trigger for `pipeline`, handled on `a` as its chain's first write (the record's creation)
/// is held: (the creations so far, how to release them, the trigger's settlement counts).
struct Creating {
    a: Arc<Service>,
    inner: Arc<dyn Kv>,
    release: Arc<tokio::sync::Semaphore>,
    created: Arc<Mutex<Vec<Execution>>>,
    counts: Counts,
    seen: tokio::sync::broadcast::Receiver<Event>,
    _dir: tempfile::TempDir,
}

async fn creating(pipeline: &str, yaml: &str) -> Creating {
    let dir = tempfile::tempdir().unwrap();
    let mut shared = shared_edges(dir.path());
    let (release, created) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let inner = shared.executions.clone();
    shared.executions = Arc::new(HeldCreate {
        inner: inner.clone(),
        release: release.clone(),
        created: created.clone(),
    });
    let bus = Arc::new(MemoryBus::default());
    let seen = bus.subscribe();
    let a = engine(&dir.path().join("a"), bus, &shared);
    a.places.workers.store(4, SeqCst); // an idle worker: the trigger's jobs run in its chain
    a.gather_for(Duration::from_secs(30));
    register(&a, dir.path(), &format!("{pipeline}.yaml"), yaml).await;
    let counts = Counts::default();
    let trigger = Delivery {
        subject: format!("sluice.default.trigger.{pipeline}"),
        payload: br#"{"id":"e-1"}"#.to_vec(),
        delivered: 1,
        handle: Arc::new(counts.clone()),
    };
    a.handle_trigger_for("default", pipeline, trigger, Duration::from_secs(30))
        .await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while created.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the chain creates the record");
    Creating {
        a,
        inner,
        release,
        created,
        counts,
        seen,
        _dir: dir,
    }
}

/// A new execution's first contained runs go on while its record is not created yet, and
/// their results are part of the creation: a chain of three short actions is one write. Nothing
/// is sent before the record exists, and the trigger is acknowledged after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executions_contained_runs_go_on_before_its_record_is_created() {
    let Creating {
        a,
        release,
        created,
        counts,
        mut seen,
        ..
    } = creating("relay3", RELAY).await;
    let first = created.lock().unwrap()[0].clone();
    assert_eq!(
        first.status,
        Status::Succeeded,
        "A, B and C ran before the record was created: {first:#?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a.execution("default", &first.execution_id)
            .await
            .unwrap()
            .is_none(),
        "not stored yet"
    );
    assert!(
        drain(&mut seen).is_empty(),
        "nothing sent before the record exists"
    );
    assert_eq!(counts.acks.load(SeqCst), 0);
    release.add_permits(1);
    let done = once_recorded(&a, &first.execution_id, |e| {
        e.status == Status::Succeeded && counts.acks.load(SeqCst) == 1
    })
    .await;
    assert!(done.is_some(), "recorded, and the trigger acknowledged");
    assert_eq!(created.lock().unwrap().len(), 1);
    let events = drain(&mut seen);
    for name in ["A", "B", "C"] {
        assert_eq!(told(&events, name), (1, 1), "{name}: {events:#?}");
    }
    assert!(
        events
            .iter()
            .any(|e| e.kind == Kind::Pipeline && e.status == Status::Succeeded)
    );
}

/// An action that is not contained (a command) does not start before the record that shows it
/// running is created: the creation goes at once, without gathering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executions_command_waits_until_its_record_is_created() {
    let dir = tempfile::tempdir().unwrap();
    // Host programs reach only what is granted: a directory of their own, outside the data.
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let ran = marks.join("ran-A");
    let yaml = format!(
        "name: cmd\nstages:\n  - name: One\n    actions:\n      - name: A\n        uses: command@1\n        with: {{ run: touch {} }}\n        capabilities: {{ process: [sh], dirs: {{ {}: rw }} }}\n",
        ran.display(),
        marks.display()
    );
    let Creating {
        a,
        release,
        created,
        ..
    } = creating("cmd", &yaml).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ran.exists(),
        "the command did not run before its start was stored"
    );
    assert_eq!(
        created.lock().unwrap()[0].stages[0].actions[0].status,
        Status::InProgress
    );
    release.add_permits(1);
    let id = created.lock().unwrap()[0].execution_id.clone();
    assert_eq!(
        once_recorded(&a, &id, |e| e.status.is_terminal())
            .await
            .map(|e| e.status),
        Some(Status::Succeeded)
    );
    assert!(ran.exists());
}

/// Another engine created the record first (the same trigger delivered to both): the chain's
/// creation conflicts, and nothing it ran is sent or recorded; the execution is theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_elsewhere_first_is_left_to_its_creator() {
    let Creating {
        a,
        inner,
        release,
        created,
        counts,
        mut seen,
        ..
    } = creating("relay3", RELAY).await;
    let mut theirs = created.lock().unwrap()[0].clone();
    theirs.status = Status::InProgress;
    theirs.outbox.writer = "another engine".into();
    let key = exec_key("default", &theirs.execution_id);
    inner
        .create(&key, serde_json::to_vec(&theirs).unwrap())
        .await
        .unwrap();
    release.add_permits(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = a
        .execution("default", &theirs.execution_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.outbox.writer, "another engine",
        "their record stands"
    );
    assert!(
        drain(&mut seen).is_empty(),
        "nothing of what ran here is sent"
    );
    assert_eq!(
        counts.acks.load(SeqCst),
        0,
        "the trigger is handed back, not acknowledged"
    );
}

/// [`RELAY`] started (not chained) on an engine whose first update of a record is stored with
/// its answer lost; the start's events already drained.
async fn started_losing_an_answer() -> (
    Held,
    Arc<Service>,
    tokio::sync::broadcast::Receiver<Event>,
    String,
) {
    let h = first_update(true);
    let bus = Arc::new(MemoryBus::default());
    let mut seen = bus.subscribe();
    let a = engine(&h.dir.path().join("a"), bus.clone(), &h.shared);
    register(&a, h.dir.path(), "relay3.yaml", RELAY).await;
    let (id, _) = a
        .start("default", "relay3", br#"{"id":"e-1"}"#, false, false)
        .await
        .unwrap()
        .unwrap();
    drain(&mut seen);
    (h, a, seen, id)
}

/// Outside a chain too (`record`: a timeout, a wake, a lane's admission, here a stop), a write
/// stored although the store answered with an error is recognised by the retry as its own: its
/// events are sent once, not lost because the input, applied again, finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_change_whose_answer_was_lost_still_sends_its_events() {
    let (h, a, mut seen, id) = started_losing_an_answer().await;
    let stop = Input::Stop {
        abandon: true,
        reason: Some("test".into()),
        at: crate::clock::now(),
    };
    a.complete(&exec_key("default", &id), &stop).await.unwrap();
    assert_eq!(
        a.execution("default", &id).await.unwrap().unwrap().status,
        Status::Stopped
    );
    assert_eq!(
        h.updates.lock().unwrap().len(),
        1,
        "written once, its answer lost"
    );
    let events = drain(&mut seen);
    let stopped = events
        .iter()
        .filter(|e| e.kind == Kind::Pipeline && e.status == Status::Stopped)
        .count();
    assert_eq!(stopped, 1, "{events:#?}");
}

/// An operator's control (a stop) whose write was stored although its answer was lost stands:
/// the caller is told it was done, and its events are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_whose_answer_was_lost_stands() {
    let (_h, a, mut seen, id) = started_losing_an_answer().await;
    let stopped = a
        .control("default", &id, |_| {
            Ok(Input::Stop {
                abandon: true,
                reason: Some("test".into()),
                at: crate::clock::now(),
            })
        })
        .await;
    assert_eq!(stopped.map(|e| e.status), Ok(Status::Stopped));
    let events = drain(&mut seen);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == Kind::Pipeline && e.status == Status::Stopped)
            .count(),
        1,
        "{events:#?}"
    );
}

/// A chain's write that gathered several changes carries the earlier ones' events in its
/// outbox until they are stored; once the chain ends, the record that rests (here waiting for
/// an approval) is written once more without them, and what a successor would send from it is
/// the events whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_at_rest_keeps_no_events_of_earlier_changes() {
    const GATED: &str = "name: gated\nstages:\n  - name: Gate\n    actions:\n      - { name: Approve, uses: approval@1, with: { approvers: '*' } }\n  - name: Go\n    actions:\n      - { name: Run, uses: noop@1 }\n";
    let Creating {
        a,
        release,
        created,
        counts,
        ..
    } = creating("gated", GATED).await;
    let first = created.lock().unwrap()[0].clone();
    assert_eq!(
        first.stages[0].actions[0]
            .waiting
            .as_ref()
            .map(|w| w.wake.clone()),
        Some(Wake::Approval),
        "the approval began waiting before the record was created"
    );
    let carried = crate::bus::outbox_events(&first);
    assert!(
        carried
            .iter()
            .any(|e| e.kind == Kind::Pipeline && e.status == Status::InProgress),
        "the start's events ride along: {carried:#?}"
    );
    assert!(
        carried.iter().all(|e| e.tenant == "default"
            && e.pipeline == "gated"
            && e.execution_id == first.execution_id
            && e.pipeline_version == Some(1)),
        "whole: {carried:#?}"
    );
    release.add_permits(1);
    let rests = once_recorded(&a, &first.execution_id, |e| {
        e.outbox.earlier.is_empty() && counts.acks.load(SeqCst) == 1
    })
    .await;
    let rests = rests.expect("written once more without them, and the trigger acknowledged");
    assert_eq!(rests.outbox.change, first.outbox.change, "the same change");
}
