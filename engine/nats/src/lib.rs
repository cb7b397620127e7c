//! sluice-nats: Sluice on NATS. Every use of the NATS client is here: the edges (KV buckets,
//! work-queue streams, the Object Store, the event bus), the control API's transport on both
//! sides, the cluster hooks between engines, and the runtime's `messaging` capability.
//! [`service::serve`] puts a service engine together on them.
//!
//! Sluice's layout on NATS: subjects, streams and buckets. Every subject and key starts with
//! the tenant.
//!
//! | what                | where                                            |
//! |---------------------|--------------------------------------------------|
//! | trigger events in   | `sluice.<tenant>.trigger.<pipeline>` → stream `SLUICE_TRIGGERS` (dedup by `Nats-Msg-Id`), a consumer per tenant |
//! | jobs                | `sluice.<tenant>.jobs` → work-queue stream `SLUICE_JOBS` |
//! | state changes out   | `sluice.<tenant>.events.<kind>.<pipeline>` → stream `SLUICE_EVENTS` |
//! | rejected triggers   | `sluice.<tenant>.deadletter.<pipeline>` → stream `SLUICE_DEADLETTER` |
//! | control             | `sluice.<tenant>.api.<verb>` (request/reply, queue group `sluice-engines`) |
//! | pipelines           | KV `sluice-pipelines`, key `<tenant>/<pipeline>[/<version>]` |
//! | functions           | KV `sluice-functions`, key `<tenant>/<name>` → digest (component in the Object Store) |
//! | executions, claims  | KV `sluice-executions`, keys `<tenant>/x/<id>`, `<tenant>/claim/<pipeline>/<hash>` |
//! | artifacts           | Object Store `sluice-artifacts`, objects named by blake3 hex |
//! | action logs         | Object Store `sluice-logs`, `<tenant>/<execution>/<stage>/<action>/<attempt>` (30 days) |

#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
pub mod cluster;
pub mod kv;
pub mod logs;
pub mod publisher;
pub mod queue;
pub mod service;
pub mod store;
pub mod tenant_queue;
pub mod transport;

use crate::kv::NatsKv;
use crate::queue::{NatsQueue, QueueConfig};
use crate::tenant_queue::{TenantQueue, TenantQueueConfig};
use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

pub use sluice_engine::subjects::*;

/// Queue group of the engines' control subscriptions: one engine answers each request.
pub const API_GROUP: &str = "sluice-engines";

/// The options for `url`, with the user and password it carries (`nats://user:pass@host`,
/// which the client library does not take from the URL itself: an account's user in a hosted
/// setup, see examples/hosting/nats-server.conf), and the URL without them. `url` may list
/// several servers of a cluster, comma-separated.
pub fn options_for(url: &str) -> (async_nats::ConnectOptions, String) {
    let mut options = async_nats::ConnectOptions::new();
    let mut plain = Vec::new();
    let mut credentials_taken = false;
    for one in url.split(',').map(str::trim) {
        let Some((scheme, rest)) = one.split_once("://") else {
            plain.push(one.to_string());
            continue;
        };
        let Some((credentials, host)) = rest.rsplit_once('@') else {
            plain.push(one.to_string());
            continue;
        };
        if !credentials_taken {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            options = options.user_and_password(user.to_string(), password.to_string());
            credentials_taken = true;
        }
        plain.push(format!("{scheme}://{host}"));
    }
    (options, plain.join(","))
}

/// The servers of a (comma-separated) URL list, as the client library takes them.
pub fn servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

static REPLICAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// How many copies a JetStream cluster keeps of every stream, KV bucket and object store this
/// engine creates (`sluice serve --replicas`; 1 on a single server, 3 on a 3-node cluster).
pub fn set_replicas(n: usize) {
    REPLICAS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_replicas`].
pub fn replicas() -> usize {
    REPLICAS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Connect a client that keeps retrying (a NATS restart delays work, it does not stop it).
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (options, url) = options_for(url);
    let url = url.as_str();
    options
        .event_callback(move |event| {
            let first = first.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if !first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                            sluice_engine::metrics::get().nats_reconnects.inc();
                            tracing::info!("NATS connection back: work resumes");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost: reconnecting (work waits)")
                    }
                    other => tracing::debug!("NATS: {other}"),
                }
            }
        })
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(servers(url))
        .await
        .with_context(|| format!("connect to NATS at {url}"))
}

/// Connect for a short client command: fail fast when nothing listens.
pub async fn connect_client(url: &str) -> anyhow::Result<async_nats::Client> {
    let (options, url) = options_for(url);
    let url = url.as_str();
    options
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(servers(url))
        .await
        .with_context(|| format!("cannot reach NATS at {url} (is `nats-server -js` running?)"))
}

/// Send what `client` has buffered before the process ends.
pub async fn flush(client: &async_nats::Client) {
    let _ = client.flush().await;
}

/// Everything the engine keeps on NATS.
pub struct Layout {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// Pipelines.
    pub pipelines: NatsKv,
    /// Executions and trigger claims.
    pub executions: NatsKv,
    /// Registered functions.
    pub functions: NatsKv,
    /// Who waits for which subject (event wakes).
    pub waits: NatsKv,
    /// The audit trail.
    pub audit: NatsKv,
    /// Trigger events.
    pub triggers: TenantQueue,
    /// Jobs.
    pub jobs: NatsQueue,
}

/// Timing knobs (shortened by tests).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Redelivery deadline of a job (or trigger) whose engine stopped reporting progress.
    pub ack_wait: Duration,
}

impl Layout {
    /// Create (or bind to) every stream, consumer and bucket.
    pub async fn open(client: &async_nats::Client, timing: Timing) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        for (name, subject, max_age) in [
            (
                "SLUICE_EVENTS",
                "sluice.*.events.>",
                Duration::from_secs(7 * 24 * 3600),
            ),
            (
                "SLUICE_DEADLETTER",
                "sluice.*.deadletter.>",
                Duration::from_secs(30 * 24 * 3600),
            ),
        ] {
            js.get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                max_age,
                num_replicas: replicas(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        }
        // A consumer per tenant, tenants in turns: one tenant's flood waits behind itself.
        let triggers = TenantQueue::open(
            &js,
            TenantQueueConfig {
                stream: "SLUICE_TRIGGERS",
                prefix: "sluice.",
                suffix: ".trigger.>",
                // A trigger's delivery may hold the chain of its execution's first jobs.
                ack_wait: timing.ack_wait,
                duplicate_window: Duration::from_secs(3600),
            },
        )
        .await?;
        let jobs = NatsQueue::open(
            &js,
            QueueConfig {
                stream: "SLUICE_JOBS",
                subjects: vec!["sluice.*.jobs".into()],
                consumer: "sluice-workers",
                ack_wait: timing.ack_wait,
                duplicate_window: Duration::from_secs(3600),
                prefetch: 1,
            },
        )
        .await?;
        // Subjects actions wait for are added at run time (service/wiring.rs); this one is its own.
        js.get_or_create_stream(stream::Config {
            name: "SLUICE_WAKES".into(),
            subjects: vec!["sluice._wakes".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("stream SLUICE_WAKES: {e}"))?;
        let pipelines = NatsKv::open(&js, "sluice-pipelines", 16).await?;
        let executions = NatsKv::open(&js, "sluice-executions", 4).await?;
        let functions = NatsKv::open(&js, "sluice-functions", 4).await?;
        let waits = NatsKv::open(&js, "sluice-waits", 4).await?;
        let audit = NatsKv::open(&js, "sluice-audit", 1).await?;
        Ok(Layout {
            js,
            pipelines,
            executions,
            functions,
            waits,
            audit,
            triggers,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_a_url_become_options() {
        let (_, url) = super::options_for("nats://acme:s3cret@127.0.0.1:4222");
        assert_eq!(url, "nats://127.0.0.1:4222");
        let (_, url) = super::options_for("nats://127.0.0.1:4222");
        assert_eq!(url, "nats://127.0.0.1:4222");
        let (_, url) = super::options_for("tls://user@host:4443");
        assert_eq!(url, "tls://host:4443");
        let (_, url) = super::options_for("nats://u:p@a:1, nats://u:p@b:2");
        assert_eq!(url, "nats://a:1,nats://b:2");
        assert_eq!(super::servers(&url), ["nats://a:1", "nats://b:2"]);
    }
}
