//! Step 7 of a request's way: the request as the upstream sees it. The connection it travels on comes
//! from the endpoint's pool (`pool.rs`); the URI carries the authority the upstream must see: the
//! endpoint for HTTP/1.1 (sent in origin-form with the client's `Host`), the client's authority for
//! HTTP/2 (`:authority`).

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use remora_config as config;

use crate::cluster::Endpoint;
use crate::error::ErrorKind;
use crate::pool::UpstreamError;

/// Points a (header-cleaned) request at an endpoint. The upstream sees the authority the client
/// asked for: as `Host` over HTTP/1.1, as `:authority` over HTTP/2.
pub fn aim<B>(request: &mut Request<B>, endpoint: &Endpoint, protocol: config::UpstreamProtocol) {
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
pub fn classify(error: &UpstreamError) -> ErrorKind {
    match error {
        UpstreamError::Connect { .. } | UpstreamError::Handshake { .. } => ErrorKind::Connect,
        UpstreamError::Exchange { .. } => ErrorKind::UpstreamReset,
        UpstreamError::Limits(_) => ErrorKind::Limits,
    }
}
