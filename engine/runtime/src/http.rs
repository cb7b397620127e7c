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
    /// Also in request bodies (the plugin declared `secrets-in-body`), which are then read
    /// whole, at most [`MAX_SUBSTITUTED_BODY`] bytes, before they are sent.
    in_body: bool,
}

/// The largest request body the host reads to put secrets in: a body with a secret is a small
/// document (JSON, a form), never an upload.
pub const MAX_SUBSTITUTED_BODY: usize = 1 << 20;

/// `bytes` with every placeholder replaced by its value.
fn replace_all(bytes: &[u8], secrets: &[(String, String)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (placeholder, value) in secrets {
        let p = placeholder.as_bytes();
        if p.is_empty() || !out.windows(p.len()).any(|w| w == p) {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(p) {
                next.extend_from_slice(value.as_bytes());
                i += p.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
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
            in_body: false,
        }
    }

    pub(super) fn set_secrets(&mut self, secrets: Vec<(String, String)>, in_body: bool) {
        self.secrets = secrets;
        self.in_body = in_body;
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
            let replaced = replace_all(value.as_bytes(), &self.secrets);
            if replaced == value.as_bytes() {
                continue;
            }
            *value = http::HeaderValue::from_bytes(&replaced).map_err(|_| {
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
        let body_secrets = if self.in_body && !self.secrets.is_empty() {
            Some((self.secrets.clone(), self.log.clone()))
        } else {
            None
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            let request = match body_secrets {
                Some((secrets, log)) => with_secrets_in_body(request, &secrets, &*log).await?,
                None => request,
            };
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The request with its body read (bounded) and each placeholder in it replaced by its value;
/// a `content-length` the guest set is corrected to the new length.
async fn with_secrets_in_body(
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    secrets: &[(String, String)],
    log: &dyn LogSink,
) -> Result<http::Request<wasmtime_wasi_http::WasiBody>, Error> {
    use http_body_util::BodyExt;
    let (mut parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_SUBSTITUTED_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            log.log(
                Level::Error,
                &format!(
                    "outbound HTTP to {} refused: its body could not be read to put secrets in (at most {MAX_SUBSTITUTED_BODY} bytes): {e}",
                    parts.uri
                ),
                &[],
            );
            return Err(Error::HttpRequestBodySize(None));
        }
    };
    let replaced = replace_all(&bytes, secrets);
    if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, replaced.len().into());
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(replaced))
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(http::Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_everywhere_in_a_body() {
        let secrets = vec![
            ("[sluice-secret:a]".to_string(), "AAA".to_string()),
            ("[sluice-secret:b]".to_string(), "".to_string()),
        ];
        assert_eq!(
            replace_all(
                b"{\"k\":\"[sluice-secret:a]\",\"l\":\"[sluice-secret:a][sluice-secret:b]x\"}",
                &secrets
            ),
            b"{\"k\":\"AAA\",\"l\":\"AAAx\"}"
        );
        assert_eq!(
            replace_all(b"[sluice-secret:", &secrets),
            b"[sluice-secret:"
        );
    }

    #[tokio::test]
    async fn a_body_too_large_to_read_for_secrets_is_refused_and_logged() {
        use http_body_util::BodyExt;
        struct Lines(std::sync::Mutex<Vec<String>>);
        impl LogSink for Lines {
            fn log(&self, _: Level, message: &str, _: &[(String, String)]) {
                self.0.lock().unwrap().push(message.to_string());
            }
        }
        let log = Lines(Default::default());
        let secrets = vec![("[sluice-secret:a]".to_string(), "AAAA".to_string())];
        let request = |bytes: Vec<u8>| {
            http::Request::builder()
                .uri("https://example.com/hook")
                .header(http::header::CONTENT_LENGTH, bytes.len())
                .body(
                    http_body_util::Full::new(bytes::Bytes::from(bytes))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap()
        };
        let huge = request(vec![b'x'; MAX_SUBSTITUTED_BODY + 1]);
        assert!(with_secrets_in_body(huge, &secrets, &log).await.is_err());
        assert!(log.0.lock().unwrap()[0].contains("refused"), "{:?}", log.0);
        let small = request(b"{\"t\":\"[sluice-secret:a]\"}".to_vec());
        let sent = with_secrets_in_body(small, &secrets, &log).await.unwrap();
        assert_eq!(sent.headers()[http::header::CONTENT_LENGTH], "12");
        let body = sent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"t\":\"AAAA\"}");
    }

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
