//! The embedded service's control transport: a Unix socket in the data directory, one JSON
//! line per request and one per reply (`watch` streams event lines, then the final record).
use super::Service;
use super::api::{Caller, Request};
use crate::bus::{Kind, MemoryBus};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// What a client sends over the socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Tenant.
    pub tenant: String,
    /// A request…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// …or an execution to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
}

/// The socket's path in a data directory.
pub fn socket_path(data: &Path) -> std::path::PathBuf {
    data.join("sluice.sock")
}

/// Serve requests on the socket until the process ends.
pub async fn serve(service: Arc<Service>, bus: Arc<MemoryBus>, data: &Path) -> anyhow::Result<()> {
    let path = socket_path(data);
    // A socket left by a process that died is stale; a live one answers.
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!("another `sluice serve` is using {}", data.display());
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    let gate = super::listen::Gate::new("control socket");
    loop {
        let ((stream, _), slot) = gate.accept(|| listener.accept()).await?;
        let (service, bus) = (service.clone(), bus.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(service, bus, stream).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn connection(
    service: Arc<Service>,
    bus: Arc<MemoryBus>,
    stream: UnixStream,
) -> anyhow::Result<()> {
    // Only the engine's own user may name paths on its host (see `Caller`).
    let caller = match stream.peer_cred() {
        Ok(c) if c.uid() == rustix::process::geteuid().as_raw() => Caller::HostUser,
        _ => Caller::Remote,
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let envelope: Envelope = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                write
                    .write_all(
                        format!(
                            "{}\n",
                            serde_json::json!({ "error": format!("bad request: {e}") })
                        )
                        .as_bytes(),
                    )
                    .await?;
                continue;
            }
        };
        if let Some(id) = envelope.watch {
            let checked = super::api::check_tenant(&envelope.tenant).and_then(|()| {
                super::api::check_len("the execution id", &id).map_err(|e| e.to_string())
            });
            if let Err(e) = checked {
                write
                    .write_all(format!("{}\n", serde_json::json!({ "error": e })).as_bytes())
                    .await?;
                return Ok(());
            }
            // Subscribe before reading the record, so no event falls in between.
            let mut events = bus.subscribe();
            let done = |e: &crate::scheduler::Execution| e.status.is_terminal();
            let Some(exec) = service.execution(&envelope.tenant, &id).await? else {
                write
                    .write_all(
                        format!(
                            "{}\n",
                            serde_json::json!({ "error": format!("no execution `{id}`") })
                        )
                        .as_bytes(),
                    )
                    .await?;
                return Ok(());
            };
            write
                .write_all(format!("{}\n", serde_json::json!({ "snapshot": exec })).as_bytes())
                .await?;
            if !done(&exec) {
                loop {
                    match events.recv().await {
                        Ok(event) if event.execution_id == id => {
                            write
                                .write_all(
                                    format!("{}\n", serde_json::json!({ "event": event }))
                                        .as_bytes(),
                                )
                                .await?;
                            if event.kind == Kind::Pipeline && event.status.is_terminal() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
            }
            let exec = service.execution(&envelope.tenant, &id).await?;
            write
                .write_all(format!("{}\n", serde_json::json!({ "ok": exec })).as_bytes())
                .await?;
            return Ok(());
        }
        let reply = match envelope.request {
            Some(request) => service.handle_from(&envelope.tenant, request, caller).await,
            None => serde_json::json!({ "error": "empty request" }),
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
    Ok(())
}
