//! The embedded service's transport: a Unix socket in its data directory, one JSON line per
//! request and one per reply (a watch streams `{"snapshot"}` and `{"event"}` lines, then the
//! final record as a reply).
use crate::client::{Transport, WatchItem};
use crate::error::ApiError;
use crate::verbs::Request;
use crate::wire;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::scheduler::Execution;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest line either side reads: a pipeline's YAML or an uploaded function (base64)
/// rides in one request line.
pub const MAX_LINE: usize = crate::limits::MAX_UPLOAD / 3 * 4 + (1 << 20);

/// What a client sends over the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Tenant.
    pub tenant: String,
    /// A request…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// …or an execution to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    /// The caller's token, for a service with authentication on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The socket's path in a data directory.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join("sluice.sock")
}

/// Read one line of at most [`MAX_LINE`] bytes; `None` at the end of the stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {MAX_LINE} bytes"),
        ));
    }
    String::from_utf8(line)
        .map(|s| Some(s.trim_end_matches('\n').to_string()))
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a line is not UTF-8"))
}

/// A client of the embedded service in one data directory.
pub struct SocketTransport {
    socket: PathBuf,
    tenant: String,
    token: Option<String>,
}

impl SocketTransport {
    /// The service in `data`; fails at once when none is running there.
    pub fn connect(data: &Path, tenant: &str) -> Result<Self, ApiError> {
        crate::limits::check_tenant(tenant)?;
        let socket = socket_path(data);
        if !socket.exists() {
            return Err(ApiError::unavailable(format!(
                "no service is running: start one with `sluice serve` (embedded, data in {}) or pass --nats URL / set SLUICE_NATS_URL",
                data.display()
            )));
        }
        Ok(SocketTransport {
            socket,
            tenant: tenant.to_string(),
            token: None,
        })
    }

    /// Send `token` with every request (a service with authentication on needs one).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    async fn send(&self, envelope: Envelope) -> Result<Lines, ApiError> {
        let unreachable = |e: std::io::Error| {
            ApiError::unavailable(format!(
                "cannot reach the service at {} (is `sluice serve` running?): {e}",
                self.socket.display()
            ))
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(unreachable)?;
        let (read, mut write) = stream.into_split();
        let line = serde_json::to_string(&envelope).map_err(ApiError::internal)?;
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(unreachable)?;
        Ok(Lines(BufReader::new(read)))
    }
}

struct Lines(BufReader<tokio::net::unix::OwnedReadHalf>);

impl Lines {
    async fn next(&mut self) -> Result<Value, ApiError> {
        let line = read_line(&mut self.0)
            .await
            .map_err(|e| ApiError::unavailable(format!("the service's reply: {e}")))?
            .ok_or_else(|| ApiError::unavailable("the service closed the connection"))?;
        serde_json::from_str(&line)
            .map_err(|e| ApiError::internal(format!("the service's reply is not JSON: {e}")))
    }
}

impl Transport for SocketTransport {
    fn call<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let mut lines = self
                .send(Envelope {
                    tenant: self.tenant.clone(),
                    request: Some(request.clone()),
                    watch: None,
                    token: self.token.clone(),
                })
                .await?;
            wire::decode(lines.next().await?)
        })
    }

    fn watch<'a>(
        &'a self,
        execution_id: &'a str,
        on_item: &'a mut (dyn FnMut(WatchItem) + Send),
    ) -> BoxFuture<'a, Result<Execution, ApiError>> {
        Box::pin(async move {
            let mut lines = self
                .send(Envelope {
                    tenant: self.tenant.clone(),
                    request: None,
                    watch: Some(execution_id.to_string()),
                    token: self.token.clone(),
                })
                .await?;
            loop {
                let mut value = lines.next().await?;
                if let Some(exec) = value.get_mut("snapshot") {
                    if let Ok(exec) = serde_json::from_value(exec.take()) {
                        on_item(WatchItem::Snapshot(exec));
                    }
                    continue;
                }
                if let Some(event) = value.get_mut("event") {
                    if let Ok(event) = serde_json::from_value(event.take()) {
                        on_item(WatchItem::Event(event));
                    }
                    continue;
                }
                return serde_json::from_value(wire::decode(value)?)
                    .map_err(|e| ApiError::internal(format!("malformed record: {e}")));
            }
        })
    }

    fn shares_host(&self) -> bool {
        true
    }

    fn upload<'a>(
        &'a self,
        _name: &'a str,
        _bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async {
            Err(ApiError::invalid(
                "the embedded service reads files on this host: nothing to upload",
            ))
        })
    }
}
