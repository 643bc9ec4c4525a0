//! The sidecar rules, first as the pure [`decide`] function, then end to end in the process: a real
//! accept loop on 127.0.0.1 whose original destinations come from a table the test fills (there is
//! no NAT here to give `SO_ORIGINAL_DST` one; the real redirect rules are exercised by the network
//! namespace test).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::*;

const OUT: Facts = Facts {
    mode: ListenerMode::Outbound,
    protocol: ListenerProtocol::Auto,
    destination: None,
    opaque_port: false,
    known: false,
    has_routes: true,
    from_self: false,
};

const IN: Facts = Facts { mode: ListenerMode::Inbound, ..OUT };

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn no_listener(_: SocketAddr) -> bool {
    false
}

#[test]
fn outbound_serves_known_services_as_http_and_forwards_the_rest() {
    let service = addr("10.0.0.5:80");
    let known = Facts { destination: Some(service), known: true, ..OUT };
    assert_eq!(
        decide(known, no_listener),
        Decision::Http { detect: true, fallback: Some(service), to: HttpTarget::Routes }
    );
    let http1 = Facts { protocol: ListenerProtocol::Http1, ..known };
    assert_eq!(
        decide(http1, no_listener),
        Decision::Http { detect: false, fallback: Some(service), to: HttpTarget::Routes },
        "a declared protocol is served without waiting"
    );
    let unknown = Facts { destination: Some(addr("93.184.216.34:443")), ..OUT };
    assert_eq!(decide(unknown, no_listener), Decision::Forward(addr("93.184.216.34:443")));
    assert_eq!(decide(Facts { opaque_port: true, ..known }, no_listener), Decision::Forward(service));
    assert_eq!(
        decide(Facts { protocol: ListenerProtocol::Tcp, ..known }, no_listener),
        Decision::Forward(service)
    );
    assert_eq!(decide(OUT, no_listener), Decision::Refuse(Refusal::NoOriginalDestination));
}

#[test]
fn inbound_goes_to_the_local_app_on_the_original_port_or_through_routes() {
    let destination = Some(addr("10.1.2.3:8080"));
    let local = addr("127.0.0.1:8080");
    let without_routes = Facts { destination, has_routes: false, ..IN };
    assert_eq!(
        decide(without_routes, no_listener),
        Decision::Http { detect: true, fallback: Some(local), to: HttpTarget::LocalApp(8080) }
    );
    assert_eq!(
        decide(Facts { destination, ..IN }, no_listener),
        Decision::Http { detect: true, fallback: Some(local), to: HttpTarget::Routes }
    );
    assert_eq!(decide(Facts { opaque_port: true, ..without_routes }, no_listener), Decision::Forward(local));
    let v6 = Facts { destination: Some(addr("[fd00::5]:9090")), ..without_routes };
    assert!(
        matches!(decide(v6, no_listener), Decision::Http { fallback: Some(to), .. } if to == addr("[::1]:9090"))
    );
    // Not redirected: the routes serve it (bytes that are not HTTP have nowhere to go), or nothing does.
    assert_eq!(
        decide(IN, no_listener),
        Decision::Http { detect: true, fallback: None, to: HttpTarget::Routes }
    );
    assert_eq!(
        decide(Facts { has_routes: false, ..IN }, no_listener),
        Decision::Refuse(Refusal::NoOriginalDestination)
    );
    assert_eq!(
        decide(Facts { protocol: ListenerProtocol::Tcp, ..IN }, no_listener),
        Decision::Refuse(Refusal::NoOriginalDestination)
    );
}

#[test]
fn a_destination_that_is_this_proxy_is_a_loop_never_forwarded() {
    let own = Own::default();
    own.listeners.store(Arc::new(vec![addr("127.0.0.1:4140"), addr("0.0.0.0:4143")]));
    let local_ip: IpAddr = "10.1.2.3".parse().unwrap();
    let is_own = |target| own.is_listener(target, local_ip);
    let outbound_to_itself = Facts { destination: Some(addr("127.0.0.1:4140")), known: true, ..OUT };
    assert_eq!(decide(outbound_to_itself, is_own), Decision::Loop { target: Some(addr("127.0.0.1:4140")) });
    let outbound_to_inbound = Facts { destination: Some(addr("10.1.2.3:4143")), ..OUT };
    assert!(matches!(decide(outbound_to_inbound, is_own), Decision::Loop { .. }));
    // Inbound traffic for port 4143 of another address would be forwarded to 127.0.0.1:4143: itself.
    let inbound = Facts { destination: Some(addr("10.9.9.9:4143")), ..IN };
    assert_eq!(decide(inbound, is_own), Decision::Loop { target: Some(addr("127.0.0.1:4143")) });
    // The same ports elsewhere are not this proxy.
    let remote = Facts { destination: Some(addr("10.0.0.7:4140")), ..OUT };
    assert_eq!(decide(remote, is_own), Decision::Forward(addr("10.0.0.7:4140")));
    // A connection from the proxy's own upstream socket, whatever its destination.
    let from_self = Facts { destination: Some(addr("10.0.0.7:80")), from_self: true, ..OUT };
    assert_eq!(decide(from_self, is_own), Decision::Loop { target: Some(addr("10.0.0.7:80")) });
}

#[test]
fn known_services_are_the_listed_ones_and_the_route_clusters_endpoints() {
    let config = remora_config::load_str(
        r#"
[[listeners]]
name = "outbound"
listen = "127.0.0.1:4140"
mode = "outbound"
services = ["10.96.0.10:80"]

[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
listener = "outbound"
backends = [{ cluster = "payments" }]

[[routes]]
backends = [{ cluster = "other" }]

[clusters.payments]
endpoints = ["10.0.0.5:80", "payments.internal:80"]

[clusters.other]
endpoints = ["10.0.0.6:80"]
"#,
        remora_config::Source::TextOnly,
    )
    .unwrap();
    let services = Services::of(&config, &config.listeners[0]);
    assert!(services.has_routes);
    assert_eq!(
        services.lookup(&addr("10.0.0.5:80")).map(|cluster| cluster.map(|c| &**c)),
        Some(Some("payments"))
    );
    assert_eq!(services.lookup(&addr("10.96.0.10:80")), Some(None));
    assert_eq!(services.lookup(&addr("10.0.0.6:80")), None, "another listener's route");
    assert_eq!(services.lookup(&addr("10.0.0.5:81")), None);
}

// ---- in the process, on 127.0.0.1 ----

/// An HTTP/1.1 upstream that answers `name` (in `x-upstream`) and the request's path.
async fn http_upstream(name: &'static str) -> SocketAddr {
    http_upstream_at(name, "127.0.0.1:0".parse().unwrap()).await
}

async fn http_upstream_at(name: &'static str, at: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        let body = format!("{name} {}", request.uri().path());
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A TCP upstream that greets first (`greeting`), then echoes what it reads until the client closes,
/// then closes.
async fn tcp_upstream(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = stream.write_all(greeting).await;
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A sidecar listener running in the process, with original destinations from a table.
struct Sidecar {
    addr: SocketAddr,
    shared: Arc<Shared>,
    table: Arc<std::sync::Mutex<HashMap<SocketAddr, SocketAddr>>>,
    _stop: watch::Sender<bool>,
}

impl Sidecar {
    async fn start(config: &str) -> Sidecar {
        Sidecar::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), config)
    }

    /// Like [`Sidecar::start`], on a socket bound already (so that the configuration can name it).
    fn start_on(socket: TcpListener, config: &str) -> Sidecar {
        let config =
            remora_config::load_str(config, remora_config::Source::TextOnly).expect("a valid config");
        let listener = Arc::new(config.listeners[0].clone());
        let addr = socket.local_addr().unwrap();
        let shared = Arc::new(Shared::new(config, 1));
        let own = Arc::new(Own::default());
        own.listeners.store(Arc::new(vec![addr]));
        let table = Arc::default();
        let (stop, stop_rx) = watch::channel(false);
        let setup = Setup {
            builder: crate::listener::connection_builder(&listener),
            listener,
            shared: shared.clone(),
            graceful: Arc::new(GracefulShutdown::new()),
            own,
            lookup: Lookup::Table(Arc::clone(&table)),
        };
        tokio::spawn(accept_loop(socket, setup, stop_rx));
        Sidecar { addr, shared, table, _stop: stop }
    }

    /// A connection to the listener as if redirected from `destination` (`None`: not redirected).
    async fn connect(&self, destination: Option<SocketAddr>) -> TcpStream {
        self.try_connect(destination).await.unwrap()
    }

    /// As [`connect`](Self::connect), for a connection that may be reset before the connect returns.
    async fn try_connect(&self, destination: Option<SocketAddr>) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(addr("127.0.0.1:0")).unwrap();
        if let Some(destination) = destination {
            self.table.lock().unwrap().insert(socket.local_addr().unwrap(), destination);
        }
        socket.connect(self.addr).await
    }

    /// Whether a connection as if redirected from `destination` is reset after sending `bytes`.
    async fn is_reset(&self, destination: Option<SocketAddr>, bytes: &[u8]) -> bool {
        let Ok(mut stream) = self.try_connect(destination).await else { return true };
        let _ = stream.write_all(bytes).await;
        read_all(&mut stream).await.is_err_and(|kind| kind == std::io::ErrorKind::ConnectionReset)
    }

    fn counters(&self) -> Arc<ListenerCounters> {
        self.shared.stats.listener(&self.shared.snapshot.load().config.listeners[0].name)
    }
}

/// `GET path` over HTTP/1.1 on `stream`: (status, x-upstream, body).
async fn get(stream: TcpStream, path: &str) -> (u16, String, String) {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(path).header("host", "payments").body(Empty::<Bytes>::new()).unwrap();
    let response = within(sender.send_request(request)).await.unwrap();
    let status = response.status().as_u16();
    let upstream =
        response.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, upstream, String::from_utf8_lossy(&body).into_owned())
}

/// Waits (up to 10 s) for `condition`: a request is counted when its body ends, a moment after the
/// client has read it.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("timed out")
}

/// Reads until end of stream; the error kind when the stream fails instead.
async fn read_all(stream: &mut TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut all = Vec::new();
    within(stream.read_to_end(&mut all)).await.map_err(|error| error.kind())?;
    Ok(all)
}

fn outbound_config(stable: SocketAddr, canary: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "outbound"
listen = "127.0.0.1:0"
mode = "outbound"
detect_timeout = "200ms"
{extra}

[[routes]]
name = "payments"
listener = "outbound"
backends = [{{ cluster = "canary" }}]

[clusters.stable]
endpoints = ["{stable}"]

[clusters.canary]
version = "v2"
endpoints = ["{canary}"]

[[routes]]
name = "unused"
listener = "outbound"
match = {{ path = "/never" }}
backends = [{{ cluster = "stable" }}]
"#
    )
}

#[tokio::test]
async fn outbound_http_to_a_known_service_goes_through_the_routes() {
    let stable = http_upstream("stable").await;
    let canary = http_upstream("canary").await;
    let sidecar = Sidecar::start(&outbound_config(stable, canary, "")).await;
    // The app connects to the stable endpoint; the route sends everything to the canary.
    let (status, upstream, body) = get(sidecar.connect(Some(stable)).await, "/pay").await;
    assert_eq!((status, upstream.as_str(), body.as_str()), (200, "canary", "canary /pay"));
    let series = sidecar.shared.stats.series("payments", "canary", "v2");
    eventually("the request counted like a reverse listener's", || {
        series.views().since_start.requests() == 1
    })
    .await;
    assert_eq!(sidecar.counters().detections(Detected::Http1), 1);
}

#[tokio::test]
async fn outbound_to_an_unknown_destination_is_opaque_tcp_to_it() {
    let stable = http_upstream("stable").await;
    let echo = tcp_upstream(b"").await;
    let sidecar = Sidecar::start(&outbound_config(stable, stable, "")).await;
    let mut stream = sidecar.connect(Some(echo)).await;
    // Even an HTTP request line goes through untouched: nothing is read before forwarding.
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02");
    let figures = sidecar.shared.stats.tcp("outbound", "").figures();
    assert_eq!((figures.connections, figures.received, figures.sent), (1, 21, 21));
}

#[tokio::test]
async fn outbound_non_http_to_a_known_service_is_forwarded_to_it_and_counted_under_its_cluster() {
    let stable = tcp_upstream(b"").await;
    let canary = http_upstream("canary").await;
    let sidecar = Sidecar::start(&outbound_config(stable, canary, "")).await;
    let mut stream = sidecar.connect(Some(stable)).await;
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    stream.write_all(&hello).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), hello);
    assert_eq!(sidecar.counters().detections(Detected::Tcp), 1);
    assert_eq!(sidecar.shared.stats.tcp("outbound", "stable").figures().received, 10);
}

#[tokio::test]
async fn a_server_that_speaks_first_gets_its_greeting_through_after_the_detect_timeout() {
    let mysql = tcp_upstream(b"\x0a5.7.0-greeting\x00").await;
    let canary = http_upstream("canary").await;
    let sidecar = Sidecar::start(&outbound_config(mysql, canary, "")).await;
    let mut stream = sidecar.connect(Some(mysql)).await;
    let mut greeting = [0u8; 16];
    within(stream.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"\x0a5.7.0-greeting\x00");
    assert_eq!(sidecar.counters().detections(Detected::Timeout), 1);
    stream.write_all(b"login").await.unwrap();
    let mut echoed = [0u8; 5];
    within(stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"login");
}

#[tokio::test]
async fn an_opaque_port_is_forwarded_without_waiting_for_the_client() {
    let mysql = tcp_upstream(b"hello").await;
    let canary = http_upstream("canary").await;
    let extra = format!("opaque_ports = [{}]", mysql.port());
    // A detect timeout far longer than the test's own: the greeting comes without it.
    let config = outbound_config(mysql, canary, &extra).replace("200ms", "60s");
    let sidecar = Sidecar::start(&config).await;
    let mut stream = sidecar.connect(Some(mysql)).await;
    let mut greeting = [0u8; 5];
    within(stream.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"hello");
    assert_eq!(sidecar.counters().detections(Detected::Timeout), 0);
}

#[tokio::test]
async fn outbound_without_an_original_destination_is_refused() {
    let stable = http_upstream("stable").await;
    let sidecar = Sidecar::start(&outbound_config(stable, stable, "")).await;
    assert!(sidecar.is_reset(None, b"GET / HTTP/1.1\r\n\r\n").await);
    assert_eq!(sidecar.counters().refusals(Refusal::NoOriginalDestination), 1);
}

#[tokio::test]
async fn loops_are_refused_and_counted() {
    let stable = http_upstream("stable").await;
    let sidecar = Sidecar::start(&outbound_config(stable, stable, "")).await;
    // Its original destination is the listener itself.
    assert!(sidecar.is_reset(Some(sidecar.addr), b"").await);
    // It comes from one of the proxy's own upstream sockets (the proxy's UID is not skipped).
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(addr("127.0.0.1:0")).unwrap();
    let port = socket.local_addr().unwrap().port();
    sidecar.table.lock().unwrap().insert(socket.local_addr().unwrap(), stable);
    let _own = sidecar.shared.own_ports.hold(port);
    if let Ok(mut stream) = socket.connect(sidecar.addr).await {
        assert!(read_all(&mut stream).await.is_err(), "reset");
    }
    assert_eq!(sidecar.counters().loops(), 2);
    assert_eq!(sidecar.shared.stats.tcp("outbound", "").figures().connections, 0, "nothing forwarded");
}

#[tokio::test]
async fn an_http_request_routed_back_into_the_proxy_is_a_loop() {
    // The route's cluster leads back to the outbound listener, as a redirect rule that fails to skip
    // the proxy's UID would: the pool's connection comes from a noted port and is refused as a loop,
    // once, instead of being served again (and again).
    let stable = http_upstream("stable").await;
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let itself = socket.local_addr().unwrap();
    let sidecar = Sidecar::start_on(socket, &outbound_config(stable, itself, ""));
    let (status, _, _) = get(sidecar.connect(Some(stable)).await, "/pay").await;
    assert_eq!(status, 502);
    assert_eq!(sidecar.counters().loops(), 1);
    assert_eq!(sidecar.counters().refusals(Refusal::NoOriginalDestination), 0);
    // Only an outbound listener's pools bind first: a reverse proxy's connections keep the kernel's
    // port choice (a port per destination, not one per host).
    let snapshot = sidecar.shared.snapshot.load();
    assert!(snapshot.cluster("canary").unwrap().notes_ports());
    let reverse = format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
name = "all"
listener = "web"
backends = [{{ cluster = "app" }}]

[clusters.app]
endpoints = ["{stable}"]
"#
    );
    let reverse = crate::internals::snapshot(
        remora_config::load_str(&reverse, remora_config::Source::TextOnly).expect("a valid config"),
    );
    assert!(!reverse.cluster("app").unwrap().notes_ports());
}

fn inbound_config(extra: &str) -> String {
    format!(
        r#"
[node]
name = "payments"
version = "v3"

[[listeners]]
name = "inbound"
listen = "127.0.0.1:0"
mode = "inbound"
detect_timeout = "200ms"
{extra}
"#
    )
}

#[tokio::test]
async fn inbound_http_goes_to_the_local_app_on_the_original_port_with_stats() {
    let app = http_upstream("app").await;
    let sidecar = Sidecar::start(&inbound_config("")).await;
    // Redirected from the pod's address, same port as the app listens on.
    let from = SocketAddr::new("10.1.2.3".parse().unwrap(), app.port());
    let (status, upstream, body) = get(sidecar.connect(Some(from)).await, "/hello").await;
    assert_eq!((status, upstream.as_str(), body.as_str()), (200, "app", "app /hello"));
    let series = sidecar.shared.stats.series("inbound", &app.to_string(), "v3");
    eventually("the request counted", || series.views().since_start.requests() == 1).await;
    // Not HTTP: opaque to the same port.
    let echo = tcp_upstream(b"").await;
    let mut stream = sidecar.connect(Some(SocketAddr::new("10.1.2.3".parse().unwrap(), echo.port()))).await;
    stream.write_all(b"\x00binary").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"\x00binary");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let app = http_upstream("app").await;
    let sidecar = Sidecar::start(&inbound_config("")).await;
    let mut stream = sidecar.connect(Some(SocketAddr::new("10.1.2.3".parse().unwrap(), app.port()))).await;
    stream.write_all(b"GET /half HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut stream).await.unwrap()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("app /half"), "{answer:?}");
}

#[tokio::test]
async fn each_address_family_reaches_its_own_loopback_on_one_port() {
    // Two apps on one port, one per loopback; the first connection (IPv6) must not decide where
    // the IPv4 ones go.
    let v4 = http_upstream("v4").await;
    let Ok(v6) =
        tokio::spawn(http_upstream_at("v6", SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v4.port()))))
            .await
    else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let sidecar = Sidecar::start(&inbound_config("")).await;
    let to_v6 = SocketAddr::new("fd00::3".parse().unwrap(), v6.port());
    let to_v4 = SocketAddr::new("10.1.2.3".parse().unwrap(), v4.port());
    for (to, expected) in [(to_v6, "v6"), (to_v4, "v4"), (to_v6, "v6")] {
        let (status, upstream, _) = get(sidecar.connect(Some(to)).await, "/").await;
        assert_eq!((status, upstream.as_str()), (200, expected), "to {to}");
    }
}

#[tokio::test]
async fn inbound_without_an_original_destination_is_served_by_routes_or_refused() {
    let app = http_upstream("app").await;
    let sidecar = Sidecar::start(&inbound_config("")).await;
    assert!(sidecar.is_reset(None, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await);
    assert_eq!(sidecar.counters().refusals(Refusal::NoOriginalDestination), 1);

    let routed = format!(
        "{}\n[[routes]]\nlistener = \"inbound\"\nbackends = [{{ cluster = \"app\" }}]\n\n[clusters.app]\nendpoints = [\"{app}\"]\n",
        inbound_config("")
    );
    let sidecar = Sidecar::start(&routed).await;
    let (status, upstream, _) = get(sidecar.connect(None).await, "/").await;
    assert_eq!((status, upstream.as_str()), (200, "app"));
    assert!(sidecar.is_reset(None, b"\x16\x03\x01").await, "not HTTP and nowhere else to go: reset");
    assert_eq!(sidecar.counters().refusals(Refusal::NotHttp), 1);
}

#[tokio::test]
async fn a_host_name_endpoint_is_known_by_the_address_it_resolves_to() {
    let stable = http_upstream("stable").await;
    let canary = http_upstream("canary").await;
    // The `unused` route's cluster names the stable upstream as `localhost:PORT`.
    let config = outbound_config(stable, canary, "").replace(
        &format!("endpoints = [\"{stable}\"]"),
        &format!("endpoints = [\"localhost:{}\"]", stable.port()),
    );
    let sidecar = Sidecar::start(&config).await;
    // Until the name is resolved (in the background, at start) the destination is unknown and the
    // request goes straight to it; then it goes through the routes, to the canary.
    for _ in 0..200 {
        let (status, upstream, _) = get(sidecar.connect(Some(stable)).await, "/").await;
        assert_eq!(status, 200);
        if upstream == "canary" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("localhost:{} never became a known service", stable.port());
}
