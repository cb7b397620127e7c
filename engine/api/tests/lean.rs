//! The API's client side must be usable by a console, an SDK or a script without the engine:
//! its dependency tree holds no WebAssembly runtime, no NATS client, no store and no HTTP server.
#[path = "../../core/tests/common/dependency_tree.rs"]
mod dependency_tree;

#[test]
fn sluice_api_links_no_runtime_nats_store_or_server() {
    dependency_tree::assert_tree_excludes(
        "sluice-api",
        &["sluice-core", "tokio"],
        &[
            "wasmtime",
            "wasmtime-",
            "cranelift-",
            "async-nats",
            "redb",
            "hyper",
            "cap-std",
            "sluice-engine",
            "sluice-runtime",
        ],
    );
}
