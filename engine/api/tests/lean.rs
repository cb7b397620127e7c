//! The API's client side must be usable by a console, an SDK or a script without the engine:
//! its dependency tree holds no WebAssembly runtime, no NATS client, no store and no HTTP server.
use std::process::Command;

/// Crates (or crate-name prefixes ending in `-`) that must never enter `sluice-api`'s tree.
const FORBIDDEN: &[&str] = &[
    "wasmtime",
    "wasmtime-",
    "cranelift-",
    "async-nats",
    "redb",
    "hyper",
    "cap-std",
    "sluice-engine",
];

#[test]
fn sluice_api_links_no_runtime_nats_store_or_server() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            "sluice-api",
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
        names.contains(&"sluice-core") && names.contains(&"tokio"),
        "cargo tree listed the API's dependencies: {tree}"
    );
    let bad: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            FORBIDDEN.iter().any(|f| match f.strip_suffix('-') {
                Some(prefix) => n.starts_with(&format!("{prefix}-")),
                None => n == f,
            })
        })
        .collect();
    assert!(bad.is_empty(), "sluice-api depends on {bad:?}:\n{tree}");
}
