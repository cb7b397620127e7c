//! Tenants, tokens, policies, quotas and the audit trail: the types of the tenancy verbs.
//! A hosted service (`sluice serve --auth`) authenticates every request with a token, takes
//! the tenant and roles from it, bounds what each tenant's pipelines may grant, counts what
//! each may use, and keeps a record of every change and every refusal.
use crate::principal::Role;
use serde::{Deserialize, Serialize};
use sluice_core::scheduler::Timestamp;

/// What a tenant's pipelines may grant themselves (checked when a pipeline is registered and
/// again when it starts, so a policy tightened later applies to pipelines registered before).
/// Deny by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Host programs `capabilities.process` may name (a host program runs as the engine's
    /// own user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<String>,
    /// Host directories `capabilities.dirs` may name (a grant must lie inside one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
    /// HTTP origins `capabilities.http` may name; `*` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// The largest `limits.memory`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// The longest `timeout`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_secs: Option<u64>,
}

/// What a tenant may use at once; `None`: no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Registered pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelines: Option<u64>,
    /// Executions running at once (a start beyond it is refused with `quota_exceeded`; a
    /// trigger goes to the dead letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_executions: Option<u64>,
    /// Trigger events and starts per second, per engine (with a burst of as many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers_per_second: Option<u64>,
    /// Starts waiting for one of the tenant's running executions to end, beyond
    /// `concurrent_executions` (`None`: a start beyond it is refused, not queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_executions: Option<u64>,
    /// Bytes of artifacts kept (sealed, as stored): an artifact that would pass it is not
    /// kept and its action fails with `quota_exceeded`; once it is reached, starts are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes: Option<u64>,
    /// Bytes of components (plugins, functions) the tenant handed over and keeps: a new one
    /// that would pass it is refused with `quota_exceeded`. One that no registration of the
    /// tenant names stops counting once the grace of the collector has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_bytes: Option<u64>,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// Its name (the first part of every key, subject and path of its data).
    pub name: String,
    /// What its pipelines may grant.
    #[serde(default)]
    pub policy: Policy,
    /// What it may use.
    #[serde(default)]
    pub quotas: Quotas,
    /// When the operator created it.
    pub created_at: Timestamp,
}

/// What a tenant uses, against its quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The tenant.
    pub tenant: String,
    /// Registered pipelines.
    pub pipelines: u64,
    /// Executions running now.
    pub running_executions: u64,
    /// Starts waiting for a running execution to end.
    #[serde(default)]
    pub queued_executions: u64,
    /// Bytes of artifacts kept (sealed, as stored).
    #[serde(default)]
    pub artifact_bytes: u64,
    /// Bytes of components (plugins, functions) the tenant keeps.
    #[serde(default)]
    pub component_bytes: u64,
    /// The quotas.
    pub quotas: Quotas,
}

/// A token, as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id (the public part of the token).
    pub id: String,
    /// Who or what holds it: the principal's name in decisions and the audit trail.
    pub name: String,
    /// Its tenant (`None` for an operator token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Revoked (it no longer works).
    #[serde(default)]
    pub revoked: bool,
}

/// The reply to `token.create`: the token itself, shown this once (only its hash is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The token to send as `Authorization: Bearer …` or `SLUICE_TOKEN`.
    pub token: String,
    /// What was recorded.
    pub info: TokenInfo,
}

/// One audit record: a change made, or a call refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When.
    pub at: Timestamp,
    /// The tenant acted on (as claimed, for a refused authentication).
    pub tenant: String,
    /// Who (a token's name; `anonymous` without credentials).
    pub principal: String,
    /// The verb.
    pub verb: String,
    /// What it named (a pipeline, an execution, a token, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// `ok`, or the refusal's code.
    pub outcome: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
