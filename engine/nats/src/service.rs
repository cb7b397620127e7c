//! Putting a service engine together on NATS, and the loops that feed it: control requests,
//! cancellations from other engines, extra trigger subjects and event wakes.
use crate::{Layout, Timing};
use futures_util::StreamExt;
use sluice_engine::bus::EventBus;
use sluice_engine::executor::Engine;
use sluice_engine::service::{Edges, Service};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long an engine waits for JetStream to take its streams and buckets (a cluster that is
/// still electing leaders or seeing its peers) before it gives up.
const JETSTREAM_READY: Duration = Duration::from_secs(120);

/// [`Layout::open`], again while JetStream is not ready yet: engines and a cluster started
/// together (a restart of everything) must not need starting in order.
async fn open_layout(client: &async_nats::Client, timing: Timing) -> anyhow::Result<Layout> {
    let deadline = tokio::time::Instant::now() + JETSTREAM_READY;
    let mut pause = Duration::from_millis(200);
    loop {
        match Layout::open(client, timing).await {
            Ok(layout) => return Ok(layout),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("JetStream is not ready ({e:#}); trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "JetStream was not ready within {JETSTREAM_READY:?}"
                )));
            }
        }
    }
}

/// A service engine on NATS at `url`, with its local cache (compiled components, workspaces)
/// in `data`.
pub async fn serve(
    url: &str,
    data: &Path,
    timing: Timing,
) -> anyhow::Result<(Arc<Service>, async_nats::Client)> {
    let client = crate::connect(url).await?;
    let layout = open_layout(&client, timing).await?;
    let bus: Arc<dyn EventBus> = Arc::new(crate::bus::NatsBus::new(layout.js.clone()));
    let blobs = crate::store::NatsStore::open(&layout.js, &data.join("cas")).await?;
    let engine = Engine::for_service(data, bus.clone(), Some(Arc::new(blobs)))?;
    // `notify-nats@1` and other publishers without a `server` use the service's NATS.
    engine.registry.runtime().nats.set_default(url);
    engine.registry.runtime().nats.set_publisher(Arc::new(
        crate::publisher::NatsPublisher::with_own(url, client.clone()),
    ));
    let logs = crate::logs::open(&layout.js).await?;
    let cluster = crate::cluster::NatsCluster::new(client.clone(), layout.js.clone());
    let edges = Edges {
        pipelines: Arc::new(layout.pipelines),
        executions: Arc::new(layout.executions),
        functions: Arc::new(layout.functions),
        waits: Arc::new(layout.waits),
        audit: Arc::new(layout.audit),
        triggers: Arc::new(layout.triggers),
        jobs: Arc::new(layout.jobs),
        bus,
        cluster: Arc::new(cluster),
        archive_log: Some(Arc::new(crate::logs::NatsLogArchive(logs))),
        secrets: None,
    };
    let service = sluice_engine::service::wiring::assemble(engine, edges, data)?;
    service.check_master_key().await?;
    Ok((service, client))
}

/// Wake actions waiting for NATS events: consume `SLUICE_WAKES`, and every few seconds make
/// its subjects exactly those some action waits for (repairing concurrent updates).
pub async fn serve_wakes(service: Arc<Service>, js: async_nats::jetstream::Context) {
    let queue = match crate::queue::NatsQueue::open(
        &js,
        crate::queue::QueueConfig {
            stream: crate::cluster::WAKES_STREAM,
            subjects: vec![crate::cluster::WAKES_SENTINEL.into()],
            consumer: "sluice-engines",
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            prefetch: 1,
        },
    )
    .await
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("event wakes are off: {e}");
            return;
        }
    };
    let keeper = service.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(subjects) = keeper.awaited_subjects().await
                && let Err(e) = crate::cluster::capture_wake_subjects(&js, &subjects, true).await
            {
                tracing::warn!("event wakes: {e}");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    sluice_engine::service::consume(&queue, "event wakes", |delivery| {
        let service = service.clone();
        async move {
            match service
                .wake_by_subject(&delivery.subject, &delivery.payload)
                .await
            {
                Ok(n) => {
                    tracing::info!("event on {}: {n} action(s) woken", delivery.subject);
                    let _ = delivery.ack().await;
                }
                Err(e) => {
                    tracing::warn!("event on {} not handled yet: {e}", delivery.subject);
                    let _ = delivery.nak(Duration::from_secs(1)).await;
                }
            }
        }
    })
    .await
}

/// Cancel jobs abandoned elsewhere: every engine hears `sluice.*.cancel`.
pub async fn serve_nats_cancellations(
    service: Arc<Service>,
    client: async_nats::Client,
) -> anyhow::Result<()> {
    let mut cancels = client.subscribe("sluice.*.cancel").await?;
    while let Some(message) = cancels.next().await {
        if let Ok(ids) = serde_json::from_slice::<Vec<String>>(&message.payload) {
            service.cancel_local(&ids);
        }
    }
    Ok(())
}

/// Answer control requests on `sluice.*.api.>` (one engine of the queue group answers each).
pub async fn serve_nats_api(
    service: Arc<Service>,
    client: async_nats::Client,
) -> anyhow::Result<()> {
    tokio::spawn(serve_nats_cancellations(service.clone(), client.clone()));
    tokio::spawn(serve_extra_triggers(
        service.clone(),
        async_nats::jetstream::new(client.clone()),
    ));
    tokio::spawn(serve_wakes(
        service.clone(),
        async_nats::jetstream::new(client.clone()),
    ));
    let mut requests = client
        .queue_subscribe("sluice.*.api.>", crate::API_GROUP.to_string())
        .await?;
    while let Some(message) = requests.next().await {
        let (service, client) = (service.clone(), client.clone());
        tokio::spawn(async move {
            let Some(reply) = message.reply.clone() else {
                return;
            };
            let subject = message.subject.to_string();
            let answer = match subject
                .strip_prefix("sluice.")
                .and_then(|r| r.split_once(".api."))
            {
                // The tenant is the subject's: without authentication, whoever may publish
                // there acts for it (the NATS server's permissions decide who may); with it,
                // the token in the `Authorization` header decides, and must be that tenant's.
                Some((tenant, verb)) => {
                    let token = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Authorization"))
                        .map(|v| v.as_str().trim_start_matches("Bearer").trim().to_string());
                    sluice_api::wire::encode(
                        match sluice_api::Request::for_verb(verb, &message.payload) {
                            Ok(request) => {
                                match service
                                    .authenticate(
                                        token.as_deref(),
                                        tenant,
                                        sluice_api::Origin::Remote,
                                    )
                                    .await
                                {
                                    Ok(principal) => service.handle(&principal, request).await,
                                    Err(refused) => Err(refused),
                                }
                            }
                            Err(e) => Err(e),
                        },
                    )
                }
                None => sluice_api::wire::encode(Err(sluice_api::ApiError::invalid(format!(
                    "unexpected subject {subject}"
                )))),
            };
            if let Err(e) = client.publish(reply, answer.to_string().into()).await {
                tracing::warn!("reply to {subject}: {e}");
            }
        });
    }
    Ok(())
}

/// Consume the extra trigger subjects of every registered pipeline: checks the registry every
/// two seconds and runs one consumer per pipeline that has any.
pub async fn serve_extra_triggers(service: Arc<Service>, js: async_nats::jetstream::Context) {
    let mut running: std::collections::HashMap<
        (String, String),
        (Vec<String>, tokio::task::JoinHandle<()>),
    > = std::collections::HashMap::new();
    let mut swept = std::time::Instant::now();
    loop {
        if let Ok(heads) =
            sluice_engine::service::pipelines::all_heads(&*service.edges().pipelines).await
        {
            // The pipelines whose current version has extra subjects (a removed pipeline, or
            // a version without them, stops its consumer and, below, its stream).
            let mut wanted = std::collections::HashSet::new();
            for (tenant, stored) in heads {
                let key = (tenant.clone(), stored.name.clone());
                let subjects: Vec<String> = match service.loaded(&tenant, &stored).await {
                    Ok(l) => l
                        .pipeline
                        .triggers
                        .nats
                        .iter()
                        .map(|s| s.value.clone())
                        .collect(),
                    // Unknown for now: whatever runs for it stays.
                    Err(_) => {
                        wanted.insert(key);
                        continue;
                    }
                };
                if !subjects.is_empty() {
                    wanted.insert(key.clone());
                }
                if subjects.is_empty() || running.get(&key).is_some_and(|(s, _)| *s == subjects) {
                    continue;
                }
                if let Some((_, old)) = running.remove(&key) {
                    old.abort();
                }
                match crate::cluster::extra_stream(&js, &tenant, &stored.name, subjects.clone())
                    .await
                {
                    Ok(queue) => {
                        let (service, tenant2, name) =
                            (service.clone(), tenant.clone(), stored.name.clone());
                        let task = tokio::spawn(async move {
                            let what = format!("extra triggers of {tenant2}/{name}");
                            sluice_engine::service::consume(&queue, &what, |d| {
                                service.handle_trigger_for(
                                    &tenant2,
                                    &name,
                                    d,
                                    sluice_engine::queue::WorkQueue::ack_wait(&queue),
                                )
                            })
                            .await
                        });
                        running.insert(key, (subjects, task));
                    }
                    Err(e) => tracing::warn!("extra triggers of {tenant}/{}: {e}", stored.name),
                }
            }
            running.retain(|key, (_, task)| {
                let keep = wanted.contains(key);
                if !keep {
                    task.abort();
                }
                keep
            });
            // Now and then, the streams nobody wants any more (every engine looks; deleting
            // twice is harmless).
            if swept.elapsed() > Duration::from_secs(30) {
                swept = std::time::Instant::now();
                let names = wanted
                    .iter()
                    .map(|(t, p)| crate::cluster::extra_stream_name(t, p))
                    .collect();
                match crate::cluster::drop_unwanted_extra_streams(&js, &names).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(dropped = n, "trigger streams of removed pipelines deleted")
                    }
                    Err(e) => tracing::warn!("extra trigger streams: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
