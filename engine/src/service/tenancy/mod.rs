//! Tenancy for a hosted service (`sluice serve --auth`): who is asking (tokens), what each
//! tenant's pipelines may grant (policies), how much it may use (quotas), and the audit trail
//! of every change and every refusal. Without `--auth` the service has one user, every role
//! in the tenant the client names, and none of this applies.
//!
//! Records live in the service's own buckets: tokens and tenants in the pipelines bucket
//! under `_auth/` (no tenant name starts with `_`), audit records in the executions bucket
//! under `<tenant>/audit/<ulid>`.
pub mod policy;
pub mod tokens;

use super::Service;
use crate::kv::get_json;
use sluice_api::tenancy::{
    AuditRecord, Policy, Quotas, TenantInfo, TokenCreated, TokenInfo, Usage,
};
use sluice_api::verbs::{self, Named};
use sluice_api::{ApiError, Code, Origin, Principal, Request, Role};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tenant under which refusals of requests that named no valid tenant are kept.
const NO_TENANT: &str = "_invalid";
/// How long audit records are kept unless `--audit-keep` says otherwise.
pub const AUDIT_KEEP: Duration = Duration::from_secs(90 * 24 * 3600);
/// The most records `audit` returns.
const MAX_AUDIT: usize = 1000;

/// The service's tenancy state: on or off, and each tenant's trigger budget on this engine.
#[derive(Default)]
pub struct Tenancy {
    on: std::sync::atomic::AtomicBool,
    keep: Mutex<Option<Duration>>,
    /// Per tenant: tokens left and when they were counted (a token bucket per engine).
    rates: Mutex<HashMap<String, (f64, Instant)>>,
    /// Audit writes since the last pruning.
    written: std::sync::atomic::AtomicU64,
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::Unauthenticated, message)
}

fn tenant_key(name: &str) -> String {
    format!("_auth/tenants/{name}")
}

impl Service {
    /// Turn authentication on (`sluice serve --auth`), keeping audit records for `keep`.
    pub fn enable_auth(&self, keep: Duration) {
        self.tenancy
            .on
            .store(true, std::sync::atomic::Ordering::SeqCst);
        *self.tenancy.keep.lock().unwrap() = Some(keep);
    }

    /// Whether requests must carry a token.
    pub fn auth_on(&self) -> bool {
        self.tenancy.on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The principal behind a request: with authentication off, the single user acting for
    /// the tenant the client names; with it on, the token's holder, in the token's tenant
    /// (a client naming another tenant is refused; an operator acts in the one named).
    /// Failures are audited.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        claimed: &str,
        origin: Origin,
    ) -> Result<Principal, ApiError> {
        if !self.auth_on() {
            return Ok(Principal::local(claimed, origin));
        }
        let refused = match self.principal_of(token, claimed, origin).await {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        self.audit(AuditRecord {
            at: crate::clock::now(),
            tenant: claimed.to_string(),
            principal: "anonymous".into(),
            verb: "authenticate".into(),
            target: String::new(),
            outcome: refused.code.as_str().into(),
            reason: Some(refused.message.clone()),
        })
        .await;
        Err(refused)
    }

    async fn principal_of(
        &self,
        token: Option<&str>,
        claimed: &str,
        origin: Origin,
    ) -> Result<Principal, ApiError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
            unauthenticated(
                "this service requires a token: pass --token or set SLUICE_TOKEN (HTTP: `Authorization: Bearer …`)",
            )
        })?;
        let (id, secret) =
            tokens::parse(token).ok_or_else(|| unauthenticated("the token is malformed"))?;
        let stored = get_json::<tokens::StoredToken>(&*self.edges.pipelines, &tokens::key(id))
            .await?
            .map(|(t, _)| t);
        // One answer for unknown ids and wrong secrets: nothing to learn from the difference.
        let Some(stored) = stored.filter(|t| tokens::matches(secret, &t.hash)) else {
            return Err(unauthenticated("the token is not valid"));
        };
        let info = stored.info;
        if info.revoked {
            return Err(unauthenticated(format!(
                "the token `{}` was revoked",
                info.name
            )));
        }
        if info.expires_at.is_some_and(|e| e <= crate::clock::now()) {
            return Err(unauthenticated(format!(
                "the token `{}` has expired",
                info.name
            )));
        }
        let tenant = match &info.tenant {
            // An operator acts in the tenant the request names.
            None => claimed.to_string(),
            Some(t) => {
                if self.tenant(t).await?.is_none() {
                    return Err(unauthenticated(format!(
                        "the token `{}` belongs to a tenant that was removed",
                        info.name
                    )));
                }
                // The client's default tenant stands for "the token's".
                if claimed != t && claimed != crate::executor::DEFAULT_TENANT {
                    return Err(ApiError::forbidden(format!(
                        "the token `{}` is for tenant `{t}`, not `{claimed}`",
                        info.name
                    )));
                }
                t.clone()
            }
        };
        Ok(Principal {
            tenant,
            subject: Some(info.name),
            roles: vec![info.role],
            origin,
        })
    }

    /// Who acts, for records of decisions and starts: with authentication on, always the
    /// principal (naming someone else is refused); without, the name the client gives.
    pub(in crate::service) fn acting_as(
        &self,
        p: &Principal,
        given: Option<&str>,
    ) -> Result<String, ApiError> {
        let given = given.map(str::trim).filter(|g| !g.is_empty());
        if !self.auth_on() {
            return Ok(given.unwrap_or("unknown").to_string());
        }
        match given {
            Some(g) if g != p.name() => Err(ApiError::forbidden(format!(
                "with authentication you act as your token's holder `{}`, not `{g}` (leave out --as)",
                p.name()
            ))),
            _ => Ok(p.name().to_string()),
        }
    }

    /// Keep an audit record (authentication on only). A record that cannot be written is
    /// logged: the call it records has happened.
    pub(in crate::service) async fn audit(&self, record: AuditRecord) {
        if !self.auth_on() {
            return;
        }
        let tenant = if sluice_api::limits::check_tenant(&record.tenant).is_ok() {
            record.tenant.clone()
        } else {
            NO_TENANT.to_string()
        };
        let key = format!("{tenant}/audit/{}", ulid::Ulid::new());
        match serde_json::to_vec(&record) {
            Ok(bytes) => {
                if let Err(e) = self.edges.executions.create(&key, bytes).await {
                    tracing::warn!("audit record not kept: {e} ({record:?})");
                }
            }
            Err(e) => tracing::warn!("audit record not kept: {e}"),
        }
        // Old records go now and then, not on every write.
        let n = self
            .tenancy
            .written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(256) {
            self.prune_audit(&tenant).await;
        }
    }

    async fn prune_audit(&self, tenant: &str) {
        let keep = self.tenancy.keep.lock().unwrap().unwrap_or(AUDIT_KEEP);
        let Some(cutoff) = crate::clock::now().0.checked_sub(keep.as_millis() as u64) else {
            return;
        };
        let prefix = format!("{tenant}/audit/");
        let Ok(keys) = self.edges.executions.keys(&prefix).await else {
            return;
        };
        for key in keys {
            let old = key[prefix.len()..]
                .parse::<ulid::Ulid>()
                .is_ok_and(|u| u.timestamp_ms() < cutoff);
            if !old {
                break; // ULIDs sort by time
            }
            let _ = self.edges.executions.delete(&key).await;
        }
    }

    /// The audit record of a request's outcome, if it is one to keep: every change, every
    /// refusal for lack of credentials, rights or quota.
    pub(in crate::service) async fn audit_call(
        &self,
        p: &Principal,
        request: &Request,
        outcome: &Result<serde_json::Value, ApiError>,
    ) {
        if !self.auth_on() {
            return;
        }
        let refused = outcome.as_ref().err();
        let worth = request.role() != Role::Viewer
            || refused.is_some_and(|e| {
                matches!(
                    e.code,
                    Code::Forbidden | Code::Unauthenticated | Code::QuotaExceeded
                )
            });
        if !worth {
            return;
        }
        self.audit(AuditRecord {
            at: crate::clock::now(),
            tenant: p.tenant.clone(),
            principal: p.name().to_string(),
            verb: request.verb().to_string(),
            target: request.target(),
            outcome: refused.map_or("ok", |e| e.code.as_str()).to_string(),
            reason: refused.map(|e| e.message.clone()),
        })
        .await;
    }

    /// A tenant's record, if it exists.
    pub async fn tenant(&self, name: &str) -> Result<Option<TenantInfo>, ApiError> {
        Ok(
            get_json::<TenantInfo>(&*self.edges.pipelines, &tenant_key(name))
                .await?
                .map(|(t, _)| t),
        )
    }

    /// The policy and quotas that apply to `tenant`: its record's with authentication on;
    /// none (everything allowed) without.
    pub(in crate::service) async fn rules_of(
        &self,
        tenant: &str,
    ) -> Result<Option<(Policy, Quotas)>, ApiError> {
        if !self.auth_on() {
            return Ok(None);
        }
        Ok(Some(match self.tenant(tenant).await? {
            Some(t) => (t.policy, t.quotas),
            // No record (an operator acting in a tenant not created): nothing outside the
            // sandbox, no limits.
            None => (Policy::default(), Quotas::default()),
        }))
    }

    /// Refuse a pipeline whose grants the tenant's policy does not allow, with their lines.
    pub(in crate::service) async fn check_policy(
        &self,
        tenant: &str,
        loaded: &super::Loaded,
    ) -> Result<(), ApiError> {
        let Some((policy, _)) = self.rules_of(tenant).await? else {
            return Ok(());
        };
        let refusals = policy::refusals(&loaded.pipeline, &loaded.plugins, &policy, tenant);
        if refusals.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid_pipeline(
            refusals
                .into_iter()
                .map(|(loc, message)| sluice_api::Problem {
                    file: loaded.pipeline.file.clone(),
                    line: loc.line,
                    column: loc.col,
                    message,
                })
                .collect(),
        ))
    }

    /// Refuse a new pipeline beyond the tenant's quota of registered pipelines.
    pub(in crate::service) async fn check_pipeline_quota(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let Some((_, quotas)) = self.rules_of(tenant).await? else {
            return Ok(());
        };
        let Some(max) = quotas.pipelines else {
            return Ok(());
        };
        let registered = super::pipelines::list(&*self.edges.pipelines, tenant).await?;
        if registered.iter().any(|p| p.name == name) {
            return Ok(()); // a new version
        }
        if registered.len() as u64 >= max {
            return Err(ApiError::new(
                Code::QuotaExceeded,
                format!(
                    "tenant `{tenant}` may register {max} pipelines and has {}",
                    registered.len()
                ),
            ));
        }
        Ok(())
    }

    /// Why a new execution of `tenant` may not start now (its quota of running executions,
    /// or of triggers per second on this engine), if it may not.
    pub(in crate::service) async fn start_quota_refusal(
        &self,
        tenant: &str,
        count_rate: bool,
    ) -> Result<Option<String>, ApiError> {
        let Some((_, quotas)) = self.rules_of(tenant).await? else {
            return Ok(None);
        };
        if let Some(rate) = quotas.triggers_per_second.filter(|r| *r > 0 && count_rate) {
            let mut rates = self.tenancy.rates.lock().unwrap();
            let now = Instant::now();
            let (left, since) = rates
                .entry(tenant.to_string())
                .or_insert((rate as f64, now));
            *left =
                (*left + now.duration_since(*since).as_secs_f64() * rate as f64).min(rate as f64);
            *since = now;
            if *left < 1.0 {
                return Ok(Some(format!(
                    "quota_exceeded: tenant `{tenant}` may start {rate} executions per second"
                )));
            }
            *left -= 1.0;
        }
        if let Some(max) = quotas.concurrent_executions {
            let running = self.running_count(tenant, max as usize + 1).await?;
            if running as u64 >= max {
                return Ok(Some(format!(
                    "quota_exceeded: tenant `{tenant}` may run {max} executions at once"
                )));
            }
        }
        Ok(None)
    }

    /// Why a trigger of `tenant` may not start an execution of `loaded` (its policy, which may
    /// have tightened since the pipeline was registered, or its quotas), if it may not.
    /// `count_rate`: the start was not counted against the trigger rate yet (a `start`
    /// request was, when it was made).
    pub(in crate::service) async fn admission(
        &self,
        tenant: &str,
        loaded: &super::Loaded,
        count_rate: bool,
    ) -> Result<Option<String>, ApiError> {
        if !self.auth_on() {
            return Ok(None);
        }
        if let Err(e) = self.check_policy(tenant, loaded).await {
            let lines = e.problem_lines();
            return Ok(Some(format!(
                "policy: {}",
                if lines.is_empty() { e.message } else { lines }
            )));
        }
        self.start_quota_refusal(tenant, count_rate).await
    }

    /// Executions of `tenant` running now, counted up to `up_to`.
    async fn running_count(&self, tenant: &str, up_to: usize) -> Result<usize, ApiError> {
        Ok(self
            .executions_before(
                tenant,
                None,
                Some(crate::scheduler::Status::InProgress),
                None,
                up_to,
            )
            .await?
            .len())
    }

    /// `token.create`.
    pub(in crate::service) async fn token_create(
        &self,
        p: &Principal,
        r: verbs::TokenCreate,
    ) -> Result<TokenCreated, ApiError> {
        let role = Role::parse(&r.role).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown role `{}`: viewer, approver, developer, admin or operator",
                r.role
            ))
        })?;
        sluice_api::limits::check_tenant(&r.name)
            .map_err(|_| ApiError::invalid(format!("invalid token name `{}`", r.name)))?;
        let operator = p.may(Role::Operator);
        let tenant = match (role, &r.tenant) {
            (Role::Operator, _) if !operator => {
                return Err(ApiError::forbidden(
                    "only an operator may make operator tokens",
                ));
            }
            (Role::Operator, _) => None,
            (_, Some(t)) if t != &p.tenant && !operator => {
                return Err(ApiError::forbidden(format!(
                    "you may make tokens for tenant `{}` only",
                    p.tenant
                )));
            }
            (_, t) => Some(t.clone().unwrap_or_else(|| p.tenant.clone())),
        };
        if let Some(t) = &tenant
            && self.tenant(t).await?.is_none()
        {
            return Err(ApiError::not_found(format!(
                "no tenant `{t}` (the operator creates it: `sluice tenant create {t}`)"
            )));
        }
        let expires_at = match &r.expires {
            Some(e) => {
                let d = crate::model::units::parse_duration(e)
                    .map_err(|m| ApiError::invalid(format!("`expires`: {m}")))?;
                Some(crate::scheduler::Timestamp(
                    crate::clock::now().0 + d.as_millis() as u64,
                ))
            }
            None => None,
        };
        let (token, id, hash) = tokens::mint();
        // The name is unique in its tenant: claimed first.
        let name_key = tokens::name_key(tenant.as_deref(), &r.name);
        self.edges
            .pipelines
            .create(&name_key, id.clone().into_bytes())
            .await
            .map_err(|e| match e {
                crate::kv::KvError::Conflict { .. } => {
                    ApiError::conflict(format!("a token named `{}` exists", r.name))
                }
                other => other.into(),
            })?;
        let info = TokenInfo {
            id: id.clone(),
            name: r.name,
            tenant,
            role,
            created_at: crate::clock::now(),
            expires_at,
            revoked: false,
        };
        let stored = tokens::StoredToken {
            info: info.clone(),
            hash,
        };
        self.edges
            .pipelines
            .create(
                &tokens::key(&id),
                serde_json::to_vec(&stored).map_err(ApiError::internal)?,
            )
            .await?;
        Ok(TokenCreated { token, info })
    }

    /// Every token record, or those of one tenant (`Some(None)`: operators').
    async fn tokens(&self, tenant: Option<Option<&str>>) -> Result<Vec<TokenInfo>, ApiError> {
        let mut out = Vec::new();
        for key in self.edges.pipelines.keys("_auth/tokens/").await? {
            if let Some((t, _)) =
                get_json::<tokens::StoredToken>(&*self.edges.pipelines, &key).await?
                && tenant.is_none_or(|want| t.info.tenant.as_deref() == want)
            {
                out.push(t.info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The tenant an admin's request about tokens or usage concerns: its own, or (for an
    /// operator) the one named.
    fn concerned<'a>(&self, p: &'a Principal, named: Option<&'a str>) -> Result<&'a str, ApiError> {
        match named {
            Some(t) if t != p.tenant && !p.may(Role::Operator) => Err(ApiError::forbidden(
                format!("you may see tenant `{}` only", p.tenant),
            )),
            Some(t) => Ok(t),
            None => Ok(&p.tenant),
        }
    }

    /// `token.ls`.
    pub(in crate::service) async fn token_ls(
        &self,
        p: &Principal,
        r: verbs::TokenLs,
    ) -> Result<Vec<TokenInfo>, ApiError> {
        let tenant = self.concerned(p, r.tenant.as_deref())?.to_string();
        let mut list = self.tokens(Some(Some(&tenant))).await?;
        if p.may(Role::Operator) && r.tenant.is_none() {
            list.extend(self.tokens(Some(None)).await?);
        }
        Ok(list)
    }

    /// `token.revoke`.
    pub(in crate::service) async fn token_revoke(
        &self,
        p: &Principal,
        r: verbs::TokenRevoke,
    ) -> Result<TokenInfo, ApiError> {
        let tenant = self.concerned(p, r.tenant.as_deref())?.to_string();
        let mut candidates = self.tokens(Some(Some(&tenant))).await?;
        if p.may(Role::Operator) {
            candidates.extend(self.tokens(Some(None)).await?);
        }
        let found = candidates
            .into_iter()
            .find(|t| t.name == r.name || t.id == r.name)
            .ok_or_else(|| ApiError::not_found(format!("no token `{}`", r.name)))?;
        let revoked = crate::kv::modify::<tokens::StoredToken, _>(
            &*self.edges.pipelines,
            &tokens::key(&found.id),
            |t| {
                t.map(|mut t| {
                    t.info.revoked = true;
                    t
                })
            },
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token `{}`", r.name)))?;
        Ok(revoked.info)
    }

    /// `tenant.create`.
    pub(in crate::service) async fn tenant_create(
        &self,
        r: verbs::TenantCreate,
    ) -> Result<TenantInfo, ApiError> {
        sluice_api::limits::check_tenant(&r.name)?;
        let info = TenantInfo {
            name: r.name.clone(),
            policy: r.policy,
            quotas: r.quotas,
            created_at: crate::clock::now(),
        };
        self.edges
            .pipelines
            .create(
                &tenant_key(&r.name),
                serde_json::to_vec(&info).map_err(ApiError::internal)?,
            )
            .await
            .map_err(|e| match e {
                crate::kv::KvError::Conflict { .. } => {
                    ApiError::conflict(format!("tenant `{}` exists", r.name))
                }
                other => other.into(),
            })?;
        Ok(info)
    }

    /// `tenant.ls`.
    pub(in crate::service) async fn tenant_ls(&self) -> Result<Vec<TenantInfo>, ApiError> {
        let mut out = Vec::new();
        for key in self.edges.pipelines.keys("_auth/tenants/").await? {
            if let Some((t, _)) = get_json::<TenantInfo>(&*self.edges.pipelines, &key).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// `tenant.set`.
    pub(in crate::service) async fn tenant_set(
        &self,
        r: verbs::TenantSet,
    ) -> Result<TenantInfo, ApiError> {
        crate::kv::modify::<TenantInfo, _>(&*self.edges.pipelines, &tenant_key(&r.name), |t| {
            t.map(|mut t| {
                if let Some(p) = &r.policy {
                    t.policy = p.clone();
                }
                if let Some(q) = &r.quotas {
                    t.quotas = q.clone();
                }
                t
            })
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant `{}`", r.name)))
    }

    /// `tenant.rm`: the tenant's tokens stop working; its data stays.
    pub(in crate::service) async fn tenant_rm(
        &self,
        r: verbs::TenantRm,
    ) -> Result<Named, ApiError> {
        if self.tenant(&r.name).await?.is_none() {
            return Err(ApiError::not_found(format!("no tenant `{}`", r.name)));
        }
        self.edges.pipelines.delete(&tenant_key(&r.name)).await?;
        Ok(Named { name: r.name })
    }

    /// `tenant.usage`.
    pub(in crate::service) async fn tenant_usage(
        &self,
        p: &Principal,
        r: verbs::TenantUsage,
    ) -> Result<Usage, ApiError> {
        let tenant = self.concerned(p, r.name.as_deref())?.to_string();
        let quotas = self
            .tenant(&tenant)
            .await?
            .map(|t| t.quotas)
            .unwrap_or_default();
        Ok(Usage {
            pipelines: super::pipelines::list(&*self.edges.pipelines, &tenant)
                .await?
                .len() as u64,
            running_executions: self.running_count(&tenant, super::api::MAX_LIST).await? as u64,
            quotas,
            tenant,
        })
    }

    /// `audit`: the principal's tenant's records, or every tenant's for an operator.
    pub(in crate::service) async fn audit_ls(
        &self,
        p: &Principal,
        r: verbs::Audit,
    ) -> Result<Vec<AuditRecord>, ApiError> {
        let limit = r.limit.unwrap_or(100).min(MAX_AUDIT);
        let tenants: Vec<String> = if r.all_tenants {
            if !p.may(Role::Operator) {
                return Err(ApiError::forbidden(
                    "only an operator may read every tenant's audit",
                ));
            }
            let mut all: Vec<String> = self
                .tenant_ls()
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            all.push(NO_TENANT.into());
            all.push(crate::executor::DEFAULT_TENANT.into());
            all.dedup();
            all
        } else {
            vec![p.tenant.clone()]
        };
        let mut keys = Vec::new();
        for t in &tenants {
            let prefix = format!("{t}/audit/");
            for key in self.edges.executions.keys(&prefix).await? {
                keys.push((key[prefix.len()..].to_string(), key));
            }
        }
        keys.sort();
        keys.reverse();
        let mut out = Vec::new();
        for (_, key) in keys.into_iter().take(limit) {
            if let Some((r, _)) = get_json::<AuditRecord>(&*self.edges.executions, &key).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// On a first start with authentication, an operator token (`name`), for the person who
    /// runs the service to create tenants with. `None` when operators exist already.
    pub async fn bootstrap_operator(&self) -> Result<Option<String>, ApiError> {
        // One engine wins, however many start at once.
        match self
            .edges
            .pipelines
            .create("_auth/bootstrap", b"1".to_vec())
            .await
        {
            Ok(_) => {}
            Err(crate::kv::KvError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let operator = Principal::local("_operator-bootstrap", Origin::HostUser);
        let made = self
            .token_create(
                &operator,
                verbs::TokenCreate {
                    name: "operator".into(),
                    role: "operator".into(),
                    tenant: None,
                    expires: None,
                },
            )
            .await?;
        Ok(Some(made.token))
    }

    /// Whether `digest` is an artifact of `tenant`'s: named by one of its newest executions
    /// (an input or output of an action) or one of its pipelines' folders. With
    /// authentication off, every stored artifact is the one user's.
    pub async fn owns_artifact(&self, tenant: &str, digest: &str) -> Result<bool, ApiError> {
        if !self.auth_on() {
            return Ok(true);
        }
        for stored in super::pipelines::list(&*self.edges.pipelines, tenant).await? {
            if stored.bundle.as_deref() == Some(digest) {
                return Ok(true);
            }
        }
        let recent = self
            .executions_before(tenant, None, None, None, super::api::MAX_LIST)
            .await?;
        Ok(recent.iter().any(|e| {
            e.stages.iter().flat_map(|s| &s.actions).any(|a| {
                a.artifacts.values().any(|d| d == digest) || a.inputs.values().any(|d| d == digest)
            })
        }))
    }
}
