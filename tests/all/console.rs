//! The web console in a real browser: Debian's chromium, driven over WebDriver by
//! chromedriver, against a real `sluice serve --http`. Each step is what a user does without a
//! terminal; screenshots of each page land in the test's directory.
use crate::harness::Project;
use crate::harness::nats::{Engine, http, port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONSOLE: &str = r#"
name: shop
stages:
  - name: Build
    actions:
      - { name: Compile, uses: noop@1 }
      - { name: Check, uses: PROBE, with: { mode: ok } }
  - name: Gate
    actions:
      - { name: Ok, uses: approval@1, with: { approvers: "ana", custom_data: "Release 1.2 to production" } }
  - name: Deploy
    actions:
      - { name: Ship, uses: noop@1 }
"#;

const BROKEN: &str = r#"
name: broken
stages:
  - name: Build
    actions:
      - { name: Test, uses: PROBE, with: { mode: fail } }
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: apt-get install chromium chromium-driver (.ci/run does)");
        wait_for(Duration::from_secs(20), "chromedriver", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(())
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn api(port: u16, method: &str, path: &str, body: &str) -> Value {
    let (code, text) = http(port, method, path, &[], body.as_bytes());
    assert!((200..300).contains(&code), "{method} {path}: {code} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
                "binary": "/usr/bin/chromium" }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Wait (without reloading) until `css` matches an element. A lookup the browser aborts
/// because the page is navigating (a form just submitted) is asked again, as a user would
/// look again once the page is there.
async fn until(c: &Client, css: &str, what: &str) -> fantoccini::elements::Element {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match c.find(Locator::Css(css)).await {
            Ok(element) => return element,
            Err(e) => e,
        };
        if std::time::Instant::now() > deadline {
            panic!("waiting for {what} ({css}): {error}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the element `css` matches shows `needle` and return its text. The live page
/// replaces elements as the execution changes, so an element found a moment ago can be gone
/// (stale) when its text is read: it is found again, as a user's eyes would.
async fn until_text(c: &Client, css: &str, needle: &str, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = match c.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &seen {
            Ok(text) if text.contains(needle) => return text.clone(),
            _ if std::time::Instant::now() > deadline => {
                panic!("waiting for {what} ({css} showing {needle:?}): {seen:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Click what `css` matches once it is there; a button the live page replaced between finding
/// and clicking it is found again.
async fn click(c: &Client, css: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = match c.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("clicking {what} ({css}): {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Type `text` into the field `css` matches, finding it again if the page replaced it.
async fn type_into(c: &Client, css: &str, text: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = match c.find(Locator::Css(css)).await {
            Ok(element) => element.send_keys(text).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("typing into {what} ({css}): {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn shot(c: &Client, dir: &std::path::Path, name: &str) -> usize {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    png.len()
}

#[test]
fn a_user_runs_approves_and_holds_pipelines_from_the_console() {
    let p = Project::new(CONSOLE);
    let http_port = port();
    let _engine = Engine::start(
        p.dir.path(),
        ".sluice",
        &["--http", &format!("127.0.0.1:{http_port}")],
    );
    wait_for(Duration::from_secs(30), "the HTTP port", || {
        std::net::TcpStream::connect(("127.0.0.1", http_port))
            .is_ok()
            .then_some(())
    });
    // Registered from the terminal: the probe plugin is a file on this host, which only the
    // engine's own user may name (over HTTP a pipeline names plugins by digest).
    p.write(
        "broken.yaml",
        &BROKEN.replace("PROBE", crate::harness::probe()),
    );
    for file in ["pipeline.yaml", "broken.yaml"] {
        let put = p.sluice(&["pipeline", "put", file]);
        assert_eq!(put.code, 0, "{put:?}");
    }
    let shots = p.path("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{http_port}");
    rt().block_on(async {
        let c = browser(&driver).await;

        // The pipelines page lists it; its page starts an execution.
        c.goto(&format!("{base}/")).await.unwrap();
        until(&c, "a[href='/pipelines/shop']", "the pipeline in the list").await;
        let listing = shot(&c, &shots, "pipelines").await;

        // A pipeline with files of its own, registered without the terminal: the quickstart's
        // folder chosen with the folder picker, uploaded, registered, started, deployed.
        let quickstart = crate::harness::Project::copy_of("examples/quickstart");
        type_into(
            &c,
            "form[data-register] input[name='folder']",
            quickstart.dir.path().to_str().unwrap(),
            "the folder picker",
        )
        .await;
        until(
            &c,
            "form[data-register] option[value='pipeline.yaml']",
            "the pipeline file found in the folder",
        )
        .await;
        shot(&c, &shots, "register").await;
        click(
            &c,
            "form[data-register] button[type='submit']",
            "the Register button",
        )
        .await;
        click(
            &c,
            "form[data-start='quickstart'] button",
            "the registered quickstart's page",
        )
        .await;
        until(
            &c,
            "h1 .status[data-status='Succeeded']",
            "the quickstart to succeed",
        )
        .await;
        shot(&c, &shots, "quickstart-done").await;

        c.goto(&format!("{base}/pipelines/shop")).await.unwrap();
        until(&c, "form[data-start='shop'] button", "the Start button").await;
        shot(&c, &shots, "pipeline").await;
        click(&c, "form[data-start='shop'] button", "the Start button").await;

        // The execution page: actions turn Succeeded live (no reload), the approval waits.
        until(
            &c,
            "[data-action='Build/Compile'][data-status='Succeeded']",
            "Compile to succeed live",
        )
        .await;
        until(
            &c,
            "[data-action='Build/Check'][data-status='Succeeded']",
            "Check to succeed live",
        )
        .await;
        until_text(
            &c,
            "[data-approval='Gate/Ok']",
            "Release 1.2 to production",
            "the approval box",
        )
        .await;
        let execution = shot(&c, &shots, "execution-waiting").await;
        type_into(
            &c,
            "[data-approval='Gate/Ok'] input[name='by']",
            "ana",
            "the approver's name",
        )
        .await;
        type_into(
            &c,
            "[data-approval='Gate/Ok'] input[name='summary']",
            "ship it",
            "the approval's summary",
        )
        .await;
        click(
            &c,
            "[data-approval='Gate/Ok'] button[type='submit']",
            "the Approve button",
        )
        .await;
        until(
            &c,
            "h1 .status[data-status='Succeeded']",
            "the execution to succeed",
        )
        .await;
        // Ship (a no-op like Compile, with the same configuration) was taken from the action
        // cache: it says from where, linked to that execution.
        let shown = c.current_url().await.unwrap();
        let this = shown.path().rsplit('/').next().unwrap().to_string();
        until_text(
            &c,
            "[data-action='Deploy/Ship'] [data-cached-from]",
            &format!("cached from {this}/Build/Compile"),
            "the cached action saying where its result came from",
        )
        .await;
        until(
            &c,
            &format!("[data-action='Deploy/Ship'] [data-cached-from] a[href='/executions/{this}']"),
            "a link to the execution the result came from",
        )
        .await;
        until_text(
            &c,
            "[data-action='Gate/Ok']",
            "approved by ana: ship it",
            "the decision on the approval",
        )
        .await;
        shot(&c, &shots, "execution-done").await;

        // Disable the transition into Deploy: the next execution waits before it.
        c.goto(&format!("{base}/pipelines/shop")).await.unwrap();
        type_into(
            &c,
            "[data-transition='Deploy'] input[name='reason']",
            "change freeze",
            "the transition form",
        )
        .await;
        click(
            &c,
            "[data-transition='Deploy'] button[type='submit']",
            "the Disable button",
        )
        .await;
        until(
            &c,
            "[data-transition='Deploy'].disabled",
            "the transition to show disabled",
        )
        .await;
        let next = api(http_port, "POST", "/api/v1/pipelines/shop/executions", "");
        let next = next["execution_id"].as_str().unwrap().to_string();
        wait_for(Duration::from_secs(30), "the approval of the next", || {
            let e = api(http_port, "GET", &format!("/api/v1/executions/{next}"), "");
            e["stages"][1]["actions"][0]["waiting"]
                .is_object()
                .then_some(())
        });
        api(
            http_port,
            "POST",
            &format!("/api/v1/executions/{next}/actions/Gate/Ok/approve"),
            r#"{"by": "ana"}"#,
        );
        // The page follows the change by itself.
        until_text(
            &c,
            "[data-transition='Deploy']",
            &next,
            "the next execution waiting before Deploy",
        )
        .await;
        shot(&c, &shots, "pipeline-held").await;

        // A failed action's log shows its error line.
        let failed = api(http_port, "POST", "/api/v1/pipelines/broken/executions", "");
        let failed = failed["execution_id"].as_str().unwrap().to_string();
        c.goto(&format!("{base}/executions/{failed}"))
            .await
            .unwrap();
        click(
            &c,
            "[data-action='Build/Test'][data-status='Failed'] button",
            "the failed action's Log button",
        )
        .await;
        until(
            &c,
            ".log .row[data-line*='the probe was told to fail']",
            "the error line in the log",
        )
        .await;
        shot(&c, &shots, "log").await;

        // The plugins page describes the built-ins.
        c.goto(&format!("{base}/plugins")).await.unwrap();
        until(&c, "[data-plugin='approval']", "the approval plugin").await;
        shot(&c, &shots, "plugins").await;

        c.close().await.unwrap();

        // A blank page compresses to a few KB; these hold text and boxes.
        assert!(
            listing > 8_000 && execution > 15_000,
            "screenshots look blank: {listing} {execution} bytes"
        );
    });
}
