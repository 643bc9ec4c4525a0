//! Upstream servers on `127.0.0.1:0`, living in the test process.
//!
//! The echo server answers every request with what it saw, in a JSON response header `x-echo`
//! (method, URI, HTTP version, every header) and `x-upstream: LABEL` (which upstream answered), and
//! streams the request body back as the response body (request trailers become response trailers).
//! A request may steer it: `x-echo-status: 201` sets the status, and each
//! `x-echo-reply-header: NAME=VALUE` adds a response header.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::{boxed, Body};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 and h2c prior knowledge on one port.
    Auto,
    H1,
    /// h2c prior knowledge only: an HTTP/1 request is a protocol error.
    H2,
}

pub struct Upstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Serves `handler` on a fresh port. Dropping the upstream closes the port and every connection.
    pub async fn start<H, F>(proto: Proto, handler: H) -> Upstream
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let requests = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let counter = requests.clone();
        Self::raw_counted(requests, move |tcp| {
            let handler = handler.clone();
            let counter = counter.clone();
            async move {
                let service = service_fn(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let io = TokioIo::new(tcp);
                // A connection ending in an error (the proxy reset it) is part of some tests.
                let _ = match proto {
                    Proto::H1 => hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await
                        .map_err(super::BoxError::from),
                    Proto::H2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                        .map_err(super::BoxError::from),
                    Proto::Auto => {
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(io, service)
                            .await
                    }
                };
            }
        })
        .await
    }

    /// A raw TCP upstream: `handler` gets each accepted connection.
    pub async fn raw<H, F>(handler: H) -> Upstream
    where
        H: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Self::raw_counted(Arc::new(AtomicUsize::new(0)), handler).await
    }

    async fn raw_counted<H, F>(requests: Arc<AtomicUsize>, handler: H) -> Upstream
    where
        H: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream address");
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let accept = tokio::spawn(async move {
            // Owned here so that aborting this task aborts every connection too.
            let mut tasks = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                accepted.fetch_add(1, Ordering::SeqCst);
                tasks.spawn(handler(tcp));
                while tasks.try_join_next().is_some() {}
            }
        });
        Upstream { addr, connections, requests, accept }
    }

    /// An echo server (see the module docs) speaking HTTP/1.1 and h2c.
    pub async fn echo(label: &str) -> Upstream {
        Self::echo_with(Proto::Auto, label).await
    }

    pub async fn echo_with(proto: Proto, label: &str) -> Upstream {
        let label = label.to_owned();
        Self::start(proto, move |request| {
            let response = echo_response(&label, request);
            async move { response }
        })
        .await
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests handled so far (hyper upstreams only).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The echo server's answer to `request`.
pub fn echo_response(label: &str, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(name, value)| serde_json::json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())]))
        .collect();
    let seen = serde_json::json!({
        "upstream": label,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
    });
    let mut response = Response::new(boxed(body));
    if let Some(status) = parts.headers.get("x-echo-status") {
        let code: u16 = status.to_str().ok().and_then(|text| text.parse().ok()).unwrap_or(500);
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let out = response.headers_mut();
    out.insert("x-upstream", HeaderValue::from_str(label).expect("label is a header value"));
    out.insert("x-echo", HeaderValue::from_bytes(seen.to_string().as_bytes()).expect("JSON header value"));
    for extra in parts.headers.get_all("x-echo-reply-header") {
        let text = extra.to_str().expect("x-echo-reply-header is ASCII");
        let (name, value) = text.split_once('=').expect("x-echo-reply-header is NAME=VALUE");
        out.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    response
}

/// What the echo server saw, read back from a response.
#[derive(Debug, Clone)]
pub struct Seen {
    pub upstream: String,
    pub method: String,
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Panics, showing the response head, if it did not come from an echo server.
    pub fn of<B>(response: &Response<B>) -> Seen {
        let Some(echo) = response.headers().get("x-echo") else {
            panic!(
                "the response did not come from the echo upstream: status {}, headers {:?}",
                response.status(),
                response.headers()
            );
        };
        let value: serde_json::Value = serde_json::from_slice(echo.as_bytes()).expect("x-echo is JSON");
        let text = |key: &str| value[key].as_str().expect("x-echo field").to_owned();
        let headers = value["headers"]
            .as_array()
            .expect("x-echo headers")
            .iter()
            .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].as_str().unwrap().to_owned()))
            .collect();
        Seen {
            upstream: text("upstream"),
            method: text("method"),
            uri: text("uri"),
            version: text("version"),
            headers,
        }
    }

    /// Path and query, whatever form the request target had.
    pub fn path(&self) -> String {
        let uri: http::Uri = self.uri.parse().expect("URI");
        uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// A gate that tests open once; every waiter, before or after, passes then.
#[derive(Clone)]
pub struct Gate {
    sender: Arc<watch::Sender<bool>>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate { sender: Arc::new(watch::channel(false).0) }
    }

    pub fn open(&self) {
        self.sender.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        let _ = receiver.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// An address with nothing listening: a socket bound to a port on 127.0.0.1 but never listening, and
/// kept for the rest of the test process, so that connections are refused and no other test (they run
/// in parallel) can take the port meanwhile.
pub fn dead_addr() -> SocketAddr {
    use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    static HELD: std::sync::Mutex<Vec<std::os::fd::OwnedFd>> = std::sync::Mutex::new(Vec::new());
    let socket = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    let any_port = SockaddrIn::new(127, 0, 0, 1, 0);
    bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &any_port).expect("bind 127.0.0.1:0");
    let bound: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&socket)).expect("getsockname");
    HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(socket);
    SocketAddr::from((std::net::Ipv4Addr::new(127, 0, 0, 1), bound.port()))
}

/// Reads from a raw upstream connection until the end of a request head; returns the head.
pub async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match tcp.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    head
}
