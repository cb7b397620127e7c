//! `test-report@1`: read JUnit XML from the input artifact and report `Tests`, `Failures`,
//! `Errors`, `Skipped`; fail when failures plus errors exceed `max_failures`, naming the
//! failing tests.
use quick_xml::Reader;
use quick_xml::events::Event;
use sluice_sdk::prelude::*;
use std::path::{Path, PathBuf};

struct TestReport;

#[derive(Default)]
struct Counts {
    tests: u64,
    failures: u64,
    errors: u64,
    skipped: u64,
    failing: Vec<String>,
}

/// Count the `<testcase>` elements of one report and what they contain.
fn read_report(path: &Path, counts: &mut Counts) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = Reader::from_str(&text);
    let mut current: Option<String> = None;
    let mut outcome: Option<&'static str> = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "{}: invalid XML at byte {}: {e}",
                path.display(),
                reader.buffer_position()
            )
        })?;
        let empty = matches!(event, Event::Empty(_));
        match event {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testcase" => {
                let attr = |key: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == key)
                        .and_then(|a| a.unescape_value().ok())
                        .map(|v| v.into_owned())
                };
                let name = attr(b"name").unwrap_or_else(|| "(unnamed)".into());
                let full = match attr(b"classname") {
                    Some(class) if !class.is_empty() => format!("{class}.{name}"),
                    _ => name,
                };
                counts.tests += 1;
                if empty {
                    continue;
                }
                current = Some(full);
                outcome = None;
            }
            Event::Start(e) | Event::Empty(e) if current.is_some() && outcome.is_none() => {
                outcome = match e.name().as_ref() {
                    b"failure" => Some("failure"),
                    b"error" => Some("error"),
                    b"skipped" => Some("skipped"),
                    _ => None,
                };
            }
            Event::End(e) if e.name().as_ref() == b"testcase" => {
                let name = current.take().unwrap_or_default();
                match outcome.take() {
                    Some("failure") => {
                        counts.failures += 1;
                        counts.failing.push(name);
                    }
                    Some("error") => {
                        counts.errors += 1;
                        counts.failing.push(name);
                    }
                    Some(_) => counts.skipped += 1,
                    None => {}
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

fn xml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            xml_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "xml") {
            out.push(path);
        }
    }
    Ok(())
}

impl Action for TestReport {
    fn describe() -> Description {
        Description::new("test-report", env!("CARGO_PKG_VERSION"), Category::Test)
            .summary("Reads JUnit XML reports from its input artifact and fails above a failure threshold")
            .optional_default("path", "report file or directory inside the input artifact (all *.xml below it)", ".")
            .optional_default("max_failures", "failures plus errors allowed before the action fails", "0")
            .typed("max_failures", ConfigType::Integer)
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let input = ctx.single_input()?;
        let rel = config.get("path").unwrap_or(".");
        if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
            return Err(ActionError::Config(format!(
                "`path`: {rel:?} must be relative and stay inside the input"
            )));
        }
        let max: u64 = config.parse_or("max_failures", 0)?;
        let root = ctx.input_dir(input).join(rel);
        let mut files = Vec::new();
        if root.is_dir() {
            xml_files(&root, &mut files).map_err(ActionError::Failed)?;
        } else if root.is_file() {
            files.push(root.clone());
        }
        if files.is_empty() {
            return Err(ActionError::Failed(format!(
                "no JUnit XML report found at {rel} in `{input}`"
            )));
        }
        let mut counts = Counts::default();
        for f in &files {
            read_report(f, &mut counts).map_err(ActionError::Failed)?;
        }
        let summary = format!(
            "{} tests, {} failures, {} errors, {} skipped",
            counts.tests, counts.failures, counts.errors, counts.skipped
        );
        log::info(&format!("{summary} in {} reports", files.len()));
        for name in &counts.failing {
            log::warn(&format!("failed: {name}"));
        }
        if counts.failures + counts.errors > max {
            let shown: Vec<&str> = counts.failing.iter().take(10).map(String::as_str).collect();
            let more = counts.failing.len().saturating_sub(shown.len());
            return Err(ActionError::Failed(format!(
                "{summary} (more than {max} allowed); failing: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )));
        }
        Ok(Outcome::success()
            .var("Tests", counts.tests)
            .var("Failures", counts.failures)
            .var("Errors", counts.errors)
            .var("Skipped", counts.skipped)
            .summary(summary))
    }
}

export_action!(TestReport);
