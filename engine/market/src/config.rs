//! `sluice.toml`: registries by alias, the default registry, the plugin size limit, registries
//! reached over plain HTTP; credentials from the standard Docker config or the environment.
//!
//! Read from the project folder (`./sluice.toml`, next to the pipelines) over the user's
//! (`$XDG_CONFIG_HOME/sluice/config.toml`, else `~/.config/sluice/config.toml`); the
//! project's settings win.
use crate::transport::Access;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest plugin (layer) fetched unless `max-plugin-size` says otherwise.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 128 << 20;

/// The merged configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Alias → `oci://HOST/NAMESPACE` or `file:///DIR/NAMESPACE`.
    pub registries: BTreeMap<String, String>,
    /// An alias or URL searched when no `--registry` is given.
    pub default_registry: Option<String>,
    /// The largest plugin layer fetched.
    pub max_plugin_bytes: u64,
    /// Credentials and plain-HTTP hosts.
    pub access: Access,
    /// The files read, for messages.
    pub read_from: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    registries: BTreeMap<String, String>,
    default_registry: Option<String>,
    max_plugin_size: Option<String>,
    #[serde(default)]
    insecure_registries: Vec<String>,
}

/// The user's Sluice config folder: `$XDG_CONFIG_HOME/sluice`, else `~/.config/sluice`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("sluice"))
}

impl Config {
    /// Read the user's config and `project/sluice.toml`.
    pub fn load(project: &Path) -> anyhow::Result<Config> {
        let mut config = Config {
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            ..Default::default()
        };
        let files = [
            config_dir().map(|d| d.join("config.toml")),
            Some(project.join("sluice.toml")),
        ];
        for path in files.into_iter().flatten() {
            if !path.exists() {
                continue;
            }
            let bytes = crate::transport::read_bounded(&path, 1 << 20)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
            let file: File =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            config.registries.extend(file.registries);
            if file.default_registry.is_some() {
                config.default_registry = file.default_registry;
            }
            if let Some(size) = file.max_plugin_size {
                config.max_plugin_bytes = size
                    .parse::<bytesize::ByteSize>()
                    .map_err(|e| anyhow::anyhow!("{}: max-plugin-size: {e}", path.display()))?
                    .as_u64();
            }
            config.access.insecure.extend(file.insecure_registries);
            config.read_from.push(path);
        }
        config.access.credentials = credentials();
        Ok(config)
    }

    /// The URL an alias names.
    pub fn alias(&self, alias: &str) -> Option<String> {
        self.registries.get(alias).cloned()
    }
}

/// Registry credentials: Docker's config (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`, `auths.HOST.auth` = base64 of `user:password`), then
/// `SLUICE_REGISTRY_USERNAME` / `SLUICE_REGISTRY_PASSWORD` for `SLUICE_REGISTRY_HOST`.
pub fn credentials() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let docker = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"));
    if let Some(bytes) = docker.and_then(|p| crate::transport::read_bounded(&p, 1 << 20).ok()) {
        out.extend(docker_auths(&bytes));
    }
    if let (Ok(host), Ok(user), Ok(pass)) = (
        std::env::var("SLUICE_REGISTRY_HOST"),
        std::env::var("SLUICE_REGISTRY_USERNAME"),
        std::env::var("SLUICE_REGISTRY_PASSWORD"),
    ) {
        out.insert(host, (user, pass));
    }
    out
}

/// The `auths` of a Docker `config.json`: host → (user, password) from each `auth` (base64 of
/// `user:password`). Entries it cannot read are skipped (credential helpers are not run).
pub fn docker_auths(config: &[u8]) -> BTreeMap<String, (String, String)> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(config) else {
        return out;
    };
    for (host, entry) in v["auths"].as_object().into_iter().flatten() {
        let decoded = entry["auth"]
            .as_str()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            out.insert(host.to_string(), (user.to_string(), pass.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_credentials_are_read_per_host() {
        let config = br#"{"auths": {"https://ghcr.example": {"auth": "YWxpY2U6czNjcjN0"}, "registry.local:5000": {"auth": "Ym9iOnA6dw=="}, "helper.example": {}}}"#;
        let auths = docker_auths(config);
        assert_eq!(
            auths["ghcr.example"],
            ("alice".to_string(), "s3cr3t".to_string())
        );
        assert_eq!(
            auths["registry.local:5000"],
            ("bob".to_string(), "p:w".to_string())
        );
        assert!(!auths.contains_key("helper.example"));
        assert!(docker_auths(b"not json").is_empty());
    }
}
