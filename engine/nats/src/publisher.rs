//! The runtime's `messaging` capability carried to NATS: connections opened on first use, by
//! server URL, and shared by every call of the engine. The grants were checked before.
use futures_util::future::BoxFuture;
use sluice_engine::runtime::messaging::{PublishError, Publisher};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Connections kept open to servers other than the service's own: a pipeline may grant any
/// `server`, so beyond this many the oldest connection is closed (and opened again when next
/// used).
pub const MAX_SERVERS: usize = 16;

/// How long connecting and publishing may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine's NATS connections for guests, by server URL.
#[derive(Default)]
pub struct NatsPublisher {
    clients: Arc<tokio::sync::Mutex<HashMap<String, async_nats::Client>>>,
    /// The service's own server, never closed.
    own: Option<String>,
}

impl NatsPublisher {
    /// A publisher that reuses `client` for `url` (the service's own connection).
    pub fn with_own(url: &str, client: async_nats::Client) -> Self {
        let own = url.trim_end_matches('/').to_string();
        let clients = HashMap::from([(own.clone(), client)]);
        NatsPublisher {
            clients: Arc::new(tokio::sync::Mutex::new(clients)),
            own: Some(own),
        }
    }
}

impl Publisher for NatsPublisher {
    fn publish(
        &self,
        url: &str,
        subject: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), PublishError>> {
        let (clients, own, url, subject) = (
            self.clients.clone(),
            self.own.clone(),
            url.trim_end_matches('/').to_string(),
            subject.to_string(),
        );
        Box::pin(async move {
            let sent: Result<(), String> = async {
                let client = {
                    let mut clients = clients.lock().await;
                    match clients.get(&url) {
                        Some(c) => c.clone(),
                        None => {
                            let (options, plain) = crate::options_for(&url);
                            let c = tokio::time::timeout(
                                NATS_TIMEOUT,
                                options.connect(crate::servers(&plain)),
                            )
                            .await
                            .map_err(|_| format!("connecting to {url} timed out"))?
                            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                            if clients.len() > MAX_SERVERS
                                && let Some(other) =
                                    clients.keys().find(|k| Some(*k) != own.as_ref()).cloned()
                            {
                                clients.remove(&other);
                            }
                            clients.insert(url.clone(), c.clone());
                            c
                        }
                    }
                };
                let sent = async {
                    client
                        .publish(subject, payload.into())
                        .await
                        .map_err(|e| e.to_string())?;
                    client.flush().await.map_err(|e| e.to_string())
                };
                tokio::time::timeout(NATS_TIMEOUT, sent)
                    .await
                    .map_err(|_| format!("publishing to {url} timed out"))?
                    .map_err(|e| format!("publishing to {url}: {e}"))
            }
            .await;
            sent.map_err(PublishError)
        })
    }
}
