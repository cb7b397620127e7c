//! The core decides and never acts: its dependency tree holds no runtime, no sandbox, no
//! message bus, no store, no HTTP server and no filesystem or system-call layer. This test is
//! the compiler-independent half of that promise (the other half: the engine's edges are
//! other crates, so the core cannot name them).
#[path = "common/dependency_tree.rs"]
mod dependency_tree;

#[test]
fn sluice_core_depends_on_no_runtime_store_network_or_filesystem_crate() {
    dependency_tree::assert_tree_excludes(
        "sluice-core",
        &["serde"],
        &[
            "tokio",
            "mio",
            "wasmtime",
            "wasmtime-",
            "cranelift-",
            "async-nats",
            "redb",
            "hyper",
            "hyper-",
            "cap-std",
            "cap-",
            "rustix",
            "socket2",
        ],
    );
}
