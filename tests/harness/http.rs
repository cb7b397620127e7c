//! A small HTTP/1.1 server for plugin tests: serves files, records what is sent to it, and
//! answers with scripted statuses. One thread; `Connection: close` on every answer.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Routes {
    /// GET path → body.
    files: HashMap<String, Vec<u8>>,
    /// path → statuses to answer in turn (the last one repeats).
    statuses: HashMap<String, Vec<u16>>,
    received: Vec<Received>,
}

pub struct HttpServer {
    pub port: u16,
    routes: Arc<Mutex<Routes>>,
}

impl HttpServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let shared = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap_or(0);
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap_or(());
                let (status, answer) = {
                    let mut r = shared.lock().unwrap();
                    r.received.push(Received {
                        method: method.clone(),
                        path: path.clone(),
                        headers,
                        body,
                    });
                    let scripted = r
                        .statuses
                        .get_mut(&path)
                        .map(|s| if s.len() > 1 { s.remove(0) } else { s[0] });
                    match (scripted, method.as_str(), r.files.get(&path)) {
                        (Some(s), _, _) => (s, format!("status {s}").into_bytes()),
                        (None, "GET", Some(f)) => (200, f.clone()),
                        _ => (404, b"not found".to_vec()),
                    }
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer);
            }
        });
        HttpServer { port, routes }
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serve `body` at GET `path`.
    pub fn file(&self, path: &str, body: Vec<u8>) {
        self.routes
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body);
    }

    /// Answer requests to `path` with these statuses in turn (the last repeats).
    pub fn statuses(&self, path: &str, statuses: &[u16]) {
        self.routes
            .lock()
            .unwrap()
            .statuses
            .insert(path.to_string(), statuses.to_vec());
    }

    /// Requests received so far for `path`.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.routes
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}
