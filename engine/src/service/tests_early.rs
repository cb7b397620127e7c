//! Early starts (`early`): a trigger's contained actions run while its claim is written and its
//! pipeline read; what a refused gate leaves (nothing).
use super::tests::{Counts, engine, register, shared_edges};
use super::*;
use crate::bus::MemoryBus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

/// An execution store that counts trigger claims written, and holds them while `hold` is set
/// until the test releases one.
struct Claims {
    inner: Arc<dyn Kv>,
    hold: Arc<AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
    written: Arc<AtomicUsize>,
}

impl Kv for Claims {
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'a, crate::kv::KvResult<u64>> {
        Box::pin(async move {
            if key.contains("/claim/") {
                self.written.fetch_add(1, SeqCst);
                if self.hold.load(SeqCst) {
                    self.release.acquire().await.unwrap().forget();
                }
            }
            self.inner.create(key, value).await
        })
    }
    super::tests::passthrough!(get, update, delete, delete_if, keys, watch);
}

const EARLY: &str = "name: early\nexecution_mode: parallel\nstages:\n  - name: Source\n    actions:\n      - { name: Snap, uses: source-dir@1, with: { path: app }, outputs: [src] }\n  - name: Two\n    actions:\n      - { name: B, uses: noop@1 }\n";

struct Early {
    dir: tempfile::TempDir,
    shared: Edges,
    a: Arc<Service>,
    seen: tokio::sync::broadcast::Receiver<Event>,
    hold: Arc<AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
    claims: Arc<AtomicUsize>,
}

/// An engine with an idle worker that has run two executions of [`EARLY`] (so it knows the
/// pipeline's head, and a watch keeps its copy of the lanes current).
async fn warmed() -> Early {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("app/index.html"), "one").unwrap();
    let mut shared = shared_edges(dir.path());
    let (hold, release, claims) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    shared.executions = Arc::new(Claims {
        inner: shared.executions.clone(),
        hold: hold.clone(),
        release: release.clone(),
        written: claims.clone(),
    });
    let bus = Arc::new(MemoryBus::default());
    let seen = bus.subscribe();
    let a = engine(&dir.path().join("a"), bus, &shared);
    a.places.workers.store(4, SeqCst);
    register(&a, dir.path(), "early.yaml", EARLY).await;
    let mut early = Early {
        dir,
        shared,
        a,
        seen,
        hold,
        release,
        claims,
    };
    for event in ["e-1", "e-2"] {
        assert!(early.trigger(event).await, "{event} handled");
    }
    while early.seen.try_recv().is_ok() {}
    early
}

impl Early {
    /// Deliver `event` (a first delivery) and wait until it is acknowledged.
    async fn trigger(&self, event: &str) -> bool {
        let counts = self.deliver(event).await;
        until(|| counts.acks.load(SeqCst) == 1).await
    }

    async fn deliver(&self, event: &str) -> Counts {
        let counts = Counts::default();
        let payload = format!(r#"{{"id":"{event}"}}"#).into_bytes();
        let delivery = Delivery {
            subject: "sluice.default.trigger.early".into(),
            payload,
            delivered: 1,
            handle: Arc::new(counts.clone()),
        };
        // (Spawned: the usual start waits for the claim.)
        let a = self.a.clone();
        tokio::spawn(async move {
            a.handle_trigger_for("default", "early", delivery, Duration::from_secs(30))
                .await
        });
        counts
    }

    async fn executions(&self) -> Vec<Execution> {
        self.a
            .executions("default", Some("early"), None, 100)
            .await
            .unwrap()
    }

    fn blobs(&self) -> usize {
        walk(&self.dir.path().join("a/cas/blobs"))
    }
}

/// Files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Whether `check` holds within 10 s.
async fn until(check: impl Fn() -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

/// A trigger's contained first action (a snapshot) runs while its claim is being written: the
/// snapshot is taken, but nothing of the execution is stored or sent until the claim is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_contained_actions_run_while_its_claim_is_written() {
    let mut e = warmed().await;
    std::fs::write(e.dir.path().join("app/index.html"), "two").unwrap(); // a new blob to see
    let (files, claims) = (e.blobs(), e.claims.load(SeqCst));
    e.hold.store(true, SeqCst);
    let counts = e.deliver("e-3").await;
    assert!(
        until(|| e.claims.load(SeqCst) == claims + 1).await,
        "the claim is being written"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        e.blobs() > files,
        "the snapshot ran before its claim was written"
    );
    assert_eq!(e.executions().await.len(), 2, "nothing recorded yet");
    assert!(e.seen.try_recv().is_err(), "nothing sent yet");
    e.release.add_permits(1);
    assert!(
        until(|| counts.acks.load(SeqCst) == 1).await,
        "acknowledged once done"
    );
    let all = e.executions().await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].status, Status::Succeeded, "{:#?}", all[0]);
    assert_eq!(
        e.a.claimed("default", "early", "e-3")
            .await
            .unwrap()
            .as_deref(),
        Some(all[0].execution_id.as_str())
    );
}

/// An event claimed before (published again after the stream's duplicate window) that starts
/// early is refused by its gate: nothing of the early start is stored or sent, and it is handled
/// as the duplicate it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_start_of_a_claimed_event_leaves_nothing() {
    let mut e = warmed().await;
    let claims = e.claims.load(SeqCst);
    assert!(e.trigger("e-1").await);
    assert_eq!(
        e.claims.load(SeqCst),
        claims + 2,
        "claimed early (refused), then as usual (found)"
    );
    assert_eq!(e.executions().await.len(), 2, "no second execution of e-1");
    let mut sent = Vec::new();
    while let Ok(event) = e.seen.try_recv() {
        sent.push(event);
    }
    assert!(
        sent.is_empty(),
        "nothing of the early start is sent: {sent:#?}"
    );
}

/// A pipeline changed since this engine last read it (here by another engine): the early start
/// on the old version is refused, and the execution runs the new version under the id the
/// claim names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_start_on_an_old_version_runs_the_new_one() {
    let e = warmed().await;
    let b = engine(
        &e.dir.path().join("b"),
        Arc::new(MemoryBus::default()),
        &e.shared,
    );
    register(
        &b,
        e.dir.path(),
        "early.yaml",
        &EARLY.replace("name: B,", "name: C,"),
    )
    .await;
    let claims = e.claims.load(SeqCst);
    assert!(e.trigger("e-3").await);
    assert_eq!(
        e.claims.load(SeqCst),
        claims + 2,
        "claimed early (refused), then as usual (found)"
    );
    let all = e.executions().await;
    assert_eq!(all.len(), 3);
    let id =
        e.a.claimed("default", "early", "e-3")
            .await
            .unwrap()
            .expect("claimed");
    let exec =
        e.a.execution("default", &id)
            .await
            .unwrap()
            .expect("recorded under the claimed id");
    assert_eq!((exec.pipeline_version, exec.status), (2, Status::Succeeded));
    assert_eq!(exec.stages[1].actions[0].name, "C");
}
