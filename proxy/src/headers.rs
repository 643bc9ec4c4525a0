//! Header rules at the proxy boundary: hop-by-hop headers (RFC 9110 §7.6.1) stop here, both ways, and
//! the upstream learns who the client was (`x-forwarded-for`, `x-forwarded-proto`).

use http::header::{HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes connection-specific headers. When `upgrade` is set (a WebSocket handshake being passed
/// on), `Upgrade` stays and `Connection: upgrade` is written back. `te: trailers` stays: gRPC needs
/// it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        // Headers named in Connection are hop-by-hop too. Collect the names first: the map cannot be
        // changed while its values are borrowed.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(upgrade && name == UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    if let Some(te) = headers.get(TE) {
        let trailers = te
            .to_str()
            .is_ok_and(|te| te.split(',').any(|token| token.trim().eq_ignore_ascii_case("trailers")));
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|value| value.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
        })
}

/// Appends the client's address to `x-forwarded-for` and sets `x-forwarded-proto`.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str) {
    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
        }
        Some(existing) => {
            let mut chain = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            chain.extend_from_slice(existing.as_bytes());
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&chain) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Custom"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut headers = map(&[("te", "trailers, deflate")]);
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers["te"], "trailers");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut headers =
            map(&[("connection", "Upgrade, x-secret"), ("upgrade", "websocket"), ("x-secret", "1")]);
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("x-secret"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let ip = HeaderValue::from_static("10.1.2.3");
        let mut headers = HeaderMap::new();
        add_forwarded(&mut headers, &ip, "http");
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "http");
        let mut headers = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-proto", "https")]);
        add_forwarded(&mut headers, &ip, "http");
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
