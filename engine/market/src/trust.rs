//! The trust policy: which publisher keys are trusted for which repositories. Kept in the
//! user's config folder (`trust.toml`), written by `sluice trust add|rm`.
use crate::signing::PublicKey;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The policy file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Trusted publishers.
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<Publisher>,
}

/// One trusted publisher.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    /// A name for people (`acme`).
    pub name: String,
    /// `ed25519:<base64>`.
    pub key: String,
    /// Repositories it is trusted for, as globs over `oci://HOST/PATH` or `file:///PATH`
    /// (`*` stays within one path part, `**` spans parts).
    pub scopes: Vec<String>,
}

impl Policy {
    /// Where the policy lives.
    pub fn path() -> anyhow::Result<PathBuf> {
        crate::config::config_dir()
            .map(|d| d.join("trust.toml"))
            .ok_or_else(|| anyhow::anyhow!("no config folder: set HOME or XDG_CONFIG_HOME"))
    }

    /// Read the policy (empty when there is none).
    pub fn load() -> anyhow::Result<Policy> {
        let path = Self::path()?;
        if !path.exists() {
            return Ok(Policy::default());
        }
        let bytes = crate::transport::read_bounded(&path, 1 << 20)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
        let policy: Policy =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(policy)
    }

    /// Write the policy.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = Self::path()?;
        let text = format!(
            "# Publishers whose signatures `sluice plugin install` accepts, and where.\n{}",
            toml::to_string_pretty(self)?
        );
        crate::transport::write_atomic(&path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The publisher trusting `key` for `repository`, if any.
    pub fn trusts(&self, key: &PublicKey, repository: &str) -> Option<&Publisher> {
        let key = key.to_string();
        self.publishers
            .iter()
            .find(|p| p.key == key && p.scopes.iter().any(|s| scope_matches(s, repository)))
    }

    /// The name a key is trusted under anywhere (for search results).
    pub fn name_of(&self, key: &str) -> Option<&str> {
        self.publishers
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.name.as_str())
    }
}

/// Whether a scope glob covers a repository URL.
pub fn scope_matches(scope: &str, repository: &str) -> bool {
    globset::GlobBuilder::new(scope)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(repository))
        .unwrap_or(false)
}

/// Check a scope when it is added.
pub fn check_scope(scope: &str) -> anyhow::Result<()> {
    if !(scope.starts_with("oci://") || scope.starts_with("file:///")) {
        anyhow::bail!(
            "a scope is oci://HOST/PATH or file:///PATH, with * or ** (e.g. oci://ghcr.example/acme/*)"
        );
    }
    globset::GlobBuilder::new(scope)
        .literal_separator(true)
        .build()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_covers_its_namespace_only() {
        assert!(scope_matches(
            "oci://h:5000/acme/*",
            "oci://h:5000/acme/semver"
        ));
        assert!(!scope_matches(
            "oci://h:5000/acme/*",
            "oci://h:5000/acme-evil/semver"
        ));
        assert!(!scope_matches(
            "oci://h:5000/acme/*",
            "oci://h:5000/acme/x/semver"
        ));
        assert!(scope_matches(
            "oci://h:5000/acme/**",
            "oci://h:5000/acme/x/semver"
        ));
        assert!(!scope_matches(
            "oci://h:5000/acme/*",
            "oci://other/acme/semver"
        ));
    }
}
