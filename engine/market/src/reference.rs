//! Plugin references: where a plugin lives and which version is meant.
//!
//! - `oci://HOST[:PORT]/PATH/NAMESPACE/NAME[:TAG]` — a repository in an OCI registry;
//! - `file:///DIR/NAMESPACE/NAME[:TAG]` — a repository as an OCI image layout folder;
//! - `ALIAS/NAME[:TAG]` — `ALIAS` is a registry in `sluice.toml` (`[registries]`).
//!
//! Install takes `REF@REQUIREMENT` too (`oci://host/acme/semver@^1.2`). A plugin's name is
//! the repository's last two parts (`acme/semver`), which is what pipelines write in `uses:`.
use sluice_core::lockfile::is_name_part;
use std::fmt;
use std::path::PathBuf;

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An OCI registry: `host[:port]` and the repository path.
    Oci {
        /// `host[:port]`.
        registry: String,
        /// `acme/semver`, or deeper (`org/team/semver`).
        repository: String,
    },
    /// An OCI image layout folder holding one repository.
    Dir(PathBuf),
}

/// A repository (no tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repository {
    /// Where.
    pub location: Location,
}

/// A parsed reference: a repository with an optional tag or version requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRef {
    /// The repository.
    pub repository: Repository,
    /// `:TAG`, when given.
    pub tag: Option<String>,
    /// `@REQUIREMENT`, when given (install only).
    pub requirement: Option<String>,
}

/// Why a reference cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{reference}`: {reason}")]
pub struct RefError {
    reference: String,
    reason: String,
}

fn bad(reference: &str, reason: impl Into<String>) -> RefError {
    RefError {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

const FORMS: &str = "write oci://HOST[:PORT]/NAMESPACE/NAME[:VERSION], file:///DIR/NAMESPACE/NAME[:VERSION] or ALIAS/NAME with the alias in sluice.toml";

impl PluginRef {
    /// Parse `reference`; `aliases` maps `sluice.toml`'s registry aliases to their URLs.
    pub fn parse(
        reference: &str,
        aliases: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, RefError> {
        if reference.len() > 1024
            || reference
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad(
                reference,
                "not a reference (too long, or spaces/control characters)",
            ));
        }
        // The tag or requirement follows the last path part.
        let (body, last_sep) = match reference.rfind('/') {
            Some(i) => (reference, i),
            None => return Err(bad(reference, FORMS)),
        };
        let (head, tail) = body.split_at(last_sep + 1);
        let (tail, requirement) = match tail.split_once('@') {
            Some((t, r)) => (t, Some(r.to_string())),
            None => (tail, None),
        };
        let (name, tag) = match tail.split_once(':') {
            Some((n, t)) => (n, Some(t.to_string())),
            None => (tail, None),
        };
        if let Some(t) = &tag
            && !is_tag(t)
        {
            return Err(bad(reference, format!("`{t}` is not a valid tag")));
        }
        if tag.is_some() && requirement.is_some() {
            return Err(bad(
                reference,
                "give a :VERSION or an @REQUIREMENT, not both",
            ));
        }
        let repo = format!("{head}{name}");
        let location = if let Some(rest) = repo.strip_prefix("oci://") {
            let (registry, repository) =
                rest.split_once('/').ok_or_else(|| bad(reference, FORMS))?;
            if registry.is_empty()
                || !registry
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
            {
                return Err(bad(
                    reference,
                    format!("`{registry}` is not a registry host"),
                ));
            }
            Location::Oci {
                registry: registry.to_string(),
                repository: repository.to_string(),
            }
        } else if let Some(path) = repo.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    reference,
                    "a file:// reference needs an absolute path (file:///DIR/NAMESPACE/NAME)",
                ));
            }
            Location::Dir(PathBuf::from(path))
        } else if repo.contains("://") {
            return Err(bad(reference, format!("unknown scheme; {FORMS}")));
        } else {
            let (alias, rest) = repo.split_once('/').ok_or_else(|| bad(reference, FORMS))?;
            let base = aliases(alias).ok_or_else(|| {
                bad(
                    reference,
                    format!("no registry `{alias}` in sluice.toml's [registries]; {FORMS}"),
                )
            })?;
            return PluginRef::parse(
                &format!(
                    "{}/{rest}{}{}",
                    base.trim_end_matches('/'),
                    tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default(),
                    requirement
                        .as_deref()
                        .map(|r| format!("@{r}"))
                        .unwrap_or_default()
                ),
                &|_| None,
            );
        };
        let repository = Repository { location };
        let parts = repository.path_parts();
        if parts.len() < 2 {
            return Err(bad(
                reference,
                format!("a plugin repository ends in NAMESPACE/NAME; {FORMS}"),
            ));
        }
        if let Location::Oci { repository: r, .. } = &repository.location
            && let Some(p) = r.split('/').find(|p| !is_name_part(p))
        {
            return Err(bad(
                reference,
                format!("`{p}` is not a repository name part (lower-case letters, digits, . _ -)"),
            ));
        }
        for p in &parts[parts.len() - 2..] {
            if !is_name_part(p) {
                return Err(bad(
                    reference,
                    format!("`{p}` is not a plugin name part (lower-case letters, digits, . _ -)"),
                ));
            }
        }
        if let Location::Dir(dir) = &repository.location
            && dir
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(reference, "a file:// reference may not contain `..`"));
        }
        Ok(PluginRef {
            repository,
            tag,
            requirement,
        })
    }
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let mut c = t.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric() || f == '_')
        && t.len() <= 128
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Repository {
    fn path_parts(&self) -> Vec<String> {
        match &self.location {
            Location::Oci { repository, .. } => repository.split('/').map(str::to_string).collect(),
            Location::Dir(dir) => dir
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// `NAMESPACE/NAME`: the name pipelines use.
    pub fn plugin_name(&self) -> String {
        let parts = self.path_parts();
        parts[parts.len() - 2..].join("/")
    }

    /// The last part: the name the component must describe itself with.
    pub fn short_name(&self) -> String {
        self.path_parts().pop().unwrap_or_default()
    }

    /// The namespace's catalog repository: a sibling named `sluice-catalog`.
    pub fn catalog(&self) -> Repository {
        self.sibling(crate::catalog::REPOSITORY)
    }

    /// A repository next to this one.
    pub fn sibling(&self, name: &str) -> Repository {
        let location = match &self.location {
            Location::Oci {
                registry,
                repository,
            } => Location::Oci {
                registry: registry.clone(),
                repository: match repository.rsplit_once('/') {
                    Some((ns, _)) => format!("{ns}/{name}"),
                    None => name.to_string(),
                },
            },
            Location::Dir(dir) => Location::Dir(dir.with_file_name(name)),
        };
        Repository { location }
    }

    /// The namespace (a registry prefix: `oci://host/acme`) as a repository whose catalog is
    /// searched: `oci://host/acme` names the catalog `oci://host/acme/sluice-catalog`.
    pub fn namespace_catalog(namespace: &str) -> Result<Repository, RefError> {
        let r = PluginRef::parse(
            &format!(
                "{}/{}",
                namespace.trim_end_matches('/'),
                crate::catalog::REPOSITORY
            ),
            &|_| None,
        )?;
        Ok(r.repository)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Oci {
                registry,
                repository,
            } => write!(f, "oci://{registry}/{repository}"),
            Location::Dir(dir) => write!(f, "file://{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PluginRef, RefError> {
        PluginRef::parse(s, &|a| {
            (a == "acme").then(|| "oci://ghcr.example/acme".to_string())
        })
    }

    #[test]
    fn references_name_a_repository_a_tag_or_a_requirement() {
        let r = parse("oci://127.0.0.1:5000/acme/semver:1.2.0").unwrap();
        assert_eq!(r.repository.to_string(), "oci://127.0.0.1:5000/acme/semver");
        assert_eq!(r.tag.as_deref(), Some("1.2.0"));
        assert_eq!(r.repository.plugin_name(), "acme/semver");
        assert_eq!(
            r.repository.catalog().to_string(),
            "oci://127.0.0.1:5000/acme/sluice-catalog"
        );
        let r = parse("file:///srv/plugins/acme/semver@^1.2").unwrap();
        assert_eq!(r.repository.to_string(), "file:///srv/plugins/acme/semver");
        assert_eq!(r.requirement.as_deref(), Some("^1.2"));
        assert_eq!(
            r.repository.catalog().to_string(),
            "file:///srv/plugins/acme/sluice-catalog"
        );
        let r = parse("acme/semver@1").unwrap();
        assert_eq!(r.repository.to_string(), "oci://ghcr.example/acme/semver");
        assert_eq!(r.requirement.as_deref(), Some("1"));
    }

    #[test]
    fn references_that_could_escape_or_confuse_are_refused() {
        for r in [
            "file:///srv/../etc/acme/x",
            "file://relative/acme/x",
            "oci://host/Acme/x",
            "oci://host/acme/x:bad/tag",
            "oci://host/acme/x:1.0@^1",
            "http://host/acme/x",
            "other/x",
            "x",
            "oci://host/x",
            "oci://host/acme/x y",
        ] {
            assert!(parse(r).is_err(), "{r}");
        }
    }
}
