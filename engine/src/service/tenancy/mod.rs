//! Tenancy for a hosted service (`sluice serve --auth`): who is asking (tokens), what each
//! tenant's pipelines may grant (policies), how much it may use (quotas), and the audit trail
//! of every change and every refusal. Without `--auth` the service has one user, every role
//! in the tenant the client names, and none of this applies.
//!
//! Records live in the service's own buckets: tokens and tenants in the pipelines bucket
//! under `_auth/` (no tenant name starts with `_`), audit records in the audit bucket under
//! `<tenant>/<ulid>`.
mod admin;
mod audit;
mod limits;
pub(in crate::service) use limits::Refused;
pub mod policy;
pub(super) mod queue;
pub mod tokens;

use super::Service;
use crate::kv::get_json;
use sluice_api::tenancy::AuditRecord;
use sluice_api::verbs;
use sluice_api::{ApiError, Code, Origin, Principal};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tenant under which refusals of requests that named no valid tenant are kept.
const NO_TENANT: &str = "_invalid";
/// How long audit records are kept unless `--audit-keep` says otherwise.
pub const AUDIT_KEEP: Duration = Duration::from_secs(90 * 24 * 3600);

/// The service's tenancy state: on or off, and each tenant's trigger budget on this engine.
#[derive(Default)]
pub struct Tenancy {
    on: std::sync::atomic::AtomicBool,
    keep: Mutex<Option<Duration>>,
    /// Per tenant: tokens left and when they were counted (a token bucket per engine).
    rates: Mutex<HashMap<String, (f64, Instant)>>,
    /// Audit writes since the last pruning.
    written: std::sync::atomic::AtomicU64,
    /// Per tenant (one that exists, or `_invalid`): failed authentications this engine may
    /// still record now, when they were counted, and how many went unrecorded since the last
    /// record (see `authenticate`).
    refusals: Mutex<HashMap<String, (f64, Instant, u64)>>,
}

/// Failed authentications recorded per second and tenant on an engine, at most (with a burst
/// of as many): anyone may send requests without a valid token, as fast as they like.
const REFUSALS_PER_SECOND: f64 = 10.0;

impl Tenancy {
    /// Whether a failed authentication in `tenant` is recorded now; if so, with how many went
    /// unrecorded before it.
    fn refusal_recorded(&self, tenant: &str) -> Option<u64> {
        let mut refusals = self.refusals.lock().unwrap();
        let (left, since, unrecorded) =
            refusals
                .entry(tenant.to_string())
                .or_insert((REFUSALS_PER_SECOND, Instant::now(), 0));
        if !take_one(left, since, REFUSALS_PER_SECOND) {
            *unrecorded += 1;
            return None;
        }
        Some(std::mem::take(unrecorded))
    }
}

/// A token bucket of `rate` a second with a burst of as many (`left` tokens, refilled `since`):
/// refill it, and take one if there is one.
pub(super) fn take_one(left: &mut f64, since: &mut Instant, rate: f64) -> bool {
    let now = Instant::now();
    *left = (*left + now.duration_since(*since).as_secs_f64() * rate).min(rate);
    *since = now;
    if *left < 1.0 {
        return false;
    }
    *left -= 1.0;
    true
}

/// What the audit records of a request: its verb, the role it needs and what it names.
pub(in crate::service) struct Call {
    verb: &'static str,
    role: sluice_api::Role,
    target: String,
}

impl Call {
    pub(in crate::service) fn of(request: &sluice_api::Request) -> Self {
        Call {
            verb: request.verb(),
            role: request.role(),
            target: request.target(),
        }
    }
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::Unauthenticated, message)
}

/// Where a tenant's record lives (the pipelines bucket, under `_auth/`).
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
        if let Some(stores) = &self.engine.artifacts {
            stores.limit_by(std::sync::Arc::new(limits::RecordedQuotas(
                self.edges.pipelines.clone(),
            )));
        }
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
        // Kept under the tenant named only if it exists (else under `_invalid`: a name made up
        // for each request would leave records nothing prunes), and only so many a second.
        let tenant = match self.tenant(claimed).await {
            Ok(Some(_)) => claimed,
            _ => NO_TENANT,
        };
        if let Some(unrecorded) = self.tenancy.refusal_recorded(tenant) {
            let mut reason = refused.message.clone();
            if unrecorded > 0 {
                reason.push_str(&format!(
                    " (and {unrecorded} more failed authentications not recorded one by one)"
                ));
            }
            self.audit(AuditRecord {
                at: crate::clock::now(),
                tenant: tenant.to_string(),
                principal: "anonymous".into(),
                verb: "authenticate".into(),
                target: claimed.chars().take(64).collect(),
                outcome: refused.code.as_str().into(),
                reason: Some(reason),
            })
            .await;
        }
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
