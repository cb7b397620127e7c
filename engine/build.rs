//! Builds the first-party plugins (`../plugins`, a guest workspace) for wasm32-wasip2 and
//! generates `builtin_plugins.rs`, which embeds them into the `sluice` binary.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let plugins = root.join("plugins");
    for watched in ["plugins", "sdk/rust/src", "sdk/rust/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let wasm_dir = build_guests(&root, &plugins.join("Cargo.toml"));

    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    let members = list_after(&manifest, "members");
    let major = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.split('.').next())
        .expect("plugins/Cargo.toml sets [workspace.package] version")
        .to_string();
    let mut out = String::from("/// First-party plugins compiled from `plugins/`: (name, major version, component bytes).\npub const BUILTINS: &[(&str, u32, &[u8])] = &[\n");
    for member in members {
        let wasm = wasm_dir.join(format!("sluice_plugin_{}.wasm", member.replace('-', "_")));
        assert!(wasm.exists(), "missing {}", wasm.display());
        out.push_str(&format!("    ({member:?}, {major}, include_bytes!({:?})),\n", wasm.display().to_string()));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_plugins.rs");
    std::fs::write(dest, out).unwrap();
}

/// `members = ["a", "b"]` → [a, b]
fn list_after(toml: &str, key: &str) -> Vec<String> {
    let start = toml.find(&format!("{key} = [")).expect("members list") + key.len() + 4;
    let end = start + toml[start..].find(']').unwrap();
    toml[start..end].split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
}

/// Run `cargo build --release --target wasm32-wasip2` on a guest workspace with its own
/// target directory (so it never waits on the outer build's lock); returns the .wasm dir.
pub fn build_guests(root: &Path, manifest: &Path) -> PathBuf {
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
