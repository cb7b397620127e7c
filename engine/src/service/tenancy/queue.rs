//! A tenant's queue of starts (`--max-queued`): a trigger beyond the tenant's quota of running
//! executions waits for one of them to end, its event delivered again every [`RETRY`], instead
//! of going to the dead letter. The queue is one record per tenant in the executions bucket,
//! `<tenant>/held` (execution id → what waits), changed by compare-and-swap, so every engine
//! sees one queue. A place not renewed by its event's deliveries for [`STALE`] is let go (its
//! event was refused elsewhere, or the queue that delivered it is gone).
use crate::kv::{KvError, get_json, modify};
use crate::service::Service;
use serde::{Deserialize, Serialize};
use sluice_core::scheduler::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a waiting start's event comes back.
pub(in crate::service) const RETRY: Duration = Duration::from_secs(1);
/// How long a place lasts without its event coming back.
const STALE: Duration = Duration::from_secs(30);

/// A start waiting in the queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Held {
    pipeline: String,
    /// When it first waited.
    since: Timestamp,
    /// When its event last came back.
    seen: Timestamp,
}

type Queue = BTreeMap<String, Held>;

fn queue_key(tenant: &str) -> String {
    format!("{tenant}/held")
}

fn fresh(now: Timestamp) -> impl Fn(&Held) -> bool {
    move |h| now.0.saturating_sub(h.seen.0) < STALE.as_millis() as u64
}

impl Service {
    /// Keep (or renew) `execution`'s place in the tenant's queue of `places`; false: the
    /// queue is full.
    pub(in crate::service) async fn hold(
        &self,
        tenant: &str,
        execution: &str,
        pipeline: &str,
        places: u64,
    ) -> Result<bool, KvError> {
        let now = crate::clock::now();
        let mut placed = false;
        modify::<Queue, _>(&*self.edges.executions, &queue_key(tenant), |queue| {
            let mut queue = queue.unwrap_or_default();
            queue.retain(|_, h| fresh(now)(h));
            let room = (queue.len() as u64) < places;
            placed = match queue.get_mut(execution) {
                Some(h) => {
                    h.seen = now;
                    true
                }
                None if room => {
                    queue.insert(
                        execution.to_string(),
                        Held {
                            pipeline: pipeline.to_string(),
                            since: now,
                            seen: now,
                        },
                    );
                    true
                }
                None => false,
            };
            Some(queue)
        })
        .await?;
        Ok(placed)
    }

    /// Renew `execution`'s place, wherever the queue's limit stands now (it waits already).
    pub(in crate::service) async fn renew(
        &self,
        tenant: &str,
        execution: &str,
        pipeline: &str,
    ) -> Result<(), KvError> {
        self.hold(tenant, execution, pipeline, u64::MAX)
            .await
            .map(drop)
    }

    /// Let `execution` leave the queue (it starts, or was refused).
    pub(in crate::service) async fn unhold(
        &self,
        tenant: &str,
        execution: &str,
    ) -> Result<(), KvError> {
        modify::<Queue, _>(&*self.edges.executions, &queue_key(tenant), |queue| {
            let mut queue = queue?;
            queue.remove(execution)?;
            Some(queue)
        })
        .await
        .map(drop)
    }

    /// [`Service::unhold`] for a start whose record is written: a failure leaves its place
    /// to lapse (after `STALE`) rather than undo the start.
    pub(in crate::service) async fn leave_queue(&self, tenant: &str, execution: &str) {
        if let Err(e) = self.unhold(tenant, execution).await {
            tracing::warn!(
                "{execution} started but keeps its place in the queue of {tenant} until it lapses: {e}"
            );
        }
    }

    /// The executions waiting in the tenant's queue, oldest first. Only quotas make starts
    /// wait, and quotas come with authentication: without it nothing is read.
    pub(in crate::service) async fn queued(&self, tenant: &str) -> Result<Vec<String>, KvError> {
        if !self.auth_on() {
            return Ok(Vec::new());
        }
        let now = crate::clock::now();
        let queue = get_json::<Queue>(&*self.edges.executions, &queue_key(tenant))
            .await?
            .map(|(q, _)| q)
            .unwrap_or_default();
        let mut waiting: Vec<(Timestamp, String)> = queue
            .into_iter()
            .filter(|(_, h)| fresh(now)(h))
            .map(|(id, h)| (h.since, id))
            .collect();
        waiting.sort();
        Ok(waiting.into_iter().map(|(_, id)| id).collect())
    }
}
