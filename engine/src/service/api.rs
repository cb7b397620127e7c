//! The control API: one handler for every verb, whatever carries it (NATS request/reply on
//! `sluice.<tenant>.api.<verb>`, or the embedded service's local socket). Requests and
//! replies are JSON; a reply is `{"ok": …}` or `{"error": "…"}`.
use super::pipelines::{self, StoredPipeline};
use super::trigger::{Source, TriggerEvent};
use super::Service;
use crate::scheduler::{Execution, Status, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A control request. On NATS the verb comes from the subject and the body holds the rest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "verb", deny_unknown_fields)]
pub enum Request {
    /// Register a new version of a pipeline.
    #[serde(rename = "pipeline.put")]
    PipelinePut {
        /// File name, for messages.
        file: String,
        /// Directory relative paths resolve against.
        dir: PathBuf,
        /// The YAML.
        yaml: String,
    },
    /// A registered pipeline (current or given version).
    #[serde(rename = "pipeline.get")]
    PipelineGet {
        /// Name.
        name: String,
        /// Version (default: current).
        #[serde(default)]
        version: Option<u64>,
    },
    /// Registered pipelines.
    #[serde(rename = "pipeline.ls")]
    PipelineLs {},
    /// Unregister a pipeline.
    #[serde(rename = "pipeline.rm")]
    PipelineRm {
        /// Name.
        name: String,
    },
    /// Start a pipeline (through the trigger path, like any event).
    #[serde(rename = "start")]
    Start {
        /// Pipeline name.
        pipeline: String,
        /// Variable overrides.
        #[serde(default)]
        variables: BTreeMap<String, String>,
        /// Event id (default: a fresh one); a repeated id starts nothing new.
        #[serde(default)]
        event_id: Option<String>,
        /// Who asks.
        #[serde(default)]
        started_by: Option<String>,
    },
    /// One execution.
    #[serde(rename = "status")]
    Status {
        /// Execution id.
        execution_id: String,
    },
    /// Executions, newest first.
    #[serde(rename = "executions")]
    Executions {
        /// Only this pipeline.
        #[serde(default)]
        pipeline: Option<String>,
        /// Only this status.
        #[serde(default)]
        status: Option<Status>,
        /// At most this many (default 20).
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// The verbs, for subscriptions and help.
pub const VERBS: &[&str] = &["pipeline.put", "pipeline.get", "pipeline.ls", "pipeline.rm", "start", "status", "executions"];

/// Parse a request whose verb travels separately (the NATS subject).
pub fn request_for_verb(verb: &str, body: &[u8]) -> Result<Request, String> {
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))? };
    let Some(map) = value.as_object_mut() else { return Err("request body must be a JSON object".into()) };
    map.insert("verb".into(), Value::String(verb.to_string()));
    serde_json::from_value(value).map_err(|e| format!("bad `{verb}` request: {e}"))
}

/// A failed request.
fn error(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

fn ok(value: impl Serialize) -> Value {
    json!({ "ok": value })
}

/// A row of `executions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionSummary {
    /// Id.
    pub execution_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// Version run.
    pub pipeline_version: u64,
    /// Status.
    pub status: Status,
    /// Started.
    pub started_at: Option<Timestamp>,
    /// Ended.
    pub finished_at: Option<Timestamp>,
    /// Trigger kind and event id.
    pub trigger: Option<String>,
}

impl From<&Execution> for ExecutionSummary {
    fn from(e: &Execution) -> Self {
        ExecutionSummary {
            execution_id: e.execution_id.clone(),
            pipeline: e.pipeline.clone(),
            pipeline_version: e.pipeline_version,
            status: e.status,
            started_at: e.started_at,
            finished_at: e.finished_at,
            trigger: e.trigger.as_ref().map(|t| format!("{} {}", t.kind, t.event_id)),
        }
    }
}

impl Service {
    /// Handle one request for `tenant`.
    pub async fn handle(&self, tenant: &str, request: Request) -> Value {
        if !crate::kv::valid_key(tenant) || tenant.contains('/') {
            return error(format!("invalid tenant `{tenant}`"));
        }
        match self.handle_inner(tenant, request).await {
            Ok(v) => v,
            Err(e) => error(e),
        }
    }

    async fn handle_inner(&self, tenant: &str, request: Request) -> Result<Value, String> {
        let store = &*self.edges.pipelines;
        match request {
            Request::PipelinePut { file, dir, yaml } => {
                let stored = StoredPipeline { name: String::new(), version: 0, file, dir, yaml, registered_at: Timestamp::now() };
                let loaded = match self.check(&stored).await {
                    Ok(l) => l,
                    Err(d) => return Ok(json!({ "error": "the pipeline is not valid", "diagnostics": d.to_string() })),
                };
                let stored = StoredPipeline { name: loaded.pipeline.name.clone(), ..stored };
                let name = stored.name.clone();
                let version = pipelines::put(store, tenant, stored).await.map_err(|e| e.to_string())?;
                Ok(ok(json!({ "name": name, "version": version })))
            }
            Request::PipelineGet { name, version } => match pipelines::get(store, tenant, &name, version).await.map_err(|e| e.to_string())? {
                Some(p) => Ok(ok(p)),
                None => Err(format!("no pipeline `{name}`{} is registered", version.map(|v| format!(" version {v}")).unwrap_or_default())),
            },
            Request::PipelineLs {} => {
                let list = pipelines::list(store, tenant).await.map_err(|e| e.to_string())?;
                Ok(ok(list.iter().map(|p| json!({ "name": p.name, "version": p.version, "file": p.file, "registered_at": p.registered_at })).collect::<Vec<_>>()))
            }
            Request::PipelineRm { name } => {
                if pipelines::remove(store, tenant, &name).await.map_err(|e| e.to_string())? {
                    Ok(ok(json!({ "name": name })))
                } else {
                    Err(format!("no pipeline `{name}` is registered"))
                }
            }
            Request::Start { pipeline, variables, event_id, started_by } => {
                if pipelines::get(store, tenant, &pipeline, None).await.map_err(|e| e.to_string())?.is_none() {
                    return Err(format!("no pipeline `{pipeline}` is registered (register it with `sluice pipeline put FILE`)"));
                }
                let event = TriggerEvent {
                    id: event_id.unwrap_or_else(|| format!("manual-{}", ulid::Ulid::new())),
                    source: Some(Source { kind: "manual".into(), pusher: started_by, ..Default::default() }),
                    variables,
                };
                let id = self.trigger(tenant, &pipeline, &event).await?;
                Ok(ok(json!({ "execution_id": id, "event_id": event.id })))
            }
            Request::Status { execution_id } => match self.execution(tenant, &execution_id).await.map_err(|e| e.to_string())? {
                Some(e) => Ok(ok(e)),
                None => Err(format!("no execution `{execution_id}`")),
            },
            Request::Executions { pipeline, status, limit } => {
                let list = self.executions(tenant, pipeline.as_deref(), status, limit.unwrap_or(20)).await.map_err(|e| e.to_string())?;
                Ok(ok(list.iter().map(ExecutionSummary::from).collect::<Vec<_>>()))
            }
        }
    }

    /// Publish a trigger event the way any publisher would, and wait until an engine has
    /// recorded its execution. Returns the execution id.
    pub async fn trigger(&self, tenant: &str, pipeline: &str, event: &TriggerEvent) -> Result<String, String> {
        let subject = crate::nats::trigger_subject(tenant, pipeline);
        self.edges.triggers.push(&subject, &event.id, serde_json::to_vec(event).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(id) = self.claimed(tenant, pipeline, &event.id).await.map_err(|e| e.to_string())? {
                // The claim comes first; wait for the record itself.
                if self.execution(tenant, &id).await.map_err(|e| e.to_string())?.is_some() {
                    return Ok(id);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("event `{}` was queued but no engine started it within 30 s (see the dead letter)", event.id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
