//! The `remora` process: started with a config in a temp dir, ready when stdout says `ready:`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::TIMEOUT;

pub const BINARY: &str = env!("CARGO_BIN_EXE_remora");

/// A running `remora proxy`. Killed on drop; if the test is failing, its stderr is printed then.
pub struct Proxy {
    child: Child,
    pid: u32,
    /// `(name, address)` per `listener NAME on http://ADDR` line, in the order printed.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    /// The `ready: …` line.
    pub ready: String,
    stderr_path: PathBuf,
    dir: tempfile::TempDir,
    /// stdout after `ready:` (the access log), line by line.
    output: tokio::sync::watch::Receiver<Vec<String>>,
}

/// Why a proxy did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "remora proxy did not become ready (exit status {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak resident set), bytes.
    pub peak: u64,
}

impl Proxy {
    /// Starts `remora proxy --config FILE` with `config` as the file; panics with the process's
    /// output if it does not print `ready:`.
    pub async fn start(config: &str) -> Proxy {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        match Self::try_start(config, env).await {
            Ok(proxy) => proxy,
            Err(failure) => panic!("{failure}\n--- config ---\n{config}"),
        }
    }

    pub async fn try_start(config: &str, env: &[(&str, &str)]) -> Result<Proxy, StartFailure> {
        Self::try_start_with(config, env, &[]).await
    }

    /// `remora proxy --config FILE ARGS…`, e.g. `--upgrade`.
    pub async fn start_with_args(config: &str, args: &[&str]) -> Proxy {
        match Self::try_start_with(config, &[], args).await {
            Ok(proxy) => proxy,
            Err(failure) => panic!("{failure}\n--- config ---\n{config}"),
        }
    }

    pub async fn try_start_with(
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Proxy, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("remora.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(BINARY);
        command
            .arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|error| panic!("spawn {BINARY}: {error}"));
        let pid = child.id().expect("pid of a just-spawned child");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

        let mut stdout = String::new();
        let mut listeners = Vec::new();
        let mut admin = None;
        let read = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                stdout.push_str(&line);
                stdout.push('\n');
                if let Some(rest) = line.strip_prefix("listener ") {
                    if let Some((name, url)) = rest.split_once(" on ") {
                        listeners.push((name.to_owned(), parse_url(url, &line)));
                    }
                } else if let Some(url) = line.strip_prefix("admin on ") {
                    admin = Some(parse_url(url, &line));
                } else if line.starts_with("ready:") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let ready = match read {
            Ok(Some(ready)) => ready,
            Ok(None) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                return Err(StartFailure { status, stdout, stderr: stderr() });
            }
            Err(_) => {
                stdout.push_str(&format!("(no `ready:` line within {TIMEOUT:?})\n"));
                return Err(StartFailure { status: None, stdout, stderr: stderr() });
            }
        };
        let Some(admin) = admin else {
            stdout.push_str("(no `admin on http://…` line before `ready:`)\n");
            return Err(StartFailure { status: None, stdout, stderr: stderr() });
        };
        // Keep draining stdout so that a chatty proxy never blocks on a full pipe; the lines are kept
        // for the tests that read the access log.
        let (output_tx, output) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                output_tx.send_modify(|output| output.push(line));
            }
        });
        Ok(Proxy { child, pid, listeners, admin, ready, stderr_path, dir, output })
    }

    /// The address of the listener printed first.
    pub fn addr(&self) -> SocketAddr {
        self.listeners.first().unwrap_or_else(|| panic!("remora printed no `listener` line")).1
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.listeners.iter().find(|(listener, _)| listener == name) {
            Some((_, addr)) => *addr,
            None => panic!("remora printed no `listener {name} on …` line; it printed {:?}", self.listeners),
        }
    }

    /// `http://ADDR{path}` on the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("remora.toml")
    }

    /// Current and peak resident memory, from /proc/PID/status.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|error| panic!("read /proc/{}/status: {error} (did remora exit?)", self.pid));
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|error| panic!("bad line {line:?}: {error}"));
            kib * 1024
        };
        Memory { rss: field("VmRSS:"), peak: field("VmHWM:") }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid as i32), signal)
            .unwrap_or_else(|error| panic!("send {signal} to remora: {error}"));
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => panic!("wait for remora: {error}"),
            Err(_) => panic!("remora did not exit within {limit:?}\n--- stderr ---\n{}", self.stderr()),
        }
    }

    /// `None` while the process runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on remora")
    }

    /// Waits for a stdout line (after `ready:`) that `matches`, failing the test after the harness'
    /// timeout.
    pub async fn stdout_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let mut output = self.output.clone();
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(line) = output.borrow_and_update().iter().find(|line| matches(line)) {
                    return Some(line.clone());
                }
                if output.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no stdout line with {what}; stdout after ready was:\n{}\n--- stderr ---\n{}",
                self.output.borrow().join("\n"),
                self.stderr()
            ),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- remora stderr (last {} lines) ---\n{}", tail.len(), tail.join("\n"));
        }
        let _ = self.child.start_kill();
    }
}

fn parse_url(url: &str, line: &str) -> SocketAddr {
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("expected http://IP:PORT in stdout line {line:?}"))
        .trim_end_matches('/');
    authority.parse().unwrap_or_else(|error| panic!("bad address in stdout line {line:?}: {error}"))
}

/// Runs `remora check PATH` (with extra environment variables) to completion.
pub async fn remora_check(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.arg("check").arg(path).stdin(Stdio::null()).kill_on_drop(true);
    // Control process configurations are named control*.toml.
    if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("control")) {
        command.arg("--control");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    match tokio::time::timeout(TIMEOUT, command.output()).await {
        Ok(output) => output.unwrap_or_else(|error| panic!("run {BINARY} check: {error}")),
        Err(_) => panic!("`remora check {}` did not finish within {TIMEOUT:?}", path.display()),
    }
}
