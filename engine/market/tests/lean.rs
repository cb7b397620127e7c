//! The marketplace talks to registries and checks signatures; it never runs a component, keeps
//! no store and speaks no NATS: its dependency tree holds none of those, nor the engine.
#[path = "../../core/tests/common/dependency_tree.rs"]
mod dependency_tree;

#[test]
fn sluice_market_links_no_runtime_store_nats_or_engine() {
    dependency_tree::assert_tree_excludes(
        "sluice-market",
        &["oci-client", "ed25519-dalek", "sluice-core"],
        &[
            "wasmtime",
            "async-nats",
            "redb",
            "axum",
            "sluice-engine",
            "sluice-runtime",
            "sluice-nats",
            "sluice-api",
        ],
    );
}
