//! `notify-nats@1`: messages to granted NATS subjects only, from a local run (a granted
//! server) and from the service on NATS (its own connection).
use crate::harness::nats::{Engine, NatsServer, wait_for};
use crate::harness::*;
use futures_util::StreamExt;
use std::time::Duration;

const NOTIFY: &str = r##"
name: notify
variables:
  version: "2.1"
stages:
  - name: Tell
    actions:
      - name: Chat
        uses: notify-nats@1
        capabilities: { nats: ["chat.>"] }
        with: { subject: chat.releases, message: "#{sluice.pipeline} #{variables.version} is out"SERVER }
      - name: Elsewhere
        uses: notify-nats@1
        capabilities: { nats: ["chat.>"] }
        with: { subject: ops.alerts, message: "not allowed"SERVER }
"##;

#[test]
fn notify_nats_publishes_to_granted_subjects_only() {
    let nats = NatsServer::start();
    let url = nats.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (nc, mut chat, mut ops) = rt.block_on(async {
        let nc = async_nats::connect(&url).await.unwrap();
        let chat = nc.subscribe("chat.>").await.unwrap();
        let ops = nc.subscribe("ops.>").await.unwrap();
        nc.flush().await.unwrap();
        (nc, chat, ops)
    });
    // A local run names the server, which the pipeline grants; a plugin naming a server
    // nobody granted is refused.
    let granted =
        format!("capabilities: {{ nats: {{ server: \"{url}\", subjects: [\"chat.>\"] }} }}");
    let p = Project::new(&format!(
        "{}      - name: Ungranted\n        uses: notify-nats@1\n        capabilities: {{ nats: [\"chat.>\"] }}\n        with: {{ subject: chat.releases, message: \"where nobody granted\", server: \"{url}\" }}\n",
        NOTIFY
            .replace("SERVER", &format!(", server: \"{url}\""))
            .replacen("capabilities: { nats: [\"chat.>\"] }", &granted, 1)
    ));
    let r = p.run(&[]);
    let exec = r.json();
    let ungranted = action(&exec, "Tell/Ungranted");
    assert!(
        error(ungranted).contains(&format!("publishing to NATS server {url} denied")),
        "{ungranted:#}"
    );
    let chat_action = action(&exec, "Tell/Chat");
    assert_eq!(status(chat_action), "Succeeded", "{chat_action:#}");
    let msg = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), chat.next())
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(
        (msg.subject.as_str(), &msg.payload[..]),
        ("chat.releases", &b"notify 2.1 is out"[..])
    );
    let denied = action(&exec, "Tell/Elsewhere");
    assert!(
        error(denied).contains("publishing to ops.alerts denied"),
        "{denied:#}"
    );
    rt.block_on(async {
        nc.flush().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), ops.next())
                .await
                .is_err(),
            "nothing reached ops.>"
        );
    });

    // Without a grant the pipeline does not validate.
    p.write(
        "bad.yaml",
        &p.read("pipeline.yaml").replace(
            "capabilities: { nats: [\"chat.>\"] }",
            "capabilities: { nats: [\">\"] }",
        ),
    );
    let v = p.sluice(&["validate", "bad.yaml"]);
    assert!(
        v.code == 2 && v.stderr.contains("grant subjects of your own"),
        "{}",
        v.stderr
    );

    // The service on NATS publishes through its own connection when `server` is not set.
    let p = Project::new(&NOTIFY.replace("SERVER", ""));
    let _engine = Engine::start(p.dir.path(), "engine", &["--nats", &url]);
    let client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nats", &url]);
        p.sluice(&all)
    };
    wait_for(Duration::from_secs(30), "the engine", || {
        (client(&["pipeline", "put", "pipeline.yaml"]).code == 0).then_some(())
    });
    let start = client(&["start", "notify", "--var", "version=3.0", "--watch"]);
    assert_eq!(start.code, 1, "Elsewhere fails: {start:?}");
    let msg = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), chat.next())
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(&msg.payload[..], b"notify 3.0 is out");
}
