//! HTTP/1.1 through the proxy: methods and bodies, the headers a proxy must add, keep or drop, chunked
//! framing, routing, and keep-alive.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;

/// One listener `main`, every request to the cluster `echo` (an echo upstream labelled `v1`).
async fn proxy_to_echo() -> (Proxy, Upstream) {
    let upstream = Upstream::echo("v1").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "all"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "echo", weight = 1 }]

[clusters.echo]
version = "v1"
endpoints = ["{UP}"]
"#,
        &[("UP", &upstream.addr)],
    );
    (Proxy::start(&text).await, upstream)
}

fn request(method: Method, host: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url).header("host", host)
}

#[tokio::test]
async fn get_and_post_reach_the_upstream_with_the_body_echoed() {
    let (proxy, _upstream) = proxy_to_echo().await;
    let mut conn = H1Conn::connect(proxy.addr()).await;

    let get = Request::get("/hello?name=remora").header("host", "app.example.test").body(empty()).unwrap();
    let response = conn.send(get).await.expect("GET through the proxy");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = Seen::of(&response);
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path(), "/hello?name=remora");
    assert_eq!(seen.version, "HTTP/1.1", "the cluster is http1 by default");
    assert_eq!(seen.all("host"), ["app.example.test"], "the Host header must reach the upstream unchanged");
    assert!(read_body("GET body", response.into_body()).await.is_empty());

    let post = Request::post("/submit")
        .header("host", "app.example.test")
        .header("content-type", "text/plain")
        .body(full("hello remora"))
        .unwrap();
    let response = conn.send(post).await.expect("POST through the proxy");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = Seen::of(&response);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("content-type"), Some("text/plain"));
    assert_eq!(read_body("POST body", response.into_body()).await, "hello remora");
}

#[tokio::test]
async fn upstream_status_and_headers_come_back() {
    let (proxy, _upstream) = proxy_to_echo().await;
    let response = within(
        "a 201 through the proxy",
        h1_client().request(
            Request::put(proxy.url("/items/7"))
                .header("x-echo-status", "201")
                .header("x-echo-reply-header", "x-item-id=7")
                .body(full("{}"))
                .unwrap(),
        ),
    )
    .await
    .expect("PUT through the proxy");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-item-id"], "7");
    assert_eq!(Seen::of(&response).method, "PUT");
}

#[tokio::test]
async fn forwarding_headers_are_set() {
    let (proxy, _upstream) = proxy_to_echo().await;
    let client = h1_client();

    let response =
        within("GET", client.request(Request::get(proxy.url("/")).body(empty()).unwrap())).await.unwrap();
    let seen = Seen::of(&response);
    assert_eq!(seen.all("x-forwarded-for").join(", "), "127.0.0.1", "the client's IP is the x-forwarded-for");
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);

    let spoofed = Request::get(proxy.url("/"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let response = within("GET with x-forwarded-*", client.request(spoofed)).await.unwrap();
    let seen = Seen::of(&response);
    assert_eq!(
        seen.all("x-forwarded-for").join(", "),
        "203.0.113.7, 127.0.0.1",
        "the client's IP is appended to an existing x-forwarded-for"
    );
    assert_eq!(
        seen.all("x-forwarded-proto"),
        ["http"],
        "x-forwarded-proto is set to the scheme the proxy saw"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (proxy, _upstream) = proxy_to_echo().await;
    let mut conn = H1Conn::connect(proxy.addr()).await;
    let request = Request::get("/hop")
        .header("host", "app.example.test")
        .header("connection", "x-custom")
        .header("x-custom", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("upgrade", "foo/1")
        .header("x-kept", "yes")
        // The upstream is asked to answer with hop-by-hop headers of its own.
        .header("x-echo-reply-header", "connection=x-up-hop")
        .header("x-echo-reply-header", "x-up-hop=1")
        .header("x-echo-reply-header", "keep-alive=timeout=9")
        .header("x-echo-reply-header", "proxy-connection=keep-alive")
        .header("x-echo-reply-header", "x-up-kept=1")
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.expect("GET with hop-by-hop headers");
    assert_eq!(response.status(), StatusCode::OK);

    let seen = Seen::of(&response);
    for name in ["x-custom", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            seen.header(name).is_none(),
            "the upstream saw hop-by-hop request header {name}: {:?}",
            seen.headers
        );
    }
    for value in seen.all("connection") {
        assert!(!value.to_ascii_lowercase().contains("x-custom"), "the upstream saw `connection: {value}`");
    }
    for value in seen.all("te") {
        assert_eq!(value, "trailers", "only `te: trailers` may be forwarded");
    }
    assert_eq!(seen.header("x-kept"), Some("yes"), "an end-to-end header was dropped");

    let headers = response.headers();
    for name in ["x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(!headers.contains_key(name), "the client got hop-by-hop response header {name}: {headers:?}");
    }
    for value in headers.get_all("connection") {
        assert!(!value.to_str().unwrap().contains("x-up-hop"), "the client got `connection: {value:?}`");
    }
    assert_eq!(
        headers.get("x-up-kept").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "an end-to-end header was dropped"
    );
    read_body("hop-by-hop response", response.into_body()).await;
    assert!(!conn.is_closed(), "`connection: x-up-hop` is not `close`: the connection must stay open");
}

#[tokio::test]
async fn chunked_request_and_response_bodies_pass_byte_exact() {
    let (proxy, _upstream) = proxy_to_echo().await;
    let mut conn = H1Conn::connect(proxy.addr()).await;
    let pattern = Pattern::new();
    let sizes = [1usize, 7, 4096, 65_539, 13, 30_000, 2];
    let total: usize = sizes.iter().sum();
    let (sender, body) = channel_body();
    let feeder = {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            let mut offset = 0u64;
            for size in sizes {
                sender.data(pattern.slice(offset, size)).await;
                offset += size as u64;
            }
        })
    };
    let request = Request::post("/upload").header("host", "app.example.test").body(body).unwrap();
    let response = conn.send(request).await.expect("chunked POST");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = Seen::of(&response);
    assert!(
        seen.header("content-length").is_none(),
        "a body of unknown length got a content-length: {seen:?}"
    );
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"), "the upstream got the body unchunked");
    assert!(
        !response.headers().contains_key("content-length"),
        "the upstream's chunked response got a content-length: was it buffered? {:?}",
        response.headers()
    );
    let received = read_body("chunked echo", response.into_body()).await;
    feeder.await.unwrap();
    assert_eq!(received.len(), total, "chunked echo length");
    assert!(pattern.check(0, &received), "chunked echo bytes differ from what was sent");
}

/// (method, host, path, x-tenant, the upstream expected or None for a 404)
type RouteCase = (&'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>);

/// Routes are tried in order; the first whose host, path, method and headers all match wins.
#[tokio::test]
async fn routing_on_host_path_method_and_headers_first_match_wins() {
    let blue = Upstream::echo("blue").await;
    let post = Upstream::echo("post").await;
    let api = Upstream::echo("api").await;
    let generic = Upstream::echo("generic").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "tenant-blue"
listener = "main"
match = { path_prefix = "/", headers = { "x-tenant" = "blue" } }
backends = [{ cluster = "blue", weight = 1 }]

[[routes]]
name = "submit"
listener = "main"
match = { path = "/submit", method = "POST" }
backends = [{ cluster = "post", weight = 1 }]

[[routes]]
name = "api-host"
listener = "main"
match = { host = "api.example.com", path_prefix = "/api" }
backends = [{ cluster = "api", weight = 1 }]

[[routes]]
name = "api-any-host"
listener = "main"
match = { path_prefix = "/api" }
backends = [{ cluster = "generic", weight = 1 }]

[[routes]]
name = "exact"
listener = "main"
match = { path = "/exact" }
backends = [{ cluster = "generic", weight = 1 }]

[clusters.blue]
endpoints = ["{BLUE}"]
[clusters.post]
endpoints = ["{POST}"]
[clusters.api]
endpoints = ["{API}"]
[clusters.generic]
endpoints = ["{GENERIC}"]
"#,
        &[("BLUE", &blue.addr), ("POST", &post.addr), ("API", &api.addr), ("GENERIC", &generic.addr)],
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    let cases: &[RouteCase] = &[
        ("GET", "api.example.com", "/api/users", Some("blue"), Some("blue")),
        ("POST", "web.example.com", "/submit", Some("blue"), Some("blue")),
        ("GET", "web.example.com", "/anything", Some("green"), None),
        ("POST", "web.example.com", "/submit", None, Some("post")),
        ("GET", "web.example.com", "/submit", None, None),
        ("POST", "web.example.com", "/submit/more", None, None),
        ("GET", "api.example.com", "/api/users", None, Some("api")),
        ("GET", "api.example.com", "/api", None, Some("api")),
        ("DELETE", "api.example.com", "/api/users/1?hard=1", None, Some("api")),
        ("GET", "web.example.com", "/api/users", None, Some("generic")),
        ("GET", "api.example.com", "/apix", None, None),
        ("GET", "web.example.com", "/apix/users", None, None),
        ("GET", "web.example.com", "/exact", None, Some("generic")),
        ("GET", "web.example.com", "/exact/more", None, None),
        ("GET", "web.example.com", "/", None, None),
    ];
    for &(method, host, path, tenant, expected) in cases {
        let mut builder = request(method.parse().unwrap(), host, &proxy.url(path));
        if let Some(tenant) = tenant {
            builder = builder.header("x-tenant", tenant);
        }
        let case = format!("{method} http://{host}{path} x-tenant={tenant:?}");
        let response = within(&case, client.request(builder.body(empty()).unwrap()))
            .await
            .unwrap_or_else(|error| panic!("{case}: {error}"));
        match expected {
            Some(label) => {
                assert_eq!(response.status(), StatusCode::OK, "{case}");
                let seen = Seen::of(&response);
                assert_eq!(seen.upstream, label, "{case} went to the wrong route");
                assert_eq!(seen.path(), path, "{case}: the path must reach the upstream unchanged");
            }
            None => {
                assert_eq!(response.status(), StatusCode::NOT_FOUND, "{case} should match no route");
                assert_eq!(
                    response.headers().get("x-remora-error").map(|v| v.as_bytes()),
                    Some(&b"no-route"[..])
                );
            }
        }
        response.into_body().collect().await.ok();
    }
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let (proxy, upstream) = proxy_to_echo().await;
    let mut conn = H1Conn::connect(proxy.addr()).await;
    for index in 0..200 {
        let request = if index % 2 == 0 {
            Request::get(format!("/get/{index}")).header("host", "app.example.test").body(empty()).unwrap()
        } else {
            let body = Bytes::from(format!("body number {index}"));
            Request::post(format!("/post/{index}"))
                .header("host", "app.example.test")
                .body(full(body))
                .unwrap()
        };
        let response = conn
            .send(request)
            .await
            .unwrap_or_else(|error| panic!("request {index} on the kept-alive connection failed: {error}"));
        assert_eq!(response.status(), StatusCode::OK, "request {index}");
        assert_eq!(
            Seen::of(&response).path(),
            if index % 2 == 0 { format!("/get/{index}") } else { format!("/post/{index}") }
        );
        let body = read_body("keep-alive body", response.into_body()).await;
        if index % 2 == 1 {
            assert_eq!(body, format!("body number {index}"), "request {index}");
        }
    }
    assert!(!conn.is_closed(), "the proxy closed a kept-alive connection");
    assert_eq!(upstream.requests(), 200, "every request reached the upstream exactly once");
}

/// The upstream sees one kept-alive connection for many requests from many clients, as long as they
/// come one at a time: each response's connection goes back to the pool when its body ends.
#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = Upstream::echo("v1").await;
    let text = config(
        r#"{ADMIN}
[runtime]
workers = 1

{LISTENER}
[[routes]]
name = "all"
backends = [{ cluster = "echo" }]

[clusters.echo]
endpoints = ["{UP}"]
"#,
        &[("UP", &upstream.addr)],
    );
    let proxy = Proxy::start(&text).await;
    for index in 0..50 {
        let mut conn = H1Conn::connect(proxy.addr()).await;
        let request =
            Request::get(format!("/n/{index}")).header("host", "app.example.test").body(empty()).unwrap();
        let response = conn.send(request).await.expect("request through the proxy");
        assert_eq!(response.status(), StatusCode::OK);
        read_body("pooled response", response.into_body()).await;
    }
    assert_eq!(upstream.requests(), 50);
    assert_eq!(upstream.connections(), 1, "every request after the first must reuse the pooled connection");
}
