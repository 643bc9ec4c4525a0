//! `remora demo`: the whole thing on one machine, no set-up. Each part is a child process of this
//! binary: two versions of a demo service, and a proxy in front of them splitting traffic 90/10.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A child process that is stopped (SIGTERM, then waited for) when dropped.
struct Part {
    name: &'static str,
    child: Child,
}

impl Drop for Part {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(status) => tracing::debug!(part = self.name, %status, "stopped"),
            Err(error) => tracing::warn!(part = self.name, %error, "could not wait for child"),
        }
    }
}

/// Starts `remora ARGS`, reads its stdout until `ready_prefix` and returns the lines read.
fn start(name: &'static str, args: &[&str], ready_prefix: &str) -> Result<(Part, Vec<String>), String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env("REMORA_LOG", std::env::var("REMORA_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot start {name}: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let part = Part { name, child };
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|error| format!("{name}: {error}"))?;
        let done = line.starts_with(ready_prefix);
        lines.push(line);
        if done {
            return Ok((part, lines));
        }
    }
    Err(format!("{name} exited before it was ready"))
}

fn address(lines: &[String], prefix: &str) -> Result<SocketAddr, String> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.trim().strip_prefix("http://"))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| format!("no line starting {prefix:?} in {lines:?}"))
}

pub fn run(requests: usize) -> ExitCode {
    match demo(requests) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("remora demo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn demo(requests: usize) -> Result<(), String> {
    let started = Instant::now();
    println!("remora demo: starting two versions of a demo service, and a proxy in front of them");
    let (v1, lines) = start("service v1", &["demo-service", "--label", "v1"], "listening on")?;
    let v1_addr = address(&lines, "listening on")?;
    println!("  service v1      on http://{v1_addr}");
    let (v2, lines) = start("service v2", &["demo-service", "--label", "v2"], "listening on")?;
    let v2_addr = address(&lines, "listening on")?;
    println!("  service v2      on http://{v2_addr}");

    let dir = std::env::temp_dir().join(format!("remora-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let config_path = dir.join("remora.toml");
    let config = format!(
        r#"# Written by `remora demo`.
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "demo"
match = {{ path_prefix = "/" }}
backends = [
  {{ cluster = "demo-v1", weight = 90 }},
  {{ cluster = "demo-v2", weight = 10 }},
]

[clusters.demo-v1]
version = "v1"
endpoints = ["{v1_addr}"]

[clusters.demo-v2]
version = "v2"
endpoints = ["{v2_addr}"]
"#
    );
    std::fs::write(&config_path, config).map_err(|error| format!("cannot write the config: {error}"))?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let (proxy, lines) = start("proxy", &["proxy", "--config", &config_arg], "ready:")?;
    let proxy_addr = address(&lines, "listener public on")?;
    let admin_addr = address(&lines, "admin on")?;
    println!(
        "  proxy           on http://{proxy_addr} (admin http://{admin_addr}), config {}",
        config_path.display()
    );
    println!("  route \"demo\": 90% to v1, 10% to v2");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let tally = runtime.block_on(drive(proxy_addr, requests))?;
    drop(proxy);
    drop(v2);
    drop(v1);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("summary after {:.1?}:", started.elapsed());
    println!("  requests sent   {requests}");
    println!("  served by v1    {} ({:.1}%)", tally.v1, percent(tally.v1, requests));
    println!("  served by v2    {} ({:.1}%)", tally.v2, percent(tally.v2, requests));
    println!("  failed          {}", tally.failed);
    if tally.failed > 0 {
        return Err(format!("{} requests failed", tally.failed));
    }
    Ok(())
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[derive(Default)]
struct Tally {
    v1: usize,
    v2: usize,
    failed: usize,
}

async fn drive(proxy: SocketAddr, requests: usize) -> Result<Tally, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tally = Tally::default();
    let step = (requests / 10).max(1);
    print!("  sending {requests} requests ");
    let _ = std::io::stdout().flush();
    for sent in 1..=requests {
        let request = Request::get(format!("http://{proxy}/hello"))
            .body(Full::new(Bytes::new()))
            .map_err(|error| error.to_string())?;
        match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                match response.headers().get("x-demo-version").map(|value| value.as_bytes()) {
                    Some(b"v1") => tally.v1 += 1,
                    Some(b"v2") => tally.v2 += 1,
                    _ => tally.failed += 1,
                }
                let _ = response.into_body().collect().await;
            }
            _ => tally.failed += 1,
        }
        if sent % step == 0 {
            print!(".");
            let _ = std::io::stdout().flush();
        }
    }
    println!(" done");
    Ok(tally)
}

/// The demo service: answers every request with its version.
pub fn service(listen: SocketAddr, version: String) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, version)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-service: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, version: String) -> std::io::Result<()> {
    let shutdown = remora_proxy::shutdown_signal();
    let socket = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", socket.local_addr()?);
    let _ = std::io::stdout().flush();
    let version: std::sync::Arc<str> = version.into();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = socket.accept() => accepted?,
        };
        let version = version.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
                let version = version.clone();
                async move {
                    let response = Response::builder()
                        .header("x-demo-version", &*version)
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from(format!("hello from {version}\n"))));
                    response.map_err(|error| error.to_string())
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
