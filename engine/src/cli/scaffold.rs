//! `sluice plugin new NAME`: a plugin crate that builds on its own, with the SDK and the WIT
//! contract vendored in (they are embedded in the `sluice` binary, so no network is needed
//! beyond crates.io for `wit-bindgen`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const SDK_LIB: &str = include_str!("../../../sdk/rust/src/lib.rs");
const SDK_MANIFEST: &str = include_str!("../../../sdk/rust/Cargo.toml");
const WIT: &str = include_str!("../../../wit/action.wit");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Options of `sluice plugin new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// Plugin name: lowercase letters, digits and dashes.
    pub name: String,
    /// Language of the plugin (rust; python and js are planned).
    #[arg(long, default_value = "rust")]
    pub lang: String,
    /// Parent directory [default: the current directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn lib_rs(name: &str) -> String {
    let type_name: String = name.split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    format!(
        r#"//! `{name}@1`: a Sluice action. Edit `describe` and `run`, then:
//!   cargo build --release
//!   sluice plugin test target/wasm32-wasip2/release/{file}.wasm --config name=you --output greeting
use sluice_sdk::prelude::*;

struct {type_name};

impl Action for {type_name} {{
    fn describe() -> Description {{
        Description::new("{name}", env!("CARGO_PKG_VERSION"), Category::Other)
            .summary("Writes a greeting into its output artifact")
            .optional("name", "who to greet")
    }}

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {{
        let name = config.get("name").unwrap_or("world");
        let greeting = format!("hello, {{name}}");
        log::info(&greeting);
        if let Ok(out) = ctx.single_output() {{
            std::fs::write(ctx.output_dir(out).join("greeting.txt"), format!("{{greeting}}\n"))
                .map_err(|e| ActionError::Failed(format!("write greeting: {{e}}")))?;
        }}
        Ok(Outcome::success().var("Greeting", greeting))
    }}
}}

export_action!({type_name});
"#,
        file = name.replace('-', "_")
    )
}

fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "1.0.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = {{ path = "vendor/sluice-sdk" }}

# A workspace of its own, so the plugin builds wherever it is copied.
[workspace]

[profile.release]
opt-level = "s"
debug = false
strip = true
codegen-units = 16
"#
    )
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    if args.lang != "rust" {
        anyhow::bail!("--lang {}: only rust is supported by this version (python and js are planned)", args.lang);
    }
    let ok = !args.name.is_empty()
        && args.name.len() <= 64
        && args.name.starts_with(|c: char| c.is_ascii_lowercase())
        && args.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !args.name.ends_with('-');
    if !ok {
        anyhow::bail!("plugin name {:?} must be lowercase letters, digits and dashes, starting with a letter", args.name);
    }
    let root = args.dir.unwrap_or_else(|| PathBuf::from(".")).join(&args.name);
    if root.exists() {
        anyhow::bail!("{} already exists", root.display());
    }
    let file = |rel: &str, text: &str| -> anyhow::Result<()> {
        let path: PathBuf = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(path, text)?;
        Ok(())
    };
    file("Cargo.toml", &manifest(&args.name))?;
    file("src/lib.rs", &lib_rs(&args.name))?;
    file("rust-toolchain.toml", TOOLCHAIN)?;
    file(".cargo/config.toml", "[build]\ntarget = \"wasm32-wasip2\"\n")?;
    file(".gitignore", "target/\n")?;
    file("vendor/sluice-sdk/Cargo.toml", SDK_MANIFEST)?;
    file("vendor/sluice-sdk/src/lib.rs", SDK_LIB)?;
    file("wit/action.wit", WIT)?;
    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", args.name.replace('-', "_"));
    file(
        "README.md",
        &format!(
            "# {name}\n\nA Sluice action plugin.\n\n```sh\ncargo build --release\nsluice plugin describe {wasm}\nsluice plugin test {wasm} --config name=you --output greeting\n```\n\nUse it in a pipeline with `uses: ./{name}/{wasm}` (a path relative to the pipeline file).\nThe contract is `wit/action.wit`; the SDK is vendored under `vendor/sluice-sdk`.\n",
            name = args.name
        ),
    )?;
    println!("created {} (Rust plugin)", root.display());
    println!("  cd {} && cargo build --release", root.display());
    println!("  sluice plugin test {wasm} --config name=you --output greeting");
    Ok(ExitCode::SUCCESS)
}
