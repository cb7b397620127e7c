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
    /// Secret placeholders in the guest's configuration and the values the host puts in
    /// their place in request headers (the guest never holds a value).
    secrets: Vec<(String, String)>,
}

impl OriginGuard {
    pub(super) fn new(grants: &[String], log: Arc<dyn LogSink>) -> Self {
        OriginGuard {
            allowed: grants
                .iter()
                .filter_map(|g| origin(g.trim_end_matches('/')))
                .collect(),
            log,
            secrets: Vec::new(),
        }
    }

    pub(super) fn set_secrets(&mut self, secrets: Vec<(String, String)>) {
        self.secrets = secrets;
    }

    /// Whether any header carries a secret placeholder.
    fn carries_placeholder(&self, request: &http::Request<wasmtime_wasi_http::WasiBody>) -> bool {
        request.headers().values().any(|v| {
            let v = String::from_utf8_lossy(v.as_bytes());
            self.secrets.iter().any(|(p, _)| v.contains(p.as_str()))
        })
    }

    /// Put the values in place of their placeholders in the request's headers.
    fn substitute(
        &self,
        request: &mut http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<(), String> {
        for value in request.headers_mut().values_mut() {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            if !self.secrets.iter().any(|(p, _)| text.contains(p.as_str())) {
                continue;
            }
            let mut replaced = text;
            for (placeholder, secret) in &self.secrets {
                replaced = replaced.replace(placeholder.as_str(), secret);
            }
            *value = http::HeaderValue::from_str(&replaced).map_err(|_| {
                "a secret cannot be sent in a header (it holds characters a header may not)"
                    .to_string()
            })?;
            value.set_sensitive(true);
        }
        Ok(())
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
            let carrying = if self.carries_placeholder(&request) {
                " (it carried a secret's placeholder; the secret was not sent)"
            } else {
                ""
            };
            self.log.log(Level::Warn, &format!("outbound HTTP to {shown} denied: not granted (capabilities: {{ http: [{shown}] }}){carrying}"), &[]);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let mut request = request;
        if let Err(e) = self.substitute(&mut request) {
            self.log.log(
                Level::Error,
                &format!("outbound HTTP to {} refused: {e}", request.uri()),
                &[],
            );
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
