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
        functions: Arc::new(RedbKv::bucket(db.clone(), "functions")?),
        waits: Arc::new(RedbKv::bucket(db, "waits")?),
        triggers: MemoryQueue::new(Duration::from_secs(3600)),
        jobs: MemoryQueue::new(Duration::from_secs(3600)),
        bus: bus.clone(),
        dead_letters: None,
        extra_subjects: None,
        cancel_elsewhere: None,
        wake_subject: None,
        archive_log: None,
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
pub async fn nats(
    url: &str,
    data: &Path,
    timing: Timing,
) -> anyhow::Result<(Arc<Service>, async_nats::Client)> {
    let client = crate::nats::connect(url).await?;
    let layout = Layout::open(&client, timing).await?;
    let bus: Arc<dyn EventBus> = Arc::new(crate::nats::bus::NatsBus::new(layout.js.clone()));
    let blobs =
        crate::artifacts::nats_store::NatsStore::open(&layout.js, &data.join("cas")).await?;
    let engine = Engine::for_service(data, bus.clone(), Some(std::sync::Arc::new(blobs)))?;
    // `notify-nats@1` and other publishers without a `server` use the service's NATS.
    engine.registry.runtime().nats.set_default(url);
    let js = layout.js.clone();
    let dead_letters = Arc::new(move |letter: &DeadLetter| {
        let (js, subject) = (
            js.clone(),
            crate::nats::dead_letter_subject(&letter.tenant, &letter.pipeline),
        );
        let payload = serde_json::to_vec(letter).unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(ack) = js.publish(subject, payload.into()).await {
                let _ = ack.await;
            }
        });
    });
    let logs = crate::nats::logs::open(&layout.js).await?;
    let extra_js = layout.js.clone();
    let wake_js = layout.js.clone();
    let cancel_client = client.clone();
    let cancel_elsewhere = Arc::new(move |tenant: &str, ids: Vec<String>| {
        let (client, subject) = (cancel_client.clone(), format!("sluice.{tenant}.cancel"));
        tokio::spawn(async move {
            let _ = client
                .publish(subject, serde_json::to_vec(&ids).unwrap_or_default().into())
                .await;
        });
    });
    let edges = Edges {
        pipelines: Arc::new(layout.pipelines),
        executions: Arc::new(layout.executions),
        functions: Arc::new(layout.functions),
        waits: Arc::new(layout.waits),
        triggers: Arc::new(layout.triggers),
        jobs: Arc::new(layout.jobs),
        bus,
        dead_letters: Some(dead_letters),
        extra_subjects: Some(Arc::new(
            move |tenant: String, pipeline: String, subjects: Vec<String>| {
                let js = extra_js.clone();
                Box::pin(async move {
                    extra_stream(&js, &tenant, &pipeline, subjects)
                        .await
                        .map(|_| ())
                }) as futures_util::future::BoxFuture<'static, Result<(), String>>
            },
        )),
        cancel_elsewhere: Some(cancel_elsewhere),
        wake_subject: Some(Arc::new(move |subject: String| {
            let js = wake_js.clone();
            Box::pin(async move { capture_wake_subjects(&js, &[subject], false).await })
                as futures_util::future::BoxFuture<'static, Result<(), String>>
        })),
        archive_log: Some(Arc::new(crate::nats::logs::NatsLogArchive(logs))),
    };
    Ok((Service::new(engine, edges), client))
}

/// The stream capturing the subjects actions wait for; it always holds this one, its own.
const WAKES_STREAM: &str = "SLUICE_WAKES";
const WAKES_SENTINEL: &str = "sluice._wakes";

/// Make `SLUICE_WAKES` capture `subjects`: added to what it has, or (`exact`) exactly these.
async fn capture_wake_subjects(
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

/// Wake actions waiting for NATS events: consume `SLUICE_WAKES`, and every few seconds make
/// its subjects exactly those some action waits for (repairing concurrent updates).
pub async fn serve_wakes(service: Arc<Service>, js: async_nats::jetstream::Context) {
    let queue = match crate::queue::NatsQueue::open(
        &js,
        crate::queue::nats_queue::QueueConfig {
            stream: WAKES_STREAM,
            subjects: vec![WAKES_SENTINEL.into()],
            consumer: "sluice-engines",
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
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
                && let Err(e) = capture_wake_subjects(&js, &subjects, true).await
            {
                tracing::warn!("event wakes: {e}");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    super::consume(&queue, "event wakes", |delivery| {
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
        .queue_subscribe("sluice.*.api.>", crate::nats::API_GROUP.to_string())
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
                // The tenant is the subject's: whoever may publish there acts for it (the
                // NATS server's permissions decide who may).
                Some((tenant, verb)) => sluice_api::wire::encode(
                    match sluice_api::Request::for_verb(verb, &message.payload) {
                        Ok(request) => {
                            let principal =
                                sluice_api::Principal::local(tenant, sluice_api::Origin::Remote);
                            service.handle(&principal, request).await
                        }
                        Err(e) => Err(e),
                    },
                ),
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

/// The stream (and shared durable consumer) carrying a pipeline's extra `triggers.nats`
/// subjects, created or updated to exactly `subjects`.
async fn extra_stream(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    pipeline: &str,
    subjects: Vec<String>,
) -> Result<crate::queue::NatsQueue, String> {
    let name = format!(
        "SLUICE_X_{}",
        &blake3::hash(format!("{tenant}/{pipeline}").as_bytes()).to_hex()[..20]
    );
    let config = async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: subjects.clone(),
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(3600),
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
        crate::queue::nats_queue::QueueConfig {
            stream: &name,
            subjects,
            consumer: "sluice-engines",
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(3600),
        },
    )
    .await
    .map_err(|e| format!("cannot capture the subjects: {e}"))
}

/// Consume the extra trigger subjects of every registered pipeline: checks the registry every
/// two seconds and runs one consumer per pipeline that has any.
pub async fn serve_extra_triggers(service: Arc<Service>, js: async_nats::jetstream::Context) {
    let mut running: std::collections::HashMap<
        (String, String),
        (Vec<String>, tokio::task::JoinHandle<()>),
    > = std::collections::HashMap::new();
    loop {
        if let Ok(heads) = super::pipelines::all_heads(&*service.edges().pipelines).await {
            for (tenant, stored) in heads {
                let subjects: Vec<String> = match service.loaded(&tenant, &stored).await {
                    Ok(l) => l
                        .pipeline
                        .triggers
                        .nats
                        .iter()
                        .map(|s| s.value.clone())
                        .collect(),
                    Err(_) => continue,
                };
                let key = (tenant.clone(), stored.name.clone());
                if subjects.is_empty() || running.get(&key).is_some_and(|(s, _)| *s == subjects) {
                    continue;
                }
                if let Some((_, old)) = running.remove(&key) {
                    old.abort();
                }
                match extra_stream(&js, &tenant, &stored.name, subjects.clone()).await {
                    Ok(queue) => {
                        let (service, tenant2, name) =
                            (service.clone(), tenant.clone(), stored.name.clone());
                        let task = tokio::spawn(async move {
                            let what = format!("extra triggers of {tenant2}/{name}");
                            super::consume(&queue, &what, |d| {
                                service.handle_trigger_for(
                                    &tenant2,
                                    &name,
                                    d,
                                    crate::queue::WorkQueue::ack_wait(&queue),
                                )
                            })
                            .await
                        });
                        running.insert(key, (subjects, task));
                    }
                    Err(e) => tracing::warn!("extra triggers of {tenant}/{}: {e}", stored.name),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
