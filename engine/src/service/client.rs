//! Connecting to a running service, for the CLI: over NATS when a URL is given, else over the
//! embedded service's socket. Both give a [`sluice_api::Client`].
use sluice_api::Client;
use sluice_api::socket::SocketTransport;
use std::path::Path;

/// A client of a running service, and the NATS connection under it (if any), which the CLI
/// also uses to read shared logs.
pub struct Connection {
    /// The typed API.
    pub api: Client,
    /// The NATS connection, when the service is on NATS.
    pub nats: Option<async_nats::Client>,
}

impl std::ops::Deref for Connection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.api
    }
}

/// Connect to the service on NATS at `nats`, or else to the embedded one in `data`.
pub async fn connect(nats: Option<&str>, data: &Path, tenant: &str) -> anyhow::Result<Connection> {
    Ok(match nats {
        Some(url) => {
            let client = crate::nats::connect_client(url).await?;
            Connection {
                api: Client::new(crate::nats::transport::NatsTransport::new(
                    client.clone(),
                    tenant,
                )?),
                nats: Some(client),
            }
        }
        None => Connection {
            api: Client::new(SocketTransport::connect(data, tenant)?),
            nats: None,
        },
    })
}
