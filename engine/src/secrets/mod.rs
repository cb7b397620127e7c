//! Secrets: tenant-scoped values a pipeline may hand to its actions, kept encrypted.
//!
//! Each value is sealed with XChaCha20-Poly1305 under its tenant's **data key**, its tenant and
//! name bound in as associated data (a value moved to another name or tenant does not open).
//! Each data key is itself sealed under the **master key** (`--master-key-file`, else
//! `<data>/master.key`, made on first use, mode 0600), and the master key's id is stored with
//! it, so `sluice secret rotate-key` re-seals data keys without touching values. Records live in
//! a key-value bucket under `_secrets/<tenant>/`: the data folder's `secrets.redb` for local
//! runs, the service's pipelines bucket (redb or NATS KV) for the service.
//!
//! Nothing here hands a value to a client: [`SecretStore::reveal`] is for the engine, which
//! passes values only where [`crate::executor`] lets them go.
pub mod keys;
mod store;

pub use keys::MasterKey;
pub use store::{SecretError, SecretInfo, SecretStore};

pub use sluice_core::model::valid_secret_name as valid_name;

/// What a guest sees where its configuration says `#{secrets.NAME}`: the host puts the value
/// in its place only in requests to the action's granted HTTP origins.
pub fn placeholder(name: &str) -> String {
    format!("[sluice-secret:{name}]")
}

/// The master key file: `master_key`, else `SLUICE_MASTER_KEY_FILE`, else `<data>/master.key`.
pub fn master_key_path(
    data: &std::path::Path,
    master_key: Option<&std::path::Path>,
) -> std::path::PathBuf {
    master_key
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("SLUICE_MASTER_KEY_FILE").map(std::path::PathBuf::from))
        .unwrap_or_else(|| data.join("master.key"))
}

/// The service's secret store: sealed records in its pipelines bucket, under the master key in
/// `SLUICE_MASTER_KEY_FILE`, else `<data>/master.key` (made on first start, mode 0600). On NATS
/// every engine must be given the same key file: an engine with another key refuses to
/// start (wrong master key: see [`SecretStore::check_master_key`]) and changes nothing.
pub fn for_service(
    kv: std::sync::Arc<dyn crate::kv::Kv>,
    data: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<SecretStore>> {
    let path = master_key_path(data, None);
    let (key, made) = MasterKey::read_or_create(&path)?;
    if made {
        tracing::info!(
            "made a master key for secrets at {} (id {}): give every engine of this service the same file (SLUICE_MASTER_KEY_FILE)",
            path.display(),
            key.id
        );
    }
    // An online rotation: the key being rotated away from, which data keys may still be
    // sealed under until an operator runs `sluice secret rotate-key --service`.
    let previous = match std::env::var_os("SLUICE_PREVIOUS_MASTER_KEY_FILE") {
        Some(p) => {
            let p = std::path::PathBuf::from(p);
            let prev = MasterKey::read(&p)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "SLUICE_PREVIOUS_MASTER_KEY_FILE names {}, which does not exist",
                    p.display()
                )
            })?;
            tracing::info!(
                "secrets: master key {} in use; data keys still sealed under {} (from {}) open too",
                key.id,
                prev.id,
                p.display()
            );
            Some(prev)
        }
        None => None,
    };
    Ok(std::sync::Arc::new(
        SecretStore::new(kv, key).with_previous(previous),
    ))
}
