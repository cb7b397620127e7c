//! The control API over NATS, client side: request/reply on `sluice.<tenant>.api.<verb>`,
//! watches on the tenant's event subjects, uploads in parts through the API.
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde_json::Value;
use sluice_api::client::{Transport, WatchItem};
use sluice_api::verbs::{GetExecution, UploadJoin, UploadPart, Uploaded, UploadedPart};
use sluice_api::{ApiError, Request, wire};
use sluice_core::events::{Event, Kind};
use sluice_core::scheduler::Execution;
use std::time::Duration;

/// A client of the engines on one NATS, for one tenant.
pub struct NatsTransport {
    client: async_nats::Client,
    tenant: String,
    token: Option<String>,
}

impl NatsTransport {
    /// Over `client`, for `tenant`.
    pub fn new(client: async_nats::Client, tenant: &str) -> Result<Self, ApiError> {
        sluice_api::limits::check_tenant(tenant)?;
        Ok(NatsTransport {
            client,
            tenant: tenant.to_string(),
            token: None,
        })
    }

    /// Send `token` with every request (in the `Authorization` header).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Connect to the NATS at `url` (failing fast when nothing listens), for `tenant`.
    pub async fn connect(url: &str, tenant: &str) -> anyhow::Result<Self> {
        let client = crate::connect_client(url).await?;
        Ok(NatsTransport::new(client, tenant)?)
    }

    async fn status(&self, execution_id: &str) -> Result<Execution, ApiError> {
        let request = GetExecution {
            execution_id: execution_id.to_string(),
        }
        .into();
        serde_json::from_value(self.call(&request).await?)
            .map_err(|e| ApiError::internal(format!("malformed record: {e}")))
    }
}

impl Transport for NatsTransport {
    fn call<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let subject = super::api_subject(&self.tenant, request.verb());
            let body = serde_json::to_vec(&request.body()).map_err(ApiError::internal)?;
            let sent = match &self.token {
                Some(token) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Authorization", format!("Bearer {token}").as_str());
                    self.client
                        .request_with_headers(subject.clone(), headers, body.into())
                        .await
                }
                None => self.client.request(subject.clone(), body.into()).await,
            };
            let reply = sent.map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => ApiError::unavailable(format!(
                    "no engine answers on {subject}: start one with `sluice serve --nats URL`"
                )),
                _ => ApiError::unavailable(format!("request {subject}: {e}")),
            })?;
            let value: Value = serde_json::from_slice(&reply.payload)
                .map_err(|e| ApiError::internal(format!("the reply is not JSON: {e}")))?;
            wire::decode(value)
        })
    }

    fn watch<'a>(
        &'a self,
        execution_id: &'a str,
        on_item: &'a mut (dyn FnMut(WatchItem) + Send),
    ) -> BoxFuture<'a, Result<Execution, ApiError>> {
        Box::pin(async move {
            // Subscribe first, then read the record: nothing falls in between.
            let mut events = self
                .client
                .subscribe(format!("sluice.{}.events.>", self.tenant))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            let exec = self.status(execution_id).await?;
            let done = exec.status.is_terminal();
            on_item(WatchItem::Snapshot(exec.clone()));
            if done {
                return Ok(exec);
            }
            let mut poll = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    message = events.next() => {
                        let Some(message) = message else {
                            return Err(ApiError::unavailable("the NATS connection closed"));
                        };
                        let Ok(event) = serde_json::from_slice::<Event>(&message.payload) else {
                            continue;
                        };
                        if event.execution_id != execution_id {
                            continue;
                        }
                        let end = event.kind == Kind::Pipeline && event.status.is_terminal();
                        on_item(WatchItem::Event(event));
                        if end {
                            return self.status(execution_id).await;
                        }
                    }
                    // Events are at least once, not guaranteed live: check now and then.
                    _ = poll.tick() => {
                        let exec = self.status(execution_id).await?;
                        if exec.status.is_terminal() {
                            return Ok(exec);
                        }
                    }
                }
            }
        })
    }

    fn shares_host(&self) -> bool {
        false
    }

    fn upload<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            // Through the API, in parts a message carries: a tenant's account reaches the
            // API and nothing else of the engines' (their object store included).
            if bytes.len() > sluice_api::limits::MAX_UPLOAD {
                return Err(ApiError::invalid(format!(
                    "{name} is larger than {} MiB",
                    sluice_api::limits::MAX_UPLOAD >> 20
                )));
            }
            let digest = format!("blake3:{}", blake3::hash(&bytes).to_hex());
            // The refusal keeps its code (`quota_exceeded`, `forbidden` …) and names the file.
            let named = |mut e: ApiError| {
                e.message = format!("cannot upload {name}: {}", e.message);
                e
            };
            let requests: Vec<Request> = bytes
                .chunks(sluice_api::limits::MAX_PART)
                .map(|chunk| {
                    Request::from(UploadPart {
                        bytes: sluice_api::limits::encode_upload(chunk),
                    })
                })
                .collect();
            // A few in flight at a time, kept in order.
            let mut parts = Vec::with_capacity(requests.len());
            for window in requests.chunks(4) {
                let mut replies = futures_util::stream::FuturesOrdered::new();
                for request in window {
                    replies.push_back(self.call(request));
                }
                while let Some(reply) = replies.next().await {
                    let part: UploadedPart = serde_json::from_value(reply.map_err(named)?)
                        .map_err(|e| ApiError::internal(format!("malformed reply: {e}")))?;
                    parts.push(part.part);
                }
            }
            let reply = self
                .call(&Request::from(UploadJoin { parts, digest }))
                .await
                .map_err(named)?;
            serde_json::from_value::<Uploaded>(reply)
                .map(|u| u.digest)
                .map_err(|e| ApiError::internal(format!("malformed reply: {e}")))
        })
    }
}
