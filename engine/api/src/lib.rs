//! Sluice's control API, the one boundary every client goes through: the CLI, NATS
//! request/reply, the embedded service's socket and (next) HTTP all carry the same typed
//! requests and replies.
//!
//! - [`verbs`]: one request type per verb, each with its reply type ([`Verb::Reply`]) and the
//!   role it needs; [`Request`] is any of them, as sent on the wire.
//! - [`ApiError`]: every refusal, with a stable [`Code`].
//! - [`Principal`]: who asks, attached by the server's transport, never by the client.
//! - [`Transport`] and [`Client`]: the client side; [`socket`] is the embedded service's
//!   transport (NATS lives with the rest of the NATS code).
//!
//! This crate links no wasmtime and no NATS client, so a console or an SDK can use it.
pub mod client;
pub mod error;
pub mod limits;
pub mod principal;
pub mod socket;
pub mod tenancy;
pub mod verbs;
pub mod wire;

pub use client::{Client, Transport, WatchItem};
pub use error::{ApiError, Code, Problem};
pub use principal::{Origin, Principal, Role};
pub use verbs::{Request, Verb};
