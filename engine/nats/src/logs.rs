//! Action logs shared between engines. Every engine writes an action's log in its own data
//! directory; on NATS it also puts a copy of each attempt's lines into the Object Store bucket
//! `sluice-logs`, so that `sluice logs --nats` shows them whichever engine ran the action.
use async_nats::jetstream::{self, object_store::ObjectStore};
use sluice_engine::executor::LogLine;
use sluice_engine::executor::logs::{ArchiveError, AttemptRef, LogArchive};
use std::time::Duration;

/// The bucket.
pub const BUCKET: &str = "sluice-logs";
/// How long the bucket keeps a log.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The object holding one attempt's lines (JSON lines, as in the engine's own log files).
pub fn object_name(a: &AttemptRef) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        a.tenant, a.execution, a.stage, a.action, a.attempt
    )
}

/// Bind to (or create) the bucket.
pub async fn open(js: &jetstream::Context) -> anyhow::Result<ObjectStore> {
    match js.get_object_store(BUCKET).await {
        Ok(o) => Ok(o),
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: BUCKET.into(),
                max_age: KEEP,
                num_replicas: crate::replicas(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("create object store {BUCKET}: {e}")),
    }
}

/// Store one attempt's lines from a file of JSON lines, streamed.
pub async fn put(store: &ObjectStore, name: &str, lines: &std::path::Path) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(lines)
        .await
        .map_err(|e| anyhow::anyhow!("store log {name}: {e}"))?;
    store
        .put(name, &mut file)
        .await
        .map_err(|e| anyhow::anyhow!("store log {name}: {e}"))?;
    Ok(())
}

/// One attempt's lines; none if it has no log in the bucket.
pub async fn get(store: &ObjectStore, name: &str) -> anyhow::Result<Option<Vec<LogLine>>> {
    use tokio::io::AsyncReadExt;
    let mut object = match store.get(name).await {
        Ok(o) => o,
        Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("read log {name}: {e}"),
    };
    let mut text = String::new();
    object.read_to_string(&mut text).await?;
    Ok(Some(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    ))
}

/// The shared log archive on NATS.
pub struct NatsLogArchive(pub ObjectStore);

impl LogArchive for NatsLogArchive {
    fn put(
        &self,
        attempt: AttemptRef,
        lines: std::path::PathBuf,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let (store, name) = (self.0.clone(), object_name(&attempt));
        Box::pin(async move {
            // A log that cannot be copied stays on this engine; the action's result stands.
            if let Err(e) = put(&store, &name, &lines).await {
                tracing::warn!("{e:#}");
            }
        })
    }

    fn get(
        &self,
        attempt: AttemptRef,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Vec<LogLine>>, ArchiveError>> {
        let (store, name) = (self.0.clone(), object_name(&attempt));
        Box::pin(async move {
            get(&store, &name)
                .await
                .map_err(|e| ArchiveError(format!("{e:#}")))
        })
    }
}
