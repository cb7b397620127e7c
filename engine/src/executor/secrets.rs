//! Secrets in a job: their values fetched where the job runs (never queued or stored), and
//! everything the action writes — log entries, error, summary, variables — with those values
//! masked in every form ([`sluice_core::redact`]).
use super::job::{JobContext, JobSpec};
use crate::runtime::{Level, LogSink};
use crate::scheduler::ActionResult;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A log entry held back while it may end with the start of a secret: its level and fields.
type Entry = (Level, Vec<(String, String)>);

/// Where a job's secret values come from: the engine's secret store.
pub trait SecretSource: Send + Sync {
    /// The value of the stored secret `name` for `pipeline` of `tenant`.
    fn reveal<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        pipeline: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<String, String>>;
}

impl SecretSource for crate::secrets::SecretStore {
    fn reveal<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
        pipeline: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            crate::secrets::SecretStore::reveal(self, tenant, name, pipeline)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The values of the secrets a job lists, by the pipeline's names.
pub(super) async fn reveal(
    cx: &JobContext,
    job: &JobSpec,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    if job.secrets.is_empty() {
        return Ok(out);
    }
    let Some(source) = &cx.secrets else {
        return Err("this action uses secrets, and this engine has no secret store".to_string());
    };
    for (name, stored) in &job.secrets {
        let value = source
            .reveal(&job.tenant, stored, &job.pipeline)
            .await
            .map_err(|e| format!("secret `{name}`: {e}"))?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// An action's log with its secrets' values (in every form) masked before anything is written.
pub(super) struct RedactingLog {
    inner: Arc<dyn LogSink>,
    redactor: sluice_core::redact::Redactor,
    stream: std::sync::Mutex<sluice_core::redact::Stream<Entry>>,
}

impl RedactingLog {
    pub(super) fn new(inner: Arc<dyn LogSink>, redactor: sluice_core::redact::Redactor) -> Self {
        RedactingLog {
            inner,
            stream: std::sync::Mutex::new(sluice_core::redact::Stream::new(redactor.clone())),
            redactor,
        }
    }

    /// Write what was held back (the action ended).
    pub(super) fn finish(&self) {
        let held = self.stream.lock().unwrap().finish();
        for (message, (level, fields)) in held {
            self.inner.log(level, &message, &fields);
        }
    }
}

impl LogSink for RedactingLog {
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.clone(), self.redactor.redact(v)))
            .collect();
        let ready = self
            .stream
            .lock()
            .unwrap()
            .push(message.to_string(), (level, fields));
        for (message, (level, fields)) in ready {
            self.inner.log(level, &message, &fields);
        }
    }
}

/// What an action returns, with its secrets' values masked (a guest could copy one into a
/// variable, its summary or its error, which are stored and shown).
pub(super) fn redact_result(
    result: ActionResult,
    r: &sluice_core::redact::Redactor,
) -> ActionResult {
    if r.is_empty() {
        return result;
    }
    match result {
        ActionResult::Succeeded {
            variables,
            artifacts,
            summary,
            cached_from,
        } => ActionResult::Succeeded {
            cached_from,
            variables: variables
                .into_iter()
                .map(|(k, v)| (k, r.redact(&v)))
                .collect(),
            artifacts,
            summary: summary.map(|s| r.redact(&s)),
        },
        ActionResult::Pending {
            continuation,
            wake,
            summary,
            percent,
            deadline,
        } => ActionResult::Pending {
            continuation,
            wake,
            summary: summary.map(|s| r.redact(&s)),
            percent,
            deadline,
        },
        ActionResult::Failed { error, kind } => ActionResult::Failed {
            error: r.redact(&error),
            kind,
        },
    }
}
