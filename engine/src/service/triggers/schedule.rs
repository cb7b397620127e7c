//! Cron triggers: every engine looks at the registered pipelines' schedules once a second
//! and publishes a trigger event for each fire time that passed. The event id names the
//! pipeline, the schedule and the fire time, so when several engines fire the same moment
//! the claim lets exactly one execution start.
use crate::model::cron::CronSchedule;
use crate::service::Service;
use crate::service::pipelines;
use crate::service::trigger::{Source, TriggerEvent};
use std::collections::HashMap;
use std::time::Duration;

impl Service {
    /// Fire schedules until the process ends.
    pub async fn run_schedules(&self) {
        let mut last = jiff::Timestamp::now();
        // Parsed schedules by (tenant, pipeline, version).
        let mut parsed: HashMap<(String, String, u64), Vec<CronSchedule>> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let now = jiff::Timestamp::now();
            let heads = match pipelines::all_heads(&*self.edges.pipelines).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("schedules: cannot list pipelines: {e}");
                    continue;
                }
            };
            // Only the current versions' schedules are kept: each `pipeline put` would
            // otherwise leave one more entry on every engine.
            let current: std::collections::HashSet<(String, String, u64)> = heads
                .iter()
                .map(|(t, p)| (t.clone(), p.name.clone(), p.version))
                .collect();
            parsed.retain(|key, _| current.contains(key));
            for (tenant, stored) in heads {
                let key = (tenant.clone(), stored.name.clone(), stored.version);
                if !parsed.contains_key(&key) {
                    let Ok(loaded) = self.loaded(&tenant, &stored).await else {
                        continue;
                    };
                    let schedules = loaded
                        .pipeline
                        .triggers
                        .schedule
                        .iter()
                        .filter_map(|s| {
                            CronSchedule::parse(
                                &s.cron.value,
                                s.timezone.as_ref().map(|t| t.value.as_str()),
                            )
                            .ok()
                        })
                        .collect();
                    parsed.insert(key.clone(), schedules);
                }
                let schedules = &parsed[&key];
                for (i, schedule) in schedules.iter().enumerate() {
                    let Some(fire) = schedule.next_after(last) else {
                        continue;
                    };
                    if fire > now {
                        continue;
                    }
                    let event = TriggerEvent {
                        id: format!("schedule-{}-{i}-{}", stored.name, fire.as_second()),
                        source: Some(Source {
                            kind: "schedule".into(),
                            ..Default::default()
                        }),
                        variables: Default::default(),
                        data: None,
                    };
                    let subject = crate::subjects::trigger_subject(&tenant, &stored.name);
                    match self
                        .edges
                        .triggers
                        .push(
                            &subject,
                            &event.id,
                            serde_json::to_vec(&event).unwrap_or_default(),
                        )
                        .await
                    {
                        Ok(()) => tracing::info!(
                            "schedule fired for {tenant}/{}: {}",
                            stored.name,
                            event.id
                        ),
                        Err(e) => tracing::warn!("schedule of {tenant}/{}: {e}", stored.name),
                    }
                }
            }
            last = now;
        }
    }
}
