//! Triggers: how an event becomes an execution — its parsing and filters (`event`), webhooks,
//! schedules, the claim that makes one event id start one execution, early starts (`early`),
//! and the dead letter for events that cannot start anything.
pub(super) mod early;
pub mod event;
pub(in crate::service) mod intake;
pub mod schedule;
pub(in crate::service) mod started;
pub mod webhook;

use super::*;

/// Why a trigger started nothing (now).
#[derive(Debug)]
pub(in crate::service) enum NotStarted {
    /// Refused: the event goes to the dead letter with this reason.
    Rejected(String),
    /// Waiting in the tenant's queue (`--max-queued`): the event is delivered again later.
    Queued,
}

/// How long a refused trigger event is kept in the dead letter.
pub const DEAD_LETTER_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// A rejected trigger event, as kept in the dead letter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Tenant.
    pub tenant: String,
    /// The pipeline the event was addressed to.
    pub pipeline: String,
    /// Why it was rejected.
    pub reason: String,
    /// The event as received (lossy UTF-8).
    pub payload: String,
    /// When.
    pub at: Timestamp,
}

/// The lease a trigger's delivery gives the chain of its execution's first jobs.
pub(in crate::service) fn trigger_lease(tenant: &str, execution_id: &str) -> String {
    format!("{tenant}/{execution_id}/trigger")
}

pub(in crate::service) fn claim_key(tenant: &str, pipeline: &str, event_id: &str) -> String {
    format!(
        "{tenant}/claim/{pipeline}/{}",
        &blake3::hash(event_id.as_bytes()).to_hex()[..32]
    )
}

/// Split `sluice.<tenant>.<kind>.<rest>` into (tenant, rest).
pub(in crate::service) fn subject_parts<'a>(
    subject: &'a str,
    kind: &str,
) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix("sluice.")?;
    let (tenant, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
    Some((tenant, rest))
}

/// Whether `loaded` (pipeline `name`) takes `event`: its git filters let it through, and it
/// declares every variable the event sets.
pub(in crate::service) fn takes(
    loaded: &Loaded,
    event: &TriggerEvent,
    name: &str,
) -> Result<(), String> {
    trigger::accepts(&loaded.pipeline.triggers, event)?;
    match event
        .variables
        .keys()
        .find(|k| !loaded.pipeline.variables.contains_key(*k))
    {
        Some(k) => Err(format!(
            "the event sets variable `{k}`, which pipeline `{name}` does not declare"
        )),
        None => Ok(()),
    }
}

/// A new execution of `loaded` for `event`, named `execution_id`, and started: its record (not
/// written yet), its statuses before, the start, and the commands the start gave.
pub(in crate::service) fn begin(
    tenant: &str,
    loaded: &Loaded,
    event: &TriggerEvent,
    execution_id: &str,
) -> (Execution, Snapshot, Input, Vec<Command>) {
    let pin = |uses: &str| crate::executor::pinned(&loaded.plugins, uses);
    let mut variables = loaded.pipeline.variables.clone();
    variables.extend(event.variables.clone());
    let mut exec = Execution::new(
        execution_id.to_string(),
        tenant,
        &loaded.pipeline,
        &pin,
        variables,
    );
    exec.pipeline_version = loaded.version;
    exec.trigger = Some(event.info());
    exec.gated = true;
    let before = Snapshot::of(&exec);
    let input = Input::Start {
        at: crate::clock::now(),
    };
    let commands = apply(&mut exec, &input);
    (exec, before, input, commands)
}

impl Service {
    /// Dead letters of `tenant` (addressed to `pipeline`, if given), newest first, with their ids.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeadLetter)>, KvError> {
        let prefix = format!("{tenant}/dead/");
        let mut keys = self.expire_dead_letters(&prefix).await?;
        keys.reverse(); // ULIDs: newest last
        let mut out = Vec::new();
        for key in keys {
            if out.len() >= limit {
                break;
            }
            if let Some((letter, _)) = get_json::<DeadLetter>(&*self.edges.executions, &key).await?
                && pipeline.is_none_or(|p| p == letter.pipeline)
            {
                out.push((key[prefix.len()..].to_string(), letter));
            }
        }
        Ok(out)
    }

    /// Remove the dead letters under `prefix` older than [`DEAD_LETTER_KEEP`]; the keys of
    /// those left, oldest first.
    pub(in crate::service) async fn expire_dead_letters(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, KvError> {
        let keys = self.edges.executions.keys(prefix).await?;
        let cutoff = crate::clock::now()
            .0
            .saturating_sub(DEAD_LETTER_KEEP.as_millis() as u64);
        let mut kept = Vec::with_capacity(keys.len());
        for key in keys {
            let old = key[prefix.len()..]
                .parse::<ulid::Ulid>()
                .is_ok_and(|u| u.timestamp_ms() < cutoff);
            if old {
                self.edges.executions.delete(&key).await?;
            } else {
                kept.push(key);
            }
        }
        Ok(kept)
    }

    /// One dead letter of `tenant`, and its key.
    pub(in crate::service) async fn dead_letter(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(DeadLetter, String), ApiError> {
        // Ids are ULIDs: anything else names no key.
        if id.parse::<ulid::Ulid>().is_err() {
            return Err(ApiError::not_found(format!("no dead letter `{id}`")));
        }
        let key = format!("{tenant}/dead/{id}");
        match get_json::<DeadLetter>(&*self.edges.executions, &key).await? {
            Some((letter, _)) => Ok((letter, key)),
            None => Err(ApiError::not_found(format!("no dead letter `{id}`"))),
        }
    }

    pub(in crate::service) async fn reject(
        &self,
        tenant: &str,
        pipeline: &str,
        reason: String,
        payload: &[u8],
    ) {
        tracing::warn!("trigger for {tenant}/{pipeline} rejected: {reason}");
        // A pipeline this engine knows by its name; any other as `_unknown` (whoever may
        // publish a trigger could otherwise use up the label's values with made-up names).
        let known = self
            .heads
            .lock()
            .unwrap()
            .contains_key(&(tenant.to_string(), pipeline.to_string()));
        crate::metrics::get()
            .dead_letters
            .get_or_create(&crate::metrics::PipelineLabel::of(
                tenant,
                if known { pipeline } else { "_unknown" },
            ))
            .inc();
        let letter = DeadLetter {
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            reason: reason.clone(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            at: crate::clock::now(),
        };
        let key = format!(
            "{}/dead/{}",
            if crate::kv::valid_key(tenant) {
                tenant
            } else {
                "_invalid"
            },
            ulid::Ulid::new()
        );
        if let Ok(bytes) = serde_json::to_vec(&letter)
            && let Err(e) = self.edges.executions.create(&key, bytes).await
        {
            tracing::warn!("could not record the dead letter: {e}");
        }
        // Old ones go now and then (and whenever they are listed).
        static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if WRITTEN
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(64)
            && let Some(prefix) = key.rsplit_once('/').map(|(p, _)| format!("{p}/"))
            && let Err(e) = self.expire_dead_letters(&prefix).await
        {
            tracing::warn!("could not expire old dead letters: {e}");
        }
        self.edges.cluster.dead_letter(&letter);
        self.edges.bus.publish(Event {
            id: String::new(),
            kind: Kind::Trigger,
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            execution_id: String::new(),
            stage: None,
            action: None,
            status: Status::Failed,
            attempt: None,
            at: crate::clock::now(),
            duration_ms: None,
            detail: Some(reason),
            pipeline_version: None,
            approval: None,
        });
    }

    pub(in crate::service) async fn handle_trigger(self: &Arc<Self>, delivery: Delivery) {
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((tenant, pipeline)) = subject_parts(&delivery.subject, "trigger") else {
            self.reject(
                "_invalid",
                "_invalid",
                format!("unexpected subject {}", delivery.subject),
                &delivery.payload,
            )
            .await;
            let _ = delivery.ack().await;
            return;
        };
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        self.handle_trigger_for(&tenant, &pipeline, delivery, self.edges.triggers.ack_wait())
            .await
    }

    /// Handle a trigger event addressed to `tenant`/`pipeline` (by its subject, or because it
    /// arrived on one of the pipeline's extra `triggers.nats` subjects), delivered from a queue
    /// whose deadline is `ack_wait`. When a job worker is idle, the execution's first jobs run
    /// here in a chain under the event's delivery (see `jobs`), and the next event is taken
    /// meanwhile.
    pub async fn handle_trigger_for(
        self: &Arc<Self>,
        tenant: &str,
        pipeline: &str,
        delivery: Delivery,
        ack_wait: Duration,
    ) {
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        // The idle worker's place the chain runs in (or, for a tenant with nothing running
        // here, its own: see `places`); given back however this ends.
        let place = self.places.take_idle_or_own(&tenant);
        match place {
            // A first delivery may start early (see `early`).
            Some(place) if delivery.delivered == 1 => {
                self.start_early_or_not(tenant, pipeline, delivery, ack_wait, place)
                    .await
            }
            place => {
                self.start_as_usual(&tenant, &pipeline, delivery, ack_wait, place)
                    .await
            }
        }
    }

    /// Handle a trigger: claim its event, then start its execution, in a chain under the
    /// delivery when an idle worker's `place` is at hand.
    pub(in crate::service) async fn start_as_usual(
        self: &Arc<Self>,
        tenant: &str,
        pipeline: &str,
        delivery: Delivery,
        ack_wait: Duration,
        place: Option<work::places::Place>,
    ) {
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        match self
            .start(
                &tenant,
                &pipeline,
                &delivery.payload,
                delivery.delivered > 1,
                place.is_some(),
            )
            .await
        {
            Ok(Ok((id, recorded))) => {
                tracing::info!(
                    tenant,
                    pipeline,
                    execution = %id,
                    delivery = delivery.delivered,
                    "trigger accepted"
                );
                if let Some(recorded) = recorded {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let result = me
                            .chain_under(recorded, &delivery, trigger_lease(&tenant, &id), ack_wait)
                            .await;
                        drop(place);
                        me.settle_delivery(&delivery, result, "trigger").await;
                    });
                    return;
                }
            }
            Ok(Err(NotStarted::Rejected(reason))) => {
                self.reject(&tenant, &pipeline, reason, &delivery.payload)
                    .await
            }
            Ok(Err(NotStarted::Queued)) => {
                // Waiting for one of the tenant's running executions to end.
                drop(place);
                let _ = delivery.nak(crate::service::tenancy::queue::RETRY).await;
                return;
            }
            Err(e) => {
                // The store is unreachable: leave the event for later (or another engine).
                tracing::warn!("trigger for {tenant}/{pipeline} not handled yet: {e}");
                drop(place);
                let _ = delivery.nak(Duration::from_secs(1)).await;
                return;
            }
        }
        drop(place);
        if let Err(e) = delivery.ack().await {
            tracing::warn!(
                "ack of a trigger failed ({e}); it will come again and start nothing new"
            );
        }
    }

    /// A start the tenant's quotas refuse: it waits in the tenant's queue when it may and the
    /// queue has room (or has its place already), else it is refused (and leaves the queue).
    async fn queue_or_refuse(
        &self,
        tenant: &str,
        pipeline: &str,
        execution: &str,
        refused: tenancy::Refused,
    ) -> Result<Result<(String, Option<jobs::Recorded>), NotStarted>, KvError> {
        if let tenancy::Refused::Wait { places, .. } = &refused
            && self.hold(tenant, execution, pipeline, *places).await?
        {
            return Ok(Err(NotStarted::Queued));
        }
        self.unhold(tenant, execution).await?;
        Ok(Err(NotStarted::Rejected(refused.into_reason())))
    }

    /// Start an execution for a trigger event, at most once per event id. The outer error is
    /// a store failure (try again); the inner one a reason to reject the event. `redelivered`:
    /// the event came back because the engine that had it did not acknowledge it. With a
    /// `chain`, a new execution whose first jobs run here is returned unwritten, with them: its
    /// chain creates the record (see `journal`). Otherwise the record is created here.
    pub(in crate::service) async fn start(
        &self,
        tenant: &str,
        name: &str,
        payload: &[u8],
        redelivered: bool,
        chain: bool,
    ) -> Result<Result<(String, Option<jobs::Recorded>), NotStarted>, KvError> {
        let event = match TriggerEvent::parse(payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(NotStarted::Rejected(reason))),
        };
        if !crate::kv::valid_key(tenant)
            || tenant.starts_with('_')
            || !crate::model::is_valid_name(name)
        {
            return Ok(Err(NotStarted::Rejected(format!(
                "invalid tenant or pipeline name in `{tenant}`/`{name}`"
            ))));
        }
        let kv = &*self.edges.executions;
        // One event id → one execution: the claim names the execution before it exists. It is
        // written while the pipeline loads and the lanes the first stage is entered through are
        // read (the entry below then costs no round trip of its own; should that read fail, the
        // entry reads again): the usual case, a new event, costs one round trip for all three.
        let claim = claim_key(tenant, name, &event.id);
        let new_id = ulid::Ulid::new().to_string();
        let claim_bytes = serde_json::to_vec(&new_id).unwrap_or_default();
        let (loaded, lanes, claimed) = futures_util::future::join3(
            self.load(tenant, name, None),
            self.read_lanes(tenant, name),
            kv.create(&claim, claim_bytes),
        )
        .await;
        let checked = match loaded {
            Ok(Some(loaded)) => takes(&loaded, &event, name).map(|()| loaded),
            Ok(None) => Err(format!(
                "unknown pipeline `{name}` (register it with `sluice pipeline put`)"
            )),
            Err(e) => Err(format!("pipeline `{name}` does not load: {e}")),
        };
        // A claimed event (a duplicate) costs a read more.
        let (execution_id, fresh) = match claimed {
            Ok(_) => match &checked {
                Ok(loaded) => {
                    // The tenant's policy and quotas (with authentication on).
                    let counted = event.source.as_ref().is_some_and(|s| s.kind == "manual");
                    let refused = self
                        .admission(tenant, loaded, !counted)
                        .await
                        .map_err(|e| KvError::Backend(e.message))?;
                    if let Some(refused) = refused {
                        return self.queue_or_refuse(tenant, name, &new_id, refused).await;
                    }
                    (new_id, true)
                }
                // Refused: the claim stays. (Removing it could race with an engine that accepts
                // the same event at the same time under this claim; a later delivery that is
                // accepted starts the execution under the claimed id.)
                Err(reason) => return Ok(Err(NotStarted::Rejected(reason.clone()))),
            },
            // An event claimed before the pipeline changed still names its execution.
            Err(KvError::Conflict { .. }) => match get_json::<String>(kv, &claim).await? {
                Some((id, _)) => (id, false),
                None => return Err(KvError::Backend(format!("claim {claim} vanished"))),
            },
            Err(e) => return Err(e),
        };
        let key = exec_key(tenant, &execution_id);
        // A fresh claim has no execution yet.
        let found = if fresh {
            None
        } else {
            get_json::<Execution>(kv, &key).await?
        };
        // Claimed before but never recorded: a start waiting in the tenant's queue, a dead
        // letter replayed, or a start whose engine died first. With authentication on it passes
        // the tenant's policy and quotas again; a waiting start goes only in its turn (the
        // oldest first) and leaves the queue once its record is written, so the starts that
        // wait never pass the running quota together.
        let mut leaves_queue = false;
        if !fresh && found.is_none() && self.auth_on() {
            let queue = self.queued(tenant).await?;
            let place = queue.iter().position(|q| *q == execution_id);
            if place.is_some_and(|i| i > 0) {
                self.renew(tenant, &execution_id, name).await?;
                return Ok(Err(NotStarted::Queued));
            }
            leaves_queue = place.is_some();
            if let Ok(loaded) = &checked {
                let refused = self
                    .admission(tenant, loaded, false)
                    .await
                    .map_err(|e| KvError::Backend(e.message))?;
                if let Some(refused) = refused {
                    return self
                        .queue_or_refuse(tenant, name, &execution_id, refused)
                        .await;
                }
            }
        }
        if let Some((exec, _)) = found {
            if !exec.status.is_terminal() {
                // The engine that started it may have died before its first events were
                // stored, and, if this event is a redelivery, before its first jobs were
                // queued. (Runs a chain holds are that chain's to hand back.)
                self.republish(&exec).await;
                if redelivered {
                    // A chain under this event's earlier delivery died with its engine.
                    let lease = trigger_lease(tenant, &execution_id);
                    self.push_jobs(&outstanding(&exec, |runner| runner != lease))
                        .await;
                    if let Some(stage) = exec.entering {
                        self.settle(vec![lanes::After::arrive(&exec, stage)]).await;
                    }
                }
            } else if redelivered {
                // Ended, but its engine may have died before the bus stored the last changes'
                // events (the record carries them).
                self.republish(&exec).await;
            }
            self.awaited.wake(&claim, &execution_id);
            return Ok(Ok((execution_id, None)));
        }
        // The claim's version is the head at claim time, or a later one after a crash:
        // either way a registered version.
        let loaded = match checked {
            Ok(l) => l,
            Err(reason) => {
                if leaves_queue {
                    self.unhold(tenant, &execution_id).await?;
                }
                return Ok(Err(NotStarted::Rejected(reason)));
            }
        };
        // A start leaving the queue is recorded here, before it leaves (not by a chain later).
        let chain = chain && !leaves_queue;
        let (mut exec, before, input, mut commands) = begin(tenant, &loaded, &event, &execution_id);
        let mut others = self
            .admit_inline(&mut exec, &mut commands, lanes.ok())
            .await?;
        let first = outstanding(&exec, |_| true);
        let (kept, queued) = if chain {
            self.keep_for_chain(&mut exec, &trigger_lease(tenant, &execution_id), first)
        } else {
            (Vec::new(), first)
        };
        let publish = self.stamp(&mut exec, before, Vec::new(), Vec::new(), Vec::new());
        // Waiting before its first stage: join the lane once recorded.
        others.extend(
            exec.entering
                .map(|stage| lanes::After::arrive(&exec, stage)),
        );
        if !kept.is_empty() {
            // The chain creates the record as its first write, gathering the results of the
            // contained runs that start meanwhile (see `journal`); the rest waits for it.
            let start = journal::Change::start(input, publish, queued, others);
            return Ok(Ok((
                execution_id,
                Some(jobs::Recorded::unwritten(kept, exec, start, None)),
            )));
        }
        match kv
            .create(&key, serde_json::to_vec(&exec).unwrap_or_default())
            .await
        {
            Ok(_) => {
                if leaves_queue {
                    self.leave_queue(tenant, &execution_id).await;
                }
                self.awaited.wake(&claim, &execution_id);
                self.send_and_queue(publish, &queued).await;
                self.settle(others).await;
                Ok(Ok((execution_id, None)))
            }
            // Another engine had the same event (delivered again) and created it first.
            Err(KvError::Conflict { .. }) => {
                if leaves_queue {
                    self.leave_queue(tenant, &execution_id).await;
                }
                self.awaited.wake(&claim, &execution_id);
                Ok(Ok((execution_id, None)))
            }
            Err(e) => Err(e),
        }
    }

    /// Look up the execution a trigger event started, if any.
    pub async fn claimed(
        &self,
        tenant: &str,
        pipeline: &str,
        event_id: &str,
    ) -> Result<Option<String>, KvError> {
        Ok(get_json::<String>(
            &*self.edges.executions,
            &claim_key(tenant, pipeline, event_id),
        )
        .await?
        .map(|(id, _)| id))
    }
}
