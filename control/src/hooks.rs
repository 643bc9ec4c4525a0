//! Running a node's hooks: the steps of the healing ladder that call out of control (remediate,
//! regenerate, retire). A hook is a command (the input on stdin, the answer on stdout) or a webhook
//! (the input as the POST body, the answer in the response body), configured per node in
//! `[[nodes]] hooks.*` (`remora_config::control_config::Hook`), and it runs under its timeout.
//!
//! A hook is someone else's program, so nothing it does may hang or flood control: its answer is read
//! up to [`MAX_ANSWER_BYTES`], only the tail of its stderr is kept, and a command runs in a process
//! group of its own that is killed whole (SIGKILL) when the timeout passes or the answer overflows, so
//! a grandchild it left behind neither keeps running nor keeps our pipes open. A command that exits
//! (with any status) is not killed: what it started in the background and detached from its stdout and
//! stderr (the demo's regenerate hook starting `v2`) keeps running.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use remora_config::control_config::{Hook, HookTarget};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The most a hook may answer (stdout or response body); more is a [`HookError::BadAnswer`].
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How much of a failed hook's stderr (or error response body) its [`HookError::Failed`] keeps.
const FAILURE_TAIL_BYTES: usize = 2048;
/// The header a webhook learns which hook it is from; commands get [`KIND_ENV`].
pub const KIND_HEADER: &str = "x-remora-hook";
/// The environment variable a command learns which hook it is from.
pub const KIND_ENV: &str = "REMORA_HOOK";

/// Which step of the healing ladder a hook is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    Remediate,
    Regenerate,
    Retire,
}

impl HookKind {
    /// The name in the config (`hooks.remediate`), in `REMORA_HOOK` and in `x-remora-hook`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Remediate => "remediate",
            HookKind::Regenerate => "regenerate",
            HookKind::Retire => "retire",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hook answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The JSON it printed (or sent back); `Value::Null` when it printed nothing.
    pub body: Value,
    /// From the start (spawn or connect) to the answer.
    pub elapsed: Duration,
}

/// Why a hook gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It ran past its timeout: a command's whole process group was killed, a webhook's request
    /// abandoned.
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    /// The command could not be started, the webhook not reached (or its URL is not plain http).
    #[error("cannot start: {0}")]
    Start(String),
    /// The command exited non-zero or was killed by a signal; the webhook answered a non-2xx status.
    #[error("failed: {detail}")]
    Failed { detail: String },
    /// The answer is not UTF-8, not JSON, or larger than [`MAX_ANSWER_BYTES`].
    #[error("unusable answer: {0}")]
    BadAnswer(String),
}

/// Runs `hook` with `input` under its timeout, and logs the run.
pub async fn run(kind: HookKind, hook: &Hook, input: &Value) -> Result<Answer, HookError> {
    let started = Instant::now();
    let timeout = hook.timeout.get();
    // Serializing a `Value` cannot fail: its map keys are strings.
    let input = Bytes::from(serde_json::to_vec(input).unwrap_or_default());
    let outcome = match &hook.target {
        HookTarget::Command(argv) => run_command(kind, argv, timeout, &input).await,
        HookTarget::Url(url) => run_webhook(kind, url, timeout, input).await,
    };
    let elapsed = started.elapsed();
    let target = Described(&hook.target);
    match outcome {
        Ok(body) => {
            tracing::info!(kind = %kind, target = %target, ?elapsed, outcome = "answered", "hook ran");
            Ok(Answer { body, elapsed })
        }
        Err(error) => {
            tracing::warn!(kind = %kind, target = %target, ?elapsed, outcome = %error, "hook ran");
            Err(error)
        }
    }
}

/// What a regenerate hook must answer: the new version and where it serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Regenerated {
    pub version: String,
    /// `HOST:PORT`, as the config writes them (`127.0.0.1:9002`, `payments-v2.internal:80`).
    pub endpoints: Vec<String>,
}

/// The longest version name accepted.
const MAX_VERSION_LEN: usize = 64;
/// The most endpoints a regenerated version may list.
const MAX_ENDPOINTS: usize = 64;

/// Reads a regenerate hook's answer, `{"version": "v2", "endpoints": ["127.0.0.1:9002"]}`; the error
/// names every problem found, `; `-separated. Other keys are ignored, so hooks may say more.
pub fn regenerated(answer: &Value) -> Result<Regenerated, String> {
    let Value::Object(fields) = answer else {
        return Err(format!(
            "the answer is {}, not an object like {{\"version\": \"v2\", \"endpoints\": [\"127.0.0.1:9002\"]}}",
            json_kind(answer)
        ));
    };
    let mut problems = Vec::new();
    let version = match fields.get("version") {
        None => {
            problems.push("\"version\" is missing".to_owned());
            String::new()
        }
        Some(Value::String(version)) => {
            if version.is_empty() {
                problems.push("\"version\" is empty".to_owned());
            } else if version.len() > MAX_VERSION_LEN {
                problems.push(format!("\"version\" is {} bytes, more than {MAX_VERSION_LEN}", version.len()));
            } else if !version
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
            {
                problems
                    .push(format!("\"version\" {version:?} may only hold letters, digits, '.', '_' and '-'"));
            }
            version.clone()
        }
        Some(other) => {
            problems.push(format!("\"version\" is {}, not a string", json_kind(other)));
            String::new()
        }
    };
    let mut endpoints = Vec::new();
    match fields.get("endpoints") {
        None => problems.push("\"endpoints\" is missing".to_owned()),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                problems.push("\"endpoints\" is empty: list at least one HOST:PORT".to_owned());
            } else if items.len() > MAX_ENDPOINTS {
                problems.push(format!("\"endpoints\" lists {}, more than {MAX_ENDPOINTS}", items.len()));
            }
            for (index, item) in items.iter().enumerate() {
                let Value::String(text) = item else {
                    problems.push(format!("endpoints[{index}] is {}, not a string", json_kind(item)));
                    continue;
                };
                match endpoint(text) {
                    Err(problem) => problems.push(format!("endpoints[{index}]: {problem}")),
                    Ok(endpoint) if endpoints.contains(&endpoint) => {
                        problems.push(format!("endpoints[{index}]: {endpoint} is listed twice"))
                    }
                    Ok(endpoint) => endpoints.push(endpoint),
                }
            }
        }
        Some(other) => problems.push(format!("\"endpoints\" is {}, not a list", json_kind(other))),
    }
    if problems.is_empty() {
        Ok(Regenerated { version, endpoints })
    } else {
        Err(problems.join("; "))
    }
}

/// One endpoint as the config writes it, in its standard form.
fn endpoint(text: &str) -> Result<String, String> {
    text.parse::<remora_config::Endpoint>().map(|endpoint| endpoint.to_string())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

async fn run_command(
    kind: HookKind,
    argv: &[String],
    timeout: Duration,
    input: &[u8],
) -> Result<Value, HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Start("the command is empty".to_owned()));
    };
    let mut child = Command::new(program)
        .args(args)
        .env(KIND_ENV, kind.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout kills what it forked too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| HookError::Start(format!("{program:?}: {error}")))?;
    // The group's id is the child's pid (`process_group(0)`); kept now because `Child::id` forgets it
    // once the child is reaped, and the group may outlive its leader.
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill(&mut child, group).await;
        return Err(HookError::Start(format!("{program:?}: its pipes were not set up")));
    };
    let exchange = async {
        let write = async move {
            let mut stdin = stdin;
            // A hook that does not read its input may exit first: a broken pipe is its business.
            if let Err(error) = stdin.write_all(input).await {
                tracing::debug!(%error, "hook did not take all its input");
            }
            // Dropping `stdin` closes it: the hook sees the end of its input.
            Ok::<(), HookError>(())
        };
        let status = async {
            child
                .wait()
                .await
                .map_err(|error| HookError::Failed { detail: format!("waiting for it: {error}") })
        };
        tokio::try_join!(write, read_bounded(stdout), async { Ok(read_tail(stderr).await) }, status)
    };
    let (_, stdout, stderr, status) = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(exchanged)) => exchanged,
        Ok(Err(error)) => {
            // An answer too large (or a pipe unreadable): stop it, or it blocks on a full pipe.
            kill(&mut child, group).await;
            return Err(error);
        }
        Err(_) => {
            kill(&mut child, group).await;
            return Err(HookError::Timeout { after: timeout });
        }
    };
    if !status.success() {
        return Err(HookError::Failed { detail: with_tail(describe(status), "stderr", &stderr) });
    }
    parse_answer(&stdout)
}

/// SIGKILLs the child's whole group, then reaps the child (bounded: a process stuck in the kernel is
/// left to `kill_on_drop` and tokio's reaper).
async fn kill(child: &mut Child, group: Option<Pid>) {
    match group {
        Some(group) => {
            // ESRCH: the group is already gone.
            if let Err(error) = killpg(group, Signal::SIGKILL) {
                tracing::debug!(%error, %group, "killing a hook's process group");
            }
        }
        None => {
            let _ = child.start_kill();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
}

/// Reads `pipe` to its end, refusing more than [`MAX_ANSWER_BYTES`] (and reading no further).
async fn read_bounded(pipe: impl AsyncRead + Unpin) -> Result<Vec<u8>, HookError> {
    let mut answer = Vec::new();
    let limit = u64::try_from(MAX_ANSWER_BYTES).unwrap_or(u64::MAX).saturating_add(1);
    pipe.take(limit)
        .read_to_end(&mut answer)
        .await
        .map_err(|error| HookError::Failed { detail: format!("reading its stdout: {error}") })?;
    if answer.len() > MAX_ANSWER_BYTES {
        return Err(too_large());
    }
    Ok(answer)
}

/// Reads `pipe` to its end (or its first error), keeping the last [`FAILURE_TAIL_BYTES`].
async fn read_tail(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                tail.extend_from_slice(&chunk[..read]);
                if tail.len() > 2 * FAILURE_TAIL_BYTES {
                    tail.drain(..tail.len() - FAILURE_TAIL_BYTES);
                }
            }
        }
    }
    if tail.len() > FAILURE_TAIL_BYTES {
        tail.drain(..tail.len() - FAILURE_TAIL_BYTES);
    }
    tail
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => format!("ended with {status}"),
    }
}

/// `what` plus the end of `output`, if there is any, as text.
fn with_tail(what: String, name: &str, output: &[u8]) -> String {
    let start = output.len().saturating_sub(FAILURE_TAIL_BYTES);
    let tail = String::from_utf8_lossy(&output[start..]);
    let tail = tail.trim();
    if tail.is_empty() {
        what
    } else {
        format!("{what}; {name}: {tail}")
    }
}

fn too_large() -> HookError {
    HookError::BadAnswer(format!("more than {MAX_ANSWER_BYTES} bytes"))
}

fn parse_answer(answer: &[u8]) -> Result<Value, HookError> {
    let text =
        std::str::from_utf8(answer).map_err(|error| HookError::BadAnswer(format!("not UTF-8 ({error})")))?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|error| HookError::BadAnswer(format!("not JSON ({error})")))
}

async fn run_webhook(kind: HookKind, url: &str, timeout: Duration, input: Bytes) -> Result<Value, HookError> {
    let uri: Uri = url.parse().map_err(|error| HookError::Start(format!("{url:?} is not a URL: {error}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(HookError::Start(format!(
                "{url:?}: https is not supported, hooks are called over plain http"
            )))
        }
        _ => return Err(HookError::Start(format!("{url:?} is not an http:// URL"))),
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(KIND_HEADER, kind.as_str())
        .body(Full::new(input))
        .map_err(|error| HookError::Start(format!("{url:?}: {error}")))?;
    // One request per run: no connection is kept for the next.
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(HttpConnector::new());
    let exchange = async {
        let response = client.request(request).await.map_err(|error| {
            let detail = format!("{url:?}: {}", remora_config::error_chain(&error));
            if error.is_connect() {
                HookError::Start(detail)
            } else {
                HookError::Failed { detail }
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
        let body = match body {
            Ok(body) => body.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                if status.is_success() {
                    return Err(too_large());
                }
                Bytes::new()
            }
            Err(error) => {
                return Err(HookError::Failed {
                    detail: format!("{url:?}: HTTP {status}, reading its body: {error}"),
                })
            }
        };
        if !status.is_success() {
            return Err(HookError::Failed { detail: with_tail(format!("HTTP {status}"), "body", &body) });
        }
        Ok(body)
    };
    let body = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HookError::Timeout { after: timeout })??;
    parse_answer(&body)
}

/// A hook's target for the log: the command line, or the URL without credentials or query (where
/// tokens tend to live).
struct Described<'a>(&'a HookTarget);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            HookTarget::Command(argv) => write!(f, "{argv:?}"),
            HookTarget::Url(url) => match url.parse::<Uri>() {
                Ok(uri) => write!(
                    f,
                    "{}://{}{}",
                    uri.scheme_str().unwrap_or("?"),
                    uri.host().unwrap_or(""),
                    uri.port().map(|port| format!(":{port}")).unwrap_or_default(),
                )
                .and_then(|()| f.write_str(uri.path())),
                Err(_) => f.write_str("(not a URL)"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use http::{HeaderMap, Response, StatusCode};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    fn command(argv: &[&str], timeout: Duration) -> Hook {
        Hook {
            target: HookTarget::Command(argv.iter().map(|arg| (*arg).to_owned()).collect()),
            timeout: remora_config::Duration(timeout),
        }
    }

    fn webhook(url: String, timeout: Duration) -> Hook {
        Hook { target: HookTarget::Url(url), timeout: remora_config::Duration(timeout) }
    }

    fn input() -> Value {
        json!({ "node": "payments", "version": "v1", "symptoms": { "success_rate": 0.5 } })
    }

    #[tokio::test]
    async fn a_command_gets_the_input_on_stdin_and_answers_on_stdout() {
        let hook = command(&["sh", "-c", "cat"], Duration::from_secs(10));
        let answer = run(HookKind::Remediate, &hook, &input()).await.expect("answered");
        assert_eq!(answer.body, input());
    }

    #[tokio::test]
    async fn an_input_larger_than_a_pipe_buffer_does_not_deadlock() {
        let large = json!({ "padding": "x".repeat(512 * 1024) });
        let hook = command(&["cat"], Duration::from_secs(10));
        let answer = run(HookKind::Remediate, &hook, &large).await.expect("answered");
        assert_eq!(answer.body, large);
    }

    #[tokio::test]
    async fn a_command_learns_its_kind_from_the_environment() {
        let hook =
            command(&["sh", "-c", r#"printf '{"kind": "%s"}' "$REMORA_HOOK""#], Duration::from_secs(10));
        let answer = run(HookKind::Regenerate, &hook, &input()).await.expect("answered");
        assert_eq!(answer.body, json!({ "kind": "regenerate" }));
    }

    #[tokio::test]
    async fn a_command_that_prints_nothing_answers_null() {
        let hook = command(&["true"], Duration::from_secs(10));
        let answer = run(HookKind::Retire, &hook, &input()).await.expect("answered");
        assert_eq!(answer.body, Value::Null);
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_its_code_and_stderr() {
        let hook = command(&["sh", "-c", "echo 'cannot drop caches' >&2; exit 3"], Duration::from_secs(10));
        match run(HookKind::Remediate, &hook, &input()).await {
            Err(HookError::Failed { detail }) => {
                assert!(detail.contains("code 3"), "{detail}");
                assert!(detail.contains("cannot drop caches"), "{detail}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_the_tail_of_stderr_is_kept() {
        let hook = command(
            &["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a >&2; echo END >&2; exit 1"],
            Duration::from_secs(10),
        );
        match run(HookKind::Remediate, &hook, &input()).await {
            Err(HookError::Failed { detail }) => {
                assert!(detail.ends_with("END"), "{detail}");
                assert!(detail.len() < FAILURE_TAIL_BYTES + 100, "{} bytes", detail.len());
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    /// Whether `pid` is gone, or a zombie nobody has reaped yet (dead all the same).
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the command name, which is in parentheses.
            Ok(stat) => {
                stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            }
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let directory = tempfile::tempdir().expect("temp dir");
        let pid_file = directory.path().join("grandchild.pid");
        let pid_file_arg = pid_file.to_str().expect("UTF-8 path");
        // The background sleep is a grandchild holding our stdout and stderr open.
        let hook = command(
            &["sh", "-c", r#"sleep 30 & echo $! > "$1"; sleep 30"#, "sh", pid_file_arg],
            Duration::from_millis(300),
        );
        let started = Instant::now();
        let outcome = run(HookKind::Regenerate, &hook, &input()).await;
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(
            matches!(outcome, Err(HookError::Timeout { after }) if after == Duration::from_millis(300)),
            "{outcome:?}"
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the hook wrote its grandchild's pid");
        let pid = pid.trim();
        assert!(!pid.is_empty());
        // SIGKILL is delivered asynchronously: give the grandchild a moment to be gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dead(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dead(pid), "grandchild {pid} still runs");
    }

    #[tokio::test]
    async fn a_command_that_closes_stdout_but_keeps_running_times_out() {
        let hook = command(&["sh", "-c", "exec >&- 2>&-; sleep 30"], Duration::from_millis(300));
        let started = Instant::now();
        let outcome = run(HookKind::Remediate, &hook, &input()).await;
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(outcome, Err(HookError::Timeout { .. })), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_command_that_prints_no_json_is_a_bad_answer() {
        let hook = command(&["echo", "v2 is up"], Duration::from_secs(10));
        let outcome = run(HookKind::Regenerate, &hook, &input()).await;
        assert!(
            matches!(&outcome, Err(HookError::BadAnswer(message)) if message.contains("not JSON")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_command_that_prints_no_utf8_is_a_bad_answer() {
        let hook = command(&["printf", "\"\\377\""], Duration::from_secs(10));
        let outcome = run(HookKind::Regenerate, &hook, &input()).await;
        assert!(
            matches!(&outcome, Err(HookError::BadAnswer(message)) if message.contains("UTF-8")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_limit_and_the_command_killed() {
        // `yes` never stops on its own: the run ends because reading stops at 1 MiB and the group is killed.
        let hook = command(&["yes"], Duration::from_secs(10));
        let started = Instant::now();
        let outcome = run(HookKind::Regenerate, &hook, &input()).await;
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(
            matches!(&outcome, Err(HookError::BadAnswer(message)) if message.contains("more than")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_program_cannot_start() {
        let hook = command(&["/nonexistent/remora-hook"], Duration::from_secs(10));
        let outcome = run(HookKind::Retire, &hook, &input()).await;
        assert!(
            matches!(&outcome, Err(HookError::Start(message)) if message.contains("remora-hook")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_command_cannot_start() {
        let hook = command(&[], Duration::from_secs(10));
        assert!(matches!(run(HookKind::Retire, &hook, &input()).await, Err(HookError::Start(_))));
    }

    /// A webhook that records each request's headers and body and answers `status` with `body`.
    async fn serve(
        status: StatusCode,
        body: &'static str,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen_tx = seen_tx.clone();
                    async move {
                        let (parts, request_body) = request.into_parts();
                        let request_body =
                            request_body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                        let _ = seen_tx.send((parts.headers, request_body));
                        let response = Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(body.as_bytes())));
                        Ok::<_, Infallible>(response.expect("response"))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_webhook_gets_the_input_as_a_post_and_answers_in_the_body() {
        let (addr, mut seen) =
            serve(StatusCode::OK, r#"{"version": "v2", "endpoints": ["127.0.0.1:9002"]}"#).await;
        let hook = webhook(format!("http://{addr}/regenerate"), Duration::from_secs(10));
        let answer = run(HookKind::Regenerate, &hook, &input()).await.expect("answered");
        assert_eq!(answer.body, json!({ "version": "v2", "endpoints": ["127.0.0.1:9002"] }));
        let (headers, body) = seen.recv().await.expect("the webhook was called");
        assert_eq!(serde_json::from_slice::<Value>(&body).expect("JSON body"), input());
        assert_eq!(headers[KIND_HEADER], "regenerate");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn a_webhook_that_answers_nothing_answers_null() {
        let (addr, _seen) = serve(StatusCode::NO_CONTENT, "").await;
        let hook = webhook(format!("http://{addr}/retire"), Duration::from_secs(10));
        assert_eq!(run(HookKind::Retire, &hook, &input()).await.expect("answered").body, Value::Null);
    }

    #[tokio::test]
    async fn a_webhook_500_fails_with_its_status_and_body() {
        let (addr, _seen) = serve(StatusCode::INTERNAL_SERVER_ERROR, "cache cluster unreachable").await;
        let hook = webhook(format!("http://{addr}/remediate"), Duration::from_secs(10));
        match run(HookKind::Remediate, &hook, &input()).await {
            Err(HookError::Failed { detail }) => {
                assert!(detail.contains("500"), "{detail}");
                assert!(detail.contains("cache cluster unreachable"), "{detail}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_webhook_that_never_answers_times_out() {
        // Never accepted: the kernel completes the handshake from the backlog, and nobody answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hook = webhook(format!("http://{addr}/remediate"), Duration::from_millis(300));
        let started = Instant::now();
        let outcome = run(HookKind::Remediate, &hook, &input()).await;
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(outcome, Err(HookError::Timeout { .. })), "{outcome:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn a_webhook_nobody_listens_on_cannot_start() {
        // Bound but not listening, for the whole test: the connection is refused, and no other test
        // can take the port meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = socket.local_addr().expect("address");
        let hook = webhook(format!("http://{addr}/remediate"), Duration::from_secs(10));
        let outcome = run(HookKind::Remediate, &hook, &input()).await;
        assert!(
            matches!(&outcome, Err(HookError::Start(message)) if message.contains(&addr.to_string())),
            "{outcome:?}"
        );
        drop(socket);
    }

    #[tokio::test]
    async fn an_https_webhook_cannot_start() {
        let hook = webhook("https://hooks.example/remediate".to_owned(), Duration::from_secs(10));
        let outcome = run(HookKind::Remediate, &hook, &input()).await;
        assert!(
            matches!(&outcome, Err(HookError::Start(message)) if message.contains("https://hooks.example/remediate") && message.contains("https is not supported")),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_log_shows_no_credentials_or_query() {
        let target =
            HookTarget::Url("http://user:secret@127.0.0.1:9001/admin/remediate?token=secret".to_owned());
        assert_eq!(Described(&target).to_string(), "http://127.0.0.1:9001/admin/remediate");
    }

    #[test]
    fn kinds_are_named_as_in_the_config() {
        let names: Vec<String> = [HookKind::Remediate, HookKind::Regenerate, HookKind::Retire]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["remediate", "regenerate", "retire"]);
    }

    #[test]
    fn regenerated_accepts_the_documented_shape() {
        let answer = json!({ "version": "v2", "endpoints": ["127.0.0.1:9002", "Payments-V2.internal:80", "[::1]:9003"], "note": "extra keys are fine" });
        assert_eq!(
            regenerated(&answer),
            Ok(Regenerated {
                version: "v2".to_owned(),
                endpoints: vec![
                    "127.0.0.1:9002".to_owned(),
                    "payments-v2.internal:80".to_owned(),
                    "[::1]:9003".to_owned()
                ],
            })
        );
    }

    /// `answer` is refused with a message that holds every one of `problems`.
    #[track_caller]
    fn refused(answer: Value, problems: &[&str]) {
        let message = regenerated(&answer).expect_err("refused");
        for problem in problems {
            assert!(message.contains(problem), "{message:?} does not name {problem:?}");
        }
    }

    #[test]
    fn regenerated_refuses_each_bad_shape_naming_the_problem() {
        refused(json!(null), &["null, not an object"]);
        refused(json!(["v2"]), &["a list, not an object"]);
        refused(json!({}), &["\"version\" is missing", "\"endpoints\" is missing"]);
        refused(json!({ "version": "", "endpoints": ["127.0.0.1:9002"] }), &["\"version\" is empty"]);
        refused(
            json!({ "version": "v".repeat(65), "endpoints": ["127.0.0.1:9002"] }),
            &["65 bytes, more than 64"],
        );
        refused(
            json!({ "version": "v2 beta", "endpoints": ["127.0.0.1:9002"] }),
            &["\"v2 beta\" may only hold"],
        );
        refused(
            json!({ "version": 2, "endpoints": ["127.0.0.1:9002"] }),
            &["\"version\" is a number, not a string"],
        );
        refused(
            json!({ "version": "v2", "endpoints": "127.0.0.1:9002" }),
            &["\"endpoints\" is a string, not a list"],
        );
        refused(json!({ "version": "v2", "endpoints": [] }), &["\"endpoints\" is empty"]);
        let many: Vec<String> = (1..=65).map(|port| format!("127.0.0.1:{port}")).collect();
        refused(json!({ "version": "v2", "endpoints": many }), &["lists 65, more than 64"]);
        refused(json!({ "version": "v2", "endpoints": [9002] }), &["endpoints[0] is a number, not a string"]);
        refused(
            json!({ "version": "v2", "endpoints": ["127.0.0.1"] }),
            &["endpoints[0]: \"127.0.0.1\" is not an address with a port"],
        );
        refused(
            json!({ "version": "v2", "endpoints": ["127.0.0.1:0"] }),
            &["endpoints[0]: \"127.0.0.1:0\" needs a port other than 0"],
        );
        refused(
            json!({ "version": "v2", "endpoints": ["a:1,b:2"] }),
            &["endpoints[0]: \"a:1,b:2\" is not an address with a port"],
        );
        refused(
            json!({ "version": "v2", "endpoints": [" a:1"] }),
            &["endpoints[0]: \" a:1\" is not an address with a port"],
        );
        refused(
            json!({ "version": "v2", "endpoints": ["a:1", "A:1"] }),
            &["endpoints[1]: a:1 is listed twice"],
        );
        // Every problem at once, not just the first.
        refused(
            json!({ "version": "", "endpoints": ["x", "127.0.0.1:9002", 7] }),
            &["\"version\" is empty", "endpoints[0]", "endpoints[2]"],
        );
    }
}
