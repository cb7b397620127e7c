//! Putting a service together on either set of edges.
use super::{DeadLetter, Edges, Service};
use crate::bus::{EventBus, MemoryBus};
use crate::executor::Engine;
use crate::kv::{Kv, RedbKv};
use crate::nats::{Layout, Timing};
use crate::queue::MemoryQueue;
use futures_util::StreamExt;
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
        functions: Arc::new(RedbKv::bucket(db, "functions")?),
        triggers: MemoryQueue::new(Duration::from_secs(3600)),
        jobs: MemoryQueue::new(Duration::from_secs(3600)),
        bus: bus.clone(),
        dead_letters: None,
        cancel_elsewhere: None,
    };
    let service = Service::new(engine, edges);
    let resumed = service.recover().await?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} unfinished executions");
    }
    Ok((service, bus))
}

/// A service engine on NATS at `url`, with its local cache (compiled components, workspaces)
/// in `data`.
pub async fn nats(url: &str, data: &Path, timing: Timing) -> anyhow::Result<(Arc<Service>, async_nats::Client)> {
    let client = crate::nats::connect(url).await?;
    let layout = Layout::open(&client, timing).await?;
    let bus: Arc<dyn EventBus> = Arc::new(crate::nats::bus::NatsBus::new(layout.js.clone()));
    let blobs = crate::artifacts::nats_store::NatsStore::open(&layout.js, &data.join("cas")).await?;
    let engine = Engine::for_service(data, bus.clone(), Some(std::sync::Arc::new(blobs)))?;
    let js = layout.js.clone();
    let dead_letters = Arc::new(move |letter: &DeadLetter| {
        let (js, subject) = (js.clone(), crate::nats::dead_letter_subject(&letter.tenant, &letter.pipeline));
        let payload = serde_json::to_vec(letter).unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(ack) = js.publish(subject, payload.into()).await {
                let _ = ack.await;
            }
        });
    });
    let cancel_client = client.clone();
    let cancel_elsewhere = Arc::new(move |tenant: &str, ids: Vec<String>| {
        let (client, subject) = (cancel_client.clone(), format!("sluice.{tenant}.cancel"));
        tokio::spawn(async move {
            let _ = client.publish(subject, serde_json::to_vec(&ids).unwrap_or_default().into()).await;
        });
    });
    let edges = Edges {
        pipelines: Arc::new(layout.pipelines),
        executions: Arc::new(layout.executions),
        functions: Arc::new(layout.functions),
        triggers: Arc::new(layout.triggers),
        jobs: Arc::new(layout.jobs),
        bus,
        dead_letters: Some(dead_letters),
        cancel_elsewhere: Some(cancel_elsewhere),
    };
    Ok((Service::new(engine, edges), client))
}

/// Cancel jobs abandoned elsewhere: every engine hears `sluice.*.cancel`.
pub async fn serve_nats_cancellations(service: Arc<Service>, client: async_nats::Client) -> anyhow::Result<()> {
    let mut cancels = client.subscribe("sluice.*.cancel").await?;
    while let Some(message) = cancels.next().await {
        if let Ok(ids) = serde_json::from_slice::<Vec<String>>(&message.payload) {
            service.cancel_local(&ids);
        }
    }
    Ok(())
}

/// Answer control requests on `sluice.*.api.>` (one engine of the queue group answers each).
pub async fn serve_nats_api(service: Arc<Service>, client: async_nats::Client) -> anyhow::Result<()> {
    tokio::spawn(serve_nats_cancellations(service.clone(), client.clone()));
    let mut requests = client.queue_subscribe("sluice.*.api.>", crate::nats::API_GROUP.to_string()).await?;
    while let Some(message) = requests.next().await {
        let (service, client) = (service.clone(), client.clone());
        tokio::spawn(async move {
            let Some(reply) = message.reply.clone() else { return };
            let subject = message.subject.to_string();
            let answer = match subject.strip_prefix("sluice.").and_then(|r| r.split_once(".api.")) {
                Some((tenant, verb)) => match super::api::request_for_verb(verb, &message.payload) {
                    Ok(request) => service.handle(tenant, request).await,
                    Err(e) => serde_json::json!({ "error": e }),
                },
                None => serde_json::json!({ "error": format!("unexpected subject {subject}") }),
            };
            if let Err(e) = client.publish(reply, answer.to_string().into()).await {
                tracing::warn!("reply to {subject}: {e}");
            }
        });
    }
    Ok(())
}
