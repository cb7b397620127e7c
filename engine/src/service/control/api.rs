//! The control API's server side: one handler for every verb of [`sluice_api`], whatever
//! carries it (NATS request/reply on `sluice.<tenant>.api.<verb>`, the embedded service's
//! socket, HTTP). The transport attaches the [`Principal`]; each verb checks its role first.
use crate::scheduler::{Decision, Execution, Input};
use crate::service::Service;
use crate::service::control::turns;
use crate::service::pipelines;
use crate::service::trigger::{Source, TriggerEvent};
use serde_json::Value;
use sluice_api::verbs::{self, *};
use sluice_api::{ApiError, Origin, Principal, Request, Verb};
use std::collections::BTreeMap;
use std::time::Duration;

pub use sluice_api::limits::{MAX_ID_LEN, MAX_LIST, MAX_UPLOAD, check_len, check_tenant};

/// The (stage, action) indices of `STAGE/ACTION` in `e`.
fn find(e: &Execution, id: &str, path: &str) -> Result<(usize, usize), ApiError> {
    let (stage, action) = path
        .split_once('/')
        .ok_or_else(|| ApiError::invalid(format!("expected STAGE/ACTION, got `{path}`")))?;
    e.find_action(stage, action)
        .ok_or_else(|| ApiError::not_found(format!("execution `{id}` has no action {path}")))
}

fn dead_letter_summary(id: String, letter: crate::service::DeadLetter) -> DeadLetterSummary {
    let event_id = serde_json::from_str::<Value>(&letter.payload)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string));
    DeadLetterSummary {
        id,
        pipeline: letter.pipeline,
        event_id,
        reason: letter.reason,
        at: letter.at,
        payload: letter.payload,
    }
}

/// Refuse variable overrides the pipeline does not take, in the words of `sluice run --var`.
fn refuse_overrides(
    loaded: &crate::service::Loaded,
    variables: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if variables.is_empty() {
        return Ok(());
    }
    // The registered pipeline passed validation without overrides: what is found now is theirs.
    let problems = crate::model::validate::validate(&loaded.pipeline, &loaded.plugins, variables);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        problems
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

fn no_pipeline(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no pipeline `{name}` is registered (register it with `sluice pipeline put FILE`)"
    ))
}

/// Serialize a typed reply.
fn reply<T: serde::Serialize>(r: Result<T, ApiError>) -> Result<Value, ApiError> {
    r.and_then(|v| serde_json::to_value(v).map_err(ApiError::internal))
}

impl Service {
    /// Handle one request from `principal`: the reply's value or the refusal.
    pub async fn handle(&self, principal: &Principal, request: Request) -> Result<Value, ApiError> {
        if !self.auth_on() {
            return self.dispatch(principal, request).await;
        }
        // What the audit needs, taken before the request is consumed (an upload may be large:
        // no copy of it).
        let call = crate::service::tenancy::Call::of(&request);
        let outcome = self.dispatch(principal, request).await;
        self.audit_call(principal, &call, &outcome).await;
        outcome
    }

    async fn dispatch(&self, principal: &Principal, request: Request) -> Result<Value, ApiError> {
        check_tenant(&principal.tenant)?;
        request.check_lengths()?;
        if !principal.may(request.role()) {
            return Err(ApiError::forbidden(format!(
                "`{}` needs the {} role in tenant `{}`",
                request.verb(),
                request.role().as_str(),
                principal.tenant
            )));
        }
        // Checked before waiting: a refusal costs no turn.
        let kind = match request {
            Request::Start(_) => turns::Kind::Start,
            _ => turns::Kind::Other,
        };
        let _turn = self.turns.take(&principal.tenant, kind).await?;
        let p = principal;
        match request {
            Request::BundlePut(r) => {
                let tar = sluice_api::limits::decode_upload("the folder", &r.tar)?;
                reply(self.bundle_put(&p.tenant, tar).await)
            }
            Request::UploadPart(r) => reply(self.upload_part(&p.tenant, &r.bytes).await),
            Request::UploadJoin(r) => reply(self.upload_join(&p.tenant, r.parts, &r.digest).await),
            Request::PipelinePut(r) => reply(self.pipeline_put(p, r).await),
            Request::PipelineGet(r) => reply(self.pipeline_get(p, r).await),
            Request::PipelineLs(_) => reply(self.pipeline_ls(p).await),
            Request::PipelineRm(r) => reply(self.pipeline_rm(p, r).await),
            Request::PipelineState(r) => reply(self.pipeline_state(p, &r.name, false).await),
            Request::PipelineRepair(r) => reply(self.pipeline_state(p, &r.name, true).await),
            Request::Transition(r) => {
                let by = self.acting_as(p, r.by.as_deref())?;
                reply(
                    self.transition(&p.tenant, &r.pipeline, &r.stage, r.enable, r.reason, &by)
                        .await,
                )
            }
            Request::Rollback(r) => {
                let by = if self.auth_on() {
                    Some(self.acting_as(p, r.by.as_deref())?)
                } else {
                    r.by
                };
                reply(
                    self.rollback(&p.tenant, &r.pipeline, &r.stage, &r.to, by, None)
                        .await
                        .map(|execution_id| ExecutionRef { execution_id }),
                )
            }
            Request::Start(r) => reply(self.start_execution(p, r).await),
            Request::GetExecution(r) => reply(self.get_execution(p, &r.execution_id).await),
            Request::Executions(r) => reply(self.list_executions(p, r).await),
            Request::Stop(r) => reply(self.stop(p, r).await),
            Request::Retry(r) => reply(self.retry(p, r).await),
            Request::Approve(r) => reply(self.approve(p, r).await),
            Request::Wake(r) => reply(self.wake(p, r).await),
            Request::FunctionPut(r) => {
                let bytes = match &r.bytes {
                    Some(b) => Some(sluice_api::limits::decode_upload(
                        &format!("function `{}`", r.name),
                        b,
                    )?),
                    None => None,
                };
                reply(
                    self.put_function(&p.tenant, &r.name, bytes, r.digest.as_deref())
                        .await,
                )
            }
            Request::FunctionLs(_) => reply(self.list_functions(&p.tenant).await),
            Request::FunctionRm(r) => reply(
                self.remove_function(&p.tenant, &r.name)
                    .await
                    .map(|()| Named { name: r.name }),
            ),
            Request::DeadLetters(r) => reply(self.list_dead_letters(p, r).await),
            Request::DeadLetterReplay(r) => reply(self.replay_dead_letter(p, r).await),
            Request::Logs(r) => reply(self.logs_of(p, r).await),
            Request::TokenCreate(r) => reply(self.token_create(p, r).await),
            Request::TokenLs(r) => reply(self.token_ls(p, r).await),
            Request::TokenRevoke(r) => reply(self.token_revoke(p, r).await),
            Request::TenantCreate(r) => reply(self.tenant_create(r).await),
            Request::TenantLs(_) => reply(self.tenant_ls().await),
            Request::TenantSet(r) => reply(self.tenant_set(r).await),
            Request::TenantRm(r) => reply(self.tenant_rm(r).await),
            Request::TenantUsage(r) => reply(self.tenant_usage(p, r).await),
            Request::Audit(r) => reply(self.audit_ls(p, r).await),
            Request::PluginLs(_) => reply(self.plugin_list().await),
            Request::PluginInstall(r) => {
                let bytes = match &r.bytes {
                    Some(b) => Some(sluice_api::limits::decode_upload(
                        &format!("plugin `{}`", r.locked.name),
                        b,
                    )?),
                    None => None,
                };
                reply(
                    self.install_plugin(&p.tenant, r.locked, bytes, r.digest.as_deref())
                        .await,
                )
            }
            Request::PluginInstalled(_) => reply(self.installed_plugins(&p.tenant).await),
            Request::SecretPut(r) => reply(self.secret_put(&p.tenant, r).await),
            Request::SecretLs(_) => reply(self.secret_ls(&p.tenant).await),
            Request::SecretRotateKey(_) => reply(self.secret_rotate_key().await),
            Request::SecretRm(r) => reply(
                self.secret_rm(&p.tenant, &r.name)
                    .await
                    .map(|()| Named { name: r.name }),
            ),
            Request::CacheLs(r) => reply(self.cache_ls(&p.tenant, r).await),
            Request::CacheClear(r) => reply(
                self.cache_clear(&p.tenant, r.pipeline.as_deref())
                    .await
                    .map(|removed| sluice_api::verbs::CacheCleared { removed }),
            ),
            Request::Approvals(r) => reply(self.waiting_approvals(p, r).await),
        }
    }

    /// [`Service::handle`] for a typed request.
    pub async fn call<V: Verb>(
        &self,
        principal: &Principal,
        verb: V,
    ) -> Result<V::Reply, ApiError> {
        let value = self.handle(principal, verb.into()).await?;
        serde_json::from_value(value).map_err(ApiError::internal)
    }

    async fn pipeline_put(
        &self,
        p: &Principal,
        r: PipelinePut,
    ) -> Result<PipelineVersion, ApiError> {
        let PipelinePut {
            file,
            dir,
            yaml,
            plugins,
            bundle,
        } = r;
        if let Some(b) = &bundle {
            if dir.is_some() {
                return Err(ApiError::invalid(
                    "`pipeline.put`: give `dir` or `bundle`, not both",
                ));
            }
            let digest = b
                .parse::<crate::artifacts::Digest>()
                .map_err(|e| ApiError::invalid(format!("`pipeline.put`: `bundle`: {e}")))?;
            // Noted as used: the version about to name it must find it kept.
            if !self
                .artifacts_of(&p.tenant)
                .await?
                .touch(&digest)
                .map_err(|e| ApiError::unavailable(format!("the artifact store: {e}")))?
            {
                return Err(ApiError::invalid(format!(
                    "`pipeline.put`: no uploaded folder {b} (upload it first: `POST /api/v1/bundles`)"
                )));
            }
        }
        match &dir {
            Some(_) if p.origin == Origin::Remote => {
                return Err(ApiError::forbidden(
                    "`pipeline.put`: `dir` names a directory on the engine's host, which only the engine's own user there may do (the embedded service's socket); `sluice pipeline put` over NATS uploads the plugin files instead, and other paths in the pipeline must be absolute",
                ));
            }
            Some(d) if !d.is_absolute() => {
                return Err(ApiError::invalid(format!(
                    "`pipeline.put`: `dir` {} is not absolute",
                    d.display()
                )));
            }
            _ => {}
        }
        if plugins.len() > pipelines::MAX_PLUGINS {
            return Err(ApiError::invalid(format!(
                "`pipeline.put`: more than {} plugin files",
                pipelines::MAX_PLUGINS
            )));
        }
        for (path, digest) in &plugins {
            digest.parse::<crate::artifacts::Digest>().map_err(|e| {
                ApiError::invalid(format!("`pipeline.put`: plugin file {path}: {e}"))
            })?;
        }
        // Components named by digest, by the client's file list or the YAML itself, are the
        // tenant's own (see `owned`): checked before anything is resolved, so that one the
        // tenant does not own is refused alike whether or not the shared store holds it.
        // (Marketplace plugins resolve only to what the tenant installed, whatever the client
        // sent: pinned below.)
        let mut plugins = plugins;
        plugins.retain(|uses, _| sluice_core::lockfile::marketplace_reference(uses).is_none());
        for (path, digest) in &plugins {
            self.owned(&p.tenant, digest)
                .await
                .map_err(|e| match e.code {
                    sluice_api::Code::NotFound => ApiError::not_found(format!(
                        "`pipeline.put`: plugin file {path}: {}",
                        e.message
                    )),
                    _ => e,
                })?;
        }
        let named = pipelines::named(&yaml);
        let mut unowned = Vec::new();
        for (loc, digest) in named.digests {
            if let Err(e) = self.owned(&p.tenant, &digest).await {
                if e.code != sluice_api::Code::NotFound {
                    return Err(e);
                }
                unowned.push(crate::model::Diagnostic {
                    loc,
                    message: e.message,
                });
            }
        }
        if !unowned.is_empty() {
            return Err(crate::model::Diagnostics {
                file: file.clone(),
                items: unowned,
            }
            .into());
        }
        // Each `uses: NAMESPACE/NAME@MAJOR` is pinned to the digest the tenant installed.
        let mut pins = Vec::new();
        for uses in named.marketplace {
            if let Some(l) = crate::service::registry::installed::for_uses(
                &*self.edges.pipelines,
                &p.tenant,
                &uses,
            )
            .await?
            {
                pins.extend(l.blake3.parse::<crate::artifacts::Digest>().ok());
                plugins.insert(uses, l.blake3);
            }
        }
        // A pin is a use of the component: noted on the shared store, so a sweep that read
        // the registrations before this version (and no longer finds the install that named
        // it: reinstalled since) spares it. (A digest the YAML names noted its use in `owned`.)
        let blobs = self.engine.blobs.clone();
        tokio::task::spawn_blocking(move || pins.iter().try_for_each(|d| blobs.touch(d).map(drop)))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::unavailable(format!("the component store: {e}")))?;
        let stored = StoredPipeline {
            name: String::new(),
            version: 0,
            file,
            dir,
            plugins,
            bundle,
            components: Some(Vec::new()),
            yaml,
            registered_at: crate::clock::now(),
        };
        let loaded = self.check(&p.tenant, &stored).await?;
        self.check_policy(&p.tenant, &loaded).await?;
        self.check_pipeline_secrets(&p.tenant, &loaded.pipeline)
            .await?;
        self.check_pipeline_quota(&p.tenant, &loaded.pipeline.name)
            .await?;
        // Plugin files read from the client's folder or the uploaded one are the tenant's
        // from now on (within its quota): it may name them by digest later (see `owned`).
        let components = if stored.dir.is_some() || stored.bundle.is_some() {
            self.own_files(&p.tenant, &loaded.plugins).await?
        } else {
            Vec::new()
        };
        let subjects: Vec<String> = loaded
            .pipeline
            .triggers
            .nats
            .iter()
            .map(|s| s.value.clone())
            .collect();
        if !subjects.is_empty() {
            self.edges
                .cluster
                .capture_triggers(&p.tenant, &loaded.pipeline.name, subjects)
                .await
                .map_err(|e| ApiError::invalid(format!("`triggers.nats`: {e}")))?;
        }
        let stored = StoredPipeline {
            name: loaded.pipeline.name.clone(),
            components: Some(components),
            ..stored
        };
        let name = stored.name.clone();
        let version = pipelines::put(&*self.edges.pipelines, &p.tenant, stored).await?;
        Ok(PipelineVersion { name, version })
    }

    async fn pipeline_get(
        &self,
        p: &Principal,
        r: PipelineGet,
    ) -> Result<StoredPipeline, ApiError> {
        pipelines::get(&*self.edges.pipelines, &p.tenant, &r.name, r.version)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no pipeline `{}`{} is registered",
                    r.name,
                    r.version
                        .map(|v| format!(" version {v}"))
                        .unwrap_or_default()
                ))
            })
    }

    async fn pipeline_ls(&self, p: &Principal) -> Result<Vec<PipelineSummary>, ApiError> {
        Ok(pipelines::list(&*self.edges.pipelines, &p.tenant)
            .await?
            .into_iter()
            .map(|p| PipelineSummary {
                name: p.name,
                version: p.version,
                file: p.file,
                registered_at: p.registered_at,
            })
            .collect())
    }

    async fn pipeline_rm(&self, p: &Principal, r: PipelineRm) -> Result<Named, ApiError> {
        if pipelines::remove(&*self.edges.pipelines, &p.tenant, &r.name).await? {
            Ok(Named { name: r.name })
        } else {
            Err(no_pipeline(&r.name))
        }
    }

    async fn pipeline_state(
        &self,
        p: &Principal,
        name: &str,
        repair: bool,
    ) -> Result<crate::scheduler::lanes::Lanes, ApiError> {
        if pipelines::get(&*self.edges.pipelines, &p.tenant, name, None)
            .await?
            .is_none()
        {
            return Err(no_pipeline(name));
        }
        if repair {
            self.repair_lanes(&p.tenant, name).await
        } else {
            Ok(self.lanes(&p.tenant, name).await?)
        }
    }

    async fn start_execution(&self, p: &Principal, r: verbs::Start) -> Result<Started, ApiError> {
        // Refused here, at once, rather than in the trigger path, where the caller would wait
        // for an execution that never comes and the reason would only reach the dead letter.
        let loaded = self
            .load(&p.tenant, &r.pipeline, None)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| no_pipeline(&r.pipeline))?;
        refuse_overrides(&loaded, &r.variables)?;
        self.check_policy(&p.tenant, &loaded).await?;
        self.refuse_over_quota(&p.tenant).await?;
        let started_by = self.acting_as(p, r.started_by.as_deref())?;
        let event = TriggerEvent {
            id: r
                .event_id
                .unwrap_or_else(|| format!("manual-{}", ulid::Ulid::new())),
            source: Some({
                let given = r.source.unwrap_or_default();
                Source {
                    kind: "manual".into(),
                    pusher: Some(started_by),
                    commit: given.commit,
                    git_ref: given.git_ref,
                    repository: given.repository,
                    ..Default::default()
                }
            }),
            variables: r.variables,
            data: None,
        };
        let (execution_id, recorded) = self
            .trigger_as(&p.tenant, &r.pipeline, &event, &event.id)
            .await?;
        let queued = !recorded && self.execution(&p.tenant, &execution_id).await?.is_none();
        Ok(Started {
            execution_id,
            event_id: event.id,
            queued,
        })
    }

    /// Refuse a start (`start`, a replay) the tenant's quotas do not allow now and its queue
    /// has no room for, with `quota_exceeded`, rather than publish an event that waits for
    /// nothing.
    async fn refuse_over_quota(&self, tenant: &str) -> Result<(), ApiError> {
        match self.start_quota_refusal(tenant, true).await? {
            None => Ok(()),
            // Room in the tenant's queue: the trigger path keeps the start's place there.
            Some(crate::service::tenancy::Refused::Wait { places, .. })
                if (self.queued(tenant).await?.len() as u64) < places =>
            {
                Ok(())
            }
            Some(refused) => Err(ApiError::new(
                sluice_api::Code::QuotaExceeded,
                refused.into_reason(),
            )),
        }
    }

    async fn get_execution(&self, p: &Principal, id: &str) -> Result<Execution, ApiError> {
        match self.execution(&p.tenant, id).await? {
            // The outbox is the engines' delivery bookkeeping; its events went out already.
            Some(e) => {
                let mut e = Execution {
                    outbox: Default::default(),
                    ..e
                };
                self.fill_holders(&mut e).await;
                Ok(e)
            }
            None if self.queued(&p.tenant).await?.iter().any(|q| q == id) => {
                Err(ApiError::not_found(format!(
                    "execution `{id}` has not started: it waits for one of the tenant's running executions to end (its quota)"
                )))
            }
            None => Err(ApiError::not_found(format!("no execution `{id}`"))),
        }
    }

    async fn list_executions(
        &self,
        p: &Principal,
        r: Executions,
    ) -> Result<Vec<ExecutionSummary>, ApiError> {
        let list = self
            .executions_before(
                &p.tenant,
                r.pipeline.as_deref(),
                r.status,
                r.before.as_deref(),
                r.limit.unwrap_or(20).min(MAX_LIST),
            )
            .await?;
        Ok(list.iter().map(ExecutionSummary::from).collect())
    }

    async fn waiting_approvals(
        &self,
        p: &Principal,
        r: Approvals,
    ) -> Result<Vec<crate::bus::Event>, ApiError> {
        let running = self
            .executions_before(
                &p.tenant,
                r.pipeline.as_deref(),
                Some(crate::scheduler::Status::InProgress),
                None,
                MAX_LIST,
            )
            .await?;
        let mut out = Vec::new();
        for e in &running {
            for (si, stage) in e.stages.iter().enumerate() {
                for (ai, a) in stage.actions.iter().enumerate() {
                    let waits = a
                        .waiting
                        .as_ref()
                        .is_some_and(|w| w.wake == crate::scheduler::Wake::Approval);
                    let Some(mut event) = waits
                        .then(|| sluice_core::events::approval_event(e, si, ai))
                        .flatten()
                    else {
                        continue;
                    };
                    let notice = event.approval.as_mut().expect("an approval event");
                    if let Some(who) = &r.approver {
                        let listed = notice.approvers.is_empty() || notice.approvers.contains(who);
                        if !listed || a.decisions.iter().any(|d| &d.by == who) {
                            continue;
                        }
                    }
                    // The token decides without a name: it stays with the notification.
                    notice.token.clear();
                    out.push(event);
                }
            }
        }
        out.sort_by_key(|e| e.at);
        Ok(out)
    }

    async fn stop(&self, p: &Principal, r: Stop) -> Result<ExecutionState, ApiError> {
        let at = crate::clock::now();
        let exec = self
            .control(&p.tenant, &r.execution_id, |_| {
                Ok(Input::Stop {
                    abandon: r.abandon,
                    reason: r.reason.clone(),
                    at,
                })
            })
            .await?;
        Ok(ExecutionState {
            execution_id: r.execution_id,
            status: exec.status,
        })
    }

    async fn retry(&self, p: &Principal, r: Retry) -> Result<ExecutionState, ApiError> {
        let at = crate::clock::now();
        let exec = self
            .control(&p.tenant, &r.execution_id, |e| {
                let index = e
                    .stages
                    .iter()
                    .position(|s| s.name == r.stage)
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "execution `{}` has no stage `{}`",
                            r.execution_id, r.stage
                        ))
                    })?;
                Ok(Input::Retry {
                    stage: index,
                    all: r.all,
                    at,
                })
            })
            .await?;
        Ok(ExecutionState {
            execution_id: r.execution_id,
            status: exec.status,
        })
    }

    async fn approve(&self, p: &Principal, r: Approve) -> Result<Decided, ApiError> {
        let at = crate::clock::now();
        let by = self.acting_as(p, Some(&r.by))?;
        let exec = self
            .control(&p.tenant, &r.execution_id, |e| {
                let (stage, index) = find(e, &r.execution_id, &r.action)?;
                let waiting = e.stages[stage].actions[index].waiting.as_ref();
                if let (Some(t), Some(w)) = (&r.token, waiting)
                    && !bool::from(subtle::ConstantTimeEq::ct_eq(
                        t.as_bytes(),
                        w.token.as_bytes(),
                    ))
                {
                    // The real token is the approvers' secret: never in a reply.
                    return Err(ApiError::forbidden(format!(
                        "the token does not match the pending approval of {}",
                        r.action
                    )));
                }
                Ok(Input::Decide {
                    stage,
                    action: index,
                    decision: Decision {
                        approved: r.approved,
                        by: by.clone(),
                        at,
                        summary: r.summary.clone(),
                    },
                    at,
                })
            })
            .await?;
        Ok(Decided {
            execution_id: r.execution_id,
            status: exec.status,
            decision: if r.approved { "approved" } else { "rejected" }.into(),
        })
    }

    async fn wake(&self, p: &Principal, r: Wake) -> Result<ExecutionState, ApiError> {
        let at = crate::clock::now();
        let exec = self
            .control(&p.tenant, &r.execution_id, |e| {
                let (stage, index) = find(e, &r.execution_id, &r.action)?;
                match e.stages[stage].actions[index]
                    .waiting
                    .as_ref()
                    .map(|w| &w.wake)
                {
                    Some(crate::scheduler::Wake::Event(_)) => Ok(Input::Wake {
                        stage,
                        action: index,
                        payload: r.payload.clone(),
                        at,
                    }),
                    _ => Err(ApiError::conflict(format!(
                        "{} is not waiting for an event",
                        r.action
                    ))),
                }
            })
            .await?;
        Ok(ExecutionState {
            execution_id: r.execution_id,
            status: exec.status,
        })
    }

    async fn list_dead_letters(
        &self,
        p: &Principal,
        r: DeadLetters,
    ) -> Result<Vec<DeadLetterSummary>, ApiError> {
        let list = self
            .dead_letters(
                &p.tenant,
                r.pipeline.as_deref(),
                r.limit.unwrap_or(20).min(MAX_LIST),
            )
            .await?;
        Ok(list
            .into_iter()
            .map(|(id, letter)| dead_letter_summary(id, letter))
            .collect())
    }

    async fn replay_dead_letter(
        &self,
        p: &Principal,
        r: DeadLetterReplay,
    ) -> Result<Replayed, ApiError> {
        let (tenant, id) = (&p.tenant, &r.id);
        let (letter, key) = self.dead_letter(tenant, id).await?;
        let event = TriggerEvent::parse(letter.payload.as_bytes()).map_err(|e| {
            ApiError::invalid(format!("dead letter `{id}` cannot be replayed: {e}"))
        })?;
        let pipeline = letter.pipeline;
        let loaded = self
            .load(tenant, &pipeline, None)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "dead letter `{id}`: no pipeline `{pipeline}` is registered (register it with `sluice pipeline put FILE`)"
                ))
            })?;
        crate::service::takes(&loaded, &event, &pipeline)
            .map_err(|e| ApiError::invalid(format!("dead letter `{id}` is still refused: {e}")))?;
        // A replay starts like any start: within the tenant's policy and quotas.
        self.check_policy(tenant, &loaded).await?;
        self.refuse_over_quota(tenant).await?;
        // The first delivery's message id may still be in the stream's dedup window.
        let msg_id = format!("{}/replay/{id}", event.id);
        let (execution_id, _) = self.trigger_as(tenant, &pipeline, &event, &msg_id).await?;
        if let Err(e) = self.edges.executions.delete(&key).await {
            tracing::warn!("dead letter {key} replayed but not removed: {e}");
        }
        Ok(Replayed {
            execution_id,
            event_id: event.id,
            pipeline,
        })
    }

    async fn logs_of(&self, p: &Principal, r: Logs) -> Result<LogPage, ApiError> {
        // The execution must be the tenant's: log files are kept by execution id alone.
        let exec = self.get_execution(p, &r.execution_id).await?;
        let (si, ai) = exec.find_action(&r.stage, &r.action).ok_or_else(|| {
            ApiError::not_found(format!(
                "execution `{}` has no action {}/{}",
                r.execution_id, r.stage, r.action
            ))
        })?;
        let run = &exec.stages[si].actions[ai];
        let attempt = r.attempt.unwrap_or(run.attempt);
        if attempt > run.attempt {
            return Err(ApiError::not_found(format!(
                "{}/{} has no attempt {attempt} (it is at {})",
                r.stage, r.action, run.attempt
            )));
        }
        let complete =
            exec.status.is_terminal() || attempt < run.attempt || run.status.is_terminal();
        let (logs, id, stage, action) = (
            self.engine.logs.clone(),
            r.execution_id.clone(),
            r.stage.clone(),
            r.action.clone(),
        );
        // A build's log may be large: read it off the async workers.
        let local = tokio::task::spawn_blocking(move || logs.read(&id, &stage, &action))
            .await
            .map_err(ApiError::internal)?
            .unwrap_or_default();
        let mut lines: Vec<_> = local.into_iter().filter(|l| l.attempt == attempt).collect();
        // Another engine ran it: its copy in the shared archive (once the attempt ended).
        if lines.is_empty()
            && attempt > 0
            && let Some(archive) = &self.edges.archive_log
        {
            lines = archive
                .get(crate::executor::logs::AttemptRef {
                    tenant: p.tenant.clone(),
                    execution: r.execution_id.clone(),
                    stage: r.stage.clone(),
                    action: r.action.clone(),
                    attempt,
                })
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?
                .unwrap_or_default();
        }
        Ok(LogPage {
            attempt,
            lines: lines
                .into_iter()
                .map(|l| LogEntry {
                    at: l.at,
                    attempt: l.attempt,
                    level: serde_json::to_value(l.level)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    message: l.message,
                    fields: l.fields,
                })
                .collect(),
            complete,
        })
    }

    async fn plugin_list(&self) -> Result<Vec<sluice_core::plugin::Description>, ApiError> {
        let mut out = Vec::new();
        for name in crate::plugins::builtin::names() {
            let plugin = self
                .engine
                .registry
                .resolve(&name, std::path::Path::new(""))
                .await
                .map_err(ApiError::internal)?;
            out.push(plugin.description.clone());
        }
        Ok(out)
    }

    /// Publish a trigger event the way any publisher would, and wait until an engine has
    /// recorded its execution. Returns the execution id.
    pub async fn trigger(
        &self,
        tenant: &str,
        pipeline: &str,
        event: &TriggerEvent,
    ) -> Result<String, ApiError> {
        Ok(self.trigger_as(tenant, pipeline, event, &event.id).await?.0)
    }

    /// [`Service::trigger`], the event sent with message id `msg_id` (the queue's dedup key).
    /// Also returns whether the execution is known to be recorded (`false`: recorded, or in the
    /// tenant's queue).
    async fn trigger_as(
        &self,
        tenant: &str,
        pipeline: &str,
        event: &TriggerEvent,
        msg_id: &str,
    ) -> Result<(String, bool), ApiError> {
        let subject = crate::subjects::trigger_subject(tenant, pipeline);
        // In line before the event is out: the engine recording it wakes us (see `started`).
        let waiter = self.awaited.wait_for(&crate::service::triggers::claim_key(
            tenant, pipeline, &event.id,
        ));
        self.edges
            .triggers
            .push(
                &subject,
                msg_id,
                serde_json::to_vec(event).map_err(ApiError::internal)?,
            )
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Most events are claimed within a millisecond or two: look soon, then less often. This
        // engine wakes us when it records the execution; the reads are for another engine's.
        let mut pause = Duration::from_millis(1);
        let longest = if self.edges.triggers.local() {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(20)
        };
        loop {
            if let Some(id) = waiter.recorded() {
                return Ok((id, true));
            }
            // Another engine's execution, or one in the tenant's queue: read. A wake-up meanwhile
            // answers at once, without waiting for the read to come back.
            let read = async {
                if let Some(id) = self.claimed(tenant, pipeline, &event.id).await? {
                    // The claim comes first; wait for the record itself, or its place in the
                    // tenant's queue.
                    if self.execution(tenant, &id).await?.is_some()
                        || self.queued(tenant).await?.contains(&id)
                    {
                        return Ok::<_, ApiError>(Some(id));
                    }
                }
                Ok(None)
            };
            tokio::select! {
                biased;
                id = waiter.woken() => return Ok((id, true)),
                found = read => if let Some(id) = found? {
                    return Ok((id, false));
                },
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::unavailable(format!(
                    "event `{}` was queued but no engine started it within 30 s (see `sluice deadletter`)",
                    event.id
                )));
            }
            waiter.woken_or(pause).await;
            pause = (pause * 2).min(longest);
        }
    }
}
