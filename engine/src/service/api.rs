//! The control API: one handler for every verb, whatever carries it (NATS request/reply on
//! `sluice.<tenant>.api.<verb>`, or the embedded service's local socket). Requests and
//! replies are JSON; a reply is `{"ok": …}` or `{"error": "…"}`.
use super::Service;
use super::pipelines::{self, StoredPipeline};
use super::trigger::{Source, TriggerEvent};
use crate::scheduler::{Decision, Execution, Input, Status, Timestamp};

/// The (stage, action) indices of `STAGE/ACTION` in `e`.
fn find(e: &Execution, id: &str, path: &str) -> Result<(usize, usize), String> {
    let (stage, action) = path
        .split_once('/')
        .ok_or_else(|| format!("expected STAGE/ACTION, got `{path}`"))?;
    e.find_action(stage, action)
        .ok_or_else(|| format!("execution `{id}` has no action {path}"))
}
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
        /// Directory relative paths resolve against: a directory on the engine's host, so
        /// only for a [`Caller::HostUser`]; without it the pipeline may reference no relative
        /// path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<PathBuf>,
        /// The YAML.
        yaml: String,
        /// Plugin and rule files the client uploaded to the artifact store: the path as
        /// written in the YAML → `blake3:` digest.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        plugins: BTreeMap<String, String>,
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
    /// Stop an execution.
    #[serde(rename = "stop")]
    Stop {
        /// Execution id.
        execution_id: String,
        /// Cancel running actions instead of letting them finish.
        #[serde(default)]
        abandon: bool,
        /// Why.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Re-run a failed or stopped stage.
    #[serde(rename = "retry")]
    Retry {
        /// Execution id.
        execution_id: String,
        /// Stage name.
        stage: String,
        /// Every action, not only those that did not succeed.
        #[serde(default)]
        all: bool,
    },
    /// Approve or reject an action waiting for approval.
    #[serde(rename = "approve")]
    Approve {
        /// Execution id.
        execution_id: String,
        /// `STAGE/ACTION`.
        action: String,
        /// Approve (default) or reject.
        #[serde(default = "yes")]
        approved: bool,
        /// Who decides (the caller's identity).
        by: String,
        /// Why.
        #[serde(default)]
        summary: Option<String>,
        /// The token of the approval notification, if the caller quotes it.
        #[serde(default)]
        token: Option<String>,
    },
    /// Wake an action waiting for an external event.
    #[serde(rename = "wake")]
    Wake {
        /// Execution id.
        execution_id: String,
        /// `STAGE/ACTION`.
        action: String,
        /// The event's payload, handed to the action.
        #[serde(default)]
        payload: Option<String>,
    },
    /// Register a function for `invoke@1`. The engine never reads a file the client names:
    /// the client sends the component.
    #[serde(rename = "function.put")]
    FunctionPut {
        /// Name.
        name: String,
        /// The component's bytes, base64 (at most [`MAX_UPLOAD`] bytes)…
        #[serde(default)]
        bytes: Option<String>,
        /// …or the digest of a component already uploaded to the artifact store (NATS).
        #[serde(default)]
        digest: Option<String>,
    },
    /// Registered functions.
    #[serde(rename = "function.ls")]
    FunctionLs {},
    /// Unregister a function.
    #[serde(rename = "function.rm")]
    FunctionRm {
        /// Name.
        name: String,
    },
    /// Disable or enable the transition into a stage.
    #[serde(rename = "transition")]
    Transition {
        /// Pipeline name.
        pipeline: String,
        /// The stage the transition leads into.
        stage: String,
        /// Enable (else disable).
        enable: bool,
        /// Why (required to disable).
        #[serde(default)]
        reason: Option<String>,
        /// Who asks.
        #[serde(default)]
        by: Option<String>,
    },
    /// A pipeline's stage lanes: executions inside and waiting, disabled transitions.
    #[serde(rename = "pipeline.state")]
    PipelineState {
        /// Pipeline name.
        name: String,
    },
    /// Rebuild a pipeline's stage lanes from its executions' records (an operator's repair).
    #[serde(rename = "pipeline.repair")]
    PipelineRepair {
        /// Pipeline name.
        name: String,
    },
    /// Start a rollback execution of a stage to an earlier execution.
    #[serde(rename = "rollback")]
    Rollback {
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        /// The execution (which succeeded in the stage) to roll back to.
        to: String,
        /// Who asks.
        #[serde(default)]
        by: Option<String>,
    },
    /// Rejected trigger events kept in the dead letter, newest first.
    #[serde(rename = "deadletter.ls")]
    DeadLetters {
        /// Only those addressed to this pipeline.
        #[serde(default)]
        pipeline: Option<String>,
        /// At most this many (default 20, at most [`MAX_LIST`]).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Send a dead letter's event again (after the pipeline was fixed); it leaves the dead
    /// letter once an execution has started.
    #[serde(rename = "deadletter.replay")]
    DeadLetterReplay {
        /// The dead letter's id (as `deadletter.ls` lists it).
        id: String,
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

/// The largest component a request may carry (decoded).
pub const MAX_UPLOAD: usize = 64 << 20;

/// Decode a component sent in a request, refusing more than [`MAX_UPLOAD`] bytes before
/// decoding anything.
pub fn decode_upload(what: &str, base64: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if base64.len() / 4 * 3 > MAX_UPLOAD {
        return Err(format!("{what} is larger than {} MiB", MAX_UPLOAD >> 20));
    }
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// Encode a component for a request.
pub fn encode_upload(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The verbs, for subscriptions and help.
pub const VERBS: &[&str] = &[
    "pipeline.put",
    "pipeline.get",
    "pipeline.ls",
    "pipeline.rm",
    "pipeline.state",
    "pipeline.repair",
    "transition",
    "rollback",
    "start",
    "status",
    "executions",
    "stop",
    "retry",
    "approve",
    "wake",
    "function.put",
    "function.ls",
    "function.rm",
    "deadletter.ls",
    "deadletter.replay",
];

/// The most rows a listing returns, whatever limit it asks for.
pub const MAX_LIST: usize = 1000;

fn yes() -> bool {
    true
}

/// The longest tenant, id or name a request may carry. Execution ids are 26-byte ULIDs and
/// names at most 100 bytes (`STAGE/ACTION` 201); they end up in NATS subjects and KV keys,
/// and a subject longer than the server's control line (4 KiB by default) makes the server
/// drop the engine's connection. Both the client and the service refuse longer ones.
pub const MAX_ID_LEN: usize = 256;

/// A tenant, id or name longer than [`MAX_ID_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("{what} is {len} bytes long; at most {MAX_ID_LEN} are accepted")]
pub struct TooLong {
    /// Which field.
    pub what: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

/// Refuse a tenant, id or name longer than [`MAX_ID_LEN`].
pub fn check_len(what: &'static str, value: &str) -> Result<(), TooLong> {
    if value.len() > MAX_ID_LEN {
        return Err(TooLong {
            what,
            len: value.len(),
        });
    }
    Ok(())
}

/// A tenant as subjects and keys take it; `Err` says why not.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    check_len("the tenant", tenant).map_err(|e| e.to_string())?;
    if !crate::kv::valid_key(tenant) || tenant.contains('/') || tenant.starts_with('_') {
        return Err(format!("invalid tenant `{tenant}`"));
    }
    Ok(())
}

impl Request {
    /// Refuse ids and names longer than [`MAX_ID_LEN`] (the client before sending, the
    /// service on receipt). Free text (reasons, payloads, YAML) only rides in message bodies.
    pub fn check_lengths(&self) -> Result<(), TooLong> {
        let fields: Vec<(&'static str, &str)> = match self {
            Request::PipelinePut { .. } | Request::PipelineLs {} | Request::FunctionLs {} => {
                vec![]
            }
            Request::PipelineGet { name, .. }
            | Request::PipelineRm { name }
            | Request::PipelineState { name }
            | Request::PipelineRepair { name } => vec![("the pipeline name", name.as_str())],
            Request::Start {
                pipeline,
                event_id,
                started_by,
                ..
            } => vec![
                ("the pipeline name", pipeline.as_str()),
                ("the event id", event_id.as_deref().unwrap_or_default()),
                ("`started_by`", started_by.as_deref().unwrap_or_default()),
            ],
            Request::Status { execution_id } | Request::Stop { execution_id, .. } => {
                vec![("the execution id", execution_id.as_str())]
            }
            Request::Retry {
                execution_id,
                stage,
                ..
            } => vec![
                ("the execution id", execution_id.as_str()),
                ("the stage name", stage.as_str()),
            ],
            Request::Approve {
                execution_id,
                action,
                by,
                token,
                ..
            } => vec![
                ("the execution id", execution_id.as_str()),
                ("the action", action.as_str()),
                ("`by`", by.as_str()),
                ("the token", token.as_deref().unwrap_or_default()),
            ],
            Request::Wake {
                execution_id,
                action,
                ..
            } => vec![
                ("the execution id", execution_id.as_str()),
                ("the action", action.as_str()),
            ],
            Request::FunctionPut { name, digest, .. } => vec![
                ("the function name", name.as_str()),
                ("the digest", digest.as_deref().unwrap_or_default()),
            ],
            Request::FunctionRm { name } => vec![("the function name", name.as_str())],
            Request::Transition {
                pipeline,
                stage,
                by,
                ..
            } => vec![
                ("the pipeline name", pipeline.as_str()),
                ("the stage name", stage.as_str()),
                ("`by`", by.as_deref().unwrap_or_default()),
            ],
            Request::Rollback {
                pipeline,
                stage,
                to,
                by,
            } => vec![
                ("the pipeline name", pipeline.as_str()),
                ("the stage name", stage.as_str()),
                ("the execution id", to.as_str()),
                ("`by`", by.as_deref().unwrap_or_default()),
            ],
            Request::Executions { pipeline, .. } | Request::DeadLetters { pipeline, .. } => {
                vec![("the pipeline name", pipeline.as_deref().unwrap_or_default())]
            }
            Request::DeadLetterReplay { id } => vec![("the dead letter id", id.as_str())],
        };
        fields
            .iter()
            .try_for_each(|(what, value)| check_len(what, value))
    }
}

/// Parse a request whose verb travels separately (the NATS subject).
pub fn request_for_verb(verb: &str, body: &[u8]) -> Result<Request, String> {
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?
    };
    let Some(map) = value.as_object_mut() else {
        return Err("request body must be a JSON object".into());
    };
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
    /// `STAGE/ACTION`s waiting for an approval or an event, and `entry to STAGE` while it
    /// waits before a stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
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
            trigger: e
                .trigger
                .as_ref()
                .map(|t| format!("{} {}", t.kind, t.event_id)),
            waiting: e
                .stages
                .iter()
                .flat_map(|s| {
                    s.actions
                        .iter()
                        .filter(|a| {
                            a.status == Status::InProgress
                                && a.waiting.as_ref().is_some_and(|w| {
                                    !matches!(w.wake, crate::scheduler::Wake::Timer(_))
                                })
                        })
                        .map(move |a| format!("{}/{}", s.name, a.name))
                })
                .chain(
                    e.entering
                        .map(|si| format!("entry to {}", e.stages[si].name)),
                )
                .collect(),
        }
    }
}

/// A row of `deadletter.ls`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// Id, for `deadletter.replay`.
    pub id: String,
    /// The pipeline the event was addressed to.
    pub pipeline: String,
    /// The event's id, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why it was rejected.
    pub reason: String,
    /// When.
    pub at: Timestamp,
    /// The event as received.
    pub payload: String,
}

impl DeadLetterSummary {
    fn new(id: String, letter: super::DeadLetter) -> Self {
        let event_id = serde_json::from_str::<Value>(&letter.payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string));
        DeadLetterSummary {
            id,
            pipeline: letter.pipeline,
            event_id,
            reason: letter.reason,
            at: letter.at,
            payload: letter.payload,
        }
    }
}

/// Refuse variable overrides the pipeline does not take, in the words of `sluice run --var`.
fn refuse_overrides(
    loaded: &super::Loaded,
    variables: &BTreeMap<String, String>,
) -> Result<(), String> {
    if variables.is_empty() {
        return Ok(());
    }
    // The registered pipeline passed validation without overrides: what is found now is theirs.
    let problems = crate::model::validate::validate(&loaded.pipeline, &loaded.plugins, variables);
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems
        .iter()
        .map(|d| d.message.as_str())
        .collect::<Vec<_>>()
        .join("; "))
}

/// Who sent a request, as far as paths on the engine's host go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A process of the engine's own user on the engine's host (the embedded service's
    /// socket): it may name the directory a pipeline's relative paths resolve against, as
    /// `sluice run` would.
    HostUser,
    /// Anyone else (NATS): the engine resolves no path on its host that the caller names.
    Remote,
}

impl Service {
    /// Handle one request for `tenant` from a remote caller.
    pub async fn handle(&self, tenant: &str, request: Request) -> Value {
        self.handle_from(tenant, request, Caller::Remote).await
    }

    /// Handle one request for `tenant` from `caller`.
    pub async fn handle_from(&self, tenant: &str, request: Request, caller: Caller) -> Value {
        if let Err(e) = check_tenant(tenant) {
            return error(e);
        }
        if let Err(e) = request.check_lengths() {
            return error(e.to_string());
        }
        match self.handle_inner(tenant, request, caller).await {
            Ok(v) => v,
            Err(e) => error(e),
        }
    }

    async fn handle_inner(
        &self,
        tenant: &str,
        request: Request,
        caller: Caller,
    ) -> Result<Value, String> {
        let store = &*self.edges.pipelines;
        match request {
            Request::PipelinePut {
                file,
                dir,
                yaml,
                plugins,
            } => {
                match &dir {
                    Some(_) if caller == Caller::Remote => {
                        return Err("`pipeline.put`: `dir` names a directory on the engine's host, which only the engine's own user there may do (the embedded service's socket); `sluice pipeline put` over NATS uploads the plugin files instead, and other paths in the pipeline must be absolute".into());
                    }
                    Some(d) if !d.is_absolute() => {
                        return Err(format!(
                            "`pipeline.put`: `dir` {} is not absolute",
                            d.display()
                        ));
                    }
                    _ => {}
                }
                if plugins.len() > pipelines::MAX_PLUGINS {
                    return Err(format!(
                        "`pipeline.put`: more than {} plugin files",
                        pipelines::MAX_PLUGINS
                    ));
                }
                for (path, digest) in &plugins {
                    digest
                        .parse::<crate::artifacts::Digest>()
                        .map_err(|e| format!("`pipeline.put`: plugin file {path}: {e}"))?;
                }
                let stored = StoredPipeline {
                    name: String::new(),
                    version: 0,
                    file,
                    dir,
                    plugins,
                    yaml,
                    registered_at: crate::clock::now(),
                };
                let loaded = match self.check(&stored).await {
                    Ok(l) => l,
                    Err(d) => {
                        return Ok(
                            json!({ "error": "the pipeline is not valid", "diagnostics": d.to_string() }),
                        );
                    }
                };
                let subjects: Vec<String> = loaded
                    .pipeline
                    .triggers
                    .nats
                    .iter()
                    .map(|s| s.value.clone())
                    .collect();
                if let (false, Some(hook)) = (subjects.is_empty(), &self.edges.extra_subjects) {
                    hook(tenant.to_string(), loaded.pipeline.name.clone(), subjects)
                        .await
                        .map_err(|e| format!("`triggers.nats`: {e}"))?;
                }
                let stored = StoredPipeline {
                    name: loaded.pipeline.name.clone(),
                    ..stored
                };
                let name = stored.name.clone();
                let version = pipelines::put(store, tenant, stored)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ok(json!({ "name": name, "version": version })))
            }
            Request::PipelineGet { name, version } => {
                match pipelines::get(store, tenant, &name, version)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(p) => Ok(ok(p)),
                    None => Err(format!(
                        "no pipeline `{name}`{} is registered",
                        version.map(|v| format!(" version {v}")).unwrap_or_default()
                    )),
                }
            }
            Request::PipelineLs {} => {
                let list = pipelines::list(store, tenant)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ok(list.iter().map(|p| json!({ "name": p.name, "version": p.version, "file": p.file, "registered_at": p.registered_at })).collect::<Vec<_>>()))
            }
            Request::PipelineRm { name } => {
                if pipelines::remove(store, tenant, &name)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Ok(ok(json!({ "name": name })))
                } else {
                    Err(format!("no pipeline `{name}` is registered"))
                }
            }
            Request::Start {
                pipeline,
                variables,
                event_id,
                started_by,
            } => {
                // Refused here, at once, rather than in the trigger path, where the caller would
                // wait for an execution that never comes and the reason would only reach the
                // dead letter.
                let Some(loaded) = self.load(tenant, &pipeline, None).await? else {
                    return Err(format!(
                        "no pipeline `{pipeline}` is registered (register it with `sluice pipeline put FILE`)"
                    ));
                };
                refuse_overrides(&loaded, &variables)?;
                let event = TriggerEvent {
                    id: event_id.unwrap_or_else(|| format!("manual-{}", ulid::Ulid::new())),
                    source: Some(Source {
                        kind: "manual".into(),
                        pusher: started_by,
                        ..Default::default()
                    }),
                    variables,
                };
                let id = self.trigger(tenant, &pipeline, &event).await?;
                Ok(ok(json!({ "execution_id": id, "event_id": event.id })))
            }
            Request::Status { execution_id } => match self
                .execution(tenant, &execution_id)
                .await
                .map_err(|e| e.to_string())?
            {
                // The outbox is the engines' delivery bookkeeping; its events went out already.
                Some(e) => Ok(ok(crate::scheduler::Execution {
                    outbox: Default::default(),
                    ..e
                })),
                None => Err(format!("no execution `{execution_id}`")),
            },
            Request::Stop {
                execution_id,
                abandon,
                reason,
            } => {
                let at = crate::clock::now();
                let exec = self
                    .control(tenant, &execution_id, |_| {
                        Ok(Input::Stop {
                            abandon,
                            reason: reason.clone(),
                            at,
                        })
                    })
                    .await?;
                Ok(ok(
                    json!({ "execution_id": execution_id, "status": exec.status }),
                ))
            }
            Request::Retry {
                execution_id,
                stage,
                all,
            } => {
                let at = crate::clock::now();
                let exec = self
                    .control(tenant, &execution_id, |e| {
                        let index =
                            e.stages
                                .iter()
                                .position(|s| s.name == stage)
                                .ok_or_else(|| {
                                    format!("execution `{execution_id}` has no stage `{stage}`")
                                })?;
                        Ok(Input::Retry {
                            stage: index,
                            all,
                            at,
                        })
                    })
                    .await?;
                Ok(ok(
                    json!({ "execution_id": execution_id, "status": exec.status }),
                ))
            }
            Request::Approve {
                execution_id,
                action,
                approved,
                by,
                summary,
                token,
            } => {
                let at = crate::clock::now();
                let exec = self
                    .control(tenant, &execution_id, |e| {
                        let (stage, index) = find(e, &execution_id, &action)?;
                        let waiting = e.stages[stage].actions[index].waiting.as_ref();
                        if let (Some(t), Some(w)) = (&token, waiting)
                            && *t != w.token
                        {
                            // The real token is the approvers' secret: never in a reply.
                            return Err(format!(
                                "the token does not match the pending approval of {action}"
                            ));
                        }
                        Ok(Input::Decide {
                            stage,
                            action: index,
                            decision: Decision {
                                approved,
                                by: by.clone(),
                                at,
                                summary: summary.clone(),
                            },
                            at,
                        })
                    })
                    .await?;
                Ok(ok(
                    json!({ "execution_id": execution_id, "status": exec.status, "decision": if approved { "approved" } else { "rejected" } }),
                ))
            }
            Request::Wake {
                execution_id,
                action,
                payload,
            } => {
                let at = crate::clock::now();
                let exec = self
                    .control(tenant, &execution_id, |e| {
                        let (stage, index) = find(e, &execution_id, &action)?;
                        match e.stages[stage].actions[index]
                            .waiting
                            .as_ref()
                            .map(|w| &w.wake)
                        {
                            Some(crate::scheduler::Wake::Event(_)) => Ok(Input::Wake {
                                stage,
                                action: index,
                                payload: payload.clone(),
                                at,
                            }),
                            _ => Err(format!("{action} is not waiting for an event")),
                        }
                    })
                    .await?;
                Ok(ok(
                    json!({ "execution_id": execution_id, "status": exec.status }),
                ))
            }
            Request::FunctionPut {
                name,
                bytes,
                digest,
            } => {
                let bytes = match bytes {
                    Some(b) => Some(decode_upload(&format!("function `{name}`"), &b)?),
                    None => None,
                };
                Ok(ok(self
                    .put_function(tenant, &name, bytes, digest.as_deref())
                    .await?))
            }
            Request::FunctionLs {} => Ok(ok(self.list_functions(tenant).await?)),
            Request::FunctionRm { name } => {
                self.remove_function(tenant, &name).await?;
                Ok(ok(json!({ "name": name })))
            }
            Request::Transition {
                pipeline,
                stage,
                enable,
                reason,
                by,
            } => {
                let lanes = self
                    .transition(
                        tenant,
                        &pipeline,
                        &stage,
                        enable,
                        reason,
                        by.as_deref().unwrap_or("unknown"),
                    )
                    .await?;
                Ok(ok(lanes))
            }
            Request::PipelineState { name } => {
                if pipelines::get(store, tenant, &name, None)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none()
                {
                    return Err(format!("no pipeline `{name}` is registered"));
                }
                Ok(ok(self
                    .lanes(tenant, &name)
                    .await
                    .map_err(|e| e.to_string())?))
            }
            Request::PipelineRepair { name } => {
                if pipelines::get(store, tenant, &name, None)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none()
                {
                    return Err(format!("no pipeline `{name}` is registered"));
                }
                Ok(ok(self.repair_lanes(tenant, &name).await?))
            }
            Request::Rollback {
                pipeline,
                stage,
                to,
                by,
            } => {
                let id = self
                    .rollback(tenant, &pipeline, &stage, &to, by, None)
                    .await?;
                Ok(ok(json!({ "execution_id": id })))
            }
            Request::DeadLetters { pipeline, limit } => {
                let list = self
                    .dead_letters(
                        tenant,
                        pipeline.as_deref(),
                        limit.unwrap_or(20).min(MAX_LIST),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ok(list
                    .into_iter()
                    .map(|(id, letter)| DeadLetterSummary::new(id, letter))
                    .collect::<Vec<_>>()))
            }
            Request::DeadLetterReplay { id } => {
                let (letter, key) = self.dead_letter(tenant, &id).await?;
                let event = TriggerEvent::parse(letter.payload.as_bytes())
                    .map_err(|e| format!("dead letter `{id}` cannot be replayed: {e}"))?;
                let pipeline = letter.pipeline;
                let Some(loaded) = self.load(tenant, &pipeline, None).await? else {
                    return Err(format!(
                        "dead letter `{id}`: no pipeline `{pipeline}` is registered (register it with `sluice pipeline put FILE`)"
                    ));
                };
                super::takes(&loaded, &event, &pipeline)
                    .map_err(|e| format!("dead letter `{id}` is still refused: {e}"))?;
                // The first delivery's message id may still be in the stream's dedup window.
                let msg_id = format!("{}/replay/{id}", event.id);
                let execution_id = self.trigger_as(tenant, &pipeline, &event, &msg_id).await?;
                if let Err(e) = self.edges.executions.delete(&key).await {
                    tracing::warn!("dead letter {key} replayed but not removed: {e}");
                }
                Ok(ok(
                    json!({ "execution_id": execution_id, "event_id": event.id, "pipeline": pipeline }),
                ))
            }
            Request::Executions {
                pipeline,
                status,
                limit,
            } => {
                let list = self
                    .executions(tenant, pipeline.as_deref(), status, limit.unwrap_or(20))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ok(list
                    .iter()
                    .map(ExecutionSummary::from)
                    .collect::<Vec<_>>()))
            }
        }
    }

    /// Publish a trigger event the way any publisher would, and wait until an engine has
    /// recorded its execution. Returns the execution id.
    pub async fn trigger(
        &self,
        tenant: &str,
        pipeline: &str,
        event: &TriggerEvent,
    ) -> Result<String, String> {
        self.trigger_as(tenant, pipeline, event, &event.id).await
    }

    /// [`Service::trigger`], the event sent with message id `msg_id` (the queue's dedup key).
    async fn trigger_as(
        &self,
        tenant: &str,
        pipeline: &str,
        event: &TriggerEvent,
        msg_id: &str,
    ) -> Result<String, String> {
        let subject = crate::nats::trigger_subject(tenant, pipeline);
        self.edges
            .triggers
            .push(
                &subject,
                msg_id,
                serde_json::to_vec(event).map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(id) = self
                .claimed(tenant, pipeline, &event.id)
                .await
                .map_err(|e| e.to_string())?
            {
                // The claim comes first; wait for the record itself.
                if self
                    .execution(tenant, &id)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Ok(id);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "event `{}` was queued but no engine started it within 30 s (see `sluice deadletter`)",
                    event.id
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
