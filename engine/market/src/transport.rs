//! Talking to where plugins are kept: an OCI registry over the distribution API (oci-client),
//! or an OCI image layout folder (`oci-layout`, `index.json`, `blobs/sha256/…`) for sharing
//! through a shared folder or a git repository with nothing installed.
//!
//! Everything read is bounded and checked: manifests and blobs by size before and while they
//! are read, blobs by their sha256 digest, layout paths only from validated digests.
use crate::reference::{Location, Repository};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The largest manifest or layout index read.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The registry or folder could not be reached or read.
    #[error("{0}")]
    Unreachable(String),
    /// What came back breaks a rule: wrong digest, too large, malformed.
    #[error("{0}")]
    Refused(String),
}

type Result<T> = std::result::Result<T, TransportError>;

/// sha256 of `bytes` as `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `sha256:` and 64 lower-case hex digits: the only digests used to name files or fetch.
pub fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How to reach OCI registries: credentials and which hosts speak plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `(user, password)` per registry host.
    pub credentials: std::collections::BTreeMap<String, (String, String)>,
    /// Hosts reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

/// One repository, opened for reading and writing.
pub struct Transport {
    repo: Repository,
    inner: Inner,
}

enum Inner {
    Dir(PathBuf),
    Oci {
        client: Box<oci_client::Client>,
        auth: oci_client::secrets::RegistryAuth,
        registry: String,
        repository: String,
    },
}

fn loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
        .unwrap_or(host);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl Transport {
    /// Open `repo`.
    pub fn open(repo: &Repository, access: &Access) -> Self {
        let inner = match &repo.location {
            Location::Dir(dir) => Inner::Dir(dir.clone()),
            Location::Oci {
                registry,
                repository,
            } => {
                // reqwest (under oci-client) needs a process-wide TLS provider: ring, as
                // async-nats uses. A second install fails harmlessly.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let plain: Vec<String> = std::iter::once(registry.clone())
                    .filter(|r| loopback(r) || access.insecure.contains(r))
                    .collect();
                let config = oci_client::client::ClientConfig {
                    protocol: oci_client::client::ClientProtocol::HttpsExcept(plain),
                    connect_timeout: Some(std::time::Duration::from_secs(10)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    ..Default::default()
                };
                let auth = match access.credentials.get(registry) {
                    Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
                    None => oci_client::secrets::RegistryAuth::Anonymous,
                };
                Inner::Oci {
                    client: Box::new(oci_client::Client::new(config)),
                    auth,
                    registry: registry.clone(),
                    repository: repository.clone(),
                }
            }
        };
        Transport {
            repo: repo.clone(),
            inner,
        }
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    fn reference(&self, tag_or_digest: &str) -> oci_client::Reference {
        let Inner::Oci {
            registry,
            repository,
            ..
        } = &self.inner
        else {
            unreachable!()
        };
        if tag_or_digest.starts_with("sha256:") {
            oci_client::Reference::with_digest(
                registry.clone(),
                repository.clone(),
                tag_or_digest.to_string(),
            )
        } else {
            oci_client::Reference::with_tag(
                registry.clone(),
                repository.clone(),
                tag_or_digest.to_string(),
            )
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> TransportError {
        TransportError::Unreachable(format!("{}: {e}", self.repo))
    }

    /// The manifest a tag or digest names, with its sha256 digest; `None` when there is none.
    pub async fn manifest(&self, tag_or_digest: &str) -> Result<Option<(Vec<u8>, String)>> {
        if tag_or_digest.starts_with("sha256:") && !is_sha256(tag_or_digest) {
            return Err(TransportError::Refused(format!(
                "`{tag_or_digest}` is not a sha256 digest"
            )));
        }
        let (bytes, digest) = match &self.inner {
            Inner::Dir(dir) => {
                let digest = if tag_or_digest.starts_with("sha256:") {
                    tag_or_digest.to_string()
                } else {
                    match self.layout_index()?.tagged(tag_or_digest) {
                        Some(d) => d,
                        None => return Ok(None),
                    }
                };
                let path = blob_path(dir, &digest);
                if !path.exists() {
                    return Ok(None);
                }
                (
                    read_bounded(&path, MAX_MANIFEST_BYTES).map_err(|e| self.unreachable(e))?,
                    digest,
                )
            }
            Inner::Oci { client, auth, .. } => {
                let r = self.reference(tag_or_digest);
                let pulled = tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    client.pull_manifest_raw(&r, auth, &[MANIFEST_MEDIA_TYPE]),
                )
                .await
                .map_err(|_| self.unreachable("no manifest within 60 s"))?;
                match pulled {
                    Ok((b, d)) => (b.to_vec(), d),
                    Err(e) if not_found(&e) => return Ok(None),
                    Err(e) => return Err(self.unreachable(e)),
                }
            }
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(TransportError::Refused(format!(
                "{}: the manifest of `{tag_or_digest}` is {} bytes; at most {MAX_MANIFEST_BYTES} are read",
                self.repo,
                bytes.len()
            )));
        }
        let actual = sha256(&bytes);
        if actual != digest || (tag_or_digest.starts_with("sha256:") && actual != tag_or_digest) {
            return Err(TransportError::Refused(format!(
                "{}: the manifest served for `{tag_or_digest}` hashes to {actual}, not {digest}: it was tampered with",
                self.repo
            )));
        }
        Ok(Some((bytes, actual)))
    }

    /// The blob `digest`, at most `max` bytes, checked against its digest.
    pub async fn blob(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        if !is_sha256(digest) {
            return Err(TransportError::Refused(format!(
                "`{digest}` is not a sha256 digest"
            )));
        }
        let bytes = match &self.inner {
            Inner::Dir(dir) => {
                let path = blob_path(dir, digest);
                read_bounded(&path, max).map_err(|e| match e.kind() {
                    std::io::ErrorKind::FileTooLarge => TransportError::Refused(format!(
                        "{}: blob {digest} is larger than {max} bytes",
                        self.repo
                    )),
                    _ => self.unreachable(format!("blob {digest}: {e}")),
                })?
            }
            Inner::Oci { client, auth, .. } => {
                use futures_util::StreamExt as _;
                let r = self.reference(digest);
                // Pulling needs the client to have authenticated for this repository.
                client
                    .store_auth_if_needed(r.resolve_registry(), auth)
                    .await;
                let mut stream = client
                    .pull_blob_stream(&r, digest)
                    .await
                    .map_err(|e| self.unreachable(format!("blob {digest}: {e}")))?;
                if stream.content_length.is_some_and(|l| l > max) {
                    return Err(TransportError::Refused(format!(
                        "{}: blob {digest} is larger than {max} bytes",
                        self.repo
                    )));
                }
                let mut out = Vec::new();
                while let Some(chunk) = stream.stream.next().await {
                    let chunk = chunk.map_err(|e| self.blob_error(digest, e))?;
                    if (out.len() + chunk.len()) as u64 > max {
                        return Err(TransportError::Refused(format!(
                            "{}: blob {digest} is larger than {max} bytes",
                            self.repo
                        )));
                    }
                    out.extend_from_slice(&chunk);
                }
                out
            }
        };
        let actual = sha256(&bytes);
        if actual != digest {
            return Err(TransportError::Refused(format!(
                "{}: blob {digest} was served with other bytes (they hash to {actual}): it was tampered with",
                self.repo
            )));
        }
        Ok(bytes)
    }

    /// A failed blob read: oci-client checks the digest as the stream ends.
    fn blob_error(&self, digest: &str, e: impl std::fmt::Display) -> TransportError {
        let text = e.to_string();
        if text.contains("Invalid digest") {
            TransportError::Refused(format!(
                "{}: blob {digest} was served with other bytes ({text}): it was tampered with",
                self.repo
            ))
        } else {
            self.unreachable(format!("blob {digest}: {text}"))
        }
    }

    /// Store a blob; returns its digest.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        match &self.inner {
            Inner::Dir(dir) => {
                self.init_layout()?;
                let path = blob_path(dir, &digest);
                if !path.exists() {
                    write_atomic(&path, bytes).map_err(|e| self.unreachable(e))?;
                }
            }
            Inner::Oci { client, auth, .. } => {
                let r = self.reference(&digest);
                client
                    .store_auth_if_needed(r.resolve_registry(), auth)
                    .await;
                let exists = client.blob_exists(&r, &digest).await.unwrap_or(false);
                if !exists {
                    client
                        .push_blob(&r, bytes.to_vec(), &digest)
                        .await
                        .map_err(|e| self.unreachable(format!("push blob {digest}: {e}")))?;
                }
            }
        }
        Ok(digest)
    }

    /// Store a manifest under `tag`; returns its digest.
    pub async fn put_manifest(&self, tag: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        match &self.inner {
            Inner::Dir(dir) => {
                self.init_layout()?;
                write_atomic(&blob_path(dir, &digest), bytes).map_err(|e| self.unreachable(e))?;
                let mut index = self.layout_index()?;
                index.tag(tag, &digest, bytes.len() as u64);
                let text = serde_json::to_vec_pretty(&index.0).expect("json");
                write_atomic(&dir.join("index.json"), &text).map_err(|e| self.unreachable(e))?;
            }
            Inner::Oci { client, auth, .. } => {
                let r = self.reference(tag);
                client
                    .store_auth_if_needed(r.resolve_registry(), auth)
                    .await;
                client
                    .push_manifest_raw(&r, bytes.to_vec(), http_header(MANIFEST_MEDIA_TYPE))
                    .await
                    .map_err(|e| self.unreachable(format!("push manifest {tag}: {e}")))?;
            }
        }
        Ok(digest)
    }

    fn init_layout(&self) -> Result<()> {
        let Inner::Dir(dir) = &self.inner else {
            return Ok(());
        };
        std::fs::create_dir_all(dir.join("blobs").join("sha256"))
            .map_err(|e| self.unreachable(e))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| self.unreachable(e))?;
        }
        Ok(())
    }

    fn layout_index(&self) -> Result<LayoutIndex> {
        let Inner::Dir(dir) = &self.inner else {
            unreachable!()
        };
        let path = dir.join("index.json");
        if !path.exists() {
            return Ok(LayoutIndex(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": []
            })));
        }
        let bytes = read_bounded(&path, MAX_MANIFEST_BYTES)
            .map_err(|e| self.unreachable(format!("index.json: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            TransportError::Refused(format!("{}: index.json is not JSON: {e}", self.repo))
        })?;
        if !value["manifests"].is_array() {
            return Err(TransportError::Refused(format!(
                "{}: index.json has no manifests list",
                self.repo
            )));
        }
        Ok(LayoutIndex(value))
    }
}

fn http_header(v: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(v)
}

/// An OCI image layout's `index.json`.
struct LayoutIndex(serde_json::Value);

impl LayoutIndex {
    fn tagged(&self, tag: &str) -> Option<String> {
        self.0["manifests"].as_array()?.iter().rev().find_map(|m| {
            (m["annotations"][REF_NAME].as_str() == Some(tag))
                .then(|| {
                    m["digest"]
                        .as_str()
                        .filter(|d| is_sha256(d))
                        .map(str::to_string)
                })
                .flatten()
        })
    }

    fn tag(&mut self, tag: &str, digest: &str, size: u64) {
        let list = self.0["manifests"]
            .as_array_mut()
            .expect("checked when read");
        list.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
        list.push(serde_json::json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": size,
            "annotations": { REF_NAME: tag }
        }));
    }
}

fn not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)),
        _ => false,
    }
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    debug_assert!(is_sha256(digest));
    dir.join("blobs")
        .join("sha256")
        .join(&digest["sha256:".len()..])
}

/// Read a regular file of at most `max` bytes (a FIFO or a device must not hang or fill memory).
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// Write `bytes` to `path` through a temporary file in the same folder, so a reader never
/// sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
