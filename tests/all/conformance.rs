//! One conformance suite for both implementations of each service edge: the embedded ones
//! (redb, in-process queue) and the NATS ones (JetStream KV, work-queue stream), the latter
//! against a real nats-server.
use crate::harness::nats::NatsServer;
use sluice_engine::artifacts::{
    BlobStore, Digest, LocalStore, SealedObjects, SealedStore, StoreError, TenantKey,
};
use sluice_engine::kv::{Kv, KvError, RedbKv};
use sluice_engine::queue::{MemoryQueue, WorkQueue};
use sluice_nats::kv::NatsKv;
use sluice_nats::queue::{NatsQueue, QueueConfig};
use sluice_nats::store::NatsStore;
use sluice_nats::tenant_queue::{TenantQueue, TenantQueueConfig};
use std::sync::Arc;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn kv_suite(kv: &dyn Kv) {
    // A removal on condition: refused once the key changed, made while it has not.
    let d1 = kv.create("t/d", b"one".to_vec()).await.unwrap();
    let d2 = kv.update("t/d", b"two".to_vec(), d1).await.unwrap();
    assert!(matches!(
        kv.delete_if("t/d", d1).await,
        Err(KvError::Conflict { .. })
    ));
    assert_eq!(kv.get("t/d").await.unwrap(), Some((b"two".to_vec(), d2)));
    kv.delete_if("t/d", d2).await.unwrap();
    assert_eq!(kv.get("t/d").await.unwrap(), None);
    assert_eq!(kv.get("t/a").await.unwrap(), None);
    let r1 = kv.create("t/a", b"one".to_vec()).await.unwrap();
    assert!(
        matches!(
            kv.create("t/a", b"again".to_vec()).await,
            Err(KvError::Conflict { .. })
        ),
        "create of an existing key conflicts"
    );
    assert_eq!(kv.get("t/a").await.unwrap(), Some((b"one".to_vec(), r1)));
    let r2 = kv.update("t/a", b"two".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    assert!(
        matches!(
            kv.update("t/a", b"stale".to_vec(), r1).await,
            Err(KvError::Conflict { .. })
        ),
        "a stale revision conflicts"
    );
    assert_eq!(kv.get("t/a").await.unwrap().unwrap().0, b"two");
    for k in ["t/x/2", "t/x/1", "u/x/3"] {
        kv.create(k, vec![]).await.unwrap();
    }
    assert_eq!(
        kv.keys("t/x/").await.unwrap(),
        vec!["t/x/1", "t/x/2"],
        "keys by prefix, sorted"
    );
    kv.delete("t/a").await.unwrap();
    assert_eq!(kv.get("t/a").await.unwrap(), None);
    kv.create("t/a", b"three".to_vec())
        .await
        .expect("a deleted key can be created again");
    assert!(!kv.keys("t/").await.unwrap().is_empty());

    // Concurrent read-modify-write never loses an increment.
    let tasks: Vec<_> = (0..8)
        .map(|_| async {
            for _ in 0..5 {
                sluice_engine::kv::modify::<u64, _>(kv, "t/counter", |v| Some(v.unwrap_or(0) + 1))
                    .await
                    .unwrap();
            }
        })
        .collect();
    futures_util::future::join_all(tasks).await;
    let (v, _) = sluice_engine::kv::get_json::<u64>(kv, "t/counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 40);

    // A watch delivers every later change of its key, in order, and nothing of other keys.
    use futures_util::StreamExt;
    let mut changes = kv
        .watch("t/w")
        .await
        .unwrap()
        .expect("both buckets can watch");
    let w1 = kv.create("t/w", b"one".to_vec()).await.unwrap();
    kv.create("t/other", b"not watched".to_vec()).await.unwrap();
    let w2 = kv.update("t/w", b"two".to_vec(), w1).await.unwrap();
    kv.delete("t/w").await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change within 5 s")
            .expect("the watch goes on")
            .unwrap()
    };
    assert_eq!(next().await, Some((b"one".to_vec(), w1)));
    assert_eq!(next().await, Some((b"two".to_vec(), w2)));
    assert_eq!(next().await, None, "a deletion");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), changes.next())
            .await
            .is_err(),
        "nothing else"
    );
}

/// `pulls_ahead`: the queue asks for messages before `next` (a triggers queue on NATS), so a
/// message it holds no longer counts as waiting.
async fn queue_suite(q: &dyn WorkQueue, subject: &str, pulls_ahead: bool) {
    assert_eq!(q.depth().await.unwrap().waiting, 0, "a new queue is empty");
    q.push(subject, "a", b"A".to_vec()).await.unwrap();
    q.push(subject, "a", b"A again".to_vec()).await.unwrap();
    q.push(subject, "b", b"B".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The metrics' view: two wait (the re-push was dropped), the oldest for a while now.
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.waiting, 2, "{depth:?}");
    assert!(
        depth.oldest >= Duration::from_millis(40) && depth.oldest < Duration::from_secs(30),
        "{depth:?}"
    );
    let first = q.next().await.unwrap();
    let waiting = q.depth().await.unwrap().waiting;
    match pulls_ahead {
        false => assert_eq!(waiting, 1, "one delivered"),
        true => assert!(waiting <= 1, "one delivered, one perhaps pulled: {waiting}"),
    }
    assert_eq!(
        (
            first.subject.as_str(),
            first.payload.as_slice(),
            first.delivered
        ),
        (subject, &b"A"[..], 1)
    );
    first.ack().await.unwrap();
    let second = q.next().await.unwrap();
    assert_eq!(second.payload, b"B", "a re-push of a recent id is dropped");
    // Not now: it comes back after the delay, counted as a second delivery.
    second.nak(Duration::from_millis(100)).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), q.next())
        .await
        .expect("redelivered")
        .unwrap();
    assert_eq!((again.payload.as_slice(), again.delivered), (&b"B"[..], 2));
    // Dropped unsettled (its consumer died): it is delivered again after the ack deadline.
    drop(again);
    let third = tokio::time::timeout(Duration::from_secs(10), q.next())
        .await
        .expect("redelivered after the deadline")
        .unwrap();
    assert_eq!((third.payload.as_slice(), third.delivered), (&b"B"[..], 3));
    third.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), q.next())
            .await
            .is_err(),
        "nothing left after acks"
    );
}

#[test]
fn embedded_kv_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = RedbKv::open_database(&dir.path().join("kv.redb")).unwrap();
    let kv = RedbKv::bucket(db, "test").unwrap();
    rt().block_on(kv_suite(&kv));
}

#[test]
fn nats_kv_conforms() {
    let nats = NatsServer::start();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let kv = NatsKv::open(&js, "test", 4).await.unwrap();
        kv_suite(&kv).await;
        // A removed key leaves none of its revisions in the bucket's stream (the bucket keeps
        // four per key): only the marker of its removal.
        let stream = js.get_stream("KV_test").await.unwrap();
        let r1 = kv.create("t/gone", b"one".to_vec()).await.unwrap();
        let r2 = kv.update("t/gone", b"two".to_vec(), r1).await.unwrap();
        assert!(stream.get_raw_message(r1).await.is_ok());
        kv.delete("t/gone").await.unwrap();
        for r in [r1, r2] {
            assert!(
                stream.get_raw_message(r).await.is_err(),
                "revision {r} kept"
            );
        }
        assert_eq!(kv.get("t/gone").await.unwrap(), None);
        assert!(!kv.keys("t/").await.unwrap().contains(&"t/gone".to_string()));
        kv.create("t/gone", b"again".to_vec()).await.unwrap();
        // The marker a removal leaves goes too, once it is old enough; a key written again
        // keeps its new value.
        kv.create("t/marked", b"one".to_vec()).await.unwrap();
        kv.delete("t/marked").await.unwrap();
        let marker = "$KV.test.t/marked";
        assert!(stream.get_last_raw_message_by_subject(marker).await.is_ok());
        assert_eq!(
            kv.purge_markers(Duration::from_secs(3600)).await.unwrap(),
            0,
            "not an hour old"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(kv.purge_markers(Duration::ZERO).await.unwrap() >= 1);
        assert!(
            stream
                .get_last_raw_message_by_subject(marker)
                .await
                .is_err()
        );
        assert_eq!(kv.get("t/gone").await.unwrap().unwrap().0, b"again");
        kv.create("t/marked", b"two".to_vec()).await.unwrap();
        assert_eq!(kv.get("t/marked").await.unwrap().unwrap().0, b"two");
    });
}

#[test]
fn embedded_queue_conforms() {
    rt().block_on(async {
        let q = MemoryQueue::new(Duration::from_secs(60));
        queue_suite(&*q, "sluice.t.jobs", false).await;
    });
}

#[test]
fn nats_queue_conforms() {
    let nats = NatsServer::start();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        // One message per call (jobs), and pulled ahead (triggers).
        for (stream, prefetch) in [("TEST", 1), ("TEST_AHEAD", 64)] {
            let subject = format!("sluice.t{prefetch}.jobs");
            let q = NatsQueue::open(
                &js,
                QueueConfig {
                    stream,
                    subjects: vec![subject.clone()],
                    consumer: "w",
                    ack_wait: Duration::from_secs(1),
                    duplicate_window: Duration::from_secs(60),
                    prefetch,
                },
            )
            .await
            .unwrap();
            queue_suite(&q, &subject, prefetch > 1).await;
        }
    });
}

fn tenant_queue_config(stream: &str, ack_wait: Duration) -> TenantQueueConfig<'_> {
    TenantQueueConfig {
        stream,
        prefix: "sluice.",
        suffix: ".trigger.>",
        ack_wait,
        duplicate_window: Duration::from_secs(60),
    }
}

/// The trigger queue on NATS, a consumer per tenant: a queue like the others, and one tenant's
/// thousands of events in the stream do not stand in front of another tenant's event.
#[test]
fn nats_tenant_queue_conforms_and_takes_tenants_in_turns() {
    let nats = NatsServer::start();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let q = TenantQueue::open(&js, tenant_queue_config("TRIGGERS", Duration::from_secs(1)))
            .await
            .unwrap();
        queue_suite(&q, "sluice.t.trigger.p", true).await;
        drop(q);
        js.delete_stream("TRIGGERS").await.unwrap();
        // (A deadline long enough that nothing comes back meanwhile.)
        let q = TenantQueue::open(&js, tenant_queue_config("TURNS", Duration::from_secs(60)))
            .await
            .unwrap();

        // 3,000 of A's events, then one of B's.
        for i in 0..3000 {
            q.push("sluice.a.trigger.p", &format!("a-{i}"), b"A".to_vec())
                .await
                .unwrap();
        }
        q.push("sluice.b.trigger.p", "b-0", b"B".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = || async {
            tokio::time::timeout(Duration::from_secs(1), q.next())
                .await
                .ok()
                .map(Result::unwrap)
        };
        // B's comes second (A's turn, then B's), none of A's settled.
        let mut held = vec![next().await.unwrap(), next().await.unwrap()];
        assert_eq!(
            (held[0].payload.as_slice(), held[1].payload.as_slice()),
            (&b"A"[..], &b"B"[..])
        );
        // A holds at most 64 unsettled in an engine: then nothing more of A's comes…
        for _ in 1..64 {
            let d = next().await.expect("A's next event");
            assert_eq!(d.payload, b"A");
            held.push(d);
        }
        assert!(next().await.is_none(), "a 65th of A's events in hand");
        // …until one of them is done.
        let done = held.remove(0);
        done.ack().await.unwrap();
        drop(done);
        let d = next().await.expect("A's next event once one is done");
        assert_eq!(d.payload, b"A");
        assert_eq!(q.tenants(), ["a", "b"]);
    });
}

/// The shared trigger consumer of earlier versions gives way: an event it had delivered and
/// not settled comes to the tenant's consumer.
#[test]
fn nats_tenant_queue_replaces_the_shared_consumer() {
    let nats = NatsServer::start();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let shared = NatsQueue::open(
            &js,
            QueueConfig {
                stream: "OLD",
                subjects: vec!["sluice.*.trigger.>".into()],
                consumer: "sluice-engines",
                ack_wait: Duration::from_secs(30),
                duplicate_window: Duration::from_secs(60),
                prefetch: 64,
            },
        )
        .await
        .unwrap();
        shared
            .push("sluice.acme.trigger.web", "e-1", b"E".to_vec())
            .await
            .unwrap();
        let unsettled = shared.next().await.unwrap();
        let q = TenantQueue::open(&js, tenant_queue_config("OLD", Duration::from_secs(30)))
            .await
            .unwrap();
        let stream = js.get_stream("OLD").await.unwrap();
        assert!(stream.consumer_info("sluice-engines").await.is_err());
        let again = tokio::time::timeout(Duration::from_secs(10), q.next())
            .await
            .expect("the event comes to the tenant's consumer")
            .unwrap();
        assert_eq!(
            (again.subject.as_str(), again.payload.as_slice()),
            ("sluice.acme.trigger.web", &b"E"[..])
        );
        drop(unsettled);
    });
}

/// Blob stores: what one writes, another reads, verified; unknown digests are `NotFound`.
fn blob_suite(writer: &dyn BlobStore, reader: &dyn BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect(); // several chunks
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let d = writer.put_file(&dir.path().join("big")).unwrap();
    assert_eq!(d, Digest::of(&big));
    let small = writer.put_bytes(b"hello").unwrap();
    assert!(reader.contains(&d) && reader.contains(&small));
    reader.get_to_file(&d, &dir.path().join("copy")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("copy")).unwrap(), big);
    assert_eq!(reader.get_bytes(&small).unwrap(), b"hello");
    assert_eq!(reader.verify(&d).unwrap(), big.len() as u64);
    let missing = Digest::of(b"never stored");
    assert!(!reader.contains(&missing));
    assert!(matches!(
        reader.get_bytes(&missing),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn local_blob_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("cas")).unwrap();
    blob_suite(&store, &store);
}

#[test]
fn nats_blob_store_shares_verified_blobs_between_engines() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        // Two engines: separate caches, one bucket.
        let a = NatsStore::open(&js, &dir.path().join("a")).await.unwrap();
        let b = NatsStore::open(&js, &dir.path().join("b")).await.unwrap();
        tokio::task::spawn_blocking(move || {
            blob_suite(&a, &b);
            a
        })
        .await
        .unwrap();
        // An object whose content does not hash to its name is refused, not used.
        let objects = js.get_object_store("sluice-artifacts").await.unwrap();
        let claimed = Digest::of(b"the real content");
        objects
            .put(claimed.hex().as_str(), &mut &b"forged content"[..])
            .await
            .unwrap();
        let c = NatsStore::open(&js, &dir.path().join("c")).await.unwrap();
        let err = tokio::task::spawn_blocking(move || c.get_bytes(&claimed))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        // The forged object is gone: the next put of the real content uploads it (instead of
        // deduplicating onto it), and another engine then reads the real content.
        let d = NatsStore::open(&js, &dir.path().join("d")).await.unwrap();
        let e = NatsStore::open(&js, &dir.path().join("e")).await.unwrap();
        let read = tokio::task::spawn_blocking(move || {
            assert_eq!(d.put_bytes(b"the real content").unwrap(), claimed);
            e.get_bytes(&claimed)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(read, b"the real content");
        // discard_corrupted finds and removes a forged object too.
        let other = Digest::of(b"other content");
        objects
            .put(other.hex().as_str(), &mut &b"forged again"[..])
            .await
            .unwrap();
        let f = NatsStore::open(&js, &dir.path().join("f")).await.unwrap();
        let removed = tokio::task::spawn_blocking(move || f.discard_corrupted(&other))
            .await
            .unwrap()
            .unwrap();
        assert!(removed);
        assert!(
            objects
                .info(other.hex().as_str())
                .await
                .is_ok_and(|info| info.deleted)
        );
    });
}

/// The shared object store as the service's component collector (`release`) sees it: its
/// components listed with their last use; one unused since a time is removed (checked as it
/// goes), engines without a copy no longer find it, and a later put keeps it again for all.
/// The embedded data folder's store lists nothing (it may also hold a local run's artifact
/// with a component's bytes): nothing is collected there.
#[test]
fn nats_blob_store_lists_and_removes_unused_components() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path().join("cas")).unwrap();
    let kept = local.put_bytes(b"a component").unwrap();
    assert!(local.list_components().unwrap().is_none());
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(local.drop_unused_component(&kept, later).unwrap(), None);
    assert!(local.contains(&kept));
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let a = NatsStore::open(&js, &dir.path().join("a")).await.unwrap();
        let b = NatsStore::open(&js, &dir.path().join("b")).await.unwrap();
        let c = NatsStore::open(&js, &dir.path().join("c")).await.unwrap();
        tokio::task::spawn_blocking(move || {
            let d = a.put_bytes(b"a component").unwrap();
            // Sealed objects are not components.
            let sealed = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(sealed.path(), b"sealed bytes").unwrap();
            a.keep_sealed("acme", &Digest::of(b"sealed"), sealed.path())
                .unwrap();
            assert!(b.has_sealed("acme", &Digest::of(b"sealed")));
            let listed = b.list_components().unwrap().unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert_eq!((listed[0].digest, listed[0].bytes), (d, 11));
            let since = listed[0].used_at;
            assert_eq!(b.size_of(&d).unwrap(), Some(11), "from the object's info");
            assert_eq!(c.get_bytes(&d).unwrap(), b"a component", "c keeps a copy");
            // Used at or after `since`: it stays.
            assert_eq!(b.drop_unused_component(&d, since).unwrap(), None);
            let after = since + Duration::from_secs(1);
            assert_eq!(a.drop_unused_component(&d, after).unwrap(), Some(11));
            assert_eq!(a.drop_unused_component(&d, after).unwrap(), None, "once");
            let listed = b.list_components().unwrap().unwrap();
            assert!(listed.is_empty());
            assert!(!a.contains(&d) && !b.contains(&d));
            assert!(matches!(b.get_bytes(&d), Err(StoreError::NotFound(_))));
            // c's copy stays while it is recent, and is forgotten once it is not.
            assert_eq!(c.forget_removed_components(&listed, since).unwrap(), 0);
            assert!(c.contains(&d));
            let later = std::time::SystemTime::now() + Duration::from_secs(1);
            assert_eq!(c.forget_removed_components(&listed, later).unwrap(), 1);
            assert!(!c.contains(&d));
            assert_eq!(b.size_of(&d).unwrap(), None);
            assert_eq!(b.put_bytes(b"a component").unwrap(), d);
            assert_eq!(c.get_bytes(&d).unwrap(), b"a component");
        })
        .await
        .unwrap();
    });
}

/// Sealed blobs as the artifact collector sees them: listed with their namespace, size and
/// last use; a put of content kept notes a use; removed only when unused since a time, and
/// counted off once; a put after a removal keeps the blob again where every engine finds it
/// (`writer` and `other` are two engines: on NATS, two caches). `age` makes a blob look last
/// used two days ago.
fn sealed_collection_suite(
    writer: Arc<dyn SealedObjects>,
    other: Arc<dyn SealedObjects>,
    age: impl Fn(&str, &Digest),
    caches: bool,
) {
    use std::time::SystemTime;
    const CONTENT: &[u8] = b"collected, then kept again";
    let used = |o: &dyn SealedObjects| o.sealed_bytes("acme").unwrap();
    let last_use = |d: &Digest| {
        let listed = other.list_sealed().unwrap();
        listed
            .into_iter()
            .find(|i| i.ns == "acme" && i.address == *d)
            .expect("listed by every engine")
    };
    let key = TenantKey::derive(&[3; 32]);
    let a = SealedStore::new(writer.clone(), "acme", key.clone());
    let b = SealedStore::new(other.clone(), "acme", key);
    let started = SystemTime::now() - Duration::from_secs(2);
    let d = a.put_bytes(CONTENT).unwrap();
    let info = last_use(&d);
    assert!(
        info.bytes > CONTENT.len() as u64 && info.used_at >= started,
        "{info:?}"
    );
    let bytes = used(&*other);
    assert!(bytes >= info.bytes, "{bytes} counted");
    // Used since `before`: stays.
    assert_eq!(other.drop_unused_sealed("acme", &d, started).unwrap(), None);
    // Kept long ago, then put again: the use is noted, and it stays.
    age("acme", &d);
    assert!(last_use(&d).used_at < started);
    assert_eq!(a.put_bytes(CONTENT).unwrap(), d);
    assert!(last_use(&d).used_at >= started, "the put noted its use");
    assert_eq!(other.drop_unused_sealed("acme", &d, started).unwrap(), None);
    assert!(b.contains(&d));
    // Unused since: removed by one engine, counted off once, gone for both.
    age("acme", &d);
    let now = SystemTime::now();
    assert_eq!(
        other.drop_unused_sealed("acme", &d, now).unwrap(),
        Some(info.bytes)
    );
    assert_eq!(writer.drop_unused_sealed("acme", &d, now).unwrap(), None);
    assert_eq!(used(&*other), bytes - info.bytes);
    assert!(!other.touch_sealed("acme", &d).unwrap());
    assert!(
        !writer.touch_sealed("acme", &d).unwrap(),
        "not in its cache's word"
    );
    // The writer's copy (an engine's cache of the shared store) is forgotten once it sees
    // the shared store without it.
    assert_eq!(writer.has_sealed("acme", &d), caches, "a cached copy");
    let forgotten = writer
        .forget_removed(&other.list_sealed().unwrap(), now)
        .unwrap();
    assert_eq!(
        (forgotten, writer.has_sealed("acme", &d)),
        (caches as usize, false)
    );
    // The writer puts the same content again (its cache may still hold it): kept again,
    // and the other engine reads it.
    assert_eq!(a.put_bytes(CONTENT).unwrap(), d);
    assert_eq!(b.get_bytes(&d).unwrap(), CONTENT);
    assert!(other.touch_sealed("acme", &d).unwrap());
    assert_eq!(used(&*other), bytes);
}

/// Two days ago.
fn two_days_ago() -> std::time::SystemTime {
    std::time::SystemTime::now() - Duration::from_secs(2 * 86_400)
}

#[test]
fn local_sealed_objects_conform() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalStore::open(dir.path().join("cas")).unwrap());
    let store: Arc<dyn SealedObjects> = local.clone();
    let age = |ns: &str, d: &Digest| {
        let path = local.sealed_path(ns, d).unwrap();
        std::fs::File::open(path)
            .unwrap()
            .set_modified(two_days_ago())
            .unwrap();
    };
    sealed_collection_suite(store.clone(), store, age, false);
}

#[test]
fn nats_sealed_objects_conform_across_engines() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let a: Arc<dyn SealedObjects> =
            Arc::new(NatsStore::open(&js, &dir.path().join("a")).await.unwrap());
        let b: Arc<dyn SealedObjects> =
            Arc::new(NatsStore::open(&js, &dir.path().join("b")).await.unwrap());
        // Aged as an object uploaded two days ago would be: its info rewritten, as the object
        // store writes it.
        let handle = tokio::runtime::Handle::current();
        let age = move |ns: &str, d: &Digest| {
            handle.block_on(async {
                use base64::Engine;
                let objects = js.get_object_store("sluice-artifacts").await.unwrap();
                let name = format!("sealed/{ns}/{}", d.hex());
                let mut info = objects.info(&name).await.unwrap();
                let secs = two_days_ago()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                info.modified =
                    Some(async_nats::datetime::DateTime::from_unix_timestamp(secs).unwrap());
                info.description = None;
                let subject = format!(
                    "$O.sluice-artifacts.M.{}",
                    base64::engine::general_purpose::URL_SAFE.encode(&name)
                );
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Rollup", "sub");
                js.publish_with_headers(
                    subject,
                    headers,
                    serde_json::to_vec(&info).unwrap().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            })
        };
        tokio::task::spawn_blocking(move || sealed_collection_suite(a, b, age, true))
            .await
            .unwrap();
    });
}
