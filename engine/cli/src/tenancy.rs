//! `sluice token`, `sluice tenant` and `sluice audit`: the commands of a hosted service
//! (`sluice serve --auth`).
use super::service::Target;
use clap::{Args, Subcommand};
use sluice_api::Request;
use sluice_api::tenancy::{
    AuditRecord, Policy, Quotas, TenantInfo, TokenCreated, TokenInfo, Usage,
};
use sluice_api::verbs;
use std::process::ExitCode;

/// `sluice token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token (printed once; only its hash is kept). In the tenant of your token, or,
    /// for an operator, the one `--tenant` names.
    Create {
        /// Who or what will hold it (unique in the tenant).
        #[arg(long)]
        name: String,
        /// viewer, approver, developer, admin (operator: an operator's token).
        #[arg(long)]
        role: String,
        /// How long it works (`90d`, `12h`); for ever when left out.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The tenant's tokens (never their secrets).
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by name: it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// A tenant's policy and quotas, as flags.
#[derive(Args, Debug, Default)]
pub struct Rules {
    /// A host program its pipelines may run (repeatable; none by default).
    #[arg(long = "allow-process", value_name = "PROGRAM")]
    process: Vec<String>,
    /// A host directory its pipelines may grant or read (repeatable; none by default).
    #[arg(long = "allow-dir", value_name = "PATH")]
    dirs: Vec<String>,
    /// An HTTP origin its pipelines may reach (repeatable; `*`: any; none by default).
    #[arg(long = "allow-http", value_name = "ORIGIN")]
    http: Vec<String>,
    /// The largest `limits.memory` (e.g. 512MiB).
    #[arg(long)]
    max_memory: Option<String>,
    /// The longest `timeout` (e.g. 30m).
    #[arg(long)]
    max_timeout: Option<String>,
    /// Registered pipelines.
    #[arg(long)]
    max_pipelines: Option<u64>,
    /// Executions running at once.
    #[arg(long)]
    max_running: Option<u64>,
    /// Starts (triggers) per second on each engine.
    #[arg(long)]
    max_trigger_rate: Option<u64>,
    /// Starts that wait for a running execution to end, beyond --max-running (without it, a
    /// start beyond --max-running is refused).
    #[arg(long)]
    max_queued: Option<u64>,
    /// Bytes of artifacts kept (e.g. 50GiB).
    #[arg(long, value_name = "SIZE")]
    max_artifact_bytes: Option<String>,
    /// Bytes of components (plugins and functions) it keeps (e.g. 1GiB).
    #[arg(long, value_name = "SIZE")]
    max_component_bytes: Option<String>,
}

impl Rules {
    fn policy(&self) -> anyhow::Result<Policy> {
        use sluice_engine::model::units;
        Ok(Policy {
            process: self.process.clone(),
            dirs: self.dirs.clone(),
            http: self.http.clone(),
            max_memory: self
                .max_memory
                .as_deref()
                .map(units::parse_size)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            max_timeout_secs: self
                .max_timeout
                .as_deref()
                .map(units::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .map(|d| d.as_secs()),
        })
    }

    fn quotas(&self) -> anyhow::Result<Quotas> {
        let size = |given: &Option<String>| {
            given
                .as_deref()
                .map(sluice_engine::model::units::parse_size)
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(Quotas {
            pipelines: self.max_pipelines,
            concurrent_executions: self.max_running,
            triggers_per_second: self.max_trigger_rate,
            queued_executions: self.max_queued,
            artifact_bytes: size(&self.max_artifact_bytes)?,
            component_bytes: size(&self.max_component_bytes)?,
        })
    }

    fn any_policy(&self) -> bool {
        !self.process.is_empty()
            || !self.dirs.is_empty()
            || !self.http.is_empty()
            || self.max_memory.is_some()
            || self.max_timeout.is_some()
    }

    fn any_quota(&self) -> bool {
        self.max_pipelines.is_some()
            || self.max_running.is_some()
            || self.max_trigger_rate.is_some()
            || self.max_queued.is_some()
            || self.max_artifact_bytes.is_some()
            || self.max_component_bytes.is_some()
    }
}

/// `sluice tenant …` (operators).
#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant with its policy (what its pipelines may grant: nothing outside the
    /// sandbox unless allowed) and quotas (no limits unless given).
    Create {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        rules: Rules,
        #[command(flatten)]
        target: Target,
    },
    /// Every tenant.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Replace a tenant's policy (when any policy flag is given) and quotas (when any quota
    /// flag is given).
    Set {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        rules: Rules,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a tenant: its tokens stop working (its data stays).
    Rm {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// What a tenant uses against its quotas (yours, or for an operator the one named).
    Usage {
        /// The tenant (operators).
        name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

async fn call<T: serde::de::DeserializeOwned>(
    target: &Target,
    request: Request,
) -> anyhow::Result<Result<T, ExitCode>> {
    let client = target.client().await?;
    match client.call(&request).await {
        Ok(v) => Ok(Ok(serde_json::from_value(v)?)),
        Err(e) => Ok(Err(super::service::refused(e)?)),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Run `sluice token …`.
pub async fn token(cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            expires,
            target,
        } => {
            let request = verbs::TokenCreate {
                name,
                role,
                tenant: None,
                expires,
            };
            let made: TokenCreated = match call(&target, request.into()).await? {
                Ok(m) => m,
                Err(code) => return Ok(code),
            };
            eprintln!(
                "token `{}` ({}{}): it is shown only now; keep it secret",
                made.info.name,
                made.info.role.as_str(),
                made.info
                    .tenant
                    .as_ref()
                    .map(|t| format!(" in tenant {t}"))
                    .unwrap_or_default()
            );
            println!("{}", made.token);
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Ls { json, target } => {
            let list: Vec<TokenInfo> = match call(&target, verbs::TokenLs::default().into()).await?
            {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            if json {
                return print_json(&list);
            }
            for t in list {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    t.name,
                    t.role.as_str(),
                    t.tenant.as_deref().unwrap_or("(operator)"),
                    t.expires_at
                        .map(|e| format!("expires {e}"))
                        .unwrap_or_else(|| "no expiry".into()),
                    if t.revoked { "\trevoked" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Revoke { name, target } => {
            let t: TokenInfo =
                match call(&target, verbs::TokenRevoke { name, tenant: None }.into()).await? {
                    Ok(t) => t,
                    Err(code) => return Ok(code),
                };
            println!("revoked {}", t.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Run `sluice tenant …`.
pub async fn tenant(cmd: TenantCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TenantCmd::Create {
            name,
            rules,
            target,
        } => {
            let request = verbs::TenantCreate {
                name,
                policy: rules.policy()?,
                quotas: rules.quotas()?,
            };
            let t: TenantInfo = match call(&target, request.into()).await? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            println!("created tenant {}", t.name);
            Ok(ExitCode::SUCCESS)
        }
        TenantCmd::Ls { json, target } => {
            let list: Vec<TenantInfo> = match call(&target, verbs::TenantLs {}.into()).await? {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            if json {
                return print_json(&list);
            }
            for t in list {
                println!(
                    "{}\tpolicy {}\tquotas {}",
                    t.name,
                    serde_json::to_string(&t.policy)?,
                    serde_json::to_string(&t.quotas)?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCmd::Set {
            name,
            rules,
            target,
        } => {
            let request = verbs::TenantSet {
                name,
                policy: rules.any_policy().then(|| rules.policy()).transpose()?,
                quotas: rules.any_quota().then(|| rules.quotas()).transpose()?,
            };
            let t: TenantInfo = match call(&target, request.into()).await? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            print_json(&t)
        }
        TenantCmd::Rm { name, target } => {
            match call::<verbs::Named>(&target, verbs::TenantRm { name }.into()).await? {
                Ok(n) => println!("removed tenant {}", n.name),
                Err(code) => return Ok(code),
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantCmd::Usage { name, target } => {
            match call::<Usage>(&target, verbs::TenantUsage { name }.into()).await? {
                Ok(u) => print_json(&u),
                Err(code) => Ok(code),
            }
        }
    }
}

/// Run `sluice audit`.
pub async fn audit(
    limit: usize,
    all_tenants: bool,
    json: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let request = verbs::Audit {
        limit: Some(limit),
        all_tenants,
    };
    let list: Vec<AuditRecord> = match call(&target, request.into()).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    if json {
        return print_json(&list);
    }
    for r in list {
        println!(
            "{}  {}  {}  {}  {}  {}{}",
            r.at,
            r.tenant,
            r.principal,
            r.verb,
            if r.target.is_empty() { "-" } else { &r.target },
            r.outcome,
            r.reason.map(|why| format!(": {why}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
