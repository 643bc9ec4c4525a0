//! A minimal WebDriver client: Debian's headless Chromium driven through `chromedriver`, for tests of
//! pages the proxy serves.
//!
//! `chromedriver` runs in its own process group with Chromium under it, so dropping the [`Browser`]
//! kills both with one signal. Every command goes through [`within`], and every wait has a deadline.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, Request};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::client::{h1_client, PooledClient};
use super::{empty, full, read_body, within};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long [`Browser::start`] waits for `chromedriver` and [`Browser::wait_for`] for a condition.
pub const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// How much of the page's text a failed [`Browser::wait_for`] shows.
const PAGE_TEXT_LIMIT: usize = 4096;
/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session. Killed, with its `chromedriver`, on drop.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`, the prefix of every command of the session.
    session: String,
    base: String,
    client: PooledClient,
    /// Console messages of level SEVERE read so far: reading the log on the driver empties it.
    severe: Mutex<Vec<String>>,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free 127.0.0.1 port (own process group) and a headless Chromium
    /// session. Panics, naming the binary, when Chromium or `chromedriver` is not installed.
    pub async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: browser tests need `apt-get install -y chromium chromium-driver`"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port for chromedriver")
            .port();
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let log = File::create(profile.path().join("chromedriver.log")).expect("chromedriver log file");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("chromedriver log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {CHROMEDRIVER}: {error}"));
        let base = format!("http://127.0.0.1:{port}");
        // From here on, a panic drops the browser, which kills the driver.
        let mut browser = Browser {
            driver,
            session: String::new(),
            base,
            client: h1_client(),
            severe: Mutex::new(Vec::new()),
            profile,
        };
        browser.wait_until_ready().await;
        browser.session = browser.new_session().await;
        browser
    }

    /// Polls `GET /status` until `value.ready` is true, failing if the driver exits or is not ready in
    /// time.
    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        let url = format!("{}/status", self.base);
        loop {
            let status = self.send(Method::GET, &url, None);
            if let Ok(Ok(value)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                if value["ready"] == true {
                    return;
                }
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited ({status}) before it was ready\n{}", self.driver_log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on {} was not ready within {DEADLINE:?} (port taken?)\n{}",
                self.base,
                self.driver_log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn new_session(&self) -> String {
        let user_data_dir = format!("--user-data-dir={}", self.profile.path().join("chromium").display());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &user_data_dir,
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let url = format!("{}/session", self.base);
        match self.send(Method::POST, &url, Some(&capabilities)).await {
            Ok(value) => match value["sessionId"].as_str() {
                Some(id) => format!("{url}/{id}"),
                None => panic!("new session without a sessionId: {value}"),
            },
            Err(error) => panic!("chromedriver could not start Chromium: {error}\n{}", self.driver_log()),
        }
    }

    /// Navigates to `url`; returns when the navigation command returns (the page's load event).
    pub async fn open(&self, url: &str) {
        if let Err(error) = self.command(Method::POST, "/url", Some(&json!({ "url": url }))).await {
            panic!("open {url}: {error}");
        }
    }

    /// Runs `script`, a function body (`return …;` gives the value), and returns its JSON value.
    /// Panics on a WebDriver error (a thrown exception, say), showing it.
    pub async fn eval(&self, script: &str) -> Value {
        self.execute(script, &[]).await.unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Polls `script` every 50 ms until it returns a truthy value (not null, false, 0 or ""), and
    /// returns that value. A script that throws counts as not yet true. After [`DEADLINE`] it panics
    /// with `what`, the last error if any, and the text of the page.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last_error = match self.execute(script, &[]).await {
                Ok(value) if is_truthy(&value) => return value,
                Ok(_) => None,
                Err(error) => Some(error),
            };
            if Instant::now() >= deadline {
                let mut page =
                    match self.execute("return document.body ? document.body.innerText : '';", &[]).await {
                        Ok(Value::String(text)) => text,
                        other => format!("(none: {other:?})"),
                    };
                if page.len() > PAGE_TEXT_LIMIT {
                    let cut = (0..=PAGE_TEXT_LIMIT).rev().find(|&at| page.is_char_boundary(at)).unwrap_or(0);
                    page.truncate(cut);
                    page.push_str(" […]");
                }
                let error = last_error.map(|error| format!("\nlast error: {error}")).unwrap_or_default();
                panic!("timed out after {DEADLINE:?} waiting for {what}{error}\n--- page text ---\n{page}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The `innerText` of the first element matching the CSS `selector`, or "" when there is none.
    pub async fn text(&self, selector: &str) -> String {
        let script =
            "const element = document.querySelector(arguments[0]); return element ? element.innerText : '';";
        match self.execute(script, &[json!(selector)]).await {
            Ok(Value::String(text)) => text,
            Ok(other) => panic!("innerText of {selector:?} is not a string: {other}"),
            Err(error) => panic!("text of {selector:?}: {error}"),
        }
    }

    /// Clicks the first element matching the CSS `selector`; panics if there is none.
    pub async fn click(&self, selector: &str) {
        let find = json!({"using": "css selector", "value": selector});
        let found = match self.command(Method::POST, "/element", Some(&find)).await {
            Ok(found) => found,
            Err(error) => panic!("click {selector:?}: {error}"),
        };
        let Some(element) = found[ELEMENT].as_str() else {
            panic!("click {selector:?}: no element in {found}")
        };
        if let Err(error) =
            self.command(Method::POST, &format!("/element/{element}/click"), Some(&json!({}))).await
        {
            panic!("click {selector:?}: {error}");
        }
    }

    /// The console messages of level SEVERE (uncaught exceptions, `console.error`, failed loads) since
    /// the session started; empty if the driver does not offer the log. The browser's own request for
    /// `/favicon.ico` is left out: a page without an icon has no error.
    pub async fn severe_logs(&self) -> Vec<String> {
        let read = self.command(Method::POST, "/se/log", Some(&json!({"type": "browser"}))).await;
        let mut severe = self.severe.lock().expect("severe log lock");
        if let Ok(Value::Array(entries)) = read {
            let messages = entries
                .iter()
                .filter(|entry| entry["level"] == "SEVERE")
                .filter_map(|entry| entry["message"].as_str())
                .filter(|message| !message.contains("/favicon.ico - Failed to load resource"));
            severe.extend(messages.map(str::to_owned));
        }
        severe.clone()
    }

    async fn execute(&self, script: &str, args: &[Value]) -> Result<Value, String> {
        self.command(Method::POST, "/execute/sync", Some(&json!({"script": script, "args": args}))).await
    }

    /// Sends a command of the session (`path` after `/session/ID`).
    async fn command(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        within(&format!("WebDriver {method} {path}"), self.send(method.clone(), &url, body)).await
    }

    /// Sends one request to the driver and returns the response's `value`, or the WebDriver error as
    /// `error: message` (without the stack trace, which holds only addresses).
    async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Value, String> {
        let request = Request::builder().method(method).uri(url).header("content-type", "application/json");
        let request = match body {
            Some(body) => request.body(full(body.to_string())),
            None => request.body(empty()),
        };
        let response = self
            .client
            .request(request.expect("WebDriver request"))
            .await
            .map_err(|error| error.to_string())?;
        let bytes = read_body("a WebDriver response", response.into_body()).await;
        let mut answer: Value = serde_json::from_slice(&bytes)
            .map_err(|error| format!("not JSON ({error}): {}", String::from_utf8_lossy(&bytes)))?;
        let value = answer["value"].take();
        match value["error"].as_str() {
            Some(error) => match value["message"].as_str().unwrap_or_default() {
                message if message.starts_with(error) => Err(message.to_owned()),
                message => Err(format!("{error}: {message}")),
            },
            None => Ok(value),
        }
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default();
        format!("--- chromedriver log ---\n{log}")
    }
}

impl Drop for Browser {
    /// Kills `chromedriver` and Chromium (one process group) and reaps the driver. Chromium's crash
    /// handlers, which live in process groups of their own, exit when the browser is gone.
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.driver.id() as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// JavaScript's truthiness for a JSON value.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|number| number != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
