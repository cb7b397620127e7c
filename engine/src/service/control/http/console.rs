//! The web console: three static files embedded in the binary (no build step, no CDN), served
//! on the HTTP port. Every page of the console loads the same document; its script reads the
//! URL (`/`, `/pipelines/NAME`, `/executions/ID`, `/plugins`) and talks to `/api/v1`.
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// Only this origin's scripts, styles and connections; no framing.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

/// The console's routes.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", get(index))
        .route("/plugins", get(index))
        .route("/pipelines/{name}", get(index))
        .route("/executions/{id}", get(index))
        .route(
            "/console/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}
