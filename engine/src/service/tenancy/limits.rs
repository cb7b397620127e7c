//! What a tenant may do: its policy (what its pipelines may grant, see [`super::policy`]) and
//! its quotas (pipelines, running executions, trigger rate), checked at registration and at
//! every start.
use super::{policy, tenant_key};
use crate::kv::get_json;
use crate::service::Service;
use sluice_api::tenancy::{Policy, Quotas, TenantInfo};
use sluice_api::{ApiError, Code};
use sluice_core::model::units::size;
use std::sync::Arc;
use std::time::Instant;

/// Why a start may not go ahead now.
#[derive(Debug)]
pub(in crate::service) enum Refused {
    /// Refused, for this reason.
    Now(String),
    /// The tenant runs as many executions as it may (`why`): the start may wait in its queue
    /// of `places` (see `queue`).
    Wait { why: String, places: u64 },
}

impl Refused {
    /// The reason of a refusal for good (for `Wait`: its queue is full), as the dead letter
    /// and the caller see it.
    pub(in crate::service) fn into_reason(self) -> String {
        match self {
            Refused::Now(why) => why,
            Refused::Wait { why, places } => {
                format!("{why}, and its {places} places to wait are taken")
            }
        }
    }
}

/// Each tenant's quota of artifact bytes, from its record (read by the artifact store when
/// it opens a tenant's store, and again every few seconds).
pub(super) struct RecordedQuotas(pub Arc<dyn crate::kv::Kv>);

impl crate::artifacts::tenants::ArtifactQuotas for RecordedQuotas {
    fn limit<'a>(
        &'a self,
        tenant: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<u64>, String>> {
        Box::pin(async move {
            Ok(get_json::<TenantInfo>(&*self.0, &tenant_key(tenant))
                .await
                .map_err(|e| e.to_string())?
                .and_then(|(t, _)| t.quotas.artifact_bytes))
        })
    }
}

impl Service {
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
        loaded: &crate::service::Loaded,
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
        let registered = crate::service::pipelines::list(&*self.edges.pipelines, tenant).await?;
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
    /// of artifact bytes, or of triggers per second on this engine), if it may not.
    pub(in crate::service) async fn start_quota_refusal(
        &self,
        tenant: &str,
        count_rate: bool,
    ) -> Result<Option<Refused>, ApiError> {
        let Some((_, quotas)) = self.rules_of(tenant).await? else {
            return Ok(None);
        };
        if let Some(rate) = quotas.triggers_per_second.filter(|r| *r > 0 && count_rate) {
            let mut rates = self.tenancy.rates.lock().unwrap();
            let (left, since) = rates
                .entry(tenant.to_string())
                .or_insert((rate as f64, Instant::now()));
            if !super::take_one(left, since, rate as f64) {
                return Ok(Some(Refused::Now(format!(
                    "quota_exceeded: tenant `{tenant}` may start {rate} executions per second"
                ))));
            }
        }
        if let Some(max) = quotas.artifact_bytes {
            let kept = self.artifact_bytes(tenant).await?;
            if kept >= max {
                return Ok(Some(Refused::Now(format!(
                    "quota_exceeded: tenant `{tenant}` may keep {} of artifacts and keeps {}",
                    size(max),
                    size(kept)
                ))));
            }
        }
        if let Some(max) = quotas.concurrent_executions {
            let running = self.running_count(tenant, max as usize + 1).await?;
            if running as u64 >= max {
                let why =
                    format!("quota_exceeded: tenant `{tenant}` may run {max} executions at once");
                return Ok(Some(match quotas.queued_executions {
                    Some(places) if places > 0 => Refused::Wait { why, places },
                    _ => Refused::Now(why),
                }));
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
        loaded: &crate::service::Loaded,
        count_rate: bool,
    ) -> Result<Option<Refused>, ApiError> {
        if !self.auth_on() {
            return Ok(None);
        }
        if let Err(e) = self.check_policy(tenant, loaded).await {
            let lines = e.problem_lines();
            return Ok(Some(Refused::Now(format!(
                "policy: {}",
                if lines.is_empty() { e.message } else { lines }
            ))));
        }
        self.start_quota_refusal(tenant, count_rate).await
    }

    /// Bytes of artifacts `tenant` keeps (0 where artifacts are not sealed per tenant).
    pub(super) async fn artifact_bytes(&self, tenant: &str) -> Result<u64, ApiError> {
        let Some(stores) = self.engine.artifacts.clone() else {
            return Ok(0);
        };
        // The first count of a tenant walks its files (embedded) or reads the store (NATS).
        let tenant = tenant.to_string();
        tokio::task::spawn_blocking(move || stores.stored_bytes(&tenant))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::unavailable(format!("the artifact store: {e}")))
    }

    /// Executions of `tenant` running now, counted up to `up_to`.
    pub(super) async fn running_count(
        &self,
        tenant: &str,
        up_to: usize,
    ) -> Result<usize, ApiError> {
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
}

#[cfg(test)]
mod tests {
    use crate::bus::MemoryBus;
    use crate::service::tests::{engine, shared_edges};
    use crate::service::triggers::NotStarted;
    use sluice_api::tenancy::Quotas;
    use sluice_api::verbs::{PipelinePut, Start, TenantCreate};
    use sluice_api::{Code, Origin, Principal};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// `--max-trigger-rate`: trigger events beyond the rate (with a burst of as many) are
    /// refused with `quota_exceeded` (their dead letter's reason), and so are API starts;
    /// the rate refills with time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_beyond_the_trigger_rate_are_refused_until_it_refills() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine(dir.path(), Arc::new(MemoryBus::default()), &shared);
        tokio::spawn(service.clone().run(2));
        service.enable_auth(Duration::from_secs(3600));
        let acme = Principal::local("acme", Origin::Remote);
        let create = TenantCreate {
            name: "acme".into(),
            policy: Default::default(),
            quotas: Quotas {
                triggers_per_second: Some(2),
                ..Default::default()
            },
        };
        service
            .call(&Principal::local("acme", Origin::HostUser), create)
            .await
            .unwrap();
        let put = PipelinePut {
            file: "p.yaml".into(),
            yaml:
                "name: p\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n"
                    .into(),
            ..Default::default()
        };
        service.call(&acme, put).await.unwrap();
        let trigger = |n: u32| {
            let service = service.clone();
            async move {
                service
                    .start(
                        "acme",
                        "p",
                        format!(r#"{{"id":"e-{n}"}}"#).as_bytes(),
                        false,
                        false,
                    )
                    .await
                    .unwrap()
            }
        };

        // A burst of two, then the third at once is refused.
        let burst = Instant::now();
        assert!(trigger(1).await.is_ok());
        assert!(trigger(2).await.is_ok());
        let third = trigger(3).await;
        // (Only when the three took less than the half second that refills one.)
        if burst.elapsed() < Duration::from_millis(400) {
            match third {
                Err(NotStarted::Rejected(why)) => assert!(
                    why.contains("quota_exceeded") && why.contains("2 executions per second"),
                    "{why}"
                ),
                Err(NotStarted::Queued) => panic!("queued, not refused"),
                Ok(_) => panic!("a third start within the second was taken"),
            }
            // An API start is counted against the same rate.
            let start = Start {
                pipeline: "p".into(),
                ..Default::default()
            };
            let e = service.call(&acme, start).await.unwrap_err();
            assert_eq!(e.code, Code::QuotaExceeded, "{e:?}");
        }
        // A second later the rate has refilled.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(trigger(4).await.is_ok());
        let start = Start {
            pipeline: "p".into(),
            ..Default::default()
        };
        service.call(&acme, start).await.unwrap();
    }
}
