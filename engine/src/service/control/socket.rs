//! The embedded service's control transport, server side: a Unix socket in the data
//! directory, one JSON line per request and one per reply (`watch` streams event lines, then
//! the final record). The client side is [`sluice_api::socket`].
use crate::bus::{Kind, MemoryBus};
use crate::service::Service;
use serde_json::{Value, json};
use sluice_api::socket::{Envelope, read_line};
use sluice_api::{ApiError, Origin, Principal, wire};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub use sluice_api::socket::socket_path;

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
    let gate = crate::service::listen::Gate::new("control socket");
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

/// Whether process `pid` shares this process's user namespace. A confined host program (an
/// action's granted `sh`) runs in one of its own: it cannot read the data directory, but may
/// know the socket's path, and Landlock does not govern connecting to a named Unix socket. A
/// peer whose namespace cannot be read is taken as ours (the file permissions still decide).
fn in_our_user_namespace(pid: i32) -> bool {
    match (
        std::fs::read_link(format!("/proc/{pid}/ns/user")),
        std::fs::read_link("/proc/self/ns/user"),
    ) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, line: Value) -> std::io::Result<()> {
    write.write_all(format!("{line}\n").as_bytes()).await
}

async fn connection(
    service: Arc<Service>,
    bus: Arc<MemoryBus>,
    stream: UnixStream,
) -> anyhow::Result<()> {
    let cred = stream.peer_cred().ok();
    // Only the engine's own user may name paths on its host (see `Origin`).
    let origin = match &cred {
        Some(c) if c.uid() == rustix::process::geteuid().as_raw() => Origin::HostUser,
        _ => Origin::Remote,
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if let Some(pid) = cred.and_then(|c| c.pid())
        && !in_our_user_namespace(pid)
    {
        // Its request is read (and ignored) first: a client whose request met a closed
        // connection would die of SIGPIPE before it read why.
        let _ = tokio::time::timeout(Duration::from_secs(2), read_line(&mut read)).await;
        let refused = ApiError::new(
            sluice_api::Code::Forbidden,
            "the control socket serves processes of the engine's own user namespace; a program an action runs (confined in a namespace of its own) may not control the engine",
        );
        send(&mut write, wire::encode(Err(refused))).await?;
        return Ok(());
    }
    // A line longer than the limit ends the connection (its reply says why).
    loop {
        let line = match read_line(&mut read).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) => {
                let refused = ApiError::invalid(format!("bad request: {e}"));
                send(&mut write, wire::encode(Err(refused))).await?;
                return Ok(());
            }
        };
        let envelope: Envelope = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                let refused = ApiError::invalid(format!("bad request: {e}"));
                send(&mut write, wire::encode(Err(refused))).await?;
                continue;
            }
        };
        // Without authentication, the socket's file permissions decide who may connect, and
        // whoever connects acts for the tenant it names; with it, the token decides.
        let principal = match service
            .authenticate(envelope.token.as_deref(), &envelope.tenant, origin)
            .await
        {
            Ok(p) => p,
            Err(refused) => {
                send(&mut write, wire::encode(Err(refused))).await?;
                continue;
            }
        };
        if let Some(id) = envelope.watch {
            watch(&service, &bus, &principal, &id, &mut write).await?;
            return Ok(());
        }
        let reply = match envelope.request {
            Some(request) => service.handle(&principal, request).await,
            None => Err(ApiError::invalid("empty request")),
        };
        send(&mut write, wire::encode(reply)).await?;
    }
}

/// Stream an execution's record and events until it ends.
async fn watch(
    service: &Service,
    bus: &MemoryBus,
    principal: &Principal,
    id: &str,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> anyhow::Result<()> {
    let checked = sluice_api::limits::check_tenant(&principal.tenant)
        .and_then(|()| Ok(sluice_api::limits::check_len("the execution id", id)?));
    if let Err(e) = checked {
        send(write, wire::encode(Err(e))).await?;
        return Ok(());
    }
    let tenant = &principal.tenant;
    // Subscribe before reading the record, so no event falls in between.
    let mut events = bus.subscribe();
    let Some(exec) = service.execution(tenant, id).await? else {
        let missing = ApiError::not_found(format!("no execution `{id}`"));
        send(write, wire::encode(Err(missing))).await?;
        return Ok(());
    };
    let done = exec.status.is_terminal();
    send(write, json!({ "snapshot": exec })).await?;
    if !done {
        loop {
            match events.recv().await {
                Ok(event) if event.execution_id == id && &event.tenant == tenant => {
                    let end = event.kind == Kind::Pipeline && event.status.is_terminal();
                    send(write, json!({ "event": event })).await?;
                    if end {
                        break;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }
    let exec = service.execution(tenant, id).await?;
    let last = match exec {
        Some(e) => serde_json::to_value(e).map_err(ApiError::internal),
        None => Err(ApiError::not_found(format!("no execution `{id}`"))),
    };
    send(write, wire::encode(last)).await?;
    Ok(())
}
