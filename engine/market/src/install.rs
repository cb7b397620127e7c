//! `sluice plugin install`: resolve a version, fetch it, and check everything before anything
//! is kept — the manifest and layer digests, the size, the catalog's record, the signature
//! and the trust policy. The caller then loads the component, checks its description with
//! [`Fetched::check_description`], asks the user to accept its capabilities and writes the lock.
use crate::artifact;
use crate::catalog::{self, Catalog};
use crate::reference::{PluginRef, Repository};
use crate::signing::{Kind, PublicKey, Signed, Statement};
use crate::transport::{Access, Transport};
use crate::trust::Policy;
use anyhow::{Context as _, bail};
use sluice_core::lockfile::Locked;
use sluice_core::plugin::Description;

/// How a fetched version is signed.
#[derive(Clone, Debug)]
pub enum Signature {
    /// By a key the trust policy trusts for this repository.
    Trusted {
        /// The publisher's name in the policy.
        publisher: String,
        /// Its key.
        key: PublicKey,
    },
    /// By a valid key nobody trusts here.
    Untrusted(PublicKey),
    /// Not at all.
    Unsigned,
}

/// A version fetched and verified, not yet accepted.
pub struct Fetched {
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// The repository.
    pub repository: Repository,
    /// What it was asked for with.
    pub requirement: String,
    /// The version chosen.
    pub version: String,
    /// The manifest digest.
    pub oci_digest: String,
    /// The component's blake3 digest.
    pub blake3: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// Its signature.
    pub signature: Signature,
}

/// Options of an install.
pub struct Options<'a> {
    /// Take unsigned or untrusted versions (loud, and recorded in the lock).
    pub allow_unsigned: bool,
    /// The largest layer fetched.
    pub max_bytes: u64,
    /// Registry access.
    pub access: &'a Access,
    /// The trust policy.
    pub trust: &'a Policy,
}

/// Resolve and fetch `reference`; `locked` is the lock's current entry for the same name.
pub async fn fetch(
    reference: &PluginRef,
    locked: Option<&Locked>,
    options: &Options<'_>,
) -> anyhow::Result<Fetched> {
    let repo = &reference.repository;
    let name = repo.plugin_name();
    let transport = Transport::open(repo, options.access);
    let catalog = Catalog::read(&Transport::open(&repo.catalog(), options.access)).await?;
    let entry = catalog.catalog.entry(&name);
    let (requirement, record): (String, Option<catalog::Version>) = match (&reference.tag, entry) {
        (Some(tag), Some(e)) => {
            let v = e.versions.iter().find(|v| &v.version == tag);
            if v.is_some_and(|v| v.yanked) {
                bail!(
                    "{name} {tag} is yanked (withdrawn by its publisher): install another version"
                );
            }
            (format!("={tag}"), v.cloned())
        }
        (Some(tag), None) => (format!("={tag}"), None),
        (None, None) => bail!(
            "{name} is not in the catalog at {}: name an exact version ({repo}:VERSION), or publish with `sluice plugin publish`",
            repo.catalog()
        ),
        (None, Some(e)) => {
            let text = reference
                .requirement
                .clone()
                .unwrap_or_else(|| "*".to_string());
            let req = semver::VersionReq::parse(&text).with_context(|| {
                format!("`{text}` is not a version requirement (e.g. 1, ^1.2, >=1.2, <2)")
            })?;
            match e.resolve(&req) {
                (Some(v), _) => (text, Some(v.clone())),
                (None, Some(y)) => bail!(
                    "{name}@{text}: the only matching version, {}, is yanked",
                    y.version
                ),
                (None, None) => bail!(
                    "{name} has no version matching {text}; published: {}",
                    e.versions
                        .iter()
                        .map(|v| v.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let version = record
        .as_ref()
        .map(|r| r.version.clone())
        .or_else(|| reference.tag.clone())
        .expect("a version");

    let Some((manifest, oci_digest)) = transport.manifest(&version).await? else {
        if record.is_some() {
            bail!(
                "the catalog lists {name} {version}, but {repo}:{version} has no manifest: the catalog points to something missing; nothing installed"
            );
        }
        bail!("{repo}:{version} does not exist");
    };
    if let Some(r) = &record
        && r.oci_digest != oci_digest
    {
        bail!(
            "{repo}:{version} now points to {oci_digest}, but it was published as {}: the tag was re-pointed; nothing installed",
            r.oci_digest
        );
    }
    if let Some(l) = locked.filter(|l| l.version == version)
        && l.oci_digest != oci_digest
    {
        bail!(
            "sluice.lock pins {name} {version} to {}, but the registry's tag now points to {oci_digest}: the tag was re-pointed after the lock was written; the lock wins, nothing changed",
            l.oci_digest
        );
    }
    let what = format!("{repo}:{version}");
    let parsed = artifact::parse(
        &manifest,
        artifact::WASM_CONFIG,
        artifact::WASM_LAYER,
        &what,
    )?;
    for (key, expected) in [(artifact::TITLE, &name), (artifact::VERSION, &version)] {
        if let Some(value) = parsed.annotations.get(key)
            && value != expected
        {
            bail!(
                "{what}: annotation {key} is `{}`, not `{expected}`: refused, nothing installed",
                value
                    .escape_debug()
                    .to_string()
                    .chars()
                    .take(120)
                    .collect::<String>()
            );
        }
    }
    if parsed.layer_size > options.max_bytes {
        bail!(
            "{what}: the component is {} bytes; the limit is {} (max-plugin-size in sluice.toml): nothing installed",
            parsed.layer_size,
            options.max_bytes
        );
    }
    let bytes = transport
        .blob(&parsed.layer_digest, options.max_bytes)
        .await?;
    let blake3 = sluice_core::Digest::of(&bytes).to_string();
    if let Some(claimed) = parsed.annotations.get(artifact::BLAKE3)
        && claimed != &blake3
    {
        bail!("{what}: the component hashes to {blake3}, but its manifest says {claimed}: refused");
    }
    if let Some(r) = &record
        && r.blake3 != blake3
    {
        bail!(
            "{what}: the component hashes to {blake3}, but the catalog recorded {}: refused",
            r.blake3
        );
    }

    let signature = signature(
        &transport,
        &name,
        &version,
        &oci_digest,
        &blake3,
        &repo.to_string(),
        options.trust,
    )
    .await?;
    match &signature {
        Signature::Trusted { .. } => {}
        _ if options.allow_unsigned => {}
        Signature::Untrusted(key) => bail!(
            "{what} is signed by {key}, which is not trusted for {repo}: trust it with `sluice trust add NAME KEY.pub --scope '{}'`, or pass --allow-unsigned; nothing installed",
            trust_scope(repo)
        ),
        Signature::Unsigned => bail!(
            "{what} is not signed: pass --allow-unsigned to install it anyway; nothing installed"
        ),
    }
    Ok(Fetched {
        name,
        repository: repo.clone(),
        requirement,
        version,
        oci_digest,
        blake3,
        bytes,
        signature,
    })
}

/// The scope a user would trust a repository's namespace with.
pub fn trust_scope(repo: &Repository) -> String {
    let s = repo.to_string();
    match s.rsplit_once('/') {
        Some((ns, _)) => format!("{ns}/*"),
        None => s,
    }
}

async fn signature(
    transport: &Transport,
    name: &str,
    version: &str,
    oci_digest: &str,
    blake3: &str,
    repository: &str,
    trust: &Policy,
) -> anyhow::Result<Signature> {
    let tag = artifact::signature_tag(oci_digest);
    let Some((manifest, _)) = transport.manifest(&tag).await? else {
        return Ok(Signature::Unsigned);
    };
    let what = format!("the signature of {name} {version}");
    let parsed = artifact::parse(
        &manifest,
        artifact::EMPTY_CONFIG,
        artifact::SIGNATURE_LAYER,
        &what,
    )?;
    let blob = transport.blob(&parsed.layer_digest, 64 << 10).await?;
    let signed: Signed =
        serde_json::from_slice(&blob).with_context(|| format!("{what} is malformed"))?;
    let key = signed
        .verify(Kind::Plugin)
        .with_context(|| format!("{what} is invalid; nothing installed"))?;
    let statement: Statement =
        serde_json::from_str(&signed.payload).with_context(|| format!("{what} is malformed"))?;
    let expected = Statement {
        name: name.to_string(),
        version: version.to_string(),
        blake3: blake3.to_string(),
        oci_digest: oci_digest.to_string(),
    };
    if statement != expected {
        bail!(
            "{what} is valid but for other content ({} {} {}), not {oci_digest}: refused, nothing installed",
            statement.name,
            statement.version,
            statement.oci_digest
        );
    }
    Ok(match trust.trusts(&key, repository) {
        Some(p) => Signature::Trusted {
            publisher: p.name.clone(),
            key,
        },
        None => Signature::Untrusted(key),
    })
}

impl Fetched {
    /// The component must describe itself with the repository's name and the version.
    pub fn check_description(&self, d: &Description) -> anyhow::Result<()> {
        if d.name != self.repository.short_name() || d.version != self.version {
            bail!(
                "{}:{} describes itself as {} {}: the name and version must match the tag; refused, nothing installed",
                self.repository,
                self.version,
                d.name,
                d.version
            );
        }
        Ok(())
    }

    /// The lock entry for this version with the capabilities accepted.
    pub fn locked(&self, capabilities: Vec<String>) -> Locked {
        let (publisher, unsigned) = match &self.signature {
            Signature::Trusted { key, .. } => (key.to_string(), false),
            Signature::Untrusted(key) => (key.to_string(), true),
            Signature::Unsigned => (String::new(), true),
        };
        Locked {
            name: self.name.clone(),
            requirement: self.requirement.clone(),
            version: self.version.clone(),
            registry: self.repository.to_string(),
            oci_digest: self.oci_digest.clone(),
            blake3: self.blake3.clone(),
            capabilities,
            publisher,
            unsigned,
        }
    }
}

/// Fetch the exact bytes a lock entry pins (by its manifest digest, never by tag), checked
/// against the lock's blake3 digest; also says whether the catalog now marks it yanked.
pub async fn fetch_locked(
    locked: &Locked,
    max_bytes: u64,
    access: &Access,
) -> anyhow::Result<(Vec<u8>, bool)> {
    let reference = PluginRef::parse(&locked.registry, &|_| None)?;
    let repo = &reference.repository;
    let transport = Transport::open(repo, access);
    let what = format!("{} {} (locked)", locked.name, locked.version);
    let Some((manifest, _)) = transport.manifest(&locked.oci_digest).await? else {
        bail!(
            "{what}: {repo} no longer has manifest {}",
            locked.oci_digest
        );
    };
    let parsed = artifact::parse(
        &manifest,
        artifact::WASM_CONFIG,
        artifact::WASM_LAYER,
        &what,
    )?;
    if parsed.layer_size > max_bytes {
        bail!(
            "{what}: the component is {} bytes; the limit is {max_bytes}",
            parsed.layer_size
        );
    }
    let bytes = transport.blob(&parsed.layer_digest, max_bytes).await?;
    let blake3 = sluice_core::Digest::of(&bytes).to_string();
    if blake3 != locked.blake3 {
        bail!(
            "{what}: the registry serves bytes hashing to {blake3}, but sluice.lock pins {}: refused",
            locked.blake3
        );
    }
    let yanked = is_yanked(locked, access).await;
    Ok((bytes, yanked))
}

/// The signature status of a published version, for `plugin info` (which does not download
/// the component: `blake3` is the catalog's word for it; install checks the bytes).
pub async fn signature_of(
    repo: &Repository,
    version: &str,
    blake3: &str,
    access: &Access,
    trust: &Policy,
) -> anyhow::Result<Signature> {
    let transport = Transport::open(repo, access);
    let Some((_, oci_digest)) = transport.manifest(version).await? else {
        bail!("{repo}:{version} has no manifest");
    };
    signature(
        &transport,
        &repo.plugin_name(),
        version,
        &oci_digest,
        blake3,
        &repo.to_string(),
        trust,
    )
    .await
}

/// Whether the catalog marks a locked version as yanked (false when it cannot be read).
pub async fn is_yanked(locked: &Locked, access: &Access) -> bool {
    let Ok(reference) = PluginRef::parse(&locked.registry, &|_| None) else {
        return false;
    };
    Catalog::read(&Transport::open(&reference.repository.catalog(), access))
        .await
        .ok()
        .and_then(|r| {
            r.catalog
                .entry(&locked.name)
                .and_then(|e| e.versions.iter().find(|v| v.version == locked.version))
                .map(|v| v.yanked)
        })
        .unwrap_or(false)
}
