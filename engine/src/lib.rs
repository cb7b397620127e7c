//! Sluice: a CI/CD pipeline engine whose actions are sandboxed WebAssembly components.
//!
//! The parts, from the outside in:
//! - [`model`]: the pipeline file — parsed with positions, validated, all problems at once;
//! - [`scheduler`]: CodePipeline's execution rules as a pure state machine;
//! - [`executor`]: the shell that persists state, publishes events and runs jobs;
//! - [`runtime`]: wasmtime, the sandbox and the host capabilities;
//! - [`plugins`]: `uses:` resolution and the built-in first-party components;
//! - [`artifacts`], [`state`], [`bus`]: the edges, each a trait with an embedded implementation.
#![deny(missing_docs)]

pub mod artifacts;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod executor;
pub mod model;
pub mod plugins;
pub mod runtime;
pub mod scheduler;
pub mod state;
