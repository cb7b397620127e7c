//! The service's gauges, sampled when `/metrics` is read: the queues' depth and oldest wait
//! (one request per queue), and the actions waiting (a scan of the running executions' records,
//! at most every 30 s and at most [`MAX_SCANNED`] records).
use crate::metrics::QueueLabel;
use crate::scheduler::Execution;
use crate::service::Service;
use std::time::{Duration, Instant};

/// Records one sample of the waiting actions reads at most.
pub const MAX_SCANNED: usize = 10_000;
/// How long a count of waiting actions stands before it is taken again.
const RESCAN: Duration = Duration::from_secs(30);

impl Service {
    /// Bring the service's gauges up to date.
    pub async fn sample_gauges(&self) {
        let m = crate::metrics::get();
        // Trigger events this engine took and holds for their pipeline's turn wait too.
        let in_line = self
            .triggers_in_line
            .load(std::sync::atomic::Ordering::Relaxed) as u64;
        for (name, queue, held) in [
            ("jobs", &self.edges.jobs, 0),
            ("triggers", &self.edges.triggers, in_line),
        ] {
            if let Ok(depth) = queue.depth().await {
                let label = QueueLabel {
                    queue: name.to_string(),
                };
                m.queue_waiting
                    .get_or_create(&label)
                    .set((depth.waiting + held) as i64);
                m.queue_oldest_seconds
                    .get_or_create(&label)
                    .set(depth.oldest.as_secs_f64());
            }
        }
        let due = {
            let mut last = self.gauges_at.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= RESCAN);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && let Ok(n) = self.waiting_actions().await {
            m.actions_waiting.set(n as i64);
        }
    }

    /// Actions of running executions that wait (approvals, events, timers), every tenant's.
    async fn waiting_actions(&self) -> Result<usize, crate::kv::KvError> {
        let keys = self.edges.executions.keys("").await?;
        let mut n = 0;
        for key in keys.iter().filter(|k| k.contains("/x/")).take(MAX_SCANNED) {
            if let Some((exec, _)) =
                crate::kv::get_json::<Execution>(&*self.edges.executions, key).await?
                && !exec.status.is_terminal()
            {
                n += exec
                    .stages
                    .iter()
                    .flat_map(|s| &s.actions)
                    .filter(|a| a.waiting.is_some())
                    .count();
            }
        }
        Ok(n)
    }
}
