//! The audit trail: every change and every refusal for lack of credentials, rights or quota,
//! as `{at, tenant, principal, verb, target, outcome, reason}` under `<tenant>/audit/<ulid>`
//! in the executions bucket, kept for `--audit-keep`.
use super::{AUDIT_KEEP, NO_TENANT};
use crate::kv::get_json;
use crate::service::Service;
use sluice_api::tenancy::AuditRecord;
use sluice_api::verbs;
use sluice_api::{ApiError, Code, Principal, Role};

/// The most records `audit` returns.
const MAX_AUDIT: usize = 1000;

impl Service {
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
        call: &super::Call,
        outcome: &Result<serde_json::Value, ApiError>,
    ) {
        if !self.auth_on() {
            return;
        }
        let refused = outcome.as_ref().err();
        let worth = call.role != Role::Viewer
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
            verb: call.verb.to_string(),
            target: call.target.clone(),
            outcome: refused.map_or("ok", |e| e.code.as_str()).to_string(),
            reason: refused.map(|e| e.message.clone()),
        })
        .await;
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
}
