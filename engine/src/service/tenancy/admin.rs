//! The tenancy verbs: tokens (`token.create|ls|revoke`, admins for their tenant, operators
//! for any) and tenants (`tenant.create|ls|set|rm`, operators; `tenant.usage`, admins).
use super::{tenant_key, tokens};
use crate::kv::get_json;
use crate::service::Service;
use sluice_api::tenancy::{TenantInfo, TokenCreated, TokenInfo, Usage};
use sluice_api::verbs::{self, Named};
use sluice_api::{ApiError, Code, Principal, Role};

/// Tokens of a tenant (or of the operators) that work, at most.
pub const MAX_WORKING_TOKENS: usize = 1000;

impl Service {
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
        // At most so many working tokens per tenant. (Counted by their names, one key each;
        // near the limit, the records of tokens that no longer work — revoked, expired — are
        // removed, with their names, so that they never fill the tenant's place.)
        let names = tokens::name_key(tenant.as_deref(), "");
        if self.edges.pipelines.keys(&names).await?.len() >= MAX_WORKING_TOKENS {
            let now = crate::clock::now();
            let mut working = 0;
            for t in self.tokens(Some(tenant.as_deref())).await? {
                if !t.revoked && t.expires_at.is_none_or(|at| at > now) {
                    working += 1;
                    continue;
                }
                // The name first, and only while it still names this token (another admin
                // may have removed it and given the name to a new one).
                self.drop_name_if(&tokens::name_key(t.tenant.as_deref(), &t.name), Some(&t.id))
                    .await?;
                self.edges.pipelines.delete(&tokens::key(&t.id)).await?;
            }
            // Names left without their record (a removal cut short) go too.
            for name in self.edges.pipelines.keys(&names).await? {
                self.drop_name_if(&name, None).await?;
            }
            if working >= MAX_WORKING_TOKENS {
                return Err(ApiError::new(
                    Code::QuotaExceeded,
                    format!(
                        "a tenant holds at most {MAX_WORKING_TOKENS} working tokens: revoke one first (sluice token revoke NAME)"
                    ),
                ));
            }
        }
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

    /// Remove the token name `name` if it names `id` (`None`: a token with no record), at
    /// the revision read.
    async fn drop_name_if(&self, name: &str, id: Option<&str>) -> Result<(), ApiError> {
        let kv = &*self.edges.pipelines;
        let Some((named, revision)) = kv.get(name).await? else {
            return Ok(());
        };
        let named = String::from_utf8_lossy(&named).into_owned();
        let drop = match id {
            Some(id) => named == id,
            None => kv.get(&tokens::key(&named)).await?.is_none(),
        };
        if drop {
            match kv.delete_if(name, revision).await {
                Ok(()) | Err(crate::kv::KvError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
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
        let set =
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
            .ok_or_else(|| ApiError::not_found(format!("no tenant `{}`", r.name)))?;
        if let Some(stores) = &self.engine.artifacts {
            stores.quota_changed(&r.name);
        }
        Ok(set)
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
            pipelines: crate::service::pipelines::list(&*self.edges.pipelines, &tenant)
                .await?
                .len() as u64,
            running_executions: self
                .running_count(&tenant, crate::service::api::MAX_LIST)
                .await? as u64,
            queued_executions: self.queued(&tenant).await?.len() as u64,
            artifact_bytes: self.artifact_bytes(&tenant).await?,
            component_bytes: self.component_bytes(&tenant, &[]).await?,
            quotas,
            tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_WORKING_TOKENS;
    use crate::bus::MemoryBus;
    use crate::service::tests::{engine, shared_edges};
    use sluice_api::verbs::{TenantCreate, TokenCreate, TokenRevoke};
    use sluice_api::{Code, Origin, Principal};
    use std::sync::Arc;

    /// A tenant holds a bounded number of working tokens; tokens revoked or expired do not
    /// take its place for ever: at the limit, creating one removes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_holds_a_bounded_number_of_working_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine(dir.path(), Arc::new(MemoryBus::default()), &shared);
        service.enable_auth(std::time::Duration::from_secs(3600));
        let op = Principal::local("acme", Origin::HostUser);
        let create = TenantCreate {
            name: "acme".into(),
            policy: Default::default(),
            quotas: Default::default(),
        };
        service.call(&op, create).await.unwrap();
        let token = |name: String| TokenCreate {
            name,
            role: "viewer".into(),
            tenant: None,
            expires: None,
        };
        let made = (0..MAX_WORKING_TOKENS).map(|i| service.call(&op, token(format!("t{i}"))));
        for made in futures_util::future::join_all(made).await {
            made.unwrap();
        }
        let e = service
            .call(&op, token("one-more".into()))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::QuotaExceeded, "{e:?}");
        let revoke = TokenRevoke {
            name: "t7".into(),
            tenant: None,
        };
        service.call(&op, revoke).await.unwrap();
        service.call(&op, token("one-more".into())).await.unwrap();
        // The revoked token went, name and all: the name may be given again (once there is
        // room).
        let names = shared.pipelines.keys("_auth/names/acme/").await.unwrap();
        assert_eq!(names.len(), MAX_WORKING_TOKENS);
        assert!(!names.iter().any(|n| n.ends_with("/t7")));
    }
}
