//! Step 2 of a request's way, and the place that shows the order of all of them: hyper hands each
//! request to [`ProxyService`], which routes it (step 3), picks a backend (4) and an endpoint (6),
//! cleans its headers and forwards it (7). The policy steps that come with later work (breakers,
//! stats) slot in here, in this order.
//!
//! Everything up to handing the request to the upstream client runs synchronously in `call`, under one
//! `ArcSwap` load; only the wait for the upstream is async, so no snapshot is cloned per request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::cluster::Cluster;
use crate::error::ErrorKind;
use crate::forward;
use crate::headers;
use crate::pool::PoolHandle;
use crate::route::{host_of, RequestKey};
use crate::snapshot::Shared;

/// The service of one downstream connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    listener: Arc<str>,
    /// The client's IP, formatted once per connection for `x-forwarded-for`.
    client_ip: HeaderValue,
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl ProxyService {
    pub fn new(shared: Arc<Shared>, listener: Arc<str>, client: std::net::SocketAddr) -> Self {
        let client_ip = HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { shared, listener, client_ip }
    }

    /// Routes, picks and hands the request to the upstream client.
    fn prepare(&self, mut request: Request<Incoming>) -> Result<Exchange, ErrorKind> {
        let host = request_host(&request)?;
        let snapshot = self.shared.snapshot.load();
        let table = snapshot.table(&self.listener).ok_or(ErrorKind::NoRoute)?;
        let key = RequestKey {
            host: host.map(host_of),
            path: request.uri().path(),
            method: request.method(),
            headers: request.headers(),
        };
        let route = table.find(&key).ok_or(ErrorKind::NoRoute)?;
        let cluster = &route.split.pick(request.headers()).cluster;
        let endpoint = cluster.endpoint().ok_or(ErrorKind::Connect)?;

        let upgrade = cluster.protocol == remora_config::UpstreamProtocol::Http1
            && request.version() <= Version::HTTP_11
            && headers::is_upgrade(request.headers());
        headers::remove_hop_by_hop(request.headers_mut(), upgrade);
        headers::add_forwarded(request.headers_mut(), &self.client_ip, "http");
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        forward::aim(&mut request, endpoint, cluster.protocol);
        Ok(Exchange {
            pool: endpoint.pool.handle(),
            request,
            timeout: route.timeout,
            downstream_upgrade,
            cluster: cluster.clone(),
        })
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        match self.prepare(request) {
            Ok(exchange) => Box::pin(exchange.finish()),
            Err(kind) => Box::pin(std::future::ready(Ok(kind.response()))),
        }
    }
}

/// A request on its way to the upstream, waiting for the response head.
struct Exchange {
    pool: PoolHandle,
    request: Request<Incoming>,
    timeout: Option<std::time::Duration>,
    downstream_upgrade: Option<OnUpgrade>,
    cluster: Arc<Cluster>,
}

impl Exchange {
    async fn finish(self) -> Result<Response<ProxyBody>, Infallible> {
        let response = self.pool.send(self.request);
        let result = match self.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, response).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(cluster = %self.cluster.name, "upstream timed out");
                    return Ok(ErrorKind::Timeout.response());
                }
            },
            None => response.await,
        };
        let (mut response, lease) = match result {
            Ok(exchanged) => exchanged,
            Err(error) => {
                let kind = forward::classify(&error);
                tracing::debug!(cluster = %self.cluster.name, error = %error_chain(&error), cause = kind.cause(), "upstream failed");
                return Ok(kind.response());
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = self.downstream_upgrade else {
                tracing::debug!(cluster = %self.cluster.name, "upstream switched protocols unasked");
                return Ok(ErrorKind::UpstreamReset.response());
            };
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(downstream, upstream));
            headers::remove_hop_by_hop(response.headers_mut(), true);
        } else {
            headers::remove_hop_by_hop(response.headers_mut(), false);
        }
        Ok(response.map(|body| ProxyBody::upstream(body, lease)))
    }
}

/// Once both sides have switched protocols, copies bytes both ways until either side closes.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((downstream, upstream)) => {
            let mut downstream = TokioIo::new(downstream);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "protocol switch failed"),
    }
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or the one `Host`
/// header. Missing on HTTP/1.1, repeated or malformed is a bad request.
fn request_host(request: &Request<Incoming>) -> Result<Option<&str>, ErrorKind> {
    if let Some(authority) = request.uri().authority() {
        return Ok(Some(authority.as_str()));
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => {
            Err(ErrorKind::BadRequest("an HTTP/1.1 request needs a Host header\n"))
        }
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(ErrorKind::BadRequest("a request may carry only one Host header\n")),
        (Some(host), None) if host.is_empty() => Ok(None),
        (Some(host), None) => match host.to_str() {
            Ok(host) if is_valid_host(host.as_bytes()) => Ok(Some(host)),
            _ => Err(ErrorKind::BadRequest("the Host header is not a valid host\n")),
        },
    }
}

/// `host[:port]` with RFC 3986 reg-name, IPv4 or bracketed IPv6 characters, and no user info.
fn is_valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.iter().all(|byte| {
            byte.is_ascii_alphanumeric()
                || matches!(
                    byte,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_user_info_or_spaces_are_refused() {
        assert!(is_valid_host(b"api.example.com:8080"));
        assert!(is_valid_host(b"[::1]:80"));
        assert!(!is_valid_host(b"user@example.com"));
        assert!(!is_valid_host(b"exa mple.com"));
        assert!(!is_valid_host(b"example.com/path"));
    }
}
