//! This engine's copies of pipelines' lanes, kept current by a watch on each lanes key.
//!
//! A lane change is written with compare-and-swap, so a stale copy can never make a write
//! wrong, only retried. But a change that writes nothing is decided on what the engine knows:
//! that took a fresh read at every stage entry and exit. In `parallel` mode, where every
//! execution passing an enabled transition writes nothing, such a decision is now made on a
//! copy that counts as **current**: one that a watch on its key, established before the copy
//! was read or written, keeps up to date. Every later change reaches the copy through the
//! watch within its delivery lag (milliseconds; about the window a read already has between
//! its reply and the decision taking effect), so a transition disabled on another engine
//! stops the executions that arrive after the change has reached this one. In the other modes,
//! whose no-change decisions guard who is inside a stage, a fresh read still decides.
//!
//! A watch that ends (lost, NATS disconnected, or a bucket that cannot watch) makes the copies
//! of its key no longer current; the next use starts another. A watch unused for [`IDLE`]
//! ends, so an engine keeps watches only on the pipelines it runs.

use crate::kv::{Kv, KvChanges};
use crate::scheduler::lanes::Lanes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an unused watch is kept.
const IDLE: Duration = Duration::from_secs(600);
/// How long to wait before watching a key again after a watch could not start.
const RETRY: Duration = Duration::from_secs(5);

/// The lanes of each pipeline as last read, written or watched.
pub(crate) struct LaneCopies {
    kv: Arc<dyn Kv>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    copies: HashMap<String, Copy>,
    watches: HashMap<String, Watch>,
    generations: u64,
}

struct Copy {
    lanes: Lanes,
    revision: u64,
    /// Kept current by the live watch of this generation.
    current: Option<u64>,
}

struct Watch {
    generation: u64,
    /// Established, and not ended.
    live: bool,
    /// A watch that could not start is not tried again before this.
    retry_at: Option<Instant>,
    last_used: Instant,
}

/// A copy of a pipeline's lanes: the lanes, their revision, and whether the copy is current.
pub(crate) struct Seen {
    pub lanes: Lanes,
    pub revision: u64,
    pub current: bool,
}

/// The live watch (if any) when a read or write was issued: a copy made from its result is
/// current if that watch is still live when the copy is kept.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(Option<u64>);

impl State {
    fn live(&self, key: &str) -> Option<u64> {
        self.watches
            .get(key)
            .filter(|w| w.live)
            .map(|w| w.generation)
    }
}

impl LaneCopies {
    /// Copies of lanes kept in `kv` (the executions bucket).
    pub(crate) fn new(kv: Arc<dyn Kv>) -> Self {
        LaneCopies {
            kv,
            state: Arc::default(),
        }
    }

    /// The copy of `key`, if any; starts watching the key if nobody does.
    pub(crate) fn get(&self, key: &str) -> Option<Seen> {
        self.watch(key);
        let state = self.state.lock().unwrap();
        let live = state.live(key);
        state.copies.get(key).map(|c| Seen {
            lanes: c.lanes.clone(),
            revision: c.revision,
            current: live.is_some() && c.current == live,
        })
    }

    /// Taken before a read or a write of `key` whose result is to be kept.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        Ticket(self.state.lock().unwrap().live(key))
    }

    /// Keep `lanes` at `revision`, read or written under `ticket`, unless a newer copy is kept.
    pub(crate) fn keep(&self, key: &str, lanes: Lanes, revision: u64, ticket: Ticket) {
        let mut state = self.state.lock().unwrap();
        let live = state.live(key);
        let current = ticket.0.filter(|g| live == Some(*g));
        match state.copies.get_mut(key) {
            Some(c) if c.revision > revision => {}
            Some(c) if c.revision == revision => c.current = c.current.or(current),
            _ => {
                state.copies.insert(
                    key.to_string(),
                    Copy {
                        lanes,
                        revision,
                        current,
                    },
                );
            }
        }
    }

    /// Trust the copy of `key` no more (a write whose outcome is unknown): it is tried as a
    /// stale copy would be, and keeps its revision, so that no older copy replaces it.
    pub(crate) fn distrust(&self, key: &str) {
        if let Some(c) = self.state.lock().unwrap().copies.get_mut(key) {
            c.current = None;
        }
    }

    /// Start watching `key` unless a watch exists (or failed to start a moment ago).
    fn watch(&self, key: &str) {
        let generation = {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            if let Some(w) = state.watches.get_mut(key) {
                w.last_used = now;
                if w.retry_at.is_none_or(|at| now < at) {
                    return;
                }
            }
            // Without a runtime (a test calling in from outside one), copies are never current.
            if tokio::runtime::Handle::try_current().is_err() {
                return;
            }
            state.generations += 1;
            let generation = state.generations;
            state.watches.insert(
                key.to_string(),
                Watch {
                    generation,
                    live: false,
                    retry_at: None,
                    last_used: now,
                },
            );
            generation
        };
        let (kv, state, key) = (self.kv.clone(), self.state.clone(), key.to_string());
        tokio::spawn(async move {
            match kv.watch(&key).await {
                Ok(Some(changes)) => follow(&state, &key, generation, changes).await,
                Ok(None) => retry_later(&state, &key, generation, None),
                Err(e) => retry_later(&state, &key, generation, Some(e.to_string())),
            }
        });
    }
}

/// A watch that could not start: not tried again for a while (a bucket that cannot watch:
/// not for [`IDLE`]).
fn retry_later(state: &Mutex<State>, key: &str, generation: u64, error: Option<String>) {
    if let Some(e) = &error {
        tracing::warn!("watching the lanes `{key}` failed ({e}); reading them instead");
    }
    let mut state = state.lock().unwrap();
    if let Some(w) = state
        .watches
        .get_mut(key)
        .filter(|w| w.generation == generation)
    {
        w.retry_at = Some(Instant::now() + if error.is_some() { RETRY } else { IDLE });
    }
}

/// Apply a live watch's changes to the copy of `key` until the watch ends or idles.
async fn follow(state: &Mutex<State>, key: &str, generation: u64, mut changes: KvChanges) {
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + IDLE / 4, IDLE / 4);
    {
        let mut s = state.lock().unwrap();
        match s
            .watches
            .get_mut(key)
            .filter(|w| w.generation == generation)
        {
            Some(w) => w.live = true,
            None => return,
        }
    }
    loop {
        tokio::select! {
            change = changes.next() => {
                let mut s = state.lock().unwrap();
                match change {
                    Some(Ok(Some((bytes, revision)))) => match serde_json::from_slice::<Lanes>(&bytes) {
                        Ok(lanes) => {
                            if s.copies.get(key).is_none_or(|c| c.revision < revision) {
                                s.copies.insert(key.to_string(), Copy { lanes, revision, current: Some(generation) });
                            }
                        }
                        Err(e) => {
                            tracing::warn!("lanes `{key}` unreadable ({e}); no longer watched");
                            break;
                        }
                    },
                    Some(Ok(None)) => {
                        s.copies.remove(key);
                    }
                    Some(Err(e)) => {
                        tracing::warn!("watch of the lanes `{key}` lost ({e}); reading them instead");
                        break;
                    }
                    None => break,
                }
            }
            _ = idle.tick() => {
                let s = state.lock().unwrap();
                if s.watches.get(key).is_none_or(|w| w.generation != generation || w.last_used.elapsed() > IDLE) {
                    break;
                }
            }
        }
    }
    // Ended: the copies of the key are current no longer, and the next use watches again.
    let mut s = state.lock().unwrap();
    if s.watches
        .get(key)
        .is_some_and(|w| w.generation == generation)
    {
        s.watches.remove(key);
    }
    if let Some(c) = s.copies.get_mut(key) {
        c.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(mode: crate::scheduler::lanes::Mode) -> Lanes {
        Lanes {
            mode,
            ..Lanes::default()
        }
    }

    /// A copy is replaced only by a newer one, also after it is distrusted (a write whose
    /// outcome is unknown): an older read arriving late never takes its place.
    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        use crate::scheduler::lanes::Mode;
        let dir = tempfile::tempdir().unwrap();
        let db = crate::kv::RedbKv::open_database(&dir.path().join("kv.redb")).unwrap();
        let copies = LaneCopies::new(Arc::new(crate::kv::RedbKv::bucket(db, "x").unwrap()));
        let key = "default/lane/p";
        copies.keep(key, lanes(Mode::Queued), 7, copies.ticket(key));
        copies.keep(key, lanes(Mode::Parallel), 6, copies.ticket(key));
        assert_eq!(
            copies.get(key).map(|c| (c.revision, c.lanes.mode)),
            Some((7, Mode::Queued))
        );
        copies.distrust(key);
        copies.keep(key, lanes(Mode::Parallel), 6, copies.ticket(key));
        let seen = copies.get(key).unwrap();
        assert_eq!(
            (seen.revision, seen.lanes.mode, seen.current),
            (7, Mode::Queued, false)
        );
        copies.keep(key, lanes(Mode::Parallel), 8, copies.ticket(key));
        assert_eq!(copies.get(key).map(|c| c.revision), Some(8));
    }
}
