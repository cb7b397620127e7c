//! Action logs: one JSON-lines file per action under `<data>/logs/<execution>/<stage>/`.
use crate::runtime::{Level, LogSink};
use crate::scheduler::Timestamp;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLine {
    /// When.
    pub at: Timestamp,
    /// Attempt that wrote it.
    pub attempt: u32,
    /// Level.
    pub level: Level,
    /// Text.
    pub message: String,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// Where engines share action logs (on NATS: the `sluice-logs` Object Store bucket), so any
/// engine can show an attempt another one ran.
pub trait LogArchive: Send + Sync {
    /// Keep one attempt's lines, read from `lines` (a file of JSON lines the caller removes
    /// once this ends). A failure is logged; the log stays local.
    fn put(
        &self,
        attempt: AttemptRef,
        lines: PathBuf,
    ) -> futures_util::future::BoxFuture<'static, ()>;
    /// One attempt's lines, if kept.
    fn get(
        &self,
        attempt: AttemptRef,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Vec<LogLine>>, ArchiveError>>;
}

/// The shared log archive could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the log archive: {0}")]
pub struct ArchiveError(pub String);

/// One attempt of one action, as the log archive files it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRef {
    /// Tenant.
    pub tenant: String,
    /// Execution id.
    pub execution: String,
    /// Stage name.
    pub stage: String,
    /// Action name.
    pub action: String,
    /// Attempt, from 1.
    pub attempt: u32,
}

/// A live copy of log lines for whoever watches a run (the CLI's `--verbose`).
pub type LiveLog = tokio::sync::mpsc::UnboundedSender<(String, String, LogLine)>;

/// Where action logs are kept.
pub struct LogStore {
    root: PathBuf,
    live: Option<LiveLog>,
}

impl LogStore {
    /// Logs under `root`.
    pub fn new(root: PathBuf) -> Self {
        LogStore { root, live: None }
    }

    /// Also send every line to `live`.
    pub fn with_live(mut self, live: LiveLog) -> Self {
        self.live = Some(live);
        self
    }

    fn path(&self, execution: &str, stage: &str, action: &str) -> PathBuf {
        self.root
            .join(execution)
            .join(stage)
            .join(format!("{action}.log"))
    }

    /// A sink for one action attempt. The file is created on the first line.
    pub fn sink(&self, execution: &str, stage: &str, action: &str, attempt: u32) -> ActionLog {
        ActionLog {
            path: self.path(execution, stage, action),
            attempt,
            file: Mutex::new(None),
            live: self
                .live
                .clone()
                .map(|l| (l, stage.to_string(), action.to_string())),
        }
    }

    /// Every line of one action, oldest first.
    pub fn read(
        &self,
        execution: &str,
        stage: &str,
        action: &str,
    ) -> std::io::Result<Vec<LogLine>> {
        read_lines(&self.path(execution, stage, action))
    }

    /// Copy the lines attempt `attempt` of one action logged into a temporary file under the
    /// logs' root, a line at a time (a build's log is not read into memory); `None` if it
    /// logged nothing.
    pub fn copy_attempt(
        &self,
        execution: &str,
        stage: &str,
        action: &str,
        attempt: u32,
    ) -> std::io::Result<Option<tempfile::TempPath>> {
        use std::io::BufRead;
        #[derive(Deserialize)]
        struct Attempt {
            attempt: u32,
        }
        let source = std::fs::File::open(self.path(execution, stage, action))?;
        std::fs::create_dir_all(&self.root)?;
        let mut copy = tempfile::Builder::new()
            .prefix(".archive-")
            .tempfile_in(&self.root)?;
        let mut out = std::io::BufWriter::new(copy.as_file_mut());
        let mut copied = 0u64;
        for line in std::io::BufReader::new(source).split(b'\n') {
            let line = line?;
            if serde_json::from_slice::<Attempt>(&line).is_ok_and(|l| l.attempt == attempt) {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
                copied += 1;
            }
        }
        out.flush()?;
        drop(out);
        Ok((copied > 0).then(|| copy.into_temp_path()))
    }

    /// Whether the action has logged anything (its file exists): a cheap check before reading.
    pub fn exists(&self, execution: &str, stage: &str, action: &str) -> bool {
        self.path(execution, stage, action).exists()
    }

    /// `(stage, action)` of every action of an execution that has a log.
    pub fn actions(&self, execution: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(stages) = std::fs::read_dir(self.root.join(execution)) else {
            return out;
        };
        for stage in stages.flatten() {
            let Ok(actions) = std::fs::read_dir(stage.path()) else {
                continue;
            };
            for a in actions.flatten() {
                if let (Some(s), Some(n)) = (
                    stage.file_name().to_str(),
                    a.file_name().to_str().and_then(|n| n.strip_suffix(".log")),
                ) {
                    out.push((s.to_string(), n.to_string()));
                }
            }
        }
        out.sort();
        out
    }
}

fn read_lines(path: &Path) -> std::io::Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The log of one action attempt.
pub struct ActionLog {
    path: PathBuf,
    attempt: u32,
    file: Mutex<Option<std::fs::File>>,
    live: Option<(LiveLog, String, String)>,
}

impl LogSink for ActionLog {
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        let line = LogLine {
            at: crate::clock::now(),
            attempt: self.attempt,
            level,
            message: message.to_string(),
            fields: fields.to_vec(),
        };
        let mut file = self.file.lock().unwrap();
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            *file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = file.as_mut() {
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            let _ = f.write_all(&bytes);
        }
        if let Some((live, stage, action)) = &self.live {
            let _ = live.send((stage.clone(), action.clone(), line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_attempt_keeps_one_attempts_lines_and_nothing_for_a_silent_one() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().join("logs"));
        for attempt in 1..=3 {
            let sink = logs.sink("e1", "S", "A", attempt);
            for i in 0..1000 {
                sink.log(Level::Info, &format!("attempt {attempt} line {i}"), &[]);
            }
        }
        let copy = logs.copy_attempt("e1", "S", "A", 2).unwrap().unwrap();
        let lines = read_lines(&copy).unwrap();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().all(|l| l.attempt == 2));
        assert_eq!(lines[999].message, "attempt 2 line 999");
        assert!(logs.copy_attempt("e1", "S", "A", 4).unwrap().is_none());
        // The copy goes away with its handle.
        let path = copy.to_path_buf();
        drop(copy);
        assert!(!path.exists());
    }
}
