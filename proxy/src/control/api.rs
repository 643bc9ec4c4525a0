//! The control API as the proxy calls it: three requests over HTTP/1.1 (hyper-util's pooled client),
//! each with `Authorization: Bearer <token>` and a deadline, each answer sorted into what the caller
//! does next ([`Failure`]).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use remora_config::control::{ApiError, Conflicts, DesiredState, Registered, Registration};

/// Time to open a connection to control.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for a whole request and its answer (but a long-poll's).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a long-poll asks control to hold it; the request gets this plus [`REQUEST_TIMEOUT`].
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// The largest answer read from control (a desired state with many routes stays far below).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a request did not get the answer it wanted, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Control could not be reached or failed (connection refused or reset, a timeout, a 5xx): an
    /// outage. Retry with backoff; control may have restarted, so register again first.
    #[error("{0}")]
    Unreachable(String),
    /// Control does not know this node (it lost its state, or never had it): register again.
    #[error("control does not know the node: {0}")]
    UnknownNode(String),
    /// Control refused the registration: the node's spec conflicts with the map.
    #[error("the registration conflicts with the event/node map")]
    Conflicts(Conflicts),
    /// Control answered and refused (a 4xx), or answered what this proxy cannot read.
    #[error("control answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
}

impl Failure {
    /// A refusal for a missing or wrong token.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Failure::Refused { status: StatusCode::UNAUTHORIZED, .. })
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `[control] token_file`: its content, trimmed; read again after a 401 (the token was rotated).
    File(PathBuf),
    /// `REMORA_CONTROL_TOKEN`.
    Env(String),
    None,
}

/// The proxy's side of the control API.
#[derive(Debug)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port` and any path prefix, without a trailing `/`.
    base: String,
    source: TokenSource,
    authorization: std::sync::Mutex<Option<HeaderValue>>,
}

impl Api {
    /// A client of the control process at `url`; `https://` is refused (not supported yet).
    pub fn new(url: &str, source: TokenSource) -> Result<Self, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "control.url {url:?}: https is not supported yet; use http:// (on a trusted network or \
                 through a local TLS tunnel)"
            ));
        }
        let base = url.trim_end_matches('/').to_owned();
        http::Uri::try_from(format!("{base}/v1/nodes"))
            .map_err(|error| format!("control.url {url:?} is not a URL: {error}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let api = Self { client, base, source, authorization: std::sync::Mutex::new(None) };
        api.reload_token();
        Ok(api)
    }

    /// Reads the token again (at start, and after control answered 401). An unreadable token file
    /// is logged; requests then go without a token and control refuses them.
    pub fn reload_token(&self) {
        let token = match &self.source {
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_owned()),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot read control.token_file");
                    None
                }
            },
            TokenSource::Env(token) => Some(token.trim().to_owned()),
            TokenSource::None => None,
        };
        let header = token.filter(|token| !token.is_empty()).and_then(|token| {
            let header = HeaderValue::try_from(format!("Bearer {token}")).ok();
            if header.is_none() {
                tracing::error!("the control token holds characters a header cannot carry");
            }
            header.map(|mut header| {
                header.set_sensitive(true);
                header
            })
        });
        *self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = header;
    }

    /// `POST /v1/nodes`: registers (or registers again: it is idempotent) this proxy's node.
    pub async fn register(&self, registration: &Registration) -> Result<Registered, Failure> {
        let body = serde_json::to_vec(registration).map_err(|error| Failure::Refused {
            status: StatusCode::BAD_REQUEST,
            message: format!("the registration cannot be written as JSON: {error}"),
        })?;
        let (status, answer) = self.send(Method::POST, "/v1/nodes", body, REQUEST_TIMEOUT).await?;
        match status {
            StatusCode::OK => parse(status, &answer),
            StatusCode::CONFLICT => Err(Failure::Conflicts(parse(status, &answer)?)),
            status => Err(refusal(status, &answer, false)),
        }
    }

    /// `POST /v1/reports` with a report's JSON. A report control already has (a duplicate sequence,
    /// after an answer that was lost) is refused like any other bad report: either way it is done.
    pub async fn report(&self, report: Bytes) -> Result<(), Failure> {
        let (status, answer) = self.send(Method::POST, "/v1/reports", report, REQUEST_TIMEOUT).await?;
        match status {
            status if status.is_success() => Ok(()),
            status => Err(refusal(status, &answer, false)),
        }
    }

    /// `GET /v1/nodes/{node}/desired?after=REV&wait_ms=…`: the node's desired state when control has
    /// a revision newer than `after`, at once or as soon as one comes within `wait`; `None` when none
    /// came.
    pub async fn desired(
        &self,
        node: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<DesiredState>, Failure> {
        let path = format!("/v1/nodes/{node}/desired?after={after}&wait_ms={}", wait.as_millis());
        let (status, answer) = self.send(Method::GET, &path, Bytes::new(), wait + REQUEST_TIMEOUT).await?;
        match status {
            StatusCode::OK => parse(status, &answer).map(Some),
            StatusCode::NO_CONTENT => Ok(None),
            // The path names the node: a 404 means control does not know it.
            status => Err(refusal(status, &answer, status == StatusCode::NOT_FOUND)),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(USER_AGENT, concat!("remora-proxy/", env!("CARGO_PKG_VERSION")))
            .header(CONTENT_TYPE, "application/json");
        let authorization =
            self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request.body(Full::new(body.into())).map_err(|error| Failure::Refused {
            status: StatusCode::BAD_REQUEST,
            message: format!("cannot build the request: {error}"),
        })?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|error| remora_config::error_chain(&error))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading control's answer: {error}"))?
                .to_bytes();
            Ok::<_, String>((status, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(Failure::Unreachable(format!("no answer from control within {timeout:?}"))),
            Ok(Err(error)) => Err(Failure::Unreachable(error)),
            Ok(Ok((status, answer))) if status.is_server_error() => {
                let message = serde_json::from_slice::<ApiError>(&answer)
                    .map(|error| error.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&answer).trim().to_owned());
                Err(Failure::Unreachable(format!("control answered {status}: {message}")))
            }
            Ok(Ok(answer)) => Ok(answer),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(status: StatusCode, answer: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(answer).map_err(|error| Failure::Refused {
        status,
        message: format!("an answer this proxy cannot read ({error}): is control another version?"),
    })
}

/// A 4xx as a failure: one that says control does not know the node (as the report answer does, or any
/// 404 on a path that names the node) asks for a registration.
fn refusal(status: StatusCode, answer: &[u8], names_node: bool) -> Failure {
    let (message, details) = match serde_json::from_slice::<ApiError>(answer) {
        Ok(error) => (error.error, error.details),
        Err(_) => (String::from_utf8_lossy(answer).trim().to_owned(), Vec::new()),
    };
    let unknown = message.contains("unknown node");
    if (status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND) && (unknown || names_node) {
        return Failure::UnknownNode(message);
    }
    let message = if details.is_empty() { message } else { format!("{message} ({})", details.join("; ")) };
    Failure::Refused { status, message }
}
