//! The audit trail: every change and every refusal for lack of credentials, rights or quota,
//! as `{at, tenant, principal, verb, target, outcome, reason}` under `<tenant>/<ulid>` in the
//! audit bucket (its own table embedded, its own stream on NATS), kept for `--audit-keep`.
//! (Earlier versions kept them under `<tenant>/audit/<ulid>` in the executions bucket; the
//! retention sweep moves those over: see `retention`.)
use super::{AUDIT_KEEP, NO_TENANT};
use crate::kv::get_json;
use crate::service::Service;
use sluice_api::tenancy::AuditRecord;
use sluice_api::verbs;
use sluice_api::{ApiError, Code, Principal, Role};

/// How long the records of failed authentications under `_invalid` are kept, at most.
const ANONYMOUS_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

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
        let key = format!("{tenant}/{}", ulid::Ulid::new());
        match serde_json::to_vec(&record) {
            Ok(bytes) => {
                if let Err(e) = self.edges.audit.create(&key, bytes).await {
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

    /// Remove every tenant's records older than `--audit-keep` (with the retention sweep: the
    /// pruning on writes reaches only the tenants still written to); how many went.
    pub(in crate::service) async fn prune_all_audit(&self) -> Result<usize, ApiError> {
        let keep = self.tenancy.keep.lock().unwrap().unwrap_or(AUDIT_KEEP);
        let Some(cutoff) = crate::clock::now().0.checked_sub(keep.as_millis() as u64) else {
            return Ok(0);
        };
        // Failed authentications naming no tenant that exists: anyone may cause them, so they
        // are kept a week at most.
        let anonymous_cutoff = crate::clock::now()
            .0
            .saturating_sub(ANONYMOUS_KEEP.as_millis() as u64)
            .max(cutoff);
        let mut removed = 0;
        for key in self.edges.audit.keys("").await? {
            let cutoff = match key.starts_with(&format!("{NO_TENANT}/")) {
                true => anonymous_cutoff,
                false => cutoff,
            };
            let old = key
                .rsplit_once('/')
                .and_then(|(_, id)| id.parse::<ulid::Ulid>().ok())
                .is_some_and(|u| u.timestamp_ms() < cutoff);
            if old {
                self.edges.audit.delete(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn prune_audit(&self, tenant: &str) {
        let keep = self.tenancy.keep.lock().unwrap().unwrap_or(AUDIT_KEEP);
        let Some(cutoff) = crate::clock::now().0.checked_sub(keep.as_millis() as u64) else {
            return;
        };
        let prefix = format!("{tenant}/");
        let Ok(keys) = self.edges.audit.keys(&prefix).await else {
            return;
        };
        for key in keys {
            let old = key[prefix.len()..]
                .parse::<ulid::Ulid>()
                .is_ok_and(|u| u.timestamp_ms() < cutoff);
            if !old {
                break; // ULIDs sort by time
            }
            let _ = self.edges.audit.delete(&key).await;
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

    /// Every tenant that may have audit records: the registered ones, the default tenant, and
    /// the one refusals of unnamed tenants are kept under.
    async fn audited_tenants(&self) -> Result<Vec<String>, ApiError> {
        let mut all: Vec<String> = self
            .tenant_ls()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        all.extend([NO_TENANT.into(), crate::executor::DEFAULT_TENANT.into()]);
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Move the records earlier versions kept in the executions bucket (`<tenant>/audit/<ulid>`)
    /// to the audit bucket; how many moved. Idempotent: engines doing it at once repeat each
    /// other's work.
    pub(in crate::service) async fn move_old_audit_records(&self) -> Result<usize, ApiError> {
        let tenants = self.audited_tenants().await?;
        let (old, new) = (&self.edges.executions, &self.edges.audit);
        let mut moved = 0;
        for t in tenants {
            let prefix = format!("{t}/audit/");
            for key in old.keys(&prefix).await? {
                if let Some((bytes, _)) = old.get(&key).await? {
                    let to = format!("{t}/{}", &key[prefix.len()..]);
                    match new.create(&to, bytes).await {
                        Ok(_) | Err(crate::kv::KvError::Conflict { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                old.delete(&key).await?;
                moved += 1;
            }
        }
        Ok(moved)
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
            self.audited_tenants().await?
        } else {
            vec![p.tenant.clone()]
        };
        let mut keys = Vec::new();
        for t in &tenants {
            let prefix = format!("{t}/");
            for key in self.edges.audit.keys(&prefix).await? {
                keys.push((key[prefix.len()..].to_string(), key));
            }
        }
        keys.sort();
        keys.reverse();
        let mut out = Vec::new();
        for (_, key) in keys.into_iter().take(limit) {
            if let Some((r, _)) = get_json::<AuditRecord>(&*self.edges.audit, &key).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::service::tests::{engine_in, shared_edges};
    use sluice_api::tenancy::AuditRecord;
    use sluice_api::{Origin, Principal, verbs};

    /// Requests without a valid token, each naming a made-up tenant, as fast as they come:
    /// their refusals are recorded under `_invalid` (no record under a tenant that does not
    /// exist, which nothing would prune), at most a burst of them at once; the next record
    /// says how many were not recorded one by one. Old records of every tenant go with the
    /// sweep.
    #[tokio::test]
    async fn failed_authentications_are_recorded_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine_in(dir.path(), "a", &shared);
        service.enable_auth(std::time::Duration::from_secs(3600));
        let began = std::time::Instant::now();
        for i in 0..200 {
            let refused = service
                .authenticate(Some("not-a-token"), &format!("made-up-{i}"), Origin::Remote)
                .await;
            assert!(refused.is_err());
        }
        let keys = shared.audit.keys("").await.unwrap();
        assert!(keys.iter().all(|k| k.starts_with("_invalid/")), "{keys:?}");
        // A burst of ten, then ten a second (however long the 200 took on this machine).
        let most = 10 + (began.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (10..=most).contains(&keys.len()) && keys.len() < 100,
            "{} of 200 recorded, at most {most}",
            keys.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = service
            .authenticate(None, "made-up-again", Origin::Remote)
            .await;
        let listed = service
            .audit_ls(
                &Principal::local("_invalid", Origin::HostUser),
                verbs::Audit::default(),
            )
            .await
            .unwrap();
        let last = listed.iter().max_by_key(|r| r.at).unwrap();
        assert!(
            last.reason
                .as_deref()
                .is_some_and(|r| r.contains("more failed authentications not recorded")),
            "{last:?}"
        );
        assert_eq!(last.target, "made-up-again");

        // Those naming no tenant go after a week, a tenant's after `--audit-keep` (90 days).
        *service.tenancy.keep.lock().unwrap() = Some(super::AUDIT_KEEP);
        let eight_days_ago = crate::clock::now().0 - 8 * 86_400_000;
        let old = ulid::Ulid::from_parts(eight_days_ago, 1);
        for key in [format!("_invalid/{old}"), format!("acme/{old}")] {
            shared.audit.create(&key, b"{}".to_vec()).await.unwrap();
        }
        assert_eq!(service.prune_all_audit().await.unwrap(), 1);
        assert!(
            shared
                .audit
                .get(&format!("acme/{old}"))
                .await
                .unwrap()
                .is_some()
        );
        shared.audit.delete(&format!("acme/{old}")).await.unwrap();
        // Past `--audit-keep`, the sweep removes them, whatever the tenant.
        *service.tenancy.keep.lock().unwrap() = Some(std::time::Duration::from_millis(1));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let removed = service.prune_all_audit().await.unwrap();
        assert_eq!(removed, keys.len() + 1);
        assert!(shared.audit.keys("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn records_kept_by_earlier_versions_move_to_the_audit_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine_in(dir.path(), "a", &shared);
        let record = |verb: &str| AuditRecord {
            at: crate::clock::now(),
            tenant: "default".into(),
            principal: "ann".into(),
            verb: verb.into(),
            target: "p".into(),
            outcome: "ok".into(),
            reason: None,
        };
        // Where an earlier version wrote them, among the executions.
        let old = format!("default/audit/{}", ulid::Ulid::new());
        let bytes = serde_json::to_vec(&record("pipeline.put")).unwrap();
        shared.executions.create(&old, bytes).await.unwrap();
        assert_eq!(service.move_old_audit_records().await.unwrap(), 1);
        assert!(shared.executions.get(&old).await.unwrap().is_none());
        assert_eq!(
            service.move_old_audit_records().await.unwrap(),
            0,
            "moved once"
        );
        let listed = service
            .audit_ls(
                &Principal::local("default", Origin::HostUser),
                verbs::Audit::default(),
            )
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].verb, "pipeline.put");
    }
}
