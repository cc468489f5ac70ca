//! Runs the real `engram` binary in a subprocess on port 0 with a temporary
//! data directory, and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The gRPC listener's address.
    pub grpc: SocketAddr,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

const START_DEADLINE: Duration = Duration::from_secs(60);

impl ServerProcess {
    /// Starts `engram serve` on a free port with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_engram")).args(&args))
    }

    /// Starts the binary as given (cwd, env and args set by the caller).
    pub fn spawn(cmd: &mut Command) -> Self {
        for (k, _) in std::env::vars() {
            if k.starts_with("ENGRAM_") && k != "ENGRAM_HTTP_ADDR" && k != "ENGRAM_GRPC_ADDR" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("ENGRAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the engram binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening") {
                        for listener in ["http", "grpc"] {
                            if line.contains(&format!("listener=\"{listener}\"")) {
                                if let Some(addr) = line
                                    .split("addr=")
                                    .nth(1)
                                    .and_then(|s| s.split_whitespace().next())
                                {
                                    let _ = tx.send((
                                        listener,
                                        addr.parse::<SocketAddr>().expect("listener address"),
                                    ));
                                }
                            }
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut addrs = std::collections::HashMap::new();
        while addrs.len() < 2 {
            let Ok((listener, addr)) = rx.recv_timeout(START_DEADLINE) else {
                let _ = child.kill();
                panic!(
                    "server did not log its listener addresses; log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            };
            addrs.insert(listener, addr);
        }
        let (addr, grpc) = (addrs["http"], addrs["grpc"]);
        ServerProcess {
            child,
            addr,
            grpc,
            base: format!("http://{addr}"),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let until = Instant::now() + START_DEADLINE;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            if let Ok(r) = client.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "server never became ready; log:\n{}",
                self.log_text()
            );
        }
    }

    /// SIGKILL: no chance to flush or snapshot.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed server");
    }

    /// The `/metrics` page.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        let r = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        r.text().await.expect("metrics body")
    }

    /// GETs `path` every 20 ms until `done(status, body)` holds; returns
    /// that body. Fails naming `what` (and the last answer) after `deadline`.
    pub async fn get_until(
        &self,
        client: &reqwest::Client,
        path: &str,
        deadline: Duration,
        what: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let until = Instant::now() + deadline;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            let (status, body) = call(client, reqwest::Method::GET, &self.url(path), None).await;
            if done(status, &body) {
                return body;
            }
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {what}; last answer {status} {body}"
            );
        }
    }

    /// Waits for the server to exit on its own within `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "server did not exit within {deadline:?}; log:\n{}",
                self.log_text()
            );
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit within `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "sending SIGTERM");
        self.wait_exit(deadline)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON request; returns status and parsed body.
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// A Rust client of the server's gRPC listener, default options.
pub async fn grpc_client(server: &ServerProcess) -> engram_client::StreamingClient {
    engram_client::StreamingClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connecting the gRPC client")
}

pub fn episode(id: &str, embedding: &[f32]) -> Value {
    json!({"id": id, "what": format!("text of {id}"), "embedding": embedding})
}

pub fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect()
}
