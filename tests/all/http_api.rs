//! The HTTP API (`sluice serve --http ADDR`): the control API's verbs as routes under
//! `/api/v1`, errors with codes and fitting statuses, its OpenAPI document, and the same
//! executions seen from two engines on one NATS.
use crate::harness::nats::{Engine, NatsServer, http, port, wait_for};
use crate::harness::{Project, action};
use serde_json::{Value, json};
use std::time::Duration;

const WEB: &str = r#"
name: web
stages:
  - name: Build
    actions:
      - { name: Compile, uses: noop@1 }
  - name: Gate
    actions:
      - { name: Ok, uses: approval@1, with: { approvers: "ana,bo" } }
  - name: Deploy
    actions:
      - { name: Ship, uses: noop@1 }
"#;

/// A request to the API; (status, JSON body).
fn api(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(port, method, path, &[], body.as_bytes());
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn wait_http(port: u16) {
    wait_for(Duration::from_secs(30), "the HTTP port", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then_some(())
    });
}

fn status_of(port: u16, id: &str) -> Value {
    let (code, exec) = api(port, "GET", &format!("/api/v1/executions/{id}"), "");
    assert_eq!(code, 200, "{exec}");
    exec
}

/// Wait until execution `id` satisfies `done`, read through `port`.
fn until(port: u16, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(30), what, || {
        let exec = status_of(port, id);
        done(&exec).then_some(exec)
    })
}

/// `sluice serve --http` (plus `extra`) in `p`'s directory, embedded, answering on the port
/// returned.
fn serve_http(p: &Project, extra: &[&str]) -> (Engine, u16) {
    let port = port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--http", addr.as_str()];
    args.extend_from_slice(extra);
    let engine = Engine::start(p.dir.path(), ".sluice", &args);
    wait_http(port);
    (engine, port)
}

#[test]
fn the_http_api_registers_starts_approves_and_pages_executions() {
    let p = Project::new(WEB);
    let (_engine, port) = serve_http(&p, &[]);
    assert_eq!(api(port, "GET", "/healthz", "").0, 200);
    assert_eq!(api(port, "GET", "/readyz", "").0, 200);

    // Register: the YAML is the body; its name must be the path's.
    let (code, r) = api(port, "PUT", "/api/v1/pipelines/other", WEB);
    assert_eq!(code, 422, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("named `web`"),
        "{r}"
    );
    let (code, r) = api(port, "PUT", "/api/v1/pipelines/web", WEB);
    assert_eq!((code, &r["version"]), (200, &json!(1)), "{r}");
    // An invalid pipeline: 422, every problem with its line and column, nothing registered.
    let bad = WEB.replace("noop@1 }\n  - name: Gate", "noop@2 }\n  - name: Gate");
    let (code, r) = api(port, "PUT", "/api/v1/pipelines/web", &bad);
    assert_eq!(code, 422, "{r}");
    assert_eq!(r["error"]["code"], "invalid");
    let problem = &r["error"]["problems"][0];
    assert_eq!(
        (&problem["line"], &problem["column"]),
        (&json!(6), &json!(32)),
        "{r}"
    );
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `noop@1`"),
        "{r}"
    );
    let (_, listed) = api(port, "GET", "/api/v1/pipelines", "");
    assert_eq!(listed[0]["version"], 1, "{listed}");

    // Start: 201 with the id; the same event id again names the same execution.
    let (code, first) = api(
        port,
        "POST",
        "/api/v1/pipelines/web/executions",
        r#"{"event_id": "push-1"}"#,
    );
    assert_eq!(code, 201, "{first}");
    let id = first["execution_id"].as_str().unwrap().to_string();
    let (code, again) = api(
        port,
        "POST",
        "/api/v1/pipelines/web/executions",
        r#"{"event_id": "push-1"}"#,
    );
    assert_eq!(
        (code, again["execution_id"].as_str()),
        (201, Some(id.as_str())),
        "{again}"
    );

    // The approval waits; approving with a summary lets the pipeline finish.
    until(port, &id, "the approval to wait", |e| {
        action(e, "Gate/Ok")["status"] == "InProgress"
            && e["stages"][1]["actions"][0]["waiting"].is_object()
    });
    // The service's gauges: one action waits, no job waits for a worker.
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    for expected in [
        "sluice_actions_waiting 1\n",
        "sluice_queue_waiting{queue=\"jobs\"} 0\n",
        "sluice_queue_waiting{queue=\"triggers\"} 0\n",
        "sluice_queue_oldest_seconds{queue=\"jobs\"} 0.0\n",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    let (code, r) = api(
        port,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Ok/approve"),
        r#"{"summary": "looks good"}"#,
    );
    assert_eq!(code, 422, "a decision names its decider: {r}");
    let (code, r) = api(
        port,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Ok/approve"),
        r#"{"by": "ana", "summary": "looks good"}"#,
    );
    assert_eq!((code, &r["decision"]), (200, &json!("approved")), "{r}");
    let done = until(port, &id, "the execution to succeed", |e| {
        e["status"] == "Succeeded"
    });
    let decisions = done["stages"][1]["actions"][0].to_string();
    assert!(
        decisions.contains("looks good") && decisions.contains("ana"),
        "{decisions}"
    );
    // Deciding again on an ended execution is a conflict.
    let (code, r) = api(
        port,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Ok/reject"),
        r#"{"by": "bo"}"#,
    );
    assert_eq!(
        (code, &r["error"]["code"]),
        (409, &json!("conflict")),
        "{r}"
    );

    // A disabled transition holds the next execution before Deploy.
    let (code, r) = api(
        port,
        "POST",
        "/api/v1/pipelines/web/transitions/Deploy/disable",
        "{}",
    );
    assert_eq!(code, 422, "disabling needs a reason: {r}");
    let (code, r) = api(
        port,
        "POST",
        "/api/v1/pipelines/web/transitions/Deploy/disable",
        r#"{"reason": "freeze", "by": "ops"}"#,
    );
    assert_eq!(code, 200, "{r}");
    let (_, second) = api(port, "POST", "/api/v1/pipelines/web/executions", "");
    let second = second["execution_id"].as_str().unwrap().to_string();
    until(port, &second, "the approval of the second", |e| {
        e["stages"][1]["actions"][0]["waiting"].is_object()
    });
    api(
        port,
        "POST",
        &format!("/api/v1/executions/{second}/actions/Gate/Ok/approve"),
        r#"{"by": "ana"}"#,
    );
    let (_, state) = wait_for(
        Duration::from_secs(30),
        "the second to wait before Deploy",
        || {
            let (c, s) = api(port, "GET", "/api/v1/pipelines/web/state", "");
            (s["stages"]["Deploy"]["waiting"] == json!([second])).then_some((c, s))
        },
    );
    assert_eq!(
        state["stages"]["Deploy"]["disabled"]["reason"], "freeze",
        "{state}"
    );
    assert_eq!(status_of(port, &second)["status"], "InProgress");
    let (code, _) = api(
        port,
        "POST",
        "/api/v1/pipelines/web/transitions/Deploy/enable",
        "",
    );
    assert_eq!(code, 200);
    until(port, &second, "the second to succeed", |e| {
        e["status"] == "Succeeded"
    });

    // Pages, newest first, a cursor apart.
    let (_, page) = api(port, "GET", "/api/v1/executions?pipeline=web&limit=1", "");
    assert_eq!(page["items"][0]["execution_id"], second.as_str(), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = api(
        port,
        "GET",
        &format!("/api/v1/executions?limit=1&cursor={cursor}"),
        "",
    );
    assert_eq!(page["items"][0]["execution_id"], id.as_str(), "{page}");
    let (_, page) = api(
        port,
        "GET",
        "/api/v1/executions?status=Succeeded&limit=5",
        "",
    );
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            &page["next_cursor"]
        ),
        (2, &Value::Null),
        "{page}"
    );

    // What happened, counted for Prometheus.
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    for expected in [
        "sluice_executions_started_total{pipeline=\"default/web\"} 2",
        "sluice_executions_finished_total{pipeline=\"default/web\",status=\"Succeeded\"} 2",
        "sluice_action_duration_seconds_count{plugin=\"noop@1\"} 4",
        "sluice_jobs_in_flight 0",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    let misses = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_compile_cache_misses_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(misses.is_some_and(|n| n >= 1), "{metrics}");
}

#[test]
fn bad_http_requests_get_a_clear_4xx_and_change_nothing() {
    let p = Project::new(WEB);
    let (_engine, port) = serve_http(&p, &[]);
    assert_eq!(api(port, "PUT", "/api/v1/pipelines/web", WEB).0, 200);
    let cases: &[(&str, &str, &str, u16)] = &[
        ("POST", "/api/v1/pipelines/web/executions", "{not json", 422),
        (
            "POST",
            "/api/v1/pipelines/web/executions",
            r#"{"variables": 3}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/pipelines/web/executions",
            r#"{"variables": {"undeclared": "x"}}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/pipelines/web/executions",
            r#"{"evnt_id": "x"}"#,
            422,
        ),
        ("POST", "/api/v1/pipelines/nope/executions", "", 404),
        (
            "GET",
            "/api/v1/executions/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "",
            404,
        ),
        (
            "POST",
            "/api/v1/executions/01ARZ3NDEKTSV4RRFFQ69G5FAV/stop",
            "",
            404,
        ),
        ("GET", "/api/v1/executions?limit=many", "", 400),
        ("GET", "/api/v1/nothing-here", "", 404),
        ("DELETE", "/api/v1/functions/none", "", 404),
    ];
    for (method, path, body, want) in cases {
        let (code, r) = api(port, method, path, body);
        assert_eq!(code, *want, "{method} {path} {body}: {r}");
    }
    // An over-long id is refused with the API's bound.
    let long = "x".repeat(5000);
    let (code, r) = api(port, "GET", &format!("/api/v1/executions/{long}"), "");
    assert_eq!((code, &r["error"]["code"]), (422, &json!("invalid")), "{r}");
    // A body over 1 MiB to a route that carries no file is refused before it is read
    // whole: 413 (it was read up to 64 MiB, then refused for its fields).
    let huge = format!(r#"{{"event_id": "{}"}}"#, "a".repeat(2 << 20));
    let (code, _) = api(port, "POST", "/api/v1/pipelines/web/executions", &huge);
    assert_eq!(code, 413);
    // A pipeline (a file) of the same size gets its own, larger bound, and the pipeline
    // file's limit then answers.
    let big = format!("{WEB}\n#{}\n", "x".repeat(2 << 20));
    let (code, r) = api(port, "PUT", "/api/v1/pipelines/web", &big);
    assert_eq!(code, 422, "{r}");
    assert!(r.to_string().contains("at most 1024 KiB"), "{r}");
    // Nothing was started, and the engine still serves.
    let (code, page) = api(port, "GET", "/api/v1/executions", "");
    assert_eq!(
        (code, page["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{page}"
    );
}

#[test]
fn the_openapi_document_describes_every_route_the_router_serves() {
    let p = Project::new(WEB);
    let (_engine, port) = serve_http(&p, &[]);
    let (code, doc) = api(port, "GET", "/api/v1/openapi.json", "");
    assert_eq!(code, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let contract = [
        ("get", "/api/v1/pipelines"),
        ("put", "/api/v1/pipelines/{name}"),
        ("get", "/api/v1/pipelines/{name}"),
        ("delete", "/api/v1/pipelines/{name}"),
        ("get", "/api/v1/pipelines/{name}/state"),
        (
            "post",
            "/api/v1/pipelines/{name}/transitions/{stage}/disable",
        ),
        (
            "post",
            "/api/v1/pipelines/{name}/transitions/{stage}/enable",
        ),
        ("post", "/api/v1/pipelines/{name}/stages/{stage}/rollback"),
        ("post", "/api/v1/pipelines/{name}/executions"),
        ("get", "/api/v1/executions"),
        ("get", "/api/v1/executions/{id}"),
        ("post", "/api/v1/executions/{id}/stop"),
        ("post", "/api/v1/executions/{id}/stages/{stage}/retry"),
        (
            "post",
            "/api/v1/executions/{id}/actions/{stage}/{action}/approve",
        ),
        (
            "post",
            "/api/v1/executions/{id}/actions/{stage}/{action}/reject",
        ),
        ("get", "/api/v1/functions"),
        ("put", "/api/v1/functions/{name}"),
        ("get", "/api/v1/functions/{name}"),
        ("delete", "/api/v1/functions/{name}"),
    ];
    for (method, path) in contract {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    // Every documented operation is served: none answers "no such route".
    let mut operations = 0;
    for (path, item) in paths {
        // The event stream never ends: it is read by its own test.
        if path == "/api/v1/events" {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{name}", "web")
                .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
                .replace("{stage}", "Deploy")
                .replace("{action}", "Ship");
            let (code, r) = api(port, &method.to_uppercase(), &concrete, "");
            let unrouted = code == 405
                || (code == 404
                    && r["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no such route")));
            assert!(
                !unrouted,
                "{method} {path} is documented but not served: {code} {r}"
            );
            operations += 1;
        }
    }
    assert!(operations >= contract.len(), "{operations}");
}

#[test]
fn an_execution_started_over_one_engines_http_is_controlled_over_the_others() {
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(WEB);
    let (a, b) = (port(), port());
    let _one = Engine::start(
        p.dir.path(),
        "one",
        &["--nats", &url, "--http", &format!("127.0.0.1:{a}")],
    );
    let _two = Engine::start(
        p.dir.path(),
        "two",
        &["--nats", &url, "--http", &format!("127.0.0.1:{b}")],
    );
    wait_http(a);
    wait_http(b);
    assert_eq!(api(a, "PUT", "/api/v1/pipelines/web", WEB).0, 200);
    let (code, started) = api(a, "POST", "/api/v1/pipelines/web/executions", "");
    assert_eq!(code, 201, "{started}");
    let id = started["execution_id"].as_str().unwrap().to_string();
    until(
        b,
        &id,
        "the approval to wait, seen on the other engine",
        |e| e["stages"][1]["actions"][0]["waiting"].is_object(),
    );
    let (code, r) = api(
        b,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Ok/approve"),
        r#"{"by": "ana"}"#,
    );
    assert_eq!(code, 200, "{r}");
    until(
        a,
        &id,
        "the execution to succeed, seen on the first engine",
        |e| e["status"] == "Succeeded",
    );
    let (_, listed) = api(b, "GET", "/api/v1/pipelines", "");
    assert_eq!(listed[0]["name"], "web", "{listed}");
}

/// `sluice serve --data d ARGS` refuses to start, saying each of `says`.
fn serve_refuses(args: &[&str], says: [&str; 2]) {
    let p = Project::new(WEB);
    let r = p.sluice(&[&["serve", "--data", "d"], args].concat());
    assert_ne!(r.code, 0, "{r:?}");
    assert!(says.iter().all(|s| r.stderr.contains(s)), "{}", r.stderr);
}

#[test]
fn the_http_api_refuses_a_reachable_address_without_the_explicit_flag() {
    serve_refuses(&["--http", "0.0.0.0:0"], ["--auth", "no authentication"]);
}

#[test]
fn an_artifact_grace_below_the_least_is_refused_with_it() {
    serve_refuses(
        &["--artifact-grace", "5m"],
        ["--artifact-grace", "at least 1h"],
    );
}

/// Read a server-sent event stream from `path` until `done` holds for what arrived (or 30 s).
fn read_stream(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    done: impl Fn(&str) -> bool,
) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if done(&String::from_utf8_lossy(&got)) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn events_and_logs_stream_over_http_and_a_reconnect_resumes_after_its_last_id() {
    let failing = "name: failing\nstages:\n  - name: Build\n    actions:\n      - { name: Test, uses: PROBE, with: { mode: fail } }\n";
    let p = Project::new(failing);
    let (_engine, port) = serve_http(&p, &[]);
    // Registered from the terminal (the probe is a file on this host).
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "{put:?}");
    // A stream opened before the start sees the execution through to its end.
    let id = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let starter = {
        let id = id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let (_, r) = api(port, "POST", "/api/v1/pipelines/failing/executions", "");
            *id.lock().unwrap() = r["execution_id"].as_str().unwrap().to_string();
        })
    };
    let stream = read_stream(port, "/api/v1/events?pipeline=failing", &[], |s| {
        s.contains("event: pipeline") && s.contains("\"status\":\"Failed\"")
    });
    starter.join().unwrap();
    let id = id.lock().unwrap().clone();
    assert!(
        stream.contains("content-type: text/event-stream"),
        "{stream}"
    );
    assert!(
        stream.contains(&format!("\"execution_id\":\"{id}\"")) && stream.contains("event: action"),
        "{stream}"
    );
    // Numbered: a client that saw the first event gets the rest again, in order.
    let ids: Vec<u64> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert!(
        ids.len() >= 3 && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    let first = ids[0].to_string();
    let resumed = read_stream(
        port,
        "/api/v1/events",
        &[("last-event-id", first.as_str())],
        |s| s.contains("\"status\":\"Failed\""),
    );
    let resumed_ids: Vec<u64> = resumed
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(resumed_ids.first(), ids.get(1), "{resumed}");
    // The failed action's log: JSON lines with its error line…
    let (code, text) = http(
        port,
        "GET",
        &format!("/api/v1/executions/{id}/actions/Build/Test/logs"),
        &[],
        b"",
    );
    assert_eq!(code, 200, "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "error"
            && l["message"]
                .as_str()
                .unwrap()
                .contains("the probe was told to fail")),
        "{text}"
    );
    // …and as a stream, which ends because the attempt has.
    let streamed = read_stream(
        port,
        &format!("/api/v1/executions/{id}/actions/Build/Test/logs"),
        &[],
        |s| s.contains("event: end"),
    );
    assert!(
        streamed.contains("event: line")
            && streamed.contains("told to fail")
            && streamed.contains("event: end"),
        "{streamed}"
    );
    // An attempt that does not exist, and another tenant's view of nothing.
    let (code, _) = http(
        port,
        "GET",
        &format!("/api/v1/executions/{id}/actions/Build/Test/logs?attempt=9"),
        &[],
        b"",
    );
    assert_eq!(code, 404);
    let (code, _) = http(
        port,
        "GET",
        &format!("/api/v1/executions/{id}/actions/Build/Nope/logs"),
        &[],
        b"",
    );
    assert_eq!(code, 404);
    // The plugins the pipelines may use.
    let (code, plugins) = api(port, "GET", "/api/v1/plugins", "");
    assert_eq!(code, 200);
    let approval = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "approval")
        .expect("approval is listed");
    assert!(
        approval["config"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "approvers"),
        "{approval}"
    );
}

/// A GET returning (status, headers and body as bytes).
fn get_bytes(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    // Chunked replies (streamed files) are de-chunked here.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut plain = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            plain.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = plain;
    }
    (status, head, body)
}

#[test]
fn artifacts_download_as_a_tar_or_one_file_and_no_path_leaves_them() {
    let p = Project::new(
        "name: art\nstages:\n  - name: Source\n    actions:\n      - { name: Snap, uses: source-dir@1, with: { path: app }, outputs: [src] }\n",
    );
    p.write("app/README.md", "hello\n");
    p.write("app/src/main.rs", "fn main() {}\n");
    let (_engine, port) = serve_http(&p, &[]);
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "{put:?}");
    let (_, started) = api(port, "POST", "/api/v1/pipelines/art/executions", "");
    let id = started["execution_id"].as_str().unwrap().to_string();
    let done = until(port, &id, "the snapshot", |e| e["status"] == "Succeeded");
    let digest = done["stages"][0]["actions"][0]["artifacts"]["src"]
        .as_str()
        .unwrap()
        .to_string();

    // Its listing…
    let (code, listing) = api(
        port,
        "GET",
        &format!("/api/v1/artifacts/{digest}/files"),
        "",
    );
    assert_eq!(code, 200, "{listing}");
    assert!(
        listing
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "src/main.rs" && e["size"] == 13),
        "{listing}"
    );
    // …one file, by its path inside the artifact.
    let (code, _, body) = get_bytes(
        port,
        &format!("/api/v1/artifacts/{digest}/files/src/main.rs"),
    );
    assert_eq!((code, body.as_slice()), (200, b"fn main() {}\n".as_slice()));
    // The whole tree as a tar archive that `tar` reads back.
    let (code, head, body) = get_bytes(port, &format!("/api/v1/artifacts/{digest}"));
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-tar"),
        "{head}"
    );
    let archive = p.path("art.tar");
    std::fs::write(&archive, &body).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in ["README.md", "src/", "src/main.rs"] {
        assert!(listed.lines().any(|l| l == name), "{name} in {listed}");
    }
    // Paths that try to leave the artifact name nothing there.
    for bad in [
        "../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "src/../README.md",
        "src/./main.rs",
        "src%2f..%2fREADME.md",
    ] {
        let (code, _, body) = get_bytes(port, &format!("/api/v1/artifacts/{digest}/files/{bad}"));
        assert!(
            code == 422 || code == 404,
            "{bad}: {code} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{bad}");
    }
    let (code, _, _) = get_bytes(port, &format!("/api/v1/artifacts/{digest}/files/nope.txt"));
    assert_eq!(code, 404);
    let (code, _, _) = get_bytes(
        port,
        &format!("/api/v1/artifacts/blake3:{}", "0".repeat(64)),
    );
    assert_eq!(code, 404);
    let (code, _, _) = get_bytes(port, "/api/v1/artifacts/not-a-digest");
    assert_eq!(code, 422);
    // The engine still serves.
    assert_eq!(api(port, "GET", "/healthz", "").0, 200);
}

#[test]
fn approval_notifications_link_to_the_console_when_the_public_url_is_known() {
    let p = Project::new(WEB);
    let (_engine, port) = serve_http(&p, &["--public-url", "https://ci.example.com/"]);
    assert_eq!(api(port, "PUT", "/api/v1/pipelines/web", WEB).0, 200);
    let id = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let starter = {
        let id = id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let (_, r) = api(port, "POST", "/api/v1/pipelines/web/executions", "");
            *id.lock().unwrap() = r["execution_id"].as_str().unwrap().to_string();
        })
    };
    let stream = read_stream(port, "/api/v1/events?pipeline=web", &[], |s| {
        s.contains("event: approval")
    });
    starter.join().unwrap();
    let id = id.lock().unwrap().clone();
    let approval: Value = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|e| e["kind"] == "approval")
        .unwrap_or_else(|| panic!("no approval event in {stream}"));
    assert_eq!(
        approval["approval"]["console_url"],
        format!("https://ci.example.com/executions/{id}"),
        "{approval}"
    );
    // The page it names is the console's.
    let (code, page) = http(port, "GET", &format!("/executions/{id}"), &[], b"");
    assert_eq!(code, 200);
    assert!(page.contains("/console/app.js"), "{page}");
}

#[test]
fn open_streams_are_bounded_and_leave_room_for_the_api() {
    use std::io::{Read, Write};
    let p = Project::new(WEB);
    let (_engine, port) = serve_http(&p, &[]);
    let open = |path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        (s, String::from_utf8_lossy(&head[9..12]).to_string())
    };
    // Half of the port's 512 connections may be streams…
    let mut held = Vec::new();
    for i in 0..256 {
        let (s, status) = open("/api/v1/events");
        assert_eq!(status, "200", "stream {i}");
        held.push(s);
    }
    // …the next is told to come back later, and the API still answers.
    let (_refused, status) = open("/api/v1/events");
    assert_eq!(status, "503");
    assert_eq!(api(port, "GET", "/api/v1/pipelines", "").0, 200);
    // A closed stream frees its place.
    drop(held.pop());
    wait_for(Duration::from_secs(30), "a freed stream slot", || {
        let (_s, status) = open("/api/v1/events");
        (status == "200").then_some(())
    });
}

/// The quickstart's folder (its pipeline and `app/`), as a tar archive.
pub(crate) fn quickstart_folder() -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name(root.join("pipeline.yaml"), "pipeline.yaml")
        .unwrap();
    b.append_dir_all("app", root.join("app")).unwrap();
    b.into_inner().unwrap()
}

/// A pipeline whose files live next to it (the quickstart: `source-dir@1` reads `app/`, the
/// deploy writes `./.sluice/site`) is registered without the terminal: its folder uploaded,
/// then the pipeline naming it. It runs, and what it deploys lands in the engine's copy of the
/// folder. Nothing registered this way reaches outside the folder: a grant leading out is
/// refused at registration with its line, a path a variable leads out fails the action, and
/// an archive that is not one is refused.
#[test]
fn a_pipeline_registered_with_its_uploaded_folder_runs_over_http_and_stays_inside_it() {
    // The engine's own folder has nothing of the quickstart's.
    let p = Project::new("");
    let (_engine, port) = serve_http(&p, &[]);
    let (status, text) = http(port, "POST", "/api/v1/bundles", &[], &quickstart_folder());
    assert_eq!(status, 200, "{text}");
    let bundle: Value = serde_json::from_str(&text).unwrap();
    let digest = bundle["digest"].as_str().unwrap().to_string();
    assert!(bundle["files"].as_u64().unwrap() >= 3, "{bundle}");
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/quickstart/pipeline.yaml"),
    )
    .unwrap();
    let (code, put) = api(
        port,
        "PUT",
        &format!("/api/v1/pipelines/quickstart?bundle={digest}"),
        &yaml,
    );
    assert_eq!(code, 200, "{put}");
    let (code, started) = api(
        port,
        "POST",
        "/api/v1/pipelines/quickstart/executions",
        "{}",
    );
    assert_eq!(code, 201, "{started}");
    let id = started["execution_id"].as_str().unwrap().to_string();
    let exec = until(port, &id, "the quickstart to end", |e| {
        e["status"] != "InProgress"
    });
    assert_eq!(exec["status"], "Succeeded", "{exec:#}");
    let hex = digest.strip_prefix("blake3:").unwrap();
    let site = p
        .dir
        .path()
        .join(".sluice/bundles/default")
        .join(hex)
        .join(".sluice/site/current/index.html");
    let page = std::fs::read_to_string(&site).unwrap_or_else(|e| panic!("{}: {e}", site.display()));
    assert!(page.contains("<h1>Hello from Sluice</h1>"), "{page}");

    // A grant that leads out of the folder: refused, with its line, and nothing registered.
    let escape = "name: escape\nstages:\n  - name: S\n    actions:\n      - name: W\n        uses: noop@1\n        capabilities:\n          dirs: { ../../outside: rw }\n";
    let (code, refused) = api(
        port,
        "PUT",
        &format!("/api/v1/pipelines/escape?bundle={digest}"),
        escape,
    );
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("leads out of the pipeline's uploaded folder"),
        "{refused}"
    );
    assert_eq!(api(port, "GET", "/api/v1/pipelines/escape", "").0, 404);

    // A path a variable fills in at run time: the action fails, naming why.
    let leak = "name: leak\nvariables: { src: app }\nstages:\n  - name: S\n    actions:\n      - { name: Snap, uses: source-dir@1, with: { path: \"#{variables.src}\" }, outputs: [src] }\n";
    let (code, put) = api(
        port,
        "PUT",
        &format!("/api/v1/pipelines/leak?bundle={digest}"),
        leak,
    );
    assert_eq!(code, 200, "{put}");
    let (code, started) = api(
        port,
        "POST",
        "/api/v1/pipelines/leak/executions",
        r#"{"variables": {"src": "../../../../../etc"}}"#,
    );
    assert_eq!(code, 201, "{started}");
    let id = started["execution_id"].as_str().unwrap().to_string();
    let exec = until(port, &id, "the leak to end", |e| {
        e["status"] != "InProgress"
    });
    assert_eq!(exec["status"], "Failed", "{exec:#}");
    assert!(
        exec.to_string()
            .contains("leads out of the pipeline's uploaded folder"),
        "{exec:#}"
    );

    // Not an archive, and an unknown folder: refused.
    let (status, text) = http(
        port,
        "POST",
        "/api/v1/bundles",
        &[],
        b"not a tar archive at all",
    );
    assert_eq!(status, 422, "{text}");
    let (code, refused) = api(
        port,
        "PUT",
        &format!(
            "/api/v1/pipelines/quickstart?bundle=blake3:{}",
            "0".repeat(64)
        ),
        &yaml,
    );
    assert_eq!(code, 422, "{refused}");
}

/// A tenant registers at most 1,000 functions: one more is refused with `quota_exceeded` (429)
/// and not registered; replacing one it has is taken, and one more after a removal.
#[test]
fn a_tenant_registers_at_most_a_thousand_functions() {
    let p = Project::new("");
    let (_engine, port) = serve_http(&p, &[]);
    // The same component under every name: compiled once, each put is one registration.
    let component = std::fs::read(crate::harness::rust_function()).unwrap();
    let put = |name: &str| {
        http(
            port,
            "PUT",
            &format!("/api/v1/functions/{name}"),
            &[],
            &component,
        )
    };
    for i in 0..1000 {
        let (code, body) = put(&format!("f{i}"));
        assert_eq!(code, 200, "function {i}: {body}");
    }
    let (code, body) = put("one-more");
    assert_eq!(code, 429, "{body}");
    assert!(
        body.contains("quota_exceeded") && body.contains("at most 1000 functions"),
        "{body}"
    );
    let listed = |name: &str| {
        let (code, list) = api(port, "GET", "/api/v1/functions", "");
        assert_eq!(code, 200, "{list}");
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        (names.len(), names.contains(&name))
    };
    assert_eq!(listed("one-more"), (1000, false));
    assert_eq!(
        put("f7").0,
        200,
        "replacing one the tenant has is no new function"
    );
    assert_eq!(api(port, "DELETE", "/api/v1/functions/f0", "").0, 200);
    assert_eq!(put("one-more").0, 200);
    assert_eq!(listed("one-more"), (1000, true));
}
