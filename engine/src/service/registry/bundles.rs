//! A pipeline's folder, uploaded (`bundle.put`): a tar archive unpacked with every entry checked,
//! then stored as an artifact tree that `pipeline.put` names as the pipeline's `bundle`. Any
//! engine writes the tree out again under its data directory when the pipeline is loaded
//! (`Service::bundle_dir`).
use crate::artifacts::tree::{self, MAX_DEPTH};
use sluice_api::ApiError;
use sluice_api::verbs::Bundle;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// Entries an archive may hold.
pub const MAX_ENTRIES: usize = 20_000;

impl crate::service::Service {
    /// Unpack `tar` (checking every entry) and store it as a tree.
    pub(in crate::service) async fn bundle_put(
        &self,
        tenant: &str,
        tar: Vec<u8>,
    ) -> Result<Bundle, ApiError> {
        let blobs = self.artifacts_of(tenant).await?;
        tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().map_err(ApiError::internal)?;
            unpack(&tar, dir.path())?;
            let (digest, stats) = tree::put_tree(&*blobs, dir.path()).map_err(|e| match e {
                crate::artifacts::StoreError::QuotaExceeded(why) => {
                    ApiError::new(sluice_api::Code::QuotaExceeded, why)
                }
                e => ApiError::invalid(e.to_string()),
            })?;
            Ok(Bundle {
                digest: digest.to_string(),
                files: stats.files,
                bytes: stats.bytes,
            })
        })
        .await
        .map_err(ApiError::internal)?
    }
}

/// Unpack `tar` into `root`: regular files (their executable bit kept), directories, and
/// symbolic links that stay inside the folder. Absolute paths, `..`, hard links, devices and
/// anything deeper than the tree allows are refused, naming the entry.
pub fn unpack(tar: &[u8], root: &Path) -> Result<(), ApiError> {
    let bad =
        |path: &str, why: &str| ApiError::invalid(format!("the folder's entry {path:?}: {why}"));
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| ApiError::invalid(format!("not a tar archive: {e}")))?;
    // Links are made last, so that no file is ever written through one.
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(ApiError::invalid(format!(
                "the folder has more than {MAX_ENTRIES} entries"
            )));
        }
        let mut entry = entry.map_err(|e| ApiError::invalid(format!("not a tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .into_owned();
        let shown = raw.to_string_lossy().to_string();
        let rel: PathBuf = raw
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(bad(
                    &shown,
                    "only names inside the folder (no `..`, no absolute path)",
                )),
            })
            .collect::<Result<_, _>>()?;
        if rel.as_os_str().is_empty() {
            continue; // the folder itself (`./`)
        }
        if rel.components().count() > MAX_DEPTH {
            return Err(bad(&shown, "nested too deep"));
        }
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| bad(&shown, &e.to_string()))?;
        } else if kind.is_file() {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| bad(&shown, &e.to_string()))?;
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(&shown, &e.to_string()))?;
            if dest.exists() {
                return Err(bad(&shown, "appears twice"));
            }
            std::fs::write(&dest, &bytes).map_err(|e| bad(&shown, &e.to_string()))?;
            let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            if executable {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| bad(&shown, &e.to_string()))?;
            }
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| bad(&shown, &e.to_string()))?
                .ok_or_else(|| bad(&shown, "a link without a target"))?
                .into_owned();
            let parent = rel.parent().unwrap_or(Path::new(""));
            if !tree::link_stays_inside(parent, &target) {
                return Err(bad(&shown, "a link that leads out of the folder"));
            }
            links.push((dest, target));
        } else {
            return Err(bad(
                &shown,
                "only files, directories and links inside the folder may be uploaded",
            ));
        }
    }
    for (dest, target) in links {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(ApiError::internal)?;
        }
        std::os::unix::fs::symlink(&target, &dest).map_err(|e| {
            bad(
                &dest.strip_prefix(root).unwrap_or(&dest).to_string_lossy(),
                &e.to_string(),
            )
        })?;
    }
    Ok(())
}

impl crate::service::Service {
    /// The tenant's artifact store (sealed under its key in the service).
    pub(in crate::service) async fn artifacts_of(
        &self,
        tenant: &str,
    ) -> Result<std::sync::Arc<dyn crate::artifacts::BlobStore>, ApiError> {
        self.engine
            .artifacts_for(tenant)
            .await
            .map_err(|e| ApiError::unavailable(format!("the artifact store: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Written raw: the builder's own path checks would refuse the hostile names.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A folder with files, a directory and an inside link unpacks; `..`, absolute paths,
    /// outside links and devices are refused with the entry named, and nothing is written
    /// outside the folder.
    #[test]
    fn an_uploaded_folder_unpacks_inside_and_nothing_leads_out() {
        use tar::EntryType as T;
        let dir = tempfile::tempdir().unwrap();
        let good = archive(&[
            ("app/", T::Directory, b"", None),
            ("app/index.html", T::Regular, b"<h1>hi</h1>", None),
            ("pipeline.yaml", T::Regular, b"name: x", None),
            ("latest", T::Symlink, b"", Some("app/index.html")),
        ]);
        let root = dir.path().join("ok");
        std::fs::create_dir(&root).unwrap();
        unpack(&good, &root).unwrap();
        assert_eq!(std::fs::read(root.join("latest")).unwrap(), b"<h1>hi</h1>");
        for (i, hostile) in [
            archive(&[("../escape", T::Regular, b"x", None)]),
            archive(&[("/tmp/escape", T::Regular, b"x", None)]),
            archive(&[("a/../../escape", T::Regular, b"x", None)]),
            archive(&[("out", T::Symlink, b"", Some("../../etc"))]),
            archive(&[("abs", T::Symlink, b"", Some("/etc"))]),
            archive(&[("dev", T::Char, b"", None)]),
            archive(&[("hard", T::Link, b"", Some("pipeline.yaml"))]),
        ]
        .iter()
        .enumerate()
        {
            let root = dir.path().join(format!("h{i}"));
            std::fs::create_dir(&root).unwrap();
            let err = unpack(hostile, &root).unwrap_err();
            assert_eq!(err.code, sluice_api::Code::Invalid, "{i}: {err}");
            assert!(err.message.contains("entry"), "{i}: {err}");
        }
        assert!(!dir.path().join("escape").exists());
    }
}
