//! The client side of the control API, for the CLI: over NATS when a URL is given, else over
//! the embedded service's socket.
use super::api::Request;
use super::socket::{Envelope, socket_path};
use crate::bus::{Event, Kind};
use crate::scheduler::Execution;
use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A connection to a running service.
pub enum Client {
    /// Over NATS.
    Nats {
        /// The connection.
        client: async_nats::Client,
        /// Tenant.
        tenant: String,
    },
    /// Over the embedded service's socket.
    Local {
        /// The socket.
        socket: PathBuf,
        /// Tenant.
        tenant: String,
    },
}

/// A request the service refused; `diagnostics` holds a pipeline's problems.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// Why.
    pub message: String,
    /// FILE:LINE:COL lines, for an invalid pipeline.
    pub diagnostics: Option<String>,
}

impl Client {
    /// Connect to the service on NATS at `nats`, or else to the embedded one in `data`.
    pub async fn connect(nats: Option<&str>, data: &Path, tenant: &str) -> anyhow::Result<Self> {
        match nats {
            Some(url) => Ok(Client::Nats {
                client: crate::nats::connect_client(url).await?,
                tenant: tenant.to_string(),
            }),
            None => {
                let socket = socket_path(data);
                if !socket.exists() {
                    bail!(
                        "no service is running: start one with `sluice serve` (embedded, data in {}) or pass --nats URL / set SLUICE_NATS_URL",
                        data.display()
                    );
                }
                Ok(Client::Local {
                    socket,
                    tenant: tenant.to_string(),
                })
            }
        }
    }

    /// Send a request; returns the `ok` value or the service's refusal.
    pub async fn call(&self, request: &Request) -> anyhow::Result<Value> {
        // Refused here, before an over-long id makes a subject the NATS server drops us for.
        let (Client::Nats { tenant, .. } | Client::Local { tenant, .. }) = self;
        super::api::check_tenant(tenant)
            .map_err(refusal)
            .and_then(|()| request.check_lengths().map_err(|e| refusal(e.to_string())))?;
        let reply: Value = match self {
            Client::Nats { client, tenant } => {
                let mut body = serde_json::to_value(request)?;
                let verb = body
                    .as_object_mut()
                    .and_then(|m| m.remove("verb"))
                    .and_then(|v| v.as_str().map(str::to_string))
                    .context("request without verb")?;
                let subject = crate::nats::api_subject(tenant, &verb);
                let reply = client.request(subject.clone(), serde_json::to_vec(&body)?.into()).await.map_err(|e| match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!("no engine answers on {subject}: start one with `sluice serve --nats URL`"),
                    _ => anyhow::anyhow!("request {subject}: {e}"),
                })?;
                serde_json::from_slice(&reply.payload).context("reply is not JSON")?
            }
            Client::Local { socket, tenant } => {
                let mut lines = self
                    .send_local(
                        socket,
                        Envelope {
                            tenant: tenant.clone(),
                            request: Some(request.clone()),
                            watch: None,
                        },
                    )
                    .await?;
                let line = lines
                    .next_line()
                    .await?
                    .context("the service closed the connection")?;
                serde_json::from_str(&line)?
            }
        };
        unwrap_reply(reply)
    }

    async fn send_local(
        &self,
        socket: &Path,
        envelope: Envelope,
    ) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
        let stream = UnixStream::connect(socket).await.with_context(|| {
            format!(
                "cannot reach the service at {} (is `sluice serve` running?)",
                socket.display()
            )
        })?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{}\n", serde_json::to_string(&envelope)?).as_bytes())
            .await?;
        Ok(BufReader::new(read).lines())
    }

    /// Follow an execution: `on_event` sees each of its events, from its start (replayed from
    /// the record) until it ends. Returns the final record.
    pub async fn watch(
        &self,
        execution_id: &str,
        on_event: impl FnMut(&Event),
    ) -> anyhow::Result<Execution> {
        // What the record already shows is replayed; live events repeating it are skipped.
        let mut seen = std::collections::HashSet::new();
        let mut on_event = on_event;
        let mut once = move |e: &Event| {
            if seen.insert((
                e.kind,
                e.stage.clone(),
                e.action.clone(),
                e.status,
                e.attempt,
            )) {
                on_event(e);
            }
        };
        self.watch_inner(execution_id, &mut once).await
    }

    async fn watch_inner(
        &self,
        execution_id: &str,
        on_event: &mut dyn FnMut(&Event),
    ) -> anyhow::Result<Execution> {
        super::api::check_len("the execution id", execution_id)
            .map_err(|e| refusal(e.to_string()))?;
        // Replayed in the order things happened: by time, starts before ends.
        let replay = |exec: &Execution, on_event: &mut dyn FnMut(&Event)| {
            let mut events = crate::bus::diff(&crate::bus::Snapshot::blank(exec), exec);
            let rank = |e: &Event| match (e.kind, e.status.is_terminal()) {
                (Kind::Pipeline, false) => 0,
                (Kind::Stage, false) => 1,
                (_, false) => 2,
                (Kind::Action, true) => 3,
                (Kind::Stage, true) => 4,
                _ => 5,
            };
            events.sort_by_key(|e| (e.at, rank(e)));
            for e in events {
                on_event(&e);
            }
        };
        match self {
            Client::Nats { client, tenant } => {
                // Subscribe first, then read the record: nothing falls in between.
                let mut events = client
                    .subscribe(format!("sluice.{tenant}.events.>"))
                    .await?;
                let status = || async {
                    serde_json::from_value::<Execution>(
                        self.call(&Request::Status {
                            execution_id: execution_id.to_string(),
                        })
                        .await?,
                    )
                    .map_err(anyhow::Error::from)
                };
                let exec = status().await?;
                replay(&exec, on_event);
                if exec.status.is_terminal() {
                    return Ok(exec);
                }
                let mut poll = tokio::time::interval(std::time::Duration::from_secs(2));
                loop {
                    tokio::select! {
                        message = events.next() => {
                            let Some(message) = message else { bail!("the NATS connection closed") };
                            let Ok(event) = serde_json::from_slice::<Event>(&message.payload) else { continue };
                            if event.execution_id != execution_id {
                                continue;
                            }
                            on_event(&event);
                            if event.kind == Kind::Pipeline && event.status.is_terminal() {
                                return status().await;
                            }
                        }
                        // Events are at least once, not guaranteed live: check now and then.
                        _ = poll.tick() => {
                            let exec = status().await?;
                            if exec.status.is_terminal() {
                                replay(&exec, on_event);
                                return Ok(exec);
                            }
                        }
                    }
                }
            }
            Client::Local { socket, tenant } => {
                let mut lines = self
                    .send_local(
                        socket,
                        Envelope {
                            tenant: tenant.clone(),
                            request: None,
                            watch: Some(execution_id.to_string()),
                        },
                    )
                    .await?;
                while let Some(line) = lines.next_line().await? {
                    let value: Value = serde_json::from_str(&line)?;
                    if let Some(exec) = value.get("snapshot") {
                        replay(&serde_json::from_value(exec.clone())?, on_event);
                        continue;
                    }
                    if let Some(event) = value.get("event") {
                        if let Ok(event) = serde_json::from_value::<Event>(event.clone()) {
                            on_event(&event);
                        }
                        continue;
                    }
                    return Ok(serde_json::from_value(unwrap_reply(value)?)?);
                }
                bail!("the service closed the connection")
            }
        }
    }
}

/// A request refused before it was sent.
fn refusal(message: String) -> anyhow::Error {
    Refused {
        message,
        diagnostics: None,
    }
    .into()
}

fn unwrap_reply(mut reply: Value) -> anyhow::Result<Value> {
    if let Some(ok) = reply.get_mut("ok") {
        return Ok(ok.take());
    }
    let message = reply
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("malformed reply")
        .to_string();
    let diagnostics = reply
        .get("diagnostics")
        .and_then(Value::as_str)
        .map(str::to_string);
    Err(Refused {
        message,
        diagnostics,
    }
    .into())
}
