//! The engines of a service on NATS ([`Cluster`]): dead letters published to
//! `sluice.<tenant>.deadletter.<pipeline>`, abandoned jobs cancelled on `sluice.<tenant>.cancel`,
//! extra trigger subjects captured by a stream per pipeline, wake subjects by `SLUICE_WAKES`.
use futures_util::future::BoxFuture;
use sluice_engine::service::{Cluster, ClusterError, DeadLetter};
use std::time::Duration;

/// The NATS side of [`Cluster`].
pub struct NatsCluster {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl NatsCluster {
    /// The cluster reached through `client` (and its JetStream context `js`).
    pub fn new(client: async_nats::Client, js: async_nats::jetstream::Context) -> Self {
        NatsCluster { client, js }
    }
}

impl Cluster for NatsCluster {
    fn dead_letter(&self, letter: &DeadLetter) {
        let (js, subject) = (
            self.js.clone(),
            super::dead_letter_subject(&letter.tenant, &letter.pipeline),
        );
        let payload = serde_json::to_vec(letter).unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(ack) = js.publish(subject, payload.into()).await {
                let _ = ack.await;
            }
        });
    }

    fn capture_triggers(
        &self,
        tenant: &str,
        pipeline: &str,
        subjects: Vec<String>,
    ) -> BoxFuture<'static, Result<(), ClusterError>> {
        let (js, tenant, pipeline) = (self.js.clone(), tenant.to_string(), pipeline.to_string());
        Box::pin(async move {
            extra_stream(&js, &tenant, &pipeline, subjects)
                .await
                .map(|_| ())
                .map_err(ClusterError)
        })
    }

    fn cancel_elsewhere(&self, tenant: &str, job_ids: Vec<String>) {
        let (client, subject) = (self.client.clone(), format!("sluice.{tenant}.cancel"));
        tokio::spawn(async move {
            let _ = client
                .publish(
                    subject,
                    serde_json::to_vec(&job_ids).unwrap_or_default().into(),
                )
                .await;
        });
    }

    fn hears_subjects(&self) -> bool {
        true
    }

    fn capture_wake(&self, subject: &str) -> BoxFuture<'static, Result<(), ClusterError>> {
        let (js, subject) = (self.js.clone(), subject.to_string());
        Box::pin(async move {
            capture_wake_subjects(&js, &[subject], false)
                .await
                .map_err(ClusterError)
        })
    }
}

/// The stream capturing the subjects actions wait for; it always holds this one, its own.
pub const WAKES_STREAM: &str = "SLUICE_WAKES";
/// The subject `SLUICE_WAKES` always captures, so that it never has none.
pub const WAKES_SENTINEL: &str = "sluice._wakes";

/// Make `SLUICE_WAKES` capture `subjects`: added to what it has, or (`exact`) exactly these.
pub async fn capture_wake_subjects(
    js: &async_nats::jetstream::Context,
    subjects: &[String],
    exact: bool,
) -> Result<(), String> {
    let mut stream = js
        .get_stream(WAKES_STREAM)
        .await
        .map_err(|e| format!("stream {WAKES_STREAM}: {e}"))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| format!("stream {WAKES_STREAM}: {e}"))?
        .config
        .clone();
    let mut wanted: Vec<String> = if exact {
        vec![WAKES_SENTINEL.to_string()]
    } else {
        config.subjects.clone()
    };
    for s in subjects {
        if !wanted.contains(s) {
            wanted.push(s.clone());
        }
    }
    let (mut have, mut want) = (config.subjects.clone(), wanted.clone());
    have.sort();
    want.sort();
    if have == want {
        return Ok(());
    }
    config.subjects = wanted;
    js.update_stream(&config)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot capture {subjects:?} (does another stream capture it?): {e}"))
}

/// The name of the stream carrying `tenant`'s `pipeline`'s extra `triggers.nats` subjects.
pub fn extra_stream_name(tenant: &str, pipeline: &str) -> String {
    format!(
        "{EXTRA_PREFIX}{}",
        &blake3::hash(format!("{tenant}/{pipeline}").as_bytes()).to_hex()[..20]
    )
}

/// What every extra trigger stream's name starts with.
pub const EXTRA_PREFIX: &str = "SLUICE_X_";

/// How long an event waits in an extra trigger stream, at most (as long as a dead letter).
const EXTRA_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Delete the extra trigger streams no current pipeline version asks for (`wanted`: their
/// names), unless made within the last 30 s (a `pipeline put` makes its stream before its
/// version is current); returns how many went.
pub async fn drop_unwanted_extra_streams(
    js: &async_nats::jetstream::Context,
    wanted: &std::collections::HashSet<String>,
) -> Result<usize, String> {
    use futures_util::TryStreamExt;
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut dropped = 0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for name in names {
        if !name.starts_with(EXTRA_PREFIX) || wanted.contains(&name) {
            continue;
        }
        // Its info comes with it (no second request).
        let Ok(stream) = js.get_stream(&name).await else {
            continue;
        };
        if now - stream.cached_info().created.unix_timestamp() < 30 {
            continue;
        }
        if js.delete_stream(&name).await.is_ok() {
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// The stream (and shared durable consumer) carrying a pipeline's extra `triggers.nats`
/// subjects, created or updated to exactly `subjects`.
pub async fn extra_stream(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    pipeline: &str,
    subjects: Vec<String>,
) -> Result<crate::queue::NatsQueue, String> {
    let name = extra_stream_name(tenant, pipeline);
    let config = async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: subjects.clone(),
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        max_age: EXTRA_MAX_AGE,
        duplicate_window: Duration::from_secs(3600),
        num_replicas: crate::replicas(),
        ..Default::default()
    };
    // Subjects may have changed since the last registration: update, or create.
    if js.get_stream(&name).await.is_ok() {
        js.update_stream(&config)
            .await
            .map_err(|e| format!("cannot capture {subjects:?}: {e}"))?;
    }
    crate::queue::NatsQueue::open(
        js,
        crate::queue::QueueConfig {
            stream: &name,
            subjects,
            consumer: "sluice-engines",
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(3600),
            prefetch: 64,
        },
    )
    .await
    .map_err(|e| format!("cannot capture the subjects: {e}"))
}
