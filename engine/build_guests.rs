// Shared by build scripts: compiles a guest workspace to wasm32-wasip2 components.

/// Run `cargo build --release --target wasm32-wasip2` on a guest workspace with its own
/// target directory (so it never waits on the outer build's lock); returns the .wasm dir.
fn build_guests(root: &Path, manifest: &Path) -> PathBuf {
    let target_dir = root.join("target").join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target_dir);
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_PROFILE_RELEASE_DEBUG"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the guest components");
    assert!(status.success(), "building guest components from {} failed (is the wasm32-wasip2 target installed? rust-toolchain.toml asks rustup for it)", manifest.display());
    target_dir.join("wasm32-wasip2").join("release")
}
