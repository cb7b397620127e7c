//! Who runs an attempt, for `status`. A job that outlives one heartbeat period writes a lease
//! record, `_leases/<lease id>` in the pipelines bucket (shared by every engine): the engine
//! (`HOST/PID`), its last heartbeat, its heartbeat period and the queue's deadline. Every
//! heartbeat renews it and the job's end removes it; short jobs write nothing. `status` reads
//! the records of its in-progress actions: heartbeats that stopped mean the engine running the
//! attempt is gone, and the queue hands the job to another engine at the deadline after the
//! last one.
use super::*;
use sluice_core::scheduler::Holder;

/// A lease as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    engine: String,
    heartbeat: Timestamp,
    every_ms: u64,
    ack_wait_ms: u64,
}

fn key(lease_id: &str) -> String {
    format!("_leases/{lease_id}")
}

/// This process, as people find it: `HOST/PID` (read once).
fn this_engine() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(host_and_pid).clone()
}

fn host_and_pid() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

/// A lease record not renewed for this long belongs to a job that ended without removing it
/// (its engine died, and the attempt's second run was shorter than a heartbeat period).
const STALE_LEASE: Duration = Duration::from_secs(3600);

impl Service {
    /// Remove lease records nobody renewed for an hour (heartbeats come every few seconds),
    /// so what crashed engines leave behind does not pile up; returns how many went.
    pub async fn sweep_leases(&self) -> Result<usize, crate::kv::KvError> {
        let kv = &*self.edges.pipelines;
        let now = crate::clock::now();
        let mut removed = 0;
        for k in kv.keys("_leases/").await? {
            let stale = match crate::kv::get_json::<LeaseRecord>(kv, &k).await {
                Ok(Some((lease, _))) => now.since(lease.heartbeat) > STALE_LEASE,
                Ok(None) => false,
                // Not a record this version reads: nothing reads it either.
                Err(_) => true,
            };
            if stale {
                kv.delete(&k).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Renew the lease record of `lease_id` (a heartbeat of a job still running).
    pub(in crate::service) async fn lease_beat(&self, lease_id: &str, every: Duration) {
        let record = LeaseRecord {
            engine: this_engine(),
            heartbeat: crate::clock::now(),
            every_ms: every.as_millis() as u64,
            ack_wait_ms: self.edges.jobs.ack_wait().as_millis() as u64,
        };
        let written =
            crate::kv::modify::<LeaseRecord, _>(&*self.edges.pipelines, &key(lease_id), |_| {
                Some(LeaseRecord {
                    engine: record.engine.clone(),
                    ..record
                })
            })
            .await;
        if let Err(e) = written {
            tracing::debug!("lease record of {lease_id} not written: {e}");
        }
    }

    /// The job under `lease_id` ended here: nobody holds it now.
    pub(in crate::service) async fn lease_end(&self, lease_id: &str) {
        if let Err(e) = self.edges.pipelines.delete(&key(lease_id)).await {
            tracing::debug!("lease record of {lease_id} not removed: {e}");
        }
    }

    /// Fill in who holds each in-progress attempt of `exec` that runs (not one waiting for an
    /// approval, an event or a timer), from the lease records.
    pub(in crate::service) async fn fill_holders(&self, exec: &mut Execution) {
        let now = crate::clock::now();
        for (si, stage) in exec.stages.iter_mut().enumerate() {
            for (ai, action) in stage.actions.iter_mut().enumerate() {
                if action.status != Status::InProgress || action.waiting.is_some() {
                    continue;
                }
                let lease_id = action.runner.clone().unwrap_or_else(|| {
                    job_id(&exec.tenant, &exec.execution_id, si, ai, action.attempt)
                });
                let Ok(Some((lease, _))) =
                    crate::kv::get_json::<LeaseRecord>(&*self.edges.pipelines, &key(&lease_id))
                        .await
                else {
                    continue;
                };
                action.held_by = Some(Holder {
                    engine: lease.engine,
                    heartbeat: lease.heartbeat,
                    lost: now.0 > lease.heartbeat.0 + 2 * lease.every_ms,
                    redelivery_at: Timestamp(lease.heartbeat.0 + lease.ack_wait_ms),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use crate::service::tests::{engine, shared_edges};

    #[tokio::test]
    async fn leases_not_renewed_for_an_hour_are_swept_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_edges(dir.path());
        let service = engine(dir.path(), Arc::new(MemoryBus::default()), &shared);
        service
            .lease_beat("default/e1/0/0/1", Duration::from_secs(10))
            .await;
        let kv = &*shared.pipelines;
        let stale = LeaseRecord {
            engine: "gone/1".into(),
            heartbeat: Timestamp(crate::clock::now().0 - 2 * 3600 * 1000),
            every_ms: 10_000,
            ack_wait_ms: 30_000,
        };
        kv.create(
            &key("default/e2/0/0/1"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(service.sweep_leases().await.unwrap(), 1);
        assert!(kv.get(&key("default/e1/0/0/1")).await.unwrap().is_some());
        assert!(kv.get(&key("default/e2/0/0/1")).await.unwrap().is_none());
        service.lease_end("default/e1/0/0/1").await;
        assert!(kv.keys("_leases/").await.unwrap().is_empty());
    }
}
