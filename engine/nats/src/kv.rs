//! The NATS bucket: a JetStream KV bucket. Revisions are the stream sequence numbers, and
//! `update` sends the expected last sequence, so compare-and-swap holds across engines.
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sluice_engine::kv::{Kv, KvChanges, KvError, KvResult};

/// A JetStream KV bucket.
#[derive(Clone)]
pub struct NatsKv {
    store: Store,
    client: async_nats::Client,
}

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// A write at a revision that is no longer the key's is a conflict; anything else, the backend.
fn conflict_or_backend(key: &str, e: async_nats::jetstream::kv::UpdateError) -> KvError {
    match e.kind() {
        UpdateErrorKind::WrongLastRevision => KvError::Conflict {
            key: key.to_string(),
        },
        _ => backend(e),
    }
}

impl NatsKv {
    /// The bucket `name` (created if missing), keeping `history` revisions per key.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        name: &str,
        history: i64,
    ) -> KvResult<Self> {
        let store = match js.get_key_value(name).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: name.to_string(),
                    history,
                    num_replicas: crate::replicas(),
                    ..Default::default()
                })
                .await
                .map_err(|e| KvError::Backend(format!("create KV bucket {name}: {e}")))?,
        };
        Ok(NatsKv {
            store,
            client: js.client(),
        })
    }

    /// Remove the markers that removed keys left, for keys removed more than `older_than` ago:
    /// a purge takes a key's revisions but leaves its marker (one message per key ever
    /// removed, which every listing walks). A key written again since keeps its new value
    /// (only what precedes the marker goes). Returns how many markers went.
    pub async fn purge_markers(&self, older_than: std::time::Duration) -> KvResult<usize> {
        let mut stream = self.store.stream.clone();
        let info = stream.info().await.map_err(backend)?;
        let state = &info.state;
        if state.messages == 0 {
            return Ok(0);
        }
        // What is written after this is not looked at (a bucket written all the time would
        // otherwise keep the listing going).
        let last = state.last_sequence;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        // The last message of every key, markers included, headers only (a listing, as
        // `keys` reads it: the values are not sent).
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}>", self.store.prefix),
                headers_only: true,
                replay_policy: async_nats::jetstream::consumer::ReplayPolicy::Instant,
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(0);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        let mut markers = Vec::new();
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next());
            let Ok(Some(message)) = next.await else {
                break;
            };
            // A listing cut short purges what it found.
            let Ok(message) = message else {
                break;
            };
            let Ok(info) = message.info() else {
                break;
            };
            let removed = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            let key = message
                .subject
                .as_str()
                .strip_prefix(self.store.prefix.as_str())
                .filter(|k| !k.is_empty());
            if let Some(key) = key
                && removed
                && info.published.unix_timestamp() < cutoff
            {
                markers.push((key.to_string(), info.stream_sequence));
            }
            if info.pending == 0 || info.stream_sequence >= last {
                break;
            }
        }
        let mut purged = 0;
        for (key, revision) in markers {
            let done = stream
                .purge()
                .filter(format!("{}{key}", self.store.prefix))
                .sequence(revision + 1)
                .await;
            match done {
                Ok(_) => purged += 1,
                Err(e) => tracing::warn!("the marker of removed key {key} stays: {e}"),
            }
        }
        Ok(purged)
    }
}

impl Kv for NatsKv {
    fn purge_markers(&self, older_than: std::time::Duration) -> BoxFuture<'_, KvResult<usize>> {
        Box::pin(NatsKv::purge_markers(self, older_than))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Option<(Vec<u8>, u64)>>> {
        async move {
            match self.store.entry(key).await.map_err(backend)? {
                Some(e) if e.operation == Operation::Put => {
                    Ok(Some((e.value.to_vec(), e.revision)))
                }
                _ => Ok(None),
            }
        }
        .boxed()
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, KvResult<u64>> {
        async move {
            let mut tries = 0;
            loop {
                match self.store.create(key, value.clone().into()).await {
                    Ok(revision) => return Ok(revision),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                        // The create of a removed key writes over its marker: a marker purged
                        // meanwhile (`purge_markers`) makes it fail with no key there.
                        tries += 1;
                        if tries < 3 && self.get(key).await?.is_none() {
                            continue;
                        }
                        return Err(KvError::Conflict {
                            key: key.to_string(),
                        });
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, KvResult<u64>> {
        async move {
            self.store
                .update(key, value.into(), revision)
                .await
                .map_err(|e| conflict_or_backend(key, e))
        }
        .boxed()
    }

    // A purge, not a delete: a delete marker keeps the key's earlier revisions (up to the
    // bucket's history) in the stream for ever; a purge leaves the marker alone.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<()>> {
        async move { self.store.purge(key).await.map_err(backend) }.boxed()
    }

    fn delete_if<'a>(&'a self, key: &'a str, revision: u64) -> BoxFuture<'a, KvResult<()>> {
        async move {
            self.store
                .purge_expect_revision(key, Some(revision))
                .await
                .map_err(|e| conflict_or_backend(key, e))
        }
        .boxed()
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, KvResult<Vec<String>>> {
        async move {
            let mut keys: Vec<String> = match self.store.keys().await {
                Ok(stream) => stream
                    .try_filter(|k| std::future::ready(k.starts_with(prefix)))
                    .try_collect()
                    .await
                    .map_err(backend)?,
                Err(e) => return Err(backend(e)),
            };
            // The listing is an ordered consumer: when it is recreated mid-way (a node or
            // leader lost) it delivers again from where it stood, so a key can come twice.
            keys.sort();
            keys.dedup();
            Ok(keys)
        }
        .boxed()
    }

    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, KvResult<Option<KvChanges>>> {
        async move {
            // An ordered consumer delivering only what is written from now on. It would quietly
            // recreate itself after a reconnect, but changes made meanwhile reach it late: the
            // watch ends instead as soon as the connection is seen down (checked every 100 ms),
            // and the watcher reads again.
            let watch = self.store.watch(key).await.map_err(backend)?;
            let client = self.client.clone();
            let changes = futures_util::stream::unfold(Some(watch), move |watch| {
                let client = client.clone();
                async move {
                    let mut watch = watch?;
                    let mut check = tokio::time::interval(std::time::Duration::from_millis(100));
                    loop {
                        tokio::select! {
                            entry = watch.next() => {
                                let change = match entry? {
                                    Ok(e) if e.operation == Operation::Put => Ok(Some((e.value.to_vec(), e.revision))),
                                    Ok(_) => Ok(None),
                                    Err(e) => return Some((Err(backend(e)), None)),
                                };
                                return Some((change, Some(watch)));
                            }
                            _ = check.tick() => {
                                if client.connection_state() != async_nats::connection::State::Connected {
                                    return Some((Err(KvError::Backend("disconnected from NATS".into())), None));
                                }
                            }
                        }
                    }
                }
            });
            Ok(Some(changes.boxed()))
        }
        .boxed()
    }
}
