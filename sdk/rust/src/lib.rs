//! Write a Sluice pipeline action in Rust.
//!
//! ```ignore
//! use sluice_sdk::prelude::*;
//!
//! struct Hello;
//!
//! impl Action for Hello {
//!     fn describe() -> Description {
//!         Description::new("hello", "1.0.0", Category::Other)
//!             .summary("Greets someone")
//!             .optional("name", "who to greet")
//!     }
//!     fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
//!         let name = config.get("name").unwrap_or("world");
//!         log::info(&format!("hello, {name}"));
//!         Ok(Outcome::success().var("Greeting", format!("hello, {name}")))
//!     }
//! }
//!
//! export_action!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file is the plugin.
#![deny(missing_docs)]

#[cfg(feature = "http")]
pub mod http;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Raw bindings generated from `wit/action.wit`. Prefer the wrappers in this crate.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "sluice:action/typed-action",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "sluice_sdk::bindings",
    });
}

pub use bindings::sluice::action::types::{
    ActionError, Capability, Category, ConfigKey, ConfigType, Description, Outcome, Pending,
    Success, WakeOn,
};

/// The usual imports for a plugin author.
pub mod prelude {
    pub use crate::export_action;
    pub use crate::{
        Action, ActionError, Capability, Category, Config, ConfigType, Context, Description,
        Outcome, log, process,
    };
}

/// Implement this for your plugin type, then call [`export_action!`].
pub trait Action {
    /// What the plugin is, what configuration it accepts, what it needs.
    fn describe() -> Description;
    /// Run one attempt of the action.
    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError>;
}

/// Export a type implementing [`Action`] as the component's `describe` and `run`.
#[macro_export]
macro_rules! export_action {
    ($plugin:ty) => {
        struct __SluiceExport;
        impl $crate::bindings::Guest for __SluiceExport {
            fn describe() -> $crate::Description {
                <$plugin as $crate::Action>::describe()
            }
            fn config_types() -> ::std::vec::Vec<(::std::string::String, $crate::ConfigType)> {
                $crate::typed::collect(<$plugin as $crate::Action>::describe).0
            }
            fn secret_uses() -> ::std::vec::Vec<::std::string::String> {
                $crate::typed::collect(<$plugin as $crate::Action>::describe).1
            }
            fn run(
                ctx: $crate::bindings::sluice::action::types::Context,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<$crate::Outcome, $crate::ActionError> {
                let ctx = $crate::Context::from(ctx);
                let config = $crate::Config::from(config);
                <$plugin as $crate::Action>::run(&ctx, &config)
            }
        }
        $crate::bindings::export_bindings!(__SluiceExport with_types_in $crate::bindings);
    };
}

impl Description {
    /// Start a description with no configuration keys and no capabilities.
    pub fn new(name: &str, version: &str, category: Category) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            category,
            summary: String::new(),
            config: Vec::new(),
            capabilities: Vec::new(),
            side_effects: false,
        }
    }
    /// One line saying what the plugin does.
    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = summary.into();
        self
    }
    /// A configuration key the pipeline must set.
    pub fn required(mut self, name: &str, description: &str) -> Self {
        self.config.push(ConfigKey {
            name: name.into(),
            required: true,
            description: description.into(),
            default_value: None,
        });
        self
    }
    /// A configuration key the pipeline may set.
    pub fn optional(mut self, name: &str, description: &str) -> Self {
        self.config.push(ConfigKey {
            name: name.into(),
            required: false,
            description: description.into(),
            default_value: None,
        });
        self
    }
    /// An optional key with a documented default.
    pub fn optional_default(mut self, name: &str, description: &str, default: &str) -> Self {
        self.config.push(ConfigKey {
            name: name.into(),
            required: false,
            description: description.into(),
            default_value: Some(default.into()),
        });
        self
    }
    /// The type of key `name` (declared before with `required`, `optional` or
    /// `optional_default`): validation then refuses a value that is not one, at its line,
    /// before anything runs. Keys without a type take any text.
    ///
    /// ```ignore
    /// .optional_default("keep", "how many releases to keep", "5")
    /// .typed("keep", ConfigType::Integer)
    /// ```
    pub fn typed(self, name: &str, ty: ConfigType) -> Self {
        typed::declare(name, ty);
        self
    }
    /// The plugin must hold the values of its action's secrets (to sign something, say):
    /// [`secrets::reveal`] then gives them, for the secrets the action lists under `secrets:`.
    /// Shown as the `secrets` capability. Plugins that only send a secret in an HTTP header
    /// need not: put `#{secrets.NAME}` in the configuration and the header, and the host puts
    /// the value in the request without the plugin ever holding it.
    pub fn reveals_secrets(self) -> Self {
        typed::declare_secret_use("reveal");
        self
    }
    /// The host may put its action's secrets into the *bodies* of the plugin's requests to
    /// granted origins, not only into their headers: a `#{secrets.NAME}` in the configuration
    /// reaches the plugin as a placeholder, which it may write into a JSON document or a form,
    /// and the value replaces it on the way out. Bodies of such requests are read whole before
    /// they are sent (at most 1 MiB). Shown as the `secrets-in-body` capability.
    pub fn secrets_in_body(self) -> Self {
        typed::declare_secret_use("http-body");
        self
    }
    /// A capability the plugin needs (see [`Capability`]).
    pub fn needs(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }
    /// Mark the plugin as changing the world outside its outputs.
    pub fn side_effects(mut self) -> Self {
        self.side_effects = true;
        self
    }
}

/// The values of the action's secrets, for plugins that declare
/// [`Description::reveals_secrets`].
pub mod secrets {
    /// The value of the secret the pipeline names `name`; an error unless the plugin declared
    /// [`Description::reveals_secrets`](crate::Description::reveals_secrets) and the action
    /// lists `name` under `secrets:`. The engine still masks it in everything the action writes.
    pub fn reveal(name: &str) -> Result<String, String> {
        crate::bindings::sluice::action::secrets::reveal(name)
    }
}

/// Key types declared by [`Description::typed`]. `Description` is the WIT record, which has
/// no room for them (types came after it, in the `typed-action` world), so `describe` notes
/// them here and the `config-types` export reads them back.
#[doc(hidden)]
pub mod typed {
    use super::{ConfigType, Description};
    use std::cell::RefCell;

    /// What `describe` declared beyond the WIT record: key types, secret uses.
    type Declared = (Vec<(String, ConfigType)>, Vec<String>);

    thread_local! {
        static DECLARED: RefCell<Declared> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    pub(crate) fn declare(name: &str, ty: ConfigType) {
        DECLARED.with(|d| d.borrow_mut().0.push((name.to_string(), ty)));
    }

    pub(crate) fn declare_secret_use(word: &str) {
        DECLARED.with(|d| d.borrow_mut().1.push(word.to_string()));
    }

    /// Run `describe` and return what it declared.
    pub fn collect(describe: fn() -> Description) -> Declared {
        DECLARED.with(|d| *d.borrow_mut() = Default::default());
        let _ = describe();
        DECLARED.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }
}

impl Outcome {
    /// A successful outcome with no variables; add some with [`Outcome::var`].
    pub fn success() -> Self {
        Outcome::Succeeded(Success {
            variables: Vec::new(),
            summary: None,
        })
    }
    /// Not finished: call me again with `continuation` when `wake` fires.
    pub fn pending(continuation: impl Into<String>, wake: WakeOn) -> Self {
        Outcome::Pending(Pending {
            continuation: continuation.into(),
            wake,
            summary: None,
            percent_complete: None,
        })
    }
    /// Add an output variable (ignored on a pending outcome).
    pub fn var(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        if let Outcome::Succeeded(s) = &mut self {
            s.variables.push((key.into(), value.to_string()));
        }
        self
    }
    /// Set the one-line summary shown next to the action.
    pub fn summary(mut self, text: impl Into<String>) -> Self {
        match &mut self {
            Outcome::Succeeded(s) => s.summary = Some(text.into()),
            Outcome::Pending(p) => p.summary = Some(text.into()),
        }
        self
    }
}

/// The run an action is part of, with helpers for the sandbox's paths.
#[derive(Debug, Clone)]
pub struct Context {
    /// Tenant that owns the pipeline.
    pub tenant: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Execution id.
    pub execution_id: String,
    /// Stage name.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Use this to make side effects happen once per attempt.
    pub idempotency_key: String,
    /// Set when resumed after `pending`.
    pub continuation: Option<String>,
    /// Payload of the event that woke a pending action.
    pub wake_payload: Option<String>,
    /// Input artifact names.
    pub inputs: Vec<String>,
    /// Output artifact names.
    pub outputs: Vec<String>,
    /// Directory of the pipeline file on the host.
    pub pipeline_dir: String,
}

impl From<bindings::sluice::action::types::Context> for Context {
    fn from(c: bindings::sluice::action::types::Context) -> Self {
        Context {
            tenant: c.tenant,
            pipeline: c.pipeline,
            execution_id: c.execution_id,
            stage: c.stage,
            action: c.action,
            attempt: c.attempt,
            idempotency_key: c.idempotency_key,
            continuation: c.continuation,
            wake_payload: c.wake_payload,
            inputs: c.inputs,
            outputs: c.outputs,
            pipeline_dir: c.pipeline_dir,
        }
    }
}

impl Context {
    /// Where input artifact `name` is mounted (read-only).
    pub fn input_dir(&self, name: &str) -> PathBuf {
        Path::new("/in").join(name)
    }
    /// Where output artifact `name` must be written.
    pub fn output_dir(&self, name: &str) -> PathBuf {
        Path::new("/out").join(name)
    }
    /// A writable scratch directory, discarded after the action.
    pub fn scratch_dir(&self) -> PathBuf {
        PathBuf::from("/scratch")
    }
    /// The only input artifact, or a configuration error naming the problem.
    pub fn single_input(&self) -> Result<&str, ActionError> {
        match self.inputs.as_slice() {
            [one] => Ok(one),
            other => Err(ActionError::Config(format!(
                "expected exactly one input artifact, got {}",
                other.len()
            ))),
        }
    }
    /// The only output artifact, or a configuration error naming the problem.
    pub fn single_output(&self) -> Result<&str, ActionError> {
        match self.outputs.as_slice() {
            [one] => Ok(one),
            other => Err(ActionError::Config(format!(
                "expected exactly one output artifact, got {}",
                other.len()
            ))),
        }
    }
    /// Resolve a host path from configuration the way the engine does when it
    /// grants it: relative to the pipeline file's directory, lexically normalised.
    /// Granted directories are mounted at exactly this path.
    pub fn host_path(&self, configured: &str) -> PathBuf {
        let joined = Path::new(&self.pipeline_dir).join(configured);
        let mut out = PathBuf::from("/");
        for part in joined.components() {
            match part {
                Component::Normal(p) => out.push(p),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        out
    }
}

/// The resolved `with:` configuration of an action.
#[derive(Debug, Clone, Default)]
pub struct Config(BTreeMap<String, String>);

impl From<Vec<(String, String)>> for Config {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Config(pairs.into_iter().collect())
    }
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    /// The value of `key`, or a configuration error saying it is missing.
    pub fn require(&self, key: &str) -> Result<&str, ActionError> {
        self.get(key)
            .ok_or_else(|| ActionError::Config(format!("missing configuration key `{key}`")))
    }
    /// Parse `key` with `FromStr`, falling back to `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, ActionError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| ActionError::Config(format!("`{key}`: cannot parse {v:?}"))),
        }
    }
    /// Every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Write to the action's log.
pub mod log {
    pub use crate::bindings::sluice::action::log::Level;
    use crate::bindings::sluice::action::log::log;
    /// Debug-level entry.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }
    /// Info-level entry.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }
    /// Warning.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }
    /// Error entry (does not fail the action by itself).
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
    /// An entry with structured fields.
    pub fn with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        log(level, message, &fields);
    }
}

/// Run granted host programs in the action's workspace.
pub mod process {
    pub use crate::bindings::sluice::action::process::ExitStatus;
    use crate::bindings::sluice::action::process::{Command, run as host_run};

    /// Run `program` with `args`; its output streams into the action's log.
    pub fn run(program: &str, args: &[&str]) -> Result<ExitStatus, String> {
        run_with_env(program, args, &[])
    }
    /// Like [`run`], with extra environment variables.
    pub fn run_with_env(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ExitStatus, String> {
        host_run(&Command {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

/// Publish to NATS (the `messaging` import). Declare [`Capability::Nats`]; the pipeline grants
/// the subjects in `capabilities.nats`.
pub mod messaging {
    /// Publish `payload` to `subject` on `server` (none: the engine's NATS) and wait until the
    /// server has it.
    pub fn publish(subject: &str, payload: &[u8], server: Option<&str>) -> Result<(), String> {
        crate::bindings::sluice::action::messaging::publish(subject, payload, server)
    }
}

/// Parse `KEY=VALUE` lines (the `$SLUICE_OUTPUT` file format) into variables.
/// Blank lines and lines starting with `#` are ignored.
pub fn parse_output_vars(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                vars.push((k.trim().to_string(), v.to_string()))
            }
            _ => return Err(format!("line {}: expected KEY=VALUE, got {line:?}", i + 1)),
        }
    }
    Ok(vars)
}

/// Copy a directory tree inside the sandbox, keeping executable bits and
/// relative symlinks. Used by plugins that move artifacts around.
pub mod fs {
    use crate::bindings::sluice::action::files;
    use std::path::Path;

    /// Recursively copy `from` into `to` (created if missing). Entries named in
    /// `skip` at the top level, and the engine's own directories (its data directory may lie
    /// inside `from`), are left out. Returns the number of files copied.
    pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<u64, String> {
        std::fs::create_dir_all(to).map_err(|e| format!("create {}: {e}", to.display()))?;
        let mut count = 0;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| format!("read {}: {e}", from.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read {}: {e}", from.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if skip.iter().any(|s| name.to_str() == Some(*s)) {
                continue;
            }
            let src = entry.path();
            // The engine's own data (its data directory may lie inside a granted one).
            if engine_owned(&src) {
                continue;
            }
            let dst = to.join(&name);
            let kind = entry
                .file_type()
                .map_err(|e| format!("stat {}: {e}", src.display()))?;
            if kind.is_dir() {
                count += copy_tree(&src, &dst, &[])?;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&src)
                    .map_err(|e| format!("readlink {}: {e}", src.display()))?;
                symlink(&target, &dst)?;
            } else {
                std::fs::copy(&src, &dst)
                    .map_err(|e| format!("copy {} to {}: {e}", src.display(), dst.display()))?;
                if is_executable(&src)? {
                    set_executable(&dst, true)?;
                }
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether `path` is one of the engine's own directories (`SLUICE_EXCLUDE`).
    fn engine_owned(path: &Path) -> bool {
        static EXCLUDE: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();
        EXCLUDE
            .get_or_init(|| {
                std::env::var("SLUICE_EXCLUDE")
                    .map(|v| v.lines().map(Into::into).collect())
                    .unwrap_or_default()
            })
            .iter()
            .any(|p| p == path)
    }

    /// Create a relative symbolic link `link` -> `target` inside a writable mount.
    pub fn symlink(target: &Path, link: &Path) -> Result<(), String> {
        files::symlink(&target.to_string_lossy(), &link.to_string_lossy())
    }

    /// Whether a file inside a mount is executable.
    pub fn is_executable(path: &Path) -> Result<bool, String> {
        files::is_executable(&path.to_string_lossy())
    }

    /// Set or clear a file's executable bit inside a writable mount.
    pub fn set_executable(path: &Path, executable: bool) -> Result<(), String> {
        files::set_executable(&path.to_string_lossy(), executable)
    }
}
