//! Plugins: what they describe about themselves, and how `uses:` references resolve
//! (built-in first-party components, `blake3:` digests in the store, `.wasm` paths).

pub mod builtin;
pub mod registry;

pub use registry::{PluginError, Registry};

pub use sluice_core::plugin::*;

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

/// Read a small text file (a lock), bounded, without blocking on a FIFO.
pub fn read_text(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(text)
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
