//! What a plugin says about itself (the WIT `description` record, host side) and what a
//! resolved `uses:` reference records. Loading and running plugins is the engine's.
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

/// Whether `bytes` start with the binary WebAssembly magic.
pub fn is_binary_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}
