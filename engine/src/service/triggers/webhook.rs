//! Webhooks: `POST /hooks/<tenant>/<pipeline>` (on the HTTP port of `sluice serve --http ADDR`) takes a
//! GitHub-style push, checks its `X-Hub-Signature-256` HMAC against the secret in the
//! environment variable the pipeline names, maps it to a trigger event, applies the git
//! filters and publishes it like any other event.
use crate::service::Service;
use crate::service::trigger::{Source, TriggerEvent};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// Largest accepted webhook body.
const MAX_BODY: usize = 16 << 20;

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok() // constant time
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A GitHub push payload as a trigger event.
pub fn push_event(delivery: Option<&str>, payload: &Value) -> Result<TriggerEvent, String> {
    let git_ref = payload["ref"]
        .as_str()
        .ok_or("the push payload has no `ref`")?;
    let commit = payload["after"]
        .as_str()
        .ok_or("the push payload has no `after`")?;
    // First occurrence order, de-duplicated through a set: a push may list 100k files.
    let mut files: Vec<String> = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for c in payload["commits"].as_array().into_iter().flatten() {
        for kind in ["added", "modified", "removed"] {
            for f in c[kind]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if seen.insert(f) {
                    files.push(f.to_string());
                }
            }
        }
    }
    let repository = payload["repository"]["clone_url"]
        .as_str()
        .or(payload["repository"]["full_name"].as_str())
        .map(str::to_string);
    Ok(TriggerEvent {
        id: delivery
            .map(str::to_string)
            .unwrap_or_else(|| format!("webhook-{commit}-{git_ref}")),
        source: Some(Source {
            kind: "git".into(),
            repository,
            git_ref: Some(git_ref.to_string()),
            commit: Some(commit.to_string()),
            changed_files: files,
            pusher: payload["pusher"]["name"].as_str().map(str::to_string),
        }),
        variables: Default::default(),
        data: None,
    })
}

impl Service {
    pub(in crate::service) async fn webhook(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let Some((tenant, pipeline)) = path.strip_prefix("/hooks/").and_then(|r| r.split_once('/'))
        else {
            return reply(
                StatusCode::NOT_FOUND,
                json!({ "error": "POST /hooks/<tenant>/<pipeline>" }),
            );
        };
        let (tenant, pipeline) = (tenant.to_string(), pipeline.to_string());
        if req.method() != hyper::Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "use POST" }),
            );
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (signature, delivery, kind) = (
            header("x-hub-signature-256"),
            header("x-github-delivery"),
            header("x-github-event"),
        );
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(crate::service::listen::READ_TIMEOUT, body).await {
            Ok(Ok(b)) => b.to_bytes(),
            Err(_) => {
                return reply(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({ "error": format!("the body did not arrive within {:?}", crate::service::listen::READ_TIMEOUT) }),
                );
            }
            Ok(Err(e)) => {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({ "error": format!("cannot read the body: {e}") }),
                );
            }
        };
        if crate::service::api::check_tenant(&tenant).is_err()
            || !crate::model::is_valid_name(&pipeline)
        {
            return reply(
                StatusCode::NOT_FOUND,
                json!({ "error": "no such pipeline" }),
            );
        }
        let loaded = match self.load(&tenant, &pipeline, None).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({ "error": format!("no pipeline `{pipeline}` is registered") }),
                );
            }
            Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": e })),
        };
        let Some(hook) = &loaded.pipeline.triggers.webhook else {
            return reply(
                StatusCode::NOT_FOUND,
                json!({ "error": format!("pipeline `{pipeline}` has no webhook trigger") }),
            );
        };
        let Ok(secret) = std::env::var(&hook.secret_env.value) else {
            tracing::error!(
                "webhook of {tenant}/{pipeline}: environment variable {} is not set",
                hook.secret_env.value
            );
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the webhook secret is not configured on this engine" }),
            );
        };
        // Nothing about the payload is trusted, or even parsed, before the signature holds.
        if !signature.is_some_and(|s| signature_valid(secret.as_bytes(), &body, &s)) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({ "error": "bad or missing X-Hub-Signature-256" }),
            );
        }
        // The delivery id becomes the event id, which rides in a message header.
        if let Some(Err(e)) = delivery
            .as_deref()
            .map(|d| crate::service::api::check_len("X-GitHub-Delivery", d))
        {
            return reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }));
        }
        if kind.as_deref() == Some("ping") {
            return reply(StatusCode::OK, json!({ "ok": "pong" }));
        }
        let event = match serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| push_event(delivery.as_deref(), &v))
        {
            Ok(e) => e,
            Err(reason) => {
                self.reject(&tenant, &pipeline, format!("webhook: {reason}"), &body)
                    .await;
                return reply(StatusCode::BAD_REQUEST, json!({ "error": reason }));
            }
        };
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        if let Err(reason) = crate::service::trigger::accepts(&loaded.pipeline.triggers, &event) {
            self.reject(&tenant, &pipeline, reason.clone(), &payload)
                .await;
            return reply(
                StatusCode::ACCEPTED,
                json!({ "started": false, "reason": reason, "event_id": event.id }),
            );
        }
        let subject = crate::subjects::trigger_subject(&tenant, &pipeline);
        match self.edges.triggers.push(&subject, &event.id, payload).await {
            Ok(()) => reply(
                StatusCode::ACCEPTED,
                json!({ "started": true, "event_id": event.id }),
            ),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": e.to_string() }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_and_push_payloads() {
        // The example from GitHub's documentation on validating webhook deliveries.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!signature_valid(b"another secret", b"Hello, World!", sig));
        assert!(!signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=757107"
        ));
        let payload = json!({"ref": "refs/heads/main", "after": "abc", "repository": {"full_name": "acme/app"}, "pusher": {"name": "alice"},
            "commits": [{"added": ["a.rs"], "modified": ["b.rs"], "removed": []}, {"added": [], "modified": ["b.rs"], "removed": ["c.rs"]}]});
        let e = push_event(Some("guid-1"), &payload).unwrap();
        let s = e.source.unwrap();
        assert_eq!(
            (e.id.as_str(), s.git_ref.as_deref(), s.pusher.as_deref()),
            ("guid-1", Some("refs/heads/main"), Some("alice"))
        );
        assert_eq!(s.changed_files, ["a.rs", "b.rs", "c.rs"]);
        assert!(
            push_event(None, &json!({"after": "x"}))
                .unwrap_err()
                .contains("ref")
        );
    }

    #[test]
    fn a_push_of_many_changed_files_is_mapped_in_linear_time() {
        let files: Vec<String> = (0..100_000).map(|i| format!("src/f{i}.rs")).collect();
        // Every file twice, across two commits: the second listing adds nothing.
        let payload = json!({"ref": "refs/heads/main", "after": "abc",
            "commits": [{"added": files}, {"modified": files}]});
        let started = std::time::Instant::now();
        let e = push_event(None, &payload).unwrap();
        let took = started.elapsed();
        let changed = e.source.unwrap().changed_files;
        assert_eq!(changed.len(), 100_000);
        assert_eq!(changed[..2], ["src/f0.rs", "src/f1.rs"]);
        // Quadratic de-duplication took seconds here (5e9 comparisons); linear takes milliseconds.
        assert!(
            took < std::time::Duration::from_secs(2),
            "100k changed files took {took:?}"
        );
    }
}
