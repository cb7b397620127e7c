//! Control: the API's server side (`api`: every verb of `sluice-api`, the role checked first),
//! its transports (the embedded socket, HTTP with the console; NATS is `sluice-nats`'s), and
//! the operator controls and reads they call.
pub mod api;
mod gauges;
pub mod http;
pub mod listen;
pub mod socket;
pub(in crate::service) mod turns;

use super::*;

impl Service {
    /// Cancel jobs running in this engine.
    pub fn cancel_local(&self, ids: &[String]) {
        let running = self.running.lock().unwrap();
        for id in ids {
            if let Some(n) = running.get(id) {
                n.notify_one();
            }
        }
    }

    /// Apply an operator control (stop, retry) to a stored execution: refused with the reason
    /// when it does not apply, else recorded (compare-and-swap) with its events and jobs.
    pub async fn control(
        &self,
        tenant: &str,
        id: &str,
        make: impl Fn(&Execution) -> Result<Input, ApiError>,
    ) -> Result<Execution, ApiError> {
        let kv = &*self.edges.executions;
        let key = exec_key(tenant, id);
        // A second approver's decision may arrive while the first one's is taken in.
        let settled_by = std::time::Instant::now() + SETTLING;
        loop {
            let Some((mut exec, revision)) = self.execution_rev(tenant, id).await? else {
                return Err(ApiError::not_found(format!("no execution `{id}`")));
            };
            let input = make(&exec)?;
            if let Some(why) = crate::scheduler::refusal(&exec, &input) {
                if crate::scheduler::settling(&exec, &input)
                    && std::time::Instant::now() < settled_by
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                return Err(ApiError::conflict(why));
            }
            let unsent = self.unsent(&exec);
            let before = Snapshot::of(&exec);
            let was_running: Vec<(usize, usize, u32)> = exec
                .stages
                .iter()
                .enumerate()
                .flat_map(|(si, s)| {
                    s.actions
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.status == Status::InProgress)
                        .map(move |(ai, a)| (si, ai, a.attempt))
                })
                .collect();
            let commands = apply(&mut exec, &input);
            let lane_commands: Vec<_> = commands
                .iter()
                .filter(|c| matches!(c, Command::Enter { .. } | Command::Leave { .. }))
                .cloned()
                .collect();
            let (jobs, notices, after) = follow_up(&exec, commands);
            let publish = self.stamp(&mut exec, before, notices, unsent, self.in_flight(&key));
            // An API call is not delivered again: should this engine die between the write
            // and the queueing below, the backstop (queued first) does the queueing.
            if !self.edges.jobs.local()
                && let Some(backstop) = Backstop::job(&exec, &jobs, &lane_commands)
            {
                self.push_jobs(&[backstop]).await;
            }
            let bytes = serde_json::to_vec(&exec).map_err(ApiError::internal)?;
            match kv.update(&key, bytes.clone(), revision).await {
                Ok(_) => {}
                Err(KvError::Conflict { .. }) => continue,
                // The write may be stored though its answer was lost: then it stands (refusing
                // it now would lose its events, and a retry would be refused as done already).
                Err(e) => {
                    if !matches!(kv.get(&key).await, Ok(Some((stored, _))) if stored == bytes) {
                        return Err(e.into());
                    }
                }
            }
            let abandoned: Vec<String> = was_running
                .into_iter()
                .filter(|(si, ai, _)| exec.stages[*si].actions[*ai].status == Status::Abandoned)
                .map(|(si, ai, attempt)| job_id(tenant, id, si, ai, attempt))
                .collect();
            if !abandoned.is_empty() {
                self.cancel_local(&abandoned);
                self.edges.cluster.cancel_elsewhere(tenant, abandoned);
            }
            futures_util::future::join(self.edges.bus.publish_all(publish), self.push_jobs(&jobs))
                .await;
            self.settle(after).await;
            return Ok(exec);
        }
    }

    pub(in crate::service) async fn execution_rev(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(Execution, u64)>, KvError> {
        if !crate::kv::valid_key(id) {
            return Ok(None);
        }
        get_json::<Execution>(&*self.edges.executions, &exec_key(tenant, id)).await
    }

    /// Read an execution.
    pub async fn execution(&self, tenant: &str, id: &str) -> Result<Option<Execution>, KvError> {
        if !crate::kv::valid_key(id) {
            return Ok(None);
        }
        Ok(
            get_json::<Execution>(&*self.edges.executions, &exec_key(tenant, id))
                .await?
                .map(|(e, _)| e),
        )
    }

    /// Executions of a tenant, newest first.
    pub async fn executions(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Execution>, KvError> {
        self.executions_before(tenant, pipeline, status, None, limit)
            .await
    }

    /// [`Service::executions`] older than execution `before` (a page after the one that ended
    /// with it).
    pub async fn executions_before(
        &self,
        tenant: &str,
        pipeline: Option<&str>,
        status: Option<Status>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>, KvError> {
        list_executions(
            &*self.edges.executions,
            tenant,
            pipeline,
            status,
            before,
            limit,
        )
        .await
    }
}

/// The executions of `tenant` in an executions bucket, newest first, older than `before`:
/// for the service, and for reading a stopped embedded service's store.
pub async fn list_executions(
    executions: &dyn Kv,
    tenant: &str,
    pipeline: Option<&str>,
    status: Option<Status>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Execution>, KvError> {
    let prefix = format!("{tenant}/x/");
    let mut keys = executions.keys(&prefix).await?;
    keys.reverse(); // ULIDs: newest last
    let mut out = Vec::new();
    // Ids are ULIDs, which sort by start time.
    let older = |key: &str| before.is_none_or(|b| key[prefix.len()..] < *b);
    for key in keys.into_iter().filter(|k| older(k)) {
        if out.len() >= limit {
            break;
        }
        if let Some((exec, _)) = get_json::<Execution>(executions, &key).await?
            && pipeline.is_none_or(|p| p == exec.pipeline)
            && status.is_none_or(|s| s == exec.status)
        {
            out.push(exec);
        }
    }
    Ok(out)
}
