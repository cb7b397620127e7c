//! Plugins: what they describe about themselves, and how `uses:` references resolve
//! (built-in first-party components, `blake3:` digests in the store, `.wasm` paths).

pub mod builtin;
pub mod registry;

pub use registry::Registry;

pub use sluice_core::plugin::*;
