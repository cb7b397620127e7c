//! When a local run's record is written: once for a short run of contained actions, and
//! before anything reaches outside the sandbox otherwise.
use super::*;
use crate::state::StateError;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

/// One write of the record, as the store saw it.
#[derive(Debug)]
struct Put {
    creates: bool,
    durable: bool,
    terminal: bool,
    /// Whether the marker file existed when the write was done.
    marker_seen: bool,
}

/// The engine's own store, every write noted; the creation takes `creation_delay` longer.
struct Recording {
    inner: Arc<dyn StateStore>,
    puts: StdMutex<Vec<Put>>,
    creation_delay: Duration,
    marker: PathBuf,
}

impl StateStore for Recording {
    fn put(
        &self,
        exec: &Execution,
        expected: Option<u64>,
        durability: Durability,
    ) -> Result<u64, StateError> {
        let revision = self.inner.put(exec, expected, durability)?;
        if expected.is_none() {
            std::thread::sleep(self.creation_delay);
        }
        self.puts.lock().unwrap().push(Put {
            creates: expected.is_none(),
            durable: durability == Durability::Durable,
            terminal: exec.status.is_terminal(),
            marker_seen: self.marker.exists(),
        });
        Ok(revision)
    }
    fn get(&self, tenant: &str, id: &str) -> Result<Option<(Execution, u64)>, StateError> {
        self.inner.get(tenant, id)
    }
    fn list(&self, t: &str, p: Option<&str>, limit: usize) -> Result<Vec<Execution>, StateError> {
        self.inner.list(t, p, limit)
    }
}

/// Run `yaml` (a pipeline in `dir`) on an embedded engine whose store notes every write.
/// Also returns how long the run itself took.
async fn run_recorded(
    dir: &Path,
    yaml: &str,
    creation_delay: Duration,
) -> (Execution, Vec<Put>, Duration) {
    let data = dir.join(".sluice");
    let mut engine = Engine::embedded(
        &data,
        Arc::new(crate::bus::MemoryBus::default()),
        LogStore::new(data.join("logs")),
    )
    .unwrap();
    let recording = Arc::new(Recording {
        inner: engine.state.clone(),
        puts: StdMutex::new(Vec::new()),
        creation_delay,
        marker: dir.join("run/started"),
    });
    engine.state = recording.clone();
    let (pipeline, problems) = crate::model::parse::parse("pipeline.yaml", dir.to_path_buf(), yaml);
    let pipeline = pipeline.expect("parses");
    let none = BTreeMap::new();
    let plugins = engine.check(&pipeline, problems, &none).await.unwrap();
    let started = std::time::Instant::now();
    let exec = engine
        .run(Arc::new(pipeline), &plugins, &none)
        .await
        .unwrap();
    let took = started.elapsed();
    let puts = std::mem::take(&mut *recording.puts.lock().unwrap());
    (exec, puts, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_of_contained_actions_writes_its_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = "name: pure\nstages:\n  - name: S\n    actions:\n".to_string();
    for i in 1..=10 {
        yaml.push_str(&format!(
            "      - {{ name: A{i}, uses: noop@1, run_order: {i} }}\n"
        ));
    }
    let (exec, puts, took) = run_recorded(dir.path(), &yaml, Duration::ZERO).await;
    assert_eq!(exec.status, crate::scheduler::Status::Succeeded);
    // Over within the writer's interval: the creation is the final state, flushed — one write.
    // (Only when the run was not held up past the interval by a busy machine.)
    if took < writer::PROGRESS_INTERVAL {
        assert_eq!(puts.len(), 1, "{puts:?}");
    }
    assert!(puts[0].creates && puts[0].durable, "{puts:?}");
    assert!(
        puts.last().unwrap().terminal && puts.iter().all(|p| p.durable),
        "{puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_program_starts_only_once_the_record_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    // A contained action first (it may run before the record exists), then two programs in
    // parallel (started by the loop's tasks, not inline).
    let program = format!(
        "        uses: command@1\n        capabilities: {{ process: [sh], dirs: {{ ./run: rw }} }}\n        with: {{ run: \"touch {}/run/started\" }}\n",
        dir.path().display()
    );
    let yaml = format!(
        "name: outside\nstages:\n  - name: Pure\n    actions:\n      - {{ name: A, uses: noop@1 }}\n  - name: S\n    actions:\n      - name: Run1\n{program}      - name: Run2\n{program}"
    );
    // The creation is slow to write: the program must wait for it, not run meanwhile.
    let (exec, puts, _) = run_recorded(dir.path(), &yaml, Duration::from_millis(300)).await;
    assert_eq!(exec.status, crate::scheduler::Status::Succeeded, "{exec:?}");
    assert!(dir.path().join("run/started").exists());
    let creation = puts.iter().find(|p| p.creates).expect("a creation");
    assert!(creation.durable, "{puts:?}");
    assert!(
        !creation.terminal && !creation.marker_seen,
        "the program ran before the record was written: {puts:?}"
    );
}

/// A recording store over a fresh redb file in `dir`.
fn recording_store(dir: &Path) -> Arc<Recording> {
    Arc::new(Recording {
        inner: Arc::new(crate::state::RedbStore::open(&dir.join("state.redb")).unwrap()),
        puts: StdMutex::new(Vec::new()),
        creation_delay: Duration::ZERO,
        marker: dir.join("no-marker"),
    })
}

fn new_execution(dir: &Path) -> Arc<Mutex<Execution>> {
    let yaml = "name: p\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n";
    let (pipeline, _) = crate::model::parse::parse("p.yaml", dir.to_path_buf(), yaml);
    let pin = |uses: &str| PluginRef {
        reference: uses.to_string(),
        digest: String::new(),
    };
    Arc::new(Mutex::new(Execution::new(
        ulid::Ulid::new().to_string(),
        "default",
        &pipeline.expect("parses"),
        &pin,
        BTreeMap::new(),
    )))
}

fn puts_of(store: &Recording) -> usize {
    store.puts.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_creates_the_record_durably_when_asked_or_after_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = recording_store(dir.path());
    // Asked for: written at once, durably, and only once.
    let w = writer::StateWriter::spawn(store.clone(), None, new_execution(dir.path()));
    let asked = std::time::Instant::now();
    w.changed(Durability::Eventual).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    // (Only when this task was not held up past the interval itself.)
    if asked.elapsed() < writer::PROGRESS_INTERVAL / 2 {
        assert_eq!(
            puts_of(&store),
            0,
            "a new run's creation waits like progress"
        );
    }
    let within = |f| tokio::time::timeout(Duration::from_secs(30), f);
    within(w.created()).await.expect("created").unwrap();
    assert_eq!(puts_of(&store), 1);
    within(w.created()).await.expect("created").unwrap();
    w.finish().unwrap();
    {
        let puts = store.puts.lock().unwrap();
        assert_eq!(puts.len(), 1, "{puts:?}");
        assert!(puts[0].creates && puts[0].durable, "{puts:?}");
    }

    // Never asked for: written durably all the same once the interval is over.
    std::fs::create_dir_all(dir.path().join("second")).unwrap();
    let store = recording_store(&dir.path().join("second"));
    let w = writer::StateWriter::spawn(store.clone(), None, new_execution(dir.path()));
    w.changed(Durability::Eventual).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while puts_of(&store) == 0 {
        assert!(std::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let puts = store.puts.lock().unwrap();
        assert!(
            puts[0].creates && puts[0].durable && !puts[0].terminal,
            "{puts:?}"
        );
    }
    w.finish().unwrap();
}

/// A store whose every write fails, as a full disk does.
struct Failing;

impl StateStore for Failing {
    fn put(&self, exec: &Execution, _: Option<u64>, _: Durability) -> Result<u64, StateError> {
        Err(StateError::Backend(format!(
            "{}: no space left on device",
            exec.execution_id
        )))
    }
    fn get(&self, _: &str, _: &str) -> Result<Option<(Execution, u64)>, StateError> {
        Ok(None)
    }
    fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<Vec<Execution>, StateError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_that_cannot_be_written_is_an_error_not_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let w = writer::StateWriter::spawn(Arc::new(Failing), None, new_execution(dir.path()));
    w.changed(Durability::Eventual).unwrap();
    let created = tokio::time::timeout(Duration::from_secs(30), w.created())
        .await
        .expect("the waiter is woken");
    let e = created.unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");
}
