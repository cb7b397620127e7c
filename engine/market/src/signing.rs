//! Publisher keys (ed25519) and the signed envelopes Sluice stores in registries: a plugin
//! version's signature and the catalog's. What is signed is the payload's exact bytes,
//! prefixed with what kind of payload it is, so one kind of signature is never valid as another.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A public key as written everywhere: `ed25519:<base64>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

/// A publisher's secret key, read from its key file.
pub struct SecretKey(SigningKey);

/// Why a key or signature cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

const SECRET_PREFIX: &str = "sluice-secret-key ed25519 ";

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let b64 = s.trim().strip_prefix("ed25519:").ok_or_else(|| {
            KeyError(format!(
                "`{}` is not a public key (ed25519:<base64>)",
                s.trim().chars().take(40).collect::<String>()
            ))
        })?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError("the public key is not 32 bytes of base64".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError("the public key is not a valid ed25519 point".into()))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0.to_bytes()))
    }
}

impl PublicKey {
    /// A short form for tables: the first 12 characters of the base64.
    pub fn short(&self) -> String {
        let s = self.to_string();
        format!("{}…", &s[..20.min(s.len())])
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError(format!("no randomness: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Read a key file written by [`SecretKey::write`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = crate::transport::read_bounded(path, 4096)
            .map_err(|e| KeyError(format!("cannot read key {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&text);
        let b64 = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            KeyError(format!(
                "{} is not a sluice secret key (made by `sluice key generate`)",
                path.display()
            ))
        })?;
        let seed: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                KeyError(format!(
                    "{} is damaged: not 32 bytes of base64",
                    path.display()
                ))
            })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Write `NAME.key` (mode 0600) and `NAME.pub` in `dir`; refuses to overwrite either.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if !sluice_core::lockfile::is_name_part(name) {
            return Err(KeyError(format!(
                "`{name}` is not a key name (lower-case letters, digits, . _ -)"
            )));
        }
        let key = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        for p in [&key, &public] {
            if p.exists() {
                return Err(KeyError(format!(
                    "{} exists; not overwriting a key",
                    p.display()
                )));
            }
        }
        let write = |path: &Path, mode: u32, text: String| -> Result<(), KeyError> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(|e| KeyError(format!("cannot write {}: {e}", path.display())))?;
            f.write_all(text.as_bytes())
                .map_err(|e| KeyError(format!("cannot write {}: {e}", path.display())))
        };
        write(
            &key,
            0o600,
            format!("{SECRET_PREFIX}{}\n", B64.encode(self.0.to_bytes())),
        )?;
        write(&public, 0o644, format!("{}\n", self.public()))?;
        Ok((key, public))
    }

    /// Sign `payload` as a `kind`.
    pub fn sign(&self, kind: Kind, payload: String) -> Signed {
        let signature = self.0.sign(&kind.message(&payload));
        Signed {
            payload,
            key: self.public().to_string(),
            signature: B64.encode(signature.to_bytes()),
        }
    }
}

/// What a signature is over.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A plugin version ([`Statement`]).
    Plugin,
    /// A namespace's catalog.
    Catalog,
}

impl Kind {
    fn message(self, payload: &str) -> Vec<u8> {
        let context: &[u8] = match self {
            Kind::Plugin => b"sluice plugin signature v1\n",
            Kind::Catalog => b"sluice catalog v1\n",
        };
        [context, payload.as_bytes()].concat()
    }
}

/// A signed payload as stored: the payload's text, the key, the signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The exact text signed (JSON).
    pub payload: String,
    /// `ed25519:<base64>`.
    pub key: String,
    /// base64 of the 64-byte signature.
    pub signature: String,
}

impl Signed {
    /// Check the signature; returns the key that made it.
    pub fn verify(&self, kind: Kind) -> Result<PublicKey, KeyError> {
        let key: PublicKey = self.key.parse()?;
        let bytes = B64
            .decode(&self.signature)
            .map_err(|_| KeyError("the signature is not base64".into()))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| KeyError("the signature is not 64 bytes".into()))?;
        key.0
            .verify_strict(&kind.message(&self.payload), &signature)
            .map_err(|_| {
                KeyError(format!(
                    "the signature does not match its content (key {key})"
                ))
            })?;
        Ok(key)
    }
}

/// What a plugin version's signature says: this name and version are these bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// The exact version.
    pub version: String,
    /// `blake3:<hex>` of the component.
    pub blake3: String,
    /// `sha256:<hex>` of the OCI manifest.
    pub oci_digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_payload_kind_and_key() {
        let key = SecretKey::generate().unwrap();
        let signed = key.sign(Kind::Plugin, "{\"a\":1}".into());
        assert_eq!(signed.verify(Kind::Plugin).unwrap(), key.public());
        assert!(
            signed.verify(Kind::Catalog).is_err(),
            "a plugin signature is no catalog signature"
        );
        let mut other = signed.clone();
        other.payload = "{\"a\":2}".into();
        assert!(other.verify(Kind::Plugin).is_err());
        let mut other = signed.clone();
        other.key = SecretKey::generate().unwrap().public().to_string();
        assert!(other.verify(Kind::Plugin).is_err());
    }

    #[test]
    fn keys_are_written_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let (k, p) = key.write(dir.path(), "acme").unwrap();
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SecretKey::read(&k).unwrap().public(), key.public());
        let public: PublicKey = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        assert_eq!(public, key.public());
        assert!(
            key.write(dir.path(), "acme").is_err(),
            "never overwrites a key"
        );
    }
}
