//! `source-http@1` and `deploy-http@1` against a real HTTP server started by the test, with
//! outbound HTTP granted per origin (and refused otherwise).
use crate::harness::http::HttpServer;
use crate::harness::*;
use std::process::Command;

/// Archives made with Python's tarfile/zipfile, including hostile ones.
const MAKE_ARCHIVES: &str = r#"
import io, tarfile, zipfile, sys
out = sys.argv[1]
def tar(name, entries):
    with tarfile.open(f"{out}/{name}", "w:gz") as t:
        for path, data, link in entries:
            info = tarfile.TarInfo(path)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
tar("good.tar.gz", [("app/a.txt", b"hello\n", None), ("app/sub/b.txt", b"deep\n", None)])
tar("dotdot.tar.gz", [("app/a.txt", b"ok\n", None), ("app/../../evil.txt", b"evil\n", None)])
tar("absolute.tar.gz", [("/tmp/sluice-evil.txt", b"evil\n", None)])
tar("link.tar.gz", [("app/passwd", b"", "/etc/passwd")])
with zipfile.ZipFile(f"{out}/good.zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("site/index.html", "<h1>zip</h1>")
with zipfile.ZipFile(f"{out}/dotdot.zip", "w") as z:
    z.writestr("../evil.txt", "evil")
"#;

fn archives(p: &Project) -> std::path::PathBuf {
    let dir = p.path("archives");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("python3")
        .args(["-c", MAKE_ARCHIVES])
        .arg(&dir)
        .output()
        .expect("python3 is needed to build the test archives (apt-get install python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn source_http_downloads_verifies_and_unpacks_safely_from_granted_origins_only() {
    let server = HttpServer::start();
    let p = Project::new("name: placeholder\nstages: []\n");
    let dir = archives(&p);
    for f in [
        "good.tar.gz",
        "dotdot.tar.gz",
        "absolute.tar.gz",
        "link.tar.gz",
        "good.zip",
        "dotdot.zip",
    ] {
        server.file(&format!("/{f}"), std::fs::read(dir.join(f)).unwrap());
    }
    let good = std::fs::read(dir.join("good.tar.gz")).unwrap();
    let b3 = blake3::hash(&good).to_hex().to_string();
    let origin = server.origin();
    let fetch = |name: &str, file: &str, extra: &str| {
        format!(
            "      - {{ name: {name}, uses: source-http@1, outputs: [{name}], capabilities: {{ http: [\"{origin}\"] }}, with: {{ url: \"{origin}/{file}\"{extra} }} }}\n"
        )
    };
    let mut yaml = String::from("name: fetch\nstages:\n  - name: Source\n    actions:\n");
    yaml += &fetch("Good", "good.tar.gz", &format!(", blake3: \"blake3:{b3}\""));
    yaml += &fetch("Zip", "good.zip", "");
    yaml += &fetch(
        "WrongDigest",
        "good.tar.gz",
        ", sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"",
    );
    yaml += &fetch("DotDot", "dotdot.tar.gz", "");
    yaml += &fetch("Absolute", "absolute.tar.gz", "");
    yaml += &fetch("Link", "link.tar.gz", "");
    yaml += &fetch("ZipDotDot", "dotdot.zip", "");
    yaml += &fetch("Missing", "nothing.tar.gz", "");
    yaml += "      - { name: NotGranted, uses: source-http@1, outputs: [NotGranted], capabilities: { http: [\"http://127.0.0.1:1\"] }, with: { url: \"ORIGIN/good.tar.gz\" } }\n".replace("ORIGIN", &origin).as_str();
    yaml += "  - name: Use\n    actions:\n      - name: Read\n        uses: command@1\n        inputs: [Good, Zip]\n        capabilities: { process: [sh] }\n        with: { run: 'echo \"A=$(cat in/Good/app/a.txt) B=$(cat in/Good/app/sub/b.txt) Z=$(cat in/Zip/site/index.html)\" >> $SLUICE_OUTPUT' }\n";
    p.write("pipeline.yaml", &yaml);
    let r = p.run(&[]);
    let exec = r.json();
    let good = action(&exec, "Source/Good");
    assert_eq!(status(good), "Succeeded", "{good:#}");
    assert_eq!(good["variables"]["Files"], "2");
    assert_eq!(good["variables"]["Blake3"], format!("blake3:{b3}").as_str());
    assert_eq!(status(action(&exec, "Source/Zip")), "Succeeded");
    let expect_error = |name: &str, fragment: &str| {
        let a = action(&exec, &format!("Source/{name}"));
        assert_eq!(status(a), "Failed", "{name}: {a:#}");
        assert!(error(a).contains(fragment), "{name}: {}", error(a));
    };
    expect_error("WrongDigest", "sha256 mismatch");
    expect_error("DotDot", "goes up with `..`");
    expect_error("Absolute", "has an absolute path");
    expect_error("Link", "is a link (to /etc/passwd)");
    expect_error("ZipDotDot", "goes up with `..`");
    expect_error("Missing", "answered 404");
    expect_error("NotGranted", "outbound HTTP denied");
    assert!(!std::path::Path::new("/tmp/sluice-evil.txt").exists());
    assert_eq!(
        server.received("/good.tar.gz").len(),
        2,
        "Good and WrongDigest; the denied request never left the sandbox"
    );
    // One stage failed, so Use did not run; run only the good part to see the files.
    let only_good: String = yaml
        .lines()
        .filter(|l| {
            ![
                "WrongDigest",
                "DotDot",
                "Absolute",
                "Link",
                "ZipDotDot",
                "Missing",
                "NotGranted",
            ]
            .iter()
            .any(|n| l.contains(&format!("name: {n},")))
        })
        .collect::<Vec<_>>()
        .join("\n");
    p.write("pipeline.yaml", &only_good);
    let r = p.run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        action(&r.json(), "Use/Read")["variables"]["A"],
        "hello B=deep Z=<h1>zip</h1>"
    );
}

#[test]
fn http_plugins_need_an_origin_grant_to_validate() {
    let p = Project::new(
        "name: x\nstages:\n  - name: S\n    actions:\n      - { name: A, uses: source-http@1, outputs: [a], with: { url: \"https://example.com/a.tar.gz\" } }\n      - { name: B, uses: source-http@1, outputs: [b], capabilities: { http: [\"https://example.com/path\"] }, with: { url: \"https://example.com/a.tar.gz\" } }\n",
    );
    let v = p.sluice(&["validate", "pipeline.yaml"]);
    assert_eq!(v.code, 2);
    assert!(v.stderr.contains("pipeline.yaml:5:11: action `A`: `source-http@1` makes outbound HTTP requests; grant the origins"), "{}", v.stderr);
    assert!(
        v.stderr
            .contains("grant an origin (scheme://host[:port]), without a path"),
        "{}",
        v.stderr
    );
}

#[test]
fn deploy_http_sends_the_artifact_retries_5xx_and_reports_the_status() {
    let server = HttpServer::start();
    server.statuses("/upload", &[201]);
    server.statuses("/flaky", &[503, 502, 200]);
    server.statuses("/forbidden", &[403]);
    let origin = server.origin();
    let p = Project::new(
        &r##"
name: ship
stages:
  - name: Build
    actions:
      - name: Make
        uses: command@1
        outputs: [site]
        capabilities: { process: [sh] }
        with: { run: "mkdir -p out/site/css && echo '<h1>v1</h1>' > out/site/index.html && echo 'h1{}' > out/site/css/app.css" }
  - name: Deploy
    actions:
      - name: Upload
        uses: deploy-http@1
        inputs: [site]
        capabilities: { http: ["ORIGIN"] }
        with: { url: "ORIGIN/upload", headers: "Authorization: Bearer t0ken; X-Release: #{sluice.execution_id}" }
      - name: Flaky
        uses: deploy-http@1
        inputs: [site]
        retry: { max_attempts: 3, backoff: { initial: 10ms, max: 50ms } }
        capabilities: { http: ["ORIGIN"] }
        with: { url: "ORIGIN/flaky", method: POST }
      - name: Forbidden
        uses: deploy-http@1
        inputs: [site]
        retry: { max_attempts: 3, backoff: { initial: 10ms } }
        capabilities: { http: ["ORIGIN"] }
        with: { url: "ORIGIN/forbidden" }
"##
        .replace("ORIGIN", &origin),
    );
    let r = p.run(&[]);
    let exec = r.json();
    let upload = action(&exec, "Deploy/Upload");
    assert_eq!(status(upload), "Succeeded", "{upload:#}");
    assert_eq!(upload["variables"]["StatusCode"], "201");
    let sent = server.received("/upload");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "PUT");
    assert_eq!(sent[0].headers["authorization"], "Bearer t0ken");
    assert_eq!(
        sent[0].headers["x-release"],
        exec["execution_id"].as_str().unwrap()
    );
    assert_eq!(sent[0].headers["content-type"], "application/gzip");
    assert!(
        sent[0].headers["idempotency-key"].ends_with("/Deploy/Upload/1"),
        "{:?}",
        sent[0].headers
    );
    // The body is the artifact as a tar.gz.
    p.write("upload.tar.gz", "");
    std::fs::write(p.path("upload.tar.gz"), &sent[0].body).unwrap();
    let listing = Command::new("tar")
        .args(["tzf", "upload.tar.gz"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["css", "css/app.css", "index.html"],
        "{listing}"
    );

    let flaky = action(&exec, "Deploy/Flaky");
    assert_eq!(
        (status(flaky), flaky["attempt"].as_u64()),
        ("Succeeded", Some(3)),
        "{flaky:#}"
    );
    assert_eq!(
        server
            .received("/flaky")
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>(),
        ["POST", "POST", "POST"]
    );
    let forbidden = action(&exec, "Deploy/Forbidden");
    assert_eq!(
        (status(forbidden), forbidden["attempt"].as_u64()),
        ("Failed", Some(1)),
        "a 4xx is not retried"
    );
    assert!(
        error(forbidden).contains("answered 403"),
        "{}",
        error(forbidden)
    );
}
