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
    // Test guests and examples are not embedded: the tests build them (tests/harness/guests.rs).
    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    let members = list_after(&manifest, "members");
    let major = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.split('.').next())
        .expect("plugins/Cargo.toml sets [workspace.package] version")
        .to_string();
    let mut out = String::from(
        "/// First-party plugins compiled from `plugins/`: (name, major version, component bytes).\npub const BUILTINS: &[(&str, u32, &[u8])] = &[\n",
    );
    for member in members {
        let wasm = wasm_dir.join(format!("sluice_plugin_{}.wasm", member.replace('-', "_")));
        assert!(wasm.exists(), "missing {}", wasm.display());
        out.push_str(&format!(
            "    ({member:?}, {major}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_plugins.rs");
    std::fs::write(dest, out).unwrap();
}

/// `members = ["a", "b"]` → [a, b]
fn list_after(toml: &str, key: &str) -> Vec<String> {
    let start = toml.find(&format!("{key} = [")).expect("members list") + key.len() + 4;
    let end = start + toml[start..].find(']').unwrap();
    toml[start..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

include!("build_guests.rs");
