//! Putting the embedded service together (the NATS one: `sluice_nats::service`).
use super::{Edges, Service};
use crate::bus::MemoryBus;
use crate::executor::Engine;
use crate::kv::{Kv, RedbKv, StoreHealth};
use crate::queue::MemoryQueue;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The embedded service in `data`: a redb file for pipelines and executions, in-process
/// queues, an in-process bus. Jobs of unfinished executions are queued again. The store's
/// health says when its file can no longer be written: the service must stop then.
pub async fn embedded(
    data: &Path,
) -> anyhow::Result<(Arc<Service>, Arc<MemoryBus>, Arc<StoreHealth>)> {
    std::fs::create_dir_all(data)?;
    let bus = Arc::new(MemoryBus::default());
    let engine = Engine::for_service(data, bus.clone(), None)?;
    let db = RedbKv::open_database(&data.join("service.redb"))?;
    let health = Arc::new(StoreHealth::default());
    let bucket = |name: &str| -> anyhow::Result<Arc<dyn Kv>> {
        Ok(Arc::new(
            RedbKv::bucket(db.clone(), name)?.reporting_to(health.clone()),
        ))
    };
    let edges = Edges {
        pipelines: bucket("pipelines")?,
        executions: bucket("executions")?,
        functions: bucket("functions")?,
        waits: bucket("waits")?,
        audit: bucket("audit")?,
        triggers: MemoryQueue::new(Duration::from_secs(3600)),
        jobs: MemoryQueue::new(Duration::from_secs(3600)),
        bus: bus.clone(),
        cluster: Arc::new(super::Alone),
        archive_log: None,
        secrets: None,
    };
    let service = assemble(engine, edges, data)?;
    service.check_master_key().await?;
    let resumed = service.recover().await?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} unfinished executions");
    }
    Ok((service, bus, health))
}

/// The service on `edges`, on either backend: the secrets (the tenants' sealed records, under
/// the master key of `data` or `SLUICE_MASTER_KEY_FILE`) and the action cache both live in the
/// pipelines bucket, so every engine of the service reads the same ones.
pub fn assemble(mut engine: Engine, edges: Edges, data: &Path) -> anyhow::Result<Arc<Service>> {
    let secrets = crate::secrets::for_service(edges.pipelines.clone(), data)?;
    engine.secrets = Some(secrets.clone());
    // Every tenant's artifacts sealed at rest under a key derived from its data key.
    engine.seal_artifacts(secrets.clone())?;
    engine.cache = Some(Arc::new(crate::cache::ActionCache::new(
        edges.pipelines.clone(),
    )));
    let edges = Edges {
        secrets: Some(secrets),
        ..edges
    };
    Ok(Service::new(engine, edges))
}
