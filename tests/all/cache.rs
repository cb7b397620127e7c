//! The action cache, end to end: a pure action whose plugin, configuration and inputs are
//! unchanged is taken from the cache (recorded as cached, with where it came from); any change
//! runs it again; actions that reach the world always run.
use crate::harness::*;
use serde_json::Value;

fn pipeline(plugin: &str, value: &str, copy_cache: bool) -> String {
    format!(
        r##"
name: cachy
stages:
  - name: Source
    actions:
      - {{ name: Files, uses: source-dir@1, outputs: [src], with: {{ path: src }} }}
  - name: Build
    actions:
      - {{ name: Copy, uses: {plugin}, inputs: [src], outputs: [out], namespace: Build, cache: {copy_cache}, with: {{ mode: copy, value: {value} }} }}
      - {{ name: Noop, uses: noop@1 }}
      - {{ name: Cmd, uses: command@1, capabilities: {{ process: [sh] }}, with: {{ run: "true" }} }}
  - name: Use
    actions:
      - {{ name: After, uses: {plugin}, inputs: [out], with: {{ mode: ok, value: "#{{Build.Value}}" }}, namespace: Use }}
"##
    )
}

fn cached(exec: &Value, path: &str) -> Option<String> {
    action(exec, path)["cached_from"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn an_unchanged_pure_action_is_taken_from_the_cache_and_any_change_runs_it_again() {
    let p = Project::new("name: placeholder\nstages: []\n");
    p.write("src/a.txt", "hello\n");
    p.write("pipeline.yaml", &pipeline(probe(), "v1", true));
    let empty = p.sluice(&["cache", "ls"]);
    assert!(empty.stdout.contains("empty"), "{empty:?}");
    assert!(
        !p.path(".sluice").exists(),
        "looking at the cache makes no data folder"
    );
    let first = p.run(&[]).json();
    let first_id = first["execution_id"].as_str().unwrap().to_string();
    assert_eq!(cached(&first, "Build/Copy"), None);

    // Unchanged: the pure actions are cached (with where from), the rest run.
    let second = p.run(&[]).json();
    assert_eq!(
        cached(&second, "Build/Copy"),
        Some(format!("{first_id}/Build/Copy"))
    );
    assert_eq!(
        cached(&second, "Build/Noop"),
        Some(format!("{first_id}/Build/Noop"))
    );
    assert_eq!(
        cached(&second, "Source/Files"),
        None,
        "source-dir reads the world: it always runs"
    );
    assert_eq!(
        cached(&second, "Build/Cmd"),
        None,
        "a granted program always runs"
    );
    assert_eq!(status(action(&second, "Build/Copy")), "Succeeded");
    assert_eq!(
        action(&second, "Build/Copy")["artifacts"]["out"],
        action(&first, "Build/Copy")["artifacts"]["out"],
        "a hit carries the recorded outputs"
    );
    assert_eq!(action(&second, "Use/After")["variables"]["Value"], "v1");
    let shown = p.sluice(&["show", second["execution_id"].as_str().unwrap()]);
    assert!(
        shown.stdout.contains("cached    not run"),
        "{}",
        shown.stdout
    );

    // One input file changed: the action and what follows run again.
    p.write("src/a.txt", "hello, changed\n");
    let third = p.run(&[]).json();
    assert_eq!(cached(&third, "Build/Copy"), None);
    assert_ne!(
        action(&third, "Build/Copy")["artifacts"]["out"],
        action(&first, "Build/Copy")["artifacts"]["out"]
    );
    assert_eq!(cached(&third, "Use/After"), None, "its input changed");
    assert!(
        cached(&third, "Build/Noop").is_some(),
        "nothing of Noop changed"
    );

    // A configuration value changed: a miss.
    p.write("pipeline.yaml", &pipeline(probe(), "v2", true));
    let fourth = p.run(&[]).json();
    assert_eq!(cached(&fourth, "Build/Copy"), None);
    assert_eq!(action(&fourth, "Use/After")["variables"]["Value"], "v2");

    // Another plugin (new digest: a custom section appended): a miss.
    let mut other = std::fs::read(probe()).unwrap();
    other.extend_from_slice(&[0x00, 0x05, 0x04, b'n', b'o', b't', b'e']);
    std::fs::write(p.path("probe2.wasm"), &other).unwrap();
    p.write("pipeline.yaml", &pipeline("./probe2.wasm", "v2", true));
    let fifth = p.run(&[]).json();
    assert_eq!(cached(&fifth, "Build/Copy"), None);
    let sixth = p.run(&[]).json();
    assert!(cached(&sixth, "Build/Copy").is_some());

    // --no-cache, `cache: false`, and a cleared cache run it.
    assert_eq!(cached(&p.run(&["--no-cache"]).json(), "Build/Copy"), None);
    p.write("pipeline.yaml", &pipeline("./probe2.wasm", "v2", false));
    assert_eq!(cached(&p.run(&[]).json(), "Build/Copy"), None);
    p.write("pipeline.yaml", &pipeline("./probe2.wasm", "v2", true));
    assert!(cached(&p.run(&[]).json(), "Build/Copy").is_some());
    let ls = p.sluice(&["cache", "ls"]);
    assert!(
        ls.stdout.contains("cachy") && ls.stdout.contains("/Build/Copy"),
        "{}",
        ls.stdout
    );
    let clear = p.sluice(&["cache", "clear", "--pipeline", "cachy"]);
    assert!(clear.stdout.contains("removed"), "{}", clear.stdout);
    assert_eq!(cached(&p.run(&[]).json(), "Build/Copy"), None);
}

fn ok(p: &Project, args: &[&str]) -> Run {
    let r = p.sluice(args);
    assert_eq!(r.code, 0, "sluice {args:?}: {r:?}");
    r
}

/// The service's cache, as its users see it: the second execution of an unchanged pipeline
/// takes the pure action from the cache; `sluice cache ls|stats --service` and the HTTP API
/// list that entry; clearing it (CLI or HTTP) makes the next execution run the action.
#[test]
fn the_services_cache_is_listed_and_cleared_from_the_cli_and_the_http_api() {
    use crate::harness::nats::{Engine, http, port, wait_for};
    use std::time::Duration;
    let p = Project::new(&pipeline(probe(), "v1", true));
    p.write("src/a.txt", "hello\n");
    let http_port = port();
    let _engine = Engine::start(
        p.dir.path(),
        ".sluice",
        &["--http", &format!("127.0.0.1:{http_port}")],
    );
    wait_for(Duration::from_secs(30), "the control socket", || {
        p.path(".sluice/sluice.sock").exists().then_some(())
    });
    ok(&p, &["pipeline", "put", "pipeline.yaml"]);
    let execute = || -> Value {
        let start = ok(&p, &["start", "cachy", "--watch"]);
        let id = start.stdout.trim().to_string();
        serde_json::from_str(&ok(&p, &["status", &id, "--json"]).stdout).unwrap()
    };
    let first = execute();
    let first_id = first["execution_id"].as_str().unwrap();
    assert_eq!(cached(&first, "Build/Copy"), None);
    assert_eq!(
        cached(&execute(), "Build/Copy"),
        Some(format!("{first_id}/Build/Copy"))
    );

    let ls = ok(&p, &["cache", "ls", "--service"]);
    assert!(
        ls.stdout.contains("cachy") && ls.stdout.contains(&format!("{first_id}/Build/Copy")),
        "{}",
        ls.stdout
    );
    let local = ok(&p, &["cache", "ls"]);
    assert!(
        local.stdout.contains("empty"),
        "no `sluice run` filled the data folder's own cache: {}",
        local.stdout
    );
    let stats = ok(&p, &["cache", "stats", "--service"]);
    assert!(
        stats.stdout.contains("cachy: 3"),
        "Copy, Noop and After: {}",
        stats.stdout
    );
    let (code, body) = http(http_port, "GET", "/api/v1/cache?pipeline=cachy", &[], b"");
    assert_eq!(code, 200, "{body}");
    let listed: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e["from"] == format!("{first_id}/Build/Copy")
                && e["artifacts"]["out"].is_string()),
        "{body}"
    );
    let (_, none) = http(http_port, "GET", "/api/v1/cache?pipeline=other", &[], b"");
    assert_eq!(none.trim(), "[]");
    // A page at a time: each page's last entry names the next (a whole cache is more than one
    // NATS message holds); the pages together are the listing, newest first.
    let mut paged = Vec::new();
    let mut before = String::new();
    loop {
        let (code, body) = http(
            http_port,
            "GET",
            &format!("/api/v1/cache?pipeline=cachy&limit=1{before}"),
            &[],
            b"",
        );
        assert_eq!(code, 200, "{body}");
        let page: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(page.len() <= 1, "{body}");
        let Some(last) = page.last() else { break };
        let cursor = format!(
            "{}/{}",
            last["created"].as_str().unwrap(),
            last["key"].as_str().unwrap()
        );
        before = format!("&before={}", cursor.replace(':', "%3A").replace('+', "%2B"));
        paged.push(last["key"].clone());
        assert!(
            paged.len() <= listed.len(),
            "the pages do not end: {paged:?}"
        );
    }
    let keys: Vec<Value> = listed.iter().map(|e| e["key"].clone()).collect();
    assert_eq!(paged, keys);

    // Cleared from the CLI: the next execution runs Copy (and records it again).
    let clear = ok(&p, &["cache", "clear", "--service", "--pipeline", "cachy"]);
    assert!(clear.stdout.contains("removed 3"), "{}", clear.stdout);
    let third = execute();
    assert_eq!(cached(&third, "Build/Copy"), None);
    assert!(cached(&execute(), "Build/Copy").is_some());

    // Cleared over HTTP: the same.
    let (code, body) = http(http_port, "DELETE", "/api/v1/cache", &[], b"");
    assert_eq!(code, 200, "{body}");
    let removed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(removed["removed"], 3, "{body}");
    assert_eq!(cached(&execute(), "Build/Copy"), None);
}

/// The docs-site example as its README walks it: built, run twice (the second run takes every
/// site-tools action from the cache, runs the sources and the deploy), a changed blog post runs
/// the blog's actions and what reads their outputs but not the guide's, and a lint problem
/// fails naming the file and line.
#[test]
fn the_docs_site_example_reruns_only_what_a_change_reaches() {
    let p = Project::copy_of("examples/docs-site");
    let wasm = p.path("site-tools/target/wasm32-wasip2/release/site_tools.wasm");
    std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
    std::fs::copy(site_tools(), &wasm).unwrap();
    let ran = |exec: &Value| -> Vec<String> {
        let mut out = Vec::new();
        for stage in exec["stages"].as_array().unwrap() {
            for a in stage["actions"].as_array().unwrap() {
                assert_eq!(a["status"], "Succeeded", "{exec:#}");
                if a["cached_from"].is_null() {
                    out.push(format!(
                        "{}/{}",
                        stage["name"].as_str().unwrap(),
                        a["name"].as_str().unwrap()
                    ));
                }
            }
        }
        out.sort();
        out
    };
    let first = p.run(&[]).json();
    assert_eq!(ran(&first).len(), 9, "everything runs the first time");
    let site = p.read(".sluice/site/current/guide/03-caching.html");
    assert!(site.contains("<h1>What runs again</h1>"), "{site}");
    assert!(
        site.contains("<a href=\"02-first-pipeline.html\">"),
        "{site}"
    );

    let second = p.run(&[]).json();
    assert_eq!(
        ran(&second),
        ["Deploy/Publish", "Source/Blog", "Source/Guide"],
        "only what reads the world or changes it runs again"
    );

    let post = p.read("blog/2026-12-01-release.md");
    p.write(
        "blog/2026-12-01-release.md",
        &format!("{post}\nOne more line.\n"),
    );
    assert_eq!(
        ran(&p.run(&[]).json()),
        [
            "Build/Blog",
            "Build/Site",
            "Deploy/Publish",
            "Lint/Blog",
            "Source/Blog",
            "Source/Guide",
            "Test/Links"
        ],
        "the guide's lint and render are not run again"
    );
    assert!(
        p.read(".sluice/site/current/blog/2026-12-01-release.html")
            .contains("One more line.")
    );

    // A lint problem fails the run at its file and line; a broken link fails the check.
    p.write("blog/2026-12-01-release.md", &format!("{post}TODO: more\n"));
    let failed = p.run(&[]);
    assert_ne!(failed.code, 0);
    assert!(
        failed
            .stderr
            .contains("2026-12-01-release.md:8: a TODO left in"),
        "{}",
        failed.stderr
    );
    p.write(
        "blog/2026-12-01-release.md",
        &format!("{post}See [the roadmap](roadmap.md).\n"),
    );
    let broken = p.run(&[]);
    assert_ne!(broken.code, 0);
    assert!(
        broken
            .stderr
            .contains("blog/2026-12-01-release.html: roadmap.html"),
        "{}",
        broken.stderr
    );
}
