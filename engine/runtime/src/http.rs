//! Outbound HTTP for guests (`wasi:http`), deny by default: a request leaves only when its
//! origin (`scheme://host[:port]`) is one the action was granted (`capabilities.http`).
//! Everything else gets `HTTP-request-denied` and a line in the action's log.
use super::logging::{Level, LogSink};
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

use sluice_core::grants::http::origin_of;
pub use sluice_core::grants::http::{origin, valid_grant};

/// The hooks of one call: its granted origins and its log.
pub(super) struct OriginGuard {
    allowed: Vec<String>,
    log: Arc<dyn LogSink>,
}

impl OriginGuard {
    pub(super) fn new(grants: &[String], log: Arc<dyn LogSink>) -> Self {
        OriginGuard {
            allowed: grants
                .iter()
                .filter_map(|g| origin(g.trim_end_matches('/')))
                .collect(),
            log,
        }
    }
}

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = Result<(), Error>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OriginGuard {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let origin = origin_of(request.uri());
        let granted = origin.as_ref().is_some_and(|o| self.allowed.contains(o));
        if !granted {
            let shown = origin.unwrap_or_else(|| request.uri().to_string());
            self.log.log(Level::Warn, &format!("outbound HTTP to {shown} denied: not granted (capabilities: {{ http: [{shown}] }})"), &[]);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.log.log(
            Level::Debug,
            &format!("{} {}", request.method(), request.uri()),
            &[],
        );
        let _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_grants() {
        assert_eq!(
            origin("https://Example.com/a/b?c").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(
            origin("https://example.com:443/x").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin("ftp://example.com"), None);
        assert_eq!(origin("/relative"), None);
        assert_eq!(
            valid_grant("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(
            valid_grant("https://example.com/path")
                .unwrap_err()
                .contains("without a path")
        );
        assert!(valid_grant("https://user:pw@example.com").is_err());
        assert!(
            valid_grant("example.com")
                .unwrap_err()
                .contains("not an http(s) origin")
        );
    }
}
