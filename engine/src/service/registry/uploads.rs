//! Files uploaded in parts (`upload.part`, `upload.join`), for clients whose messages are
//! smaller than a component: a tenant's NATS account reaches only the API, never the engines'
//! object store, and NATS carries 1 MiB a message by default.
//!
//! Stateless across engines: each part is kept in the tenant's artifact store (so it counts
//! against the tenant's quota, and the collector removes it once nothing names it), and the
//! join, on whichever engine takes it, reads the parts back, checks the whole against the digest
//! the client computed, checks that it is a component the engines can compile, and keeps it
//! where plugins and functions are looked up.
use crate::artifacts::{Digest, StoreError};
use sluice_api::limits::{MAX_PART, MAX_PARTS, MAX_UPLOAD};
use sluice_api::verbs::{Uploaded, UploadedPart};
use sluice_api::{ApiError, Code};
use std::io::Read as _;

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::QuotaExceeded(why) => ApiError::new(Code::QuotaExceeded, why),
        e => ApiError::unavailable(format!("the artifact store: {e}")),
    }
}

impl crate::service::Service {
    /// Keep one part (base64 in `bytes`) in the tenant's store.
    pub(in crate::service) async fn upload_part(
        &self,
        tenant: &str,
        bytes: &str,
    ) -> Result<UploadedPart, ApiError> {
        let bytes = sluice_api::limits::decode_at_most("the part", bytes, MAX_PART)?;
        let store = self.artifacts_of(tenant).await?;
        tokio::task::spawn_blocking(move || {
            let part = store.put_bytes(&bytes).map_err(store_error)?;
            Ok(UploadedPart {
                part: part.to_string(),
                bytes: bytes.len() as u64,
            })
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Join the tenant's `parts`, in order, into one file that must hash to `digest`, and keep
    /// it where plugins and functions are looked up.
    pub(in crate::service) async fn upload_join(
        &self,
        tenant: &str,
        parts: Vec<String>,
        digest: &str,
    ) -> Result<Uploaded, ApiError> {
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(ApiError::invalid(format!(
                "an upload joins 1 to {MAX_PARTS} parts, not {}",
                parts.len()
            )));
        }
        let want: Digest = digest
            .parse()
            .map_err(|e| ApiError::invalid(format!("the upload's digest: {e}")))?;
        let parts = parts
            .iter()
            .map(|p| {
                p.parse::<Digest>()
                    .map_err(|e| ApiError::invalid(format!("part {p:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.artifacts_of(tenant).await?;
        let runtime = self.engine.registry.runtime().clone();
        let uploaded = tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().map_err(ApiError::internal)?;
            // In memory: at most MAX_UPLOAD, checked part by part, and compiled from memory.
            let mut joined = Vec::new();
            for (n, part) in parts.iter().enumerate() {
                // A part may name any of the tenant's artifacts, of any size: its recorded
                // size is checked before it is read, and what is read is checked again.
                let missing = |e| match e {
                    StoreError::NotFound(_) => ApiError::not_found(format!(
                        "part {} ({part}) is not kept (never uploaded, or collected): upload it again",
                        n + 1
                    )),
                    e => store_error(e),
                };
                let too_large = || {
                    ApiError::invalid(format!(
                        "part {} ({part}) is larger than a part may be ({} KiB)",
                        n + 1,
                        MAX_PART >> 10
                    ))
                };
                if store.size_of(part).map_err(missing)? > Some(MAX_PART as u64) {
                    return Err(too_large());
                }
                let file = dir.path().join("part");
                store.get_to_file(part, &file).map_err(missing)?;
                let len = std::fs::metadata(&file).map_err(ApiError::internal)?.len();
                if len > MAX_PART as u64 {
                    return Err(too_large());
                }
                if joined.len() + len as usize > MAX_UPLOAD {
                    return Err(ApiError::invalid(format!(
                        "the upload is larger than {} MiB",
                        MAX_UPLOAD >> 20
                    )));
                }
                let mut file = std::fs::File::open(&file).map_err(ApiError::internal)?;
                file.read_to_end(&mut joined).map_err(ApiError::internal)?;
            }
            let bytes = joined;
            let actual = Digest::of(&bytes);
            if actual != want {
                return Err(ApiError::invalid(format!(
                    "the parts join into {actual}, not {want}: a part is missing, repeated or out of order"
                )));
            }
            // Only what the engines can run goes where every tenant's plugins are kept: a
            // component that compiles (compiled here once, into the compile cache).
            if !crate::plugins::is_binary_wasm(&bytes) {
                return Err(ApiError::invalid(
                    "the upload is not a binary WebAssembly component (it does not start with \\0asm)",
                ));
            }
            runtime.compile(&bytes).map_err(|e| {
                ApiError::invalid(format!(
                    "the upload is not a component this engine can compile: {e:#}"
                ))
            })?;
            Ok(bytes)
        })
        .await
        .map_err(ApiError::internal)??;
        let blobs = self.engine.blobs.clone();
        let size = uploaded.len() as u64;
        // Owned (within the tenant's quota) before it is stored: see `owned`.
        self.own(tenant, &want, size).await?;
        let kept = tokio::task::spawn_blocking(move || blobs.put_bytes(&uploaded))
            .await
            .map_err(ApiError::internal)?
            .map_err(store_error)?;
        Ok(Uploaded {
            digest: kept.to_string(),
            bytes: size,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::artifacts::tenants::FixedKey;
    use crate::bus::MemoryBus;
    use crate::executor::Engine;
    use crate::service::tests::{service_of, shared_edges};
    use sluice_api::limits::{MAX_PART, MAX_PARTS, encode_upload};
    use sluice_api::verbs::{UploadJoin, UploadPart};
    use sluice_api::{Code, Origin, Principal};
    use std::sync::Arc;

    fn of(tenant: &str) -> Principal {
        Principal::local(tenant, Origin::Remote)
    }

    /// A real component made larger than two parts: the no-op plugin with a custom section
    /// appended (a component may carry custom sections between its sections).
    fn padded_component() -> Vec<u8> {
        let mut bytes = crate::plugins::builtin::find("noop", 1).unwrap().to_vec();
        let leb = |mut n: usize| {
            let mut out = Vec::new();
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return out;
                }
                out.push(byte | 0x80);
            }
        };
        let mut body = leb(7);
        body.extend_from_slice(b"padding");
        body.extend((0..MAX_PART * 2).map(|i| (i * 7 % 251) as u8));
        bytes.push(0);
        bytes.extend(leb(body.len()));
        bytes.extend(body);
        bytes
    }

    /// Upload `file` in parts as `tenant`; the parts' names.
    async fn parts_of(service: &crate::service::Service, tenant: &str, file: &[u8]) -> Vec<String> {
        let mut parts = Vec::new();
        for chunk in file.chunks(MAX_PART) {
            let bytes = encode_upload(chunk);
            let part = service
                .call(&of(tenant), UploadPart { bytes })
                .await
                .unwrap();
            assert_eq!(part.bytes, chunk.len() as u64);
            parts.push(part.part);
        }
        parts
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_join_into_the_file_their_digest_names_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let bus: Arc<dyn crate::bus::EventBus> = Arc::new(MemoryBus::default());
        let mut engine = Engine::for_service(&dir.path().join("a"), bus.clone(), None).unwrap();
        engine.seal_artifacts(Arc::new(FixedKey([7; 32]))).unwrap();
        let service = service_of(engine, bus, &shared);
        let file = padded_component();
        let digest = format!("blake3:{}", blake3::hash(&file).to_hex());
        let parts = parts_of(&service, "acme", &file).await;
        assert_eq!(parts.len(), 3);
        let join = |tenant: &str, parts: Vec<String>, digest: &str| {
            let (service, p) = (service.clone(), of(tenant));
            let digest = digest.to_string();
            async move { service.call(&p, UploadJoin { parts, digest }).await }
        };
        // Out of order, short of a part, or one part twice: refused, nothing kept.
        for wrong in [
            vec![parts[1].clone(), parts[0].clone(), parts[2].clone()],
            parts[..2].to_vec(),
            vec![
                parts[0].clone(),
                parts[0].clone(),
                parts[1].clone(),
                parts[2].clone(),
            ],
        ] {
            let e = join("acme", wrong, &digest).await.unwrap_err();
            assert_eq!(e.code, Code::Invalid, "{e:?}");
            assert!(e.message.contains("out of order"), "{e}");
        }
        assert!(!service.engine.blobs.contains(&digest.parse().unwrap()));
        // Another tenant naming ACME's parts finds none of them.
        let e = join("globex", parts.clone(), &digest).await.unwrap_err();
        assert_eq!(e.code, Code::NotFound, "{e:?}");
        assert!(e.message.contains("part 1"), "{e}");
        // In order: the file, kept where plugins and functions are looked up.
        let joined = join("acme", parts.clone(), &digest).await.unwrap();
        assert_eq!(
            (joined.digest.as_str(), joined.bytes),
            (digest.as_str(), file.len() as u64)
        );
        assert_eq!(
            service
                .engine
                .blobs
                .get_bytes(&digest.parse().unwrap())
                .unwrap(),
            file
        );
        // Bounds: a part over its size, before it is decoded; more parts than an upload takes.
        let e = service
            .call(
                &of("acme"),
                UploadPart {
                    bytes: "A".repeat((MAX_PART / 3 + 1) * 4),
                },
            )
            .await
            .unwrap_err();
        assert!(e.message.contains("larger than 512 KiB"), "{e}");
        let e = join("acme", vec![parts[0].clone(); MAX_PARTS + 1], &digest)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Invalid, "{e:?}");
        // A part naming a larger artifact of the tenant is refused, before it is read.
        let store = service.engine.artifacts_for("acme").await.unwrap();
        let big = store.put_bytes(&vec![1u8; MAX_PART + 1]).unwrap();
        let e = join("acme", vec![big.to_string()], &digest)
            .await
            .unwrap_err();
        assert!(e.message.contains("larger than a part may be"), "{e}");
        // What the engines could not run is not kept where plugins are: not WebAssembly, or
        // WebAssembly that does not compile (the no-op plugin cut short).
        let noop = crate::plugins::builtin::find("noop", 1).unwrap();
        for (bytes, says) in [
            (
                &b"just some bytes"[..],
                "not a binary WebAssembly component",
            ),
            (
                &noop[..noop.len() / 2],
                "not a component this engine can compile",
            ),
        ] {
            let parts = parts_of(&service, "acme", bytes).await;
            let digest = format!("blake3:{}", blake3::hash(bytes).to_hex());
            let e = join("acme", parts, &digest).await.unwrap_err();
            assert_eq!(e.code, Code::Invalid, "{e:?}");
            assert!(e.message.contains(says), "{e}");
            assert!(!service.engine.blobs.contains(&digest.parse().unwrap()));
        }
    }
}
