//! YAML → [`Pipeline`], collecting every structural problem with its position.
use super::{
    Access, Action, Capabilities, Diagnostic, GitFilter, Loc, Located, Patterns, Pipeline,
    Schedule, Stage, Triggers, Webhook, units,
};
use marked_yaml::{LoaderOptions, Node, types::MarkedMappingNode};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::scheduler::Mode;
use crate::scheduler::conditions::{Condition, Operator, Outcome, Rule, StageConditions};

/// Keys accepted at the top level (kept in step with `schema/pipeline.schema.json`).
pub const PIPELINE_KEYS: &[&str] = &[
    "name",
    "variables",
    "timeout",
    "execution_mode",
    "triggers",
    "secrets",
    "cache",
    "stages",
];
/// Keys accepted under `triggers`.
pub const TRIGGER_KEYS: &[&str] = &["nats", "git", "schedule", "webhook"];
/// Keys accepted in a `triggers.git` filter.
pub const GIT_FILTER_KEYS: &[&str] = &["branches", "tags", "file_paths"];
/// Keys accepted in a pattern list.
pub const PATTERN_KEYS: &[&str] = &["include", "exclude"];
/// Keys accepted in a `triggers.schedule` entry.
pub const SCHEDULE_KEYS: &[&str] = &["cron", "timezone"];
/// Keys accepted under `triggers.webhook`.
pub const WEBHOOK_KEYS: &[&str] = &["secret_env"];
/// Keys accepted in a stage.
pub const STAGE_KEYS: &[&str] = &[
    "name",
    "actions",
    "before_entry",
    "on_success",
    "on_failure",
];
/// Keys accepted in a stage condition.
pub const CONDITION_KEYS: &[&str] = &["result", "rules", "retry"];
/// Keys accepted in a `variable-check` rule.
pub const VARIABLE_CHECK_KEYS: &[&str] = &["rule", "input", "operator", "value"];
/// Keys accepted in a custom rule (`rule: ./my-rule.wasm`).
pub const CUSTOM_RULE_KEYS: &[&str] = &["rule", "with"];
/// Keys accepted in a `deployment-window` rule.
pub const DEPLOYMENT_WINDOW_KEYS: &[&str] = &["rule", "cron", "timezone"];
/// Keys accepted in an action.
pub const ACTION_KEYS: &[&str] = &[
    "name",
    "uses",
    "with",
    "inputs",
    "outputs",
    "namespace",
    "run_order",
    "timeout",
    "retry",
    "limits",
    "capabilities",
    "secrets",
    "cache",
];
/// Keys accepted under `retry`.
pub const RETRY_KEYS: &[&str] = &["max_attempts", "backoff", "on_timeout"];
/// Keys accepted under `retry.backoff`.
pub const BACKOFF_KEYS: &[&str] = &["initial", "max", "multiplier"];
/// Keys accepted under `limits`.
pub const LIMITS_KEYS: &[&str] = &["memory", "output"];
/// Keys accepted under `limits.output`.
pub const OUTPUT_LIMITS_KEYS: &[&str] = &["size", "entries", "depth"];
/// Keys accepted under `capabilities`.
pub const CAPABILITY_KEYS: &[&str] = &["process", "dirs", "http", "nats"];

/// Parse `text` (the contents of `file`, whose directory is `dir`). Returns the pipeline as far
/// as it could be read and every problem found; a YAML syntax error yields no pipeline.
pub fn parse(file: &str, dir: PathBuf, text: &str) -> (Option<Pipeline>, Vec<Diagnostic>) {
    if text.len() > MAX_PIPELINE_BYTES {
        return (
            None,
            vec![Diagnostic {
                loc: Loc { line: 1, col: 1 },
                message: format!(
                    "the pipeline file is {} KiB; a pipeline file may be at most {} KiB",
                    text.len() >> 10,
                    MAX_PIPELINE_BYTES >> 10
                ),
            }],
        );
    }
    if let Some(d) = prescan(text) {
        return (None, vec![d]);
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(false);
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(node) => node,
        Err(e) => return (None, vec![load_error(e)]),
    };
    let mut p = Parser {
        diags: Vec::new(),
        text,
    };
    let pipeline = p.pipeline(&root, file, dir);
    (Some(pipeline), p.diags)
}

/// The largest pipeline file read (a thousand actions take about a tenth of it): every
/// engine parses a registered pipeline, and keeps it parsed.
pub const MAX_PIPELINE_BYTES: usize = 1 << 20;

/// How deeply mappings and sequences may nest in a pipeline file. Building the tree recurses
/// once per level, so a few kilobytes of `- - - …` would otherwise overflow the stack and abort
/// the process; real pipelines nest fewer than ten levels.
pub const MAX_NESTING: usize = 64;

/// What the tree build cannot survive or would silently drop, found from the parser's events
/// (produced by a loop, not by recursion) before any tree is built: nesting deeper than
/// [`MAX_NESTING`], and a second document (the loader keeps only the first). A syntax error
/// is left to the loader, which reports it.
fn prescan(text: &str) -> Option<Diagnostic> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let (mut depth, mut documents) = (0usize, 0usize);
    loop {
        let (event, mark) = parser.next_token().ok()?;
        let loc = Loc {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match event {
            Event::StreamEnd => return None,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Some(Diagnostic {
                        loc,
                        message: "a second YAML document starts here: a pipeline file holds exactly one pipeline (put each in its own file)".into(),
                    });
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(Diagnostic {
                        loc,
                        message: format!(
                            "lists and mappings are nested more than {MAX_NESTING} levels deep"
                        ),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

fn load_error(e: marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError::*;
    let (marker, message) = match &e {
        TopLevelMustBeMapping(m) => (
            *m,
            "the top level must be a mapping with `name` and `stages`".to_string(),
        ),
        TopLevelMustBeSequence(m) => (*m, "unexpected top-level sequence".to_string()),
        UnexpectedAnchor(m) => (*m, "YAML anchors are not supported".to_string()),
        MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_string()),
        UnexpectedTag(m) => (*m, "YAML tags are not supported".to_string()),
        ScanError(m, se) => (*m, format!("YAML syntax error: {}", se.info())),
        DuplicateKey(inner) => {
            let at = inner
                .prev_key
                .span()
                .start()
                .map(|m| format!(" (first at line {})", m.line()))
                .unwrap_or_default();
            let m = inner
                .key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
            (m, format!("duplicate key `{}`{at}", inner.key.as_str()))
        }
    };
    Diagnostic {
        loc: marker_loc(Some(&marker)),
        message,
    }
}

fn marker_loc(m: Option<&marked_yaml::Marker>) -> Loc {
    m.map(|m| Loc {
        line: m.line(),
        col: m.column(),
    })
    .unwrap_or(Loc { line: 1, col: 1 })
}

/// Where a node starts; for a mapping, its first key (the mapping's own span may start
/// at its first value).
fn loc(node: &Node) -> Loc {
    if let Some(first) = node.as_mapping().and_then(|m| m.keys().next()) {
        return marker_loc(first.span().start());
    }
    marker_loc(node.span().start())
}

/// The closest known key, for "did you mean".
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

struct Parser<'t> {
    diags: Vec<Diagnostic>,
    /// The source, to see what YAML dropped as a comment.
    text: &'t str,
}

/// Where ` #{` follows the plain scalar `value` written at `at` on the same line: YAML ends an
/// unquoted scalar at ` #` and drops the rest of the line as a comment, so `run: echo #{x}`
/// silently becomes `echo`. A quoted or block scalar, or one spanning lines, never matches:
/// its source text at `at` is not its value followed by the rest of the line.
fn comment_cut(text: &str, at: Loc, value: &str) -> Option<Loc> {
    if value.is_empty() || value.contains('\n') {
        return None;
    }
    let line = text.lines().nth(at.line.checked_sub(1)?)?;
    let start = line.char_indices().nth(at.col.checked_sub(1)?)?.0;
    let rest = line[start..].strip_prefix(value)?;
    let comment = rest.trim_start_matches([' ', '\t']);
    if comment.len() == rest.len() || !comment.starts_with("#{") {
        return None;
    }
    let byte = line.len() - comment.len();
    Some(Loc {
        line: at.line,
        col: line[..byte].chars().count() + 1,
    })
}

impl Parser<'_> {
    /// Report a `with:` value that YAML cut at ` #{` (see [`comment_cut`]). A value cut to
    /// nothing (`run: #{x}`) is found after its key: the empty value has no position of its own.
    fn check_comment_cut(
        &mut self,
        key: &marked_yaml::types::MarkedScalarNode,
        value: &Located<String>,
    ) {
        let cut = if value.value.is_empty() {
            let at = marker_loc(key.span().start());
            comment_cut(self.text, at, &format!("{}:", key.as_str()))
        } else {
            comment_cut(self.text, value.loc, &value.value)
        };
        let what = format!("`with.{}`", key.as_str());
        if let Some(at) = cut {
            self.err(
                at,
                format!("{what}: `#{{` starts a YAML comment here; quote the value"),
            );
        }
    }

    fn err(&mut self, loc: Loc, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            loc,
            message: message.into(),
        });
    }

    /// The node as a mapping whose keys are all in `known`; reports unknown keys.
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<&'n MarkedMappingNode> {
        let Some(map) = node.as_mapping() else {
            self.err(loc(node), format!("{what} must be a mapping"));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let hint = match suggest(key.as_str(), known) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => format!("; expected one of: {}", known.join(", ")),
                };
                self.err(
                    marker_loc(key.span().start()),
                    format!("unknown key `{}` in {what}{hint}", key.as_str()),
                );
            }
        }
        Some(map)
    }

    /// The node as a mapping (see `mapping`) if it is one.
    fn mapping_if<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<&'n MarkedMappingNode> {
        node.as_mapping()?;
        self.mapping(node, what, known)
    }

    fn scalar(&mut self, node: &Node, what: &str) -> Option<Located<String>> {
        match node.as_scalar() {
            Some(s) => Some(Located {
                value: s.as_str().to_string(),
                loc: loc(node),
            }),
            None => {
                self.err(loc(node), format!("{what} must be a string"));
                None
            }
        }
    }

    fn required<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        key: &str,
        what: &str,
        at: Loc,
    ) -> Option<&'n Node> {
        let node = map.get_node(key);
        if node.is_none() {
            self.err(at, format!("{what} is missing required key `{key}`"));
        }
        node
    }

    /// `secrets: { NAME: { from: STORED_NAME } }`: the names `#{secrets.NAME}` uses, each the
    /// stored secret it reads.
    fn secrets(&mut self, node: &Node) -> BTreeMap<String, Located<String>> {
        let mut out = BTreeMap::new();
        let Some(map) = node.as_mapping() else {
            self.err(
                loc(node),
                "`secrets` must be a mapping of NAME: { from: STORED_NAME }",
            );
            return out;
        };
        for (k, v) in map.iter() {
            let name = k.as_str();
            let what = format!("secret `{name}`");
            if !super::valid_secret_name(name) {
                self.err(
                    loc(v),
                    format!(
                        "{what}: a secret name is letters, digits and _, starting with a letter"
                    ),
                );
                continue;
            }
            let Some(m) = self.mapping(v, &what, &["from"]) else {
                continue;
            };
            if let Some(from) = self.required(m, "from", &what, loc(v))
                && let Some(from) = self.scalar(from, &format!("{what}: `from`"))
            {
                if !super::valid_secret_name(&from.value) {
                    self.err(
                        from.loc,
                        format!(
                            "{what}: `from: {}` is not a stored secret's name",
                            from.value
                        ),
                    );
                }
                out.insert(name.to_string(), from);
            }
        }
        out
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Vec<Located<String>> {
        let Some(seq) = node.as_sequence() else {
            self.err(loc(node), format!("{what} must be a list, e.g. [a, b]"));
            return Vec::new();
        };
        seq.iter()
            .filter_map(|n| self.scalar(n, &format!("an entry of {what}")))
            .collect()
    }

    fn pipeline(&mut self, root: &Node, file: &str, dir: PathBuf) -> Pipeline {
        let mut pipeline = Pipeline {
            name: String::new(),
            variables: BTreeMap::new(),
            stages: Vec::new(),
            timeout: None,
            mode: Mode::default(),
            triggers: Triggers::default(),
            file: file.to_string(),
            dir,
            confined: false,
            secrets: BTreeMap::new(),
            cache: true,
        };
        let Some(map) = self.mapping(root, "the pipeline", PIPELINE_KEYS) else {
            return pipeline;
        };
        let at = loc(root);
        if let Some(n) = self.required(map, "name", "the pipeline", at)
            && let Some(name) = self.scalar(n, "`name`")
        {
            if !super::is_valid_name(&name.value) {
                self.err(
                    name.loc,
                    format!(
                        "pipeline name {:?} must be {}",
                        name.value,
                        super::NAME_RULE
                    ),
                );
            }
            pipeline.name = name.value;
        }
        if let Some(n) = map.get_node("timeout") {
            pipeline.timeout = self.duration(n, "`timeout`");
        }
        if let Some(n) = map.get_node("execution_mode")
            && let Some(m) = self.scalar(n, "`execution_mode`")
        {
            match Mode::parse(&m.value) {
                Some(mode) => pipeline.mode = mode,
                None => self.err(
                    m.loc,
                    format!(
                        "`execution_mode` must be one of {}, got {:?}",
                        Mode::NAMES.join(", "),
                        m.value
                    ),
                ),
            }
        }
        if let Some(n) = map.get_node("triggers") {
            pipeline.triggers = self.triggers(n);
        }
        if let Some(n) = map.get_node("secrets") {
            pipeline.secrets = self.secrets(n);
        }
        if let Some(n) = map.get_node("cache") {
            match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => pipeline.cache = b,
                None => self.err(loc(n), "`cache` must be true or false"),
            }
        }
        if let Some(vars) = map.get_node("variables") {
            if let Some(vmap) = vars.as_mapping() {
                for (k, v) in vmap.iter() {
                    if let Some(value) = self.scalar(v, &format!("variable `{}`", k.as_str())) {
                        if value.value.contains("#{") {
                            self.err(
                                value.loc,
                                format!(
                                    "variable `{}`: a default value cannot contain #{{...}}",
                                    k.as_str()
                                ),
                            );
                        }
                        pipeline
                            .variables
                            .insert(k.as_str().to_string(), value.value);
                    }
                }
            } else {
                self.err(loc(vars), "`variables` must be a mapping of NAME: value");
            }
        }
        if let Some(stages) = self.required(map, "stages", "the pipeline", at) {
            match stages.as_sequence() {
                Some(seq) if seq.is_empty() => self.err(
                    loc(stages),
                    "`stages` is empty: a pipeline needs at least one stage",
                ),
                Some(seq) => {
                    pipeline.stages = seq.iter().filter_map(|n| self.stage(n)).collect();
                    // The first stage brings the source: there is nothing earlier to roll back to.
                    if let Some(first) = pipeline.stages.first() {
                        let c = &first.conditions;
                        if [&c.on_success, &c.on_failure]
                            .iter()
                            .any(|c| c.as_ref().is_some_and(|c| c.result == Outcome::Rollback))
                        {
                            self.err(first.loc, format!("stage `{}`: the first stage cannot be rolled back (ROLLBACK is for later stages)", first.name));
                        }
                    }
                }
                None => self.err(loc(stages), "`stages` must be a list of stages"),
            }
        }
        pipeline
    }

    fn triggers(&mut self, node: &Node) -> Triggers {
        let mut out = Triggers::default();
        let Some(map) = self.mapping(node, "`triggers`", TRIGGER_KEYS) else {
            return out;
        };
        if let Some(n) = map.get_node("nats") {
            out.nats = self.string_list(n, "`triggers.nats`");
            for s in &out.nats {
                if let Err(e) = super::valid_trigger_subject(&s.value) {
                    self.diags.push(Diagnostic {
                        loc: s.loc,
                        message: format!("`triggers.nats`: {e}"),
                    });
                }
            }
        }
        if let Some(git) = map.get_node("git") {
            match git.as_sequence() {
                Some(seq) => {
                    for f in seq.iter() {
                        let at = loc(f);
                        let Some(fm) = self.mapping(f, "a git filter", GIT_FILTER_KEYS) else {
                            continue;
                        };
                        let mut filter = GitFilter {
                            loc: at,
                            ..Default::default()
                        };
                        filter.branches = fm
                            .get_node("branches")
                            .map(|n| self.patterns(n, "`branches`"));
                        filter.tags = fm.get_node("tags").map(|n| self.patterns(n, "`tags`"));
                        filter.file_paths = fm
                            .get_node("file_paths")
                            .map(|n| self.patterns(n, "`file_paths`"));
                        if filter.branches.is_none() && filter.tags.is_none() {
                            self.err(at, "a git filter needs `branches` or `tags`");
                        }
                        out.git.push(filter);
                    }
                }
                None => self.err(loc(git), "`triggers.git` must be a list of filters"),
            }
        }
        if let Some(schedule) = map.get_node("schedule") {
            match schedule.as_sequence() {
                Some(seq) => {
                    for e in seq.iter() {
                        let at = loc(e);
                        let Some(em) = self.mapping(e, "a schedule", SCHEDULE_KEYS) else {
                            continue;
                        };
                        let cron = self
                            .required(em, "cron", "a schedule", at)
                            .and_then(|n| self.scalar(n, "`cron`"));
                        let timezone = em
                            .get_node("timezone")
                            .and_then(|n| self.scalar(n, "`timezone`"));
                        if let Some(cron) = cron {
                            out.schedule.push(Schedule { cron, timezone });
                        }
                    }
                }
                None => self.err(
                    loc(schedule),
                    "`triggers.schedule` must be a list of {cron, timezone}",
                ),
            }
        }
        if let Some(hook) = map.get_node("webhook") {
            let at = loc(hook);
            if let Some(hm) = self.mapping(hook, "`triggers.webhook`", WEBHOOK_KEYS)
                && let Some(secret_env) = self
                    .required(hm, "secret_env", "`triggers.webhook`", at)
                    .and_then(|n| self.scalar(n, "`secret_env`"))
            {
                out.webhook = Some(Webhook { secret_env });
            }
        }
        out
    }

    /// `{include: [...], exclude: [...]}` or a plain list (includes).
    fn patterns(&mut self, node: &Node, what: &str) -> Patterns {
        if node.as_sequence().is_some() {
            return Patterns {
                include: self.string_list(node, what),
                exclude: Vec::new(),
            };
        }
        let mut out = Patterns::default();
        if let Some(map) = self.mapping(node, what, PATTERN_KEYS) {
            if let Some(n) = map.get_node("include") {
                out.include = self.string_list(n, &format!("{what}.include"));
            }
            if let Some(n) = map.get_node("exclude") {
                out.exclude = self.string_list(n, &format!("{what}.exclude"));
            }
        }
        for p in out.include.iter().chain(&out.exclude) {
            if let Err(e) = globset::Glob::new(&p.value) {
                self.diags.push(Diagnostic {
                    loc: p.loc,
                    message: format!("bad glob {:?}: {}", p.value, e.kind()),
                });
            }
        }
        out
    }

    fn stage(&mut self, node: &Node) -> Option<Stage> {
        let at = loc(node);
        let map = self.mapping(node, "a stage", STAGE_KEYS)?;
        let name = self
            .required(map, "name", "a stage", at)
            .and_then(|n| self.scalar(n, "stage `name`"));
        let name = name.map(|n| n.value).unwrap_or_default();
        let mut stage = Stage {
            name: name.clone(),
            loc: at,
            actions: Vec::new(),
            conditions: StageConditions::default(),
        };
        stage.conditions.before_entry = map
            .get_node("before_entry")
            .and_then(|n| self.condition(n, "before_entry", &[Outcome::Fail, Outcome::Skip]));
        stage.conditions.on_success = map
            .get_node("on_success")
            .and_then(|n| self.condition(n, "on_success", &[Outcome::Fail, Outcome::Rollback]));
        stage.conditions.on_failure = map
            .get_node("on_failure")
            .and_then(|n| self.condition(n, "on_failure", &[Outcome::Rollback, Outcome::Retry]));
        if let Some(actions) = self.required(map, "actions", &format!("stage `{name}`"), at) {
            match actions.as_sequence() {
                Some(seq) if seq.is_empty() => {
                    self.err(loc(actions), format!("stage `{name}` has no actions"))
                }
                Some(seq) => stage.actions = seq.iter().filter_map(|n| self.action(n)).collect(),
                None => self.err(
                    loc(actions),
                    format!("`actions` of stage `{name}` must be a list"),
                ),
            }
        }
        Some(stage)
    }

    fn action(&mut self, node: &Node) -> Option<Action> {
        let at = loc(node);
        let map = self.mapping(node, "an action", ACTION_KEYS)?;
        let name = self
            .required(map, "name", "an action", at)
            .and_then(|n| self.scalar(n, "action `name`"));
        let name = name.map(|n| n.value).unwrap_or_default();
        let what = format!("action `{name}`");
        let uses = self
            .required(map, "uses", &what, at)
            .and_then(|n| self.scalar(n, "`uses`"))
            .unwrap_or(Located {
                value: String::new(),
                loc: at,
            });
        let mut action = Action {
            name,
            loc: at,
            uses,
            with: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            namespace: None,
            run_order: 1,
            timeout: None,
            memory: None,
            output_limits: Default::default(),
            retry: None,
            capabilities: Capabilities::default(),
            secrets: Vec::new(),
            cache: true,
        };
        if let Some(with) = map.get_node("with") {
            if let Some(wmap) = with.as_mapping() {
                for (k, v) in wmap.iter() {
                    if let Some(value) = self.scalar(v, &format!("`with.{}`", k.as_str())) {
                        self.check_comment_cut(k, &value);
                        action.with.insert(k.as_str().to_string(), value);
                    }
                }
            } else {
                self.err(
                    loc(with),
                    format!("`with` of {what} must be a mapping of key: value"),
                );
            }
        }
        if let Some(n) = map.get_node("inputs") {
            action.inputs = self.string_list(n, "`inputs`");
        }
        if let Some(n) = map.get_node("secrets") {
            action.secrets = self.string_list(n, "`secrets`");
        }
        if let Some(n) = map.get_node("cache") {
            match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => action.cache = b,
                None => self.err(loc(n), "`cache` must be true or false"),
            }
        }
        if let Some(n) = map.get_node("outputs") {
            action.outputs = self.string_list(n, "`outputs`");
        }
        if let Some(n) = map.get_node("namespace") {
            action.namespace = self.scalar(n, "`namespace`");
        }
        if let Some(n) = map.get_node("run_order")
            && let Some(v) = self.scalar(n, "`run_order`")
        {
            match v.value.parse::<u32>() {
                Ok(r) if (1..=999).contains(&r) => action.run_order = r,
                _ => self.err(
                    v.loc,
                    format!(
                        "`run_order` must be a whole number from 1 to 999, got {:?}",
                        v.value
                    ),
                ),
            }
        }
        if let Some(n) = map.get_node("timeout") {
            action.timeout = self.duration(n, "`timeout`");
        }
        if let Some(n) = map.get_node("retry") {
            action.retry = self.retry(n);
        }
        if let Some(n) = map.get_node("limits")
            && let Some(lmap) = self.mapping(n, "`limits`", LIMITS_KEYS)
        {
            if let Some(m) = lmap.get_node("memory")
                && let Some(v) = self.scalar(m, "`limits.memory`")
            {
                match units::parse_size(&v.value) {
                    Ok(bytes) if bytes > crate::limits::MAX_GUEST_MEMORY => self.err(
                        v.loc,
                        format!(
                            "`limits.memory`: {} is more than the maximum of 4GiB",
                            v.value
                        ),
                    ),
                    Ok(bytes) => action.memory = Some(bytes),
                    Err(e) => self.err(v.loc, format!("`limits.memory`: {e}")),
                }
            }
            if let Some(o) = lmap.get_node("output") {
                action.output_limits = self.output_limits(o);
            }
        }
        if let Some(n) = map.get_node("capabilities") {
            action.capabilities = self.capabilities(n);
        }
        Some(action)
    }

    /// `{ result, rules: [...], retry: failed|all }` of a stage; `results` are those allowed here.
    fn condition(&mut self, node: &Node, key: &str, results: &[Outcome]) -> Option<Condition> {
        let at = loc(node);
        let what = format!("`{key}`");
        let map = self.mapping(node, &what, CONDITION_KEYS)?;
        let result = self
            .required(map, "result", &what, at)
            .and_then(|n| self.scalar(n, &format!("`{key}.result`")))?;
        let names: Vec<String> = results
            .iter()
            .map(|r| format!("{r:?}").to_uppercase())
            .collect();
        let outcome = match Outcome::parse(&result.value) {
            Some(o) if results.contains(&o) => o,
            _ => {
                self.err(
                    result.loc,
                    format!(
                        "`{key}.result` must be {}, got {:?}",
                        names.join(" or "),
                        result.value
                    ),
                );
                return None;
            }
        };
        let mut condition = Condition {
            result: outcome,
            rules: Vec::new(),
            retry_all: false,
        };
        if let Some(n) = map.get_node("retry") {
            let v = self.scalar(n, &format!("`{key}.retry`"))?;
            match (outcome, v.value.as_str()) {
                (Outcome::Retry, "failed") => {}
                (Outcome::Retry, "all") => condition.retry_all = true,
                (Outcome::Retry, other) => self.err(
                    v.loc,
                    format!("`{key}.retry` must be `failed` or `all`, got {other:?}"),
                ),
                _ => self.err(
                    v.loc,
                    format!("`{key}.retry` only goes with `result: RETRY`"),
                ),
            }
        }
        if let Some(rules) = map.get_node("rules") {
            let Some(seq) = rules.as_sequence() else {
                self.err(loc(rules), format!("`{key}.rules` must be a list of rules"));
                return None;
            };
            for r in seq.iter() {
                if let Some(rule) = self.rule(r, key) {
                    condition.rules.push(rule);
                }
            }
        }
        Some(condition)
    }

    /// One rule: `variable-check` or `deployment-window`.
    fn rule(&mut self, node: &Node, key: &str) -> Option<Rule> {
        let at = loc(node);
        let Some(kind) = node
            .as_mapping()
            .and_then(|m| m.get_node("rule"))
            .and_then(|n| n.as_scalar())
            .map(|s| s.as_str().to_string())
        else {
            self.err(at, format!("a rule of `{key}` needs `rule: variable-check`, `rule: deployment-window` or `rule: ./custom-rule.wasm`"));
            return None;
        };
        match kind.as_str() {
            "variable-check" => {
                let map = self.mapping(node, "a `variable-check` rule", VARIABLE_CHECK_KEYS)?;
                let input = self
                    .required(map, "input", "a `variable-check` rule", at)
                    .and_then(|n| self.scalar(n, "`input`"))?;
                match super::template::references(&input.value) {
                    Err(e) => self.err(input.loc, format!("`input`: {e}")),
                    Ok(refs) if refs.iter().any(|r| r.namespace == "secrets") => self.err(
                        input.loc,
                        "`input`: a secret may only be used in the `with:` of an action that lists it in `secrets:`",
                    ),
                    Ok(_) => {}
                }
                let op = self
                    .required(map, "operator", "a `variable-check` rule", at)
                    .and_then(|n| self.scalar(n, "`operator`"))?;
                let Some(operator) = Operator::parse(&op.value) else {
                    self.err(
                        op.loc,
                        format!(
                            "`operator` must be one of {}, got {:?}",
                            Operator::NAMES.join(", "),
                            op.value
                        ),
                    );
                    return None;
                };
                let value = self
                    .required(map, "value", "a `variable-check` rule", at)
                    .and_then(|n| self.scalar(n, "`value`"))?;
                if operator == Operator::Matches
                    && let Err(e) = regex::Regex::new(&value.value)
                {
                    self.err(
                        value.loc,
                        format!(
                            "`value` is not a regular expression: {}",
                            e.to_string()
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .trim_start_matches("error: ")
                        ),
                    );
                }
                Some(Rule::VariableCheck {
                    input: input.value,
                    operator,
                    value: value.value,
                })
            }
            "deployment-window" => {
                let map =
                    self.mapping(node, "a `deployment-window` rule", DEPLOYMENT_WINDOW_KEYS)?;
                let cron = self
                    .required(map, "cron", "a `deployment-window` rule", at)
                    .and_then(|n| self.scalar(n, "`cron`"))?;
                let timezone = map
                    .get_node("timezone")
                    .and_then(|n| self.scalar(n, "`timezone`"));
                if let Err(e) = super::cron::CronSchedule::parse(
                    &cron.value,
                    timezone.as_ref().map(|t| t.value.as_str()),
                ) {
                    self.err(cron.loc, e);
                }
                Some(Rule::DeploymentWindow {
                    cron: cron.value,
                    timezone: timezone.map(|t| t.value),
                })
            }
            custom if custom.ends_with(".wasm") || custom.starts_with("blake3:") => {
                let map = self.mapping(node, "a custom rule", CUSTOM_RULE_KEYS)?;
                let mut with = BTreeMap::new();
                if let Some(w) = map.get_node("with") {
                    match w.as_mapping() {
                        Some(wm) => {
                            for (k, v) in wm.iter() {
                                if let Some(value) =
                                    self.scalar(v, &format!("`with.{}`", k.as_str()))
                                {
                                    self.check_comment_cut(k, &value);
                                    match super::template::references(&value.value) {
                                        Err(e) => self.err(value.loc, format!("`with.{}`: {e}", k.as_str())),
                                        Ok(refs) if refs.iter().any(|r| r.namespace == "secrets") => self.err(
                                            value.loc,
                                            format!("`with.{}`: a secret may only be used in the `with:` of an action that lists it in `secrets:`, not a rule's", k.as_str()),
                                        ),
                                        Ok(_) => {}
                                    }
                                    with.insert(k.as_str().to_string(), value.value);
                                }
                            }
                        }
                        None => {
                            self.err(loc(w), "`with` of a rule must be a mapping of KEY: value")
                        }
                    }
                }
                Some(Rule::Custom {
                    uses: custom.to_string(),
                    with,
                })
            }
            other => {
                let hint = suggest(other, &["variable-check", "deployment-window"])
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                self.err(at, format!("unknown rule `{other}`: the rules are variable-check, deployment-window, or a custom rule component (a .wasm path or blake3:<hex>){hint}"));
                None
            }
        }
    }

    /// `limits.output: { size, entries, depth }`: each at most the engine's maximum.
    fn output_limits(&mut self, node: &Node) -> crate::limits::OutputLimits {
        use crate::limits::{MAX_OUTPUT_BYTES, MAX_OUTPUT_DEPTH, MAX_OUTPUT_ENTRIES};
        let mut limits = crate::limits::OutputLimits::default();
        let Some(map) = self.mapping(node, "`limits.output`", OUTPUT_LIMITS_KEYS) else {
            return limits;
        };
        if let Some(n) = map.get_node("size")
            && let Some(v) = self.scalar(n, "`limits.output.size`")
        {
            match units::parse_size(&v.value) {
                Ok(bytes) if bytes > MAX_OUTPUT_BYTES => self.err(
                    v.loc,
                    format!(
                        "`limits.output.size`: {} is more than the maximum of 8GiB",
                        v.value
                    ),
                ),
                Ok(bytes) => limits.size = bytes,
                Err(e) => self.err(v.loc, format!("`limits.output.size`: {e}")),
            }
        }
        for (key, max) in [
            ("entries", MAX_OUTPUT_ENTRIES),
            ("depth", MAX_OUTPUT_DEPTH as u64),
        ] {
            if let Some(n) = map.get_node(key)
                && let Some(v) = self.scalar(n, &format!("`limits.output.{key}`"))
            {
                match v.value.trim().parse::<u64>() {
                    Ok(count) if count > max => self.err(
                        v.loc,
                        format!("`limits.output.{key}`: {count} is more than the maximum of {max}"),
                    ),
                    Ok(count) if key == "entries" => limits.entries = count,
                    Ok(count) => limits.depth = count as usize,
                    Err(_) => self.err(
                        v.loc,
                        format!("`limits.output.{key}`: `{}` is not a whole number", v.value),
                    ),
                }
            }
        }
        limits
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<std::time::Duration> {
        let v = self.scalar(node, what)?;
        match units::parse_duration(&v.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(v.loc, format!("{what}: {e}"));
                None
            }
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &mut self,
        node: &Node,
        what: &str,
        min: T,
        max: T,
    ) -> Option<T> {
        let v = self.scalar(node, what)?;
        match v.value.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Some(n),
            _ => {
                self.err(
                    v.loc,
                    format!(
                        "{what} must be a number from {min} to {max}, got {:?}",
                        v.value
                    ),
                );
                None
            }
        }
    }

    /// `retry: { max_attempts, backoff: { initial, max, multiplier }, on_timeout }`
    fn retry(&mut self, node: &Node) -> Option<crate::scheduler::RetryPolicy> {
        let map = self.mapping(node, "`retry`", RETRY_KEYS)?;
        let at = loc(node);
        let max_attempts = match map.get_node("max_attempts") {
            Some(n) => self.number(n, "`retry.max_attempts`", 1u32, 100)?,
            None => {
                self.err(at, "`retry` is missing required key `max_attempts`");
                return None;
            }
        };
        let mut policy = crate::scheduler::RetryPolicy {
            max_attempts,
            initial_ms: 1000,
            max_ms: 60_000,
            multiplier: 2.0,
            on_timeout: false,
        };
        if let Some(n) = map.get_node("on_timeout") {
            match n.as_scalar().and_then(|s| s.as_bool()) {
                Some(b) => policy.on_timeout = b,
                None => self.err(loc(n), "`retry.on_timeout` must be true or false"),
            }
        }
        if let Some(b) = map.get_node("backoff") {
            let bmap = self.mapping(b, "`retry.backoff`", BACKOFF_KEYS)?;
            if let Some(n) = bmap.get_node("initial") {
                policy.initial_ms = self.duration(n, "`retry.backoff.initial`")?.as_millis() as u64;
            }
            if let Some(n) = bmap.get_node("max") {
                policy.max_ms = self.duration(n, "`retry.backoff.max`")?.as_millis() as u64;
            }
            if let Some(n) = bmap.get_node("multiplier") {
                let m = self.number(n, "`retry.backoff.multiplier`", 1.0f64, 100.0)?;
                // At 1 every wait is `initial` and `max` never applies: not a backoff.
                if m <= 1.0 {
                    self.err(
                        loc(n),
                        format!(
                            "`retry.backoff.multiplier` must be more than 1 (each wait is the previous one times it), got {m}; for equal waits set `max` to `initial`"
                        ),
                    );
                    return None;
                }
                policy.multiplier = m;
            }
        }
        if policy.max_ms < policy.initial_ms {
            self.err(
                at,
                "`retry.backoff.max` must not be shorter than `retry.backoff.initial`",
            );
        }
        Some(policy)
    }

    fn capabilities(&mut self, node: &Node) -> Capabilities {
        let mut caps = Capabilities {
            loc: Some(loc(node)),
            ..Default::default()
        };
        let Some(map) = self.mapping(node, "`capabilities`", CAPABILITY_KEYS) else {
            return caps;
        };
        let no_templates = |p: &mut Self, v: &Located<String>| {
            if v.value.contains("#{") {
                p.err(
                    v.loc,
                    "capabilities are static grants: #{...} is not allowed here",
                );
                false
            } else {
                true
            }
        };
        if let Some(n) = map.get_node("process") {
            caps.process = self
                .string_list(n, "`capabilities.process`")
                .into_iter()
                .filter(|v| no_templates(self, v))
                .map(|v| v.value)
                .collect();
        }
        if let Some(n) = map.get_node("http") {
            let grants: Vec<Located<String>> = self
                .string_list(n, "`capabilities.http`")
                .into_iter()
                .filter(|v| no_templates(self, v))
                .collect();
            for grant in grants {
                match crate::grants::http::valid_grant(&grant.value) {
                    Ok(origin) => caps.http.push(origin),
                    Err(e) => self.err(grant.loc, format!("`capabilities.http`: {e}")),
                }
            }
        }
        let mut nats = map.get_node("nats");
        // `nats: [SUBJECT…]` on the engine's own NATS, or `nats: { server: URL, subjects:
        // [SUBJECT…] }` to let the action reach that server too.
        if let Some(m) =
            nats.and_then(|n| self.mapping_if(n, "`capabilities.nats`", &["server", "subjects"]))
        {
            if let Some(url) = m
                .get_node("server")
                .and_then(|u| self.scalar(u, "`capabilities.nats.server`"))
            {
                match crate::grants::nats::valid_server(&url.value) {
                    Ok(()) if no_templates(self, &url) => caps.nats_servers.push(url.value),
                    Ok(()) => {}
                    Err(e) => self.err(url.loc, format!("`capabilities.nats.server`: {e}")),
                }
            }
            if m.get_node("subjects").is_none() {
                self.err(
                    loc(nats.unwrap()),
                    "`capabilities.nats` needs `subjects: [SUBJECT…]`",
                );
            }
            nats = m.get_node("subjects");
        }
        if let Some(n) = nats {
            let grants: Vec<Located<String>> = self
                .string_list(n, "`capabilities.nats`")
                .into_iter()
                .filter(|v| no_templates(self, v))
                .collect();
            for grant in grants {
                match crate::grants::nats::valid_grant(&grant.value) {
                    Ok(()) => caps.nats.push(grant.value),
                    Err(e) => self.err(grant.loc, format!("`capabilities.nats`: {e}")),
                }
            }
        }
        if let Some(n) = map.get_node("dirs") {
            if let Some(dmap) = n.as_mapping() {
                for (k, v) in dmap.iter() {
                    let key = Located {
                        value: k.as_str().to_string(),
                        loc: marker_loc(k.span().start()),
                    };
                    if !no_templates(self, &key) {
                        continue;
                    }
                    let Some(mode) = self.scalar(v, &format!("`capabilities.dirs.{}`", key.value))
                    else {
                        continue;
                    };
                    let access = match mode.value.as_str() {
                        "ro" => Access::Ro,
                        "rw" => Access::Rw,
                        other => {
                            self.err(
                                mode.loc,
                                format!("directory access must be `ro` or `rw`, got {other:?}"),
                            );
                            continue;
                        }
                    };
                    caps.dirs.insert(key.value, access);
                }
            } else {
                self.err(
                    loc(n),
                    "`capabilities.dirs` must be a mapping of PATH: ro|rw",
                );
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let (pipeline, mut diags) = parse("p.yaml", PathBuf::from("/"), text);
        if let Some(p) = &pipeline {
            diags.extend(super::super::validate::validate(
                p,
                &Default::default(),
                &Default::default(),
            ));
        }
        diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.loc.line, d.loc.col, d.message))
            .collect()
    }

    #[test]
    fn a_pipeline_file_over_a_mebibyte_is_refused_before_it_is_read() {
        let one = "  - name: S{i}\n    actions:\n      - { name: A, uses: noop@1 }\n";
        let stages =
            |n: usize| -> String { (0..n).map(|i| one.replace("{i}", &i.to_string())).collect() };
        // A thousand stages of one action each: well within.
        let fits = format!("name: p\nstages:\n{}", stages(1000));
        assert!(fits.len() < MAX_PIPELINE_BYTES / 10, "{}", fits.len());
        let (read, diags) = parse("p.yaml", PathBuf::from("/"), &fits);
        assert!(diags.is_empty() && read.is_some_and(|p| p.stages.len() == 1000));
        let huge = format!("name: p\nstages:\n{}", stages(20_000));
        assert!(huge.len() > MAX_PIPELINE_BYTES);
        let found = problems(&huge);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("1:1: the pipeline file is")
                && found[0].contains("at most 1024 KiB"),
            "{found:?}"
        );
    }

    #[test]
    fn deeply_nested_yaml_is_refused_with_its_position_not_a_stack_overflow() {
        // Block nesting: marked-yaml bounds flow nesting only, and its tree build recurses.
        let sequences = format!("{}x", "- ".repeat(20_000));
        let mappings: String = (0..1_400)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect::<String>()
            + &" ".repeat(1_400)
            + "x";
        for text in [sequences, mappings] {
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].contains("nested more than 64 levels deep"),
                "{found:?}"
            );
        }
        let (_, d) = parse("p.yaml", PathBuf::from("/"), &"- ".repeat(100));
        assert_eq!((d[0].loc.line, d[0].loc.col), (1, 2 * 64 + 1));
        // Nesting within the limit is loaded as before.
        let shallow = format!("name: x\nstages: {}{}\n", "[".repeat(60), "]".repeat(60));
        assert!(
            !problems(&shallow).iter().any(|p| p.contains("nested")),
            "{:?}",
            problems(&shallow)
        );
    }

    #[test]
    fn a_second_yaml_document_is_refused_with_its_line() {
        let text = "name: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n---\nname: y\nstages: []\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("4:1: a second YAML document"),
            "{found:?}"
        );
        // One document, with or without its explicit markers, is fine.
        let one =
            "---\nname: x\nstages:\n  - { name: S, actions: [{ name: A, uses: noop@1 }] }\n...\n";
        assert!(
            !problems(one).iter().any(|p| p.contains("document")),
            "{:?}",
            problems(one)
        );
    }

    #[test]
    fn an_unquoted_with_value_cut_at_a_hash_brace_is_reported_at_the_comment() {
        let text = "name: x\nvariables: { v: a }\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: noop@1\n        with:\n          run: echo #{variables.v}\n          ok: \"echo #{variables.v}\"\n          fine: 'echo #{variables.v}'\n          also: echo#{variables.v}\n          block: |\n            echo #{variables.v}\n          note: echo # a comment\n";
        let found: Vec<String> = problems(text)
            .into_iter()
            .filter(|p| p.contains("comment"))
            .collect();
        assert_eq!(
            found,
            ["9:21: `with.run`: `#{` starts a YAML comment here; quote the value"]
        );
        let empty = "name: x\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: noop@1\n        with:\n          run: #{variables.v}\n";
        assert!(
            problems(empty)
                .iter()
                .any(|p| p.starts_with("8:16: `with.run`: `#{` starts a YAML comment")),
            "{:?}",
            problems(empty)
        );
        // In a custom rule's `with:` too, and after a tab.
        let rule = "name: x\nstages:\n  - name: S\n    before_entry:\n      result: FAIL\n      rules:\n        - rule: ./r.wasm\n          with:\n            k: a\t#{variables.v}\n    actions: [{ name: A, uses: noop@1 }]\n";
        assert!(
            problems(rule)
                .iter()
                .any(|p| p.starts_with("9:18: `with.k`: `#{` starts a YAML comment")),
            "{:?}",
            problems(rule)
        );
    }

    #[test]
    fn a_backoff_multiplier_of_one_or_less_is_refused() {
        for (m, refused) in [("1", true), ("1.0", true), ("0.5", true), ("1.5", false)] {
            let text = format!(
                "name: x\nstages:\n  - name: S\n    actions:\n      - name: A\n        uses: noop@1\n        retry: {{ max_attempts: 3, backoff: {{ multiplier: {m} }} }}\n"
            );
            let found = problems(&text);
            assert_eq!(
                found
                    .iter()
                    .any(|p| p.contains("`retry.backoff.multiplier` must be")),
                refused,
                "{m}: {found:?}"
            );
        }
    }

    #[test]
    fn names_that_would_make_an_empty_subject_token_are_refused() {
        for bad in [".a", "a.", "...", "a..b"] {
            let text = format!(
                "name: \"{bad}\"\nstages:\n  - name: \"{bad}\"\n    actions:\n      - {{ name: \"{bad}\", uses: noop@1, outputs: [\"{bad}\"], namespace: \"{bad}\" }}\n"
            );
            let found = problems(&text);
            for what in [
                "pipeline name",
                "stage name",
                "action name",
                "artifact name",
                "namespace",
            ] {
                assert!(
                    found
                        .iter()
                        .any(|p| p.contains(&format!("{what} \"{bad}\" must be"))),
                    "{what} {bad:?} passed: {found:?}"
                );
            }
        }
        for good in ["a", "a.b", "v1.2.3", "a-b_c"] {
            assert!(super::super::is_valid_name(good), "{good}");
        }
    }
}
