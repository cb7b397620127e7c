//! Backstops: a change an API call makes (approve, reject, stop, retry, wake) is written to
//! the record, then its jobs are queued and the lanes told. Nothing delivers an API call
//! again, so an engine killed between the write and the queueing would leave the execution
//! running with nobody to run it. Before writing such a change on a shared queue, the engine
//! queues a *backstop*: a message due a few seconds later that queues again whatever of the
//! change's follow-up the record still holds outstanding. The queue drops a job pushed twice
//! within its window (same message id) and lane arrivals repeat harmlessly, so when the engine
//! lived, the backstop changes nothing.
use super::jobs::{Settled, message_id};
use super::*;
use crate::queue::Delivery;
use crate::scheduler::Command;

/// How long after the change its backstop looks: the engine that wrote it has queued its
/// follow-up well before then unless it died.
const BACKSTOP_AFTER: Duration = Duration::from_secs(3);

/// How many times (a second apart) a backstop waits for its change to be recorded before it
/// concludes the change never was (its engine died before writing it, or the write lost a race
/// and was tried again under another number).
const WAITS_FOR_CHANGE: u64 = 30;

/// How old a backstop may be and still queue jobs: the queue drops a job pushed twice only
/// within its hour-long window, so a backstop delivered later than this (a queue stalled that
/// long) could queue a second copy of a job its engine did queue, and the action would run
/// twice. Past it, the engines' recovery of stale executions is what is left.
const QUEUES_JOBS_FOR: Duration = Duration::from_secs(50 * 60);

/// How old a backstop may be and still publish its change's events: the bus drops an event
/// published twice only within two minutes.
const PUBLISHES_FOR: Duration = Duration::from_secs(90);

/// What a backstop re-drives: the follow-up of change number `change`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backstop {
    /// The change's number in the record's outbox.
    pub change: u64,
    /// Tells apart the backstops of two calls racing to write the same change number (the
    /// loser writes again under the next one): each keeps its own message id.
    #[serde(default)]
    pub nonce: String,
    /// Message ids of the jobs it queued.
    pub jobs: Vec<String>,
    /// The stage it began entering.
    pub enter: Option<usize>,
    /// The stages it left.
    pub leave: Vec<usize>,
}

impl Backstop {
    /// The backstop job of a change about to be written to `exec` (stamped: its outbox holds
    /// the change's number), which queues `jobs` and carries out `commands`; none when the
    /// change has no follow-up.
    pub(in crate::service) fn job(
        exec: &Execution,
        jobs: &[JobMessage],
        commands: &[Command],
    ) -> Option<JobMessage> {
        let mut backstop = Backstop {
            change: exec.outbox.change,
            nonce: ulid::Ulid::new().to_string(),
            jobs: jobs.iter().map(message_id).collect(),
            enter: None,
            leave: Vec::new(),
        };
        for c in commands {
            match c {
                Command::Enter { stage } => backstop.enter = Some(*stage),
                Command::Leave { stage } => backstop.leave.push(*stage),
                _ => {}
            }
        }
        if backstop.jobs.is_empty() && backstop.enter.is_none() && backstop.leave.is_empty() {
            return None;
        }
        Some(JobMessage {
            tenant: exec.tenant.clone(),
            execution_id: exec.execution_id.clone(),
            stage: 0,
            action: 0,
            attempt: 0,
            not_before: crate::clock::now().0 + BACKSTOP_AFTER.as_millis() as u64,
            expire: false,
            check: None,
            backstop: Some(backstop),
        })
    }
}

impl Service {
    /// Handle a backstop of `exec` (read from the store; ended, it may still owe its lanes
    /// departures): once due and once its
    /// change is recorded, queue again the jobs of that change the record still holds
    /// outstanding (runs nobody holds), publish the last change's events if another engine
    /// wrote it, and repeat its lane arrival and departures that still stand.
    pub(in crate::service) async fn redrive(
        &self,
        exec: &Execution,
        job: &JobMessage,
        backstop: &Backstop,
        delivery: &Delivery,
    ) -> Result<Settled, String> {
        let now = crate::clock::now().0;
        if job.not_before > now {
            delivery
                .nak(Duration::from_millis(job.not_before - now))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Settled::Deferred);
        }
        if exec.outbox.change < backstop.change {
            if delivery.delivered < WAITS_FOR_CHANGE {
                delivery
                    .nak(Duration::from_secs(1))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(Settled::Deferred);
            }
            return Ok(Settled::Done);
        }
        // When it was made: due `BACKSTOP_AFTER` later.
        let age = Duration::from_millis(
            now.saturating_sub(job.not_before) + BACKSTOP_AFTER.as_millis() as u64,
        );
        if age > QUEUES_JOBS_FOR {
            tracing::warn!(
                "a backstop of {}/{} came {} s late: left to recovery",
                job.tenant,
                job.execution_id,
                age.as_secs()
            );
            return Ok(Settled::Done);
        }
        // Only the last change's events are still unsent in the record, and only this one's
        // are this backstop's to publish.
        if exec.outbox.change == backstop.change && age < PUBLISHES_FOR {
            self.republish(exec).await;
        }
        let due: Vec<JobMessage> = outstanding(exec, |_| true)
            .into_iter()
            .filter(|j| backstop.jobs.contains(&message_id(j)))
            .collect();
        self.push_jobs(&due).await;
        let mut lanes = Vec::new();
        if let Some(stage) = backstop.enter.filter(|s| exec.entering == Some(*s)) {
            lanes.push(lanes::After::arrive(exec, stage));
        }
        for &stage in &backstop.leave {
            let left = exec
                .stages
                .get(stage)
                .is_some_and(|s| s.status != Status::InProgress);
            if left && exec.entering != Some(stage) {
                lanes.push(lanes::After::leave(exec, stage));
            }
        }
        self.settle(lanes).await;
        Ok(Settled::Done)
    }
}
