//! The `remora control` process: started with a config and a token in a temp dir (SQLite there too),
//! ready when stdout says `ready:`; plus a small JSON client for its API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use http::{Method, Request};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::process::BINARY;
use super::{full, h1_client, send, Reply, TIMEOUT};

pub const TOKEN: &str = "test-token-0123456789";

pub struct Control {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stderr_path: PathBuf,
}

impl Control {
    /// Starts control with `extra` appended to a config whose store is a SQLite file in `dir`.
    pub async fn start_in(dir: PathBuf, extra: &str) -> Control {
        Self::start_at(dir, "127.0.0.1:0", extra).await
    }

    /// The same on a given address (a restart on the port the proxies know).
    pub async fn start_at(dir: PathBuf, listen: &str, extra: &str) -> Control {
        let config = format!(
            "listen = \"{listen}\"\nstore = \"sqlite://{}\"\n[analysis]\ninterval = \"200ms\"\nwindow = \"5s\"\n{extra}",
            dir.join("control.db").display()
        );
        let config_path = dir.join("control.toml");
        std::fs::write(&config_path, config).expect("write control config");
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = dir.join(format!("control-{start}.log"));
        let mut child = Command::new(BINARY)
            .arg("control")
            .arg("--config")
            .arg(&config_path)
            .env("REMORA_CONTROL_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr_path).expect("stderr file")))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn remora control");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut addr = None;
        let ready = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("control on http://") {
                    addr = url.trim().parse().ok();
                } else if line.starts_with("ready:") {
                    return true;
                }
            }
            false
        })
        .await;
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(ready == Ok(true), "remora control did not become ready:\n{stderr}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Control { child, addr: addr.expect("a `control on http://…` line"), dir, stderr_path }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("pid") as i32;
        kill(Pid::from_raw(pid), signal).expect("signal control");
    }

    /// SIGKILL: no chance to flush or close anything.
    pub async fn kill9(mut self) {
        let pid = self.child.id().expect("pid") as i32;
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
        let _ = self.child.wait().await;
    }

    /// A request with the token (or `token`), a JSON body when given.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_with(method, path, body.map(|body| body.to_string().into_bytes()), Some(TOKEN)).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(self.url(path));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(full(body.unwrap_or_default())).expect("request");
        let Reply { status, body, .. } = send(&h1_client(), request).await;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
        };
        (status, value)
    }
}

/// A registration of `node` at `version` by one proxy, publishing and consuming `name@major` events.
pub fn registration(node: &str, version: &str, publishes: &[&str], consumes: &[&str]) -> Value {
    serde_json::json!({
        "node": node,
        "version": version,
        "proxy": format!("{node}-proxy:1"),
        "endpoints": ["127.0.0.1:8080"],
        "publishes": publishes,
        "consumes": consumes,
    })
}
