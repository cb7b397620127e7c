//! Live progress of a run: one line per change of state, colored on a terminal.
use sluice_engine::bus::{Event, Kind};
use sluice_engine::local::History;
use sluice_engine::local::LogLine;
use sluice_engine::model::units::short_duration;
use sluice_engine::scheduler::{Execution, Status};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How to print.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// ANSI colors.
    pub color: bool,
    /// Print on stderr (stdout is reserved for --json).
    pub to_stderr: bool,
}

impl Style {
    fn paint(&self, status: Status, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match status {
            Status::Succeeded => "32",
            Status::Failed => "31",
            Status::InProgress => "36",
            _ => "33",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
    /// Print a line.
    pub fn out(&self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn symbol(status: Status) -> &'static str {
    match status {
        Status::InProgress => "▶",
        Status::Succeeded => "✓",
        Status::Failed => "✗",
        Status::Stopped | Status::Stopping => "■",
        Status::Abandoned => "⊘",
        _ => "·",
    }
}

/// Print events (and, when given, live log lines) until the execution ends.
pub fn spawn(
    mut events: broadcast::Receiver<Event>,
    mut logs: Option<mpsc::UnboundedReceiver<(String, String, LogLine)>>,
    style: Style,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(e) => {
                        style.out(&format_event(&e, style));
                        if e.kind == Kind::Pipeline && e.status.is_terminal() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => style.out(&format!("  ({} skipped)", sluice_engine::model::count(n, "progress event"))),
                    Err(_) => break,
                },
                Some((stage, action, line)) = async { match logs.as_mut() { Some(l) => l.recv().await, None => std::future::pending().await } } => {
                    style.out(&format!("      {stage}/{action} | {}", line.message));
                }
            }
        }
    })
}

/// One line for one event.
pub fn format_event(e: &Event, style: Style) -> String {
    let took = e
        .duration_ms
        .filter(|_| e.status.is_terminal())
        .map(|ms| format!(" in {}", short_duration(Duration::from_millis(ms))))
        .unwrap_or_default();
    let status = style.paint(e.status, &format!("{} {}", symbol(e.status), e.status));
    match e.kind {
        Kind::Pipeline => format!(
            "{status} pipeline {} ({}){took}",
            e.pipeline, e.execution_id
        ),
        Kind::Stage => format!(
            "  {status} stage {}{took}",
            e.stage.as_deref().unwrap_or("")
        ),
        Kind::Action => {
            let attempt = match e.attempt {
                Some(a) if a > 1 => format!(" (attempt {a})"),
                _ => String::new(),
            };
            let detail = match (&e.detail, e.status.is_terminal()) {
                (Some(d), true) if d.starts_with("(cached from ") => format!(" {d}"),
                (Some(d), true) => format!(": {}", d.lines().next().unwrap_or("")),
                _ => String::new(),
            };
            format!(
                "    {status} {}/{}{attempt}{took}{detail}",
                e.stage.as_deref().unwrap_or(""),
                e.action.as_deref().unwrap_or("")
            )
        }
        Kind::Approval => format!(
            "    {} {}/{} waits for approval: {}",
            style.paint(Status::InProgress, "?"),
            e.stage.as_deref().unwrap_or(""),
            e.action.as_deref().unwrap_or(""),
            e.approval.as_ref().map(|a| a.how.as_str()).unwrap_or("")
        ),
        Kind::Trigger => format!(
            "{status} trigger for {} rejected: {}",
            e.pipeline,
            e.detail.as_deref().unwrap_or("")
        ),
    }
}

/// After the run: where to look next, and for a failure the error and the log's last lines.
pub fn summary(exec: &Execution, history: &History, style: Style) {
    for stage in &exec.stages {
        for a in stage.actions.iter().filter(|a| a.status == Status::Failed) {
            style.out(&format!(
                "\n{} {}/{} failed:",
                style.paint(Status::Failed, "✗"),
                stage.name,
                a.name
            ));
            for line in a.error.as_deref().unwrap_or("").lines() {
                style.out(&format!("    {line}"));
            }
            if let Ok(lines) = history.log(&exec.execution_id, &stage.name, &a.name) {
                let tail: Vec<_> = lines.iter().filter(|l| l.attempt == a.attempt).collect();
                if !tail.is_empty() {
                    style.out("  last log lines:");
                    for l in tail.iter().skip(tail.len().saturating_sub(10)) {
                        style.out(&format!("    | {}", l.message));
                    }
                }
            }
        }
    }
    let data = data_flag(history.data());
    style.out(&format!(
        "\nexecution {}: sluice show {0}{data} · sluice logs {0}{data}",
        exec.execution_id
    ));
}

/// ` --data DIR` when the commands the footer suggests would not find the data directory from
/// where the user is (a pipeline in another directory keeps its `.sluice` next to it).
fn data_flag(data: &std::path::Path) -> String {
    let default = std::env::var_os("SLUICE_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".sluice".into());
    let real = |p: &std::path::Path| p.canonicalize().ok();
    if real(data).is_some() && real(data) == real(&default) {
        return String::new();
    }
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|c| c.canonicalize().ok());
    let absolute = real(data).unwrap_or_else(|| data.to_path_buf());
    let shown = cwd
        .as_deref()
        .and_then(|c| absolute.strip_prefix(c).ok())
        .map(|p| p.to_path_buf())
        .unwrap_or(absolute);
    let text = shown.display().to_string();
    if text
        .chars()
        .any(|c| c.is_whitespace() || "'\"$`\\".contains(c))
    {
        format!(" --data '{}'", text.replace('\'', "'\\''"))
    } else {
        format!(" --data {text}")
    }
}
