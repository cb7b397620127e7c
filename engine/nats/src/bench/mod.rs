//! `sluice bench --nats URL`: the service on NATS against raw JetStream, in one run (built
//! only with the `bench` feature, which the `sluice` binary turns on).
//!
//! (floor) a JetStream publish (acknowledged) consumed by a pull consumer: round trip;
//! (latency) trigger event published → pipeline-succeeded event received, for a 3-stage,
//!   5-action no-op pipeline, one execution at a time;
//! (http) a start over HTTP → the succeeded event over SSE, against the same over NATS
//!   request/reply (see `http.rs`);
//! (throughput) executions per second for a burst of events, with one and with two engines.
//!
//! `processes` measures the same throughput with 1, 2, … `sluice serve` processes instead.
mod http;
pub mod processes;

use futures_util::StreamExt;
use sluice_api::{Origin, Principal, verbs};
use sluice_engine::bus::{Event, Kind};
use sluice_engine::scheduler::Status;
use sluice_engine::service::Service;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIPELINE: &str = "name: bench
execution_mode: parallel
stages:
  - name: Source
    actions:
      - { name: A, uses: noop@1 }
  - name: Build
    actions:
      - { name: B, uses: noop@1 }
      - { name: C, uses: noop@1 }
      - { name: D, uses: noop@1, run_order: 2 }
  - name: Deploy
    actions:
      - { name: E, uses: noop@1 }
";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// An engine on its own connection (returned too: its message counts are the benchmark's
/// noise-free measure of the service's round trips).
async fn engine(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    workers: usize,
) -> anyhow::Result<(Arc<Service>, async_nats::Client)> {
    let (service, client) = crate::service::serve(
        url,
        &dir.join(name),
        crate::Timing {
            ack_wait: Duration::from_secs(30),
        },
    )
    .await?;
    tokio::spawn(crate::service::serve_nats_api(
        service.clone(),
        client.clone(),
    ));
    tokio::spawn(service.clone().run(workers));
    Ok((service, client))
}

/// Messages an engine's connection has (sent, received).
fn message_counts(client: &async_nats::Client) -> (u64, u64) {
    let s = client.statistics();
    (
        s.out_messages.load(std::sync::atomic::Ordering::Relaxed),
        s.in_messages.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Publish `n` trigger events for the `bench` pipeline and wait until each has a terminal
/// pipeline event.
async fn burst(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    burst_on(client, js, "bench", prefix, n).await
}

/// Publish `n` trigger events for `pipeline` and wait until each has a terminal pipeline event.
async fn burst_on(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    pipeline: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let mut events = client
        .subscribe(format!("sluice.default.events.pipeline.{pipeline}"))
        .await?;
    let t = Instant::now();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let body = serde_json::json!({ "id": id }).to_string();
        js.send_publish(
            format!("sluice.default.trigger.{pipeline}"),
            async_nats::jetstream::message::PublishMessage::build()
                .message_id(&id)
                .payload(body.into()),
        )
        .await?
        .await?;
    }
    let mut done = HashSet::new();
    while done.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(120), events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("events closed"))?;
        let e: Event = serde_json::from_slice(&m.payload)?;
        if e.kind == Kind::Pipeline && e.status.is_terminal() {
            anyhow::ensure!(
                e.status == Status::Succeeded,
                "execution {} {}",
                e.execution_id,
                e.status
            );
            done.insert(e.execution_id);
        }
    }
    Ok(t.elapsed())
}

/// Run the NATS benchmark against the server at `url`.
pub async fn run(url: &str, samples: usize, burst_size: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let client = crate::connect_client(url).await?;
    let js = async_nats::jetstream::new(client.clone());

    // (floor) publish → consume round trip.
    let _ = js.delete_stream("SLUICE_BENCH_RTT").await;
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "SLUICE_BENCH_RTT".into(),
            subjects: vec!["sluice-bench.rtt".into()],
            ..Default::default()
        })
        .await?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("rtt".into()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut floor = Vec::new();
    for i in 0..samples + 20 {
        let t = Instant::now();
        js.publish("sluice-bench.rtt", format!("{i}").into())
            .await?
            .await?;
        let m = messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no message"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if i >= 20 {
            floor.push(t.elapsed());
        }
    }
    drop(messages);
    js.delete_stream("SLUICE_BENCH_RTT").await?;
    floor.sort();

    // One engine; register the pipeline.
    let (first, first_client) = engine(url, tmp.path(), "engine-1", 8).await?;
    std::fs::write(tmp.path().join("bench.yaml"), PIPELINE)?;
    let put = first
        .call(
            &Principal::local("default", Origin::Remote),
            verbs::PipelinePut {
                file: "bench.yaml".into(),
                dir: None,
                yaml: PIPELINE.into(),
                plugins: Default::default(),
                bundle: None,
            },
        )
        .await;
    anyhow::ensure!(put.is_ok(), "register the pipeline: {put:?}");
    let run_id = ulid::Ulid::new().to_string();

    // (latency) one execution at a time.
    burst(&client, &js, &format!("warm-{run_id}"), 10).await?;
    let mut latency = Vec::new();
    let (sent, received) = message_counts(&first_client);
    for i in 0..samples {
        latency.push(burst(&client, &js, &format!("lat-{run_id}-{i}"), 1).await?);
    }
    let (sent, received) = {
        let (s, r) = message_counts(&first_client);
        (
            (s - sent) as f64 / samples as f64,
            (r - received) as f64 / samples as f64,
        )
    };
    latency.sort();

    // (http) the HTTP API against NATS request/reply, on this engine.
    let (http, reqrep) =
        http::compare(first.clone(), first_client.clone(), &client, samples).await?;

    // (throughput) a burst, with one engine and then with two.
    let one = burst(&client, &js, &format!("one-{run_id}"), burst_size).await?;
    let _second = engine(url, tmp.path(), "engine-2", 8).await?;
    burst(&client, &js, &format!("warm2-{run_id}"), 10).await?;
    let two = burst(&client, &js, &format!("two-{run_id}"), burst_size).await?;

    let (f50, f99, l50, l99) = (
        pct(&floor, 0.5),
        pct(&floor, 0.99),
        pct(&latency, 0.5),
        pct(&latency, 0.99),
    );
    let r50 = l50.as_secs_f64() / f50.as_secs_f64();
    let r99 = l99.as_secs_f64() / f99.as_secs_f64();
    println!("## Service on NATS ({samples} samples, bursts of {burst_size} executions)\n");
    println!("| measure | p50 | p99 | |");
    println!("|---|---|---|---|");
    println!(
        "| (floor) JetStream publish (acked) → pull consume | {} | {} | baseline |",
        ms(f50),
        ms(f99)
    );
    println!(
        "| trigger event → pipeline succeeded event, 3 stages, 5 no-op actions | {} | {} | {r50:.1}× / {r99:.1}× the floor — target ≤ 10× / ≤ 30× |",
        ms(l50),
        ms(l99)
    );
    let h50 = pct(&http, 0.5).as_secs_f64() / pct(&reqrep, 0.5).as_secs_f64();
    println!(
        "| (nats) `api.start` request/reply → pipeline succeeded event on its subject | {} | {} | baseline of (http) |",
        ms(pct(&reqrep, 0.5)),
        ms(pct(&reqrep, 0.99))
    );
    println!(
        "| (http) `POST /api/v1/pipelines/bench/executions` → succeeded event on `GET /api/v1/events` (SSE) | {} | {} | {h50:.2}× (nats) at p50 — target ≤ 1.5× |",
        ms(pct(&http, 0.5)),
        ms(pct(&http, 0.99))
    );
    println!(
        "\nThe engine's messages to and from NATS per execution (latency runs; requests, publishes, acks, pulls, replies — not timing, so not noisy): {sent:.1} sent, {received:.1} received."
    );
    let rate = |d: Duration| burst_size as f64 / d.as_secs_f64();
    println!("\n| throughput | executions/s |");
    println!("|---|---|");
    println!("| one engine (8 workers) | {:.0} |", rate(one));
    println!(
        "| two engines (8 workers each, same process and cores) | {:.0} |",
        rate(two)
    );
    println!(
        "\n{}",
        if r50 <= 10.0 && r99 <= 30.0 && h50 <= 1.5 {
            "latency targets met"
        } else {
            "LATENCY TARGETS MISSED"
        }
    );
    Ok(())
}

/// Publish `n` trigger events (ids `flood-{round}-{i}`) straight to `subject`, 256
/// acknowledgements awaited at once, as a webhook relay would; then wait until the engines have
/// taken every one off the triggers stream (`sluice bench --fairness N --flood published`).
pub async fn publish_triggers(
    url: &str,
    subject: &str,
    n: usize,
    round: &str,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(crate::connect_client(url).await?);
    let acks: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (js, subject) = (js.clone(), subject.to_string());
            let body = format!(r#"{{"id": "flood-{round}-{i}"}}"#);
            async move {
                js.publish(subject, body.into()).await?.await?;
                Ok(())
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for r in acks {
        r?;
    }
    let mut stream = js.get_stream("SLUICE_TRIGGERS").await?;
    while stream.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
