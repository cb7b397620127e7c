//! `sluice plugin new NAME [--lang rust|python|js]`: a plugin project that builds on its own,
//! with the WIT contract (and for Rust the SDK) vendored in — they are embedded in the `sluice`
//! binary. Rust needs crates.io for `wit-bindgen`; Python needs componentize-py (PyPI); JS
//! needs componentize-js (npm).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const SDK_LIB: &str = include_str!("../../../sdk/rust/src/lib.rs");
const SDK_HTTP: &str = include_str!("../../../sdk/rust/src/http.rs");
const SDK_MANIFEST: &str = include_str!("../../../sdk/rust/Cargo.toml");
const WIT: &str = include_str!("../../../wit/action.wit");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Options of `sluice plugin new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// Plugin name: lowercase letters, digits and dashes.
    pub name: String,
    /// Language of the plugin: rust, python or js.
    #[arg(long, default_value = "rust")]
    pub lang: String,
    /// Parent directory [default: the current directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn lib_rs(name: &str) -> String {
    let type_name: String = name
        .split('-')
        .map(|w| w[..1].to_uppercase() + &w[1..])
        .collect();
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

fn app_py(name: &str) -> String {
    format!(
        r#""""{name}@1: a Sluice action in Python. Edit `describe` and `run`, then build it with
componentize-py 0.25.1 (pip install componentize-py==0.25.1):

    componentize-py -d wit -w sluice:action/action@0.1.0 componentize app -o {name}.wasm
    sluice plugin test {name}.wasm --config name=you --output greeting
"""
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Description:
        return types.Description(
            name="{name}",
            version="1.0.0",
            category=types.Category.OTHER,
            summary="Writes a greeting into its output artifact",
            config=[types.ConfigKey("name", False, "who to greet", "world")],
            capabilities=[],
            side_effects=False,
        )

    def run(self, ctx: types.Context, config) -> types.Outcome:
        settings = dict(config)
        name = settings.get("name", "world")
        if not name.strip():
            raise Err(types.ActionError_Config("`name` must not be empty"))
        greeting = f"hello, {{name}}"
        log.log(log.Level.INFO, greeting, [])
        if len(ctx.outputs) == 1:
            with open(os.path.join("/out", ctx.outputs[0], "greeting.txt"), "w") as out:
                out.write(greeting + "\n")
        return types.Outcome_Succeeded(types.Success([("Greeting", greeting)], greeting))
"#
    )
}

fn action_js(name: &str) -> String {
    format!(
        r#"// {name}@1: a Sluice action in JavaScript. Edit `describe` and `run`, then build it:
//   npm install && npm run build
//   sluice plugin test {name}.wasm --config name=you
// Exports follow the `action` world of wit/action.wit in camelCase; `run` returns an
// `outcome` variant ({{ tag, val }}) or throws an `action-error` variant.
import {{ log }} from 'sluice:action/log@0.1.0';

export function describe() {{
  return {{
    name: '{name}',
    version: '1.0.0',
    category: 'other',
    summary: 'Greets someone',
    config: [{{ name: 'name', required: false, description: 'who to greet', defaultValue: 'world' }}],
    capabilities: [],
    sideEffects: false,
  }};
}}

export function run(ctx, config) {{
  const name = config.find(([k]) => k === 'name')?.[1] ?? 'world';
  if (!name.trim()) {{
    throw {{ tag: 'config', val: '`name` must not be empty' }};
  }}
  const greeting = `hello, ${{name}}`;
  log('info', greeting, []);
  return {{ tag: 'succeeded', val: {{ variables: [['Greeting', greeting]], summary: greeting }} }};
}}
"#
    )
}

fn build_mjs(name: &str) -> String {
    format!(
        r#"// Build action.js into {name}.wasm, a component of the sluice:action `action` world.
import {{ componentize }} from '@bytecodealliance/componentize-js';
import {{ writeFile }} from 'node:fs/promises';

const {{ component }} = await componentize({{
  sourcePath: 'action.js',
  witPath: 'wit',
  worldName: 'sluice:action/action@0.1.0',
  disableFeatures: ['http', 'fetch-event'],
}});
const out = process.argv[2] ?? '{name}.wasm';
await writeFile(out, component);
console.log(`wrote ${{out}} (${{component.length}} bytes)`);
"#
    )
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    if !["rust", "python", "js"].contains(&args.lang.as_str()) {
        anyhow::bail!("--lang {}: choose rust, python or js", args.lang);
    }
    let ok = !args.name.is_empty()
        && args.name.len() <= 64
        && args.name.starts_with(|c: char| c.is_ascii_lowercase())
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !args.name.ends_with('-');
    if !ok {
        anyhow::bail!(
            "plugin name {:?} must be lowercase letters, digits and dashes, starting with a letter",
            args.name
        );
    }
    let root = args
        .dir
        .unwrap_or_else(|| PathBuf::from("."))
        .join(&args.name);
    if root.exists() {
        anyhow::bail!("{} already exists", root.display());
    }
    let file = |rel: &str, text: &str| -> anyhow::Result<()> {
        let path: PathBuf = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(path, text)?;
        Ok(())
    };
    let name = args.name.as_str();
    file("wit/action.wit", WIT)?;
    if args.lang == "python" {
        file("app.py", &app_py(name))?;
        file(".gitignore", "*.wasm\n__pycache__/\n")?;
        file(
            "README.md",
            &format!(
                "# {name}\n\nA Sluice action plugin in Python.\n\n```sh\npip install componentize-py==0.25.1\ncomponentize-py -d wit -w sluice:action/action@0.1.0 componentize app -o {name}.wasm\nsluice plugin test {name}.wasm --config name=you --output greeting\n```\n\nUse it in a pipeline with `uses: ./{name}/{name}.wasm`. The contract is `wit/action.wit`.\n"
            ),
        )?;
        println!("created {} (Python plugin)", root.display());
        println!(
            "  cd {} && componentize-py -d wit -w sluice:action/action@0.1.0 componentize app -o {name}.wasm",
            root.display()
        );
        println!("  sluice plugin test {name}.wasm --config name=you --output greeting");
        return Ok(ExitCode::SUCCESS);
    }
    if args.lang == "js" {
        file("action.js", &action_js(name))?;
        file("build.mjs", &build_mjs(name))?;
        file(
            "package.json",
            &format!(
                "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"scripts\": {{ \"build\": \"node build.mjs\" }},\n  \"devDependencies\": {{ \"@bytecodealliance/componentize-js\": \"0.23.0\", \"@bytecodealliance/preview2-shim\": \"0.25.0\" }}\n}}\n"
            ),
        )?;
        file(".gitignore", "*.wasm\nnode_modules/\n")?;
        file(
            "README.md",
            &format!(
                "# {name}\n\nA Sluice action plugin in JavaScript (componentize-js 0.23, Node.js 18 or newer).\n\n```sh\nnpm install\nnpm run build\nsluice plugin test {name}.wasm --config name=you\n```\n\nUse it in a pipeline with `uses: ./{name}/{name}.wasm`. The contract is `wit/action.wit`.\n"
            ),
        )?;
        println!("created {} (JavaScript plugin)", root.display());
        println!("  cd {} && npm install && npm run build", root.display());
        println!("  sluice plugin test {name}.wasm --config name=you");
        return Ok(ExitCode::SUCCESS);
    }
    file("Cargo.toml", &manifest(&args.name))?;
    file("src/lib.rs", &lib_rs(&args.name))?;
    file("rust-toolchain.toml", TOOLCHAIN)?;
    file(
        ".cargo/config.toml",
        "[build]\ntarget = \"wasm32-wasip2\"\n",
    )?;
    file(".gitignore", "target/\n")?;
    file("vendor/sluice-sdk/Cargo.toml", SDK_MANIFEST)?;
    file("vendor/sluice-sdk/src/lib.rs", SDK_LIB)?;
    file("vendor/sluice-sdk/src/http.rs", SDK_HTTP)?;
    let wasm = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        args.name.replace('-', "_")
    );
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

/// The starter pipeline `sluice init` writes: it runs as it is (a snapshot of the directory,
/// then a build step that lists it) and shows the main parts of the format.
fn starter(name: &str) -> String {
    format!(
        r##"# A starter pipeline. Run it:       sluice run pipeline.yaml
# Check it after a change:          sluice validate pipeline.yaml
# The format: docs/pipelines.md in the Sluice repository.
name: {name}
variables:
  greeting: hello              # override: sluice run pipeline.yaml --var greeting=hi
stages:
  - name: Source
    actions:
      - name: Snapshot
        uses: source-dir@1     # copies a directory into an artifact (.sluice is left out)
        with: {{ path: . }}
        outputs: [src]
        namespace: Src         # its variables: #{{Src.FileCount}}, #{{Src.Digest}}
  - name: Build
    actions:
      - name: List
        uses: command@1        # runs `sh -c` in the action's workspace
        inputs: [src]
        capabilities:
          process: [sh]        # deny by default: this action may start `sh`
        with:
          run: |
            echo "#{{variables.greeting}}: #{{Src.FileCount}} files"
            ls in/src
            echo "Listed=yes" >> "$SLUICE_OUTPUT"
"##
    )
}

/// `sluice init`: a starter pipeline.yaml in the current directory, named after it.
pub fn init(force: bool) -> anyhow::Result<ExitCode> {
    let path = Path::new("pipeline.yaml");
    if path.exists() && !force {
        eprintln!("error: pipeline.yaml exists here; pass --force to replace it");
        return Ok(ExitCode::from(2));
    }
    let dir = std::env::current_dir()?;
    let mut name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name = format!("starter{}", if name.is_empty() { "" } else { "-" }) + &name;
    }
    std::fs::write(path, starter(&name))?;
    println!("wrote pipeline.yaml (pipeline `{name}`): run it with `sluice run pipeline.yaml`");
    Ok(ExitCode::SUCCESS)
}
