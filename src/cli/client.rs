//! The control API client behind `remora status`, `nodes`, `map` and `events`: builds URLs under the
//! `--control` base, sends the bearer token, and turns every way a request can fail into an [`Error`]
//! whose text tells the user what to do.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use remora_config::control::ApiError;

/// The most a JSON or dot answer may weigh; a larger one is refused, not buffered.
const MAX_BODY: usize = 16 << 20;
/// How long one request (not a stream) may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a command could not show what was asked. Display text is what the user reads on stderr.
#[derive(Debug)]
pub enum Error {
    /// A flag or the environment is wrong (the control URL, the token file).
    Usage(String),
    /// No connection: nothing listens, the host is unknown, the connect timed out.
    Unreachable { control: String, reason: String },
    /// Connected, but no whole answer in time.
    TimedOut { control: String, after: Duration },
    /// The connection broke in the middle of an answer.
    Dropped { control: String, reason: String },
    /// 401: no token, or not the right one.
    Unauthorized { message: String, token_given: bool },
    /// 404, with the API's message (`unknown node "x"`).
    NotFound { message: String },
    /// Any other status that is not a success.
    Refused { status: StatusCode, message: String },
    /// A success whose body is not what the command expects.
    Unexpected { url: String, expected: &'static str, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => f.write_str(message),
            Self::Unreachable { control, reason } => {
                write!(f, "cannot reach control at {control}: {reason} — is `remora control` running?")
            }
            Self::TimedOut { control, after } => {
                write!(f, "control at {control} did not answer within {}s", after.as_secs())
            }
            Self::Dropped { control, reason } => {
                write!(f, "control at {control} broke the connection in the middle of its answer: {reason}")
            }
            Self::Unauthorized { message, token_given: true } => {
                write!(f, "control refused the token (401): {message}")
            }
            Self::Unauthorized { message, token_given: false } => write!(
                f,
                "control refused the token (401): {message} (no token was given: use --token or \
                 --token-file, or set REMORA_CONTROL_TOKEN)"
            ),
            Self::NotFound { message } => write!(f, "not found (404): {message}"),
            Self::Refused { status, message } => write!(f, "control answered {status}: {message}"),
            Self::Unexpected { url, expected, detail } => {
                write!(f, "unexpected answer from {url}: expected {expected}, but {detail}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The control API at one base URL, with the token to present.
pub struct Control {
    /// `http://host:port` plus any path prefix, without a trailing slash.
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Control {
    /// `url` is `http://host:port` with an optional path prefix; `host:port` alone means http.
    /// Must be called inside a Tokio runtime (the client spawns its connections there).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, Error> {
        let base = base_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // A stream that goes quiet stays open as long as the peer answers keep-alive probes; a peer
        // that vanished (no FIN) is noticed within about a minute and `--follow` reconnects.
        connector.set_keepalive(Some(Duration::from_secs(30)));
        connector.set_keepalive_interval(Some(Duration::from_secs(10)));
        connector.set_keepalive_retries(Some(3));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { base, token, client })
    }

    /// The base URL as messages show it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` is a list of segments (each percent-encoded here), `query` a list of pairs.
    pub fn url(&self, path: &[&str], query: &[(&str, &str)]) -> String {
        url(&self.base, path, query)
    }

    /// Sends `GET url`. A status other than 2xx becomes its [`Error`]; the caller reads the body.
    pub async fn get(
        &self,
        url: &str,
        accept: &str,
        last_event_id: Option<&str>,
    ) -> Result<Response<Incoming>, Error> {
        self.send(Method::GET, url, accept, last_event_id, None).await
    }

    /// `POST url` with a JSON body, and the JSON answer, within [`REQUEST_TIMEOUT`].
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        expected: &'static str,
    ) -> Result<serde_json::Value, Error> {
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let exchange = async {
            let response = self.send(Method::POST, url, "application/json", None, Some(body)).await?;
            read_body(response.into_body())
                .await
                .map_err(|reason| Error::Dropped { control: self.base.clone(), reason })
        };
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::TimedOut { control: self.base.clone(), after: REQUEST_TIMEOUT }),
        };
        serde_json::from_slice(&body).map_err(|error| Error::Unexpected {
            url: url.to_owned(),
            expected,
            detail: format!("the body is not JSON ({error}): {}", excerpt(&body)),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        last_event_id: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, Error> {
        let uri: Uri = url.parse().map_err(|error| Error::Usage(format!("invalid URL {url}: {error}")))?;
        let mut request = Request::builder().method(method).uri(uri).header(ACCEPT, accept);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                Error::Usage("the token contains characters a header cannot carry".to_owned())
            })?;
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(id) = last_event_id {
            let value = HeaderValue::try_from(id)
                .map_err(|_| Error::Usage(format!("the event id {id:?} cannot be sent back in a header")))?;
            request = request.header("last-event-id", value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| Error::Usage(format!("cannot build a request: {error}")))?;
        let response = self.client.request(request).await.map_err(|error| self.request_failed(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = match read_body(response.into_body()).await {
            Ok(body) => body,
            Err(reason) => Bytes::from(reason),
        };
        Err(refusal(status, &body, self.token.is_some()))
    }

    /// `GET url` and its whole body, within [`REQUEST_TIMEOUT`].
    pub async fn fetch(&self, url: &str, accept: &str) -> Result<Bytes, Error> {
        let exchange = async {
            let response = self.get(url, accept, None).await?;
            read_body(response.into_body())
                .await
                .map_err(|reason| Error::Dropped { control: self.base.clone(), reason })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::TimedOut { control: self.base.clone(), after: REQUEST_TIMEOUT }),
        }
    }

    /// `GET url` as JSON: the value as sent (for `--json`), checked to be JSON at all.
    pub async fn fetch_json(&self, url: &str, expected: &'static str) -> Result<serde_json::Value, Error> {
        let body = self.fetch(url, "application/json").await?;
        serde_json::from_slice(&body).map_err(|error| Error::Unexpected {
            url: url.to_owned(),
            expected,
            detail: format!("the body is not JSON ({error}): {}", excerpt(&body)),
        })
    }

    fn request_failed(&self, error: &hyper_util::client::legacy::Error) -> Error {
        let reason = cause(error);
        if error.is_connect() {
            Error::Unreachable { control: self.base.clone(), reason }
        } else {
            Error::Dropped { control: self.base.clone(), reason }
        }
    }
}

/// Reads `value` (JSON from `url`) as a `T`; says what was expected when it is not one.
pub fn decode<T: serde::de::DeserializeOwned>(
    url: &str,
    expected: &'static str,
    value: serde_json::Value,
) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|error| Error::Unexpected {
        url: url.to_owned(),
        expected,
        detail: format!("it does not fit: {error}"),
    })
}

async fn read_body(body: Incoming) -> Result<Bytes, String> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(error.to_string()),
    }
}

/// A non-2xx answer as an [`Error`], with the API's message when the body is an [`ApiError`].
pub fn refusal(status: StatusCode, body: &[u8], token_given: bool) -> Error {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(api) if api.details.is_empty() => api.error,
        Ok(api) => format!("{}: {}", api.error, api.details.join("; ")),
        // Another JSON shape with an `error` (a 409's `Conflicts`): its name at least.
        Err(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) if value.get("error").is_some_and(serde_json::Value::is_string) => {
                value["error"].as_str().unwrap_or_default().to_owned()
            }
            _ if body.iter().all(u8::is_ascii_whitespace) => {
                status.canonical_reason().unwrap_or("no reason given").to_owned()
            }
            _ => excerpt(body),
        },
    };
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { message, token_given },
        StatusCode::NOT_FOUND => Error::NotFound { message },
        _ => Error::Refused { status, message },
    }
}

/// The start of a body, for a message: one line, at most 200 characters.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "the body is empty".to_owned();
    }
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = line.chars().take(200).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// The deepest cause, in words: "connection refused" rather than hyper's "client error (Connect)".
pub fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        match current.source() {
            Some(source) => current = source,
            None => return current.to_string(),
        }
    }
}

/// Checks and normalizes `--control`.
pub fn base_url(url: &str) -> Result<String, Error> {
    let url = url.trim();
    let with_scheme = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|error| Error::Usage(format!("--control {url:?} is not a URL: {error}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(Error::Usage(format!("--control {url:?}: only http:// is supported, not {other}://")))
        }
        None => return Err(Error::Usage(format!("--control {url:?} is not a URL"))),
    }
    let Some(authority) = uri.authority() else {
        return Err(Error::Usage(format!("--control {url:?} has no host")));
    };
    if uri.query().is_some() {
        return Err(Error::Usage(format!("--control {url:?}: a base URL takes no query")));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// `base` + `/segment/…` + `?key=value&…`, each part percent-encoded.
pub fn url(base: &str, path: &[&str], query: &[(&str, &str)]) -> String {
    let mut url = base.to_owned();
    for segment in path {
        url.push('/');
        url.push_str(&encode(segment));
    }
    for (index, (key, value)) in query.iter().enumerate() {
        url.push(if index == 0 { '?' } else { '&' });
        url.push_str(&encode(key));
        url.push('=');
        url.push_str(&encode(value));
    }
    url
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::StatusCode;

    use super::{base_url, cause, refusal, url, Error};

    #[test]
    fn base_urls_are_checked_and_normalized() {
        let ok = |url: &str| base_url(url).map_err(|error| error.to_string());
        assert_eq!(ok("http://127.0.0.1:9900"), Ok("http://127.0.0.1:9900".to_owned()));
        assert_eq!(ok("http://127.0.0.1:9900/"), Ok("http://127.0.0.1:9900".to_owned()));
        assert_eq!(ok(" 127.0.0.1:9900 "), Ok("http://127.0.0.1:9900".to_owned()));
        assert_eq!(ok("http://control.internal/remora/"), Ok("http://control.internal/remora".to_owned()));
        assert_eq!(
            ok("https://control:9900"),
            Err("--control \"https://control:9900\": only http:// is supported, not https://".to_owned())
        );
        assert_eq!(
            ok("http://c:9900/?x=1"),
            Err("--control \"http://c:9900/?x=1\": a base URL takes no query".to_owned())
        );
        assert!(ok("http://").is_err());
        assert!(ok("not a url").is_err());
    }

    #[test]
    fn paths_and_queries_are_percent_encoded() {
        let base = "http://127.0.0.1:9900";
        assert_eq!(url(base, &["v1", "nodes"], &[]), "http://127.0.0.1:9900/v1/nodes");
        assert_eq!(
            url(base, &["v1", "nodes", "pay ments/v1?"], &[]),
            "http://127.0.0.1:9900/v1/nodes/pay%20ments%2Fv1%3F"
        );
        assert_eq!(
            url(base, &["v1", "journal"], &[("after", "12"), ("limit", "50")]),
            "http://127.0.0.1:9900/v1/journal?after=12&limit=50"
        );
        assert_eq!(
            url("http://c/prefix", &["v1", "map"], &[("format", "dot")]),
            "http://c/prefix/v1/map?format=dot"
        );
        assert_eq!(url(base, &["v1", "nodes", "é&="], &[]), "http://127.0.0.1:9900/v1/nodes/%C3%A9%26%3D");
    }

    #[test]
    fn refusals_carry_the_api_message() {
        let body = br#"{"error":"bad token"}"#;
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, body, true).to_string(),
            "control refused the token (401): bad token"
        );
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, body, false).to_string(),
            "control refused the token (401): bad token (no token was given: use --token or --token-file, \
             or set REMORA_CONTROL_TOKEN)"
        );
        let body = br#"{"error":"unknown node \"nope\""}"#;
        assert_eq!(
            refusal(StatusCode::NOT_FOUND, body, true).to_string(),
            "not found (404): unknown node \"nope\""
        );
        let body = br#"{"error":"invalid registration","details":["publishes[0]: bad","version: empty"]}"#;
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, body, true).to_string(),
            "control answered 400 Bad Request: invalid registration: publishes[0]: bad; version: empty"
        );
        let body = br#"{"error":"conflicts","conflicts":[],"warnings":[]}"#;
        assert_eq!(
            refusal(StatusCode::CONFLICT, body, true).to_string(),
            "control answered 409 Conflict: conflicts"
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, b"<html>upstream\n down</html>", true).to_string(),
            "control answered 502 Bad Gateway: \"<html>upstream down</html>\""
        );
        assert_eq!(
            refusal(StatusCode::SERVICE_UNAVAILABLE, b"", true).to_string(),
            "control answered 503 Service Unavailable: Service Unavailable"
        );
    }

    #[test]
    fn other_errors_say_what_happened_and_what_to_do() {
        let unreachable = Error::Unreachable {
            control: "http://127.0.0.1:9".to_owned(),
            reason: "connection refused".to_owned(),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach control at http://127.0.0.1:9: connection refused — is `remora control` running?"
        );
        let timed_out = Error::TimedOut { control: "http://c:1".to_owned(), after: Duration::from_secs(15) };
        assert_eq!(timed_out.to_string(), "control at http://c:1 did not answer within 15s");
        let unexpected = Error::Unexpected {
            url: "http://c:1/v1/nodes".to_owned(),
            expected: "a list of nodes (JSON)",
            detail: "the body is not JSON (expected value at line 1 column 1): \"hello\"".to_owned(),
        };
        assert_eq!(
            unexpected.to_string(),
            "unexpected answer from http://c:1/v1/nodes: expected a list of nodes (JSON), but the body is not \
             JSON (expected value at line 1 column 1): \"hello\""
        );
    }

    #[test]
    fn the_cause_is_the_innermost_io_error_in_words() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(cause(&refused), "connection refused");
        let other = Outer(std::io::Error::other("dns error: no such host"));
        assert_eq!(cause(&other), "dns error: no such host");
    }
}
