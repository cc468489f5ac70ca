//! Runs NATS servers and engram cluster nodes as real processes on
//! loopback, for the cluster tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The pinned NATS server: `ENGRAM_NATS_SERVER`, else the one
/// `scripts/install-nats.sh` installs; the test fails without it.
pub fn nats_server() -> PathBuf {
    if let Ok(p) = std::env::var("ENGRAM_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-nats/bin/nats-server");
    assert!(
        p.exists(),
        "the cluster failover test needs the pinned NATS server: run scripts/install-nats.sh \
         (the README's test command does) or set ENGRAM_NATS_SERVER"
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` with its stderr appended to `log` (kept across restarts).
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()))
}

/// SIGKILLs the process, if running, and reaps it.
fn sigkill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub struct Nats {
    pub name: String,
    pub port: u16,
    pub conf: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Nats {
    pub fn start(&mut self) {
        let mut cmd = Command::new(nats_server());
        cmd.arg("-c").arg(&self.conf);
        self.child = Some(spawn_logged(cmd, &self.log));
    }

    pub fn kill(&mut self) {
        sigkill(&mut self.child);
    }
}

pub struct Node {
    pub id: String,
    pub http: u16,
    pub grpc: u16,
    pub conf: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    pub fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.args(["serve", "--config"])
            .arg(&self.conf)
            .arg("--data-dir")
            .arg(&self.data)
            .env("RUST_LOG", "info");
        self.child = Some(spawn_logged(cmd, &self.log));
    }

    pub fn kill(&mut self) {
        sigkill(&mut self.child);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn cluster_status(http: u16) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http}/v1/cluster"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Partition → owner, with the owner's own view "serving", across `nodes`.
pub async fn served(nodes: &[(String, u16)]) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for (id, http) in nodes {
        let Some(s) = cluster_status(*http).await else {
            continue;
        };
        for p in s["partitions"].as_array().into_iter().flatten() {
            if p["state"] == "serving" && p["owner"] == id.as_str() {
                out.insert(p["partition"].as_u64().unwrap() as u32, id.clone());
            }
        }
    }
    out
}

/// `n` NATS servers in one cluster on loopback (JetStream, fsync on every
/// write), started; and their client URLs.
pub fn nats_cluster(root: &Path, n: usize) -> (Vec<Nats>, Vec<String>) {
    let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let routes: Vec<String> = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let mut nats: Vec<Nats> = (0..n)
        .map(|i| {
            let port = free_port();
            let name = format!("nats{}", i + 1);
            let conf = root.join(format!("{name}.conf"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: engram, listen: 127.0.0.1:{cport}, routes: [{routes}] }}\n",
                    cport = cluster_ports[i],
                    routes = routes.join(", "),
                )
            } else {
                String::new()
            };
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{ store_dir: \"{store}\", sync_interval: always }}\n{cluster}",
                    store = root.join(format!("{name}-js")).display(),
                ),
            )
            .unwrap();
            Nats {
                log: root.join(format!("{name}.log")),
                name,
                port,
                conf,
                child: None,
            }
        })
        .collect();
    for s in &mut nats {
        s.start();
    }
    let urls = nats
        .iter()
        .map(|s| format!("nats://127.0.0.1:{}", s.port))
        .collect();
    (nats, urls)
}

/// `n` engram nodes (`node1`...) joined through `nats_urls`, started;
/// `cluster_toml` is added to each `[cluster]` section.
pub fn nodes(root: &Path, nats_urls: &[String], n: usize, cluster_toml: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            let id = format!("node{}", i + 1);
            let (http, grpc) = (free_port(), free_port());
            let conf = root.join(format!("{id}.toml"));
            std::fs::write(
                &conf,
                format!(
                    "[http]\naddr = \"127.0.0.1:{http}\"\n[grpc]\naddr = \"127.0.0.1:{grpc}\"\n\
                     [engine]\nworkers = 1\n\
                     [cluster]\nnats = [{urls}]\nnode_id = \"{id}\"\n{cluster_toml}",
                    urls = nats_urls
                        .iter()
                        .map(|u| format!("\"{u}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            )
            .unwrap();
            Node {
                data: root.join(format!("{id}-data")),
                log: root.join(format!("{id}.log")),
                id,
                http,
                grpc,
                conf,
                child: None,
            }
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

/// How often a condition is looked at while a test waits for it.
pub const POLL: Duration = Duration::from_millis(50);

/// Waits for a condition: `probe` until it yields `Some`, looked at every
/// [`POLL`], for at most `within`; `None` after that (the caller fails
/// with what it waited for). The one place the cluster tests wait.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for a test without a runtime.
pub fn eventually_blocking<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until every one of `partitions` is served by one of `nodes`.
pub async fn wait_all_served(nodes: &[(String, u16)], partitions: usize, within: Duration) -> bool {
    eventually(within, || async move {
        (served(nodes).await.len() == partitions).then_some(())
    })
    .await
    .is_some()
}

/// The last `lines` lines of each file, for a failure message.
pub fn tails(files: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        out.push_str(&format!("--- {} (last {lines} lines) ---\n", f.display()));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
