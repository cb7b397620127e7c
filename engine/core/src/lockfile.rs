//! `sluice.lock`: the marketplace plugins a pipeline folder uses, pinned to the bytes that
//! were installed. `sluice plugin install` writes it; validation and every run resolve
//! `uses: NAMESPACE/NAME@MAJOR` through it and nothing else, so a tag re-pointed in the
//! registry after the lock was written changes nothing.
use serde::{Deserialize, Serialize};

/// The file's name, next to the pipeline files.
pub const FILE_NAME: &str = "sluice.lock";
/// The largest lock file read (a lock is a few hundred bytes per plugin).
pub const MAX_BYTES: u64 = 1 << 20;
/// The lock format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The whole lock file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// [`FORMAT`].
    pub version: u32,
    /// One entry per plugin name.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<Locked>,
}

/// One installed plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Locked {
    /// `NAMESPACE/NAME`, as pipelines write it before `@MAJOR`.
    pub name: String,
    /// The version requirement it was installed with (`^1.2`).
    pub requirement: String,
    /// The exact version installed.
    pub version: String,
    /// Where it came from: `oci://HOST/REPOSITORY` or `file:///DIR/REPOSITORY`.
    pub registry: String,
    /// The OCI manifest digest (`sha256:…`).
    pub oci_digest: String,
    /// The component's content digest (`blake3:…`): what runs, and what records keep.
    pub blake3: String,
    /// The capabilities the installer accepted, as `sluice plugin info` words them.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The publisher key that signed it (`ed25519:…`), or empty when installed unsigned.
    #[serde(default)]
    pub publisher: String,
    /// Installed with `--allow-unsigned` (no signature, or one by a key not trusted).
    #[serde(default)]
    pub unsigned: bool,
}

/// Why a lock file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Not TOML, or not this shape.
    #[error("{0}")]
    Malformed(String),
    /// Written by a newer Sluice.
    #[error("sluice.lock has format {0}; this sluice reads format {FORMAT}")]
    Format(u32),
}

impl Lockfile {
    /// Parse a lock file's text.
    pub fn parse(text: &str) -> Result<Self, LockError> {
        let lock: Lockfile =
            toml::from_str(text).map_err(|e| LockError::Malformed(e.to_string()))?;
        if lock.version != FORMAT {
            return Err(LockError::Format(lock.version));
        }
        Ok(lock)
    }

    /// The text to write, with a header saying what the file is.
    pub fn render(&self) -> String {
        let body = toml::to_string_pretty(self).expect("a lock file serializes");
        format!(
            "# Written by `sluice plugin install`: the exact plugin bytes this folder's pipelines run.\n# Commit it; edit it only through `sluice plugin install`.\n{body}"
        )
    }

    /// The entry for `name` (`NAMESPACE/NAME`).
    pub fn get(&self, name: &str) -> Option<&Locked> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Add or replace the entry for `locked.name`, keeping entries sorted by name.
    pub fn upsert(&mut self, locked: Locked) {
        self.plugins.retain(|p| p.name != locked.name);
        self.plugins.push(locked);
        self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// A `uses:` value naming a marketplace plugin: `NAMESPACE/NAME@MAJOR`. Both parts follow
/// OCI repository rules (lower-case letters, digits, `.`, `_`, `-`), so neither can be a
/// path. `None` for anything else (built-ins, paths, digests).
pub fn marketplace_reference(uses: &str) -> Option<(&str, u64)> {
    let (name, major) = uses.split_once('@')?;
    let (namespace, plugin) = name.split_once('/')?;
    if !is_name_part(namespace) || !is_name_part(plugin) {
        return None;
    }
    Some((name, major.parse().ok()?))
}

/// One part of a plugin name: starts with a lower-case letter or digit, then lower-case
/// letters, digits, `.`, `_` or `-`; at most 64 characters; never `.` or `..`.
pub fn is_name_part(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && !s.contains("..")
}

/// The major version of a lock entry's version (`1` of `1.2.0`).
pub fn major_of(version: &str) -> Option<u64> {
    semver::Version::parse(version).ok().map(|v| v.major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_round_trips_and_keeps_its_entries_sorted() {
        let entry = |name: &str| Locked {
            name: name.into(),
            requirement: "^1".into(),
            version: "1.2.0".into(),
            registry: format!("oci://127.0.0.1:5000/{name}"),
            oci_digest: "sha256:00".into(),
            blake3: "blake3:00".into(),
            capabilities: vec!["http".into()],
            publisher: String::new(),
            unsigned: true,
        };
        let mut lock = Lockfile {
            version: FORMAT,
            plugins: vec![],
        };
        lock.upsert(entry("zeta/b"));
        lock.upsert(entry("acme/a"));
        lock.upsert(entry("zeta/b"));
        let back = Lockfile::parse(&lock.render()).unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.plugins[0].name, "acme/a");
        assert_eq!(back.plugins.len(), 2);
        assert!(matches!(
            Lockfile::parse("version = 9\n"),
            Err(LockError::Format(9))
        ));
        assert!(Lockfile::parse("version = 1\nsurprise = true\n").is_err());
    }

    #[test]
    fn only_namespace_slash_name_at_major_is_a_marketplace_reference() {
        assert_eq!(
            marketplace_reference("acme/semver@1"),
            Some(("acme/semver", 1))
        );
        for other in [
            "command@1",
            "./a.wasm",
            "acme/../x@1",
            "Acme/x@1",
            "acme/x@one",
            "a/b/c@1",
            "/abs@1",
            "acme/.x@1",
        ] {
            assert_eq!(marketplace_reference(other), None, "{other}");
        }
    }
}
