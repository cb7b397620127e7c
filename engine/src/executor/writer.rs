//! Write-behind persistence of one execution's state. Progress writes leave the critical
//! path and coalesce (the newest state wins); the terminal state is written durably before
//! [`StateWriter::finish`] returns. Every write is still a compare-and-swap on the revision.
use crate::scheduler::Execution;
use crate::state::{Durability, StateError, StateStore};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(super) struct StateWriter {
    tx: Option<Sender<(Execution, Durability)>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<StateError>>>,
}

impl StateWriter {
    /// Start writing after `revision`, the revision of the record as first stored.
    pub(super) fn spawn(store: Arc<dyn StateStore>, revision: u64) -> Self {
        let (tx, rx) = channel();
        let failed = Arc::new(Mutex::new(None));
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-state".into())
            .spawn(move || {
                if let Err(e) = write_loop(&*store, revision, rx) {
                    *flag.lock().unwrap() = Some(e);
                }
            })
            .expect("spawn state writer");
        StateWriter { tx: Some(tx), thread: Some(thread), failed }
    }

    /// Queue a state. Returns an error if an earlier write failed (the run must stop).
    pub(super) fn put(&self, exec: &Execution, durability: Durability) -> Result<(), StateError> {
        if let Some(e) = self.failed.lock().unwrap().take() {
            return Err(e);
        }
        let _ = self.tx.as_ref().expect("writer open").send((exec.clone(), durability));
        Ok(())
    }

    /// Wait until everything queued is written.
    pub(super) fn finish(mut self) -> Result<(), StateError> {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.failed.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Progress is written at most this often; a crash loses at most this much progress
/// (actions then run again, with the same idempotency keys).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(20);

fn write_loop(store: &dyn StateStore, mut revision: u64, rx: Receiver<(Execution, Durability)>) -> Result<(), StateError> {
    while let Ok((mut exec, mut durability)) = rx.recv() {
        // Coalesce what arrives within the interval: only the newest state matters, and a
        // durable (terminal) state is written at once.
        let deadline = Instant::now() + PROGRESS_INTERVAL;
        while durability == Durability::Eventual {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((newer, d)) => {
                    exec = newer;
                    durability = d;
                }
                Err(_) => break,
            }
        }
        revision = store.put(&exec, Some(revision), durability)?;
    }
    Ok(())
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
