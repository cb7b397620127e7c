//! (http) The HTTP API against NATS request/reply, in one run on one engine: a start request,
//! then the pipeline-succeeded event — over HTTP (`POST …/executions`, the event on the
//! server-sent event stream) and over NATS (`api.start` request/reply, the event on its
//! subject). Same pipeline (3 stages, 5 no-op actions), one execution at a time.
use futures_util::StreamExt;
use sluice_engine::bus::{Event, Kind};
use sluice_engine::scheduler::Status;
use sluice_engine::service::Service;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 connection for POSTs with empty bodies.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn post(&mut self, path: &str) -> anyhow::Result<serde_json::Value> {
        let req = format!("POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\n\r\n");
        self.0.get_mut().write_all(req.as_bytes()).await?;
        let mut length = 0usize;
        let mut status = String::new();
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await?;
            if status.is_empty() {
                status = line.clone();
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await?;
        anyhow::ensure!(
            status.contains(" 201 "),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(serde_json::from_slice(&body)?)
    }
}

/// Succeeded executions' ids as they are announced on the event stream at `addr`.
async fn sse(
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /api/v1/events?pipeline=bench HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n")
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Chunk sizes and other fields pass by; data lines carry the events.
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(e) = serde_json::from_str::<Event>(data.trim())
                && e.kind == Kind::Pipeline
                && e.status == Status::Succeeded
                && tx.send(e.execution_id).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

async fn until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    id: &str,
) -> anyhow::Result<()> {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
        if got == id {
            return Ok(());
        }
    }
}

/// (p50, p99) of HTTP and of NATS request/reply, `samples` each, alternating.
pub async fn compare(
    service: Arc<Service>,
    nats: async_nats::Client,
    client: &async_nats::Client,
    samples: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let events = sluice_engine::service::http::feed::EventSource::Stream(
        crate::bus::all_events(&nats).await?,
    );
    tokio::spawn(sluice_engine::service::http::serve_on(
        service, events, listener,
    ));
    let mut succeeded = sse(addr).await?;
    let mut conn = Conn(BufReader::new(TcpStream::connect(addr).await?));
    let mut subject = client
        .subscribe("sluice.default.events.pipeline.bench")
        .await?;
    let (mut http, mut nats) = (Vec::new(), Vec::new());
    for i in 0..samples + 10 {
        // HTTP: start, then the event on the stream.
        let t = Instant::now();
        let r = conn.post("/api/v1/pipelines/bench/executions").await?;
        let id = r["execution_id"].as_str().unwrap_or_default().to_string();
        until(&mut succeeded, &id).await?;
        let h = t.elapsed();
        // NATS: request/reply, then the event on its subject.
        let t = Instant::now();
        let reply = client
            .request(
                "sluice.default.api.start",
                r#"{"pipeline": "bench"}"#.into(),
            )
            .await?;
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let id = reply["ok"]["execution_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), subject.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
            if let Ok(e) = serde_json::from_slice::<Event>(&m.payload)
                && e.execution_id == id
                && e.status == Status::Succeeded
            {
                break;
            }
        }
        let n = t.elapsed();
        // The first ten warm both paths up.
        if i >= 10 {
            http.push(h);
            nats.push(n);
        }
    }
    http.sort();
    nats.sort();
    Ok((http, nats))
}
