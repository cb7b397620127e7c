//! The client side: a [`Transport`] carries requests; a [`Client`] gives them types.
use crate::error::ApiError;
use crate::limits::check_len;
use crate::verbs::{Request, Verb};
use futures_util::future::BoxFuture;
use serde_json::Value;
use sluice_core::events::{Event, Kind, Snapshot, diff};
use sluice_core::scheduler::Execution;
use std::collections::HashSet;

/// What a watch delivers: the record as it stands, then its events as they happen.
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// The record (at the start, and whenever the transport re-reads it).
    Snapshot(Execution),
    /// A live event.
    Event(Event),
}

/// Carries requests to a service: the embedded service's socket, NATS request/reply, HTTP.
pub trait Transport: Send + Sync {
    /// Send one request; the reply's `ok` value or the refusal.
    fn call<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Result<Value, ApiError>>;

    /// Follow an execution until it ends, handing each snapshot and event to `on_item`;
    /// returns the final record.
    fn watch<'a>(
        &'a self,
        execution_id: &'a str,
        on_item: &'a mut (dyn FnMut(WatchItem) + Send),
    ) -> BoxFuture<'a, Result<Execution, ApiError>>;

    /// Whether the service reads files on this client's host as this user (then a pipeline
    /// may name files relative to its own directory instead of uploading them).
    fn shares_host(&self) -> bool;

    /// Store bytes in the service's artifact store; returns their `blake3:` digest. Only
    /// transports that do not share the host need it.
    fn upload<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, ApiError>>;
}

/// A typed client over any transport.
pub struct Client {
    transport: Box<dyn Transport>,
}

impl Client {
    /// A client over `transport`.
    pub fn new(transport: impl Transport + 'static) -> Self {
        Client {
            transport: Box::new(transport),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    /// Send a typed request; its typed reply or the refusal.
    pub async fn send<V: Verb>(&self, verb: V) -> Result<V::Reply, ApiError> {
        let value = self.call(&verb.into()).await?;
        serde_json::from_value(value)
            .map_err(|e| ApiError::internal(format!("malformed `{}` reply: {e}", V::NAME)))
    }

    /// Send any request; the reply's JSON.
    pub async fn call(&self, request: &Request) -> Result<Value, ApiError> {
        // Refused here, before an over-long id makes a subject a NATS server drops us for.
        request.check_lengths()?;
        self.transport.call(request).await
    }

    /// Whether the service shares this host (see [`Transport::shares_host`]).
    pub fn shares_host(&self) -> bool {
        self.transport.shares_host()
    }

    /// See [`Transport::upload`].
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<String, ApiError> {
        self.transport.upload(name, bytes).await
    }

    /// Follow an execution: `on_event` sees each of its events once, from its start (replayed
    /// from the record, in the order things happened) until it ends. Returns the final record.
    pub async fn watch(
        &self,
        execution_id: &str,
        mut on_event: impl FnMut(&Event) + Send,
    ) -> Result<Execution, ApiError> {
        check_len("the execution id", execution_id)?;
        // What a snapshot shows is replayed; live events repeating it are skipped.
        let mut seen = HashSet::new();
        let mut once = |e: &Event| {
            if seen.insert((
                e.kind,
                e.stage.clone(),
                e.action.clone(),
                e.status,
                e.attempt,
            )) {
                on_event(e);
            }
        };
        let mut on_item = |item: WatchItem| match item {
            WatchItem::Snapshot(exec) => {
                for e in replay(&exec) {
                    once(&e);
                }
            }
            WatchItem::Event(e) if e.execution_id == execution_id => once(&e),
            WatchItem::Event(_) => {}
        };
        let last = self.transport.watch(execution_id, &mut on_item).await?;
        on_item(WatchItem::Snapshot(last.clone()));
        Ok(last)
    }
}

/// An execution's events as its record shows them: by time, starts before ends.
pub fn replay(exec: &Execution) -> Vec<Event> {
    let mut events = diff(&Snapshot::blank(exec), exec);
    let rank = |e: &Event| match (e.kind, e.status.is_terminal()) {
        (Kind::Pipeline, false) => 0,
        (Kind::Stage, false) => 1,
        (_, false) => 2,
        (Kind::Action, true) => 3,
        (Kind::Stage, true) => 4,
        _ => 5,
    };
    events.sort_by_key(|e| (e.at, rank(e)));
    events
}
