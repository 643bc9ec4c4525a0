//! Network namespaces for the sidecar tests (tests/sidecar.rs): a pod is a namespace, and nothing a
//! test does (addresses, iptables rules, traffic) ever reaches the host's own network.
//!
//! - [`Namespace`]: `ip netns add rmr-<pid>-<n><role>` with loopback up, deleted on drop (even when
//!   the test panics), with the processes still inside it killed first. A namespace left by a test
//!   process that died without dropping (SIGKILL) is swept by the next one.
//! - [`Pair`]: a client and a server namespace joined by a veth pair created straight inside them
//!   (`10.A.B.1/24` ↔ `10.A.B.2/24`).
//! - [`Running`]: a long-lived process in a namespace (the proxy, an application), killed on drop,
//!   read line by line with a deadline, its stderr printed when the test fails.
//! - [`helper_main`]: small TCP and HTTP servers and clients. The test process cannot open a socket
//!   inside a namespace (that needs `setns`), so it runs its own binary there
//!   (`ip netns exec NS <test binary> --ignored --exact netns_helper`), which calls this.
//!
//! Every wait has a deadline ([`DEADLINE`]): a broken redirect fails a test instead of hanging it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub const BINARY: &str = env!("CARGO_BIN_EXE_remora");
/// How long any one step (a command, a readiness line, a helper's run) may take.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The test that runs [`helper_main`]; every test binary using helpers must define it.
pub const HELPER_TEST: &str = "netns_helper";
const HELPER_ARGS: &str = "RMR_HELPER_ARGS";
/// What starts a helper's result lines on stdout (libtest writes its own lines around them).
const MARKER: &str = "rmr-helper: ";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running as root; otherwise says loudly that the test is skipped, and why.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces and iptables); CI runs it as root");
    false
}

pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Runs `command` to its end within [`DEADLINE`] (killed and failing the test after it).
pub fn output(command: &mut Command) -> Output {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {described}: {error}"));
    // Drain both pipes on threads, so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < DEADLINE => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "{described} did not finish within {DEADLINE:?}; stderr:\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(error) => panic!("wait for {described}: {error}"),
        }
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Runs `command`, failing the test with its output unless it succeeds; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let described = format!("{command:?}");
    let output = output(command);
    assert!(
        output.status.success(),
        "{described} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args))
}

/// A network namespace of this test, deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// `rmr-<pid>-<n><role>`, with loopback up.
    pub fn new(role: &str) -> Namespace {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("rmr-{}-{n}{role}", std::process::id());
        ip(&["netns", "add", &name]);
        let namespace = Namespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PROGRAM` run inside the namespace (`ip netns exec`, which execs it: the child's pid is the
    /// program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// `PROGRAM` run inside the namespace as `uid` (and the same gid, no supplementary groups).
    pub fn command_as(&self, uid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, "setpriv"])
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
            .arg(program);
        command
    }

    /// `remora ARGS…` inside the namespace, to its end.
    pub fn remora(&self, args: &[&str]) -> Output {
        output(self.command(BINARY).args(args))
    }

    /// The nat table's chains and rules as `iptables-save -t nat` (or `ip6tables-save`) prints them,
    /// without comments and counters: what a test compares.
    pub fn nat(&self, save: &str) -> Vec<String> {
        let text = run_ok(self.command(save).args(["-t", "nat"]));
        text.lines()
            .filter(|line| line.starts_with(':') || line.starts_with("-A "))
            .map(|line| match line.strip_prefix(':') {
                Some(chain) => format!(":{}", chain.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
                None => line.to_owned(),
            })
            .collect()
    }

    /// The test binary as a helper inside the namespace: `args` are [`helper_main`]'s.
    pub fn helper(&self, args: &[&str]) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = self.command(exe);
        command.args(["--ignored", "--exact", HELPER_TEST, "--nocapture", "--test-threads", "1"]);
        command.env(HELPER_ARGS, serde_json::to_string(args).expect("JSON"));
        command
    }

    /// Runs a helper to its end and returns its result lines; fails the test if it failed.
    pub fn helper_run(&self, args: &[&str]) -> Vec<String> {
        let output = output(&mut self.helper(args));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "helper {args:?} in {} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        results(&stdout)
    }

    /// Connects to `addr` from inside the namespace, sends nothing, and returns the first `len`
    /// bytes the server sends.
    pub fn read_first(&self, addr: &str, len: usize) -> String {
        let lines = self.helper_run(&["read", addr, &len.to_string()]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        serde_json::from_str(&lines[0]).unwrap_or_else(|error| panic!("helper line {:?}: {error}", lines[0]))
    }

    /// HTTP/1.1 GETs of `url` from inside the namespace, one connection each, in order.
    pub fn http_get(&self, url: &str, count: usize, headers: &[(&str, &str)]) -> Vec<HttpResponse> {
        let mut args = vec!["get".to_owned(), url.to_owned(), count.to_string()];
        args.extend(headers.iter().map(|(name, value)| format!("{name}: {value}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helper_run(&args)
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| panic!("helper line {line:?}: {error}"))
            })
            .collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Every process started in it was started by this test (normally already stopped by its
        // own guard); a survivor would keep the namespace alive after its name is gone.
        kill_inside(&self.name);
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn kill_inside(name: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Deletes the namespaces of test processes that are gone (killed before their guards ran).
fn sweep_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("rmr-").and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            kill_inside(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A client and a server namespace, joined by a veth pair.
pub struct Pair {
    pub client: Namespace,
    pub server: Namespace,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

impl Pair {
    /// The subnet is `10.A.B.0/24` with A from the pid and B from a counter: distinct for the tests
    /// of one process, and unlikely to repeat across processes (not that it matters: no namespace
    /// sees another pair's).
    pub fn new() -> Pair {
        let client = Namespace::new("c");
        let server = Namespace::new("s");
        let a = 20 + (std::process::id() % 200) as u8;
        let b = (COUNTER.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let client_ip = Ipv4Addr::new(10, a, b, 1);
        let server_ip = Ipv4Addr::new(10, a, b, 2);
        // Both ends are created inside their namespaces: the host never holds either.
        ip(&[
            "link",
            "add",
            "rmr0",
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            "rmr0",
            "netns",
            server.name(),
        ]);
        for (namespace, address) in [(&client, client_ip), (&server, server_ip)] {
            ip(&["-n", namespace.name(), "addr", "add", &format!("{address}/24"), "dev", "rmr0"]);
            ip(&["-n", namespace.name(), "link", "set", "rmr0", "up"]);
        }
        Pair { client, server, client_ip, server_ip }
    }
}

/// A long-lived process in a namespace: killed on drop; its stdout read line by line.
pub struct Running {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn spawn(what: &str, mut command: Command) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {what} ({command:?}): {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running { what: what.to_owned(), child, lines, seen: Vec::new(), stderr_path, _dir: dir }
    }

    /// A helper server (`echo`, `greet`) inside `namespace`, once it listens.
    pub fn helper(namespace: &Namespace, args: &[&str]) -> Running {
        let mut running = Running::spawn(&format!("helper {args:?}"), namespace.helper(args));
        running.wait_for("its listening line", |line| line.contains(MARKER) && line.contains("listening"));
        running
    }

    /// Waits (at most [`DEADLINE`]) for a stdout line that `matches`, and returns it.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(error) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} never printed {what} ({error:?}; exit status {status:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.what,
                        self.seen.join("\n"),
                        self.stderr()
                    );
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.what, self.stderr());
        }
    }
}

/// A directory every user can read (`tempfile` makes them 0700), for a config the proxy reads as
/// its own unprivileged UID.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// The `remora` binary as an unprivileged user can run it: in place when every directory above it
/// lets others through, otherwise a copy in `dir` (a checkout under /root, say).
pub fn binary_for_others(dir: &Path) -> PathBuf {
    let binary = Path::new(BINARY);
    let reachable = binary.ancestors().skip(1).all(|ancestor| {
        ancestor.as_os_str().is_empty()
            || std::fs::metadata(ancestor).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0)
    });
    let executable = std::fs::metadata(binary).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0);
    if reachable && executable {
        return binary.to_owned();
    }
    let copy = dir.join("remora");
    std::fs::copy(binary, &copy).expect("copy the remora binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod the copy");
    copy
}

/// One HTTP response, as the `get` helper reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn results(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(|line| line.split_once(MARKER).map(|(_, result)| result.to_owned())).collect()
}

/// The helpers, run inside a namespace as `<test binary> --ignored --exact netns_helper` with
/// their arguments (JSON) in `RMR_HELPER_ARGS`. Results go to stdout behind a marker, one per line;
/// a failure panics (the helper exits non-zero with the message on stderr).
///
/// - `echo ADDR`: a TCP echo server (each connection's bytes back, then its end).
/// - `greet ADDR TEXT`: a server that speaks first: writes TEXT on accepting, then waits for the end.
/// - `send-echo ADDR BYTES SEED`: sends BYTES pseudo-random bytes, reads the echo, checks it.
/// - `read ADDR BYTES`: connects, sends nothing, reads BYTES bytes and reports them (a JSON string).
/// - `get URL COUNT [HEADER…]`: COUNT HTTP/1.1 GETs (a connection each), a JSON line per response.
pub fn helper_main() {
    let Ok(args) = std::env::var(HELPER_ARGS) else {
        eprintln!("{HELPER_TEST} is not a test: other tests run it inside a namespace");
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("helper arguments");
    let arg = |index: usize| {
        args.get(index)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("helper {args:?}: argument {index} missing"))
    };
    let number =
        |index: usize| arg(index).parse::<u64>().unwrap_or_else(|_| panic!("helper {args:?}: not a number"));
    match arg(0) {
        "echo" => serve(arg(1), |mut stream| {
            let mut reader = stream.try_clone()?;
            std::io::copy(&mut reader, &mut stream)?;
            stream.shutdown(Shutdown::Write)
        }),
        "greet" => {
            let greeting = arg(2).to_owned();
            serve(arg(1), move |mut stream| {
                stream.write_all(greeting.as_bytes())?;
                // Held open until the client is done: the greeting alone must reach it.
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).map(drop)
            })
        }
        "send-echo" => send_echo(arg(1), number(2) as usize, number(3)),
        "read" => {
            let mut stream = connect(arg(1));
            let mut bytes = vec![0; number(2) as usize];
            stream.read_exact(&mut bytes).expect("read what the server sends first");
            say(&serde_json::to_string(&String::from_utf8_lossy(&bytes)).expect("JSON"));
        }
        "get" => {
            for _ in 0..number(2) {
                let response = http_get(arg(1), &args[3..]);
                say(&serde_json::to_string(&response).expect("JSON"));
            }
        }
        other => panic!("unknown helper {other:?}"),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARKER}{line}");
    let _ = out.flush();
}

/// Accepts connections until killed, each handled on its own thread.
fn serve(addr: &str, handle: impl Fn(TcpStream) -> std::io::Result<()> + Send + Sync + 'static) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|error| panic!("bind {addr}: {error}"));
    say(&format!("listening on {}", listener.local_addr().expect("local address")));
    let handle = std::sync::Arc::new(handle);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(DEADLINE));
        let handle = handle.clone();
        std::thread::spawn(move || {
            if let Err(error) = handle(stream) {
                eprintln!("connection: {error}");
            }
        });
    }
}

fn connect(addr: &str) -> TcpStream {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("not an address: {addr}"));
    let stream = TcpStream::connect_timeout(&target, DEADLINE)
        .unwrap_or_else(|error| panic!("connect {addr}: {error}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    stream
}

fn send_echo(addr: &str, len: usize, seed: u64) {
    let mut payload = vec![0u8; len];
    let mut state = seed | 1;
    for byte in &mut payload {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 24) as u8;
    }
    let stream = connect(addr);
    let mut writer = stream.try_clone().expect("clone the stream");
    let sent = payload.clone();
    let sending = std::thread::spawn(move || {
        writer.write_all(&sent).expect("send the payload");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut echoed = Vec::with_capacity(len);
    (&stream).read_to_end(&mut echoed).expect("read the echo to its end");
    sending.join().expect("sender");
    if echoed != payload {
        let first = echoed.iter().zip(&payload).position(|(a, b)| a != b).unwrap_or(echoed.len().min(len));
        panic!("echo differs: {} bytes back of {len}, first difference at byte {first}", echoed.len());
    }
    say(&format!("echoed {len} bytes"));
}

/// One GET with `Connection: close`, read to the end (chunked bodies decoded).
fn http_get(url: &str, headers: &[String]) -> HttpResponse {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let mut stream = connect(authority);
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read the response to its end");
    let Some(split) = bytes.windows(4).position(|window| window == b"\r\n\r\n") else {
        panic!("no response head from {url}: {:?}", String::from_utf8_lossy(&bytes));
    };
    let head = String::from_utf8_lossy(&bytes[..split]);
    let body = &bytes[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    let status = status.unwrap_or_else(|| panic!("bad status line from {url}: {status_line:?}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_vec()
    };
    HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = rest.windows(2).position(|window| window == b"\r\n") {
        let line = String::from_utf8_lossy(&rest[..end]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16).unwrap_or(0);
        let data = &rest[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        body.extend_from_slice(&data[..size]);
        rest = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
    }
    body
}
