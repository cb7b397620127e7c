//! The routes of `/api/v1`: each maps an HTTP request onto one verb of [`sluice_api`] and its
//! reply (or [`ApiError`], with the HTTP status its code names) back. The OpenAPI document is
//! generated from these handlers, so it lists exactly the routes the router serves.
use super::super::Service;
use super::feed::EventFeed;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice_api::verbs::{self, Verb};
use sluice_api::{ApiError, Origin, Principal};
use sluice_core::scheduler::Status;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Shared = State<Arc<Service>>;

/// What the handlers share: the service, and the events this engine streams.
#[derive(Clone)]
pub(super) struct AppState {
    service: Arc<Service>,
    feed: Arc<EventFeed>,
    streams: Streams,
}

/// Streams (events, followed logs) open at once: they hold a connection each for as long as
/// the client likes, so they may take at most half of the port's connections, and the API and
/// webhooks always keep room.
pub const MAX_STREAMS: usize = super::super::listen::MAX_CONNECTIONS / 2;

/// The stream slots.
#[derive(Clone)]
pub(super) struct Streams(Arc<tokio::sync::Semaphore>);

impl Streams {
    fn open(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Refusal(ApiError::unavailable(format!(
                "{MAX_STREAMS} streams are open on this port already; try again later"
            )))
        })
    }
}

impl axum::extract::FromRef<AppState> for Streams {
    fn from_ref(s: &AppState) -> Self {
        s.streams.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<Service> {
    fn from_ref(s: &AppState) -> Self {
        s.service.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<EventFeed> {
    fn from_ref(s: &AppState) -> Self {
        s.feed.clone()
    }
}

/// A refusal as HTTP: the status its code names, `{"error": {"code", "message"}}`.
struct Refusal(ApiError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(json!({ "error": self.0 }))).into_response()
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal(e)
    }
}

type Reply = Result<Json<Value>, Refusal>;

tokio::task_local! {
    /// The principal [`authenticate`] found for the request being handled.
    static CALLER: Principal;
}

/// Who asks over HTTP: the principal the request's token names (a remote caller: it names no
/// path on the engine's host); without authentication, the single user of tenant `default`.
/// Read it in the handler, not in a stream the handler returns (that runs later).
fn principal() -> Principal {
    CALLER
        .try_with(Principal::clone)
        .unwrap_or_else(|_| Principal::local("default", Origin::Remote))
}

/// Authenticate every `/api/v1` request (but the OpenAPI document) before its handler runs:
/// `Authorization: Bearer TOKEN` (or `?access_token=TOKEN`, for browsers' event streams, which
/// cannot send headers); an operator names the tenant with `X-Sluice-Tenant`.
/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

async fn authenticate(
    State(service): Shared,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
        return next.run(request).await;
    }
    // (In a block: a borrow of the request may not live across an await, the body not being
    // shareable between threads.)
    let (token, claimed) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let token = bearer(request.headers()).or_else(|| {
            request.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("access_token="))
                    .map(str::to_string)
            })
        });
        let claimed = header("x-sluice-tenant").unwrap_or_else(|| "default".into());
        (token, claimed)
    };
    // The handlers take their own query parameters only.
    let stripped = request
        .uri()
        .query()
        .filter(|q| q.contains("access_token="))
        .map(|query| {
            let rest: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("access_token="))
                .collect();
            let path = request.uri().path();
            if rest.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", rest.join("&"))
            }
        });
    if let Some(uri) = stripped.and_then(|u| u.parse().ok()) {
        *request.uri_mut() = uri;
    }
    match service
        .authenticate(token.as_deref(), &claimed, Origin::Remote)
        .await
    {
        Ok(p) => CALLER.scope(p, next.run(request)).await,
        Err(e) => Refusal(e).into_response(),
    }
}

/// Refuse an artifact the caller's tenant does not have, as if it did not exist.
async fn owned(s: &Service, digest: &str) -> Result<(), Refusal> {
    if s.owns_artifact(&principal().tenant, digest).await? {
        Ok(())
    } else {
        Err(Refusal(ApiError::not_found(format!(
            "no artifact {digest}"
        ))))
    }
}

async fn call<V: Verb>(service: &Service, verb: V) -> Reply {
    Ok(Json(service.handle(&principal(), verb.into()).await?))
}

/// A JSON body, or the default when there is none.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal(ApiError::invalid(format!(
            "the body is not valid JSON: {e}"
        )))
    })
}

/// The router, and the OpenAPI document at `/api/v1/openapi.json`.
pub(super) fn router(service: Arc<Service>, feed: Arc<EventFeed>) -> axum::Router {
    let (router, doc) = api_router().split_for_parts();
    let doc = Arc::new(doc);
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(super::console::routes())
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/readyz", axum::routing::get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            authenticate,
        ))
        .with_state(AppState {
            service,
            feed,
            streams: Streams(Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS))),
        })
}

/// The OpenAPI document of the routes under `/api/v1`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router::<AppState>().split_for_parts().1
}

#[derive(OpenApi)]
#[openapi(
    paths(artifact_file),
    info(
        title = "Sluice",
        description = "The control API of a Sluice service: pipelines, executions, functions, dead letters. Errors are `{\"error\": {\"code\", \"message\"}}` with the HTTP status the code names (not_found 404, invalid 422, conflict 409, forbidden 403, unauthenticated 401, quota_exceeded 429, unavailable 503, internal 500)."
    ),
    tags(
        (name = "pipelines"), (name = "executions"), (name = "functions"), (name = "dead letters"), (name = "plugins"), (name = "artifacts")
    )
)]
struct Doc;

fn api_router<S>() -> OpenApiRouter<S>
where
    Arc<Service>: axum::extract::FromRef<S>,
    Arc<EventFeed>: axum::extract::FromRef<S>,
    Streams: axum::extract::FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    // Requests that carry a file: a folder, a pipeline, a component. The API's own bounds
    // apply (`MAX_UPLOAD`), not axum's.
    let files = OpenApiRouter::new()
        .routes(routes!(put_bundle))
        .routes(routes!(get_pipeline, put_pipeline, delete_pipeline))
        .routes(routes!(get_function, put_function, delete_function))
        .routes(routes!(installed_plugins, install_plugin))
        .layer(DefaultBodyLimit::max(sluice_api::limits::MAX_UPLOAD));
    // The others carry a few fields: a body larger than `MAX_BODY` is refused before it is
    // read (a tenant's client cannot make an engine hold 64 MiB per call).
    OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(list_pipelines))
        .routes(routes!(pipeline_state))
        .routes(routes!(repair_pipeline_state))
        .routes(routes!(disable_transition))
        .routes(routes!(enable_transition))
        .routes(routes!(rollback_stage))
        .routes(routes!(start_execution))
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(stop_execution))
        .routes(routes!(retry_stage))
        .routes(routes!(approve_action))
        .routes(routes!(reject_action))
        .routes(routes!(wake_action))
        .routes(routes!(list_approvals))
        .routes(routes!(list_functions))
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letter))
        .routes(routes!(action_logs))
        .routes(routes!(events))
        .routes(routes!(list_plugins))
        .routes(routes!(list_secrets))
        .routes(routes!(put_secret, delete_secret))
        .routes(routes!(rotate_secret_key))
        .routes(routes!(list_cache, clear_cache))
        .routes(routes!(artifact_tar))
        .routes(routes!(artifact_files))
        // A path of any depth: axum's catch-all; the document names it `{path}` (in `Doc`).
        .route(
            "/api/v1/artifacts/{digest}/files/{*path}",
            axum::routing::get(artifact_file),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(files)
}

/// The largest body of a request that carries no file (a secret's value is at most 64 KiB).
const MAX_BODY: usize = 1 << 20;

async fn not_found() -> Refusal {
    Refusal(ApiError::not_found(
        "no such route (see /api/v1/openapi.json)",
    ))
}

/// Prometheus' text format (see `docs/operations.md`).
async fn metrics(State(service): Shared, headers: axum::http::HeaderMap) -> Response {
    // With authentication on, the figures name every tenant's pipelines: an operator's only.
    if service.auth_on() {
        let token = bearer(&headers);
        match service
            .authenticate(token.as_deref(), "default", sluice_api::Origin::Remote)
            .await
        {
            Ok(p) if p.may(sluice_api::Role::Operator) => {}
            Ok(_) => {
                return Refusal(ApiError::forbidden(
                    "`/metrics` names every tenant's pipelines: it needs an operator's token",
                ))
                .into_response();
            }
            Err(e) => return Refusal(e).into_response(),
        }
    }
    service.sample_gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::get().encode(),
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "up" }))
}

/// Ready when the stores answer.
async fn readyz(State(service): Shared) -> Response {
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        service.edges.executions.get("_ready"),
    )
    .await;
    match probe {
        Ok(Ok(_)) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => Refusal(ApiError::unavailable(format!("the store: {e}"))).into_response(),
        Err(_) => {
            Refusal(ApiError::unavailable("the store did not answer within 5 s")).into_response()
        }
    }
}

// ---- Pipelines ----

/// Registered pipelines.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines",
    responses((status = 200, description = "`[{name, version, file, registered_at}]`", body = Value)))]
async fn list_pipelines(State(s): Shared) -> Reply {
    call(&s, verbs::PipelineLs {}).await
}

#[derive(Deserialize, Default, ToSchema)]
struct VersionQuery {
    /// A version (default: the current one).
    version: Option<u64>,
}

/// A registered pipeline: its YAML and version.
#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"),
           ("version" = Option<u64>, Query, description = "A version (default: the current one)")),
    responses((status = 200, description = "`{name, version, file, yaml, registered_at}`", body = Value),
              (status = 404, description = "Not registered", body = Value)))]
async fn get_pipeline(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Reply {
    call(
        &s,
        verbs::PipelineGet {
            name,
            version: q.version,
        },
    )
    .await
}

/// Upload a pipeline's folder as a tar archive: its files, directories and links that stay
/// inside. The reply's `digest` is what `PUT /api/v1/pipelines/{name}?bundle=` names.
#[utoipa::path(post, path = "/api/v1/bundles", tag = "pipelines",
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "The folder (at most 64 MiB)"),
    responses((status = 200, description = "`{digest, files, bytes}`", body = Value),
              (status = 422, description = "Not a tar archive, or an entry that leads out of the folder", body = Value)))]
async fn put_bundle(State(s): Shared, tar: Bytes) -> Reply {
    call(
        &s,
        verbs::BundlePut {
            tar: sluice_api::limits::encode_upload(&tar),
        },
    )
    .await
}

/// Where a pipeline's relative paths resolve.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PutPipelineQuery {
    /// The pipeline's uploaded folder (`POST /api/v1/bundles`): relative paths resolve inside it.
    bundle: Option<String>,
}

/// Register a new version of a pipeline (the body is its YAML; its `name:` must be the path's).
#[utoipa::path(put, path = "/api/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"), PutPipelineQuery),
    request_body(content = String, content_type = "application/yaml", description = "The pipeline's YAML"),
    responses((status = 200, description = "`{name, version}`", body = Value),
              (status = 422, description = "Not valid: `error.problems` lists `{line, column, message}`", body = Value)))]
async fn put_pipeline(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<PutPipelineQuery>,
    yaml: Bytes,
) -> Reply {
    let yaml = String::from_utf8(yaml.to_vec())
        .map_err(|_| Refusal(ApiError::invalid("the pipeline is not UTF-8")))?;
    let file = format!("{name}.yaml");
    // The name in the path is the one registered: a body naming another is refused before
    // anything is stored.
    if let (Some(p), _) = sluice_core::model::parse::parse(&file, Default::default(), &yaml)
        && p.name != name
    {
        return Err(Refusal(ApiError::invalid(format!(
            "the pipeline is named `{}`, not `{name}` as the path says",
            p.name
        ))));
    }
    call(
        &s,
        verbs::PipelinePut {
            file,
            dir: None,
            yaml,
            plugins: BTreeMap::new(),
            bundle: q.bundle,
        },
    )
    .await
}

/// Unregister a pipeline.
#[utoipa::path(delete, path = "/api/v1/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "`{name}`", body = Value), (status = 404, description = "Not registered", body = Value)))]
async fn delete_pipeline(State(s): Shared, Path(name): Path<String>) -> Reply {
    call(&s, verbs::PipelineRm { name }).await
}

/// The pipeline's stage lanes: executions inside and waiting, disabled transitions.
#[utoipa::path(get, path = "/api/v1/pipelines/{name}/state", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "`{mode, stages: {STAGE: {inside, waiting, disabled}}}`", body = Value)))]
async fn pipeline_state(State(s): Shared, Path(name): Path<String>) -> Reply {
    call(&s, verbs::PipelineState { name }).await
}

/// Rebuild the pipeline's lanes from its executions (an operator's repair).
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/state/repair", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "The lanes as rebuilt", body = Value)))]
async fn repair_pipeline_state(State(s): Shared, Path(name): Path<String>) -> Reply {
    call(&s, verbs::PipelineRepair { name }).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    /// Why (required to disable).
    reason: Option<String>,
    /// Who asks (until authentication lands).
    by: Option<String>,
}

async fn transition(
    s: &Service,
    pipeline: String,
    stage: String,
    enable: bool,
    b: &Bytes,
) -> Reply {
    let b: TransitionBody = body(b)?;
    call(
        s,
        verbs::Transition {
            pipeline,
            stage,
            enable,
            reason: b.reason,
            by: b.by,
        },
    )
    .await
}

/// Disable the transition into a stage: executions wait before it.
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/transitions/{stage}/disable", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"), ("stage" = String, Path, description = "The stage the transition leads into")),
    request_body(content = TransitionBody, description = "`{\"reason\"}` (required)"),
    responses((status = 200, description = "The lanes", body = Value)))]
async fn disable_transition(
    State(s): Shared,
    Path((name, stage)): Path<(String, String)>,
    b: Bytes,
) -> Reply {
    transition(&s, name, stage, false, &b).await
}

/// Enable the transition into a stage.
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/transitions/{stage}/enable", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"), ("stage" = String, Path, description = "The stage the transition leads into")),
    responses((status = 200, description = "The lanes", body = Value)))]
async fn enable_transition(
    State(s): Shared,
    Path((name, stage)): Path<(String, String)>,
    b: Bytes,
) -> Reply {
    transition(&s, name, stage, true, &b).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The execution (which succeeded in the stage) to roll back to.
    to: String,
    /// Who asks.
    by: Option<String>,
}

/// Start a rollback execution of a stage to an earlier execution.
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/stages/{stage}/rollback", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline name"), ("stage" = String, Path, description = "Stage name")),
    request_body(content = RollbackBody),
    responses((status = 201, description = "`{execution_id}`", body = Value)))]
async fn rollback_stage(
    State(s): Shared,
    Path((name, stage)): Path<(String, String)>,
    b: Bytes,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    let b: RollbackBody = body(&b)?;
    let reply = call(
        &s,
        verbs::Rollback {
            pipeline: name,
            stage,
            to: b.to,
            by: b.by,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, reply))
}

// ---- Executions ----

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// Variable overrides (declared variables only).
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// Event id: the same id twice starts one execution (the second answer names it).
    event_id: Option<String>,
    /// Who asks.
    started_by: Option<String>,
    /// What the start is about: `{"commit", "ref", "repository"}` (`#{trigger.commit}`, …).
    #[schema(value_type = Option<Object>)]
    source: Option<verbs::StartSource>,
}

/// Which waiting approvals to list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    pipeline: Option<String>,
    approver: Option<String>,
}

/// Approvals waiting for a decision, oldest first, each as its approval event (the token left
/// out).
#[utoipa::path(get, path = "/api/v1/approvals", tag = "executions",
    params(("pipeline" = Option<String>, Query, description = "Only this pipeline's"),
           ("approver" = Option<String>, Query, description = "Only those this name may decide (listed among the approvers, or no list, and not decided by it yet)")),
    responses((status = 200, description = "`[{execution_id, pipeline, stage, action, at, approval: {approvers, custom_data, external_link, expires_at, how}}]`", body = Value)))]
async fn list_approvals(State(s): Shared, Query(q): Query<ApprovalsQuery>) -> Reply {
    call(
        &s,
        verbs::Approvals {
            pipeline: q.pipeline,
            approver: q.approver,
        },
    )
    .await
}

/// Start a pipeline.
#[utoipa::path(post, path = "/api/v1/pipelines/{name}/executions", tag = "executions",
    params(("name" = String, Path, description = "Pipeline name")),
    request_body(content = StartBody),
    responses((status = 201, description = "`{execution_id, event_id}`", body = Value),
              (status = 404, description = "Not registered", body = Value),
              (status = 422, description = "A variable the pipeline does not declare", body = Value)))]
async fn start_execution(
    State(s): Shared,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    let b: StartBody = body(&b)?;
    let reply = call(
        &s,
        verbs::Start {
            pipeline: name,
            variables: b.variables,
            event_id: b.event_id,
            started_by: b.started_by,
            source: b.source,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, reply))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExecutionsQuery {
    /// Only this pipeline.
    pipeline: Option<String>,
    /// Only this status (`InProgress`, `Succeeded`, `Failed`, `Stopped`, …).
    #[schema(value_type = Option<String>)]
    status: Option<Status>,
    /// At most this many (default 20, at most 1000).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Executions, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/executions", tag = "executions",
    params(("pipeline" = Option<String>, Query, description = "Only this pipeline"),
           ("status" = Option<String>, Query, description = "Only this status"),
           ("limit" = Option<usize>, Query, description = "Page size (default 20, at most 1000)"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "`{items: [{execution_id, pipeline, status, …}], next_cursor}`", body = Value)))]
async fn list_executions(State(s): Shared, Query(q): Query<ExecutionsQuery>) -> Reply {
    let limit = q.limit.unwrap_or(20).clamp(1, sluice_api::limits::MAX_LIST);
    let Json(items) = call(
        &s,
        verbs::Executions {
            pipeline: q.pipeline,
            status: q.status,
            limit: Some(limit),
            before: q.cursor,
        },
    )
    .await?;
    let rows = items.as_array().map(Vec::len).unwrap_or(0);
    let next = (rows == limit)
        .then(|| {
            items
                .as_array()
                .and_then(|a| a.last())
                .map(|l| l["execution_id"].clone())
        })
        .flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// One execution's record: stages, actions, attempts, variables, artifacts.
#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses((status = 200, description = "The execution record", body = Value), (status = 404, description = "No such execution", body = Value)))]
async fn get_execution(State(s): Shared, Path(id): Path<String>) -> Reply {
    call(&s, verbs::GetExecution { execution_id: id }).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct StopBody {
    /// Cancel running actions instead of letting them finish.
    #[serde(default)]
    abandon: bool,
    /// Why.
    reason: Option<String>,
}

/// Stop an execution.
#[utoipa::path(post, path = "/api/v1/executions/{id}/stop", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    request_body(content = StopBody),
    responses((status = 200, description = "`{execution_id, status}`", body = Value), (status = 409, description = "Already ended", body = Value)))]
async fn stop_execution(State(s): Shared, Path(id): Path<String>, b: Bytes) -> Reply {
    let b: StopBody = body(&b)?;
    call(
        &s,
        verbs::Stop {
            execution_id: id,
            abandon: b.abandon,
            reason: b.reason,
        },
    )
    .await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    /// Every action, not only those that did not succeed.
    #[serde(default)]
    all: bool,
}

/// Re-run a failed or stopped stage.
#[utoipa::path(post, path = "/api/v1/executions/{id}/stages/{stage}/retry", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("stage" = String, Path, description = "Stage name")),
    request_body(content = RetryBody),
    responses((status = 200, description = "`{execution_id, status}`", body = Value)))]
async fn retry_stage(
    State(s): Shared,
    Path((id, stage)): Path<(String, String)>,
    b: Bytes,
) -> Reply {
    let b: RetryBody = body(&b)?;
    call(
        &s,
        verbs::Retry {
            execution_id: id,
            stage,
            all: b.all,
        },
    )
    .await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Who decides (until authentication lands, as `--as` does).
    by: Option<String>,
    /// Why.
    summary: Option<String>,
    /// The approval notification's token, if quoted.
    token: Option<String>,
}

async fn decide(
    s: &Service,
    id: String,
    stage: String,
    action: String,
    approved: bool,
    b: &Bytes,
) -> Reply {
    let b: DecisionBody = body(b)?;
    // With authentication the token names the decider; without, the body must.
    let by = match b.by.filter(|by| !by.trim().is_empty()) {
        Some(by) => by,
        None if s.auth_on() => String::new(),
        None => return Err(Refusal(ApiError::invalid("name the decider in `by`"))),
    };
    call(
        s,
        verbs::Approve {
            execution_id: id,
            action: format!("{stage}/{action}"),
            approved,
            by,
            summary: b.summary,
            token: b.token,
        },
    )
    .await
}

/// Approve an action waiting for approval.
#[utoipa::path(post, path = "/api/v1/executions/{id}/actions/{stage}/{action}/approve", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("stage" = String, Path, description = "Stage name"), ("action" = String, Path, description = "Action name")),
    request_body(content = DecisionBody),
    responses((status = 200, description = "`{execution_id, status, decision}`", body = Value), (status = 409, description = "Not waiting, or already decided by this principal", body = Value)))]
async fn approve_action(
    State(s): Shared,
    Path((id, stage, action)): Path<(String, String, String)>,
    b: Bytes,
) -> Reply {
    decide(&s, id, stage, action, true, &b).await
}

/// Reject an action waiting for approval.
#[utoipa::path(post, path = "/api/v1/executions/{id}/actions/{stage}/{action}/reject", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("stage" = String, Path, description = "Stage name"), ("action" = String, Path, description = "Action name")),
    request_body(content = DecisionBody),
    responses((status = 200, description = "`{execution_id, status, decision}`", body = Value)))]
async fn reject_action(
    State(s): Shared,
    Path((id, stage, action)): Path<(String, String, String)>,
    b: Bytes,
) -> Reply {
    decide(&s, id, stage, action, false, &b).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct WakeBody {
    /// The event's payload, handed to the action.
    payload: Option<String>,
}

/// Wake an action waiting for an external event.
#[utoipa::path(post, path = "/api/v1/executions/{id}/actions/{stage}/{action}/wake", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("stage" = String, Path, description = "Stage name"), ("action" = String, Path, description = "Action name")),
    request_body(content = WakeBody),
    responses((status = 200, description = "`{execution_id, status}`", body = Value)))]
async fn wake_action(
    State(s): Shared,
    Path((id, stage, action)): Path<(String, String, String)>,
    b: Bytes,
) -> Reply {
    let b: WakeBody = body(&b)?;
    call(
        &s,
        verbs::Wake {
            execution_id: id,
            action: format!("{stage}/{action}"),
            payload: b.payload,
        },
    )
    .await
}

// ---- Functions ----

/// Registered functions (for `invoke@1`).
#[utoipa::path(get, path = "/api/v1/functions", tag = "functions",
    responses((status = 200, description = "`[{name, digest, size, registered_at}]`", body = Value)))]
async fn list_functions(State(s): Shared) -> Reply {
    call(&s, verbs::FunctionLs {}).await
}

/// One registered function.
#[utoipa::path(get, path = "/api/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, description = "`{name, digest, size, registered_at}`", body = Value), (status = 404, description = "Not registered", body = Value)))]
async fn get_function(State(s): Shared, Path(name): Path<String>) -> Reply {
    let Json(all) = call(&s, verbs::FunctionLs {}).await?;
    all.as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name.as_str()))
        .map(|f| Json(f.clone()))
        .ok_or_else(|| {
            Refusal(ApiError::not_found(format!(
                "no function `{name}` is registered"
            )))
        })
}

/// Register a function: the body is the component (`application/wasm`).
#[utoipa::path(put, path = "/api/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component (at most 64 MiB)"),
    responses((status = 200, description = "`{name, digest, size, registered_at}`", body = Value), (status = 422, description = "Not a function component", body = Value)))]
async fn put_function(State(s): Shared, Path(name): Path<String>, component: Bytes) -> Reply {
    call(
        &s,
        verbs::FunctionPut {
            name,
            bytes: Some(sluice_api::limits::encode_upload(&component)),
            digest: None,
        },
    )
    .await
}

/// Unregister a function (its component stays in the artifact store).
#[utoipa::path(delete, path = "/api/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, description = "`{name}`", body = Value), (status = 404, description = "Not registered", body = Value)))]
async fn delete_function(State(s): Shared, Path(name): Path<String>) -> Reply {
    call(&s, verbs::FunctionRm { name }).await
}

// ---- Dead letters ----

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct DeadLettersQuery {
    /// Only those addressed to this pipeline.
    pipeline: Option<String>,
    /// At most this many (default 20).
    limit: Option<usize>,
}

/// Rejected trigger events, newest first.
#[utoipa::path(get, path = "/api/v1/deadletters", tag = "dead letters",
    params(("pipeline" = Option<String>, Query, description = "Only this pipeline"), ("limit" = Option<usize>, Query, description = "At most this many")),
    responses((status = 200, description = "`[{id, pipeline, event_id, reason, at, payload}]`", body = Value)))]
async fn list_dead_letters(State(s): Shared, Query(q): Query<DeadLettersQuery>) -> Reply {
    call(
        &s,
        verbs::DeadLetters {
            pipeline: q.pipeline,
            limit: q.limit,
        },
    )
    .await
}

/// Send a dead letter's event again.
#[utoipa::path(post, path = "/api/v1/deadletters/{id}/replay", tag = "dead letters",
    params(("id" = String, Path, description = "The dead letter's id")),
    responses((status = 201, description = "`{execution_id, event_id, pipeline}`", body = Value)))]
async fn replay_dead_letter(
    State(s): Shared,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    let reply = call(&s, verbs::DeadLetterReplay { id }).await?;
    Ok((StatusCode::CREATED, reply))
}

// ---- Logs, events, plugins ----

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// The attempt (default: the latest).
    attempt: Option<u32>,
}

fn wants_stream(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// An action attempt's log: JSON lines; with `Accept: text/event-stream`, followed live (one
/// `line` event per line) until the attempt ends (an `end` event).
#[utoipa::path(get, path = "/api/v1/executions/{id}/actions/{stage}/{action}/logs", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("stage" = String, Path, description = "Stage name"),
           ("action" = String, Path, description = "Action name"), ("attempt" = Option<u32>, Query, description = "Attempt (default: the latest)")),
    responses((status = 200, description = "`application/x-ndjson`: `{at, attempt, level, message, fields}` per line; or `text/event-stream`", body = Value),
              (status = 404, description = "No such execution, action or attempt", body = Value)))]
async fn action_logs(
    State(s): Shared,
    State(streams): State<Streams>,
    Path((id, stage, action)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Refusal> {
    let request = verbs::Logs {
        execution_id: id,
        stage,
        action,
        attempt: q.attempt,
    };
    let who = principal();
    let page = s.call(&who, request.clone()).await?;
    if !wants_stream(&headers) {
        let mut body = Vec::new();
        for line in &page.lines {
            serde_json::to_writer(&mut body, line).map_err(|e| Refusal(ApiError::internal(e)))?;
            body.push(b'\n');
        }
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            body,
        )
            .into_response());
    }
    // Follow: send what is new every half second until the attempt has ended.
    let slot = streams.open()?;
    let request = verbs::Logs {
        attempt: Some(page.attempt),
        ..request
    };
    let state = (
        (s, who),
        request,
        0usize,
        false,
        std::collections::VecDeque::<SseEvent>::new(),
        slot,
    );
    let lines = stream::unfold(
        state,
        |((s, who), request, mut sent, mut ended, mut queue, slot)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        ((s, who), request, sent, ended, queue, slot),
                    ));
                }
                if ended {
                    return None;
                }
                match s.call(&who, request.clone()).await {
                    Ok(page) => {
                        for line in page.lines.iter().skip(sent) {
                            queue.push_back(
                                SseEvent::default()
                                    .event("line")
                                    .json_data(line)
                                    .unwrap_or_default(),
                            );
                        }
                        sent = sent.max(page.lines.len());
                        if page.complete {
                            ended = true;
                            queue.push_back(SseEvent::default().event("end").data("{}"));
                        }
                    }
                    Err(e) => {
                        ended = true;
                        queue.push_back(
                            SseEvent::default()
                                .event("error")
                                .json_data(&e)
                                .unwrap_or_default(),
                        );
                    }
                }
                if queue.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        },
    );
    Ok(Sse::new(lines)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only this pipeline's events.
    pipeline: Option<String>,
}

/// Every state change as server-sent events (the documents NATS carries), numbered: a client
/// reconnecting with `Last-Event-ID` gets what it missed (of the newest 4,096).
#[utoipa::path(get, path = "/api/v1/events", tag = "executions",
    params(("pipeline" = Option<String>, Query, description = "Only this pipeline"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "`text/event-stream` of `{kind, pipeline, execution_id, stage, action, status, …}`", body = Value)))]
async fn events(
    State(feed): State<Arc<EventFeed>>,
    State(streams): State<Streams>,
    Query(q): Query<EventsQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>, Refusal> {
    let slot = streams.open()?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (backlog, live) = feed.follow(after);
    let tenant = principal().tenant;
    let keep = move |e: &crate::bus::Event| {
        e.tenant == tenant && q.pipeline.as_ref().is_none_or(|p| *p == e.pipeline)
    };
    let backlog: std::collections::VecDeque<_> = backlog.into_iter().collect();
    let events = stream::unfold(
        (backlog, live, keep, slot),
        |(mut backlog, mut live, keep, slot)| async move {
            loop {
                let (n, event) = match backlog.pop_front() {
                    Some(item) => item,
                    None => match live.recv().await {
                        Ok(item) => item,
                        // A slow client misses events rather than slowing the engine; it can
                        // reconnect with the last id it saw.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    },
                };
                if !keep(&event) {
                    continue;
                }
                let sse = SseEvent::default()
                    .id(n.to_string())
                    .event(format!("{:?}", event.kind).to_lowercase())
                    .json_data(&*event)
                    .unwrap_or_default();
                return Some((Ok(sse), (backlog, live, keep, slot)));
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The plugins pipelines may use (`uses:`), with their descriptions: category, configuration
/// keys, capabilities, side effects.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins",
    responses((status = 200, description = "`[{name, version, category, summary, config, capabilities, side_effects}]`", body = Value)))]
async fn list_plugins(State(s): Shared) -> Reply {
    call(&s, verbs::PluginLs {}).await
}

/// The marketplace plugins installed for the tenant (`sluice plugin install --service`).
#[utoipa::path(get, path = "/api/v1/plugins/installed", tag = "plugins",
    responses((status = 200, description = "`[{name, requirement, version, registry, oci-digest, blake3, capabilities, publisher, unsigned}]`", body = Value)))]
async fn installed_plugins(State(s): Shared) -> Reply {
    call(&s, verbs::PluginInstalled {}).await
}

/// Install a marketplace plugin for the tenant: the body is `{locked, bytes}` (the lock entry
/// the client wrote after verifying it, the component in base64); the service checks the
/// component against the entry before it keeps either.
#[utoipa::path(post, path = "/api/v1/plugins/installed", tag = "plugins",
    request_body(content = Value, description = "`{locked: {name, version, blake3, capabilities, …}, bytes: base64}`"),
    responses((status = 200, description = "The entry kept", body = Value), (status = 422, description = "The component is not what the entry says", body = Value)))]
async fn install_plugin(State(s): Shared, Json(body): Json<verbs::PluginInstall>) -> Reply {
    call(&s, body).await
}

// ---- Secrets ----

/// The tenant's secrets: names, scopes, dates. No request returns a value.
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, description = "`[{name, pipelines, created, updated}]`", body = Value)))]
async fn list_secrets(State(s): Shared) -> Reply {
    call(&s, verbs::SecretLs {}).await
}

/// Where a secret may be used.
#[derive(serde::Deserialize, utoipa::IntoParams)]
struct SecretScope {
    /// Only this pipeline may use it (comma-separated for several); every pipeline if absent.
    pipeline: Option<String>,
}

/// Store (or replace) a secret: the body is its value (UTF-8, at least 8 bytes).
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name"), SecretScope),
    request_body(content = String, content_type = "text/plain", description = "The value"),
    responses((status = 200, description = "`{name, pipelines, created, updated}`", body = Value), (status = 422, description = "Not a valid name or value", body = Value)))]
async fn put_secret(
    State(s): Shared,
    Path(name): Path<String>,
    Query(scope): Query<SecretScope>,
    value: String,
) -> Reply {
    let pipelines = scope
        .pipeline
        .map(|p| {
            p.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    call(
        &s,
        verbs::SecretPut {
            name,
            value,
            pipelines,
        },
    )
    .await
}

/// Re-seal every tenant's data key under the engines' current master key (operators; the
/// last step of an online rotation, see docs/secrets.md).
#[utoipa::path(post, path = "/api/v1/secrets/rotate-key", tag = "secrets",
    responses((status = 200, description = "`{resealed, master_key}`", body = Value), (status = 403, description = "Not an operator", body = Value)))]
async fn rotate_secret_key(State(s): Shared) -> Reply {
    call(&s, verbs::SecretRotateKey {}).await
}

/// Remove a secret.
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "`{name}`", body = Value), (status = 404, description = "No such secret", body = Value)))]
async fn delete_secret(State(s): Shared, Path(name): Path<String>) -> Reply {
    call(&s, verbs::SecretRm { name }).await
}

// ---- The action cache ----

/// Which entries of the action cache.
#[derive(serde::Deserialize, utoipa::IntoParams)]
struct CacheQuery {
    /// Only this pipeline's.
    pipeline: Option<String>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct CachePage {
    /// Only this pipeline's.
    pipeline: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// The page after this entry: `<created>/<key>` of the previous page's last entry.
    before: Option<String>,
}

/// The tenant's action cache, newest first: successes of pure actions that an unchanged action
/// is taken from instead of running.
#[utoipa::path(get, path = "/api/v1/cache", tag = "cache", params(CachePage),
    responses((status = 200, description = "`[{key, pipeline, from, variables, artifacts, summary, created}]`", body = Value)))]
async fn list_cache(State(s): Shared, Query(q): Query<CachePage>) -> Reply {
    call(
        &s,
        verbs::CacheLs {
            pipeline: q.pipeline,
            limit: q.limit,
            before: q.before,
        },
    )
    .await
}

/// Forget cached successes: those actions run again next time.
#[utoipa::path(delete, path = "/api/v1/cache", tag = "cache", params(CacheQuery),
    responses((status = 200, description = "`{removed}`", body = Value)))]
async fn clear_cache(State(s): Shared, Query(q): Query<CacheQuery>) -> Reply {
    call(
        &s,
        verbs::CacheClear {
            pipeline: q.pipeline,
        },
    )
    .await
}

// ---- Artifacts ----

/// A whole artifact (an output of an action, by its tree digest) as a tar archive. Every file
/// is checked against its digest as it leaves the store.
#[utoipa::path(get, path = "/api/v1/artifacts/{digest}", tag = "artifacts",
    params(("digest" = String, Path, description = "`blake3:<hex>` of the artifact's tree")),
    responses((status = 200, description = "`application/x-tar`", body = Vec<u8>), (status = 404, description = "No such artifact", body = Value)))]
async fn artifact_tar(State(s): Shared, Path(digest): Path<String>) -> Result<Response, Refusal> {
    owned(&s, &digest).await?;
    Ok(super::artifacts::tarball(s.artifacts_of(&principal().tenant).await?, &digest).await?)
}

/// One file of an artifact (`..`, absolute paths and symbolic links name nothing).
#[utoipa::path(get, path = "/api/v1/artifacts/{digest}/files/{path}", tag = "artifacts",
    params(("digest" = String, Path, description = "`blake3:<hex>` of the artifact's tree"),
           ("path" = String, Path, description = "The file's path inside the artifact")),
    responses((status = 200, description = "The file's bytes", body = Vec<u8>), (status = 404, description = "No such file", body = Value),
              (status = 422, description = "A path that leaves the artifact", body = Value)))]
async fn artifact_file(
    State(s): Shared,
    Path((digest, path)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    owned(&s, &digest).await?;
    Ok(super::artifacts::file(s.artifacts_of(&principal().tenant).await?, &digest, &path).await?)
}

/// Every file, directory and link of an artifact.
#[utoipa::path(get, path = "/api/v1/artifacts/{digest}/files", tag = "artifacts",
    params(("digest" = String, Path, description = "`blake3:<hex>` of the artifact's tree")),
    responses((status = 200, description = "`[{path, kind, size, executable, target}]`", body = Value), (status = 404, description = "No such artifact", body = Value)))]
async fn artifact_files(State(s): Shared, Path(digest): Path<String>) -> Reply {
    owned(&s, &digest).await?;
    Ok(Json(
        super::artifacts::listing(s.artifacts_of(&principal().tenant).await?, &digest).await?,
    ))
}
