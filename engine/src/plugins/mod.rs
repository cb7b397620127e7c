//! Plugins: what they describe about themselves, and how `uses:` references resolve
//! (built-in first-party components, `blake3:` digests in the store, `.wasm` paths).

pub mod builtin;
pub mod registry;

pub use registry::Registry;

/// The largest component file read from a path.
pub const MAX_COMPONENT_BYTES: u64 = 128 << 20;

/// Why a component file named by a path cannot be used. Never quotes the file's content:
/// the path may name any file the engine can read.
#[derive(Debug, thiserror::Error)]
pub enum ComponentFileError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A device, FIFO, socket or directory.
    #[error("{0} is not a regular file")]
    NotAFile(std::path::PathBuf),
    /// Larger than [`MAX_COMPONENT_BYTES`].
    #[error("{path} is {size} bytes; a component may be at most {max} bytes", max = MAX_COMPONENT_BYTES)]
    TooLarge {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
    },
    /// No `\0asm` magic: text (`.wat`) or something else entirely.
    #[error("{0} is not a binary WebAssembly component (it does not start with \\0asm)")]
    NotWasm(std::path::PathBuf),
}

/// Read the component file at `path`: opened without blocking (a FIFO must not hang the
/// engine), a regular file, at most [`MAX_COMPONENT_BYTES`] (`/dev/zero` must not fill
/// memory), binary WebAssembly (text would go to the WAT parser, whose errors quote it).
pub fn read_component(path: &std::path::Path) -> Result<Vec<u8>, ComponentFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ComponentFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ComponentFileError::NotAFile(path.to_path_buf()));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(ComponentFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte more than allowed: a file growing while it is read is caught too.
    file.take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(ComponentFileError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
    if !is_binary_wasm(&bytes) {
        return Err(ComponentFileError::NotWasm(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Whether `bytes` start with the binary WebAssembly magic.
pub fn is_binary_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

use serde::{Deserialize, Serialize};

/// What a plugin says about itself (the WIT `description` record, host side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Description {
    /// Name used in `uses: NAME@MAJOR`.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// source, build, test, deploy, approval, invoke or other.
    pub category: String,
    /// One line.
    pub summary: String,
    /// Accepted configuration keys.
    pub config: Vec<ConfigKey>,
    /// Capabilities it needs.
    pub capabilities: Vec<Capability>,
    /// Whether running it changes the world outside its outputs.
    pub side_effects: bool,
}

/// One accepted configuration key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigKey {
    /// The key.
    pub name: String,
    /// Whether it must be set.
    pub required: bool,
    /// For humans.
    pub description: String,
    /// Documented default.
    pub default_value: Option<String>,
}

/// A capability a plugin declares it needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Run this host program.
    Process(String),
    /// Outgoing HTTP.
    Http,
    /// Read the directory named by this config key (granted implicitly).
    ReadConfigPath(String),
    /// Write the directory named by this config key (must be granted rw).
    WriteConfigPath(String),
    /// Publish to NATS subjects (granted in `capabilities.nats`).
    Nats,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capability::Process(p) => write!(f, "process: {p}"),
            Capability::Http => write!(f, "http"),
            Capability::Nats => write!(f, "nats"),
            Capability::ReadConfigPath(k) => write!(f, "reads the directory in `{k}`"),
            Capability::WriteConfigPath(k) => write!(
                f,
                "writes the directory in `{k}` (grant it under dirs as rw)"
            ),
        }
    }
}

/// A resolved plugin: its reference, content digest and description.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plugin {
    /// The `uses:` string it was resolved from.
    pub reference: String,
    /// `blake3:<hex>` of the component bytes; recorded in every execution.
    pub digest: String,
    /// What it says about itself.
    pub description: Description,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `uses: /dev/zero` filled memory until the engine was killed; a FIFO blocked it for
    /// ever. Both are refused at once.
    #[test]
    fn a_component_path_naming_a_device_or_fifo_is_refused_without_reading() {
        let err = read_component(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ComponentFileError::NotAFile(_)), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.wasm");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_component(&fifo).map(|_| ())).unwrap());
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO blocked");
        assert!(
            matches!(got, Err(ComponentFileError::NotAFile(_))),
            "{got:?}"
        );
    }

    /// A text file named as a component is refused without a word of its content (the WAT
    /// parser's error quoted a line of /etc/shadow).
    #[test]
    fn a_text_file_named_as_a_component_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.wasm");
        std::fs::write(&secret, "root:$6$very-secret-hash:19000:0:99999:7:::\n").unwrap();
        let err = read_component(&secret).unwrap_err().to_string();
        assert!(err.contains("not a binary WebAssembly component"), "{err}");
        assert!(!err.contains("very-secret"), "{err}");
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_COMPONENT_BYTES + 1)
            .unwrap();
        assert!(matches!(
            read_component(&big),
            Err(ComponentFileError::TooLarge { .. })
        ));
        let good = dir.path().join("good.wasm");
        std::fs::write(&good, builtin::find("noop", 1).unwrap()).unwrap();
        assert!(read_component(&good).is_ok());
    }
}
