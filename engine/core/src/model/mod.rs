//! The pipeline model: what a pipeline file says, parsed with positions and validated.
//!
//! Parsing (`parse`) turns YAML into a [`Pipeline`] and collects every structural problem;
//! validation (`validate`) checks cross-references and plugin configuration. Both report
//! [`Diagnostic`]s that name the file, line and column.

pub mod cron;
pub mod parse;
pub mod template;
pub mod units;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// A 1-based line and column in the pipeline file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Loc {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// One problem found in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it is.
    pub loc: Loc,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

/// Every problem found in one pipeline file; displays as `FILE:LINE:COL: message` lines.
#[derive(Clone, Debug, thiserror::Error)]
pub struct Diagnostics {
    /// The file as the user named it.
    pub file: String,
    /// Problems, sorted by position.
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, d.loc.line, d.loc.col, d.message
            )?;
        }
        Ok(())
    }
}

/// A parsed pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// `name:`; see [`NAME_RULE`].
    pub name: String,
    /// `variables:`, with defaults as written.
    pub variables: BTreeMap<String, String>,
    /// `stages:`, in order.
    pub stages: Vec<Stage>,
    /// `timeout:`: the default wall-clock limit of every action attempt.
    pub timeout: Option<Duration>,
    /// `execution_mode:`: how concurrent executions share stages (service mode).
    pub mode: crate::scheduler::Mode,
    /// `triggers:`: what starts the pipeline in the service.
    pub triggers: Triggers,
    /// The file as the user named it (for messages).
    pub file: String,
    /// Absolute directory of the pipeline file; relative paths are resolved against it.
    pub dir: PathBuf,
    /// No path may lead out of [`Self::dir`], even one a variable fills in at run time: the
    /// pipeline was registered with its uploaded folder, which is all it may reach.
    pub confined: bool,
    /// `secrets:`: the name `#{secrets.NAME}` uses → the stored secret it reads (`from`).
    pub secrets: BTreeMap<String, Located<String>>,
    /// `cache: false` turns the action cache off for every action.
    pub cache: bool,
}

/// A secret's name (in `secrets:` and as stored): letters, digits and `_`, starting with a
/// letter, at most 64 characters.
pub fn valid_secret_name(name: &str) -> bool {
    let mut c = name.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic())
        && name.len() <= 64
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `subject` may be an extra trigger subject: a valid NATS subject (wildcards allowed)
/// outside Sluice's own `sluice.>` space.
pub fn valid_trigger_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty()
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "{subject:?} is not a NATS subject (dot-separated tokens, no spaces)"
        ));
    }
    if tokens[..tokens.len() - 1].contains(&">") {
        return Err(format!("{subject:?}: `>` may only be the last token"));
    }
    // `*` first matches `sluice` too: a trigger on `*.>` would capture Sluice's own traffic.
    if matches!(tokens[0], "sluice" | ">" | "*" | "_INBOX") || tokens[0].starts_with('$') {
        return Err(format!(
            "{subject:?} is reserved (sluice.> is Sluice's own; publish to sluice.<tenant>.trigger.<pipeline> directly)"
        ));
    }
    Ok(())
}

/// `triggers:` of a pipeline (used by `sluice serve`; `sluice run` ignores them).
#[derive(Clone, Debug, Default)]
pub struct Triggers {
    /// `nats:` extra subjects whose events start the pipeline (NATS service only).
    pub nats: Vec<Located<String>>,
    /// `git:` push filters; an event from git must match one of them (none: every push).
    pub git: Vec<GitFilter>,
    /// `schedule:` cron entries.
    pub schedule: Vec<Schedule>,
    /// `webhook:`.
    pub webhook: Option<Webhook>,
}

/// One git push filter, like a CodePipeline V2 trigger: the push matches when its branch
/// (or tag) matches and, if `file_paths` is given, one changed file does.
#[derive(Clone, Debug, Default)]
pub struct GitFilter {
    /// Branch names (`main`, `release/*`).
    pub branches: Option<Patterns>,
    /// Tag names (`v*`).
    pub tags: Option<Patterns>,
    /// Changed files (`src/**`).
    pub file_paths: Option<Patterns>,
    /// Where the filter starts.
    pub loc: Loc,
}

/// Include and exclude globs; exclude wins.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    /// Globs that select (empty: everything).
    pub include: Vec<Located<String>>,
    /// Globs that reject.
    pub exclude: Vec<Located<String>>,
}

/// A cron schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Cron expression (5 fields, or 6 with seconds).
    pub cron: Located<String>,
    /// IANA timezone, UTC when absent.
    pub timezone: Option<Located<String>>,
}

/// A webhook endpoint.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// Name of the environment variable holding the HMAC secret.
    pub secret_env: Located<String>,
}

/// A stage: actions grouped by `run_order`.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Unique in the pipeline.
    pub name: String,
    /// Where the stage starts.
    pub loc: Loc,
    /// Actions, as written.
    pub actions: Vec<Action>,
    /// `before_entry`, `on_success`, `on_failure`.
    pub conditions: crate::scheduler::StageConditions,
}

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub loc: Loc,
}

/// One action of a stage.
#[derive(Clone, Debug)]
pub struct Action {
    /// Unique in the stage.
    pub name: String,
    /// Where the action starts.
    pub loc: Loc,
    /// `uses:`: `NAME@MAJOR`, `blake3:<hex>` or a path to a `.wasm` file.
    pub uses: Located<String>,
    /// `with:`: configuration; values may contain `#{...}`.
    pub with: BTreeMap<String, Located<String>>,
    /// Input artifact names.
    pub inputs: Vec<Located<String>>,
    /// Output artifact names.
    pub outputs: Vec<Located<String>>,
    /// Its output variables become `#{namespace.KEY}`.
    pub namespace: Option<Located<String>>,
    /// Lower runs first; equal runs in parallel.
    pub run_order: u32,
    /// Wall-clock limit for one attempt.
    pub timeout: Option<Duration>,
    /// Guest memory limit in bytes.
    pub memory: Option<u64>,
    /// `limits.output`: bounds on each output artifact.
    pub output_limits: crate::limits::OutputLimits,
    /// `retry:`: automatic retry of retryable failures.
    pub retry: Option<crate::scheduler::RetryPolicy>,
    /// Static grants.
    pub capabilities: Capabilities,
    /// `secrets:`: the pipeline's secrets this action may use.
    pub secrets: Vec<Located<String>>,
    /// `cache: false`: always run it, even when its inputs are unchanged.
    pub cache: bool,
}

/// What an action may reach outside its sandbox. Deny by default.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// Host programs the action may run.
    pub process: Vec<String>,
    /// Host directories (as written) preopened at their absolute path.
    pub dirs: BTreeMap<String, Access>,
    /// Outbound HTTP origins.
    pub http: Vec<String>,
    /// NATS subjects (patterns) the action may publish to.
    pub nats: Vec<String>,
    /// NATS servers besides the engine's own the action may publish to
    /// (`capabilities.nats.server`).
    pub nats_servers: Vec<String>,
    /// Where `capabilities:` was written (for messages about missing grants).
    pub loc: Option<Loc>,
}

/// Access to a granted directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
}

impl Pipeline {
    /// Resolve a path written in the pipeline (relative to its directory), lexically.
    /// Granted directories are mounted in the guest at exactly this path.
    pub fn host_path(&self, written: &str) -> PathBuf {
        normalize(&self.dir.join(written))
    }

    /// Every action with its stage index, in file order.
    pub fn actions(&self) -> impl Iterator<Item = (usize, &Stage, &Action)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.actions.iter().map(move |a| (i, s, a)))
    }
}

/// Whether a symlink at `link_dir` (relative to the artifact root) pointing to `target`
/// stays inside the artifact.
///
/// The target must be relative, with any `..` only at its start (at most as many as the
/// link's depth). A `..` after a name is refused: the name could itself be a link (`a -> .`),
/// and the kernel resolves `..` after following it, which a lexical check cannot see. With
/// this rule every link stays inside on its own, so chains of links do too.
pub fn link_stays_inside(link_dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut ups = 0;
    let mut seen_name = false;
    for c in target.components() {
        match c {
            Component::ParentDir if seen_name => return false,
            Component::ParentDir => ups += 1,
            Component::Normal(_) => seen_name = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    ups <= link_dir.components().count()
}

/// Lexically normalise an absolute path: drop `.`, apply `..`, never follow links.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
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

/// The rule of [`is_valid_name`], for messages.
pub const NAME_RULE: &str = "[A-Za-z0-9._-]{1,100} with no leading, trailing or doubled `.`";

/// Names of pipelines, stages, actions, artifacts and namespaces: safe as file names and subjects.
/// A pipeline name ends up in NATS subjects (`sluice.<tenant>.trigger.<pipeline>`), where
/// `.` separates tokens: an empty token (`.a`, `a.`, `a..b`) makes the subject invalid.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.split('.').all(|token| !token.is_empty())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `n` and the noun, singular for one: `count(1, "stage")` is "1 stage", `count(3, "stage")`
/// is "3 stages". For the nouns that take an `s` (stage, action, file, byte, problem, …).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_of_one_are_singular() {
        assert_eq!(super::count(1, "stage"), "1 stage");
        assert_eq!(super::count(0, "file"), "0 files");
        assert_eq!(super::count(2, "action"), "2 actions");
    }
}
