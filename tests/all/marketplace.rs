//! The plugin marketplace, end to end with the real `sluice` binary: keys, trust, publish,
//! search, info, install, sluice.lock, runs, upgrades and yanks — against a real OCI registry
//! the test starts (Debian's docker-registry) and against a `file://` OCI layout folder — and
//! the attacks a registry or a publisher could try, each refused with nothing installed.
use crate::harness::registry::Registry;
use crate::harness::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// A user: a home and config folder of their own (keys, trust policy), and a project folder.
struct User {
    home: tempfile::TempDir,
    project: Project,
}

impl User {
    fn new() -> Self {
        User {
            home: tempfile::tempdir().unwrap(),
            project: Project::new("name: placeholder\nstages: []\n"),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let home = self.home.path().display().to_string();
        vec![
            ("HOME".into(), home.clone()),
            ("XDG_CONFIG_HOME".into(), format!("{home}/.config")),
            ("DOCKER_CONFIG".into(), format!("{home}/.docker")),
        ]
    }

    /// `sluice ARGS` in the project, answering `input` to any question.
    fn sluice_answering(&self, args: &[&str], input: &str) -> Run {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sluice_with_input(self.project.dir.path(), args, &env, input)
    }

    fn sluice(&self, args: &[&str]) -> Run {
        self.sluice_answering(args, "")
    }

    /// `sluice ARGS`, which must succeed.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.sluice(args);
        assert_eq!(r.code, 0, "sluice {args:?}\n{}\n{}", r.stdout, r.stderr);
        r
    }

    /// `sluice ARGS`, which must fail saying `words`, with the lock unchanged.
    fn refused(&self, args: &[&str], words: &str) -> Run {
        let lock = std::fs::read_to_string(self.project.path("sluice.lock")).ok();
        let r = self.sluice(args);
        assert_ne!(
            r.code, 0,
            "sluice {args:?} should have been refused\n{}",
            r.stdout
        );
        assert!(
            r.stderr.contains(words),
            "sluice {args:?}: expected `{words}` in\n{}",
            r.stderr
        );
        assert_eq!(
            std::fs::read_to_string(self.project.path("sluice.lock")).ok(),
            lock,
            "the lock changed"
        );
        r
    }

    fn path(&self, rel: &str) -> String {
        self.project.path(rel).display().to_string()
    }

    fn lock(&self) -> toml_lite::Lock {
        toml_lite::Lock(self.project.read("sluice.lock"))
    }

    fn run_pipeline(&self, yaml: &str) -> Value {
        self.project.write("pipeline.yaml", yaml);
        let r = self.sluice(&["run", "pipeline.yaml", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r.json()
    }
}

/// Reading sluice.lock without a TOML parser in the tests: the lines of one entry.
mod toml_lite {
    pub struct Lock(pub String);
    impl Lock {
        /// `key`'s value in the entry named `name`.
        pub fn get(&self, name: &str, key: &str) -> String {
            let entry = self
                .0
                .split("[[plugin]]")
                .find(|e| e.contains(&format!("name = \"{name}\"")))
                .unwrap_or_else(|| panic!("no {name} in\n{}", self.0));
            let line = entry
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in {entry}"));
            line.split_once(" = ")
                .unwrap()
                .1
                .trim_matches('"')
                .to_string()
        }
    }
}

const GREET_PIPELINE: &str = r#"
name: market
stages:
  - name: Hello
    actions:
      - { name: Greet, uses: acme/greet@1, with: { name: Ada } }
"#;

/// greet 1.1.0 declares outgoing HTTP, which its action must be granted.
const GREET_PIPELINE_HTTP: &str = r#"
name: market
stages:
  - name: Hello
    actions:
      - name: Greet
        uses: acme/greet@1
        with: { name: Ada }
        capabilities: { http: ["https://example.invalid"] }
"#;

/// The whole flow a publisher and a user go through, against `registry` (an
/// `oci://HOST/acme` or `file:///DIR/acme` namespace).
fn whole_flow(registry: &str) {
    let publisher = User::new();
    let user = User::new();
    publisher.ok(&["key", "generate", "acme"]);
    let key = publisher.path("acme.key");
    let public = publisher.path("acme.pub");
    let greet = format!("{registry}/greet");

    // Publish 1.0.0, signed. A tag that is not the described version is refused.
    let wrong = publisher.sluice(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.1"),
        "--key",
        &key,
    ]);
    assert_ne!(wrong.code, 0);
    assert!(
        wrong.stderr.contains("describes itself as greet 1.0.0"),
        "{}",
        wrong.stderr
    );
    let published = publisher.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.0"),
        "--key",
        &key,
    ]);
    assert!(
        published.stdout.contains("published acme/greet 1.0.0"),
        "{}",
        published.stdout
    );
    // Versions are immutable: other bytes under 1.0.0 are refused; the same bytes are fine.
    let again = publisher.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.0"),
        "--key",
        &key,
    ]);
    assert!(
        again.stdout.contains("already published (same bytes)"),
        "{}",
        again.stdout
    );
    // Other bytes describing the same name and version: greet 1.0.0 with a custom section
    // appended (still a valid component).
    let mut other = read(greet_v1());
    other.extend_from_slice(&[0x00, 0x05, 0x04, b'n', b'o', b't', b'e']);
    publisher.project.write("greet-rebuilt.wasm", "");
    std::fs::write(publisher.project.path("greet-rebuilt.wasm"), &other).unwrap();
    let rebuilt = publisher.sluice(&[
        "plugin",
        "publish",
        "greet-rebuilt.wasm",
        &format!("{greet}:1.0.0"),
        "--key",
        &key,
    ]);
    assert_ne!(rebuilt.code, 0);
    assert!(
        rebuilt
            .stderr
            .contains("already published with other bytes"),
        "{}",
        rebuilt.stderr
    );
    let changed = publisher.sluice(&[
        "plugin",
        "publish",
        greet_v2(),
        &format!("{greet}:1.0.0"),
        "--key",
        &key,
    ]);
    assert_ne!(changed.code, 0);
    assert!(
        changed.stderr.contains("describes itself as greet 1.1.0"),
        "{}",
        changed.stderr
    );

    // The user searches: found, but not trusted yet; trusting the key changes that.
    let found = user.ok(&["plugin", "search", "greet", "--registry", registry]);
    let row = found
        .stdout
        .lines()
        .find(|l| l.starts_with("acme/greet"))
        .unwrap_or_else(|| panic!("{}", found.stdout));
    assert!(
        row.contains("1.0.0") && row.contains("build") && row.ends_with("no"),
        "{row}"
    );
    let refused = user.refused(&["plugin", "install", &format!("{greet}@1")], "not trusted");
    assert!(
        refused.stderr.contains("sluice trust add"),
        "{}",
        refused.stderr
    );
    user.ok(&[
        "trust",
        "add",
        "acme",
        &public,
        "--scope",
        &format!("{registry}/*"),
    ]);
    let found = user.ok(&["plugin", "search", "--registry", registry]);
    let row = found
        .stdout
        .lines()
        .find(|l| l.starts_with("acme/greet"))
        .unwrap();
    assert!(row.contains(" acme ") && row.ends_with("yes"), "{row}");
    let info = user.ok(&["plugin", "info", &greet]);
    assert!(
        info.stdout.contains("signature: valid, by acme"),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout.contains("capabilities: none"),
        "{}",
        info.stdout
    );

    // Install (no capabilities: nothing to accept), then run a pipeline through the lock.
    let installed = user.ok(&["plugin", "install", &format!("{greet}@1")]);
    assert!(
        installed.stdout.contains("uses: acme/greet@1"),
        "{}",
        installed.stdout
    );
    let lock = user.lock();
    assert_eq!(lock.get("acme/greet", "version"), "1.0.0");
    assert_eq!(lock.get("acme/greet", "registry"), greet);
    let blake3 = lock.get("acme/greet", "blake3");
    let exec = user.run_pipeline(GREET_PIPELINE);
    let greeted = action(&exec, "Hello/Greet");
    assert_eq!(greeted["variables"]["Greeting"], "hello, Ada (greet 1.0.0)");
    assert_eq!(
        greeted["plugin"]["digest"],
        blake3.as_str(),
        "the record keeps the digest that ran"
    );

    // 1.1.0 declares a new capability: the upgrade asks again and shows the difference; a no
    // leaves everything as it was, a yes installs it.
    publisher.ok(&[
        "plugin",
        "publish",
        greet_v2(),
        &format!("{greet}:1.1.0"),
        "--key",
        &key,
    ]);
    let lock_before = user.project.read("sluice.lock");
    let no = user.sluice_answering(&["plugin", "install", &format!("{greet}@^1")], "n\n");
    assert_ne!(no.code, 0);
    assert!(no.stdout.contains("+ http"), "{}", no.stdout);
    assert!(no.stderr.contains("1 new capability"), "{}", no.stderr);
    assert_eq!(user.project.read("sluice.lock"), lock_before);
    let yes = user.sluice_answering(&["plugin", "install", &format!("{greet}@^1")], "y\n");
    assert_eq!(yes.code, 0, "{}", yes.stderr);
    assert_eq!(user.lock().get("acme/greet", "version"), "1.1.0");
    let exec = user.run_pipeline(GREET_PIPELINE_HTTP);
    assert_eq!(
        action(&exec, "Hello/Greet")["variables"]["Greeting"],
        "hello, Ada (greet 1.1.0)"
    );

    // Yank 1.1.0: installing it is refused; the lock keeps working and the sync warns.
    publisher.ok(&["plugin", "yank", &format!("{greet}:1.1.0"), "--key", &key]);
    user.refused(&["plugin", "install", &format!("{greet}:1.1.0")], "yanked");
    let sync = user.ok(&["plugin", "install"]);
    assert!(
        sync.stderr.contains("acme/greet 1.1.0 is yanked"),
        "{}",
        sync.stderr
    );
    let exec = user.run_pipeline(GREET_PIPELINE_HTTP);
    assert_eq!(status(action(&exec, "Hello/Greet")), "Succeeded");
    let info = user.ok(&["plugin", "info", &greet]);
    assert!(
        info.stdout.contains("1.1.0") && info.stdout.contains("(yanked)"),
        "{}",
        info.stdout
    );

    // A fresh clone of the project (the lock, no data folder) fetches exactly what it pins.
    std::fs::remove_dir_all(user.project.path(".sluice")).unwrap();
    let missing = user.sluice(&["run", "pipeline.yaml"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("run `sluice plugin install`"),
        "{}",
        missing.stderr
    );
    let sync = user.ok(&["plugin", "install"]);
    assert!(
        sync.stdout.contains("acme/greet 1.1.0: fetched"),
        "{}",
        sync.stdout
    );
    user.run_pipeline(GREET_PIPELINE_HTTP);

    // A plugin the lock does not have is a validation error at its `uses:` line.
    user.project.write(
        "pipeline.yaml",
        &GREET_PIPELINE.replace("acme/greet@1", "acme/other@1"),
    );
    let invalid = user.sluice(&["validate", "pipeline.yaml"]);
    assert_ne!(invalid.code, 0);
    assert!(
        invalid.stderr.contains("pipeline.yaml:6:")
            && invalid
                .stderr
                .contains("`acme/other` is not in sluice.lock"),
        "{}",
        invalid.stderr
    );
}

#[test]
fn publish_search_install_run_upgrade_and_yank_on_a_real_registry() {
    let registry = Registry::start();
    whole_flow(&registry.url("acme"));
}

#[test]
fn publish_search_install_run_upgrade_and_yank_in_a_folder() {
    let shared = tempfile::tempdir().unwrap();
    whole_flow(&format!("file://{}/acme", shared.path().display()));
}

#[test]
fn the_python_example_is_published_installed_and_run_from_a_registry() {
    let registry = Registry::start();
    let user = User::new();
    crate::plugins::componentize_python(
        &repo().join("examples/plugins/python-wordcount"),
        &user.project.path("wordcount.wasm"),
    );
    user.ok(&["key", "generate", "me"]);
    let wordcount = registry.url("acme/wordcount");
    user.ok(&[
        "plugin",
        "publish",
        "wordcount.wasm",
        &format!("{wordcount}:1.0.0"),
        "--key",
        &user.path("me.key"),
    ]);
    user.ok(&[
        "trust",
        "add",
        "me",
        &user.path("me.pub"),
        "--scope",
        &registry.url("acme/*"),
    ]);
    user.ok(&["plugin", "install", &format!("{wordcount}@1")]);
    std::fs::remove_file(user.project.path("wordcount.wasm")).unwrap();
    user.project.write("docs/a.txt", "one two three\n");
    let exec = user.run_pipeline(
        r#"
name: words
stages:
  - name: Source
    actions:
      - { name: Docs, uses: source-dir@1, outputs: [docs], with: { path: docs } }
  - name: Count
    actions:
      - { name: Words, uses: acme/wordcount@1, inputs: [docs], outputs: [report] }
"#,
    );
    assert_eq!(action(&exec, "Count/Words")["variables"]["Words"], "3");
}

/// An OCI layout folder as a hostile registry would change it.
struct Layout(PathBuf);

impl Layout {
    fn index(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.0.join("index.json")).unwrap()).unwrap()
    }

    fn tagged(&self, tag: &str) -> String {
        self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag}"))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.0
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn put_blob(&self, bytes: &[u8]) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        std::fs::write(self.blob_path(&digest), bytes).unwrap();
        digest
    }

    /// Point `tag` at `digest` (added or replaced).
    fn tag(&self, tag: &str, digest: &str) {
        let mut index = self.index();
        let list = index["manifests"].as_array_mut().unwrap();
        list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        list.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": std::fs::metadata(self.blob_path(digest)).unwrap().len(),
            "annotations": { "org.opencontainers.image.ref.name": tag }
        }));
        std::fs::write(
            self.0.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    fn untag(&self, tag: &str) {
        let mut index = self.index();
        index["manifests"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        std::fs::write(
            self.0.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    /// A hand-made plugin manifest under `tag`: `layer` as the component, with `annotations`
    /// and a declared layer size (the real one unless given).
    fn forge(
        &self,
        tag: &str,
        layer: &[u8],
        annotations: Value,
        declared_size: Option<u64>,
    ) -> String {
        let layer_digest = self.put_blob(layer);
        let config =
            format!(r#"{{"architecture":"wasm","os":"wasip2","layerDigests":["{layer_digest}"]}}"#);
        let config_digest = self.put_blob(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": "application/wasm", "digest": layer_digest, "size": declared_size.unwrap_or(layer.len() as u64) }],
            "annotations": annotations,
        });
        let digest = self.put_blob(&serde_json::to_vec(&manifest).unwrap());
        self.tag(tag, &digest);
        digest
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_registry_or_publisher_that_cheats_is_refused_and_nothing_is_installed() {
    let shared = tempfile::tempdir().unwrap();
    let ns = format!("file://{}/acme", shared.path().display());
    let greet = format!("{ns}/greet");
    let layout = Layout(shared.path().join("acme/greet"));
    let user = User::new();
    user.ok(&["key", "generate", "acme"]);
    user.ok(&["key", "generate", "mallory"]);
    let (key, mallory) = (user.path("acme.key"), user.path("mallory.key"));
    user.ok(&[
        "trust",
        "add",
        "acme",
        &user.path("acme.pub"),
        "--scope",
        &format!("{ns}/*"),
    ]);
    user.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.0"),
        "--key",
        &key,
    ]);
    user.ok(&["plugin", "install", &format!("{greet}:1.0.0")]);
    let locked_v1 = user.lock().get("acme/greet", "blake3");

    // A signature by a key not trusted here.
    user.ok(&[
        "plugin",
        "publish",
        greet_v2(),
        &format!("{greet}:1.1.0"),
        "--key",
        &mallory,
    ]);
    user.refused(
        &["plugin", "install", &format!("{greet}:1.1.0"), "--yes"],
        "which is not trusted",
    );

    // A valid signature (by the trusted key) for other content: 1.0.0's moved to 1.1.0.
    let v1_signature = layout.tagged(&format!("{}.sig", layout.tagged("1.0.0").replace(':', "-")));
    layout.tag(
        &format!("{}.sig", layout.tagged("1.1.0").replace(':', "-")),
        &v1_signature,
    );
    user.refused(
        &["plugin", "install", &format!("{greet}:1.1.0"), "--yes"],
        "is valid but for other content",
    );

    // The tag the lock pins re-pointed to other bytes: install refuses, and the run keeps
    // running what the lock pins.
    let v1_manifest = layout.tagged("1.0.0");
    layout.tag("1.0.0", &layout.tagged("1.1.0"));
    user.refused(
        &["plugin", "install", &format!("{greet}:1.0.0")],
        "the tag was re-pointed",
    );
    let exec = user.run_pipeline(GREET_PIPELINE);
    assert_eq!(
        action(&exec, "Hello/Greet")["variables"]["Greeting"],
        "hello, Ada (greet 1.0.0)"
    );
    assert_eq!(
        action(&exec, "Hello/Greet")["plugin"]["digest"],
        locked_v1.as_str()
    );
    layout.tag("1.0.0", &v1_manifest);

    // The registry serves other bytes for a blob (the fetch by the lock's digest, from scratch).
    std::fs::remove_dir_all(user.project.path(".sluice")).unwrap();
    let layer = {
        let m: Value =
            serde_json::from_slice(&std::fs::read(layout.blob_path(&v1_manifest)).unwrap())
                .unwrap();
        m["layers"][0]["digest"].as_str().unwrap().to_string()
    };
    let original = std::fs::read(layout.blob_path(&layer)).unwrap();
    std::fs::write(layout.blob_path(&layer), read(greet_v2())).unwrap();
    user.refused(&["plugin", "install"], "was tampered with");
    user.refused(
        &["plugin", "install", &format!("{greet}:1.0.0")],
        "was tampered with",
    );
    let nothing = user.sluice(&["run", "pipeline.yaml"]);
    assert!(
        nothing.stderr.contains("not in this data folder"),
        "{}",
        nothing.stderr
    );
    std::fs::write(layout.blob_path(&layer), &original).unwrap();

    // A component whose description is not what its tag says (hand-pushed, unsigned).
    layout.forge("2.0.0", &read(greet_v1()), serde_json::json!({}), None);
    user.refused(
        &[
            "plugin",
            "install",
            &format!("{greet}:2.0.0"),
            "--allow-unsigned",
            "--yes",
        ],
        "describes itself as greet 1.0.0",
    );

    // A path in an annotation (tools that save layers by their title would write there).
    layout.forge(
        "2.0.1",
        &read(greet_v1()),
        serde_json::json!({ "org.opencontainers.image.title": "../../../../tmp/evil.wasm" }),
        None,
    );
    let r = user.refused(
        &[
            "plugin",
            "install",
            &format!("{greet}:2.0.1"),
            "--allow-unsigned",
            "--yes",
        ],
        "annotation org.opencontainers.image.title",
    );
    assert!(!Path::new("/tmp/evil.wasm").exists(), "{}", r.stderr);

    // A 1 GB layer is refused before a byte of it is read; so is one larger than the
    // configured limit, also when its manifest understates its size.
    layout.forge(
        "2.0.2",
        &read(greet_v1()),
        serde_json::json!({}),
        Some(1 << 30),
    );
    user.refused(
        &[
            "plugin",
            "install",
            &format!("{greet}:2.0.2"),
            "--allow-unsigned",
            "--yes",
        ],
        "the limit is 134217728",
    );
    user.project
        .write("sluice.toml", "max-plugin-size = \"64KiB\"\n");
    layout.forge(
        "2.0.3",
        &read(greet_v1()),
        serde_json::json!({}),
        Some(1000),
    );
    user.refused(
        &[
            "plugin",
            "install",
            &format!("{greet}:2.0.3"),
            "--allow-unsigned",
            "--yes",
        ],
        "larger than 65536 bytes",
    );
    std::fs::remove_file(user.project.path("sluice.toml")).unwrap();

    // A catalog entry whose manifest is missing (1.1.0 is in the catalog; its tag is gone).
    layout.untag("1.1.0");
    user.refused(
        &["plugin", "install", &format!("{greet}@^1.1"), "--yes"],
        "has no manifest",
    );

    // Through all of it the lock still pins 1.0.0 and the pipeline runs it.
    assert_eq!(user.lock().get("acme/greet", "version"), "1.0.0");
    user.ok(&["plugin", "install"]);
    let exec = user.run_pipeline(GREET_PIPELINE);
    assert_eq!(
        action(&exec, "Hello/Greet")["variables"]["Greeting"],
        "hello, Ada (greet 1.0.0)"
    );
}

#[test]
fn a_registry_that_serves_other_bytes_is_refused() {
    let registry = Registry::start();
    let user = User::new();
    user.ok(&["key", "generate", "acme"]);
    let greet = registry.url("acme/greet");
    user.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.0"),
        "--key",
        &user.path("acme.key"),
    ]);
    user.ok(&[
        "trust",
        "add",
        "acme",
        &user.path("acme.pub"),
        "--scope",
        &registry.url("acme/*"),
    ]);
    // Swap the component's bytes in the registry's own storage.
    let layer = format!("{:x}", Sha256::digest(read(greet_v1())));
    let data = registry
        .storage
        .path()
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    assert!(
        data.exists(),
        "the registry keeps blobs at {}",
        data.display()
    );
    std::fs::write(&data, read(greet_v2())).unwrap();
    user.refused(&["plugin", "install", &format!("{greet}@1")], "tampered");
    assert!(!user.project.path("sluice.lock").exists());
}

#[test]
fn a_tenant_installs_on_the_service_and_every_engine_runs_the_same_bytes() {
    use crate::harness::nats::{Engine, NatsServer, wait_for};
    use std::time::Duration;
    let nats = NatsServer::start();
    let url = nats.url();
    let shared = tempfile::tempdir().unwrap();
    let greet = format!("file://{}/acme/greet", shared.path().display());
    let user = User::new();
    user.ok(&["key", "generate", "acme"]);
    user.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        &format!("{greet}:1.0.0"),
        "--key",
        &user.path("acme.key"),
    ]);
    user.ok(&[
        "plugin",
        "publish",
        greet_v2(),
        &format!("{greet}:1.1.0"),
        "--key",
        &user.path("acme.key"),
    ]);
    user.ok(&[
        "trust",
        "add",
        "acme",
        &user.path("acme.pub"),
        "--scope",
        &format!("file://{}/acme/*", shared.path().display()),
    ]);
    let _engines = [
        Engine::start(user.project.dir.path(), "engine-a", &["--nats", &url]),
        Engine::start(user.project.dir.path(), "engine-b", &["--nats", &url]),
    ];
    user.project.write("pipeline.yaml", GREET_PIPELINE);
    // Not installed for the tenant yet: refused at the `uses:` line, with the fix.
    let refused = wait_for(Duration::from_secs(30), "the engines to answer", || {
        let r = user.sluice(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
        (r.code != 0 && r.stderr.contains("not installed for this tenant")).then_some(r)
    });
    assert!(
        refused.stderr.contains("pipeline.yaml:6:"),
        "{}",
        refused.stderr
    );

    // Install 1.0.0 for the tenant (the service keeps the component; no lock is written here).
    let installed = user.ok(&[
        "plugin",
        "install",
        &format!("{greet}:1.0.0"),
        "--nats",
        &url,
    ]);
    assert!(
        installed
            .stdout
            .contains("for tenant default on the service"),
        "{}",
        installed.stdout
    );
    assert!(!user.project.path("sluice.lock").exists());
    let listed = user.ok(&["plugin", "installed", "--nats", &url]);
    assert!(
        listed.stdout.contains("acme/greet") && listed.stdout.contains("1.0.0"),
        "{}",
        listed.stdout
    );
    user.ok(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
    let mut ids = vec![];
    for _ in 0..6 {
        let start = user.ok(&["start", "market", "--nats", &url]);
        ids.push(start.stdout.trim().to_string());
    }
    for id in &ids {
        let exec = wait_for(Duration::from_secs(60), "the execution to end", || {
            let r = user.sluice(&["status", id, "--json", "--nats", &url]);
            let v: Value = serde_json::from_str(&r.stdout).ok()?;
            (status(&v) == "Succeeded").then_some(v)
        });
        let greet = action(&exec, "Hello/Greet");
        assert_eq!(greet["variables"]["Greeting"], "hello, Ada (greet 1.0.0)");
        assert_eq!(
            greet["plugin"]["digest"],
            format!("blake3:{}", blake3_hex(greet_v1()))
        );
    }

    // Installing 1.1.0 asks for its new capability against the tenant's 1.0.0, and changes
    // only pipelines registered afterwards.
    let no = user.sluice_answering(
        &["plugin", "install", &format!("{greet}@^1"), "--nats", &url],
        "n\n",
    );
    assert_ne!(no.code, 0);
    assert!(no.stdout.contains("+ http"), "{}", no.stdout);
    user.ok(&[
        "plugin",
        "install",
        &format!("{greet}@^1"),
        "--nats",
        &url,
        "--yes",
    ]);
    let start = user.ok(&["start", "market", "--watch", "--nats", &url]);
    let id = start.stdout.trim().to_string();
    let r = user.sluice(&["status", &id, "--json", "--nats", &url]);
    let exec: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        action(&exec, "Hello/Greet")["variables"]["Greeting"],
        "hello, Ada (greet 1.0.0)"
    );
    // greet is pure and nothing changed since the six runs above ended: whichever engine took
    // this one found their result in the action cache the engines share.
    assert!(
        action(&exec, "Hello/Greet")["cached_from"].is_string(),
        "{exec:#}"
    );
    // The entry every engine reads is the one `sluice cache --nats` lists and clears.
    let ls = user.ok(&["cache", "ls", "--nats", &url]);
    let from = action(&exec, "Hello/Greet")["cached_from"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ls.stdout.contains(&from), "{from} not in {}", ls.stdout);
    user.ok(&["cache", "clear", "--nats", &url, "--pipeline", "market"]);
    let start = user.ok(&["start", "market", "--watch", "--nats", &url]);
    let r = user.sluice(&["status", start.stdout.trim(), "--json", "--nats", &url]);
    let exec: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        action(&exec, "Hello/Greet")["cached_from"].is_null(),
        "a cleared cache runs the action: {exec:#}"
    );
    user.project.write("pipeline.yaml", GREET_PIPELINE_HTTP);
    user.ok(&["pipeline", "put", "pipeline.yaml", "--nats", &url]);
    let start = user.ok(&["start", "market", "--watch", "--nats", &url]);
    let id = start.stdout.trim().to_string();
    let r = user.sluice(&["status", &id, "--json", "--nats", &url]);
    let exec: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        action(&exec, "Hello/Greet")["variables"]["Greeting"],
        "hello, Ada (greet 1.1.0)"
    );
}

fn blake3_hex(path: &str) -> String {
    blake3::hash(&read(path)).to_hex().to_string()
}

#[test]
fn sluice_toml_names_registries_by_alias_and_a_default_to_search() {
    let shared = tempfile::tempdir().unwrap();
    let ns = format!("file://{}/acme", shared.path().display());
    let user = User::new();
    user.ok(&["key", "generate", "acme"]);
    user.ok(&[
        "trust",
        "add",
        "acme",
        &user.path("acme.pub"),
        "--scope",
        &format!("{ns}/*"),
    ]);
    user.project.write(
        "sluice.toml",
        &format!("default-registry = \"acme\"\n\n[registries]\nacme = \"{ns}\"\n"),
    );
    user.ok(&[
        "plugin",
        "publish",
        greet_v1(),
        "acme/greet:1.0.0",
        "--key",
        &user.path("acme.key"),
    ]);
    let found = user.ok(&["plugin", "search", "greet"]);
    assert!(
        found.stdout.contains("acme/greet  1.0.0"),
        "{}",
        found.stdout
    );
    user.ok(&["plugin", "install", "acme/greet@1"]);
    assert_eq!(
        user.lock().get("acme/greet", "registry"),
        format!("{ns}/greet")
    );
    let exec = user.run_pipeline(GREET_PIPELINE);
    assert_eq!(status(action(&exec, "Hello/Greet")), "Succeeded");
    let unknown = user.sluice(&["plugin", "install", "zeta/greet@1"]);
    assert!(
        unknown.stderr.contains("no registry `zeta` in sluice.toml"),
        "{}",
        unknown.stderr
    );
}
