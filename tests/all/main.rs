//! End-to-end tests: the real `sluice` binary running real pipelines of real components
//! (compiled from plugins/ and tests/guests/ during the build).

#[path = "../harness/mod.rs"]
mod harness;

mod approvals;
mod authoring;
mod cache;
mod chaos;
mod cli;
mod cluster;
mod confined;
mod conformance;
mod console;
mod docs;
mod full_disk;
mod functions;
mod hostile;
mod http_api;
mod http_plugins;
mod logs;
mod marketplace;
mod notify;
mod operating;
mod plugins;
mod quickstart;
mod sandbox;
mod schema;
mod secrets;
mod semantics;
mod service;
mod tenancy;
mod validation;
