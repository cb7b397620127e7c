//! Outbound HTTP for guests (`wasi:http`), deny by default: a request leaves only when its
//! origin (`scheme://host[:port]`) is one the action was granted (`capabilities.http`).
//! Everything else gets `HTTP-request-denied` and a line in the action's log.
use super::host::{Level, LogSink};
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

/// The origin of a URL as grants name it: lowercase scheme and host, the port only when it is
/// not the scheme's default. `None` for anything that is not an absolute http(s) URL.
pub fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    origin_of(&uri)
}

fn origin_of(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host()?.to_ascii_lowercase();
    Some(match uri.port_u16() {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Check a grant as written in a pipeline: an origin, with no path, query or credentials.
pub fn valid_grant(grant: &str) -> Result<String, String> {
    let normal = origin(grant.trim_end_matches('/')).ok_or_else(|| format!("{grant:?} is not an http(s) origin such as https://example.com or http://127.0.0.1:8080"))?;
    let uri: http::Uri = grant
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{grant:?}: {e}"))?;
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        || grant.contains('@')
    {
        return Err(format!(
            "{grant:?}: grant an origin (scheme://host[:port]), without a path or credentials"
        ));
    }
    Ok(normal)
}

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
