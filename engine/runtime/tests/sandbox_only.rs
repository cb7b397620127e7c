//! The runtime runs one job and knows no pipeline, service or transport: its dependency tree
//! holds no NATS client, no store, no API and no engine (`wasi:http`'s client brings hyper, so
//! that one is allowed).
#[path = "../../core/tests/common/dependency_tree.rs"]
mod dependency_tree;

#[test]
fn sluice_runtime_links_no_nats_store_api_or_engine() {
    dependency_tree::assert_tree_excludes(
        "sluice-runtime",
        &["wasmtime", "sluice-core"],
        &[
            "async-nats",
            "redb",
            "axum",
            "utoipa",
            "sluice-api",
            "sluice-engine",
            "sluice-nats",
        ],
    );
}
