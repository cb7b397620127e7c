//! The engine defines its edges as traits and implements the embedded ones; the NATS client
//! is `sluice-nats`'s alone (which depends on the engine, never the other way round).
#[path = "../core/tests/common/dependency_tree.rs"]
mod dependency_tree;

#[test]
fn sluice_engine_links_no_nats_client() {
    dependency_tree::assert_tree_excludes(
        "sluice-engine",
        &["sluice-core", "sluice-runtime", "redb"],
        &["async-nats", "nats-", "sluice-nats"],
    );
}
