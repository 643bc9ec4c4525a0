//! Step 7 of a request's way: the pooled upstream client of an endpoint, and the request as the
//! upstream sees it.
//!
//! Each endpoint has its own hyper client, whose connector always dials that endpoint. The pool is
//! therefore per endpoint (what balancing, ejection and connection limits key on), and the request URI
//! is free to carry the authority the upstream must see: the endpoint for HTTP/1.1 (which sends
//! origin-form with the client's `Host`), the client's authority for HTTP/2 (`:authority`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use remora_config as config;
use tokio::net::TcpStream;

use crate::cluster::Endpoint;
use crate::error::ErrorKind;

pub type UpstreamClient = Client<Connector, Incoming>;

/// Builds the client of one endpoint with the cluster's protocol and timeouts.
pub fn client(cluster: &config::Cluster, endpoint: &config::Endpoint) -> UpstreamClient {
    let connector =
        Connector { endpoint: Arc::new(endpoint.clone()), connect_timeout: cluster.connect_timeout.get() };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cluster.idle_timeout.get())
        // The Host header is always set by the proxy (HTTP/1.1) or moved into :authority (HTTP/2).
        .set_host(false)
        // A request whose pooled connection turned out closed before it was written is sent again on
        // a new one: nothing reached the upstream, so this is safe for every method.
        .retry_canceled_requests(true);
    if cluster.protocol == config::UpstreamProtocol::Http2 {
        builder.http2_only(true).http2_adaptive_window(true);
    }
    builder.build(connector)
}

/// Dials one endpoint, whatever URI the client asks for.
#[derive(Clone, Debug)]
pub struct Connector {
    endpoint: Arc<config::Endpoint>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let endpoint = self.endpoint.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match endpoint.socket_addr {
                    Some(addr) => TcpStream::connect(addr).await,
                    None => TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await,
                }
            };
            let stream = tokio::time::timeout(connect_timeout, connect).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {endpoint} timed out"))
            })??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Points a (header-cleaned) request at an endpoint. The upstream sees the authority the client
/// asked for: as `Host` over HTTP/1.1, as `:authority` over HTTP/2.
pub fn aim(request: &mut Request<Incoming>, endpoint: &Endpoint, protocol: config::UpstreamProtocol) {
    let path_and_query =
        request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let asked = request.uri().authority().cloned();
    let target = match protocol {
        config::UpstreamProtocol::Http1 => {
            *request.version_mut() = Version::HTTP_11;
            if let Some(asked) = asked {
                if let Ok(host) = HeaderValue::from_str(asked.as_str()) {
                    request.headers_mut().insert(HOST, host);
                }
            }
            endpoint.authority.clone()
        }
        config::UpstreamProtocol::Http2 => {
            *request.version_mut() = Version::HTTP_2;
            let host = request.headers_mut().remove(HOST);
            asked
                .or_else(|| host.and_then(|host| Authority::try_from(host.as_bytes()).ok()))
                .unwrap_or_else(|| endpoint.authority.clone())
        }
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(target);
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// What a failed upstream exchange means for the client.
pub fn classify(error: &hyper_util::client::legacy::Error) -> ErrorKind {
    if error.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::UpstreamReset
    }
}
