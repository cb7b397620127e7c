//! `sluice secret put|ls|rm|rotate-key`: the data folder's secrets (what `sluice run` hands to
//! actions). Values are read from stdin, never from an argument (arguments end up in shell
//! history and `ps`), and no command prints one.
use anyhow::{Context as _, bail};
use clap::Subcommand;
use sluice_engine::local;
use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

/// `sluice secret`.
#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store a secret; its value is read from stdin (one trailing newline dropped).
    #[command(
        after_help = "Examples:\n  printf %s \"$TOKEN\" | sluice secret put DEPLOY_TOKEN\n  sluice secret put DEPLOY_TOKEN --pipeline release < token.txt"
    )]
    Put {
        /// Its name (letters, digits, _).
        name: String,
        /// Only these pipelines may use it (repeatable) [default: every pipeline].
        #[arg(long = "pipeline")]
        pipelines: Vec<String>,
    },
    /// List the secrets: names, scopes, dates — never values.
    Ls,
    /// Remove a secret.
    Rm {
        /// Its name.
        name: String,
    },
    /// Seal the data keys under a new master key (values are not touched). Without
    /// --new-key-file, a new key replaces DATA/master.key (the old one is kept as
    /// master.key.old).
    RotateKey {
        /// Where the new master key is (made if missing).
        #[arg(long)]
        new_key_file: Option<std::path::PathBuf>,
    },
}

/// The value on stdin (one trailing newline dropped), at most 64 KiB.
fn read_value(name: &str) -> anyhow::Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .take((64 << 10) + 1)
        .read_to_string(&mut value)
        .context("read the secret's value from stdin (it must be UTF-8)")?;
    if let Some(v) = value.strip_suffix('\n') {
        value = v.strip_suffix('\r').unwrap_or(v).to_string();
    }
    if value.is_empty() {
        bail!(
            "no value on stdin: pipe it in, e.g. printf %s \"$TOKEN\" | sluice secret put {name}"
        );
    }
    Ok(value)
}

fn scope(pipelines: &[String]) -> String {
    if pipelines.is_empty() {
        "every pipeline".to_string()
    } else {
        format!("pipelines: {}", pipelines.join(", "))
    }
}

/// A `sluice secret` command against the service: the tenant's secrets in its store.
pub async fn on_service(
    cmd: SecretCmd,
    target: &crate::service::Target,
) -> anyhow::Result<ExitCode> {
    use sluice_api::verbs;
    let client = target.client().await?;
    let request: sluice_api::Request = match &cmd {
        SecretCmd::Put { name, pipelines } => verbs::SecretPut {
            name: name.clone(),
            value: read_value(name)?,
            pipelines: pipelines.clone(),
        }
        .into(),
        SecretCmd::Ls => verbs::SecretLs {}.into(),
        SecretCmd::Rm { name } => verbs::SecretRm { name: name.clone() }.into(),
        SecretCmd::RotateKey {
            new_key_file: Some(_),
        } => bail!(
            "the service rotates to the master key its engines were started with: give every engine the new key (SLUICE_MASTER_KEY_FILE) and the old one (SLUICE_PREVIOUS_MASTER_KEY_FILE), then run `sluice secret rotate-key --service` without --new-key-file (docs/secrets.md)"
        ),
        SecretCmd::RotateKey { new_key_file: None } => verbs::SecretRotateKey {}.into(),
    };
    let reply = match client.call(&request).await {
        Ok(v) => v,
        Err(e) => return crate::service::refused(e),
    };
    match cmd {
        SecretCmd::Put { .. } => {
            let info: verbs::SecretInfo = serde_json::from_value(reply)?;
            println!(
                "stored secret {} for tenant {} ({})",
                info.name,
                target.tenant,
                scope(&info.pipelines)
            );
        }
        SecretCmd::Ls => {
            let all: Vec<verbs::SecretInfo> = serde_json::from_value(reply)?;
            print_list(&all, &format!("tenant {}", target.tenant));
        }
        SecretCmd::Rm { name } => println!("removed secret {name}"),
        SecretCmd::RotateKey { .. } => {
            let r: verbs::KeysRotated = serde_json::from_value(reply)?;
            println!(
                "re-sealed {} data key(s) under master key {}; the previous key is no longer needed (drop SLUICE_PREVIOUS_MASTER_KEY_FILE from the engines)",
                r.resealed, r.master_key
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(all: &[sluice_api::verbs::SecretInfo], whose: &str) {
    if all.is_empty() {
        println!("no secrets ({whose})");
        return;
    }
    println!("{:<24} {:<24} UPDATED", "NAME", "PIPELINES");
    for i in all {
        let scope = if i.pipelines.is_empty() {
            "(all)".to_string()
        } else {
            i.pipelines.join(",")
        };
        println!("{:<24} {:<24} {}", i.name, scope, i.updated);
    }
}

/// Run a `sluice secret` command.
pub async fn run(
    cmd: SecretCmd,
    data: &Path,
    master_key: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let create = matches!(cmd, SecretCmd::Put { .. });
    let (store, made) = local::secret_store(data, master_key, create)?;
    if made {
        eprintln!(
            "made a master key at {} (mode 0600): it unseals every secret here; back it up, or pass --master-key-file",
            local::master_key_path(data, master_key).display()
        );
    }
    let tenant = sluice_engine::executor::DEFAULT_TENANT;
    let Some(store) = store else {
        match cmd {
            SecretCmd::Ls => {
                println!("no secrets in {}", data.display());
                return Ok(ExitCode::SUCCESS);
            }
            _ => bail!(
                "no secrets are stored in {} (sluice secret put NAME)",
                data.display()
            ),
        }
    };
    match cmd {
        SecretCmd::Put { name, pipelines } => {
            let value = read_value(&name)?;
            let info = store.put(tenant, &name, &value, pipelines).await?;
            println!("stored secret {} ({})", info.name, scope(&info.pipelines));
        }
        SecretCmd::Ls => {
            let all = store.list(tenant).await?;
            print_list(&all, &format!("in {}", data.display()));
        }
        SecretCmd::Rm { name } => {
            if !store.remove(tenant, &name).await? {
                bail!("no secret `{name}` (sluice secret ls)");
            }
            println!("removed secret {name}");
        }
        SecretCmd::RotateKey { new_key_file } => {
            let current = local::master_key_path(data, master_key);
            match new_key_file {
                Some(path) => {
                    let (new, _) = sluice_engine::secrets::MasterKey::read_or_create(&path)?;
                    let n = store.rotate(&new).await?;
                    println!(
                        "re-sealed {n} data key(s) under {} (id {}): use it from now on (--master-key-file {})",
                        path.display(),
                        new.id,
                        path.display()
                    );
                }
                None => {
                    let staged = current.with_extension("key.new");
                    let _ = std::fs::remove_file(&staged);
                    let new = sluice_engine::secrets::MasterKey::create(&staged)?;
                    let n = store.rotate(&new).await?;
                    std::fs::rename(&current, current.with_extension("key.old"))?;
                    std::fs::rename(&staged, &current)?;
                    println!(
                        "re-sealed {n} data key(s) under a new master key (id {}) at {}; the old one is {}",
                        new.id,
                        current.display(),
                        current.with_extension("key.old").display()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
