//! Putting the embedded service together (the NATS one: `sluice_nats::service`).
use super::{Edges, Service};
use crate::bus::MemoryBus;
use crate::executor::Engine;
use crate::kv::{Kv, RedbKv};
use crate::queue::MemoryQueue;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The embedded service in `data`: a redb file for pipelines and executions, in-process
/// queues, an in-process bus. Jobs of unfinished executions are queued again.
pub async fn embedded(data: &Path) -> anyhow::Result<(Arc<Service>, Arc<MemoryBus>)> {
    std::fs::create_dir_all(data)?;
    let bus = Arc::new(MemoryBus::default());
    let engine = Engine::for_service(data, bus.clone(), None)?;
    let db = RedbKv::open_database(&data.join("service.redb"))?;
    let edges = Edges {
        pipelines: Arc::new(RedbKv::bucket(db.clone(), "pipelines")?) as Arc<dyn Kv>,
        executions: Arc::new(RedbKv::bucket(db.clone(), "executions")?),
        functions: Arc::new(RedbKv::bucket(db.clone(), "functions")?),
        waits: Arc::new(RedbKv::bucket(db, "waits")?),
        triggers: MemoryQueue::new(Duration::from_secs(3600)),
        jobs: MemoryQueue::new(Duration::from_secs(3600)),
        bus: bus.clone(),
        cluster: Arc::new(super::Alone),
        archive_log: None,
    };
    let service = Service::new(engine, edges);
    let resumed = service.recover().await?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} unfinished executions");
    }
    Ok((service, bus))
}
