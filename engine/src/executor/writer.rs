//! Write-behind persistence of one execution's state. The executor changes the execution in
//! place and says "dirty"; this thread takes a copy at most every [`PROGRESS_INTERVAL`] and
//! writes it (a compare-and-swap on the revision). A durable (terminal) change is written at
//! once, and [`StateWriter::finish`] returns only after everything is written.
//!
//! The write that creates the record is always durable, but a new run's creation may wait
//! like progress: a short run of contained actions then writes its record once, at the end
//! (one flush instead of two). Before anything reaches outside the sandbox the executor
//! asks for it at once ([`StateWriter::created`]), so a run killed after that leaves a record.
use crate::scheduler::Execution;
use crate::state::{Durability, StateError, StateStore};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Progress is written at most this often; a crash loses at most this much progress
/// (actions then run again, with the same idempotency keys).
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Flags {
    /// The writer is blocked until something changes (and must be woken for a change).
    idle: bool,
    dirty: bool,
    durable: bool,
    /// Write the record's creation now instead of within the interval.
    hurry: bool,
    closed: bool,
    failed: Option<StateError>,
}

struct Shared {
    flags: Mutex<Flags>,
    wake: Condvar,
    /// Whether the record exists durably (said once, by the writer).
    created: tokio::sync::watch::Sender<bool>,
}

pub(super) struct StateWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StateWriter {
    /// Write `exec` whenever told; the first write creates the record (`revision` None).
    pub(super) fn spawn(
        store: Arc<dyn StateStore>,
        revision: Option<u64>,
        exec: Arc<Mutex<Execution>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            flags: Mutex::new(Flags::default()),
            wake: Condvar::new(),
            created: tokio::sync::watch::Sender::new(revision.is_some()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-state".into())
            .spawn(move || {
                let ended = Ended(&s);
                if let Err(e) = write_loop(&*store, revision, &exec, &s) {
                    ended.0.flags.lock().unwrap().failed = Some(e);
                }
            })
            .expect("spawn state writer");
        StateWriter {
            shared,
            thread: Some(thread),
        }
    }

    /// The execution changed. Returns an error if an earlier write failed (the run must stop).
    pub(super) fn changed(&self, durability: Durability) -> Result<(), StateError> {
        let mut f = self.shared.flags.lock().unwrap();
        if let Some(e) = f.failed.take() {
            return Err(e);
        }
        f.dirty = true;
        f.durable |= durability == Durability::Durable;
        // While the writer lets progress accumulate it needs no wake-up for more progress.
        if f.idle || f.durable {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Wait until the record exists durably, asking for it to be written now if it is not yet.
    /// Returns an error if the write failed (the run must stop).
    pub(super) async fn created(&self) -> Result<(), StateError> {
        let mut created = self.shared.created.subscribe();
        if !*created.borrow() {
            // Not created: the creation is pending (dirty) or being written.
            self.shared.flags.lock().unwrap().hurry = true;
            self.shared.wake.notify_one();
            // The sender lives as long as `self`, and says `true` when the writer ends
            // (failed, or even panicked: see `Ended`).
            let _ = created.wait_for(|done| *done).await;
        }
        match self.shared.flags.lock().unwrap().failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait until every change is written.
    pub(super) fn finish(mut self) -> Result<(), StateError> {
        self.close();
        match self.shared.flags.lock().unwrap().failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn close(&mut self) {
        self.shared.flags.lock().unwrap().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Said when the writer's thread ends, however it ends: whoever waits for the creation wakes,
/// and a panic is a failure the run reports.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut f = self.0.flags.lock().unwrap_or_else(|p| p.into_inner());
            f.failed.get_or_insert_with(|| {
                StateError::Backend("the execution's state writer failed unexpectedly".into())
            });
        }
        self.0.created.send_replace(true);
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    store: &dyn StateStore,
    mut revision: Option<u64>,
    exec: &Mutex<Execution>,
    shared: &Shared,
) -> Result<(), StateError> {
    loop {
        let durability = {
            let mut f = shared.flags.lock().unwrap();
            while !f.dirty && !f.closed {
                f.idle = true;
                f = shared.wake.wait(f).unwrap();
            }
            f.idle = false;
            if !f.dirty {
                return Ok(()); // closed and nothing left to write
            }
            // Let progress accumulate for a moment; durable changes, closing and a hurried
            // creation cut it short.
            let deadline = Instant::now() + PROGRESS_INTERVAL;
            let hurried = |f: &Flags| f.hurry && revision.is_none();
            while !(f.durable || f.closed || hurried(&f)) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                f = shared.wake.wait_timeout(f, left).unwrap().0;
            }
            f.dirty = false;
            f.hurry = false;
            std::mem::take(&mut f.durable)
        };
        let snapshot = exec.lock().unwrap().clone();
        let creates = revision.is_none();
        let d = if durability || creates || snapshot.status.is_terminal() {
            Durability::Durable
        } else {
            Durability::Eventual
        };
        revision = Some(store.put(&snapshot, revision, d)?);
        if creates {
            shared.created.send_replace(true);
        }
    }
}
