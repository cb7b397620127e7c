//! Actions that wait for an event on a NATS subject (`pending` with `wake: event(subject)`,
//! e.g. a deploy system reporting completion). The index `_waits/<hash of subject>` (in a
//! bucket of its own, so listing it stays cheap) lists who waits for each subject; on NATS the subjects are captured by the stream `SLUICE_WAKES`, so
//! an event published while no engine runs is kept, and the first message on a subject wakes
//! every action waiting for it, with the message as the wake payload. `sluice wake` works in
//! every mode; subjects need NATS.
use crate::kv::{KvError, get_json, modify};
use crate::scheduler::{Input, Wake};
use crate::service::Service;
use serde::{Deserialize, Serialize};

/// Who waits for one subject.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WaitIndex {
    /// The subject.
    pub subject: String,
    /// The waiting actions.
    pub waiters: Vec<Waiter>,
}

/// One waiting action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Tenant.
    pub tenant: String,
    /// Execution id.
    pub execution: String,
    /// Stage index.
    pub stage: usize,
    /// Action index.
    pub action: usize,
    /// The attempt that waits.
    pub attempt: u32,
}

/// Prefix of the index keys (tenant names may not start with `_`).
pub const INDEX_PREFIX: &str = "_waits/";

fn index_key(subject: &str) -> String {
    format!(
        "{INDEX_PREFIX}{}",
        &blake3::hash(subject.as_bytes()).to_hex()[..32]
    )
}

/// Whether a plugin may wait for `subject`: a concrete subject (no wildcards) outside
/// Sluice's own `sluice.>` and the system's `$…` subjects.
pub fn valid_wake_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty()
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(char::is_whitespace))
    {
        return Err(format!("{subject:?} is not a NATS subject"));
    }
    if tokens.iter().any(|t| *t == "*" || *t == ">") {
        return Err(format!(
            "{subject:?}: wait for a concrete subject, without wildcards"
        ));
    }
    if tokens[0] == "sluice" || tokens[0].starts_with('$') {
        return Err(format!("{subject:?} is reserved (sluice.> and $…)"));
    }
    Ok(())
}

impl Service {
    /// Record that an action waits for `subject`, and have NATS capture it.
    pub(crate) async fn await_event(&self, waiter: Waiter, subject: &str) -> Result<(), String> {
        if !self.edges.cluster.hears_subjects() {
            return Ok(()); // embedded: woken by `sluice wake` only
        }
        valid_wake_subject(subject)?;
        let key = index_key(subject);
        modify::<WaitIndex, _>(&*self.edges.waits, &key, |current| {
            let mut index = current.unwrap_or_else(|| WaitIndex {
                subject: subject.to_string(),
                waiters: Vec::new(),
            });
            if index.waiters.contains(&waiter) {
                return None;
            }
            index.waiters.push(waiter.clone());
            Some(index)
        })
        .await
        .map_err(|e| e.to_string())?;
        self.edges
            .cluster
            .capture_wake(subject)
            .await
            .map_err(|e| e.to_string())
    }

    /// An event arrived on `subject`: wake every action waiting for it. Returns how many woke.
    pub async fn wake_by_subject(&self, subject: &str, payload: &[u8]) -> Result<usize, KvError> {
        let key = index_key(subject);
        let Some((index, _)) = get_json::<WaitIndex>(&*self.edges.waits, &key).await? else {
            return Ok(0);
        };
        let payload = String::from_utf8_lossy(payload).into_owned();
        let mut woken = 0;
        for w in &index.waiters {
            let result = self
                .control(&w.tenant, &w.execution, |e| {
                    let run = e
                        .stages
                        .get(w.stage)
                        .and_then(|s| s.actions.get(w.action))
                        .ok_or_else(|| sluice_api::ApiError::not_found("gone"))?;
                    match run.waiting.as_ref().map(|x| &x.wake) {
                        Some(Wake::Event(s)) if s == subject && run.attempt == w.attempt => {
                            Ok(Input::Wake {
                                stage: w.stage,
                                action: w.action,
                                payload: Some(payload.clone()),
                                at: crate::clock::now(),
                            })
                        }
                        _ => Err(sluice_api::ApiError::conflict("no longer waiting")),
                    }
                })
                .await;
            if result.is_ok() {
                woken += 1;
            }
        }
        // Those woken, and those no longer waiting, leave the index.
        let done = index.waiters.clone();
        modify::<WaitIndex, _>(&*self.edges.waits, &key, |current| {
            let mut index = current?;
            index.waiters.retain(|w| !done.contains(w));
            Some(index)
        })
        .await?;
        let _ = self.drop_index_if_empty(&key).await;
        Ok(woken)
    }

    /// Take out of the index the waiters no longer waiting for their subject (their wait
    /// timed out, was stopped or woken by `sluice wake`, or their record is gone), which only
    /// an event on the subject would otherwise take out — and, on NATS, the subjects the stream
    /// captures with them. Returns how many went.
    pub async fn sweep_waits(&self) -> Result<usize, KvError> {
        let mut removed = 0;
        for key in self.edges.waits.keys(INDEX_PREFIX).await? {
            let Some((index, _)) = get_json::<WaitIndex>(&*self.edges.waits, &key).await? else {
                continue;
            };
            let mut gone = Vec::new();
            for w in &index.waiters {
                let exec = get_json::<crate::scheduler::Execution>(
                    &*self.edges.executions,
                    &crate::service::exec_key(&w.tenant, &w.execution),
                )
                .await?;
                // Its attempt still runs (waiting for the event, or for something before it):
                // it stays.
                let waits = exec.is_some_and(|(e, _)| {
                    !e.status.is_terminal()
                        && e.stages
                            .get(w.stage)
                            .and_then(|s| s.actions.get(w.action))
                            .is_some_and(|run| {
                                run.attempt == w.attempt && !run.status.is_terminal()
                            })
                });
                if !waits {
                    gone.push(w.clone());
                }
            }
            if gone.is_empty() {
                continue;
            }
            removed += gone.len();
            modify::<WaitIndex, _>(&*self.edges.waits, &key, |current| {
                let mut index = current?;
                index.waiters.retain(|w| !gone.contains(w));
                Some(index)
            })
            .await?;
            self.drop_index_if_empty(&key).await?;
        }
        Ok(removed)
    }

    /// Remove the index entry `key` if nobody waits in it any more — unless a waiter came
    /// meanwhile (removed only at the revision read).
    async fn drop_index_if_empty(&self, key: &str) -> Result<(), KvError> {
        let Some((bytes, revision)) = self.edges.waits.get(key).await? else {
            return Ok(());
        };
        let empty = serde_json::from_slice::<WaitIndex>(&bytes).is_ok_and(|i| i.waiters.is_empty());
        if empty {
            match self.edges.waits.delete_if(key, revision).await {
                Ok(()) | Err(KvError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every subject some action waits for.
    pub async fn awaited_subjects(&self) -> Result<Vec<String>, KvError> {
        let mut out = Vec::new();
        for key in self.edges.waits.keys(INDEX_PREFIX).await? {
            if let Some((index, _)) = get_json::<WaitIndex>(&*self.edges.waits, &key).await?
                && !index.waiters.is_empty()
            {
                out.push(index.subject);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wake_subjects() {
        assert!(super::valid_wake_subject("deploys.done.abc").is_ok());
        assert!(super::valid_wake_subject("deploys.*").is_err());
        assert!(super::valid_wake_subject("sluice.default.api.stop").is_err());
        assert!(super::valid_wake_subject("$JS.API.x").is_err());
    }
}
