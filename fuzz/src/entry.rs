//! The fuzzed entry points: every parser that takes bytes from outside. Each takes arbitrary
//! bytes and must return (an error is fine) without panicking, hanging or growing without
//! bound. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and by the engine's
//! `fuzz_corpus` test, which replays the kept corpus and a bounded number of mutations of it
//! on every `cargo test`.
use sluice_api::Request;
use sluice_api::socket::Envelope;
use sluice_core::plugin::{ConfigKey, ConfigType, Description, Plugin};
use sluice_engine::artifacts::tree;
use sluice_engine::model::{self, template};
use sluice_engine::service::{trigger, webhook};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A fuzzed entry point.
pub type Target = fn(&[u8]);

/// The targets, by name (the corpus folder of each is `fuzz/corpus/<name>`).
pub const TARGETS: &[(&str, Target)] = &[
    ("pipeline", pipeline),
    ("template", template),
    ("trigger_event", trigger_event),
    ("webhook", webhook),
    ("tree_manifest", tree_manifest),
    ("control_request", control_request),
];

/// A pipeline file through the parser, then the validator (every `uses:` resolving, by its
/// name's parity, to a plugin that accepts the action's keys or to a resolution error), then
/// its trigger filters against an event.
pub fn pipeline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (parsed, _problems) =
        model::parse::parse("fuzz.yaml", std::path::PathBuf::from("/fuzz"), &text);
    let Some(p) = parsed else { return };
    let mut plugins = model::validate::ResolvedPlugins::new();
    for action in p.stages.iter().flat_map(|s| &s.actions) {
        let uses = action.uses.value.clone();
        let resolved = if uses.len() % 2 == 0 {
            Ok(Arc::new(Plugin {
                reference: uses.clone(),
                digest: "blake3:00".into(),
                description: Description {
                    name: uses.clone(),
                    version: "1.0.0".into(),
                    category: "build".into(),
                    summary: String::new(),
                    config: action
                        .with
                        .keys()
                        .map(|k| ConfigKey {
                            name: k.clone(),
                            required: k.len() % 3 == 0,
                            description: String::new(),
                            default_value: None,
                            // Every type, by the key's length, so typed checks are fuzzed too.
                            ty: match k.len() % 8 {
                                0 => Some(ConfigType::Integer),
                                1 => Some(ConfigType::Boolean),
                                2 => Some(ConfigType::Duration),
                                3 => Some(ConfigType::Size),
                                4 => Some(ConfigType::Url),
                                5 => Some(ConfigType::OneOf(vec!["a".into(), "b c".into()])),
                                6 => Some(ConfigType::Text),
                                _ => None,
                            },
                        })
                        .collect(),
                    capabilities: Vec::new(),
                    side_effects: uses.len() % 4 == 0,
                },
            }))
        } else {
            Err(format!("no plugin `{uses}`"))
        };
        plugins.insert(uses, resolved);
    }
    let overrides: BTreeMap<String, String> = p
        .variables
        .keys()
        .take(2)
        .map(|k| (k.clone(), "x".into()))
        .collect();
    let _ = model::validate::validate(&p, &plugins, &overrides);
    for action in p.stages.iter().flat_map(|s| &s.actions) {
        for value in action.with.values() {
            render(&value.value);
        }
    }
    if let Ok(event) = trigger::TriggerEvent::parse(
        br#"{"id":"e","source":{"type":"git","ref":"refs/heads/main","changed_files":["src/a.rs"]}}"#,
    ) {
        let _ = trigger::accepts(&p.triggers, &event);
    }
}

/// `#{...}` references: listed, then rendered with a lookup that knows some of them.
pub fn template(data: &[u8]) {
    render(&String::from_utf8_lossy(data));
}

fn render(text: &str) {
    let _ = template::references(text);
    let _ = template::render(text, |namespace, key| {
        ((namespace.len() + key.len()) % 2 == 0).then(|| format!("{namespace}.{key}"))
    });
}

/// A trigger event as published (plain or CloudEvents structured), and as CloudEvents binary
/// mode: `name: value` header lines, a NUL byte, the body.
pub fn trigger_event(data: &[u8]) {
    if let Ok(event) = trigger::TriggerEvent::parse(data) {
        let _ = event.info();
    }
    if let Some(nul) = data.iter().position(|b| *b == 0) {
        let head = String::from_utf8_lossy(&data[..nul]);
        let headers: Vec<(&str, &str)> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        if let Some(structured) = trigger::structured_from_binary(headers, &data[nul + 1..])
            && let Ok(event) = trigger::TriggerEvent::parse(&structured)
        {
            let _ = event.info();
        }
    }
}

/// A GitHub webhook delivery: its signature check and its push payload mapped to an event.
pub fn webhook(data: &[u8]) {
    let _ = webhook::signature_valid(b"secret", data, &String::from_utf8_lossy(data));
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(event) = webhook::push_event(Some("delivery"), &payload)
    {
        let _ = event.info();
    }
}

/// An artifact tree manifest as read from the store.
pub fn tree_manifest(data: &[u8]) {
    let _ = tree::decode(data);
}

/// A control API request: a verb on the first line and its JSON body (NATS, HTTP), or a
/// whole socket envelope.
pub fn control_request(data: &[u8]) {
    let (verb, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::new(), data),
    };
    if let Ok(request) = Request::for_verb(verb.trim(), body) {
        let _ = request.check_lengths();
        let _ = request.target();
        let _ = request.role();
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(data)
        && let Some(request) = envelope.request
    {
        let _ = request.check_lengths();
    }
}
