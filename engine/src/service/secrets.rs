//! The tenants' secrets on the service: `secret.put|ls|rm` (no verb returns a value), and the
//! check at `pipeline.put` that every secret a pipeline declares is stored and in scope, so a
//! missing one is refused at registration, at its line, never at the action.
use super::Service;
use crate::secrets::{SecretError, SecretInfo, SecretStore};
use sluice_api::ApiError;
use std::sync::Arc;

fn refusal(e: SecretError) -> ApiError {
    match e {
        SecretError::NotFound(_) => ApiError::not_found(e.to_string()),
        SecretError::Invalid(_) | SecretError::OutOfScope { .. } => {
            ApiError::invalid(e.to_string())
        }
        SecretError::TooMany => ApiError::new(sluice_api::Code::QuotaExceeded, e.to_string()),
        SecretError::Kv(k) => k.into(),
        SecretError::WrongMasterKey { .. } | SecretError::Tampered(_) => ApiError::internal(e),
    }
}

impl Service {
    fn secret_store(&self) -> Result<&Arc<SecretStore>, ApiError> {
        self.edges
            .secrets
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("this service keeps no secrets"))
    }

    /// `secret.put`.
    pub async fn secret_put(
        &self,
        tenant: &str,
        r: sluice_api::verbs::SecretPut,
    ) -> Result<SecretInfo, ApiError> {
        self.secret_store()?
            .put(tenant, &r.name, &r.value, r.pipelines)
            .await
            .map_err(refusal)
    }

    /// `secret.rotate-key`: every data key re-sealed under this engine's master key.
    pub async fn secret_rotate_key(&self) -> Result<sluice_api::verbs::KeysRotated, ApiError> {
        let store = self.secret_store()?;
        let resealed = store.rotate_to_current().await.map_err(refusal)?;
        Ok(sluice_api::verbs::KeysRotated {
            resealed,
            master_key: store.master_key_id().to_string(),
        })
    }

    /// `secret.ls`.
    pub async fn secret_ls(&self, tenant: &str) -> Result<Vec<SecretInfo>, ApiError> {
        self.secret_store()?.list(tenant).await.map_err(refusal)
    }

    /// `secret.rm`.
    pub async fn secret_rm(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        if self
            .secret_store()?
            .remove(tenant, name)
            .await
            .map_err(refusal)?
        {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "no secret `{name}` (sluice secret ls)"
            )))
        }
    }

    /// Every secret `pipeline` declares must be stored, in scope, and open with this engine's
    /// master key: a problem at its `from:` line otherwise.
    pub(super) async fn check_pipeline_secrets(
        &self,
        tenant: &str,
        pipeline: &crate::model::Pipeline,
    ) -> Result<(), ApiError> {
        if pipeline.secrets.is_empty() {
            return Ok(());
        }
        let store = self.secret_store()?;
        let mut problems = Vec::new();
        let problem = |loc: crate::model::Loc, message: String| sluice_api::Problem {
            file: pipeline.file.clone(),
            line: loc.line,
            column: loc.col,
            message,
        };
        for (name, from) in &pipeline.secrets {
            if let Err(e) = store.check(tenant, &from.value, &pipeline.name).await {
                problems.push(problem(from.loc, format!("secret `{name}`: {e}")));
            }
        }
        if problems.is_empty()
            && let Err(e) = store.check_key(tenant).await
        {
            return Err(refusal(e));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_pipeline(problems))
        }
    }
}
