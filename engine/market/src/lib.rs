//! sluice-market: plugins shared through OCI registries.
//!
//! A plugin version is a CNCF wasm OCI artifact (one `application/wasm` layer, the
//! description as annotations) in any OCI registry, or in an OCI image layout folder for
//! registries without a server (`file://`). Beside it: an ed25519 signature over
//! `{name, version, blake3, OCI digest}` at cosign's `sha256-<hex>.sig` tag, and per
//! namespace a signed catalog (`NAMESPACE/sluice-catalog:index`) that search reads.
//!
//! - [`reference`]: `oci://`, `file://` and alias references;
//! - [`transport`]: reading and writing manifests and blobs, bounded and digest-checked;
//! - [`artifact`]: the artifacts' shapes; [`catalog`]: the catalog;
//! - [`signing`]: keys and signatures; [`trust`]: the trust policy; [`config`]: `sluice.toml`;
//! - [`publish`] and [`install`]: the two sides.
//!
//! Loading and describing components is the engine's: this crate gets descriptions from its
//! caller and never runs guest code.
#![deny(missing_docs)]

pub mod artifact;
pub mod catalog;
pub mod config;
pub mod install;
pub mod publish;
pub mod reference;
pub mod signing;
pub mod transport;
pub mod trust;

pub use reference::{PluginRef, Repository};
