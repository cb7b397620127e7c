//! Work that crosses executions: stage lanes (execution modes, disabled transitions),
//! rollbacks, and the index of actions waiting for NATS events. A pipeline's lanes are one record, `<tenant>/lane/<pipeline>`, next to its
//! executions and changed with compare-and-swap; the rules are the pure
//! [`crate::scheduler::lanes::step`].
//!
//! Order of writes: an execution records that it wants to enter a stage (`entering`), then the
//! lanes record the arrival, then the execution records its admission. A crash between two
//! writes leaves the records disagreeing; [`Service::recover`] (every engine start) puts them
//! back in step, and every step is idempotent.
use crate::bus::Snapshot;
use crate::kv::{KvError, get_json};
use crate::scheduler::lanes::{self, Disabled, Effect, LaneOp, Lanes, Mode};
use crate::scheduler::{Execution, Input, Status, TriggerInfo, apply};
use crate::service::{Service, exec_key};
use sluice_api::ApiError;
use std::collections::VecDeque;

/// Cross-record work caused by a recorded change of one execution.
#[derive(Clone, Debug)]
pub enum After {
    /// Change a pipeline's lanes.
    Lane {
        /// Tenant.
        tenant: String,
        /// Pipeline.
        pipeline: String,
        /// The change.
        op: LaneOp,
    },
    /// Tell an execution what a lane change means for it.
    Effect {
        /// Tenant.
        tenant: String,
        /// Pipeline.
        pipeline: String,
        /// The effect.
        effect: Effect,
    },
    /// Record that an action waits for an event on a NATS subject.
    AwaitEvent {
        /// Who waits.
        waiter: crate::service::wakes::Waiter,
        /// For what.
        subject: String,
    },
    /// Roll `stage` back to the last execution that succeeded in it (a stage condition).
    Rollback {
        /// Tenant.
        tenant: String,
        /// Pipeline.
        pipeline: String,
        /// Stage name.
        stage: String,
        /// The execution whose condition asked for it.
        failed: String,
    },
}

impl After {
    /// `exec` waits to enter stage `stage`.
    pub fn arrive(exec: &Execution, stage: usize) -> After {
        After::Lane {
            tenant: exec.tenant.clone(),
            pipeline: exec.pipeline.clone(),
            op: LaneOp::Arrive {
                execution: exec.execution_id.clone(),
                stage: exec.stages[stage].name.clone(),
                mode: exec.mode,
            },
        }
    }

    /// `exec` left stage `stage` (or stopped waiting for it).
    pub fn leave(exec: &Execution, stage: usize) -> After {
        After::Lane {
            tenant: exec.tenant.clone(),
            pipeline: exec.pipeline.clone(),
            op: LaneOp::Leave {
                execution: exec.execution_id.clone(),
                stage: exec.stages[stage].name.clone(),
            },
        }
    }
}

/// How often [`Service::repair_lanes`] rebuilds lanes that changed while it read the executions.
const REPAIR_TRIES: usize = 10;

/// The lanes the records of `execs` (one pipeline's) call for, keeping the disabled transitions
/// and the mode of `current`; and what letting those waiting in means for them. Those waiting
/// keep the order they had, and the others follow in the order they started.
fn rebuild(current: Option<&Lanes>, execs: &[Execution]) -> (Lanes, Vec<Effect>) {
    let mode = current
        .map(|l| l.mode)
        .or_else(|| {
            execs
                .iter()
                .max_by(|a, b| a.execution_id.cmp(&b.execution_id))
                .map(|e| e.mode)
        })
        .unwrap_or_default();
    let mut lanes = Lanes {
        mode,
        ..Lanes::default()
    };
    for (stage, lane) in current.into_iter().flat_map(|l| &l.stages) {
        if let Some(d) = &lane.disabled {
            lanes.stages.entry(stage.clone()).or_default().disabled = Some(d.clone());
        }
    }
    let mut live: Vec<&Execution> = execs
        .iter()
        .filter(|e| e.gated && !e.status.is_terminal())
        .collect();
    live.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
    if mode != Mode::Parallel {
        // (In `parallel` mode nobody is recorded inside.)
        for e in &live {
            for (si, s) in e.stages.iter().enumerate() {
                if e.entering != Some(si)
                    && matches!(s.status, Status::InProgress | Status::Stopping)
                {
                    let lane = lanes.stages.entry(s.name.clone()).or_default();
                    lane.inside.push(e.execution_id.clone());
                }
            }
        }
    }
    let was_waiting = |e: &Execution, stage: &str| {
        current
            .and_then(|l| l.stages.get(stage))
            .and_then(|l| l.waiting.iter().position(|w| *w == e.execution_id))
            .unwrap_or(usize::MAX)
    };
    let mut waiting: Vec<(usize, &Execution, String)> = live
        .iter()
        .filter_map(|e| {
            let stage = e.stages.get(e.entering?)?.name.clone();
            Some((was_waiting(e, &stage), *e, stage))
        })
        .collect();
    waiting.sort_by(|a, b| (a.0, &a.1.execution_id).cmp(&(b.0, &b.1.execution_id)));
    let mut effects = Vec::new();
    for (_, e, stage) in waiting {
        effects.extend(lanes::step(
            &mut lanes,
            &LaneOp::Arrive {
                execution: e.execution_id.clone(),
                stage,
                mode,
            },
        ));
    }
    (lanes, effects)
}

/// The stages in `arrived` (where changes that a conflict undid let `exec` into the lane)
/// that `exec`, as it now stands, neither waits for nor is inside: their places are freed.
/// Without this a stop recorded while a result was applied ahead of the store leaves the
/// execution inside the next stage's lane, and every later one waits before it.
pub(in crate::service) fn released(exec: &Execution, arrived: &[usize]) -> Vec<After> {
    let holds = |si: usize| {
        !exec.status.is_terminal()
            && (exec.entering == Some(si)
                || matches!(
                    exec.stages[si].status,
                    Status::InProgress | Status::Stopping
                ))
    };
    let mut stages: Vec<usize> = arrived
        .iter()
        .copied()
        .filter(|si| *si < exec.stages.len())
        .collect();
    stages.sort_unstable();
    stages.dedup();
    stages
        .into_iter()
        .filter(|si| !holds(*si))
        .map(|si| After::leave(exec, si))
        .collect()
}

/// A pipeline's lanes as read from the store (none yet: `None`), with their revision.
pub(crate) struct FreshLanes(Option<(Lanes, u64)>);

pub(in crate::service) fn lane_key(tenant: &str, pipeline: &str) -> String {
    format!("{tenant}/lane/{pipeline}")
}

impl Service {
    /// Do `work` and everything it leads to (an admission starts actions, whose stage end
    /// frees a lane, which admits the next execution, …), one record at a time.
    pub(crate) async fn settle(&self, work: Vec<After>) {
        let mut work: VecDeque<After> = work.into();
        while let Some(next) = work.pop_front() {
            match next {
                After::Lane {
                    tenant,
                    pipeline,
                    op,
                } => match self.lane(&tenant, &pipeline, &op).await {
                    Ok(effects) => {
                        for effect in effects {
                            work.extend(self.apply_effect(&tenant, &pipeline, effect).await);
                        }
                    }
                    // Left for `recover` to put right; the execution waits meanwhile.
                    Err(e) => {
                        tracing::warn!("lanes of {tenant}/{pipeline}: {e} ({op:?} not recorded)")
                    }
                },
                After::Effect {
                    tenant,
                    pipeline,
                    effect,
                } => work.extend(self.apply_effect(&tenant, &pipeline, effect).await),
                After::AwaitEvent { waiter, subject } => {
                    if let Err(reason) = self.await_event(waiter.clone(), &subject).await {
                        // A subject that cannot be waited for fails the action, with the reason.
                        let input = Input::Expire {
                            stage: waiter.stage,
                            action: waiter.action,
                            attempt: waiter.attempt,
                            reason: format!("cannot wait for an event on {subject}: {reason}"),
                            at: crate::clock::now(),
                        };
                        match self
                            .record(
                                &exec_key(&waiter.tenant, &waiter.execution),
                                &|_: &Execution| Some(input.clone()),
                            )
                            .await
                        {
                            Ok(more) => work.extend(more),
                            Err(e) => tracing::warn!("{}: {e}", waiter.execution),
                        }
                    }
                }
                After::Rollback {
                    tenant,
                    pipeline,
                    stage,
                    failed,
                } => match self
                    .auto_rollback(&tenant, &pipeline, &stage, &failed)
                    .await
                {
                    Ok(more) => work.extend(more),
                    Err(e) => tracing::warn!(
                        "rollback of {tenant}/{pipeline} stage {stage} after {failed}: {e}"
                    ),
                },
            }
        }
    }

    /// Record a lane effect in the execution it names.
    async fn apply_effect(&self, tenant: &str, pipeline: &str, effect: Effect) -> Vec<After> {
        let (execution, stage, input): (String, String, Box<dyn Fn(usize) -> Input + Send + Sync>) =
            match effect {
                Effect::Admit { execution, stage } => (
                    execution,
                    stage,
                    Box::new(|si| Input::Admit {
                        stage: si,
                        at: crate::clock::now(),
                    }),
                ),
                Effect::Supersede {
                    execution,
                    stage,
                    by,
                } => (
                    execution,
                    stage,
                    Box::new(move |si| Input::Supersede {
                        stage: si,
                        by: by.clone(),
                        at: crate::clock::now(),
                    }),
                ),
            };
        let make = |exec: &Execution| {
            let si = exec.stages.iter().position(|s| s.name == stage)?;
            (exec.entering == Some(si)).then(|| input(si))
        };
        match self.record(&exec_key(tenant, &execution), &make).await {
            Ok(after) => after,
            Err(e) => {
                // Gone (or unreadable): do not let it hold the stage.
                tracing::warn!(
                    "execution {execution} of {pipeline} did not take its lane effect: {e}"
                );
                vec![After::Lane {
                    tenant: tenant.into(),
                    pipeline: pipeline.into(),
                    op: LaneOp::Leave { execution, stage },
                }]
            }
        }
    }

    /// Apply one change to a pipeline's lanes with compare-and-swap. The lanes as this engine
    /// last read, wrote or watched them are tried first: a stage entry then costs one write
    /// instead of a read and a write. A stale copy costs nothing but a retry, because the
    /// write's compare-and-swap refuses it; and a change that writes nothing is decided on a
    /// fresh read, except in `parallel` mode on a copy a watch keeps current
    /// ([`super::lane_copies`]).
    pub(crate) async fn lane(
        &self,
        tenant: &str,
        pipeline: &str,
        op: &LaneOp,
    ) -> Result<Vec<Effect>, KvError> {
        self.lane_from(tenant, pipeline, op, None).await
    }

    /// [`Service::lane`], starting from `fresh` when given: the lanes as read after the change
    /// became due ([`Service::read_lanes`]), which count as the fresh read.
    pub(crate) async fn lane_from(
        &self,
        tenant: &str,
        pipeline: &str,
        op: &LaneOp,
        mut fresh: Option<FreshLanes>,
    ) -> Result<Vec<Effect>, KvError> {
        let kv = &*self.edges.executions;
        let key = lane_key(tenant, pipeline);
        let mut cached = if fresh.is_some() {
            None
        } else {
            self.lane_copies.get(&key)
        };
        loop {
            let (from_cache, current) =
                (cached.is_some(), cached.as_ref().is_some_and(|c| c.current));
            let ticket = self.lane_copies.ticket(&key);
            let read = match fresh.take() {
                Some(f) => f.0,
                None => match cached.take() {
                    Some(c) => Some((c.lanes, c.revision)),
                    None => {
                        let read = get_json::<Lanes>(kv, &key).await?;
                        if let Some((lanes, r)) = &read {
                            self.lane_copies.keep(&key, lanes.clone(), *r, ticket);
                        }
                        read
                    }
                },
            };
            let (mut lanes, revision) = match read {
                Some((l, r)) => (l, Some(r)),
                None => (Lanes::default(), None),
            };
            let before = lanes.clone();
            let effects = lanes::step(&mut lanes, op);
            if lanes == before {
                // Nothing to write: decided on a fresh read, or in `parallel` mode on a copy a
                // watch keeps current (passing an enabled transition; see `lane_copies`).
                if from_cache && !(current && before.mode == Mode::Parallel) {
                    continue;
                }
                return Ok(effects);
            }
            let bytes = serde_json::to_vec(&lanes).map_err(|e| KvError::Backend(e.to_string()))?;
            let written = match revision {
                Some(r) => kv.update(&key, bytes, r).await,
                None => kv.create(&key, bytes).await,
            };
            match written {
                Ok(r) => {
                    self.lane_copies.keep(&key, lanes, r, ticket);
                    return Ok(effects);
                }
                // Stale: read and try again.
                Err(KvError::Conflict { .. }) => continue,
                // Unknown whether it was written: distrust the copy. A copy's write is tried
                // again from a fresh read (steps are idempotent); a fresh read's failure is the
                // caller's.
                Err(e) => {
                    self.lane_copies.distrust(&key);
                    if !from_cache {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Read a pipeline's lanes ahead of a stage entry, to be handed to [`Service::lane_from`]:
    /// the read can then overlap other work of the same step. In `parallel` mode, a copy a
    /// watch keeps current stands for the read.
    pub(crate) async fn read_lanes(
        &self,
        tenant: &str,
        pipeline: &str,
    ) -> Result<FreshLanes, KvError> {
        let key = lane_key(tenant, pipeline);
        if let Some(seen) = self
            .lane_copies
            .get(&key)
            .filter(|c| c.current && c.lanes.mode == Mode::Parallel)
        {
            return Ok(FreshLanes(Some((seen.lanes, seen.revision))));
        }
        let ticket = self.lane_copies.ticket(&key);
        let read = get_json::<Lanes>(&*self.edges.executions, &key).await?;
        if let Some((lanes, r)) = &read {
            self.lane_copies.keep(&key, lanes.clone(), *r, ticket);
        }
        Ok(FreshLanes(read))
    }

    /// A pipeline's lanes: who is inside or waiting before each stage, and disabled transitions.
    pub async fn lanes(&self, tenant: &str, pipeline: &str) -> Result<Lanes, KvError> {
        Ok(
            get_json::<Lanes>(&*self.edges.executions, &lane_key(tenant, pipeline))
                .await?
                .map(|(l, _)| l)
                .unwrap_or_default(),
        )
    }

    /// Rebuild the lanes of one pipeline from its executions' records (`sluice pipeline state
    /// NAME --repair`): an execution that has not ended is inside the stages its record shows
    /// running and waits before the one it is entering; every other place is freed. Disabled
    /// transitions and the mode are kept. Those waiting are then let in (or superseded) as the
    /// mode says. Returns the lanes as written.
    pub async fn repair_lanes(&self, tenant: &str, pipeline: &str) -> Result<Lanes, ApiError> {
        let kv = &*self.edges.executions;
        let key = lane_key(tenant, pipeline);
        // Executions that move meanwhile change the lanes too: rebuilt again from a fresh read.
        for _ in 0..REPAIR_TRIES {
            let current = get_json::<Lanes>(kv, &key).await?;
            let execs = self
                .executions(tenant, Some(pipeline), None, usize::MAX)
                .await?;
            let (lanes, effects) = rebuild(current.as_ref().map(|(l, _)| l), &execs);
            let bytes = serde_json::to_vec(&lanes).map_err(ApiError::internal)?;
            let written = match &current {
                Some((_, revision)) => kv.update(&key, bytes, *revision).await,
                None => kv.create(&key, bytes).await,
            };
            match written {
                Ok(_) => {
                    self.settle(
                        effects
                            .into_iter()
                            .map(|effect| After::Effect {
                                tenant: tenant.into(),
                                pipeline: pipeline.into(),
                                effect,
                            })
                            .collect(),
                    )
                    .await;
                    return Ok(lanes);
                }
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => {
                    return Err(ApiError::unavailable(format!(
                        "writing the lanes of `{pipeline}`: {e}"
                    )));
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "the lanes of `{pipeline}` kept changing while they were rebuilt; try again"
        )))
    }

    /// Put every lane back in step with the executions it names: forget those that ended or
    /// moved on, re-admit those admitted but not yet told.
    pub(crate) async fn reconcile_lanes(&self) -> Result<(), KvError> {
        let mut work = Vec::new();
        for key in self.edges.executions.keys("").await? {
            let Some((tenant, pipeline)) = key.split_once("/lane/") else {
                continue;
            };
            let Some((lanes, _)) = get_json::<Lanes>(&*self.edges.executions, &key).await? else {
                continue;
            };
            for (stage, lane) in &lanes.stages {
                for (id, inside) in lane
                    .inside
                    .iter()
                    .map(|i| (i, true))
                    .chain(lane.waiting.iter().map(|w| (w, false)))
                {
                    let exec = self.execution(tenant, id).await?;
                    let si = exec
                        .as_ref()
                        .and_then(|e| e.stages.iter().position(|s| &s.name == stage));
                    let state = exec.as_ref().zip(si).map(|(e, si)| {
                        (
                            e.status.is_terminal(),
                            e.entering == Some(si),
                            e.stages[si].status,
                        )
                    });
                    let leave = || After::Lane {
                        tenant: tenant.into(),
                        pipeline: pipeline.into(),
                        op: LaneOp::Leave {
                            execution: id.clone(),
                            stage: stage.clone(),
                        },
                    };
                    match state {
                        None | Some((true, _, _)) => work.push(leave()),
                        Some((false, true, _)) if inside => {
                            work.extend(
                                self.apply_effect(
                                    tenant,
                                    pipeline,
                                    Effect::Admit {
                                        execution: id.clone(),
                                        stage: stage.clone(),
                                    },
                                )
                                .await,
                            );
                        }
                        Some((false, true, _)) => {}
                        Some((false, false, status))
                            if inside
                                && matches!(status, Status::InProgress | Status::Stopping) => {}
                        Some((false, false, _)) => work.push(leave()),
                    }
                }
            }
        }
        self.settle(work).await;
        Ok(())
    }

    /// Disable or enable the transition into `stage` of a registered pipeline.
    pub async fn transition(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        enable: bool,
        reason: Option<String>,
        by: &str,
    ) -> Result<Lanes, ApiError> {
        let loaded = self
            .load(tenant, pipeline, None)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(format!("no pipeline `{pipeline}` is registered"))
            })?;
        match loaded.pipeline.stages.iter().position(|s| s.name == stage) {
            None => {
                return Err(ApiError::not_found(format!(
                    "pipeline `{pipeline}` has no stage `{stage}`"
                )));
            }
            Some(0) => {
                return Err(ApiError::invalid(format!(
                    "`{stage}` is the first stage: there is no transition into it"
                )));
            }
            Some(_) => {}
        }
        let op = if enable {
            LaneOp::Enable {
                stage: stage.into(),
            }
        } else {
            let reason = reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                ApiError::invalid("disabling a transition needs a reason (--reason TEXT)")
            })?;
            LaneOp::Disable {
                stage: stage.into(),
                disabled: Disabled {
                    reason,
                    by: by.into(),
                    at: crate::clock::now(),
                },
            }
        };
        self.settle(vec![After::Lane {
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            op,
        }])
        .await;
        Ok(self.lanes(tenant, pipeline).await?)
    }

    /// Start a `Rollback` execution that re-runs `stage` with the artifacts and variables of
    /// `target`, which must have succeeded in it. Returns the new execution's id.
    pub async fn rollback(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        target: &str,
        by: Option<String>,
        after: Option<String>,
    ) -> Result<String, ApiError> {
        let (id, work) = self
            .start_rollback(tenant, pipeline, stage, target, by, after)
            .await?;
        self.settle(work).await;
        Ok(id)
    }

    /// [`Service::rollback`] up to the cross-record work it causes.
    async fn start_rollback(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        target: &str,
        by: Option<String>,
        after: Option<String>,
    ) -> Result<(String, Vec<After>), ApiError> {
        let target_exec = self
            .execution(tenant, target)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no execution `{target}`")))?;
        if target_exec.pipeline != pipeline {
            return Err(ApiError::invalid(format!(
                "execution `{target}` belongs to pipeline `{}`, not `{pipeline}`",
                target_exec.pipeline
            )));
        }
        let si = target_exec
            .stages
            .iter()
            .position(|s| s.name == stage)
            .ok_or_else(|| {
                ApiError::not_found(format!("execution `{target}` has no stage `{stage}`"))
            })?;
        if si == 0 {
            return Err(ApiError::invalid(format!(
                "`{stage}` is the first (source) stage: it cannot be rolled back"
            )));
        }
        if target_exec.stages[si].status != Status::Succeeded {
            return Err(ApiError::conflict(format!(
                "execution `{target}` did not succeed in stage `{stage}` (it is {}): roll back only to an execution that did",
                target_exec.stages[si].status
            )));
        }
        if self
            .load(tenant, pipeline, Some(target_exec.pipeline_version))
            .await
            .map_err(ApiError::internal)?
            .is_none()
        {
            return Err(ApiError::not_found(format!(
                "pipeline `{pipeline}` version {} (which `{target}` ran) is no longer registered",
                target_exec.pipeline_version
            )));
        }
        let id = ulid::Ulid::new().to_string();
        let mut exec = Execution::rollback_of(&target_exec, si, id.clone(), after);
        exec.gated = true;
        exec.trigger = Some(TriggerInfo {
            event_id: format!("rollback-{id}"),
            kind: "rollback".into(),
            started_by: by,
            ..Default::default()
        });
        let before = Snapshot::of(&exec);
        let mut commands = apply(
            &mut exec,
            &Input::Start {
                at: crate::clock::now(),
            },
        );
        let others = self.admit_inline(&mut exec, &mut commands, None).await?;
        let (jobs, notices, mut work) = crate::service::follow_up(&exec, commands);
        let publish = self.stamp(&mut exec, before, notices, Vec::new(), Vec::new());
        self.edges
            .executions
            .create(
                &exec_key(tenant, &id),
                serde_json::to_vec(&exec).map_err(ApiError::internal)?,
            )
            .await?;
        futures_util::future::join(self.edges.bus.publish_all(publish), self.push_jobs(&jobs))
            .await;
        work.extend(others);
        Ok((id, work))
    }

    /// A stage condition asked for a rollback: to the newest other execution that succeeded
    /// in the stage.
    async fn auto_rollback(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        failed: &str,
    ) -> Result<Vec<After>, String> {
        let history = self
            .executions(tenant, Some(pipeline), None, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        let target = history.iter().find(|e| {
            e.execution_id != failed
                && e.stages
                    .iter()
                    .any(|s| s.name == stage && s.status == Status::Succeeded)
        });
        match target {
            Some(t) => {
                let (id, work) = self
                    .start_rollback(
                        tenant,
                        pipeline,
                        stage,
                        &t.execution_id,
                        Some("sluice (condition)".into()),
                        Some(failed.into()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    "{pipeline}: stage {stage} of {failed} rolled back to {} as {id}",
                    t.execution_id
                );
                Ok(work)
            }
            None => Err(format!(
                "no earlier execution succeeded in stage `{stage}`: nothing to roll back to"
            )),
        }
    }
}
