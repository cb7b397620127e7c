//! An early start: a trigger's execution starts at once, on the pipeline version this engine
//! last read, while its claim is written and the pipeline's head read again.
//!
//! The usual start waits one store round trip for the claim (one event id, one execution) and
//! the pipeline's head before it runs anything. An early start runs the execution's first
//! *contained* actions (see `journal`) meanwhile: the claim and the head read are the *gate* of
//! the record's creation. Nothing else happens before the gate confirms both (the claim written
//! by this start, the head still the version it ran): the record is not created, no event is
//! sent, nothing is queued and no other action starts. If the gate refuses (the event was claimed
//! before, or the pipeline changed), none of it was stored or sent; the chain is dropped and the
//! trigger is started the usual way, under the same delivery.
//!
//! Only a first delivery with an idle worker starts early, never with authentication on (the
//! tenant's policy and quotas are read first), and only when nothing in the lanes
//! would change: a `parallel` pipeline whose lanes copy a watch keeps current, entered through an
//! enabled transition (see `lane_copies`). (Should a later stage's transition be disabled while
//! an early start runs and its gate then refuse, the lane keeps a waiting entry for an execution
//! that does not exist, until it is admitted and let go like any vanished one.)

use crate::queue::Delivery;
use crate::scheduler::lanes::{Effect, LaneOp, step};
use crate::service::jobs::{Recorded, Settled};
use crate::service::journal::{Change, Gate};
use crate::service::{
    Command, Input, KvError, Service, TriggerEvent, apply, begin, claim_key, lanes, outstanding,
    takes, trigger_lease,
};
use std::sync::Arc;
use std::time::Duration;

impl Service {
    /// Handle a first delivery of a trigger with an idle worker's `place`: start its execution
    /// early if it may, else (or if its gate refuses) the usual way.
    pub(in crate::service) async fn start_early_or_not(
        self: &Arc<Self>,
        tenant: String,
        pipeline: String,
        delivery: Delivery,
        ack_wait: Duration,
        place: crate::service::work::places::Place,
    ) {
        let Some((id, recorded)) = self.start_early(&tenant, &pipeline, &delivery.payload) else {
            return self
                .start_as_usual(&tenant, &pipeline, delivery, ack_wait, Some(place))
                .await;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let result = me
                .chain_under(recorded, &delivery, trigger_lease(&tenant, &id), ack_wait)
                .await;
            if matches!(result, Ok(Settled::Refused)) {
                tracing::info!(
                    "trigger for {tenant}/{pipeline}: the early start of {id} was not confirmed; starting it the usual way"
                );
                return me
                    .start_as_usual(&tenant, &pipeline, delivery, ack_wait, Some(place))
                    .await;
            }
            drop(place);
            me.settle_delivery(&delivery, result, "trigger").await;
        });
    }

    /// The early start of a trigger's execution, when it may start early: its id, and the
    /// record to create (once the gate confirms) with the jobs its chain runs.
    fn start_early(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        payload: &[u8],
    ) -> Option<(String, Recorded)> {
        // With authentication on, every start passes the tenant's policy and quotas first,
        // which an early start (deciding before any read) cannot.
        if self.auth_on() {
            return None;
        }
        let event = TriggerEvent::parse(payload).ok()?;
        if !crate::kv::valid_key(tenant)
            || tenant.starts_with('_')
            || !crate::model::is_valid_name(name)
        {
            return None;
        }
        let loaded = self
            .heads
            .lock()
            .unwrap()
            .get(&(tenant.to_string(), name.to_string()))
            .cloned()?;
        takes(&loaded, &event, name).ok()?;
        let seen = self
            .lane_copies
            .get(&lanes::lane_key(tenant, name))
            .filter(|c| c.current && c.lanes.mode == crate::scheduler::Mode::Parallel)?;
        let execution_id = ulid::Ulid::new().to_string();
        let (mut exec, before, input, mut commands) = begin(tenant, &loaded, &event, &execution_id);
        // The first stage's entry, decided on the copy: it must change nothing there.
        let i = commands
            .iter()
            .position(|c| matches!(c, Command::Enter { stage: 0 }))?;
        commands.remove(i);
        let stage = exec.stages.first()?.name.clone();
        let mut after = seen.lanes.clone();
        let effects = step(
            &mut after,
            &LaneOp::Arrive {
                execution: execution_id.clone(),
                stage: stage.clone(),
                mode: exec.mode,
            },
        );
        let admitted = matches!(effects.as_slice(), [Effect::Admit { execution, stage: s }] if *execution == execution_id && *s == stage);
        if after != seen.lanes || !admitted {
            return None;
        }
        commands.extend(apply(
            &mut exec,
            &Input::Admit {
                stage: 0,
                at: crate::clock::now(),
            },
        ));
        if commands.iter().any(|c| matches!(c, Command::Enter { .. })) {
            return None;
        }
        let first = outstanding(&exec, |_| true);
        let (kept, queued) =
            self.keep_for_chain(&mut exec, &trigger_lease(tenant, &execution_id), first);
        if kept.is_empty() {
            return None; // (the places the kept jobs took go back with them)
        }
        let publish = self.stamp(&mut exec, before, Vec::new(), Vec::new(), Vec::new());
        let gate = self.gate(tenant, name, &event.id, &execution_id, loaded.version);
        Some((
            execution_id.clone(),
            Recorded::unwritten(
                kept,
                exec,
                Change::start(input, publish, queued, Vec::new()),
                Some(gate),
            ),
        ))
    }

    /// The gate of an early start: the event's claim written for `execution_id` and the
    /// pipeline's head read, at once; confirmed if the claim is this start's and the head is
    /// still `version`. It runs from now on, while the chain does.
    fn gate(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        event_id: &str,
        execution_id: &str,
        version: u64,
    ) -> Gate {
        let (me, tenant, name) = (self.clone(), tenant.to_string(), name.to_string());
        let claim = claim_key(&tenant, &name, event_id);
        let bytes = serde_json::to_vec(execution_id).unwrap_or_default();
        let check = tokio::spawn(async move {
            let (head, claimed) = futures_util::future::join(
                me.load(&tenant, &name, None),
                me.edges.executions.create(&claim, bytes),
            )
            .await;
            match claimed {
                Ok(_) => {}
                Err(KvError::Conflict { .. }) => {
                    return Err("the event was claimed before".to_string());
                }
                Err(e) => return Err(e.to_string()),
            }
            match head {
                Ok(Some(head)) if head.version == version => Ok(()),
                Ok(_) => Err(format!("pipeline `{name}` changed")),
                Err(e) => Err(e),
            }
        });
        Box::pin(async move { check.await.unwrap_or_else(|e| Err(e.to_string())) })
    }
}
