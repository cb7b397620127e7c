//! Guest components the tests use but the `sluice` binary does not embed (the probe plugin in
//! `tests/guests`, the example function and rule), compiled from source on first use: a user's
//! `cargo run --release` never builds them, `cargo test` always does.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The probe test plugin (tests/guests/probe).
pub fn probe() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| component("tests/guests/Cargo.toml", "sluice_test_probe.wasm"))
}

/// The hostile test plugin (tests/guests/hostile).
pub fn hostile() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| component("tests/guests/Cargo.toml", "sluice_test_hostile.wasm"))
}

/// The `greet` marketplace test plugin, 1.0.0 (no capabilities).
pub fn greet_v1() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| component("tests/guests/Cargo.toml", "greet_v1.wasm"))
}

/// The `greet` marketplace test plugin, 1.1.0 (declares outgoing HTTP).
pub fn greet_v2() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| component("tests/guests/Cargo.toml", "greet_v2.wasm"))
}

/// The `poster` test plugin: POSTs a document with secrets in its body.
pub fn poster() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| component("tests/guests/Cargo.toml", "poster.wasm"))
}

/// The example Rust function (examples/functions/rust-release-notes).
pub fn rust_function() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        component(
            "examples/functions/rust-release-notes/Cargo.toml",
            "release_notes.wasm",
        )
    })
}

/// The docs-site example's plugin (examples/docs-site/site-tools).
pub fn site_tools() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        component(
            "examples/docs-site/site-tools/Cargo.toml",
            "site_tools.wasm",
        )
    })
}

/// The example custom condition rule (examples/rules/release-version).
pub fn rust_rule() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        component(
            "examples/rules/release-version/Cargo.toml",
            "release_version.wasm",
        )
    })
}

/// Build one guest workspace (once per test process; cargo's lock orders concurrent test
/// processes) and return the path of `file` in its output.
fn component(manifest: &str, file: &str) -> String {
    let root = super::repo();
    let dir = build(&root, &root.join(manifest));
    let wasm = dir.join(file);
    assert!(wasm.is_file(), "{} was not built", wasm.display());
    wasm.display().to_string()
}

/// `cargo build --release --target wasm32-wasip2` on a guest workspace, with the target
/// directory the engine's build script uses for the first-party plugins.
fn build(root: &Path, manifest: &Path) -> PathBuf {
    let target_dir = root.join("target").join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // CI lints the engine's crates through clippy-driver as the workspace wrapper; guest
        // workspaces are linted on their own (see .ci/run).
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .output()
        .expect("run cargo to build the test guests");
    assert!(
        out.status.success(),
        "building the guest components of {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("wasm32-wasip2").join("release")
}
