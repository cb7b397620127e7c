//! The OCI artifacts Sluice stores: a plugin (the CNCF wasm OCI artifact layout: a
//! `application/vnd.wasm.config.v0+json` config and one `application/wasm` layer, the
//! description as annotations), a signature, and a catalog. Reading one checks its shape
//! before anything in it is used.
use crate::transport::{MANIFEST_MEDIA_TYPE, TransportError, is_sha256, sha256};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The wasm OCI artifact's config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The wasm OCI artifact's layer media type.
pub const WASM_LAYER: &str = "application/wasm";
/// A signature's layer.
pub const SIGNATURE_LAYER: &str = "application/vnd.dev.sluice.signature.v1+json";
/// A catalog's layer.
pub const CATALOG_LAYER: &str = "application/vnd.dev.sluice.catalog.v1+json";
/// The empty config of signatures and catalogs.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Annotation: the plugin's name (`NAMESPACE/NAME`).
pub const TITLE: &str = "org.opencontainers.image.title";
/// Annotation: the version.
pub const VERSION: &str = "org.opencontainers.image.version";
/// Annotation: the one-line summary.
pub const SUMMARY: &str = "org.opencontainers.image.description";
/// Annotation: the blake3 digest of the component.
pub const BLAKE3: &str = "dev.sluice.plugin.blake3";
/// Annotation: the whole description as JSON.
pub const DESCRIPTION: &str = "dev.sluice.plugin.description";

/// One blob to push and how the manifest names it.
pub struct Blob {
    /// Its media type.
    pub media_type: &'static str,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Blob {
    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": sha256(&self.bytes), "size": self.bytes.len() })
    }
}

/// A manifest with one config and one layer.
pub fn manifest(config: &Blob, layer: &Blob, annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    if !annotations.is_empty() {
        m["annotations"] = json!(annotations);
    }
    serde_json::to_vec(&m).expect("json")
}

/// The wasm config blob for a component layer.
pub fn wasm_config(layer_digest: &str) -> Blob {
    Blob {
        media_type: WASM_CONFIG,
        bytes: serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        }))
        .expect("json"),
    }
}

/// The empty config (`{}`).
pub fn empty_config() -> Blob {
    Blob {
        media_type: EMPTY_CONFIG,
        bytes: b"{}".to_vec(),
    }
}

/// A manifest as read: its config and single layer, checked.
pub struct Parsed {
    /// The config's digest.
    pub config_digest: String,
    /// The layer's digest.
    pub layer_digest: String,
    /// The layer's declared size.
    pub layer_size: u64,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Check that `bytes` is a manifest with a `config` media type and one layer of
/// `layer` media type, with valid digests and sizes.
pub fn parse(
    bytes: &[u8],
    config: &str,
    layer: &str,
    what: &str,
) -> Result<Parsed, TransportError> {
    let refuse = |why: String| TransportError::Refused(format!("{what}: {why}"));
    let m: Value = serde_json::from_slice(bytes)
        .map_err(|e| refuse(format!("the manifest is not JSON: {e}")))?;
    if m["schemaVersion"] != 2 {
        return Err(refuse(
            "the manifest is not an OCI image manifest (schemaVersion 2)".into(),
        ));
    }
    let c = &m["config"];
    if c["mediaType"] != config {
        return Err(refuse(format!(
            "its config is `{}`, not {config}",
            c["mediaType"].as_str().unwrap_or("?")
        )));
    }
    let layers = m["layers"]
        .as_array()
        .ok_or_else(|| refuse("the manifest has no layers".into()))?;
    let [l] = layers.as_slice() else {
        return Err(refuse(format!(
            "the manifest has {} layers; a Sluice artifact has one",
            layers.len()
        )));
    };
    if l["mediaType"] != layer {
        return Err(refuse(format!(
            "its layer is `{}`, not {layer}",
            l["mediaType"].as_str().unwrap_or("?")
        )));
    }
    let digest = |v: &Value| {
        v["digest"]
            .as_str()
            .filter(|d| is_sha256(d))
            .map(str::to_string)
    };
    let (Some(config_digest), Some(layer_digest)) = (digest(c), digest(l)) else {
        return Err(refuse(
            "a digest in the manifest is not sha256:<hex>".into(),
        ));
    };
    let layer_size = l["size"]
        .as_u64()
        .ok_or_else(|| refuse("the layer has no size".into()))?;
    let mut annotations = BTreeMap::new();
    if let Some(map) = m["annotations"].as_object() {
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| refuse(format!("annotation `{k}` is not a string")))?;
            annotations.insert(k.clone(), v.to_string());
        }
    }
    Ok(Parsed {
        config_digest,
        layer_digest,
        layer_size,
        annotations,
    })
}

/// The tag a manifest's signature is stored under (cosign's convention): `sha256-<hex>.sig`.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replace(':', "-"))
}
