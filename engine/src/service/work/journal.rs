//! A chain's copy of its execution record: each result applied at once, written behind.
//!
//! A job chain (see `jobs`) applies each result to its own copy of the record and goes on
//! with what the result made runnable while the change is written; changes that come in while
//! a write is in flight go out together in the next one. A chain of short actions is then not
//! held up by one store round trip per action.
//!
//! **What may run before the change that made it runnable is stored**: only a *contained*
//! action, whose plugin declares no side effects and which is granted no host program, network
//! origin, NATS subject or writable directory. If the engine dies first, the chain's delivery
//! comes back to another engine, which runs again whatever the stored record shows running:
//! for a contained action, harmless (its outputs are content-addressed). Any other action
//! waits until the record that shows it running is stored, as before.
//!
//! **Nothing leaves the engine before it is stored**: a change's events are sent, the jobs it
//! hands to other engines queued, and its effects on other records (lanes) applied only once a
//! write that holds it succeeded. Every write's outbox carries the events of the changes before
//! it that the bus has not stored yet, so a successor sends them if this engine dies.
//!
//! **Changes are gathered while the chain's contained runs go on**: a write waits until every run
//! the chain started has its result applied, or a run waits for a change to be stored, or a
//! change hands jobs to other engines, or [`GATHER`] has passed. A chain of short contained
//! actions then costs one write at its end instead of one per action (two in a row at its end
//! when the last result comes while an earlier write is in flight), and its progress is still
//! stored and told within a few milliseconds when an action takes longer.
//!
//! **A write that conflicts** (someone else changed the record: an approval, a stop, a job run
//! elsewhere) is made again on the stored record with the chain's unwritten results applied
//! anew, in order. Runs the chain already started are not started twice: the new record names
//! the chain as their runner; whatever else the results now make runnable is queued.
//!
//! **A new execution's record** is created by its trigger chain's first write ([`Base::Unwritten`]),
//! gathered like any other: its first contained runs go on before it exists. An early start
//! (see `early`) gives that write a *gate*, which must confirm before the record is created. If
//! another engine created the record first, or the gate refuses, nothing of the chain is sent.
//!
//! **At a chain's end**, a record whose last write carried earlier changes' events (kept until
//! the bus stores them) is written once more without them ([`Service::compact`]).

use crate::bus::{Event, Snapshot};
use crate::kv::KvError;
use crate::scheduler::{Execution, Input, apply};
use crate::service::jobs::Kept;
use crate::service::{JobMessage, Service, lanes};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a chain gathers changes before writing them while its contained runs go on.
pub(in crate::service) const GATHER: Duration = Duration::from_millis(2);

/// A chain's copy of one execution record.
pub(in crate::service) struct Journal {
    /// The record's key.
    pub(in crate::service) key: String,
    /// The chain's lease id, named in the record as the runner of what the chain runs.
    lease: String,
    head: tokio::sync::Mutex<Head>,
    stored: tokio::sync::watch::Sender<Stored>,
    /// Runs of this chain whose results are not applied yet: more changes are coming.
    running: AtomicUsize,
    /// Runs waiting until a change is stored.
    waiting: AtomicUsize,
    /// Wakes a write that gathers changes (see [`Journal::due`]).
    wake: tokio::sync::Notify,
    /// How long a write gathers changes at most.
    gather: Duration,
    /// What the record's creation waits for (an early start: see `early`), until it is taken.
    gate: std::sync::Mutex<Option<Gate>>,
    /// The gate refused: the record must not be created (and was not).
    refused: std::sync::atomic::AtomicBool,
}

/// What a new record's creation waits for: the trigger's claim written and its pipeline read,
/// confirming what the chain started from (an error: they do not).
pub(in crate::service) type Gate = futures_util::future::BoxFuture<'static, Result<(), String>>;

/// A run of the chain counted in [`Journal::running`] until its result is applied (or it ends
/// without one): dropped then.
pub(in crate::service) struct Running(std::sync::Arc<Journal>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

/// A run waiting until a change is stored, counted in [`Journal::waiting`].
struct Waiting<'a>(&'a Journal);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How far the chain's changes are stored.
#[derive(Clone, Copy, Default)]
struct Stored {
    /// Every change numbered up to this one is stored (or was undone by a conflict).
    upto: u64,
    /// Writing failed: nothing more will be stored by this chain.
    failed: bool,
}

struct Head {
    /// The record with every change applied.
    exec: Execution,
    /// The stored revision it was last written at; none while the record is not created yet
    /// (a new execution whose creation is its chain's first write).
    revision: Option<u64>,
    /// Changes applied and not stored yet, in order.
    pending: Vec<Change>,
    /// Changes applied so far (their numbers).
    applied: u64,
    /// A write is in flight: changes applied meanwhile go out with the next one.
    writing: bool,
    /// The runs this chain started (stage, action, attempt).
    started: HashSet<(usize, usize, u32)>,
    /// Lane work of changes a conflict undid: the lanes were changed already, so it stands.
    carried: Vec<lanes::After>,
    /// Why writing failed.
    failed: Option<String>,
}

/// One applied result, and what to do once it is stored.
pub(in crate::service) struct Change {
    input: Input,
    publish: Vec<Event>,
    queued: Vec<JobMessage>,
    after: Vec<lanes::After>,
    /// Lane work of entering stages (the lanes were changed already).
    entered: Vec<lanes::After>,
    /// The stages this change let the execution into the lanes of, before it is stored: if a
    /// conflict undoes it, the places the change made again does not hold are freed.
    arrived: Vec<usize>,
}

/// What applying a result to a chain's record leaves to the caller.
pub(in crate::service) struct Applied {
    /// Jobs to run here (their start is the change numbered `change`).
    pub(in crate::service) kept: Kept,
    /// The change's number.
    pub(in crate::service) change: u64,
    /// No write was in flight: the caller writes (see [`Service::write_behind`]).
    pub(in crate::service) write: bool,
    /// Lane work for a result that changed nothing in the record.
    pub(in crate::service) settle: Vec<lanes::After>,
}

impl Journal {
    /// A chain's copy of the record `exec`, stored as `base` says, whose writes gather changes
    /// for up to `gather`; `runs` of the chain are about to start from it.
    pub(in crate::service) fn new(
        key: String,
        lease: String,
        exec: Execution,
        base: Base,
        gather: Duration,
        runs: usize,
    ) -> std::sync::Arc<Self> {
        let (revision, pending, writing, gate) = match base {
            Base::Stored(revision) => (Some(revision), Vec::new(), false, None),
            // (Its creation is written by whoever made the journal.)
            Base::Unwritten(start, gate) => (None, vec![start], true, gate),
        };
        let applied = pending.len() as u64;
        let head = Head {
            exec,
            revision,
            pending,
            applied,
            writing,
            started: HashSet::new(),
            carried: Vec::new(),
            failed: None,
        };
        let stored = tokio::sync::watch::channel(Stored::default()).0;
        std::sync::Arc::new(Journal {
            key,
            lease,
            head: tokio::sync::Mutex::new(head),
            stored,
            running: AtomicUsize::new(runs),
            waiting: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            gather,
            gate: std::sync::Mutex::new(gate),
            refused: Default::default(),
        })
    }

    /// Whether the record's creation was refused by its gate (nothing of the chain stands).
    pub(in crate::service) fn refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    /// One of the runs counted as started (by [`Journal::new`] or when a change kept it), until
    /// its result is applied.
    pub(in crate::service) fn running(self: &std::sync::Arc<Self>) -> Running {
        Running(self.clone())
    }

    /// Wait until the changes applied so far should be written (at once when there are none:
    /// the caller finds that out): no run of the chain is still
    /// going (nothing more is coming soon), a run waits for a change to be stored, a change
    /// hands jobs to other engines, or `gather` has passed since `since`.
    async fn due(&self, since: tokio::time::Instant) {
        if self.gather.is_zero() {
            return;
        }
        let deadline = since + self.gather;
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (nothing, queues) = {
                let head = self.head.lock().await;
                (
                    head.pending.is_empty(),
                    head.pending.iter().any(|c| !c.queued.is_empty()),
                )
            };
            if nothing
                || queues
                || self.running.load(Ordering::Acquire) == 0
                || self.waiting.load(Ordering::Acquire) > 0
            {
                return;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// The record with every change applied so far.
    pub(in crate::service) async fn latest(&self) -> Execution {
        self.head.lock().await.exec.clone()
    }

    /// Wait until change `change` is stored; an error if the chain can no longer store it.
    pub(in crate::service) async fn stored(&self, change: u64) -> Result<(), String> {
        let mut rx = self.stored.subscribe();
        let behind = rx.borrow().upto < change;
        let _waiting = behind.then(|| {
            // A write gathering changes goes now.
            self.waiting.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
            Waiting(self)
        });
        match rx.wait_for(|s| s.failed || s.upto >= change).await {
            Ok(s) if !s.failed => Ok(()),
            _ => Err("the chain's changes could not be stored".into()),
        }
    }

    /// Count the jobs `kept` as started by this chain.
    fn started(head: &mut Head, kept: &Kept) {
        head.started
            .extend(kept.iter().map(|(j, _)| (j.stage, j.action, j.attempt)));
    }
}

/// Where a chain's copy of a record starts from.
// One per chain, moved rarely: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(in crate::service) enum Base {
    /// The record as stored at this revision.
    Stored(u64),
    /// A new execution's record, not created yet: its start is the change numbered 1, and the
    /// chain's first write creates it (once the gate, if any, confirms it). Its first contained
    /// runs go on meanwhile.
    Unwritten(Change, Option<Gate>),
}

impl Change {
    /// A new execution's start: its events, the jobs it queues and its lane work, all for once
    /// the record is created.
    pub(in crate::service) fn start(
        input: Input,
        publish: Vec<Event>,
        queued: Vec<JobMessage>,
        after: Vec<lanes::After>,
    ) -> Self {
        Change {
            input,
            publish,
            queued,
            after,
            entered: Vec::new(),
            arrived: Vec::new(),
        }
    }
}

impl Service {
    /// Apply a result to the chain's record. Returns the jobs it made runnable that run here,
    /// and whether the caller must write the record ([`Service::write_behind`]): when no write
    /// is in flight; otherwise the change goes out with the next one.
    pub(in crate::service) async fn apply_to(
        &self,
        journal: &Journal,
        input: &Input,
    ) -> Result<Applied, String> {
        let mut head = journal.head.lock().await;
        if let Some(e) = &head.failed {
            return Err(e.clone());
        }
        // The lanes may be briefly unreachable (a NATS restart): keep the result.
        let mut delay = Duration::from_millis(100);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        let (kept, settle) = loop {
            match self.change(journal, &mut head, input.clone(), true).await {
                Err(KvError::Backend(e)) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!("applying a result failed ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => break other.map_err(|e| e.to_string())?,
            }
        };
        let write = !head.pending.is_empty() && !head.writing;
        head.writing |= write;
        Ok(Applied {
            kept,
            change: head.applied,
            write,
            settle,
        })
    }

    /// Apply `input` to the head as one change (none if it changes nothing). With `keep`, the
    /// jobs it makes runnable are split between this chain and the queue as usual; without
    /// (a change made again after a conflict), only runs the chain started are kept, named as
    /// the chain's, and everything else is queued. Returns the kept jobs, and lane work for a
    /// change that left the record as it was.
    async fn change(
        &self,
        journal: &Journal,
        head: &mut Head,
        input: Input,
        keep: bool,
    ) -> Result<(Kept, Vec<lanes::After>), KvError> {
        // (Applied to a copy: a failed lane read leaves the head as it was.)
        let mut exec = head.exec.clone();
        let unsent = self.unsent(&exec);
        let before = Snapshot::of(&exec);
        let mut commands = apply(&mut exec, &input);
        let mut arrived = Vec::new();
        let entered = self
            .enter_inline(&mut exec, &mut commands, None, &mut arrived)
            .await?;
        if commands.is_empty() && before == Snapshot::of(&exec) {
            return Ok((Vec::new(), entered));
        }
        let (jobs, notices, after) = crate::service::follow_up(&exec, commands);
        let (kept, queued) = if keep {
            let (kept, queued) = self.keep_for_chain(&mut exec, &journal.lease, jobs);
            Journal::started(head, &kept);
            journal.running.fetch_add(kept.len(), Ordering::AcqRel);
            (kept, queued)
        } else {
            (
                Vec::new(),
                requeue(&mut exec, &journal.lease, &head.started, jobs),
            )
        };
        // This engine's events not stored yet: those sent, then those of earlier changes
        // still to be written.
        let mut earlier = self.in_flight(&journal.key);
        earlier.extend(head.pending.iter().flat_map(|c| c.publish.iter().cloned()));
        let publish = self.stamp(&mut exec, before, notices, unsent, earlier);
        head.exec = exec;
        head.applied += 1;
        head.pending.push(Change {
            input,
            publish,
            queued,
            after,
            entered,
            arrived,
        });
        Ok((kept, Vec::new()))
    }

    /// Write the chain's record until every change applied is stored, then send their events,
    /// queue their jobs and do their lane work. Called by whoever applied a change while no
    /// write was in flight; changes applied meanwhile are written by the same call.
    pub(in crate::service) async fn write_behind(&self, journal: &Journal) -> Result<(), String> {
        let kv = &*self.edges.executions;
        let mut delay = Duration::from_millis(100);
        let mut give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        // A write whose outcome is unknown (the store failed to answer): it may be stored.
        let mut uncertain: Option<Attempt> = None;
        let mut since = tokio::time::Instant::now();
        let result = loop {
            journal.due(since).await;
            let attempt = {
                let mut head = journal.head.lock().await;
                if head.pending.is_empty() {
                    head.writing = false;
                    // Changes a conflict undid are settled too: nobody waits for them. Their
                    // lane work stands (the lanes were changed already).
                    let applied = head.applied;
                    let carried = std::mem::take(&mut head.carried);
                    drop(head);
                    journal.stored.send_modify(|s| s.upto = s.upto.max(applied));
                    self.settle(carried).await;
                    break Ok(());
                }
                match serde_json::to_vec(&head.exec) {
                    Ok(bytes) => Attempt {
                        bytes,
                        revision: head.revision,
                        count: head.pending.len(),
                        upto: head.applied,
                    },
                    Err(e) => break Err(e.to_string()),
                }
            };
            let gate = journal.gate.lock().unwrap().take();
            if let Some(gate) = gate
                && let Err(why) = gate.await
            {
                journal.refused.store(true, Ordering::Release);
                break Err(why);
            }
            let written = match attempt.revision {
                Some(revision) => {
                    kv.update(&journal.key, attempt.bytes.clone(), revision)
                        .await
                }
                None => kv.create(&journal.key, attempt.bytes.clone()).await,
            };
            let failure = match written {
                Ok(revision) => {
                    uncertain = None;
                    self.stored_as(journal, revision, &attempt).await;
                    since = tokio::time::Instant::now();
                    delay = Duration::from_millis(100);
                    give_up = tokio::time::Instant::now() + Duration::from_secs(60);
                    continue;
                }
                Err(KvError::Conflict { .. }) => {
                    match self.reapply(journal, uncertain.take()).await {
                        Ok(Reapplied::Again) => continue,
                        Ok(Reapplied::Landed(revision, landed)) => {
                            self.stored_as(journal, revision, &landed).await;
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => {
                    uncertain = Some(attempt);
                    e
                }
            };
            // The store may be briefly unreachable (a NATS restart): keep the results.
            match failure {
                KvError::Backend(e) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!("recording results failed ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                e => break Err(e.to_string()),
            }
        };
        if let Err(e) = &result {
            let mut head = journal.head.lock().await;
            head.failed = Some(e.clone());
            head.writing = false;
            // The lanes were changed for these entries already: that stands.
            let mut entered = std::mem::take(&mut head.carried);
            entered.extend(
                head.pending
                    .iter_mut()
                    .flat_map(|c| std::mem::take(&mut c.entered)),
            );
            drop(head);
            journal.stored.send_modify(|s| s.failed = true);
            self.settle(entered).await;
        }
        result
    }

    /// The write `attempt` is stored, at `revision`: send its changes' events, queue their
    /// jobs and do their lane work.
    async fn stored_as(&self, journal: &Journal, revision: u64, attempt: &Attempt) {
        let mut head = journal.head.lock().await;
        if head.revision.is_none() {
            // Created: a caller of `start` may be waiting for it.
            let exec = &head.exec;
            if let Some(trigger) = &exec.trigger {
                self.awaited.wake(
                    &crate::service::triggers::claim_key(
                        &exec.tenant,
                        &exec.pipeline,
                        &trigger.event_id,
                    ),
                    &exec.execution_id,
                );
            }
        }
        head.revision = Some(revision);
        let (mut events, mut queued, mut lane_work) =
            (Vec::new(), Vec::new(), std::mem::take(&mut head.carried));
        for change in head.pending.drain(..attempt.count) {
            events.extend(change.publish);
            queued.extend(change.queued);
            lane_work.extend(change.entered);
            lane_work.extend(change.after);
        }
        // Counted as in flight before the head is let go: a change applied from now on
        // carries them.
        self.sending_now(&journal.key, events);
        drop(head);
        journal
            .stored
            .send_modify(|s| s.upto = s.upto.max(attempt.upto));
        futures_util::future::join(self.push_jobs(&queued), self.settle(lane_work)).await;
    }

    /// At a chain's end, once every event this engine sent for the execution is stored: if the
    /// record as last written still carries events of earlier changes in its outbox (a chain's
    /// write gathers several changes, whose events must stay there until stored), write it once
    /// more without them, so that a record that now rests (waiting for an approval, or ended)
    /// stays small. Best effort: a conflict (someone changed the record, and so its outbox) or a
    /// failure leaves it as it is.
    pub(in crate::service) async fn compact(&self, journal: &Journal) {
        let mut head = journal.head.lock().await;
        let Some(revision) = head.revision else {
            return;
        };
        if head.failed.is_some() || !head.pending.is_empty() || head.exec.outbox.earlier.is_empty()
        {
            return;
        }
        let mut exec = head.exec.clone();
        exec.outbox.earlier.clear();
        let Ok(bytes) = serde_json::to_vec(&exec) else {
            return;
        };
        if let Ok(revision) = self
            .edges
            .executions
            .update(&journal.key, bytes, revision)
            .await
        {
            head.exec = exec;
            head.revision = Some(revision);
        }
    }

    /// After a conflict: read the stored record. If it is the `uncertain` write, that write
    /// was stored after all. Otherwise apply the chain's unwritten results to it again, in
    /// order. (All or nothing: a failed read leaves the head as it was.)
    async fn reapply(
        &self,
        journal: &Journal,
        uncertain: Option<Attempt>,
    ) -> Result<Reapplied, KvError> {
        let kv = &*self.edges.executions;
        let (bytes, revision) = kv
            .get(&journal.key)
            .await?
            .ok_or_else(|| KvError::Backend(format!("execution {} vanished", journal.key)))?;
        if let Some(attempt) = uncertain.filter(|a| a.bytes == bytes) {
            return Ok(Reapplied::Landed(revision, attempt));
        }
        if journal.head.lock().await.revision.is_none() {
            // Created by another engine (the trigger delivered to both): theirs to run. What
            // ran here was contained; none of it is sent.
            return Err(KvError::Conflict {
                key: journal.key.clone(),
            });
        }
        let exec: Execution = serde_json::from_slice(&bytes)
            .map_err(|e| KvError::Backend(format!("execution {} unreadable: {e}", journal.key)))?;
        let mut head = journal.head.lock().await;
        let mut again = Head {
            exec,
            revision: Some(revision),
            pending: Vec::new(),
            applied: head.applied,
            writing: true,
            started: head.started.clone(),
            carried: Vec::new(),
            failed: None,
        };
        for change in &head.pending {
            let (_, entered) = self
                .change(journal, &mut again, change.input.clone(), false)
                .await?;
            again.carried.extend(entered);
        }
        // Stages the undone changes entered ahead of the store, which the record as it now
        // stands does not hold (a stop came first): their places are freed.
        let arrived: Vec<usize> = head
            .pending
            .iter()
            .flat_map(|c| c.arrived.iter().copied())
            .collect();
        again.carried.extend(lanes::released(&again.exec, &arrived));
        again.carried.append(&mut head.carried);
        again.carried.extend(
            head.pending
                .iter_mut()
                .flat_map(|c| std::mem::take(&mut c.entered)),
        );
        *head = again;
        Ok(Reapplied::Again)
    }
}

/// One write of the chain's record: what was sent, at which revision, holding which changes.
struct Attempt {
    bytes: Vec<u8>,
    /// None: the record's creation.
    revision: Option<u64>,
    /// The first `count` pending changes, numbered up to `upto`.
    count: usize,
    upto: u64,
}

/// What a conflict turned out to be.
enum Reapplied {
    /// The stored record was changed by someone else: the head now holds it, with the chain's
    /// results applied again.
    Again,
    /// It is the uncertain write, stored after all (at this revision).
    Landed(u64, Attempt),
}

/// Jobs made runnable again by a change made after a conflict: runs this chain started stay
/// the chain's (named its runner, not started again); everything else is queued.
fn requeue(
    exec: &mut Execution,
    lease: &str,
    started: &HashSet<(usize, usize, u32)>,
    jobs: Vec<JobMessage>,
) -> Vec<JobMessage> {
    crate::service::jobs::forget_ended_runners(exec);
    let mut queued = Vec::new();
    for job in jobs {
        let ours = job.check.is_none() && started.contains(&(job.stage, job.action, job.attempt));
        if job.check.is_none() {
            exec.stages[job.stage].actions[job.action].runner = ours.then(|| lease.to_string());
        }
        if !ours {
            queued.push(job);
        }
    }
    queued
}
