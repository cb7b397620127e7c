// Shared by build scripts: compiles a guest workspace to wasm32-wasip2 components.

/// Run `cargo build --release --target wasm32-wasip2` on a guest workspace with its own
/// target directory (so it never waits on the outer build's lock); returns the .wasm dir.
/// `SLUICE_GUEST_TOOLCHAIN` builds them with another toolchain than the outer build's (the
/// fuzz targets build with nightly, which has no wasm32-wasip2 here: `SLUICE_GUEST_TOOLCHAIN=1.95.0`).
fn build_guests(root: &Path, manifest: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=SLUICE_GUEST_TOOLCHAIN");
    let target_dir = root.join("target").join("guests");
    let mut cmd = match std::env::var("SLUICE_GUEST_TOOLCHAIN") {
        Ok(toolchain) => {
            let mut c = Command::new("rustup");
            c.args(["run", &toolchain, "cargo"]);
            for var in ["RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO"] {
                c.env_remove(var);
            }
            c
        }
        Err(_) => {
            ensure_wasm_target();
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        }
    };
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target_dir);
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS", "CARGO_PROFILE_RELEASE_DEBUG"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the guest components");
    assert!(status.success(), "building guest components from {} failed", manifest.display());
    target_dir.join("wasm32-wasip2").join("release")
}

/// rust-toolchain.toml lists wasm32-wasip2, but rustup does not add targets to a toolchain that
/// is already installed. Add it here (once, through rustup, for the toolchain this build uses),
/// so the README's first command works on such a machine; without rustup, name the fix.
fn ensure_wasm_target() {
    const TARGET: &str = "wasm32-wasip2";
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |root: &Option<PathBuf>| {
        root.as_ref()
            .is_some_and(|r| r.join("lib/rustlib").join(TARGET).join("lib").is_dir())
    };
    if installed(&sysroot) {
        return;
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    // Set by rustup's proxies: the toolchain rust-toolchain.toml selected.
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    println!("cargo:warning=the {TARGET} target is missing; adding it with `rustup target add {TARGET}`");
    match rustup.status() {
        Ok(status) if status.success() && installed(&sysroot) => {}
        Ok(status) if status.success() => panic!(
            "`rustup target add {TARGET}` succeeded, but {rustc} (sysroot {sysroot:?}) still lacks the target: \
             install the {TARGET} standard library for the toolchain that runs this build"
        ),
        Ok(status) => panic!("`rustup target add {TARGET}` failed ({status}); run it by hand, then build again"),
        Err(_) => panic!(
            "the {TARGET} target is missing and rustup is not on PATH: install the {TARGET} standard \
             library for {rustc} (with rustup: `rustup target add {TARGET}`), then build again"
        ),
    }
}
