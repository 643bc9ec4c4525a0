//! The process's life: the admin endpoints, and a graceful stop on SIGTERM/SIGINT that lets the
//! request in flight finish, refuses new connections, and exits 0.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Route `/held` to an upstream that holds every response until `gate` opens (reporting each arrival),
/// route `/` to an echo upstream.
async fn held_setup(grace: &str) -> (Proxy, Gate, mpsc::UnboundedReceiver<()>, Upstream, Upstream) {
    let gate = Gate::new();
    let (arrived_sender, arrived) = mpsc::unbounded_channel();
    let held = {
        let gate = gate.clone();
        Upstream::start(Proto::H1, move |request| {
            let (gate, arrived) = (gate.clone(), arrived_sender.clone());
            async move {
                let _ = arrived.send(());
                gate.wait().await;
                upstream::echo_response("held", request)
            }
        })
        .await
    };
    let echo = Upstream::echo("echo").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[runtime]
grace_period = "{GRACE}"

[[routes]]
name = "held"
listener = "main"
timeout = "60s"
match = { path_prefix = "/held" }
backends = [{ cluster = "held", weight = 1 }]

[[routes]]
name = "echo"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "echo", weight = 1 }]

[clusters.held]
endpoints = ["{HELD}"]

[clusters.echo]
endpoints = ["{ECHO}"]
"#,
        &[("GRACE", &grace), ("HELD", &held.addr), ("ECHO", &echo.addr)],
    );
    (Proxy::start(&text).await, gate, arrived, held, echo)
}

async fn admin_get(
    proxy: &Proxy,
    path: &str,
) -> Result<(StatusCode, bytes::Bytes), hyper_util::client::legacy::Error> {
    // A fresh client each time: no pooled connection outlives a stop.
    let response = within(
        &format!("admin {path}"),
        h1_client().request(Request::get(proxy.admin_url(path)).body(empty()).unwrap()),
    )
    .await?;
    let status = response.status();
    Ok((status, read_body(&format!("admin {path}"), response.into_body()).await))
}

#[tokio::test]
async fn admin_endpoints_report_readiness_liveness_and_the_running_config() {
    let first = Upstream::echo("a").await;
    let second = Upstream::echo("b").await;
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "split"
listener = "main"
match = { path_prefix = "/" }
backends = [{ cluster = "first", weight = 75 }, { cluster = "second", weight = 25 }]

[clusters.first]
version = "v7"
endpoints = ["{FIRST}"]

[clusters.second]
version = "v8"
endpoints = ["{SECOND}"]
protocol = "http2"
"#,
        &[("FIRST", &first.addr), ("SECOND", &second.addr)],
    );
    let proxy = Proxy::start(&text).await;
    assert!(proxy.ready.starts_with("ready:"), "{}", proxy.ready);
    assert_eq!(
        proxy.listeners.len(),
        1,
        "one `listener` line per configured listener: {:?}",
        proxy.listeners
    );
    assert_eq!(proxy.listeners[0].0, "main");

    assert_eq!(admin_get(&proxy, "/ready").await.expect("GET /ready").0, StatusCode::OK);
    assert_eq!(admin_get(&proxy, "/live").await.expect("GET /live").0, StatusCode::OK);
    let (status, body) = admin_get(&proxy, "/config").await.expect("GET /config");
    assert_eq!(status, StatusCode::OK);
    let running: serde_json::Value = serde_json::from_slice(&body).expect("/config is JSON");
    let top = running.as_object().unwrap_or_else(|| panic!("/config is not an object: {running}"));
    for key in ["admin", "runtime", "node", "control", "listeners", "routes", "clusters", "stats"] {
        assert!(top.contains_key(key), "/config has no top-level `{key}`: {running}");
    }
    assert_eq!(running["clusters"]["first"]["version"], "v7", "{running}");
    assert_eq!(running["clusters"]["second"]["version"], "v8", "{running}");
    assert_eq!(running["routes"][0]["backends"][0]["weight"], 75, "{running}");
    assert_eq!(running["routes"][0]["backends"][1]["weight"], 25, "{running}");
    assert_eq!(running["routes"][0]["backends"][1]["cluster"], "second", "{running}");
    assert_eq!(running["listeners"][0]["name"], "main", "{running}");
}

/// Polls until `condition` holds, for at most `limit`: waiting on the proxy's reaction to a signal,
/// which no line on stdout announces.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0() {
    let (mut proxy, gate, mut arrived, _held, _echo) = held_setup("20s").await;
    let addr = proxy.addr();
    let mut conn = H1Conn::connect(addr).await;
    let in_flight = tokio::spawn(async move {
        let request = Request::get("/held/1").header("host", "app.example.test").body(empty()).unwrap();
        let response = conn.send(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    });
    within("the held request to reach the upstream", arrived.recv()).await.expect("arrival");

    proxy.signal(Signal::SIGTERM);

    eventually(
        Duration::from_secs(10),
        "/ready turns 503 (or the admin server goes away) after SIGTERM",
        || async {
            match admin_get(&proxy, "/ready").await {
                Ok((status, _)) => status == StatusCode::SERVICE_UNAVAILABLE,
                Err(_) => true,
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "new connections to the listener are refused while draining (is the listener still open?)",
        || refused(addr),
    )
    .await;
    assert_eq!(proxy.exit_status(), None, "remora exited with a request still in flight (grace is 20s)");

    gate.open();
    let (status, body) =
        within("the in-flight request to finish", in_flight).await.unwrap().expect("in-flight request");
    assert_eq!(status, StatusCode::OK, "the request in flight at SIGTERM must complete");
    assert!(body.is_empty());

    let exit = proxy.wait_exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "remora must exit 0 after a graceful stop, got {exit}");
    assert!(refused(addr).await, "the listener still accepts connections after exit");
}

#[tokio::test]
async fn sigint_when_idle_exits_0() {
    let (mut proxy, _gate, _arrived, _held, _echo) = held_setup("20s").await;
    let response = within("GET /", h1_client().request(Request::get(proxy.url("/")).body(empty()).unwrap()))
        .await
        .expect("GET / before SIGINT");
    assert_eq!(response.status(), StatusCode::OK);
    read_body("GET /", response.into_body()).await;

    proxy.signal(Signal::SIGINT);
    let started = Instant::now();
    let exit = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "remora must exit 0 on SIGINT, got {exit}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an idle proxy took {:?} to stop",
        started.elapsed()
    );
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let (mut proxy, _gate, mut arrived, _held, _echo) = held_setup("1s").await;
    let mut conn = H1Conn::connect(proxy.addr()).await;
    let stuck = tokio::spawn(async move {
        let request = Request::get("/held/forever").header("host", "app.example.test").body(empty()).unwrap();
        match conn.send(request).await {
            Ok(response) => http_body_util::BodyExt::collect(response.into_body()).await.map(|_| ()),
            Err(error) => Err(error),
        }
    });
    within("the held request to reach the upstream", arrived.recv()).await.expect("arrival");

    let started = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let exit = proxy.wait_exit(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(exit.success(), "remora must exit 0 when the grace period runs out, got {exit}");
    assert!(took >= Duration::from_millis(900), "remora exited after {took:?}, before the 1s grace period");
    assert!(took < Duration::from_secs(10), "remora took {took:?} to stop with a 1s grace period");
    // The stuck request ends one way or another; it must not hang once the proxy is gone.
    let _ = within("the stuck request to end after exit", stuck).await;
}

/// Listeners are printed in config order, and a route serves only the listener it names.
#[tokio::test]
async fn each_listener_is_printed_in_order_and_serves_its_own_routes() {
    let public = Upstream::echo("public").await;
    let internal = Upstream::echo("internal").await;
    let text = config(
        r#"{ADMIN}
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[listeners]]
name = "internal"
listen = "127.0.0.1:0"

[[routes]]
name = "internal-only"
listener = "internal"
match = { path_prefix = "/" }
backends = [{ cluster = "internal", weight = 1 }]

[[routes]]
name = "public-api"
listener = "public"
match = { path_prefix = "/api" }
backends = [{ cluster = "public", weight = 1 }]

[clusters.public]
endpoints = ["{PUBLIC}"]

[clusters.internal]
endpoints = ["{INTERNAL}"]
"#,
        &[("PUBLIC", &public.addr), ("INTERNAL", &internal.addr)],
    );
    let proxy = Proxy::start(&text).await;
    let names: Vec<&str> = proxy.listeners.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["public", "internal"], "one `listener` line per listener, in config order");
    let client = h1_client();
    let get = |addr: SocketAddr, path: &str| {
        let request = Request::get(format!("http://{addr}{path}")).body(empty()).unwrap();
        within("GET", client.request(request))
    };
    let response = get(proxy.listener("public"), "/api/x").await.expect("public /api/x");
    assert_eq!(Seen::of(&response).upstream, "public");
    let response = get(proxy.listener("internal"), "/api/x").await.expect("internal /api/x");
    assert_eq!(Seen::of(&response).upstream, "internal", "the first route for this listener wins");
    let response = get(proxy.listener("public"), "/other").await.expect("public /other");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "the internal route must not serve the public listener"
    );
}
