//! Secrets end to end with the real binary: stored from stdin, sealed at rest, handed to an
//! HTTP server through the host (the guest holds a placeholder) and to a granted program as an
//! environment variable, and never in a log line (in any encoding), the record, `show` or the
//! data folder in the clear.
use crate::harness::http::HttpServer;
use crate::harness::*;
use std::process::Command;

const TOKEN: &str = "tok-3xAmple/S3cret+value=9";

fn put_secret(p: &Project, name: &str, value: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secret", "put", name];
    args.extend_from_slice(extra);
    sluice_with_input(p.dir.path(), &args, &[], value)
}

/// No file of the project's data folder holds [`TOKEN`] in the clear (binary files included).
fn nowhere_in_the_clear(p: &Project) {
    let grep = Command::new("grep")
        .args(["-r", "-l", "-a", TOKEN])
        .arg(p.path(".sluice"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "in the clear: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

const PIPELINE: &str = r##"
name: ship
secrets:
  deploy_token: { from: DEPLOY_TOKEN }
stages:
  - name: Source
    actions:
      - { name: Files, uses: source-dir@1, outputs: [site], with: { path: site } }
  - name: Deploy
    actions:
      - name: Ship
        uses: deploy-http@1
        inputs: [site]
        secrets: [deploy_token]
        with:
          url: "ORIGIN/upload"
          headers: "Authorization: Bearer #{secrets.deploy_token}"
        capabilities: { http: ["ORIGIN"] }
      - name: Script
        uses: command@1
        secrets: [deploy_token]
        capabilities: { process: [sh] }
        with:
          run: |
            echo "plain $SLUICE_SECRET_DEPLOY_TOKEN"
            printf %s "$SLUICE_SECRET_DEPLOY_TOKEN" | base64 -w0; echo
            printf %s "x$SLUICE_SECRET_DEPLOY_TOKEN" | base64 -w0; echo
            printf %s "xy$SLUICE_SECRET_DEPLOY_TOKEN" | base64 -w0 | tr '+/' '-_'; echo
            printf %s "$SLUICE_SECRET_DEPLOY_TOKEN" | od -An -tx1 | tr -d ' \n'; echo
            printf %s "$SLUICE_SECRET_DEPLOY_TOKEN" | cut -c1-10; printf %s "$SLUICE_SECRET_DEPLOY_TOKEN" | cut -c11-
            printf '%s\n' "$SLUICE_SECRET_DEPLOY_TOKEN" | fold -w1
            echo "Copied=$SLUICE_SECRET_DEPLOY_TOKEN" >> "$SLUICE_OUTPUT"
            echo done
"##;

#[test]
fn a_secret_reaches_the_server_and_the_program_and_nothing_else() {
    let server = HttpServer::start();
    let p = Project::new(&PIPELINE.replace("ORIGIN", &server.origin()));
    p.write("site/index.html", "<h1>hi</h1>\n");
    server.statuses("/upload", &[201]);

    // A run with a secret that is not stored fails before anything runs, at the line.
    let missing = p.sluice(&["run", "pipeline.yaml"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("pipeline.yaml:4:") && missing.stderr.contains("DEPLOY_TOKEN"),
        "{}",
        missing.stderr
    );

    let put = put_secret(&p, "DEPLOY_TOKEN", &format!("{TOKEN}\n"), &[]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    assert!(put.stderr.contains("made a master key"), "{}", put.stderr);
    let ls = p.sluice(&["secret", "ls"]);
    assert!(
        ls.stdout.contains("DEPLOY_TOKEN") && !ls.stdout.contains(TOKEN),
        "{}",
        ls.stdout
    );

    let run = p.sluice(&["run", "pipeline.yaml", "--json", "--verbose"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let exec = run.json();

    // 1. The server got the token; the guest only ever held the placeholder.
    let got = server.received("/upload");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].headers.get("authorization").map(String::as_str),
        Some(&*format!("Bearer {TOKEN}"))
    );

    // 2. The program had it in its environment, and every form it logged is masked.
    let logs = p.sluice(&[
        "logs",
        exec["execution_id"].as_str().unwrap(),
        "Deploy/Script",
    ]);
    assert!(logs.stdout.contains("plain ***"), "{}", logs.stdout);
    assert!(logs.stdout.contains("done"), "{}", logs.stdout);
    let forms = forms_of(TOKEN);
    let everything = format!("{}\n{}\n{}", logs.stdout, run.stdout, run.stderr);
    for f in &forms {
        assert!(
            !everything.contains(f.as_str()),
            "`{f}` leaked:\n{everything}"
        );
    }
    let single_chars: String = logs
        .stdout
        .lines()
        .filter(|l| l.chars().rev().take_while(|c| *c != ' ').count() == 1)
        .map(|l| l.chars().last().unwrap())
        .collect();
    assert!(
        !single_chars.contains("S3cret"),
        "written one byte per line: {single_chars}"
    );

    // 3. The record keeps the configuration as written and no value; a copied variable is masked.
    let ship = action(&exec, "Deploy/Ship");
    assert_eq!(status(ship), "Succeeded", "{ship:#}");
    let shown = p.sluice(&["show", exec["execution_id"].as_str().unwrap(), "--json"]);
    assert!(
        shown.stdout.contains("#{secrets.deploy_token}"),
        "{}",
        shown.stdout
    );
    assert_eq!(action(&exec, "Deploy/Script")["variables"]["Copied"], "***");

    // Nothing in the data folder holds the value in the clear.
    nowhere_in_the_clear(&p);
}

/// The forms a value may be written in (as the Script action writes them).
fn forms_of(v: &str) -> Vec<String> {
    use base64::Engine as _;
    let std = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE;
    let mut out = vec![
        v.to_string(),
        std.encode(v),
        v.bytes().map(|b| format!("{b:02x}")).collect(),
    ];
    // The encodings with a prefix hold the value's part from their 3rd character on.
    out.push(std.encode(format!("x{v}"))[2..30].to_string());
    out.push(url.encode(format!("xy{v}"))[3..30].to_string());
    out
}

#[test]
fn a_secret_is_used_only_where_the_pipeline_says() {
    let p = Project::new(
        r##"
name: guarded
secrets:
  token: { from: TOKEN }
stages:
  - name: S
    actions:
      - name: NotListed
        uses: command@1
        capabilities: { process: [sh] }
        with: { run: "echo #{secrets.token}" }
      - name: Undeclared
        uses: command@1
        secrets: [other]
        capabilities: { process: [sh] }
        with: { run: "true" }
    before_entry:
      rules:
        - { rule: variable-check, input: "#{secrets.token}", operator: equals, value: x }
      result: FAIL
"##,
    );
    let r = p.sluice(&["validate", "pipeline.yaml"]);
    assert_ne!(r.code, 0);
    for words in [
        "action `NotListed` does not list `token` in its `secrets:`",
        "secret `other` is not declared in the pipeline's `secrets:`",
        "`input`: a secret may only be used in the `with:` of an action that lists it",
    ] {
        assert!(
            r.stderr.contains(words),
            "missing `{words}` in\n{}",
            r.stderr
        );
    }

    // A secret limited to another pipeline is refused at the start, with its line.
    let p = Project::new(
        r##"
name: other
secrets:
  token: { from: TOKEN }
stages:
  - name: S
    actions:
      - { name: A, uses: command@1, secrets: [token], capabilities: { process: [sh] }, with: { run: "true" } }
"##,
    );
    assert_eq!(
        put_secret(&p, "TOKEN", "0123456789abcdef", &["--pipeline", "release"]).code,
        0
    );
    let r = p.sluice(&["run", "pipeline.yaml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("pipeline.yaml:4:") && r.stderr.contains("limited to the pipelines"),
        "{}",
        r.stderr
    );

    // Too short to keep out of logs: refused.
    let short = put_secret(&p, "PIN", "1234", &[]);
    assert_ne!(short.code, 0);
    assert!(
        short.stderr.contains("at least 8 bytes"),
        "{}",
        short.stderr
    );
}

#[test]
fn a_wrong_master_key_decrypts_nothing_and_a_rotated_key_keeps_every_secret() {
    let p = Project::new(
        r##"
name: rotate
secrets:
  token: { from: TOKEN }
stages:
  - name: S
    actions:
      - name: A
        uses: command@1
        secrets: [token]
        capabilities: { process: [sh] }
        with: { run: 'test "$SLUICE_SECRET_TOKEN" = "0123456789abcdef" && echo "Ok=yes" >> "$SLUICE_OUTPUT"' }
"##,
    );
    assert_eq!(put_secret(&p, "TOKEN", "0123456789abcdef", &[]).code, 0);
    let wrong = p.path("wrong.key");
    std::fs::write(
        &wrong,
        "sluice-master-key v1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let r = p.sluice(&[
        "run",
        "pipeline.yaml",
        "--master-key-file",
        wrong.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("is not the one this store's keys were sealed with"),
        "{}",
        r.stderr
    );
    let r = p.sluice(&[
        "secret",
        "rotate-key",
        "--master-key-file",
        wrong.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    // Nothing was re-sealed: the right key still opens everything.
    let exec = p.run(&[]).json();
    assert_eq!(action(&exec, "S/A")["variables"]["Ok"], "yes");

    let r = p.sluice(&["secret", "rotate-key"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(p.path(".sluice/master.key.old").exists());
    let exec = p.run(&[]).json();
    assert_eq!(action(&exec, "S/A")["variables"]["Ok"], "yes");
    let old = p.path(".sluice/master.key.old");
    let r = p.sluice(&[
        "run",
        "pipeline.yaml",
        "--master-key-file",
        old.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0, "the old key no longer opens anything");
}

#[test]
fn the_service_keeps_a_tenants_secrets_and_refuses_a_pipeline_whose_secret_is_missing() {
    use crate::harness::nats::{Engine, NatsServer, wait_for};
    use std::time::Duration;
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(
        r##"
name: svc-secret
secrets:
  token: { from: SVC_TOKEN }
stages:
  - name: S
    actions:
      - name: A
        uses: command@1
        secrets: [token]
        capabilities: { process: [sh] }
        with:
          run: |
            echo "the token is $SLUICE_SECRET_TOKEN"
            test "$SLUICE_SECRET_TOKEN" = "svc-0123456789" && echo "Ok=yes" >> "$SLUICE_OUTPUT"
"##,
    );
    // Two engines on NATS with the same master key file.
    let key = p.path("master.key");
    let env = [("SLUICE_MASTER_KEY_FILE", key.to_str().unwrap())];
    let _engines = [
        Engine::start_env(p.dir.path(), "engine-a", &["--nats", &url], &env),
        Engine::start_env(p.dir.path(), "engine-b", &["--nats", &url], &env),
    ];
    // Not stored yet: the registration is refused at the `from:` line.
    let refused = wait_for(Duration::from_secs(30), "the engines to answer", || {
        let r = p.sluice(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
        (r.code != 0 && r.stderr.contains("SVC_TOKEN")).then_some(r)
    });
    assert!(
        refused.stderr.contains("pipeline.yaml:4:"),
        "{}",
        refused.stderr
    );

    let put = put_secret(&p, "SVC_TOKEN", "svc-0123456789\n", &["--nats", &url]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    let ls = p.sluice(&["secret", "ls", "--nats", &url]);
    assert!(
        ls.stdout.contains("SVC_TOKEN") && !ls.stdout.contains("svc-0123456789"),
        "{}",
        ls.stdout
    );
    let put = p.sluice(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    for _ in 0..4 {
        let start = p.sluice(&["start", "svc-secret", "--watch", "--nats", &url]);
        assert_eq!(start.code, 0, "{}", start.stderr);
        let id = start.stdout.trim().to_string();
        let status = p.sluice(&["status", &id, "--json", "--nats", &url]);
        let exec: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        assert_eq!(action(&exec, "S/A")["variables"]["Ok"], "yes", "{exec:#}");
        let logs = p.sluice(&["logs", &id, "S/A", "--nats", &url]);
        assert!(logs.stdout.contains("the token is ***"), "{}", logs.stdout);
        assert!(!logs.stdout.contains("svc-0123456789"), "{}", logs.stdout);
    }
    // Removing it: the next registration is refused again.
    assert_eq!(
        p.sluice(&["secret", "rm", "SVC_TOKEN", "--nats", &url])
            .code,
        0
    );
    let again = p.sluice(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
    assert_ne!(again.code, 0);
}

/// The third path: a plugin that must hold a value (to sign something) declares it
/// (`reveals_secrets`, shown as the `secrets` capability) and gets the values its action lists
/// through `reveal` — still masked in its log. A plugin that did not declare it, or a secret the
/// action does not list, gets an error; the value appears nowhere in the data folder.
#[test]
fn only_a_plugin_that_declares_it_holds_a_secrets_value() {
    let p = Project::new(
        &r##"
name: sign
secrets:
  key: { from: SIGNING_KEY }
  other: { from: OTHER_KEY }
stages:
  - name: Sign
    actions:
      - { name: Probe, uses: PROBE, secrets: [key], with: { mode: reveal, secret: key } }
      - { name: Unlisted, uses: PROBE, secrets: [key], with: { mode: reveal, secret: other } }
      - { name: Hostile, uses: HOSTILE, secrets: [key], with: { mode: reveal, secret: key } }
"##
        .replace("HOSTILE", hostile()),
    );
    for (name, value) in [("SIGNING_KEY", TOKEN), ("OTHER_KEY", "another-value-42")] {
        let put = put_secret(&p, name, value, &[]);
        assert_eq!(put.code, 0, "{put:?}");
    }
    let described = p.sluice(&["plugin", "describe", probe()]);
    assert!(
        described.stdout.contains("secrets: holds the values"),
        "{}",
        described.stdout
    );
    let run = p.run(&[]);
    let exec = run.json();
    let signed = action(&exec, "Sign/Probe");
    assert_eq!(status(signed), "Succeeded", "{exec:#}");
    assert_eq!(signed["variables"]["Length"], TOKEN.len().to_string());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in TOKEN.bytes().chain(b"message".iter().copied()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    assert_eq!(
        signed["variables"]["Signature"],
        format!("{hash:016x}"),
        "the plugin held the real value"
    );
    for (path, why) in [
        ("Sign/Unlisted", "not listed under the action's secrets"),
        ("Sign/Hostile", "its plugin did not declare reveal"),
    ] {
        let a = action(&exec, path);
        assert_eq!(status(a), "Failed", "{why}: {exec:#}");
        assert!(
            a["error"]
                .as_str()
                .unwrap()
                .contains("is not revealed to this action"),
            "{why}: {a:#}"
        );
    }
    let id = exec["execution_id"].as_str().unwrap();
    let logs = p.sluice(&["logs", id, "Sign/Probe"]);
    assert!(
        logs.stdout.contains("holding *** to sign with"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout
            .contains("the plugin was given secret `key` (reveal)"),
        "{}",
        logs.stdout
    );
    nowhere_in_the_clear(&p);
}

/// A plugin that declares `secrets_in_body` writes a document with a secret's placeholder in
/// it; the host puts the value in the request body on the way to the granted origin (and
/// corrects its length). The plugin, its log and the record only ever see the placeholder.
#[test]
fn a_secret_reaches_a_request_body_when_the_plugin_declares_it() {
    let server = HttpServer::start();
    let p = Project::new(
        &r##"
name: notify
secrets:
  tok: { from: CHAT_TOKEN }
stages:
  - name: Tell
    actions:
      - name: Post
        uses: POSTER
        secrets: [tok]
        capabilities: { http: ["ORIGIN"] }
        with:
          url: "ORIGIN/hook"
          body: '{"text":"deployed","token":"#{secrets.tok}"}'
"##
        .replace("POSTER", poster())
        .replace("ORIGIN", &server.origin()),
    );
    server.statuses("/hook", &[200]);
    assert_eq!(put_secret(&p, "CHAT_TOKEN", TOKEN, &[]).code, 0);
    let described = p.sluice(&["plugin", "describe", poster()]);
    assert!(
        described.stdout.contains("secrets-in-body"),
        "{}",
        described.stdout
    );

    let run = p.run(&[]);
    let exec = run.json();
    assert_eq!(status(action(&exec, "Tell/Post")), "Succeeded", "{exec:#}");
    let got = server.received("/hook");
    assert_eq!(got.len(), 1, "{got:?}");
    let body = String::from_utf8(got[0].body.clone()).unwrap();
    assert_eq!(body, format!(r#"{{"text":"deployed","token":"{TOKEN}"}}"#));
    assert_eq!(got[0].headers["content-length"], body.len().to_string());

    let id = exec["execution_id"].as_str().unwrap();
    let logs = p.sluice(&["logs", id, "Tell/Post"]);
    assert!(
        logs.stdout.contains("\"token\":\"[sluice-secret:tok]\""),
        "the plugin held the placeholder: {}",
        logs.stdout
    );
    nowhere_in_the_clear(&p);
}

/// The service's master key rotated without stopping the service: engines are restarted one
/// at a time with the new key and the old one as previous (executions keep getting the secret
/// throughout), an operator re-seals every data key (`secret rotate-key --nats`), and then the
/// engines run with the new key alone. An engine with the old key alone refuses to start.
#[test]
fn the_services_master_key_is_rotated_while_it_runs() {
    use crate::harness::nats::{Engine, NatsServer, wait_for};
    use std::time::Duration;
    let nats = NatsServer::start();
    let url = nats.url();
    let p = Project::new(
        "name: rot\nsecrets:\n  tok: { from: ROT_TOKEN }\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: PROBE, secrets: [tok], with: { mode: reveal, secret: tok } }\n",
    );
    let (old, new) = (p.path("old.key"), p.path("new.key"));
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());
    let only_old = [("SLUICE_MASTER_KEY_FILE", old)];
    let rotating = [
        ("SLUICE_MASTER_KEY_FILE", new),
        ("SLUICE_PREVIOUS_MASTER_KEY_FILE", old),
    ];
    let only_new = [("SLUICE_MASTER_KEY_FILE", new)];
    let serve = |name: &str, env: &[(&str, &str)]| {
        Engine::start_env(p.dir.path(), name, &["--nats", &url], env)
    };
    let mut a = serve("engine-a", &only_old);
    wait_for(Duration::from_secs(30), "engine a's key", || {
        std::path::Path::new(old).exists().then_some(())
    });
    let mut b = serve("engine-b", &only_old);
    wait_for(Duration::from_secs(30), "the engines to answer", || {
        (put_secret(&p, "ROT_TOKEN", TOKEN, &["--nats", &url]).code == 0).then_some(())
    });
    assert_eq!(
        p.sluice(&["pipeline", "put", "pipeline.yaml", "--nats", &url])
            .code,
        0
    );
    let works = |when: &str| {
        for _ in 0..3 {
            let start = p.sluice(&["start", "rot", "--watch", "--nats", &url]);
            assert_eq!(start.code, 0, "{when}: {}", start.stderr);
            let r = p.sluice(&["status", start.stdout.trim(), "--json", "--nats", &url]);
            let exec: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(
                action(&exec, "S/A")["variables"]["Length"],
                TOKEN.len().to_string(),
                "{when}: {exec:#}"
            );
        }
    };
    works("before");

    // One engine at a time: the new key, the old one as previous.
    a.kill9();
    a = serve("engine-a", &rotating);
    wait_for(Duration::from_secs(30), "the new key", || {
        std::path::Path::new(new).exists().then_some(())
    });
    works("one engine restarted");
    b.kill9();
    b = serve("engine-b", &rotating);
    works("both restarted");

    let rotated = wait_for(Duration::from_secs(30), "the rotation", || {
        let r = p.sluice(&["secret", "rotate-key", "--nats", &url]);
        (r.code == 0).then_some(r.stdout)
    });
    assert!(rotated.contains("re-sealed 1 data key(s)"), "{rotated}");
    works("rotated");

    // The previous key is no longer needed; the old one alone opens nothing now.
    a.kill9();
    b.kill9();
    let answering = || {
        wait_for(Duration::from_secs(30), "an engine to answer", || {
            (p.sluice(&["pipeline", "ls", "--nats", &url]).code == 0).then_some(())
        })
    };
    let _a = serve("engine-a", &only_new);
    answering();
    works("new key alone");
    drop(_a);
    // An engine given the old key alone refuses to start, saying why, before it takes work.
    let b = serve("engine-b-old", &only_old);
    wait_for(
        Duration::from_secs(30),
        "the old-key engine to refuse",
        || {
            b.log()
                .contains("is not the one this store's keys were sealed with")
                .then_some(())
        },
    );
    // An engine with the right key takes the work as before.
    let _a = serve("engine-a", &only_new);
    answering();
    works("the old-key engine refused");
}
