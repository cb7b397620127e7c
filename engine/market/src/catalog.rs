//! A namespace's catalog: one signed JSON document at `NAMESPACE/sluice-catalog:index`
//! listing every plugin, its versions, digests, summary, category, capabilities and
//! publisher key. `publish` and `yank` rewrite it; `search`, `info` and `install` read it.
//!
//! The catalog's signature proves who wrote it last and that nobody changed it since; it does
//! not make a plugin trusted: install checks each version's own signature against the
//! trust policy.
use crate::artifact;
use crate::signing::{Kind, PublicKey, SecretKey, Signed};
use crate::transport::{Transport, TransportError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The catalog repository's name, beside the plugins.
pub const REPOSITORY: &str = "sluice-catalog";
/// Its tag.
pub const TAG: &str = "index";
/// The largest catalog read.
pub const MAX_BYTES: u64 = 16 << 20;

/// The catalog.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// One entry per plugin, by name.
    pub plugins: Vec<Entry>,
}

/// One plugin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// `oci://…` or `file://…` of its repository.
    pub repository: String,
    /// The latest version's summary.
    pub summary: String,
    /// The latest version's category.
    pub category: String,
    /// Every published version, oldest first.
    pub versions: Vec<Version>,
}

/// One published version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// The exact version (also the tag).
    pub version: String,
    /// The OCI manifest digest.
    pub oci_digest: String,
    /// The component's blake3 digest.
    pub blake3: String,
    /// Its declared capabilities, worded as `plugin info` shows them.
    pub capabilities: Vec<String>,
    /// Whether it declares side effects.
    pub side_effects: bool,
    /// The key that signed it (`ed25519:…`), empty when published unsigned.
    pub publisher: String,
    /// Withdrawn: installs refuse it, existing locks keep working and warn.
    #[serde(default)]
    pub yanked: bool,
    /// When it was published (RFC 3339).
    pub published: String,
}

/// A catalog as read, with who signed it.
pub struct Read {
    /// The catalog (empty when the namespace has none yet).
    pub catalog: Catalog,
    /// The key of its last writer, `None` when unsigned or absent.
    pub signer: Option<PublicKey>,
    /// Whether a catalog exists at all.
    pub exists: bool,
}

impl Catalog {
    /// Read the catalog in `transport`'s repository (a `sluice-catalog`).
    pub async fn read(transport: &Transport) -> Result<Read, TransportError> {
        let what = format!("the catalog at {}:{TAG}", transport.repository());
        let Some((manifest, _)) = transport.manifest(TAG).await? else {
            return Ok(Read {
                catalog: Catalog::default(),
                signer: None,
                exists: false,
            });
        };
        let parsed = artifact::parse(
            &manifest,
            artifact::EMPTY_CONFIG,
            artifact::CATALOG_LAYER,
            &what,
        )?;
        if parsed.layer_size > MAX_BYTES {
            return Err(TransportError::Refused(format!(
                "{what} is {} bytes; at most {MAX_BYTES} are read",
                parsed.layer_size
            )));
        }
        let blob = transport.blob(&parsed.layer_digest, MAX_BYTES).await?;
        let refuse = |why: String| TransportError::Refused(format!("{what}: {why}"));
        let signed: Signed = serde_json::from_slice(&blob)
            .map_err(|e| refuse(format!("not a signed catalog: {e}")))?;
        let signer = signed
            .verify(Kind::Catalog)
            .map_err(|e| refuse(format!("{e}: it was changed after it was signed")))?;
        let catalog: Catalog =
            serde_json::from_str(&signed.payload).map_err(|e| refuse(format!("malformed: {e}")))?;
        for e in &catalog.plugins {
            let ok = e.name.split_once('/').is_some_and(|(a, b)| {
                sluice_core::lockfile::is_name_part(a) && sluice_core::lockfile::is_name_part(b)
            });
            if !ok {
                return Err(refuse(format!(
                    "it lists `{}`, which is not a plugin name",
                    e.name.chars().take(80).collect::<String>()
                )));
            }
        }
        Ok(Read {
            catalog,
            signer: Some(signer),
            exists: true,
        })
    }

    /// Sign and store the catalog in `transport`'s repository.
    pub async fn write(
        &self,
        transport: &Transport,
        key: &SecretKey,
    ) -> Result<(), TransportError> {
        let signed = key.sign(Kind::Catalog, serde_json::to_string(self).expect("json"));
        let layer = artifact::Blob {
            media_type: artifact::CATALOG_LAYER,
            bytes: serde_json::to_vec(&signed).expect("json"),
        };
        let config = artifact::empty_config();
        transport.put_blob(&config.bytes).await?;
        transport.put_blob(&layer.bytes).await?;
        let manifest = artifact::manifest(&config, &layer, &BTreeMap::new());
        transport.put_manifest(TAG, &manifest).await?;
        Ok(())
    }

    /// The entry for `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.plugins.iter().find(|e| e.name == name)
    }

    /// Add a version (replacing one with the same version), updating the entry's summary.
    pub fn add(
        &mut self,
        name: &str,
        repository: &str,
        summary: &str,
        category: &str,
        version: Version,
    ) {
        let i = match self.plugins.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                self.plugins.push(Entry {
                    name: name.into(),
                    repository: repository.into(),
                    summary: String::new(),
                    category: String::new(),
                    versions: vec![],
                });
                self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
                self.plugins
                    .iter()
                    .position(|e| e.name == name)
                    .expect("just added")
            }
        };
        let e = &mut self.plugins[i];
        e.summary = summary.into();
        e.category = category.into();
        e.repository = repository.into();
        e.versions.retain(|v| v.version != version.version);
        e.versions.push(version);
        e.versions.sort_by_key(|a| semver_key(&a.version));
    }
}

impl Entry {
    /// The newest version that is not yanked.
    pub fn latest(&self) -> Option<&Version> {
        self.versions.iter().rev().find(|v| !v.yanked)
    }

    /// The newest version matching `requirement` (`1` and `1.2` mean `^1`, `^1.2`), and
    /// whether a newer yanked one also matched.
    pub fn resolve(
        &self,
        requirement: &semver::VersionReq,
    ) -> (Option<&Version>, Option<&Version>) {
        let matching = |v: &&Version| {
            semver::Version::parse(&v.version).is_ok_and(|s| requirement.matches(&s))
        };
        let best = self
            .versions
            .iter()
            .rev()
            .filter(|v| !v.yanked)
            .find(matching);
        let yanked = self
            .versions
            .iter()
            .rev()
            .filter(|v| v.yanked)
            .find(matching);
        (best, yanked)
    }
}

fn semver_key(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v).ok()
}
