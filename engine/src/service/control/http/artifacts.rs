//! Artifacts over HTTP: a whole tree as a tar stream, or one file of it. Every blob is copied
//! out of the store verified against its digest before a byte of it is sent; paths are walked
//! through the tree one name at a time, so `..`, absolute paths and their encodings name
//! nothing.
use crate::artifacts::tree::{Entry, get_tree, list};
use crate::artifacts::{BlobStore, Digest, StoreError};
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sluice_api::ApiError;
use std::path::Path;
use std::sync::Arc;

fn refused(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(d) => ApiError::not_found(format!("no artifact or blob {d}")),
        other => ApiError::internal(other),
    }
}

/// The file at `path` in the tree `root`.
fn find_file(store: &dyn BlobStore, root: &Digest, path: &str) -> Result<(Digest, u64), ApiError> {
    let names: Vec<&str> = path.split('/').collect();
    if path.is_empty() || path.starts_with('/') {
        return Err(ApiError::invalid(format!(
            "`{path}`: name a file inside the artifact, relative to its root"
        )));
    }
    if let Some(bad) = names
        .iter()
        .find(|n| n.is_empty() || **n == "." || **n == "..")
    {
        return Err(ApiError::invalid(format!(
            "`{path}`: the path component `{bad}` is not allowed"
        )));
    }
    let mut tree = *root;
    for (i, name) in names.iter().enumerate() {
        let entries = get_tree(store, &tree).map_err(refused)?.entries;
        let last = i + 1 == names.len();
        match entries.into_iter().find(|e| e.name() == *name) {
            Some(Entry::Dir { digest, .. }) if !last => tree = digest,
            Some(Entry::File { digest, size, .. }) if last => return Ok((digest, size)),
            Some(Entry::Symlink { .. }) => {
                return Err(ApiError::invalid(format!(
                    "`{path}`: `{name}` is a symbolic link; name its target"
                )));
            }
            _ => break,
        }
    }
    Err(ApiError::not_found(format!(
        "the artifact has no file `{path}`"
    )))
}

/// Stream a finished file, removing its directory when the stream is dropped.
async fn stream_file(dir: tempfile::TempDir, path: std::path::PathBuf) -> Result<Body, ApiError> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let stream = tokio_util::io::ReaderStream::new(file);
    // The temporary directory lives as long as the stream.
    let stream = futures_util::StreamExt::map(stream, move |chunk| {
        let _keep = &dir;
        chunk
    });
    Ok(Body::from_stream(stream))
}

/// One file of an artifact.
pub(super) async fn file(
    store: Arc<dyn BlobStore>,
    digest: &str,
    path: &str,
) -> Result<Response, ApiError> {
    let root: Digest = digest.parse().map_err(ApiError::invalid)?;
    let path = path.to_string();
    let (dir, out, size) = tokio::task::spawn_blocking(move || {
        let (blob, size) = find_file(&*store, &root, &path)?;
        let dir = tempfile::tempdir().map_err(ApiError::internal)?;
        let out = dir.path().join("file");
        store.get_to_file(&blob, &out).map_err(refused)?;
        Ok::<_, ApiError>((dir, out, size))
    })
    .await
    .map_err(ApiError::internal)??;
    let body = stream_file(dir, out).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A whole artifact as a tar archive.
pub(super) async fn tarball(store: Arc<dyn BlobStore>, digest: &str) -> Result<Response, ApiError> {
    let root: Digest = digest.parse().map_err(ApiError::invalid)?;
    let (dir, out) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().map_err(ApiError::internal)?;
        let out = dir.path().join("artifact.tar");
        write_tar(&*store, &root, &out, dir.path())?;
        Ok::<_, ApiError>((dir, out))
    })
    .await
    .map_err(ApiError::internal)??;
    let name = format!("attachment; filename=\"{}.tar\"", root.hex());
    let body = stream_file(dir, out).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        body,
    )
        .into_response())
}

fn write_tar(
    store: &dyn BlobStore,
    root: &Digest,
    out: &Path,
    scratch: &Path,
) -> Result<(), ApiError> {
    let entries = list(store, root).map_err(refused)?;
    let file = std::fs::File::create(out).map_err(ApiError::internal)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let blob = scratch.join("blob");
    for (path, entry) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match entry {
            Entry::Dir { .. } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                // Directories end in `/`, as `tar` writes them.
                let dir = format!("{}/", path.display());
                tar.append_data(&mut header, dir, std::io::empty())
            }
            Entry::File {
                digest,
                size,
                executable,
                ..
            } => {
                // Verified as it leaves the store.
                store.get_to_file(&digest, &blob).map_err(refused)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(size);
                let data = std::fs::File::open(&blob).map_err(ApiError::internal)?;
                let appended = tar.append_data(&mut header, &path, data);
                let _ = std::fs::remove_file(&blob);
                appended
            }
            Entry::Symlink { target, .. } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &path, &target)
            }
        }
        .map_err(ApiError::internal)?;
    }
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(ApiError::internal)
}

/// Every entry of an artifact: `[{path, kind, size?, target?}]`.
pub(super) async fn listing(
    store: Arc<dyn BlobStore>,
    digest: &str,
) -> Result<serde_json::Value, ApiError> {
    let root: Digest = digest.parse().map_err(ApiError::invalid)?;
    let entries = tokio::task::spawn_blocking(move || list(&*store, &root).map_err(refused))
        .await
        .map_err(ApiError::internal)??;
    Ok(entries
        .into_iter()
        .map(|(path, entry)| {
            let path = path.display().to_string();
            match entry {
                Entry::File {
                    size, executable, ..
                } => serde_json::json!({ "path": path, "kind": "file", "size": size, "executable": executable }),
                Entry::Dir { .. } => serde_json::json!({ "path": path, "kind": "dir" }),
                Entry::Symlink { target, .. } => {
                    serde_json::json!({ "path": path, "kind": "symlink", "target": target })
                }
            }
        })
        .collect())
}
