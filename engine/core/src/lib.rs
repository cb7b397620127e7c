//! sluice-core: the parts of Sluice that decide, with none that act.
//!
//! - [`model`]: the pipeline file — parsed with positions, validated, all problems at once;
//! - [`scheduler`]: CodePipeline's execution rules as a pure state machine, and the execution
//!   record it steps;
//! - [`events`]: the events an execution's changes derive;
//! - [`plugin`], [`grants`], [`limits`], [`Digest`]: what the model refers to.
//!
//! No I/O lives here: no tokio, wasmtime, async-nats, redb, hyper, no filesystem access and no
//! clock (times are passed in). CI checks the dependency tree (`cargo tree -p sluice-core`), so
//! every rule stays a table test and every edge stays in the engine.
#![deny(missing_docs)]

mod digest;
pub mod events;
pub mod grants;
pub mod lockfile;
pub mod model;
pub mod plugin;
pub mod redact;
pub mod scheduler;

pub use digest::Digest;

/// Limits the model checks pipelines against and the runtime enforces.
pub mod limits {
    /// The largest `limits.memory` a pipeline may ask for.
    pub const MAX_GUEST_MEMORY: u64 = 4 << 30;
    /// Directory levels an artifact may have. Storing and restoring recurse once per level,
    /// so this also bounds their stack (a guest made 20,000 levels and overflowed it).
    pub const MAX_OUTPUT_DEPTH: usize = 64;
    /// The most files, directories and links one output artifact may hold.
    pub const MAX_OUTPUT_ENTRIES: u64 = 200_000;
    /// The most bytes one output artifact may hold (a sparse file costs the guest no disk
    /// but costs the engine reading all of it).
    pub const MAX_OUTPUT_BYTES: u64 = 8 << 30;

    /// `limits.output`: what one output artifact of an action may hold. Each bound may
    /// only lower the engine's maximum.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct OutputLimits {
        /// Directory levels.
        pub depth: usize,
        /// Files, directories and links.
        pub entries: u64,
        /// Bytes of regular files, by their size.
        pub size: u64,
    }

    impl Default for OutputLimits {
        fn default() -> Self {
            OutputLimits {
                depth: MAX_OUTPUT_DEPTH,
                entries: MAX_OUTPUT_ENTRIES,
                size: MAX_OUTPUT_BYTES,
            }
        }
    }
}
