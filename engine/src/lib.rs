//! Sluice: a CI/CD pipeline engine whose actions are sandboxed WebAssembly components.
//!
//! The parts, from the outside in:
//! - [`local`]: the facade for one machine (`sluice run`, `validate`, inspecting a data
//!   directory);
//! - [`model`], [`scheduler`]: the pure core (the `sluice-core` crate, re-exported): the
//!   pipeline file parsed and validated, and CodePipeline's execution rules as a pure state
//!   machine;
//! - [`executor`]: the shell that persists state, publishes events and runs jobs;
//! - [`runtime`]: wasmtime, the sandbox and the host capabilities (the `sluice-runtime`
//!   crate, re-exported);
//! - [`plugins`]: `uses:` resolution and the built-in first-party components;
//! - [`service`]: `sluice serve` — engines that start pipelines from trigger events and share
//!   the work through a queue, on the embedded edges or on NATS;
//! - [`artifacts`], [`state`], [`bus`], [`kv`], [`queue`]: the edges, each a trait with an
//!   embedded implementation; the NATS ones are the `sluice-nats` crate, which depends on
//!   this one (the engine links no NATS client).
#![deny(missing_docs)]

pub mod alloc;
pub mod artifacts;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod executor;
pub mod identity;
pub mod kv;
pub mod local;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod secrets;
pub mod service;
pub mod state;
pub mod subjects;

pub use sluice_core::{limits, model, scheduler};
pub use sluice_runtime as runtime;
