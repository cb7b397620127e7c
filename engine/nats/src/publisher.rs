//! The runtime's `messaging` capability carried to NATS: connections opened on first use, by
//! server URL, and shared by every call of the engine. The grants were checked before.
use futures_util::future::BoxFuture;
use sluice_engine::runtime::messaging::{PublishError, Publisher};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting and publishing may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine's NATS connections for guests, by server URL.
#[derive(Default)]
pub struct NatsPublisher {
    clients: Arc<tokio::sync::Mutex<HashMap<String, async_nats::Client>>>,
}

impl NatsPublisher {
    /// A publisher that reuses `client` for `url` (the service's own connection).
    pub fn with_own(url: &str, client: async_nats::Client) -> Self {
        let clients = HashMap::from([(url.trim_end_matches('/').to_string(), client)]);
        NatsPublisher {
            clients: Arc::new(tokio::sync::Mutex::new(clients)),
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
        let (clients, url, subject) = (
            self.clients.clone(),
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
                            let c =
                                tokio::time::timeout(NATS_TIMEOUT, options.connect(plain.as_str()))
                                    .await
                                    .map_err(|_| format!("connecting to {url} timed out"))?
                                    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
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
