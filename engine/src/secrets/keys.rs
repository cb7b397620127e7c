//! The master key and the sealing both levels use.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::Path;

const PREFIX: &str = "sluice-master-key v1 ";

/// 32 random bytes and a short id (the first 16 hex digits of their blake3) that names them
/// without revealing them.
pub struct MasterKey {
    bytes: [u8; 32],
    /// Stored with every data key it seals.
    pub id: String,
}

impl MasterKey {
    fn from_bytes(bytes: [u8; 32]) -> Self {
        let id = blake3::hash(&bytes).to_hex()[..16].to_string();
        MasterKey { bytes, id }
    }

    /// Read a key file; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        use base64::Engine as _;
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::plugins::read_text(path, 1024)
            .map_err(|e| anyhow::anyhow!("cannot read the master key {}: {e}", path.display()))?;
        let b64 = text.trim().strip_prefix(PREFIX).ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a sluice master key (`{PREFIX}<base64>`)",
                path.display()
            )
        })?;
        let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("{} is damaged: not 32 bytes of base64", path.display())
            })?;
        Ok(Some(Self::from_bytes(bytes)))
    }

    /// A new random key written to `path` (mode 0600; never overwrites).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        use base64::Engine as _;
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written whole aside, then linked into place (which never replaces a file), so an
        // engine starting at the same moment reads either no key or the whole of it.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let temp = tempfile::Builder::new()
            .prefix(".master-key-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir.unwrap_or(Path::new(".")))
            .map_err(|e| anyhow::anyhow!("cannot create the master key {}: {e}", path.display()))?;
        temp.as_file().write_all(
            format!(
                "{PREFIX}{}\n",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
            .as_bytes(),
        )?;
        temp.as_file().sync_all()?;
        std::fs::hard_link(temp.path(), path)
            .map_err(|e| anyhow::anyhow!("cannot create the master key {}: {e}", path.display()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key in `path`, made if missing; the flag says it was made.
    pub fn read_or_create(path: &Path) -> anyhow::Result<(Self, bool)> {
        match Self::read(path)? {
            Some(k) => Ok((k, false)),
            None => match Self::create(path) {
                Ok(k) => Ok((k, true)),
                // Another engine made it meanwhile: theirs is the key.
                Err(_) if path.exists() => Ok((
                    Self::read(path)?
                        .ok_or_else(|| anyhow::anyhow!("{} vanished", path.display()))?,
                    false,
                )),
                Err(e) => Err(e),
            },
        }
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// A sealed value: a random 24-byte nonce and the ciphertext with its tag.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

pub(super) fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Sealed {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).expect("the system's random source");
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("sealing cannot fail");
    Sealed {
        nonce: b64.encode(nonce),
        ciphertext: b64.encode(ciphertext),
    }
}

/// `None` when the key is wrong or the sealed value was changed (the tag does not match).
pub(super) fn open(key: &[u8; 32], sealed: &Sealed, aad: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let nonce: [u8; 24] = b64.decode(&sealed.nonce).ok()?.try_into().ok()?;
    let ciphertext = b64.decode(&sealed.ciphertext).ok()?;
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &ciphertext,
                aad,
            },
        )
        .ok()
}
