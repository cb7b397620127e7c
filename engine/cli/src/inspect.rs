//! Read-only commands: show, logs, plugin describe, artifact ls/get/verify.
use sluice_engine::local::{Digest, Entry, History};
use sluice_engine::model::count;
use sluice_engine::model::units::short_duration;
use sluice_engine::scheduler::Execution;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The execution `id` from the local history, if it is there.
pub fn local_execution(data: &Path, id: &str) -> anyhow::Result<Option<Execution>> {
    if !data.is_dir() {
        return Ok(None);
    }
    History::open(data)?.execution(id)
}

/// Print an execution record in full: for `sluice show`, local or from the service.
pub fn print_execution(e: &Execution, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    let version = if e.pipeline_version > 0 {
        format!(" v{}", e.pipeline_version)
    } else {
        String::new()
    };
    println!(
        "execution {}  pipeline {}{version}  {}  ({} mode)",
        e.execution_id, e.pipeline, e.status, e.mode
    );
    if let Some(t) = &e.trigger {
        let git = [
            t.repository.as_deref(),
            t.git_ref.as_deref(),
            t.commit.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        println!(
            "trigger   {} {}{}{}",
            t.kind,
            t.event_id,
            t.started_by
                .as_ref()
                .map(|s| format!(" by {s}"))
                .unwrap_or_default(),
            if git.is_empty() {
                String::new()
            } else {
                format!(" ({git})")
            }
        );
    }
    if let Some(r) = &e.rollback {
        println!(
            "rollback  of stage {} to {}{}",
            r.stage,
            r.target,
            r.after
                .as_ref()
                .map(|a| format!(" after {a} failed"))
                .unwrap_or_default()
        );
    }
    if let Some(by) = &e.superseded_by {
        println!("superseded by {by}");
    }
    if let Some(reason) = &e.stop_reason {
        println!("stopped   {reason}");
    }
    if let Some(s) = e.started_at {
        println!("started   {s}");
    }
    if let (Some(s), Some(f)) = (e.started_at, e.finished_at) {
        println!("finished  {f} ({})", short_duration(f.since(s)));
    }
    for (k, v) in &e.variables {
        println!("variable  {k} = {v}");
    }
    for (si, stage) in e.stages.iter().enumerate() {
        if e.entering == Some(si) {
            println!("\n(waiting to enter stage {})", stage.name);
        }
        println!("\nstage {}  {}", stage.name, stage.status);
        if let Some(c) = &stage.condition {
            println!("  condition {c}");
        }
        for a in &stage.actions {
            let took = match (a.started_at, a.finished_at) {
                (Some(s), Some(f)) => short_duration(f.since(s)),
                _ => "-".into(),
            };
            println!(
                "  action {}  {}  attempt {}  {took}  {} ({})",
                a.name, a.status, a.attempt, a.plugin.reference, a.plugin.digest
            );
            for (k, v) in &a.config {
                println!("    with      {k} = {v}");
            }
            for (k, v) in &a.inputs {
                println!("    input     {k} = {v}");
            }
            for (k, v) in &a.artifacts {
                println!("    output    {k} = {v}");
            }
            for (k, v) in &a.variables {
                println!("    variable  {k} = {v}");
            }
            if let Some(from) = &a.cached_from {
                println!(
                    "    cached    not run: the same plugin, configuration and inputs succeeded in {from}"
                );
            }
            if let Some(s) = &a.summary {
                println!("    summary   {s}");
            }
            if let Some(w) = &a.waiting {
                println!(
                    "    waiting   {:?} since {}{}",
                    w.wake,
                    w.since,
                    w.deadline
                        .map(|d| format!(" until {d}"))
                        .unwrap_or_default()
                );
                for key in ["approvers", "custom_data", "external_link"] {
                    if let Some(v) = a.kept.get(key) {
                        println!("    {:<9} {v}", key.replace('_', " "));
                    }
                }
            }
            for d in &a.decisions {
                println!(
                    "    decision  {} by {} at {}{}",
                    if d.approved { "approved" } else { "rejected" },
                    d.by,
                    d.at,
                    d.summary
                        .as_ref()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                );
            }
            if let Some(err) = &a.error {
                println!("    error     {}", err.replace('\n', "\n              "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe_plugin(
    reference: &str,
    json: bool,
    data: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    // The data folder's compile cache: given, or the current folder's `.sluice` when there
    // is one (where `sluice run` keeps it for a pipeline here). Otherwise nothing is kept.
    let data = data
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from(".sluice")).filter(|d| d.is_dir()));
    let plugin = sluice_engine::local::describe_plugin(
        reference,
        &std::env::current_dir()?,
        data.as_deref(),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&*plugin)?);
        return Ok(ExitCode::SUCCESS);
    }
    let d = &plugin.description;
    println!(
        "{} {} ({})  {}",
        d.name, d.version, d.category, plugin.digest
    );
    println!("{}", d.summary);
    println!(
        "side effects: {}",
        if d.side_effects { "yes" } else { "no" }
    );
    if !d.config.is_empty() {
        println!("configuration:");
        for k in &d.config {
            let req = if k.required { "required" } else { "optional" };
            let default = k
                .default_value
                .as_deref()
                .map(|v| format!(" [default: {v}]"))
                .unwrap_or_default();
            let ty =
                k.ty.as_ref()
                    .map(|t| format!(" [{}]", t.expected()))
                    .unwrap_or_default();
            println!("  {:<12} {req:<8} {}{default}{ty}", k.name, k.description);
        }
    }
    if !d.capabilities.is_empty() {
        println!("capabilities:");
        for c in &d.capabilities {
            println!("  {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_digest(s: &str) -> anyhow::Result<Digest> {
    s.parse().map_err(anyhow::Error::msg)
}

pub fn artifact_ls(data: &Path, sealed: Sealed, digest: &str) -> anyhow::Result<ExitCode> {
    for (path, entry) in artifacts(data, sealed)?.artifact_entries(&parse_digest(digest)?)? {
        println!("{}", ls_line(&path, &entry));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `artifact ls`. Names come from whatever the action wrote: control characters
/// (and `\`, so escapes stay unambiguous) are escaped, never sent raw to the terminal.
fn ls_line(path: &Path, entry: &Entry) -> String {
    let path = printable(&path.to_string_lossy());
    match entry {
        Entry::File {
            size,
            executable,
            digest,
            ..
        } => format!(
            "{} {:>10}  {}  {}",
            if *executable { "x" } else { "-" },
            size,
            digest,
            path
        ),
        Entry::Dir { .. } => format!("d {:>10}  {:<71}  {path}/", "", ""),
        Entry::Symlink { target, .. } => {
            format!("l {:>10}  {:<71}  {path} -> {}", "", "", printable(target))
        }
    }
}

/// `s` with control characters and backslashes escaped (`\n`, `\u{1b}`, `\\`).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '\\' {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn artifact_get(
    data: &Path,
    sealed: Sealed,
    digest: &str,
    dest: &Path,
) -> anyhow::Result<ExitCode> {
    let history = artifacts(data, sealed)?;
    if dest.exists() && std::fs::read_dir(dest)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", dest.display());
    }
    let stats = history.artifact_get(&parse_digest(digest)?, dest)?;
    println!(
        "{}, {}, verified, written to {}",
        count(stats.files, "file"),
        count(stats.bytes, "byte"),
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn artifact_verify(
    data: &Path,
    sealed: Sealed,
    digest: Option<&str>,
    repair: bool,
) -> anyhow::Result<ExitCode> {
    let artifact = digest.map(parse_digest).transpose()?;
    let check = artifacts(data, sealed)?.check_blobs(artifact.as_ref(), repair)?;
    let what = digest.unwrap_or("the artifact store");
    for d in &check.missing {
        eprintln!("{d} is missing");
    }
    for d in &check.corrupted {
        if repair {
            eprintln!("{d} is corrupted: removed");
        } else {
            eprintln!("{d} is corrupted");
        }
    }
    if check.corrupted.is_empty() && check.missing.is_empty() {
        println!(
            "{what}: ok ({}, {})",
            count(check.intact, "blob"),
            count(check.bytes, "byte")
        );
        return Ok(ExitCode::SUCCESS);
    }
    if repair && check.missing.is_empty() {
        println!(
            "{what}: removed {}; a run that makes their content stores it again ({} intact)",
            count(check.corrupted.len() as u64, "corrupted blob"),
            count(check.intact, "blob"),
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !check.corrupted.is_empty() && !repair {
        eprintln!(
            "{}: run `sluice artifact verify{} --repair` to remove them; a run that makes their content stores it again",
            count(check.corrupted.len() as u64, "corrupted blob"),
            digest.map(|d| format!(" {d}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::from(1))
}

/// Who runs an in-progress attempt, for `sluice status` (the service fills it in from the
/// engines' leases): "running on build-1/4242, heartbeat 3s ago", or when the heartbeats
/// stopped "engine lost: build-1/4242, last heartbeat 12:03:11; redelivery at 12:03:41".
pub fn holder_line(a: &sluice_engine::scheduler::ActionRun) -> Option<String> {
    let h = a.held_by.as_ref()?;
    let now = sluice_engine::clock::now();
    Some(if h.lost {
        let when = if now.0 >= h.redelivery_at.0 {
            "due now".to_string()
        } else {
            format!(
                "at {} (in {})",
                h.redelivery_at,
                short_duration(h.redelivery_at.since(now))
            )
        };
        format!(
            "engine lost: {}, last heartbeat {}; redelivery to another engine {when}",
            h.engine, h.heartbeat
        )
    } else {
        format!(
            "running on {}, heartbeat {} ago",
            h.engine,
            short_duration(now.since(h.heartbeat))
        )
    })
}

/// What a waiting action waits for, for `sluice status`: "waiting for approval since 12:03:41
/// (5m ago) from ana, bo: release 1.2 (https://…)".
pub fn waiting_line(a: &sluice_engine::scheduler::ActionRun) -> Option<String> {
    let w = a.waiting.as_ref()?;
    let what = match w.wake {
        sluice_engine::scheduler::Wake::Approval => "approval",
        _ => "an event",
    };
    let ago = sluice_engine::clock::now().since(w.since);
    let mut line = format!(
        "waiting for {what} since {} ({} ago)",
        w.since,
        short_duration(ago)
    );
    if let Some(approvers) = a.kept.get("approvers") {
        line.push_str(&format!(" from {approvers}"));
    }
    if let Some(data) = a.kept.get("custom_data") {
        line.push_str(&format!(": {data}"));
    }
    if let Some(link) = a.kept.get("external_link") {
        line.push_str(&format!(" ({link})"));
    }
    if let Some(deadline) = w.deadline {
        line.push_str(&format!("; expires {deadline}"));
    }
    Some(line)
}

/// Artifacts sealed at rest (`sluice run --encrypt`), read through the data folder's key: the
/// `artifact` commands open them first ([`sluice_engine::local::sealed_artifacts`]).
pub type Sealed = Option<std::sync::Arc<dyn sluice_engine::artifacts::BlobStore>>;

/// The data folder's history, its sealed artifacts included.
fn artifacts(data: &Path, sealed: Sealed) -> anyhow::Result<History> {
    Ok(History::open(data)?.with_sealed(sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_ls_escapes_control_characters_in_names() {
        let digest = Digest::of(b"x");
        let file = Entry::File {
            name: String::new(),
            digest,
            size: 1,
            executable: false,
        };
        let line = ls_line(Path::new("a\x1b[2Jb\nc\\d"), &file);
        assert!(line.ends_with("a\\u{1b}[2Jb\\nc\\\\d"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let link = Entry::Symlink {
            name: String::new(),
            target: "t\rx".into(),
        };
        let line = ls_line(Path::new("l\u{7}"), &link);
        assert!(line.ends_with("l\\u{7} -> t\\rx"), "{line}");
        assert_eq!(
            ls_line(Path::new("src/main.rs"), &file).rsplit("  ").next(),
            Some("src/main.rs")
        );
    }
}
