//! A real OCI registry for the tests: Debian's `docker-registry` (CNCF distribution 2.8) on a
//! random loopback port with a temporary storage folder, killed on drop. A missing binary
//! fails the test loudly.
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "install it: apt-get install docker-registry (or set DOCKER_REGISTRY_BIN)";

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its storage: tests tamper with blobs here as a hostile registry would.
    pub storage: tempfile::TempDir,
    child: Child,
    _config: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        let bin = std::env::var("DOCKER_REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".into());
        let storage = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let file = config.path().join("config.yml");
        std::fs::write(
            &file,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: \"\"\nhttp:\n  addr: {host}\n",
                storage.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` ({e}); {INSTALL}"));
        let registry = Registry {
            host,
            storage,
            child,
            _config: config,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within 20 s",
                registry.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `oci://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
