//! Trigger events: the JSON a publisher sends to `sluice.<tenant>.trigger.<pipeline>`, and
//! the pipeline's git filters that decide whether a push starts it.
//!
//! ```json
//! {
//!   "id": "push-4f1c2e",                      // required: one id, at most one execution
//!   "source": {                               // optional: where the change comes from
//!     "type": "git",                          // git | manual | schedule | webhook | <anything>
//!     "repository": "https://example.com/acme/app.git",
//!     "ref": "refs/heads/main",               // or refs/tags/v1.2.0
//!     "commit": "9fceb02…",
//!     "changed_files": ["src/main.rs"],
//!     "pusher": "alice"
//!   },
//!   "variables": { "target": "/srv/site" },  // optional: overrides of pipeline variables
//!   "data": { "build": "nightly" }           // optional: its string fields are #{trigger.data.KEY}
//! }
//! ```
//!
//! Fields Sluice does not know are accepted and ignored (other producers add their own). A
//! CloudEvents 1.0 event in structured mode (a JSON object with `specversion`) is taken too:
//! `id` is the event id, `type` is `#{trigger.type}`, `source` is `#{trigger.repository}`, and
//! `data`'s `ref`, `commit` and `pusher` (strings) are the git fields, every string field of
//! `data` also `#{trigger.data.KEY}` (with `subject` there when `data` has none).
use crate::model::{GitFilter, Patterns, Triggers};
use crate::scheduler::TriggerInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A trigger event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TriggerEvent {
    /// Unique id of the event; a second event with the same id starts nothing.
    pub id: String,
    /// Where the change comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Pipeline variable overrides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Whatever else the producer sends: its top-level string fields are `#{trigger.data.KEY}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The change behind an event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Source {
    /// `git`, `manual`, `schedule`, `webhook`, ...
    #[serde(rename = "type", default = "default_kind")]
    pub kind: String,
    /// Repository URL or path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Files the push changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_files: Vec<String>,
    /// Who pushed (or started) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<String>,
}

fn default_kind() -> String {
    "nats".to_string()
}

impl TriggerEvent {
    /// Parse and check an event.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not a trigger event: {e}"))?;
        let event = if value.get("specversion").is_some() {
            cloud_event(&value)?
        } else {
            serde_json::from_value(value).map_err(|e| format!("not a trigger event: {e}"))?
        };
        if event.id.trim().is_empty() {
            return Err("not a trigger event: `id` is empty".into());
        }
        if event.id.len() > 256 {
            return Err("not a trigger event: `id` is longer than 256 bytes".into());
        }
        Ok(event)
    }

    /// What the execution records about it.
    pub fn info(&self) -> TriggerInfo {
        let source = self.source.clone().unwrap_or_default();
        TriggerInfo {
            event_id: self.id.clone(),
            kind: if self.source.is_some() {
                source.kind
            } else {
                "nats".into()
            },
            started_by: source.pusher,
            repository: source.repository,
            git_ref: source.git_ref,
            commit: source.commit,
            data: string_fields(self.data.as_ref()),
        }
    }
}

/// The top-level string fields of an event's `data` (at most 64, each at most 4 KiB: they are
/// kept in the execution record).
fn string_fields(data: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    data.and_then(|d| d.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .filter(|(k, v)| k.len() <= 256 && v.len() <= 4096)
                .take(64)
                .collect()
        })
        .unwrap_or_default()
}

/// A CloudEvents 1.0 event in structured mode, as a trigger event (see the module's words).
fn cloud_event(v: &serde_json::Value) -> Result<TriggerEvent, String> {
    let text = |o: Option<&serde_json::Value>, k: &str| {
        o.and_then(|o| o.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    if text(Some(v), "specversion").as_deref() != Some("1.0") {
        return Err("not a trigger event: only CloudEvents `specversion` 1.0 is understood".into());
    }
    let id = text(Some(v), "id").ok_or("not a trigger event: a CloudEvent needs `id`")?;
    let data = v.get("data");
    let mut fields = data
        .cloned()
        .unwrap_or(serde_json::Value::Object(Default::default()));
    if let (Some(o), Some(subject)) = (fields.as_object_mut(), text(Some(v), "subject")) {
        o.entry("subject").or_insert(subject.into());
    }
    Ok(TriggerEvent {
        id,
        source: Some(Source {
            kind: text(Some(v), "type").unwrap_or_else(default_kind),
            repository: text(Some(v), "source"),
            git_ref: text(data, "ref"),
            commit: text(data, "commit"),
            changed_files: Vec::new(),
            pusher: text(data, "pusher"),
        }),
        variables: BTreeMap::new(),
        data: Some(fields),
    })
}

/// A CloudEvent in the NATS binding's binary mode (its attributes in `ce-` headers, its data
/// the message body) as the structured-mode JSON [`TriggerEvent::parse`] reads; `None` when the
/// headers carry no `ce-specversion` (an ordinary message).
pub fn structured_from_binary<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body: &[u8],
) -> Option<Vec<u8>> {
    let mut event = serde_json::Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(attribute) = lower.strip_prefix("ce-")
            && !attribute.is_empty()
            && attribute != "data"
        {
            event.insert(attribute.to_string(), value.into());
        }
    }
    if !event.contains_key("specversion") {
        return None;
    }
    // JSON data stays JSON; anything else is kept as text.
    let data = serde_json::from_slice::<serde_json::Value>(body)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned().into());
    event.insert("data".into(), data);
    serde_json::to_vec(&event).ok()
}

fn matches(patterns: &[crate::model::Located<String>], value: &str) -> bool {
    patterns.iter().any(|p| {
        globset::GlobBuilder::new(&p.value)
            .literal_separator(true)
            .build()
            .map(|g| g.compile_matcher().is_match(value))
            .unwrap_or(false)
    })
}

/// Whether `value` is selected: included (or no includes) and not excluded. Exclude wins.
fn selected(p: &Patterns, value: &str) -> bool {
    (p.include.is_empty() || matches(&p.include, value)) && !matches(&p.exclude, value)
}

fn filter_accepts(f: &GitFilter, git_ref: &str, files: &[String]) -> bool {
    let name_ok = if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        f.branches.as_ref().is_some_and(|p| selected(p, branch))
    } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        f.tags.as_ref().is_some_and(|p| selected(p, tag))
    } else {
        // A bare name is a branch.
        f.branches.as_ref().is_some_and(|p| selected(p, git_ref))
    };
    let files_ok = match &f.file_paths {
        None => true,
        Some(p) => files.iter().any(|file| selected(p, file)),
    };
    name_ok && files_ok
}

/// Whether the pipeline's triggers accept the event: events that are not git pushes, and
/// every event of a pipeline without git filters, are accepted. `Err` says why not.
pub fn accepts(triggers: &Triggers, event: &TriggerEvent) -> Result<(), String> {
    let Some(source) = &event.source else {
        return Ok(());
    };
    if triggers.git.is_empty() || source.kind != "git" {
        return Ok(());
    }
    let Some(git_ref) = &source.git_ref else {
        return Err(
            "filtered out: the pipeline has git filters and the event has no `source.ref`".into(),
        );
    };
    if triggers
        .git
        .iter()
        .any(|f| filter_accepts(f, git_ref, &source.changed_files))
    {
        Ok(())
    } else {
        Err(format!(
            "filtered out: no git filter of the pipeline matches ref `{git_ref}` with changed files {:?}",
            source.changed_files
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Loc, Located};

    fn pats(include: &[&str], exclude: &[&str]) -> Option<Patterns> {
        let l = |v: &&str| Located {
            value: v.to_string(),
            loc: Loc { line: 1, col: 1 },
        };
        Some(Patterns {
            include: include.iter().map(l).collect(),
            exclude: exclude.iter().map(l).collect(),
        })
    }

    fn push(git_ref: &str, files: &[&str]) -> TriggerEvent {
        TriggerEvent {
            id: "e".into(),
            source: Some(Source {
                kind: "git".into(),
                git_ref: Some(git_ref.into()),
                changed_files: files.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            variables: BTreeMap::new(),
            data: None,
        }
    }

    #[test]
    fn git_filters_like_codepipeline() {
        let triggers = Triggers {
            git: vec![
                GitFilter {
                    branches: pats(&["main", "release/*"], &["release/old*"]),
                    file_paths: pats(&["src/**", "Cargo.toml"], &["src/docs/**"]),
                    ..Default::default()
                },
                GitFilter {
                    tags: pats(&["v*"], &["v0.*"]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let cases: &[(&str, &[&str], bool)] = &[
            ("refs/heads/main", &["src/lib.rs"], true),
            ("refs/heads/main", &["README.md"], false), // no included file
            ("refs/heads/main", &["src/docs/a.md"], false), // exclude wins
            ("refs/heads/main", &["src/docs/a.md", "Cargo.toml"], true), // one file is enough
            ("refs/heads/release/1.2", &["src/a.rs"], true),
            ("refs/heads/release/old-1", &["src/a.rs"], false), // excluded branch
            ("refs/heads/release/1/2", &["src/a.rs"], false),   // `*` stops at `/`
            ("refs/heads/feature", &["src/a.rs"], false),
            ("refs/tags/v1.0.0", &[], true), // the tag filter has no paths
            ("refs/tags/v0.9", &[], false),
            ("refs/tags/main", &[], false), // a tag is not a branch
        ];
        for (git_ref, files, want) in cases {
            assert_eq!(
                accepts(&triggers, &push(git_ref, files)).is_ok(),
                *want,
                "{git_ref} {files:?}"
            );
        }
        // Without git filters every push is accepted; non-git events always are.
        assert!(accepts(&Triggers::default(), &push("refs/heads/x", &[])).is_ok());
        assert!(
            accepts(
                &triggers,
                &TriggerEvent {
                    id: "m".into(),
                    ..Default::default()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        assert!(
            TriggerEvent::parse(b"not json")
                .unwrap_err()
                .contains("not a trigger event")
        );
        assert!(
            TriggerEvent::parse(br#"{"source": {}}"#)
                .unwrap_err()
                .contains("id")
        );
        assert!(
            TriggerEvent::parse(br#"{"id": " "}"#)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            TriggerEvent::parse(br#"{"specversion": "0.3", "id": "a"}"#)
                .unwrap_err()
                .contains("1.0")
        );
        let e = TriggerEvent::parse(br#"{"id": "a", "source": {"type": "git", "ref": "refs/heads/main"}, "variables": {"k": "v"}}"#).unwrap();
        assert_eq!(e.info().git_ref.as_deref(), Some("refs/heads/main"));
    }

    /// Producers other than Sluice's own publishers: fields Sluice does not know are kept out
    /// of the way, `data`'s string fields become `#{trigger.data.KEY}`, and a CloudEvent (as
    /// Knative, Argo Events and Tekton Triggers send them) is read by its own field names.
    #[test]
    fn a_binary_mode_cloudevent_reads_like_a_structured_one() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-1"),
            ("ce-type", "dev.tekton.event"),
            ("ce-source", "https://git.example.com/acme/app"),
            ("Content-Type", "application/json"),
        ];
        let body = br#"{"ref": "refs/heads/main", "commit": "abc", "build": "7"}"#;
        let json = structured_from_binary(headers, body).unwrap();
        let event = TriggerEvent::parse(&json).unwrap();
        assert_eq!(event.id, "bin-1");
        let info = event.info();
        assert_eq!(info.kind, "dev.tekton.event");
        assert_eq!(info.commit.as_deref(), Some("abc"));
        assert_eq!(info.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(info.data.get("build").map(String::as_str), Some("7"));
        // Not a CloudEvent: left as it is.
        assert!(structured_from_binary([("Nats-Msg-Id", "x")], b"{}").is_none());
        // Text data is kept as text.
        let text = structured_from_binary(
            [("ce-specversion", "1.0"), ("ce-id", "t"), ("ce-type", "x")],
            b"plain",
        )
        .unwrap();
        assert!(
            String::from_utf8(text)
                .unwrap()
                .contains("\"data\":\"plain\"")
        );
    }

    #[test]
    fn events_from_other_producers_and_cloudevents_are_taken() {
        let e = TriggerEvent::parse(
            br#"{"id": "a", "colour": 1, "source": {"type": "git", "ref": "refs/tags/v1.2", "commit": "9fc", "mood": "ok"}, "data": {"build": "nightly", "n": 3}}"#,
        )
        .unwrap();
        let info = e.info();
        assert_eq!(info.value("tag").as_deref(), Some("v1.2"));
        assert_eq!(info.value("branch").as_deref(), Some(""));
        assert_eq!(info.value("commit").as_deref(), Some("9fc"));
        assert_eq!(info.value("data.build").as_deref(), Some("nightly"));
        assert_eq!(info.value("data.n").as_deref(), Some(""), "not a string");
        assert_eq!(info.value("colour"), None);

        let ce = TriggerEvent::parse(
            br#"{"specversion": "1.0", "id": "ce-42", "type": "dev.knative.push", "source": "https://git.example.com/acme/app", "subject": "main", "data": {"ref": "refs/heads/main", "commit": "abc123", "pusher": "ana", "build": "7"}}"#,
        )
        .unwrap();
        let info = ce.info();
        assert_eq!(info.event_id, "ce-42");
        for (key, want) in [
            ("id", "ce-42"),
            ("type", "dev.knative.push"),
            ("repository", "https://git.example.com/acme/app"),
            ("ref", "refs/heads/main"),
            ("branch", "main"),
            ("commit", "abc123"),
            ("pusher", "ana"),
            ("data.build", "7"),
            ("data.subject", "main"),
        ] {
            assert_eq!(info.value(key).as_deref(), Some(want), "{key}");
        }
        assert!(
            TriggerEvent::parse(br#"{"specversion": "1.0", "type": "x"}"#)
                .unwrap_err()
                .contains("id")
        );
    }
}
