//! An execution's logs as one stream ordered by time, read once or followed live: from the
//! data directory of a local run (or of an embedded service that is not running), or from
//! the service (embedded or NATS) through the `logs` verb.
use sluice_api::Client;
use sluice_api::verbs::{self, LogEntry};
use sluice_engine::local::History;
use sluice_engine::scheduler::Execution;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// How often a followed log is read again.
pub const POLL: Duration = Duration::from_millis(300);

/// One log line and the action that wrote it.
pub struct Line {
    pub stage: String,
    pub action: String,
    pub entry: LogEntry,
}

impl Line {
    /// As `sluice logs` prints it.
    pub fn text(&self) -> String {
        let l = &self.entry;
        let fields: String = l.fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        format!(
            "{}/{} #{} {} {:>5} {}{fields}",
            self.stage,
            self.action,
            l.attempt,
            l.at,
            l.level.to_uppercase(),
            l.message
        )
    }
}

/// Where the lines come from.
pub enum Source<'a> {
    /// The files of a data directory.
    Local(PathBuf),
    /// The service.
    Service(&'a Client),
}

/// Reads the lines of one execution (or one of its actions) that were not read before.
pub struct LogReader<'a> {
    source: Source<'a>,
    id: String,
    only: Option<(String, String)>,
    /// Lines already read, per action (local files) or per attempt (the service).
    seen: HashMap<(String, String, u32), usize>,
    /// Attempts whose log is complete (the service says so).
    complete: HashSet<(String, String, u32)>,
}

impl<'a> LogReader<'a> {
    pub fn new(source: Source<'a>, id: &str, only: Option<(String, String)>) -> Self {
        LogReader {
            source,
            id: id.to_string(),
            only,
            seen: HashMap::new(),
            complete: HashSet::new(),
        }
    }

    fn wanted(&self, stage: &str, action: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|(s, a)| s == stage && a == action)
    }

    /// The lines written since the last call, oldest first, and whether the execution has
    /// ended (no more will come).
    pub async fn poll(&mut self) -> anyhow::Result<(Vec<Line>, bool)> {
        let (mut lines, ended) = match &self.source {
            Source::Local(data) => {
                let data = data.clone();
                self.poll_local(&data).await?
            }
            Source::Service(client) => {
                let client: &Client = client;
                self.poll_service(client).await?
            }
        };
        lines.sort_by_key(|l| l.entry.at);
        Ok((lines, ended))
    }

    async fn poll_local(&mut self, data: &std::path::Path) -> anyhow::Result<(Vec<Line>, bool)> {
        let history = History::open(data)?;
        // Read the state first: lines written before it ended are then all in the files.
        let ended = match history.execution(&self.id) {
            Ok(Some(e)) => e.status.is_terminal(),
            // The `sluice run` that runs it holds the state file.
            Err(_) => false,
            Ok(None) => history
                .service_execution(&self.id)
                .await
                .ok()
                .flatten()
                .is_none_or(|e| e.status.is_terminal()),
        };
        let mut out = Vec::new();
        for (stage, action) in history.logged_actions(&self.id) {
            if !self.wanted(&stage, &action) {
                continue;
            }
            let Ok(lines) = history.log(&self.id, &stage, &action) else {
                continue;
            };
            let seen = self
                .seen
                .entry((stage.clone(), action.clone(), 0))
                .or_default();
            for l in lines.iter().skip(*seen) {
                out.push(Line {
                    stage: stage.clone(),
                    action: action.clone(),
                    entry: LogEntry {
                        at: l.at,
                        attempt: l.attempt,
                        level: format!("{:?}", l.level).to_lowercase(),
                        message: l.message.clone(),
                        fields: l.fields.clone(),
                    },
                });
            }
            *seen = (*seen).max(lines.len());
        }
        Ok((out, ended))
    }

    async fn poll_service(&mut self, client: &Client) -> anyhow::Result<(Vec<Line>, bool)> {
        let exec: Execution = serde_json::from_value(
            client
                .call(&sluice_api::Request::from(verbs::GetExecution {
                    execution_id: self.id.clone(),
                }))
                .await?,
        )?;
        let ended = exec.status.is_terminal();
        let mut out = Vec::new();
        for stage in &exec.stages {
            for action in &stage.actions {
                if !self.wanted(&stage.name, &action.name) {
                    continue;
                }
                for attempt in 1..=action.attempt {
                    let key = (stage.name.clone(), action.name.clone(), attempt);
                    if self.complete.contains(&key) {
                        continue;
                    }
                    let page = client
                        .send(verbs::Logs {
                            execution_id: self.id.clone(),
                            stage: stage.name.clone(),
                            action: action.name.clone(),
                            attempt: Some(attempt),
                        })
                        .await?;
                    let seen = self.seen.entry(key.clone()).or_default();
                    for entry in page.lines.iter().skip(*seen) {
                        out.push(Line {
                            stage: stage.name.clone(),
                            action: action.name.clone(),
                            entry: entry.clone(),
                        });
                    }
                    *seen = (*seen).max(page.lines.len());
                    if page.complete {
                        self.complete.insert(key);
                    }
                }
            }
        }
        Ok((out, ended))
    }

    /// Print every line until the execution has ended (`follow`), or what there is now.
    /// Returns how many lines were printed.
    pub async fn print(&mut self, follow: bool, out: impl Fn(&str)) -> anyhow::Result<usize> {
        let mut printed = 0;
        loop {
            let (lines, ended) = self.poll().await?;
            for l in &lines {
                out(&l.text());
            }
            printed += lines.len();
            if !follow {
                return Ok(printed);
            }
            if ended {
                // What was written just before the end.
                let (lines, _) = self.poll().await?;
                for l in &lines {
                    out(&l.text());
                }
                return Ok(printed + lines.len());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
