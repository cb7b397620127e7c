//! Artifacts on NATS: blobs in a JetStream Object Store (`sluice-artifacts`, objects named by
//! their blake3 hex), so that an action on one engine reads what an action on another wrote.
//! Each engine keeps a [`LocalStore`] as its cache: writes go to the cache and are uploaded
//! before the action reports success; reads fetch missing blobs into the cache, streamed, and
//! check that they hash to their name before anything uses them.
//!
//! Sealed blobs (each tenant's artifacts, see `sluice_engine::artifacts::sealed`) are objects
//! named `sealed/<tenant>/<address hex>`, cached as ciphertext too: no engine keeps a tenant's
//! content plain at rest. They are checked by the sealed store on every read, not here.
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{ObjectInfo, ObjectStore};
use sluice_engine::artifacts::sealed::USE_NOTED_WITHIN;
use sluice_engine::artifacts::{
    BlobStore, ComponentInfo, Digest, LocalStore, SealedInfo, SealedObjects, StoreError, io,
};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;

/// A [`BlobStore`] on a JetStream Object Store with a local cache.
pub struct NatsStore {
    cache: LocalStore,
    objects: ObjectStore,
    /// The object store's stream and the context to publish into it: an object's info is
    /// changed only if it is still the one read (the collector against a use).
    js: async_nats::jetstream::Context,
    meta: async_nats::jetstream::stream::Stream,
    /// Bytes of sealed objects per namespace (tenant), shared by every engine: bucket
    /// `sluice-artifact-usage`, a counter per namespace, changed by compare-and-swap.
    usage: crate::kv::NatsKv,
    tmp: std::path::PathBuf,
    runtime: Handle,
}

fn remote(context: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError::Io {
        context: context.to_string(),
        source: std::io::Error::other(e),
    }
}

impl NatsStore {
    /// Bind to (or create) the object store bucket; cache blobs in `cache_dir`.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        cache_dir: &Path,
    ) -> anyhow::Result<Self> {
        let objects = match js.get_object_store(BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(async_nats::jetstream::object_store::Config {
                    bucket: BUCKET.into(),
                    num_replicas: crate::replicas(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("create object store sluice-artifacts: {e}"))?,
        };
        let meta = js
            .get_stream(format!("OBJ_{BUCKET}"))
            .await
            .map_err(|e| anyhow::anyhow!("the stream of object store {BUCKET}: {e}"))?;
        let usage = crate::kv::NatsKv::open(js, "sluice-artifact-usage", 1).await?;
        let tmp = cache_dir.join("tmp");
        Ok(NatsStore {
            cache: LocalStore::open(cache_dir)?,
            objects,
            js: js.clone(),
            meta,
            usage,
            tmp,
            runtime: Handle::current(),
        })
    }

    /// Run async NATS I/O from the synchronous trait. Blob I/O runs on blocking threads (or
    /// in `block_in_place` on a worker), never holding up the async workers.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        if Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.runtime.block_on(f))
        } else {
            self.runtime.block_on(f)
        }
    }

    /// Whether the bucket holds the object `name` (a deleted one leaves its info behind).
    async fn present(&self, name: &str) -> bool {
        // From the stream's leader (a direct get may answer from a lagging replica, and a
        // put believing a removed blob kept would store nothing).
        self.meta_of(name)
            .await
            .is_ok_and(|found| found.is_some_and(|(info, _)| !info.deleted))
    }

    /// Make the blob shared: upload it unless the bucket has it.
    fn publish(&self, digest: Digest) -> Result<Digest, StoreError> {
        // This engine's copy is in use: its new time keeps `forget_removed_components` off it
        // while it is uploaded again.
        if let Ok(f) = std::fs::File::open(self.cache.blob_path(&digest)) {
            let _ = f.set_modified(SystemTime::now());
        }
        // Kept already: the put is a use (the component collector spares what was put or
        // used within its grace, and its removal fails if a use is noted meanwhile).
        if !self.touch_name(&digest.hex())? {
            self.upload(&digest.hex(), &self.cache.blob_path(&digest))?;
        }
        Ok(digest)
    }

    /// Add `delta` to namespace `ns`'s count of sealed bytes. Two engines uploading the same
    /// new object at once both count it (the count runs over); two dropping the same damaged
    /// object at once both take it off (it runs under, by that object).
    fn count(&self, ns: &str, delta: i64) -> Result<(), StoreError> {
        self.block(sluice_engine::kv::modify::<u64, _>(
            &self.usage,
            ns,
            |used| Some(used.unwrap_or(0).saturating_add_signed(delta)),
        ))
        .map(drop)
        .map_err(|e| remote("count a tenant's artifact bytes")(e.to_string()))
    }

    /// Upload the file at `path` as object `name`, unless the bucket has it; returns the
    /// bytes uploaded (0: the bucket had it).
    fn upload(&self, name: &str, path: &Path) -> Result<u64, StoreError> {
        self.block(async {
            if self.present(name).await {
                return Ok(0);
            }
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| e.to_string())?;
            let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            self.objects
                .put(name, &mut file)
                .await
                .map(|_| {
                    sluice_engine::metrics::get()
                        .artifact_bytes_stored
                        .inc_by(size);
                    size
                })
                .map_err(|e| e.to_string())
        })
        .map_err(remote("upload to the object store"))
    }

    /// Download object `name` into a temporary file (not checked: the caller does); `None` if
    /// the bucket has no such object.
    fn download(&self, name: &str) -> Result<Option<tempfile::TempPath>, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix(".sluice-fetch-")
            .tempfile_in(&self.tmp)
            .map_err(io("create a temporary file"))?
            .into_temp_path();
        let found = self
            .block(async {
                let mut object = match self.objects.get(name).await {
                    Ok(o) => o,
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::object_store::GetErrorKind::NotFound =>
                    {
                        return Ok(false);
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let mut file = tokio::fs::File::create(&temp)
                    .await
                    .map_err(|e| e.to_string())?;
                let copied = tokio::io::copy(&mut object, &mut file)
                    .await
                    .map_err(|e| e.to_string())?;
                sluice_engine::metrics::get()
                    .artifact_bytes_fetched
                    .inc_by(copied);
                tokio::io::AsyncWriteExt::flush(&mut file)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(true)
            })
            .map_err(remote("download from the object store"))?;
        Ok(found.then_some(temp))
    }

    /// Bring a blob into the cache, verified.
    fn fetch(&self, digest: &Digest) -> Result<(), StoreError> {
        if self.cache.contains(digest) {
            return Ok(());
        }
        let name = digest.hex();
        let Some(temp) = self.download(&name)? else {
            return Err(StoreError::NotFound(*digest));
        };
        let actual = self.cache.put_owned(&temp)?;
        if actual != *digest {
            // The object's name is its content's hash, so it is provably wrong: remove it, for
            // the next put of the content to upload it again (it would dedup onto it).
            let _ = self.block(self.objects.delete(&name));
            return Err(StoreError::Corrupted {
                expected: *digest,
                actual,
            });
        }
        Ok(())
    }
}

impl BlobStore for NatsStore {
    fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        let d = self.cache.put_file(path)?;
        self.publish(d)
    }
    fn put_owned(&self, path: &Path) -> Result<Digest, StoreError> {
        let d = self.cache.put_owned(path)?;
        self.publish(d)
    }
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = self.cache.put_bytes(bytes)?;
        self.publish(d)
    }
    fn get_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        self.fetch(digest)?;
        self.cache.get_to_file(digest, dest)
    }
    fn link_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        self.fetch(digest)?;
        self.cache.link_to_file(digest, dest)
    }
    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        self.fetch(digest)?;
        self.cache.get_bytes(digest)
    }
    fn verify(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.fetch(digest)?;
        self.cache.verify(digest)
    }
    fn size_of(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        // From the cached copy (a component just resolved is cached), else the object's info.
        match self.cache.size_of(digest) {
            Ok(Some(size)) => return Ok(Some(size)),
            Ok(None) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.block(self.meta_of(&digest.hex()))
            .map(|found| {
                found
                    .filter(|(info, _)| !info.deleted)
                    .map(|(info, _)| info.size as u64)
            })
            .map_err(remote("read an object's info"))
    }
    fn contains(&self, digest: &Digest) -> bool {
        self.cache.contains(digest) || self.block(self.present(&digest.hex()))
    }
    fn touch(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.touch_name(&digest.hex())
    }
    fn list_components(&self) -> Result<Option<Vec<ComponentInfo>>, StoreError> {
        self.block(async {
            let mut list = self.objects.list().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(info) = futures_util::StreamExt::next(&mut list).await {
                let info = info.map_err(|e| e.to_string())?;
                // Plain objects are named by their digest's hex; sealed ones `sealed/…`.
                let Ok(digest) = format!("blake3:{}", info.name).parse::<Digest>() else {
                    continue;
                };
                if !info.deleted {
                    out.push(ComponentInfo {
                        digest,
                        bytes: info.size as u64,
                        used_at: used_at(&info),
                    });
                }
            }
            Ok(Some(out))
        })
        .map_err(remote("list the components"))
    }
    fn forget_removed_components(
        &self,
        listed: &[ComponentInfo],
        before: SystemTime,
    ) -> Result<usize, StoreError> {
        // A copy put here and not yet uploaded is newer than `before` (`publish` renews its
        // time), so it stays.
        let shared: std::collections::HashSet<Digest> = listed.iter().map(|c| c.digest).collect();
        let mut forgotten = 0;
        for cached in self.cache.digests()? {
            if shared.contains(&cached) {
                continue;
            }
            let path = self.cache.blob_path(&cached);
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|at| at < before);
            if old && std::fs::remove_file(&path).is_ok() {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }
    fn drop_unused_component(
        &self,
        digest: &Digest,
        before: SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        let freed = self.remove_name_if(&digest.hex(), |info| used_at(info) < before)?;
        if freed.is_some() {
            // This engine's copy too; other engines keep theirs (they serve what they hold,
            // and a later put uploads the object again).
            let _ = std::fs::remove_file(self.cache.blob_path(digest));
        }
        Ok(freed)
    }
    fn discard_corrupted(&self, digest: &Digest) -> Result<bool, StoreError> {
        // The cached copy, then the shared one (a fetch of a corrupted object removes it).
        let cached = self.cache.discard_corrupted(digest)?;
        match self.fetch(digest) {
            Err(StoreError::Corrupted { .. }) => Ok(true),
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(cached),
            Err(e) => Err(e),
        }
    }
}

fn sealed_name(ns: &str, address: &Digest) -> String {
    format!("sealed/{ns}/{}", address.hex())
}

impl SealedObjects for NatsStore {
    fn sealed_path(&self, ns: &str, address: &Digest) -> Result<std::path::PathBuf, StoreError> {
        if let Ok(path) = self.cache.sealed_path(ns, address) {
            return Ok(path);
        }
        let Some(temp) = self.download(&sealed_name(ns, address))? else {
            return Err(StoreError::NotFound(*address));
        };
        self.cache.keep_sealed(ns, address, &temp)?;
        self.cache.sealed_path(ns, address)
    }

    fn has_sealed(&self, ns: &str, address: &Digest) -> bool {
        self.cache.has_sealed(ns, address) || self.block(self.present(&sealed_name(ns, address)))
    }

    fn keep_sealed(&self, ns: &str, address: &Digest, file: &Path) -> Result<(), StoreError> {
        self.cache.keep_sealed(ns, address, file)?;
        let path = self.cache.sealed_path(ns, address)?;
        let name = sealed_name(ns, address);
        if self.block(self.present(&name)) {
            return Ok(());
        }
        // Counted before it is uploaded: an engine that dies in between leaves the count
        // over, never under.
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as i64;
        self.count(ns, size)?;
        match self.upload(&name, &path) {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.count(ns, -size);
                Err(e)
            }
        }
    }

    fn drop_sealed(&self, ns: &str, address: &Digest) -> Result<(), StoreError> {
        self.cache.drop_sealed(ns, address)?;
        self.remove_if(ns, address, |_| true).map(drop)
    }

    fn sealed_bytes(&self, ns: &str) -> Result<u64, StoreError> {
        self.block(sluice_engine::kv::get_json::<u64>(&self.usage, ns))
            .map(|found| found.map_or(0, |(used, _)| used))
            .map_err(|e| remote("read a tenant's artifact bytes")(e.to_string()))
    }

    fn sealed_tmp(&self) -> std::path::PathBuf {
        self.tmp.clone()
    }

    fn touch_sealed(&self, ns: &str, address: &Digest) -> Result<bool, StoreError> {
        // In the bucket, not the cache: a blob collected there may still be in this cache.
        self.touch_name(&sealed_name(ns, address))
    }

    fn list_sealed(&self) -> Result<Vec<SealedInfo>, StoreError> {
        self.block(async {
            let mut list = self.objects.list().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(info) = futures_util::StreamExt::next(&mut list).await {
                let info = info.map_err(|e| e.to_string())?;
                let Some((ns, hex)) = info
                    .name
                    .strip_prefix("sealed/")
                    .and_then(|rest| rest.split_once('/'))
                else {
                    continue;
                };
                let Ok(address) = format!("blake3:{hex}").parse::<Digest>() else {
                    continue;
                };
                if !info.deleted {
                    out.push(SealedInfo {
                        ns: ns.to_string(),
                        address,
                        bytes: info.size as u64,
                        used_at: used_at(&info),
                    });
                }
            }
            Ok(out)
        })
        .map_err(remote("list the sealed blobs"))
    }

    fn forget_removed(
        &self,
        listed: &[SealedInfo],
        before: SystemTime,
    ) -> Result<usize, StoreError> {
        // Cached copies of blobs the bucket no longer lists (another engine collected them).
        // A blob kept here and not yet uploaded is newer than `before`, so it stays.
        let shared: std::collections::HashSet<(&str, Digest)> =
            listed.iter().map(|b| (b.ns.as_str(), b.address)).collect();
        let mut forgotten = 0;
        for cached in self.cache.list_sealed()? {
            if !shared.contains(&(cached.ns.as_str(), cached.address))
                && self
                    .cache
                    .drop_unused_sealed(&cached.ns, &cached.address, before)?
                    .is_some()
            {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    fn drop_unused_sealed(
        &self,
        ns: &str,
        address: &Digest,
        before: SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        let freed = self.remove_if(ns, address, |info| used_at(info) < before)?;
        if freed.is_some() {
            let _ = self.cache.drop_sealed(ns, address);
        }
        Ok(freed)
    }
}

impl NatsStore {
    /// Note a use of the object `name` (at most every [`USE_NOTED_WITHIN`]), for the
    /// collectors; `false` if the bucket does not hold it.
    fn touch_name(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.block(async {
            loop {
                let Some((mut info, sequence)) = self.meta_of(&name).await? else {
                    return Ok(false);
                };
                if info.deleted {
                    return Ok(false);
                }
                // Noted once in a while, not at every use (each note is a write).
                if used_at(&info).elapsed().unwrap_or_default() < USE_NOTED_WITHIN {
                    return Ok(true);
                }
                info.description = Some(format!("{USED_AT}{}", unix_secs(SystemTime::now())));
                if self.write_meta_if(&name, &info, sequence).await? {
                    return Ok(true);
                }
                // Changed meanwhile (removed, uploaded again, noted by another engine): read
                // it again.
            }
        })
        .map_err(remote("note a use of a blob"))
    }

    /// Remove the sealed object if `unused` holds for its info, counted off its namespace
    /// once: marked deleted only if nothing wrote its info since it was read (a use noted,
    /// another engine's removal). Returns the bytes freed, if it went.
    fn remove_if(
        &self,
        ns: &str,
        address: &Digest,
        unused: impl Fn(&ObjectInfo) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        let freed = self.remove_name_if(&sealed_name(ns, address), unused)?;
        if let Some(bytes) = freed {
            self.count(ns, -(bytes as i64))?;
        }
        Ok(freed)
    }

    /// Remove the object `name` if `unused` holds for its info, only if nothing wrote its
    /// info since it was read; the bytes freed, if it went.
    fn remove_name_if(
        &self,
        name: &str,
        unused: impl Fn(&ObjectInfo) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        self.block(async {
            let Some((mut info, sequence)) = self.meta_of(name).await? else {
                return Ok(None);
            };
            if info.deleted || !unused(&info) {
                return Ok(None);
            }
            let (nuid, bytes) = (info.nuid.clone(), info.size as u64);
            (info.deleted, info.size, info.chunks) = (true, 0, 0);
            if !self.write_meta_if(name, &info, sequence).await? {
                return Ok(None);
            }
            // Gone from now on, whatever becomes of its chunks: they are only bytes to
            // free (a later upload of the name writes new ones).
            if let Err(e) = self
                .meta
                .purge()
                .filter(format!("$O.{BUCKET}.C.{nuid}"))
                .await
            {
                tracing::warn!("the chunks of removed object {name} stay: {e}");
            }
            Ok(Some(bytes))
        })
        .map_err(remote("remove a blob"))
    }

    /// An object's info and the stream sequence of the message holding it.
    async fn meta_of(&self, name: &str) -> Result<Option<(ObjectInfo, u64)>, String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .meta
            .get_last_raw_message_by_subject(&meta_subject(name))
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(|info| Some((info, m.sequence)))
                .map_err(|e| format!("the info of {name}: {e}")),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Write `info` as the object's info (replacing the last, as the object store does) if
    /// the last is still the message at `sequence`; `false` if another write came first.
    async fn write_meta_if(
        &self,
        name: &str,
        info: &ObjectInfo,
        sequence: u64,
    ) -> Result<bool, String> {
        use async_nats::jetstream::context::PublishErrorKind;
        let payload = serde_json::to_vec(info).map_err(|e| e.to_string())?;
        let message = PublishMessage::build()
            .header("Nats-Rollup", "sub")
            .expected_last_subject_sequence(sequence)
            .payload(payload.into());
        let ack = self
            .js
            .send_publish(meta_subject(name), message)
            .await
            .map_err(|e| e.to_string())?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The object store bucket holding every blob.
const BUCKET: &str = "sluice-artifacts";

/// The subject of an object's info, as the object store names it (its name in URL-safe
/// base64).
fn meta_subject(name: &str) -> String {
    use base64::Engine;
    format!(
        "$O.{BUCKET}.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(name)
    )
}

/// How a later use of a sealed object is noted: its description, `used at <unix seconds>`
/// (the object store's own time is its upload's, and rewriting the object to renew it would
/// upload it again).
const USED_AT: &str = "used at ";

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// When the object was last kept or used: its upload, or a use noted since.
fn used_at(info: &ObjectInfo) -> SystemTime {
    let uploaded = info.modified.map_or(UNIX_EPOCH, |m| {
        UNIX_EPOCH + Duration::from_secs(m.unix_timestamp().max(0) as u64)
    });
    let noted = info
        .description
        .as_deref()
        .and_then(|d| d.strip_prefix(USED_AT))
        .and_then(|secs| secs.parse::<u64>().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    noted.map_or(uploaded, |noted| noted.max(uploaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uploaded_secs: i64, description: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            name: "sealed/acme/00".into(),
            description: description.map(str::to_string),
            metadata: Default::default(),
            headers: None,
            options: None,
            bucket: "sluice-artifacts".into(),
            nuid: String::new(),
            size: 10,
            chunks: 1,
            modified: Some(
                async_nats::datetime::DateTime::from_unix_timestamp(uploaded_secs).unwrap(),
            ),
            digest: None,
            deleted: false,
        }
    }

    #[test]
    fn an_objects_last_use_is_its_upload_or_a_later_use_noted_in_its_description() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(used_at(&info(1_000, None)), at(1_000));
        assert_eq!(used_at(&info(1_000, Some("used at 5000"))), at(5_000));
        // A note older than the upload (an object uploaded again) and a description not
        // ours do not move it back.
        assert_eq!(used_at(&info(9_000, Some("used at 5000"))), at(9_000));
        assert_eq!(used_at(&info(1_000, Some("a user's words"))), at(1_000));
    }
}
