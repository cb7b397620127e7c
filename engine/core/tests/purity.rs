//! The core decides and never acts: its dependency tree holds no runtime, no sandbox, no
//! message bus, no store, no HTTP server and no filesystem or system-call layer. This test is
//! the compiler-independent half of that promise (the other half: the engine's edges are
//! other crates, so the core cannot name them).
use std::process::Command;

/// Crates (or crate-name prefixes ending in `-`) that must never enter `sluice-core`'s tree.
const FORBIDDEN: &[&str] = &[
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
];

#[test]
fn sluice_core_depends_on_no_runtime_store_network_or_filesystem_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            "sluice-core",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"serde"),
        "cargo tree listed the core's dependencies: {tree}"
    );
    let bad: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            FORBIDDEN.iter().any(|f| {
                if f.ends_with('-') {
                    n.starts_with(f)
                } else {
                    n == f
                }
            })
        })
        .collect();
    assert!(
        bad.is_empty(),
        "sluice-core must stay pure, but depends on {bad:?}:\n{tree}"
    );
}
