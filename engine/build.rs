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
    // Guests used only by the integration tests (tests/guests): adversarial and probing plugins.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tests/guests").display()
    );
    let test_dir = build_guests(&root, &root.join("tests/guests/Cargo.toml"));
    let probe = test_dir.join("sluice_test_probe.wasm");
    let hostile = test_dir.join("sluice_test_hostile.wasm");
    // The example Rust function (examples/functions), built so the tests can register it.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("examples/functions/rust-release-notes").display()
    );
    let function = build_guests(
        &root,
        &root.join("examples/functions/rust-release-notes/Cargo.toml"),
    )
    .join("release_notes.wasm");
    // The example custom condition rule (examples/rules).
    println!(
        "cargo:rerun-if-changed={}",
        root.join("examples/rules/release-version").display()
    );
    let rule = build_guests(
        &root,
        &root.join("examples/rules/release-version/Cargo.toml"),
    )
    .join("release_version.wasm");
    std::fs::write(
        PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("test_guests.rs"),
        format!(
            "/// The probe test plugin (tests/guests/probe).\npub const PROBE: &str = {:?};\n/// The hostile test plugin (tests/guests/hostile).\npub const HOSTILE: &str = {:?};\n/// The example Rust function (examples/functions/rust-release-notes).\npub const RUST_FUNCTION: &str = {:?};\n/// The example custom rule (examples/rules/release-version).\npub const RUST_RULE: &str = {:?};\n",
            probe.display().to_string(),
            hostile.display().to_string(),
            function.display().to_string(),
            rule.display().to_string()
        ),
    )
    .unwrap();

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
