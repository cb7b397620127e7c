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
pub mod model;
pub mod plugin;
pub mod scheduler;

pub use digest::Digest;

/// Limits the model checks pipelines against and the runtime enforces.
pub mod limits {
    /// The largest `limits.memory` a pipeline may ask for.
    pub const MAX_GUEST_MEMORY: u64 = 4 << 30;
}
