//! The dependency checks of the engine's crates (`tests/purity.rs` here, `lean.rs` in the API,
//! `sandbox_only.rs` in the runtime): `cargo tree` lists a package's normal dependencies, and
//! none may match a forbidden name. Shared through `#[path]` so the rule is written once.
use std::process::Command;

/// Assert that `package`'s normal dependency tree lists every crate in `expected` (proof that
/// `cargo tree` really listed it) and none in `forbidden`: a name, or a prefix ending in `-`.
pub fn assert_tree_excludes(package: &str, expected: &[&str], forbidden: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
        ])
        .arg(package)
        // From the package's folder, cargo finds the workspace.
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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
    for e in expected {
        assert!(
            names.contains(e),
            "cargo tree did not list {e} for {package}: {tree}"
        );
    }
    let bad: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            forbidden.iter().any(|f| match f.strip_suffix('-') {
                Some(prefix) => n.starts_with(&format!("{prefix}-")),
                None => n == f,
            })
        })
        .collect();
    assert!(bad.is_empty(), "{package} depends on {bad:?}:\n{tree}");
}
