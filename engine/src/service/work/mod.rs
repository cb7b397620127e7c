//! Work: the jobs an execution waits for and the changes their results make — job workers
//! and their chains (`jobs`; a chain's record written behind: `journal`), the lanes of a
//! pipeline's stages and the work that crosses executions (`lanes`, the engine's watched copies
//! of them: `lane_copies`), event wakes (`wakes`) and the workers' places (`places`).
pub(super) mod backstop;
pub(super) mod jobs;
pub(super) mod journal;
pub(super) mod lane_copies;
pub mod lanes;
mod leases;
pub(super) mod places;
pub mod wakes;

use super::*;

/// A job on the queue: which attempt of which action to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobMessage {
    /// Tenant.
    pub tenant: String,
    /// Execution id.
    pub execution_id: String,
    /// Stage index.
    pub stage: usize,
    /// Action index.
    pub action: usize,
    /// Attempt.
    pub attempt: u32,
    /// Not before this time (retry backoff), milliseconds since the epoch.
    #[serde(default)]
    pub not_before: u64,
    /// Not a run: fail the attempt if it is still waiting (an approval's deadline).
    #[serde(default)]
    pub expire: bool,
    /// Not a run: check the stage's condition for this phase (it has custom rules). The
    /// number is the stage's start time, which tells checks of a re-entered stage apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<(crate::scheduler::Phase, u64)>,
    /// Not a run: queue again what an API call's change left to do, had its engine died
    /// before doing it (see `backstop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backstop: Option<backstop::Backstop>,
}

/// The jobs an execution is waiting for: a run of every action in progress, or for one that
/// waits, the job that ends its wait (a timer's next attempt, an approval's deadline). Runs
/// that a job chain holds are left out when `held` says that chain is alive.
pub(in crate::service) fn outstanding(
    exec: &Execution,
    held: impl Fn(&str) -> bool,
) -> Vec<JobMessage> {
    let mut out = Vec::new();
    for (si, stage) in exec.stages.iter().enumerate() {
        for (ai, action) in stage.actions.iter().enumerate() {
            if action.status != Status::InProgress || action.runner.as_deref().is_some_and(&held) {
                continue;
            }
            let mut job = JobMessage {
                tenant: exec.tenant.clone(),
                execution_id: exec.execution_id.clone(),
                stage: si,
                action: ai,
                attempt: action.attempt,
                not_before: 0,
                expire: false,
                check: None,
                backstop: None,
            };
            match action.waiting.as_ref().map(|w| (&w.wake, w)) {
                None => {}
                Some((Wake::Timer(ms), w)) => job.not_before = w.since.0 + ms,
                Some((_, w)) => match w.deadline {
                    Some(deadline) => {
                        job.expire = true;
                        job.not_before = deadline.0;
                    }
                    None => continue, // woken only by an event
                },
            }
            out.push(job);
        }
        if let Some(phase) = stage.checking {
            out.push(check_job(exec, si, phase));
        }
    }
    out
}

/// The job that checks stage `si`'s condition for `phase`.
pub(in crate::service) fn check_job(
    exec: &Execution,
    si: usize,
    phase: crate::scheduler::Phase,
) -> JobMessage {
    let round = exec.stages[si].started_at.map(|t| t.0).unwrap_or(0);
    JobMessage {
        tenant: exec.tenant.clone(),
        execution_id: exec.execution_id.clone(),
        stage: si,
        action: 0,
        attempt: 0,
        not_before: 0,
        expire: false,
        check: Some((phase, round)),
        backstop: None,
    }
}

/// The jobs, notifications and cross-record work that `commands` (just applied to `exec`)
/// ask for.
pub(in crate::service) fn follow_up(
    exec: &Execution,
    commands: Vec<Command>,
) -> (Vec<JobMessage>, Vec<(usize, usize)>, Vec<lanes::After>) {
    let (mut jobs, mut notices, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for c in commands {
        match c {
            Command::RunAction {
                stage,
                action,
                attempt,
                delay_ms,
            } => {
                let not_before = if delay_ms > 0 {
                    crate::clock::now().0 + delay_ms
                } else {
                    0
                };
                jobs.push(JobMessage {
                    tenant: exec.tenant.clone(),
                    execution_id: exec.execution_id.clone(),
                    stage,
                    action,
                    attempt,
                    not_before,
                    expire: false,
                    check: None,
                    backstop: None,
                });
            }
            Command::Await {
                stage,
                action,
                attempt,
            } => {
                let waiting = exec.stages[stage].actions[action].waiting.as_ref();
                if let Some(deadline) = waiting.and_then(|w| w.deadline) {
                    jobs.push(JobMessage {
                        tenant: exec.tenant.clone(),
                        execution_id: exec.execution_id.clone(),
                        stage,
                        action,
                        attempt,
                        not_before: deadline.0,
                        expire: true,
                        check: None,
                        backstop: None,
                    });
                }
                if waiting.is_some_and(|w| w.wake == Wake::Approval) {
                    notices.push((stage, action));
                }
                if let Some(Wake::Event(subject)) = waiting.map(|w| &w.wake) {
                    let waiter = wakes::Waiter {
                        tenant: exec.tenant.clone(),
                        execution: exec.execution_id.clone(),
                        stage,
                        action,
                        attempt,
                    };
                    after.push(lanes::After::AwaitEvent {
                        waiter,
                        subject: subject.clone(),
                    });
                }
            }
            Command::CheckRules { stage, phase } => jobs.push(check_job(exec, stage, phase)),
            Command::Enter { stage } => after.push(lanes::After::arrive(exec, stage)),
            Command::Leave { stage } => after.push(lanes::After::leave(exec, stage)),
            Command::Rollback { stage } => after.push(lanes::After::Rollback {
                tenant: exec.tenant.clone(),
                pipeline: exec.pipeline.clone(),
                stage: exec.stages[stage].name.clone(),
                failed: exec.execution_id.clone(),
            }),
            Command::Finish { .. } => {}
        }
    }
    (jobs, notices, after)
}

impl Service {
    /// Before applying a change to a stored execution: the events of its last change when
    /// another engine (or an earlier run of this one) recorded that, since it may have died
    /// before publishing them. They go out again with the new change's.
    pub(in crate::service) fn unsent(&self, exec: &Execution) -> Vec<Event> {
        if exec.outbox.writer == self.incarnation {
            Vec::new()
        } else {
            crate::bus::outbox_events(exec)
        }
    }

    /// Number a change about to be recorded and keep in the record what its events are
    /// derived from (`before`, and the approvals it began waiting for), and this engine's
    /// `earlier` events still on their way. Returns what to publish once it is recorded:
    /// `unsent`, then its events.
    pub(in crate::service) fn stamp(
        &self,
        exec: &mut Execution,
        before: Snapshot,
        notices: Vec<(usize, usize)>,
        mut unsent: Vec<Event>,
        earlier: Vec<Event>,
    ) -> Vec<Event> {
        let change = exec.outbox.change + 1;
        exec.outbox = crate::scheduler::Outbox {
            change,
            writer: self.incarnation.clone(),
            before: Some(before),
            notices,
            earlier,
        };
        unsent.extend(crate::bus::change_events(exec));
        unsent
    }

    /// Publish the last change's events again unless this engine process recorded it (then
    /// they are on their way): for a cause (job, trigger) delivered again, or at recovery.
    pub(in crate::service) async fn republish(&self, exec: &Execution) {
        self.edges.bus.publish_all(self.unsent(exec)).await;
    }

    /// How long a chain gathers changes before writing them.
    pub(in crate::service) fn gather(&self) -> Duration {
        Duration::from_micros(self.gather_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Make chains gather changes for up to `gather` (zero: write each at once, for tests that
    /// watch writes one by one).
    #[cfg(test)]
    pub(in crate::service) fn gather_for(&self, gather: Duration) {
        self.gather_us.store(
            gather.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Push the outstanding jobs of every execution still running: the embedded queue does
    /// not survive a restart, the records do.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut arrivals = Vec::new();
        for key in self.edges.executions.keys("").await? {
            if !key.contains("/x/") {
                continue;
            }
            if let Some((exec, _)) = get_json::<Execution>(&*self.edges.executions, &key).await?
                && !exec.status.is_terminal()
            {
                self.republish(&exec).await;
                // Every chain of this process died with it.
                self.push_jobs(&outstanding(&exec, |_| false)).await;
                arrivals.extend(
                    exec.entering
                        .map(|stage| lanes::After::arrive(&exec, stage)),
                );
                n += 1;
            }
        }
        // A crash between recording a change and updating the lanes left them behind.
        self.settle(arrivals).await;
        self.reconcile_lanes().await?;
        Ok(n)
    }

    /// A job worker: takes jobs off the queue one at a time, for ever, each once the tenant
    /// of the one before is under its share of the workers (see `places`).
    pub(in crate::service) async fn consume_jobs(&self) {
        let mut last: Option<String> = None;
        loop {
            let mut turn = match last.take() {
                Some(tenant) => Some(self.places.turn_after(&tenant).await),
                None => None,
            };
            let next = self.edges.jobs.next();
            tokio::pin!(next);
            // A turn holds a place of its tenant's share only while a job is about to come:
            // on a quiet queue it ends (the wait for the next job goes on).
            let next = match turn {
                Some(_) => tokio::select! {
                    next = &mut next => next,
                    _ = tokio::time::sleep(places::SHARE_PAUSE) => {
                        turn = None;
                        next.await
                    }
                },
                None => next.await,
            };
            match next {
                Ok(delivery) => last = self.handle_job_in(delivery, turn).await,
                Err(e) => {
                    tracing::warn!("job queue: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Enter stages through their lanes before the change is written: when the lane lets the
    /// execution in at once (the common case), the admission is part of the same write instead
    /// of a second one. Effects on other executions are returned, to be applied after.
    /// `fresh`: the lanes read since the change became due, for the first entry.
    pub(in crate::service) async fn admit_inline(
        &self,
        exec: &mut Execution,
        commands: &mut Vec<Command>,
        fresh: Option<lanes::FreshLanes>,
    ) -> Result<Vec<lanes::After>, KvError> {
        self.enter_inline(exec, commands, fresh, &mut Vec::new())
            .await
    }

    /// [`Service::admit_inline`], noting in `arrived` every stage whose lane the execution
    /// arrived in: a change that is not stored after all (a conflict) must free those places
    /// that the change made again does not hold (see [`lanes::released`]).
    pub(in crate::service) async fn enter_inline(
        &self,
        exec: &mut Execution,
        commands: &mut Vec<Command>,
        mut fresh: Option<lanes::FreshLanes>,
        arrived: &mut Vec<usize>,
    ) -> Result<Vec<lanes::After>, KvError> {
        let mut others = Vec::new();
        while let Some(i) = commands
            .iter()
            .position(|c| matches!(c, Command::Enter { .. }))
        {
            let Command::Enter { stage } = commands.remove(i) else {
                unreachable!("matched above")
            };
            arrived.push(stage);
            let name = exec.stages[stage].name.clone();
            let op = crate::scheduler::lanes::LaneOp::Arrive {
                execution: exec.execution_id.clone(),
                stage: name.clone(),
                mode: exec.mode,
            };
            for effect in self
                .lane_from(&exec.tenant, &exec.pipeline, &op, fresh.take())
                .await?
            {
                match effect {
                    crate::scheduler::lanes::Effect::Admit {
                        execution,
                        stage: s,
                    } if execution == exec.execution_id
                        && s == name
                        && exec.entering == Some(stage) =>
                    {
                        commands.extend(apply(
                            exec,
                            &Input::Admit {
                                stage,
                                at: crate::clock::now(),
                            },
                        ));
                    }
                    other => others.push(lanes::After::Effect {
                        tenant: exec.tenant.clone(),
                        pipeline: exec.pipeline.clone(),
                        effect: other,
                    }),
                }
            }
        }
        Ok(others)
    }
}
