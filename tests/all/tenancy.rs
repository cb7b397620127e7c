//! A hosted service (`sluice serve --auth`): tokens, roles, tenants that cannot see or change
//! each other, policies on what pipelines may grant, quotas, and the audit trail — through the
//! socket (the CLI) and HTTP.
use crate::harness::nats::{Engine, http, port, wait_for};
use crate::harness::{Project, Run, action, status};
use serde_json::Value;
use std::time::Duration;

/// Globex's pipeline: an artifact, then an approval that keeps the execution waiting.
const WEB: &str = r##"
name: web
stages:
  - name: Build
    actions:
      - { name: Make, uses: PROBE, outputs: [site], with: { mode: write, path: /out/site/index.html, value: globex } }
  - name: Gate
    actions:
      - { name: Approve, uses: approval@1, with: { approvers: "approver" } }
"##;

const ROLES: [&str; 4] = ["viewer", "approver", "developer", "admin"];

/// An embedded service with authentication, HTTP on, and the operator's token.
struct Hosted {
    p: Project,
    _engine: Engine,
    port: u16,
    operator: String,
}

impl Hosted {
    fn start(yaml: &str) -> Self {
        let p = Project::new(yaml);
        let port = port();
        let addr = format!("127.0.0.1:{port}");
        let engine = Engine::start(p.dir.path(), ".sluice", &["--auth", "--http", &addr]);
        let file = p.path(".sluice/operator.token");
        let operator = wait_for(Duration::from_secs(30), "the operator's token", || {
            std::fs::read_to_string(&file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let h = Hosted {
            p,
            _engine: engine,
            port,
            operator,
        };
        wait_for(Duration::from_secs(30), "the service to answer", || {
            (h.as_(&h.operator.clone(), &["tenant", "ls"]).code == 0).then_some(())
        });
        h
    }

    /// `sluice ARGS` with `token`.
    fn as_(&self, token: &str, args: &[&str]) -> Run {
        self.p.sluice_env(args, &[("SLUICE_TOKEN", token)])
    }

    fn ok(&self, token: &str, args: &[&str]) -> String {
        let r = self.as_(token, args);
        assert_eq!(r.code, 0, "sluice {args:?}: {r:?}");
        r.stdout
    }

    /// A token made by the operator.
    fn token(&self, tenant: &str, name: &str, role: &str) -> String {
        self.ok(
            &self.operator.clone(),
            &[
                "token", "create", "--tenant", tenant, "--name", name, "--role", role,
            ],
        )
        .trim()
        .to_string()
    }

    /// An HTTP request with `token`: (status, body).
    fn http(
        &self,
        token: &str,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend_from_slice(extra);
        http(self.port, method, path, &headers, body)
    }

    fn audit(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(
            &self.operator.clone(),
            &["audit", "--all-tenants", "--json", "--limit", "1000"],
        ))
        .unwrap()
    }
}

/// A refusal the CLI reports (exit 2, with the service's words).
fn refused(r: &Run) -> bool {
    r.code == 2 && r.stderr.contains("error:")
}

/// Thirty-odd attempts by ACME's principals, each role, on GLOBEX's pipelines, executions,
/// logs, artifacts, functions and tokens: each is refused (forbidden, or not found: nothing
/// says whether GLOBEX has such a thing), nothing of GLOBEX's changes, and the refusals of
/// rights and credentials are in the audit trail.
#[test]
fn one_tenant_cannot_see_or_change_another() {
    let h = Hosted::start(WEB);
    let op = h.operator.clone();
    h.ok(&op, &["tenant", "create", "acme"]);
    h.ok(&op, &["tenant", "create", "globex"]);
    let acme: Vec<String> = ROLES.iter().map(|r| h.token("acme", r, r)).collect();
    let globex: Vec<String> = ROLES.iter().map(|r| h.token("globex", r, r)).collect();
    let [a_view, a_appr, a_dev, a_admin] = [&acme[0], &acme[1], &acme[2], &acme[3]];
    let g_dev = &globex[2];

    // GLOBEX's things: a pipeline, an execution waiting for approval, its artifact, a function.
    h.ok(g_dev, &["pipeline", "put", "pipeline.yaml"]);
    let id = h.ok(g_dev, &["start", "web"]).trim().to_string();
    let exec = wait_for(
        Duration::from_secs(30),
        "GLOBEX's execution to wait",
        || {
            let r = h.as_(g_dev, &["status", &id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            action(&e, "Gate/Approve")["waiting"]
                .is_object()
                .then_some(e)
        },
    );
    let digest = action(&exec, "Build/Make")["artifacts"]["site"]
        .as_str()
        .unwrap()
        .to_string();
    // GLOBEX itself reads its artifact, also with the token in the query (as a browser's
    // download link or event stream carries it).
    let (code, _) = h.http(
        g_dev,
        "GET",
        &format!("/api/v1/artifacts/{digest}/files"),
        &[],
        b"",
    );
    assert_eq!(code, 200);
    let (code, body) = http(
        h.port,
        "GET",
        &format!("/api/v1/executions?limit=5&access_token={g_dev}"),
        &[],
        b"",
    );
    assert!(code == 200 && body.contains(&id), "{code} {body}");
    let before = h.ok(g_dev, &["pipeline", "ls"]);

    let mut attempts = 0;
    let mut http_refused = |token: &str,
                            method: &str,
                            path: &str,
                            extra: &[(&str, &str)],
                            body: &[u8],
                            statuses: &[u16]| {
        let (code, reply) = h.http(token, method, path, extra, body);
        assert!(statuses.contains(&code), "{method} {path}: {code} {reply}");
        attempts += 1;
    };
    let hdr_globex = [("x-sluice-tenant", "globex")];
    for t in [a_view, a_appr, a_dev, a_admin] {
        http_refused(t, "GET", "/api/v1/pipelines/web", &[], b"", &[404]);
        http_refused(
            t,
            "GET",
            &format!("/api/v1/executions/{id}"),
            &[],
            b"",
            &[404],
        );
        http_refused(
            t,
            "GET",
            &format!("/api/v1/artifacts/{digest}"),
            &[],
            b"",
            &[404],
        );
        http_refused(
            t,
            "GET",
            &format!("/api/v1/artifacts/{digest}/files"),
            &[],
            b"",
            &[404],
        );
        http_refused(
            t,
            "GET",
            &format!("/api/v1/executions/{id}/actions/Build/Make/logs"),
            &[],
            b"",
            &[404],
        );
        // Naming GLOBEX outright.
        http_refused(t, "GET", "/api/v1/pipelines", &hdr_globex, b"", &[403]);
        http_refused(
            t,
            "GET",
            &format!("/api/v1/executions/{id}"),
            &hdr_globex,
            b"",
            &[403],
        );
    }
    http_refused(
        a_dev,
        "POST",
        &format!("/api/v1/executions/{id}/stop"),
        &[],
        b"{}",
        &[404],
    );
    http_refused(
        a_dev,
        "POST",
        &format!("/api/v1/executions/{id}/stages/Build/retry"),
        &[],
        b"{}",
        &[404, 409],
    );
    http_refused(
        a_appr,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Approve/approve"),
        &[],
        b"{}",
        &[404],
    );
    http_refused(
        a_dev,
        "POST",
        &format!("/api/v1/executions/{id}/actions/Gate/Approve/wake"),
        &[],
        b"{}",
        &[404],
    );
    http_refused(a_dev, "DELETE", "/api/v1/pipelines/web", &[], b"", &[404]);
    http_refused(
        a_view,
        "PUT",
        "/api/v1/pipelines/web",
        &[],
        WEB.as_bytes(),
        &[403],
    );
    http_refused(
        a_view,
        "POST",
        "/api/v1/pipelines/web/executions",
        &[],
        b"{}",
        &[403],
    );
    http_refused(
        a_dev,
        "POST",
        "/api/v1/pipelines/web/executions",
        &[],
        b"{}",
        &[404],
    );
    // Through the socket (the CLI).
    let cli = |token: &str, args: &[&str]| {
        let r = h.as_(token, args);
        assert!(refused(&r), "sluice {args:?}: {r:?}");
        r
    };
    for (token, args) in [
        (a_dev, vec!["status", id.as_str()]),
        (a_dev, vec!["stop", id.as_str()]),
        (a_dev, vec!["retry", id.as_str(), "Build"]),
        (a_dev, vec!["wake", id.as_str(), "Gate/Approve"]),
        (a_appr, vec!["approve", id.as_str(), "Gate/Approve"]),
        (a_dev, vec!["pipeline", "rm", "web"]),
        (a_dev, vec!["pipeline", "get", "web"]),
        (a_dev, vec!["start", "web"]),
        (a_dev, vec!["pipeline", "ls", "--tenant", "globex"]),
        (a_admin, vec!["token", "ls", "--tenant", "globex"]),
        (
            a_admin,
            vec![
                "--tenant", "globex", "token", "create", "--name", "x", "--role", "admin",
            ],
        ),
        (a_admin, vec!["tenant", "usage", "globex"]),
        (a_admin, vec!["tenant", "create", "initech"]),
        (a_admin, vec!["tenant", "rm", "globex"]),
        (a_admin, vec!["audit", "--all-tenants"]),
        (
            a_admin,
            vec!["token", "create", "--name", "op2", "--role", "operator"],
        ),
        (a_dev, vec!["token", "ls"]),
    ] {
        cli(token, &args);
        attempts += 1;
    }
    assert!(attempts >= 30, "{attempts} attempts");
    // Listing shows nothing of GLOBEX's.
    let listed = h.ok(a_admin, &["executions", "--json"]);
    assert!(!listed.contains(&id), "{listed}");
    assert!(!h.ok(a_admin, &["pipeline", "ls"]).contains("web"));

    // Credentials: missing, malformed, wrong, revoked, expired.
    for bad in [
        "",
        "nonsense",
        "slu_0123456789abcdef_00000000000000000000000000000000000000000000000000000000000000ff",
    ] {
        let r = h.as_(bad, &["pipeline", "ls"]);
        assert!(r.code == 2 && r.stderr.contains("token"), "{bad:?}: {r:?}");
        let (code, _) = h.http(bad, "GET", "/api/v1/pipelines", &[], b"");
        assert_eq!(code, 401, "{bad:?}");
    }
    let short = h.ok(
        &op,
        &[
            "token",
            "create",
            "--tenant",
            "acme",
            "--name",
            "short",
            "--role",
            "viewer",
            "--expires",
            "1s",
        ],
    );
    let short = short.trim();
    assert_eq!(h.as_(short, &["pipeline", "ls"]).code, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        h.as_(short, &["pipeline", "ls"])
            .stderr
            .contains("has expired")
    );
    // The metrics name every tenant's pipelines: an operator's token reads them, a tenant's
    // admin's does not, nor a request without one.
    let (code, text) = h.http(a_admin, "GET", "/metrics", &[], b"");
    assert_eq!(code, 403, "{text}");
    let (code, _) = http(h.port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 401);
    let (code, text) = h.http(&op, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("sluice_executions_started_total{pipeline=\"globex/web\"}"),
        "{text}"
    );
    h.ok(a_admin, &["token", "revoke", "viewer"]);
    let r = h.as_(a_view, &["pipeline", "ls"]);
    assert!(r.stderr.contains("was revoked"), "{r:?}");
    let (code, _) = h.http(a_view, "GET", "/api/v1/pipelines", &[], b"");
    assert_eq!(code, 401);

    // Nothing of GLOBEX's changed.
    assert_eq!(h.ok(g_dev, &["pipeline", "ls"]), before);
    let now: Value = serde_json::from_str(&h.ok(g_dev, &["status", &id, "--json"])).unwrap();
    assert_eq!(status(&now), "InProgress");
    assert!(action(&now, "Gate/Approve")["waiting"].is_object());
    assert!(
        action(&now, "Gate/Approve")["decisions"]
            .as_array()
            .is_none_or(|d| d.is_empty())
    );

    // The refusals of rights and credentials are in the audit trail, with who and why; no
    // token appears in it.
    let trail = h.audit();
    let text = serde_json::to_string(&trail).unwrap();
    for t in acme.iter().chain(&globex).chain([&op]) {
        assert!(!text.contains(t.as_str()), "a token in the audit trail");
    }
    let refusals = |outcome: &str| trail.iter().filter(|r| r["outcome"] == outcome).count();
    assert!(refusals("forbidden") >= 10, "{trail:#?}");
    assert!(refusals("unauthenticated") >= 6, "{trail:#?}");
    assert!(trail.iter().any(|r| r["tenant"] == "acme"
        && r["principal"] == "developer"
        && r["verb"] == "stop"
        && r["target"] == id.as_str()
        && r["outcome"] == "not_found"));
    // An admin reads their own tenant's trail only.
    let own: Vec<Value> = serde_json::from_str(&h.ok(a_admin, &["audit", "--json"])).unwrap();
    assert!(!own.is_empty() && own.iter().all(|r| r["tenant"] == "acme"));
    // The service's own records (tokens, tenants) are never read as pipelines (the schedules
    // and the trigger subjects go through every pipeline once a second).
    let log = h._engine.log();
    assert!(!log.contains("cannot read"), "{log}");
}

/// Each verb × each role: a verb the role does not carry is refused with the role it needs,
/// before anything is looked up.
#[test]
fn roles_decide_which_verbs_each_principal_may_call() {
    let h = Hosted::start(WEB);
    let op = h.operator.clone();
    h.ok(&op, &["tenant", "create", "acme"]);
    // (verb's command, the role it needs)
    let table: [(&[&str], &str); 8] = [
        (&["pipeline", "ls"], "viewer"),
        (&["executions"], "viewer"),
        (&["pipeline", "put", "pipeline.yaml"], "developer"),
        (&["start", "web"], "developer"),
        (
            &["approve", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "Gate/Approve"],
            "approver",
        ),
        (&["token", "ls"], "admin"),
        (&["audit"], "admin"),
        (&["tenant", "ls"], "operator"),
    ];
    for role in ROLES {
        let token = h.token("acme", role, role);
        for (args, needs) in table {
            let r = h.as_(&token, args);
            let allowed =
                needs == "viewer" || role == needs || (role == "admin" && needs != "operator");
            let forbidden = r.stderr.contains(&format!("needs the {needs} role"));
            assert_eq!(
                !forbidden, allowed,
                "{role} → {args:?} (needs {needs}): {r:?}"
            );
        }
    }
}

/// The operator's policy bounds what a tenant's pipelines may grant (at registration, with
/// the line; and again at start, after a tightening), and quotas bound what it may use.
#[test]
fn policies_and_quotas_bound_a_tenant() {
    let h = Hosted::start(WEB);
    let op = h.operator.clone();
    h.ok(
        &op,
        &[
            "tenant",
            "create",
            "acme",
            "--max-pipelines",
            "2",
            "--max-running",
            "1",
        ],
    );
    let dev = h.token("acme", "dev", "developer");
    h.p.write(
        "shell.yaml",
        "name: shell\nstages:\n  - name: S\n    actions:\n      - name: Run\n        uses: command@1\n        capabilities: { process: [sh] }\n        with: { run: \"true\" }\n",
    );
    let r = h.as_(&dev, &["pipeline", "put", "shell.yaml"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("shell.yaml:7:")
            && r.stderr.contains("may not run the host program `sh`"),
        "{}",
        r.stderr
    );
    h.ok(&op, &["tenant", "set", "acme", "--allow-process", "sh"]);
    h.ok(&dev, &["pipeline", "put", "shell.yaml"]);
    // Tightened again: the registered pipeline may no longer start.
    h.ok(
        &op,
        &[
            "tenant",
            "set",
            "acme",
            "--allow-http",
            "https://example.com",
        ],
    );
    let r = h.as_(&dev, &["start", "shell"]);
    assert!(
        r.code == 2 && r.stderr.contains("may not run the host program"),
        "{r:?}"
    );

    // Quotas: two pipelines, one running execution.
    h.ok(&dev, &["pipeline", "put", "pipeline.yaml"]);
    h.p.write(
        "third.yaml",
        &h.p.read("pipeline.yaml")
            .replace("name: web", "name: third"),
    );
    let r = h.as_(&dev, &["pipeline", "put", "third.yaml"]);
    assert!(
        r.code == 2 && r.stderr.contains("may register 2 pipelines"),
        "{r:?}"
    );
    let id = h.ok(&dev, &["start", "web"]).trim().to_string();
    wait_for(
        Duration::from_secs(30),
        "the first execution to wait",
        || {
            let r = h.as_(&dev, &["status", &id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            action(&e, "Gate/Approve")["waiting"]
                .is_object()
                .then_some(())
        },
    );
    let r = h.as_(&dev, &["start", "web"]);
    assert!(
        r.code == 2 && r.stderr.contains("may run 1 executions at once"),
        "{r:?}"
    );
    // With places to wait, a start beyond the running quota waits instead (it starts when the
    // running one ends, below); beyond the places, it is refused.
    h.ok(
        &op,
        &[
            "tenant",
            "set",
            "acme",
            "--max-pipelines",
            "2",
            "--max-running",
            "1",
            "--max-queued",
            "1",
        ],
    );
    let r = h.as_(&dev, &["start", "web"]);
    assert!(r.code == 0 && r.stderr.contains("queued"), "{r:?}");
    let waiting = r.stdout.trim().to_string();
    let r = h.as_(&dev, &["status", &waiting]);
    assert!(r.code != 0 && r.stderr.contains("has not started"), "{r:?}");
    let r = h.as_(&dev, &["start", "web"]);
    assert!(
        r.code == 2 && r.stderr.contains("places to wait are taken"),
        "{r:?}"
    );
    // Usage is for admins.
    assert!(
        h.as_(&dev, &["tenant", "usage"])
            .stderr
            .contains("needs the admin role")
    );
    let admin = h.token("acme", "boss", "admin");
    let usage: Value = serde_json::from_str(&h.ok(&admin, &["tenant", "usage"])).unwrap();
    assert_eq!(usage["pipelines"], 2);
    assert_eq!(usage["running_executions"], 1);
    assert_eq!(usage["queued_executions"], 1);
    assert_eq!(usage["quotas"]["concurrent_executions"], 1);
    // With authentication, who decides is the token's holder: naming someone else is refused.
    let approver = h.token("acme", "approver", "approver");
    let r = h.as_(
        &approver,
        &["approve", &id, "Gate/Approve", "--as", "mallory"],
    );
    assert!(
        r.code == 2 && r.stderr.contains("you act as your token's holder"),
        "{r:?}"
    );
    h.ok(&approver, &["approve", &id, "Gate/Approve"]);
    let done = wait_for(Duration::from_secs(30), "the approval to be taken", || {
        let e: Value = serde_json::from_str(&h.ok(&dev, &["status", &id, "--json"])).ok()?;
        (status(&e) == "Succeeded").then_some(e)
    });
    assert_eq!(
        action(&done, "Gate/Approve")["decisions"][0]["by"],
        "approver"
    );
    assert_eq!(done["trigger"]["started_by"], "dev");
    // The first one ended: the queued one starts, and leaves the queue.
    wait_for(
        Duration::from_secs(30),
        "the queued execution to start",
        || {
            let r = h.as_(&dev, &["status", &waiting, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            action(&e, "Gate/Approve")["waiting"]
                .is_object()
                .then_some(())
        },
    );
    let usage: Value = serde_json::from_str(&h.ok(&admin, &["tenant", "usage"])).unwrap();
    assert_eq!(usage["queued_executions"], 0);

    // Artifact bytes: what the tenant keeps counts against its quota. An artifact that would
    // pass it is not kept and fails its action; a tenant at its quota starts nothing.
    let kept = || {
        let usage: Value = serde_json::from_str(&h.ok(&admin, &["tenant", "usage"])).unwrap();
        usage["artifact_bytes"].as_u64().unwrap()
    };
    let before = kept();
    assert!(before > 0, "the site artifact is counted");
    let room = (before + 1024).to_string();
    h.ok(
        &op,
        &["tenant", "set", "acme", "--max-artifact-bytes", &room],
    );
    h.p.write(
        "big.yaml",
        &format!(
            "name: big\nstages:\n  - name: Build\n    actions:\n      - {{ name: Make, uses: PROBE, outputs: [site], with: {{ mode: write, path: /out/site/big.html, value: {} }} }}\n",
            "x".repeat(4096)
        )
        .replace("PROBE", crate::harness::probe()),
    );
    h.ok(&dev, &["pipeline", "put", "big.yaml"]);
    let id = h.ok(&dev, &["start", "big"]).trim().to_string();
    let failed = wait_for(Duration::from_secs(30), "the big artifact to fail", || {
        let e: Value = serde_json::from_str(&h.ok(&dev, &["status", &id, "--json"])).ok()?;
        (status(&e) == "Failed").then_some(e)
    });
    let error = action(&failed, "Build/Make")["error"].to_string();
    assert!(
        error.contains("quota_exceeded") && error.contains("may keep"),
        "{error}"
    );
    assert_eq!(kept(), before, "nothing of the refused artifact is kept");
    h.ok(
        &op,
        &[
            "tenant",
            "set",
            "acme",
            "--max-artifact-bytes",
            &before.to_string(),
        ],
    );
    let r = h.as_(&dev, &["start", "web"]);
    assert!(
        r.code == 2 && r.stderr.contains("quota_exceeded") && r.stderr.contains("may keep"),
        "{r:?}"
    );
    // An upload (a pipeline's folder) is refused the same way, over HTTP.
    let (code, body) = h.http(
        &dev,
        "POST",
        "/api/v1/bundles",
        &[],
        &crate::http_api::quickstart_folder(),
    );
    assert!(
        code == 429 && body.contains("quota_exceeded"),
        "{code} {body}"
    );
    assert_eq!(kept(), before);
}

/// On NATS (two engines), the token in each request decides too: one engine makes the
/// operator's token, another answers; a tenant's token does not reach another tenant's
/// executions, naming the other tenant's subject is refused, and a request without a token
/// (a raw NATS request as well) is refused.
#[test]
fn tokens_decide_the_tenant_on_nats_with_two_engines() {
    use crate::harness::nats::NatsServer;
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(WEB);
    let _a = Engine::start(p.dir.path(), "engine-a", &["--nats", &url, "--auth"]);
    let _b = Engine::start(p.dir.path(), "engine-b", &["--nats", &url, "--auth"]);
    let operator = wait_for(Duration::from_secs(30), "the operator's token", || {
        ["engine-a", "engine-b"].iter().find_map(|e| {
            std::fs::read_to_string(p.path(&format!("{e}/operator.token")))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        })
    });
    let run = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", url.as_str()]);
        p.sluice_env(&all, &[("SLUICE_TOKEN", token)])
    };
    let ok = |token: &str, args: &[&str]| {
        let r = run(token, args);
        assert_eq!(r.code, 0, "sluice {args:?}: {r:?}");
        r.stdout.trim().to_string()
    };
    wait_for(Duration::from_secs(30), "the engines to answer", || {
        (run(&operator, &["tenant", "ls"]).code == 0).then_some(())
    });
    ok(&operator, &["tenant", "create", "acme"]);
    ok(&operator, &["tenant", "create", "globex"]);
    let mk = |tenant: &str| {
        ok(
            &operator,
            &[
                "token",
                "create",
                "--tenant",
                tenant,
                "--name",
                "dev",
                "--role",
                "developer",
            ],
        )
    };
    let (acme, globex) = (mk("acme"), mk("globex"));
    ok(&globex, &["pipeline", "put", "pipeline.yaml"]);
    let id = ok(&globex, &["start", "web"]);
    wait_for(
        Duration::from_secs(30),
        "GLOBEX's execution to wait",
        || {
            let r = run(&globex, &["status", &id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            action(&e, "Gate/Approve")["waiting"]
                .is_object()
                .then_some(())
        },
    );
    for args in [
        vec!["status", id.as_str()],
        vec!["stop", id.as_str()],
        vec!["pipeline", "get", "web"],
        vec!["status", id.as_str(), "--tenant", "globex"],
        vec!["pipeline", "rm", "web", "--tenant", "globex"],
    ] {
        let r = run(&acme, &args);
        assert!(refused(&r), "{args:?}: {r:?}");
    }
    let r = run("", &["pipeline", "ls", "--tenant", "globex"]);
    assert!(
        r.code == 2 && r.stderr.contains("requires a token"),
        "{r:?}"
    );
    // A raw request on GLOBEX's subject, without a token.
    let reply = crate::service::raw_request(&url, "sluice.globex.api.pipeline.ls", b"{}");
    assert!(reply.contains("unauthenticated"), "{reply}");
    // Still there, unchanged.
    assert!(ok(&globex, &["pipeline", "ls"]).contains("web"));
    let e: Value = serde_json::from_str(&ok(&globex, &["status", &id, "--json"])).unwrap();
    assert_eq!(status(&e), "InProgress");
    // A start beyond the running quota waits in the tenant's one queue (in KV), whichever
    // engine takes its event, and starts when the running execution ends.
    ok(
        &operator,
        &[
            "tenant",
            "set",
            "globex",
            "--max-running",
            "1",
            "--max-queued",
            "1",
        ],
    );
    let r = run(&globex, &["start", "web"]);
    assert!(r.code == 0 && r.stderr.contains("queued"), "{r:?}");
    let waiting = r.stdout.trim().to_string();
    let approver = ok(
        &operator,
        &[
            "token", "create", "--tenant", "globex", "--name", "approver", "--role", "approver",
        ],
    );
    ok(&approver, &["approve", &id, "Gate/Approve"]);
    wait_for(
        Duration::from_secs(30),
        "the queued execution to start",
        || {
            let r = run(&globex, &["status", &waiting, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            action(&e, "Gate/Approve")["waiting"]
                .is_object()
                .then_some(())
        },
    );
    // Artifact bytes are counted per tenant in one place every engine reads: GLOBEX's site
    // is, ACME keeps nothing; at its quota, GLOBEX starts nothing on any engine.
    let kept = |tenant: &str| {
        let usage: Value =
            serde_json::from_str(&ok(&operator, &["tenant", "usage", tenant])).unwrap();
        usage["artifact_bytes"].as_u64().unwrap()
    };
    let globex_kept = kept("globex");
    assert!(globex_kept > 0);
    assert_eq!(kept("acme"), 0);
    ok(
        &operator,
        &[
            "tenant",
            "set",
            "globex",
            "--max-artifact-bytes",
            &globex_kept.to_string(),
        ],
    );
    for _ in 0..2 {
        let r = run(&globex, &["start", "web"]);
        assert!(r.code == 2 && r.stderr.contains("quota_exceeded"), "{r:?}");
    }
    // A trigger published past the quota goes to the dead letter, and replaying it passes the
    // quotas again: it is refused, nothing starts.
    crate::service::publish(
        &url,
        "sluice.globex.trigger.web",
        r#"{"id":"over-quota"}"#,
        Some("over-quota"),
    );
    let letter = wait_for(Duration::from_secs(30), "the trigger's dead letter", || {
        let r = run(&globex, &["deadletter", "web"]);
        r.stdout
            .lines()
            .find(|l| l.contains("over-quota") && l.contains("quota_exceeded"))
            .map(|l| l.split('\t').next().unwrap().to_string())
    });
    let before = ok(&globex, &["executions", "--json"]);
    let r = run(&globex, &["deadletter", "replay", &letter]);
    assert!(r.code == 2 && r.stderr.contains("quota_exceeded"), "{r:?}");
    assert_eq!(ok(&globex, &["executions", "--json"]), before);
}

/// With the sample `examples/hosting/nats-server.conf`, the NATS server decides the tenant:
/// a client of account `acme` reaches ACME's API and trigger subjects and sees ACME's events,
/// but naming GLOBEX reaches no engine, a trigger published on GLOBEX's subject starts nothing,
/// and GLOBEX's events never arrive.
#[test]
fn tenants_are_nats_accounts_with_the_sample_server_config() {
    use crate::harness::nats::NatsServer;
    let nats = NatsServer::start_with_config(
        &crate::harness::repo().join("examples/hosting/nats-server.conf"),
    );
    let at =
        |user: &str, password: &str| format!("nats://{user}:{password}@127.0.0.1:{}", nats.port);
    let (engine_url, acme, globex) = (
        at("engine", "engine-secret"),
        at("acme", "acme-secret"),
        at("globex", "globex-secret"),
    );
    let p = Project::new(
        "name: web\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: noop@1 }\n",
    );
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &engine_url]);
    let run = |url: &str, tenant: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", url, "--tenant", tenant]);
        p.sluice(&all)
    };
    wait_for(Duration::from_secs(30), "the engine to answer ACME", || {
        (run(&acme, "acme", &["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    assert_eq!(
        run(&globex, "globex", &["pipeline", "put", "pipeline.yaml"]).code,
        0
    );
    // ACME's own: start and read.
    let id = run(&acme, "acme", &["start", "web"])
        .stdout
        .trim()
        .to_string();
    wait_for(Duration::from_secs(30), "ACME's execution", || {
        let r = run(&acme, "acme", &["status", &id, "--json"]);
        let e: Value = serde_json::from_str(&r.stdout).ok()?;
        (status(&e) == "Succeeded").then_some(())
    });
    // ACME naming GLOBEX: no engine answers there for it.
    for args in [
        &["pipeline", "ls"][..],
        &["start", "web"],
        &["pipeline", "rm", "web"],
    ] {
        let r = run(&acme, "globex", args);
        assert!(r.code != 0 && !r.stdout.contains("web"), "{args:?}: {r:?}");
    }
    // A trigger ACME publishes on GLOBEX's subject starts nothing; on its own, it starts one.
    let events =
        crate::service::collect(&acme, "sluice.*.events.>", Duration::from_secs(3), || {
            crate::service::raw_publish(
                &acme,
                "sluice.globex.trigger.web",
                br#"{"id": "forged-1"}"#,
            );
            crate::service::raw_publish(&acme, "sluice.acme.trigger.web", br#"{"id": "own-1"}"#);
        });
    assert!(events.iter().all(|e| e["tenant"] == "acme"), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "pipeline" && e["status"] == "Succeeded"),
        "{events:#?}"
    );
    let globex_runs = run(&globex, "globex", &["executions", "--json"]);
    assert_eq!(
        globex_runs.stdout.matches("execution_id").count(),
        0,
        "{globex_runs:?}"
    );
}

/// A component padded past two upload parts: the probe with a custom section appended (a
/// component may carry custom sections anywhere between its sections).
fn padded_probe(to: &std::path::Path) {
    let mut bytes = std::fs::read(crate::harness::probe()).unwrap();
    let (name, data) = (b"padding", vec![0x5au8; 1_200_000]);
    let mut body = leb128(name.len());
    body.extend_from_slice(name);
    body.extend_from_slice(&data);
    bytes.push(0);
    bytes.extend(leb128(body.len()));
    bytes.extend(body);
    std::fs::write(to, bytes).unwrap();
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A tenant's NATS account reaches the engines' API and nothing else of theirs (not their
/// object store): with `--auth`, its developer registers a pipeline whose plugin is a file
/// larger than a NATS message, and a function, both uploaded through the API in parts, and
/// the pipeline runs. Another tenant cannot join ACME's parts.
#[test]
fn a_tenant_account_uploads_its_plugins_and_functions_through_the_api() {
    use crate::harness::nats::NatsServer;
    let nats = NatsServer::start_with_config(
        &crate::harness::repo().join("examples/hosting/nats-server.conf"),
    );
    let at =
        |user: &str, password: &str| format!("nats://{user}:{password}@127.0.0.1:{}", nats.port);
    let (engine_url, acme) = (at("engine", "engine-secret"), at("acme", "acme-secret"));
    let p = Project::new(
        "name: big\nstages:\n  - name: Build\n    actions:\n      - { name: Make, uses: ./big-probe.wasm, outputs: [site], with: { mode: write, path: /out/site/index.html, value: acme } }\n",
    );
    padded_probe(&p.path("big-probe.wasm"));
    let _engine = Engine::start(p.dir.path(), ".sluice", &["--nats", &engine_url, "--auth"]);
    let file = p.path(".sluice/operator.token");
    let operator = wait_for(Duration::from_secs(30), "the operator's token", || {
        std::fs::read_to_string(&file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let run = |url: &str, tenant: &str, token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", url, "--tenant", tenant]);
        p.sluice_env(&all, &[("SLUICE_TOKEN", token)])
    };
    wait_for(Duration::from_secs(30), "the engine to answer", || {
        (run(
            &engine_url,
            "acme",
            &operator,
            &["tenant", "create", "acme"],
        )
        .code
            == 0)
            .then_some(())
    });
    let made = run(
        &engine_url,
        "acme",
        &operator,
        &["token", "create", "--name", "ci", "--role", "developer"],
    );
    assert_eq!(made.code, 0, "{made:?}");
    let ci = made.stdout.trim().to_string();

    let put = run(&acme, "acme", &ci, &["pipeline", "put", "pipeline.yaml"]);
    assert_eq!(put.code, 0, "{put:?}");
    let id = run(&acme, "acme", &ci, &["start", "big"])
        .stdout
        .trim()
        .to_string();
    wait_for(Duration::from_secs(30), "ACME's execution", || {
        let r = run(&acme, "acme", &ci, &["status", &id, "--json"]);
        let e: Value = serde_json::from_str(&r.stdout).ok()?;
        (status(&e) == "Succeeded").then_some(e)
    });
    let f = run(
        &acme,
        "acme",
        &ci,
        &["function", "put", "notes", crate::harness::rust_function()],
    );
    assert_eq!(f.code, 0, "{f:?}");
    assert!(
        f.stdout.contains("registered function notes blake3:"),
        "{f:?}"
    );

    // ACME's parts are ACME's: a part uploaded by ACME is not found for GLOBEX.
    let globex_token = {
        run(
            &engine_url,
            "globex",
            &operator,
            &["tenant", "create", "globex"],
        );
        let made = run(
            &engine_url,
            "globex",
            &operator,
            &["token", "create", "--name", "ci", "--role", "developer"],
        );
        made.stdout.trim().to_string()
    };
    let part = crate::service::raw_request_with(
        &acme,
        "sluice.acme.api.upload.part",
        Some(&ci),
        br#"{"bytes": "aGVsbG8="}"#,
    );
    let part: Value = serde_json::from_str(&part).unwrap();
    let part = part["ok"]["part"].as_str().expect("a part").to_string();
    let joined = crate::service::raw_request_with(
        &at("globex", "globex-secret"),
        "sluice.globex.api.upload.join",
        Some(&globex_token),
        format!(
            r#"{{"parts": ["{part}"], "digest": "blake3:{}"}}"#,
            blake3::hash(b"hello").to_hex()
        )
        .as_bytes(),
    );
    let joined: Value = serde_json::from_str(&joined).unwrap();
    assert_eq!(joined["error"]["code"], "not_found", "{joined}");

    // ACME's components are ACME's: GLOBEX naming one by digest (kept in the store every
    // engine shares) is told what it would be told of a digest nobody uploaded.
    let acmes = f
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("blake3:"))
        .unwrap()
        .to_string();
    let nobodys = format!("blake3:{}", "ab".repeat(32));
    let refusal = |verb: &str, body: String| {
        let reply = crate::service::raw_request_with(
            &at("globex", "globex-secret"),
            &format!("sluice.globex.api.{verb}"),
            Some(&globex_token),
            body.as_bytes(),
        );
        let reply: Value = serde_json::from_str(&reply).unwrap();
        reply["error"].to_string()
    };
    for verb in ["function.put", "pipeline.put"] {
        let body = |digest: &str| match verb {
            "function.put" => format!(r#"{{"name": "notes", "digest": "{digest}"}}"#),
            _ => format!(
                r#"{{"file": "p.yaml", "yaml": "name: p\nstages:\n  - name: S\n    actions:\n      - {{ name: A, uses: {digest} }}\n"}}"#
            ),
        };
        let (theirs, nobody) = (refusal(verb, body(&acmes)), refusal(verb, body(&nobodys)));
        assert!(
            theirs.contains("not one this tenant uploaded"),
            "{verb}: {theirs}"
        );
        assert_eq!(
            theirs.replace(&acmes, "D"),
            nobody.replace(&nobodys, "D"),
            "{verb}"
        );
    }
}

/// Two tenants whose pipelines write the same file: each gets its own artifact address, the
/// next action reads it back, nothing in the artifact store holds it plain, and a sealed blob
/// changed at rest is refused, named, instead of being served.
const SAME_CONTENT: &str = r##"
name: site
stages:
  - name: Build
    actions:
      - { name: Make, uses: PROBE, outputs: [site], with: { mode: write, path: /out/site/index.html, value: "plain-text-that-must-not-rest-0x5e41" } }
  - name: Use
    actions:
      - { name: Read, uses: PROBE, inputs: [site], with: { mode: read, path: /in/site/index.html } }
"##;

#[test]
fn artifacts_are_sealed_per_tenant_at_rest() {
    let h = Hosted::start(SAME_CONTENT);
    let op = h.operator.clone();
    let mut sites = Vec::new();
    for tenant in ["acme", "globex"] {
        h.ok(&op, &["tenant", "create", tenant]);
        let dev = h.token(tenant, "dev", "developer");
        h.ok(&dev, &["pipeline", "put", "pipeline.yaml"]);
        let id = h.ok(&dev, &["start", "site"]).trim().to_string();
        let exec = wait_for(Duration::from_secs(60), "the execution to end", || {
            let r = h.as_(&dev, &["status", &id, "--json"]);
            let e: Value = serde_json::from_str(&r.stdout).ok()?;
            (status(&e) != "InProgress").then_some(e)
        });
        assert_eq!(status(&exec), "Succeeded", "{exec}");
        // The next action read the artifact back through the tenant's store.
        assert_eq!(
            action(&exec, "Use/Read")["variables"]["Bytes"],
            "36",
            "{exec}"
        );
        let site = action(&exec, "Build/Make")["artifacts"]["site"]
            .as_str()
            .unwrap()
            .to_string();
        let (code, body) = h.http(
            &dev,
            "GET",
            &format!("/api/v1/artifacts/{site}/files/index.html"),
            &[],
            b"",
        );
        assert_eq!(
            (code, body.as_str()),
            (200, "plain-text-that-must-not-rest-0x5e41")
        );
        sites.push((tenant, dev, site));
    }
    // The same content, unrelated addresses.
    assert_ne!(sites[0].2, sites[1].2);

    // At rest: no file of the artifact store (or of a workspace) holds the content.
    let data = h.p.path(".sluice");
    let mut files = Vec::new();
    crate::harness::files_under(&data.join("cas"), &mut files);
    crate::harness::files_under(&data.join("work"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(data.join("cas/sealed/globex"))),
        "{files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !bytes
                .windows(b"must-not-rest".len())
                .any(|w| w == b"must-not-rest"),
            "{} holds the content plain",
            f.display()
        );
    }

    // Every sealed blob of GLOBEX's changed by one bit: its artifact is refused, named.
    let (_, dev, site) = &sites[1];
    let mut sealed = Vec::new();
    crate::harness::files_under(&data.join("cas/sealed/globex"), &mut sealed);
    for f in &sealed {
        let mut bytes = std::fs::read(f).unwrap();
        bytes[0] ^= 1;
        let mut perms = std::fs::metadata(f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(f, perms).unwrap();
        std::fs::write(f, bytes).unwrap();
    }
    let (code, body) = h.http(
        dev,
        "GET",
        &format!("/api/v1/artifacts/{site}/files/index.html"),
        &[],
        b"",
    );
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("does not decrypt"), "{body}");
    assert!(!body.contains("must-not-rest"), "{body}");
    // ACME's artifact, sealed under its own key, is untouched.
    let (_, acme_dev, acme_site) = &sites[0];
    let (code, _) = h.http(
        acme_dev,
        "GET",
        &format!("/api/v1/artifacts/{acme_site}/files/index.html"),
        &[],
        b"",
    );
    assert_eq!(code, 200);
}
