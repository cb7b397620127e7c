//! Outbound HTTP through `wasi:http` (feature `http`). The engine sends a request only to an
//! origin the pipeline granted the action (`capabilities: { http: [https://host] }`); any
//! other is refused with `HTTP-request-denied`. Plugins that use this declare
//! [`crate::Capability::Http`] in `describe`.
use std::io::Write;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// The body, when read with [`request`]; empty with [`request_into`].
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send `method url` with `headers` and `body`; the whole response body is read into memory.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut buf = Vec::new();
    let mut response = request_into(method, url, headers, body, &mut buf)?;
    response.body = buf;
    Ok(response)
}

/// [`request`], streaming the response body into `sink` (a file for large downloads).
pub fn request_into(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    sink: &mut dyn Write,
) -> Result<Response, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an absolute URL"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(format!(
                "{url:?}: unsupported scheme {other:?} (http or https)"
            ));
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    let mut list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    // A known length rather than chunked encoding: every server understands it.
    if !body.is_empty() || matches!(method, Method::Post | Method::Put | Method::Patch) {
        list.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&list).map_err(|e| format!("bad request headers: {e:?}"))?;
    let req = OutgoingRequest::new(fields);
    req.set_method(&method)
        .map_err(|()| "bad method".to_string())?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme".to_string())?;
    req.set_authority(Some(authority))
        .map_err(|()| format!("bad host {authority:?}"))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| format!("bad path {path:?}"))?;
    let outgoing = req
        .body()
        .map_err(|()| "the request body was already taken".to_string())?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| describe(url, &e))?;
    {
        let stream = outgoing
            .write()
            .map_err(|()| "the request body stream was already taken".to_string())?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("sending the request body to {url}: {e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| describe(url, &e))?;
    let response = loop {
        match pending.get() {
            Some(Ok(Ok(r))) => break r,
            Some(Ok(Err(e))) => return Err(describe(url, &e)),
            Some(Err(())) => return Err(format!("{url}: the response was already taken")),
            None => pending.subscribe().block(),
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| "the response body was already taken".to_string())?;
    {
        let stream = incoming
            .stream()
            .map_err(|()| "the response body stream was already taken".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => sink
                    .write_all(&chunk)
                    .map_err(|e| format!("writing the response body: {e}"))?,
                Err(StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the response from {url}: {e:?}")),
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: Vec::new(),
    })
}

fn describe(url: &str, e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => format!(
            "{url}: outbound HTTP denied (grant its origin with `capabilities: {{ http: [...] }}`)"
        ),
        ErrorCode::ConnectionRefused => format!("{url}: connection refused"),
        ErrorCode::DnsError(_) => format!("{url}: host not found"),
        other => format!("{url}: {other:?}"),
    }
}
