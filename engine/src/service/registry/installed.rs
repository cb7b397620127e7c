//! Marketplace plugins installed for a tenant (`sluice plugin install --service`): the
//! client resolves, fetches, verifies and gets the capabilities accepted (sluice-market); the
//! service checks the component against the lock entry and keeps both — the component in the
//! artifact store every engine shares, the entry under `_plugins/<tenant>/<name>` in the
//! pipelines bucket. `pipeline.put` pins each `uses: NAMESPACE/NAME@MAJOR` to the installed
//! digest, so every engine runs the same bytes, and a later install changes only pipelines
//! registered after it.
use crate::artifacts::Digest;
use crate::kv::{Kv, get_json};
use crate::service::Service;
use sluice_api::ApiError;
use sluice_core::lockfile::{Locked, major_of, marketplace_reference};

fn key(tenant: &str, name: &str) -> String {
    format!("_plugins/{tenant}/{name}")
}

/// The tenant's installed entry for `uses` (`NAMESPACE/NAME@MAJOR`), if its major matches.
pub async fn for_uses(kv: &dyn Kv, tenant: &str, uses: &str) -> Result<Option<Locked>, ApiError> {
    let Some((name, major)) = marketplace_reference(uses) else {
        return Ok(None);
    };
    let entry = get_json::<Locked>(kv, &key(tenant, name))
        .await
        .map_err(ApiError::from)?
        .map(|(l, _)| l);
    Ok(entry.filter(|l| major_of(&l.version) == Some(major)))
}

impl Service {
    /// Keep a marketplace plugin for `tenant` after checking the component is what `locked`
    /// says: its digest, and the name, version and capabilities it describes.
    pub async fn install_plugin(
        &self,
        tenant: &str,
        locked: Locked,
        bytes: Option<Vec<u8>>,
        digest: Option<&str>,
    ) -> Result<Locked, ApiError> {
        let Some((_, 0..)) = marketplace_reference(&format!("{}@0", locked.name)) else {
            return Err(ApiError::invalid(format!(
                "`{}` is not a marketplace plugin name (NAMESPACE/NAME)",
                locked.name
            )));
        };
        let expected: Digest = locked.blake3.parse().map_err(ApiError::invalid)?;
        let blobs = self.engine.blobs.clone();
        let bytes = match (bytes, digest) {
            (Some(b), _) => b,
            (None, Some(d)) => {
                // Only a component the tenant uploaded (see `owned`).
                let d = self.owned(tenant, d).await?;
                tokio::task::spawn_blocking(move || blobs.get_bytes(&d))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(|e| ApiError::not_found(format!("component {d}: {e}")))?
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "give the plugin's component (`bytes`) or digest",
                ));
            }
        };
        if Digest::of(&bytes) != expected {
            return Err(ApiError::invalid(format!(
                "the component is not {} (its digest is {}): nothing installed",
                locked.blake3,
                Digest::of(&bytes)
            )));
        }
        if !crate::plugins::is_binary_wasm(&bytes) {
            return Err(ApiError::invalid(
                "the plugin is not a binary WebAssembly component",
            ));
        }
        let plugin = self
            .engine
            .registry
            .load(&format!("{}@{}", locked.name, locked.version), &bytes)
            .await
            .map_err(|e| ApiError::invalid(format!("{}: {e}; nothing installed", locked.name)))?;
        let d = &plugin.description;
        let short = locked.name.rsplit('/').next().unwrap_or_default();
        if d.name != short || d.version != locked.version {
            return Err(ApiError::invalid(format!(
                "the component describes itself as {} {}, not {short} {}: nothing installed",
                d.name, d.version, locked.version
            )));
        }
        if let Some(c) = d
            .capabilities
            .iter()
            .map(ToString::to_string)
            .find(|c| !locked.capabilities.contains(c))
        {
            return Err(ApiError::invalid(format!(
                "{} declares `{c}`, which the install did not accept: nothing installed",
                locked.name
            )));
        }
        let blobs = self.engine.blobs.clone();
        // Owned (within the tenant's quota) before it is stored: see `owned`.
        self.own(tenant, &expected, bytes.len() as u64).await?;
        tokio::task::spawn_blocking(move || blobs.put_bytes(&bytes))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let entry = locked.clone();
        crate::kv::modify::<Locked, _>(&*self.edges.pipelines, &key(tenant, &locked.name), |_| {
            Some(entry.clone())
        })
        .await
        .map_err(ApiError::from)?;
        Ok(locked)
    }

    /// The marketplace plugins installed for `tenant`.
    pub async fn installed_plugins(&self, tenant: &str) -> Result<Vec<Locked>, ApiError> {
        let kv = &*self.edges.pipelines;
        let mut out = Vec::new();
        for k in kv
            .keys(&format!("_plugins/{tenant}/"))
            .await
            .map_err(ApiError::from)?
        {
            if let Some((l, _)) = get_json::<Locked>(kv, &k).await.map_err(ApiError::from)? {
                out.push(l);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
