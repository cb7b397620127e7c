//! `sluice plugin publish` and `sluice plugin yank`: write a plugin version, its signature and
//! the namespace's catalog.
use crate::artifact;
use crate::catalog::{self, Catalog};
use crate::reference::PluginRef;
use crate::signing::{Kind, SecretKey, Statement};
use crate::transport::{Access, Transport};
use anyhow::{Context as _, bail};
use sluice_core::plugin::Description;
use std::collections::BTreeMap;

/// What a publish did.
pub struct Published {
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// The version.
    pub version: String,
    /// The manifest digest.
    pub oci_digest: String,
    /// The component digest.
    pub blake3: String,
    /// Whether a signature was stored.
    pub signed: bool,
    /// The version was there already with the same bytes.
    pub unchanged: bool,
}

/// Publish `bytes` (described as `description`) at `reference`, which must carry the
/// described version as its tag. Tags are immutable: other bytes under an existing tag are
/// refused.
pub async fn publish(
    bytes: &[u8],
    description: &Description,
    reference: &PluginRef,
    key: Option<&SecretKey>,
    access: &Access,
) -> anyhow::Result<Published> {
    let repo = &reference.repository;
    let name = repo.plugin_name();
    let Some(tag) = reference.tag.as_deref() else {
        bail!("say which version this is: {repo}:{}", description.version);
    };
    if tag != description.version {
        bail!(
            "the tag is {tag} but the component describes itself as {} {}: publish it as {repo}:{}",
            description.name,
            description.version,
            description.version
        );
    }
    semver::Version::parse(tag)
        .with_context(|| format!("`{tag}` is not a semantic version (MAJOR.MINOR.PATCH)"))?;
    if repo.short_name() != description.name {
        bail!(
            "the component describes itself as `{}`, but the repository is named `{}`: publish it as …/{}",
            description.name,
            repo.short_name(),
            description.name
        );
    }
    let transport = Transport::open(repo, access);
    let blake3 = sluice_core::Digest::of(bytes).to_string();
    let layer = artifact::Blob {
        media_type: artifact::WASM_LAYER,
        bytes: bytes.to_vec(),
    };
    let config = artifact::wasm_config(&crate::transport::sha256(bytes));
    let mut annotations = BTreeMap::new();
    annotations.insert(artifact::TITLE.to_string(), name.clone());
    annotations.insert(artifact::VERSION.to_string(), description.version.clone());
    annotations.insert(artifact::SUMMARY.to_string(), description.summary.clone());
    annotations.insert(artifact::BLAKE3.to_string(), blake3.clone());
    annotations.insert(
        artifact::DESCRIPTION.to_string(),
        serde_json::to_string(description)?,
    );
    let manifest = artifact::manifest(&config, &layer, &annotations);
    let oci_digest = crate::transport::sha256(&manifest);

    let mut unchanged = false;
    if let Some((existing, existing_digest)) = transport.manifest(tag).await? {
        let same_bytes = artifact::parse(
            &existing,
            artifact::WASM_CONFIG,
            artifact::WASM_LAYER,
            "the existing version",
        )
        .is_ok_and(|p| p.layer_digest == crate::transport::sha256(bytes));
        if !same_bytes {
            bail!(
                "{repo}:{tag} is already published with other bytes (manifest {existing_digest}); versions are immutable: publish a new version"
            );
        }
        unchanged = existing_digest == oci_digest;
    }
    if !unchanged {
        transport.put_blob(&config.bytes).await?;
        transport.put_blob(&layer.bytes).await?;
        let stored = transport.put_manifest(tag, &manifest).await?;
        if stored != oci_digest {
            bail!("the registry stored the manifest as {stored}, not {oci_digest}");
        }
    }
    let oci_digest = match transport.manifest(tag).await? {
        Some((_, d)) => d,
        None => bail!("{repo}:{tag} is not readable after it was pushed"),
    };

    if let Some(key) = key {
        let statement = Statement {
            name: name.clone(),
            version: tag.to_string(),
            blake3: blake3.clone(),
            oci_digest: oci_digest.clone(),
        };
        let signed = key.sign(Kind::Plugin, serde_json::to_string(&statement)?);
        let sig_layer = artifact::Blob {
            media_type: artifact::SIGNATURE_LAYER,
            bytes: serde_json::to_vec(&signed)?,
        };
        let empty = artifact::empty_config();
        transport.put_blob(&empty.bytes).await?;
        transport.put_blob(&sig_layer.bytes).await?;
        transport
            .put_manifest(
                &artifact::signature_tag(&oci_digest),
                &artifact::manifest(&empty, &sig_layer, &BTreeMap::new()),
            )
            .await?;
    }

    let catalog_transport = Transport::open(&repo.catalog(), access);
    let mut read = Catalog::read(&catalog_transport).await?;
    read.catalog.add(
        &name,
        &repo.to_string(),
        &description.summary,
        &description.category,
        catalog::Version {
            version: tag.to_string(),
            oci_digest: oci_digest.clone(),
            blake3: blake3.clone(),
            capabilities: description
                .capabilities
                .iter()
                .map(ToString::to_string)
                .collect(),
            side_effects: description.side_effects,
            publisher: key.map(|k| k.public().to_string()).unwrap_or_default(),
            yanked: false,
            published: jiff::Timestamp::now().to_string(),
        },
    );
    write_catalog(&read.catalog, &catalog_transport, key).await?;
    Ok(Published {
        name,
        version: tag.to_string(),
        oci_digest,
        blake3,
        signed: key.is_some(),
        unchanged,
    })
}

async fn write_catalog(
    catalog: &Catalog,
    transport: &Transport,
    key: Option<&SecretKey>,
) -> anyhow::Result<()> {
    // An unsigned publish still keeps the catalog signed, by a throwaway key: the catalog's
    // signature only proves it is whole; trust comes from each version's signature.
    let throwaway;
    let key = match key {
        Some(k) => k,
        None => {
            throwaway = SecretKey::generate()?;
            &throwaway
        }
    };
    catalog.write(transport, key).await?;
    Ok(())
}

/// Mark a version as withdrawn in the catalog (installs refuse it; locks keep working).
pub async fn yank(
    reference: &PluginRef,
    key: Option<&SecretKey>,
    undo: bool,
    access: &Access,
) -> anyhow::Result<String> {
    let repo = &reference.repository;
    let Some(version) = reference.tag.as_deref() else {
        bail!("say which version to yank: {repo}:VERSION");
    };
    let transport = Transport::open(&repo.catalog(), access);
    let mut read = Catalog::read(&transport).await?;
    let name = repo.plugin_name();
    let entry = read
        .catalog
        .plugins
        .iter_mut()
        .find(|e| e.name == name)
        .with_context(|| format!("the catalog of {} has no plugin {name}", repo.catalog()))?;
    let v = entry
        .versions
        .iter_mut()
        .find(|v| v.version == version)
        .with_context(|| format!("{name} has no version {version} in the catalog"))?;
    v.yanked = !undo;
    write_catalog(&read.catalog, &transport, key).await?;
    Ok(format!("{name} {version}"))
}
