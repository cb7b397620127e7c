//! The HTTP port of `sluice serve --http ADDR`: the control API under `/api/v1` (the third
//! transport of [`sluice_api`], next to the socket and NATS), its OpenAPI document at
//! `/api/v1/openapi.json`, the web console (`/`), webhooks under `/hooks/`, and `/healthz` and
//! `/readyz`.
//!
//! Connections are accepted through the same [`Gate`](super::listen::Gate) as the webhooks
//! were: a bounded number at once, headers within a deadline.
mod artifacts;
mod console;
pub mod feed;
mod routes;

use crate::service::Service;
use axum::body::Body;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt as _;

pub use routes::openapi;

/// Whether `addr` is only reachable from this host.
pub fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serve the HTTP port on a bound listener until the process ends; `events` feeds
/// `/api/v1/events`.
pub async fn serve_on(
    service: Arc<Service>,
    events: feed::EventSource,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let router = routes::router(service.clone(), feed::EventFeed::start(events));
    let gate = crate::service::listen::Gate::new("http");
    loop {
        let ((stream, _), slot) = gate.accept(|| listener.accept()).await?;
        let (service, router) = (service.clone(), router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handler = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let (service, router) = (service.clone(), router.clone());
                async move {
                    // Webhooks keep their own handler (signatures over the raw body).
                    if req.uri().path().starts_with("/hooks/") {
                        let reply = service.webhook(req).await;
                        return Ok::<_, std::convert::Infallible>(reply.map(Body::new));
                    }
                    let reply = router.oneshot(req.map(Body::new)).await;
                    Ok(reply.unwrap_or_else(|never| match never {}))
                }
            });
            // A client that opens a connection and sends nothing is dropped.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::service::listen::READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                .await
            {
                tracing::debug!("http connection: {e}");
            }
        });
    }
}
