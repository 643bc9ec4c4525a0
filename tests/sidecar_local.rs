//! Opaque TCP and the sidecar listeners, end to end on 127.0.0.1 with the real binary and no NAT: a
//! reverse listener with `protocol = "tcp"` forwarding to a cluster (byte-exact both ways, half-close,
//! resets, a server that speaks first, a dead endpoint skipped, stats), and inbound and outbound
//! listeners reached without a redirect (served by routes, or refused and counted). What needs
//! `SO_ORIGINAL_DST` (redirect rules) is in `tests/sidecar.rs`, inside network namespaces, and in the
//! proxy's own `sidecar` tests with a stand-in for the kernel's lookup.

mod common;

use std::fmt::Display;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reverse `tcp` listener named `db` in front of cluster `db` with `endpoints`.
fn tcp_config(endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|endpoint| format!("\"{endpoint}\"")).collect();
    config(
        r#"{ADMIN}
[[listeners]]
name = "db"
listen = "127.0.0.1:0"
protocol = "tcp"
cluster = "db"

[clusters.db]
endpoints = [{ENDPOINTS}]
balance = "round_robin"
"#,
        &[("ENDPOINTS", &endpoints.join(", ") as &dyn Display)],
    )
}

/// Reads until end of stream, or the kind of error the stream ended with.
async fn read_to_end(stream: &mut TcpStream) -> Result<Vec<u8>, ErrorKind> {
    let mut all = Vec::new();
    within("the rest of the stream", stream.read_to_end(&mut all)).await.map_err(|error| error.kind())?;
    Ok(all)
}

/// Connects to `addr`, writes `bytes` and reads to the end: the bytes, or how the connection failed.
/// The proxy may reset a connection before the client's connect has even returned, so a connect
/// that fails with a reset is that outcome too.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let mut stream = within("connect", TcpStream::connect(addr)).await.map_err(|error| error.kind())?;
    // A write may fail too once the reset is in; the read says how the connection ended.
    let _ = stream.write_all(bytes).await;
    read_to_end(&mut stream).await
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[tokio::test]
async fn tcp_listener_carries_a_random_mebibyte_each_way_byte_exact() {
    const LEN: usize = 1 << 20;
    let (to_server, to_client) = (random_bytes(LEN, 1), random_bytes(LEN, 2));
    let (expected_up, reply) = (to_server.clone(), to_client.clone());
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let upstream = Upstream::raw(move |mut tcp| {
        let reply = reply.clone();
        let seen_tx = seen_tx.lock().unwrap().take();
        async move {
            // Both ways at once: a proxy that copied one way at a time would deadlock here.
            let (mut read, mut write) = tcp.split();
            let writing = async {
                write.write_all(&reply).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reading = read.read_to_end(&mut got);
            let (_, read_result) = tokio::join!(writing, reading);
            read_result.unwrap();
            if let Some(seen_tx) = seen_tx {
                let _ = seen_tx.send(got);
            }
        }
    })
    .await;
    let proxy = Proxy::start(&tcp_config(&[upstream.addr])).await;
    let mut stream = within("connect", TcpStream::connect(proxy.listener("db"))).await.unwrap();
    let (mut read, mut write) = stream.split();
    let writing = async {
        write.write_all(&to_server).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let (_, read_result) =
        within("both ways", async { tokio::join!(writing, read.read_to_end(&mut back)) }).await;
    read_result.unwrap();
    assert!(back == to_client, "the client got {} bytes, not the server's {LEN}", back.len());
    let seen = within("the server's copy", seen_rx).await.unwrap();
    assert!(seen == expected_up, "the server got {} bytes, not the client's {LEN}", seen.len());

    let stats = admin_json(&proxy, "/stats").await;
    let tcp = &stats["tcp"][0];
    assert_eq!((tcp["listener"].as_str(), tcp["cluster"].as_str()), (Some("db"), Some("db")), "{stats:#}");
    assert_eq!(tcp["connections"], 1);
    assert_eq!(tcp["received_bytes"], LEN as u64);
    assert_eq!(tcp["sent_bytes"], LEN as u64);
    let metrics = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        "remora_tcp_connections_total{listener=\"db\",cluster=\"db\"} 1\n".to_owned(),
        format!("remora_tcp_received_bytes_total{{listener=\"db\",cluster=\"db\"}} {LEN}\n"),
        format!("remora_tcp_sent_bytes_total{{listener=\"db\",cluster=\"db\"}} {LEN}\n"),
        "remora_tcp_connect_failures_total{listener=\"db\",cluster=\"db\"} 0\n".to_owned(),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in /metrics:\n{metrics}");
    }
}

#[tokio::test]
async fn tcp_listener_passes_a_half_close_on() {
    // The server reads the client's whole message (to its end of stream), then answers and closes.
    let upstream = Upstream::raw(|mut tcp| async move {
        let mut message = Vec::new();
        tcp.read_to_end(&mut message).await.unwrap();
        tcp.write_all(format!("got {} bytes after your FIN", message.len()).as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
    })
    .await;
    let proxy = Proxy::start(&tcp_config(&[upstream.addr])).await;
    let mut stream = TcpStream::connect(proxy.listener("db")).await.unwrap();
    stream.write_all(b"question").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await.unwrap(), b"got 8 bytes after your FIN");
}

#[tokio::test]
async fn tcp_listener_passes_a_server_reset_on_as_a_reset() {
    // The server sends part of an answer, then resets: the client must not see a clean end.
    let upstream = Upstream::raw(|mut tcp| async move {
        let mut request = [0u8; 3];
        tcp.read_exact(&mut request).await.unwrap();
        tcp.write_all(b"partial").await.unwrap();
        tcp.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;
    let proxy = Proxy::start(&tcp_config(&[upstream.addr])).await;
    let mut stream = TcpStream::connect(proxy.listener("db")).await.unwrap();
    stream.write_all(b"go!").await.unwrap();
    let mut partial = [0u8; 7];
    within("the partial answer", stream.read_exact(&mut partial)).await.unwrap();
    assert_eq!(&partial, b"partial");
    assert_eq!(read_to_end(&mut stream).await, Err(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn tcp_listener_passes_a_client_reset_on_to_the_server() {
    let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
    let reset_tx = std::sync::Mutex::new(Some(reset_tx));
    let upstream = Upstream::raw(move |mut tcp| {
        let reset_tx = reset_tx.lock().unwrap().take();
        async move {
            let mut all = Vec::new();
            let ended = tcp.read_to_end(&mut all).await.map_err(|error| error.kind());
            if let Some(reset_tx) = reset_tx {
                let _ = reset_tx.send(ended);
            }
        }
    })
    .await;
    let proxy = Proxy::start(&tcp_config(&[upstream.addr])).await;
    let stream = TcpStream::connect(proxy.listener("db")).await.unwrap();
    let mut stream = stream;
    stream.write_all(b"half a message").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.set_zero_linger().unwrap();
    drop(stream);
    let ended = within("the server's end", reset_rx).await.unwrap();
    assert_eq!(ended, Err(ErrorKind::ConnectionReset), "the server saw a clean end of a cut-off message");
}

#[tokio::test]
async fn tcp_listener_delivers_a_server_greeting_without_the_client_sending() {
    let upstream = Upstream::raw(|mut tcp| async move {
        tcp.write_all(b"220 smtp.test ESMTP ready\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    })
    .await;
    let proxy = Proxy::start(&tcp_config(&[upstream.addr])).await;
    let mut stream = TcpStream::connect(proxy.listener("db")).await.unwrap();
    let mut greeting = [0u8; 27];
    within("the greeting", stream.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"220 smtp.test ESMTP ready\r\n");
}

#[tokio::test]
async fn tcp_listener_skips_a_dead_endpoint_and_counts_the_failed_connects() {
    let upstream = Upstream::raw(|mut tcp| async move {
        let _ = tcp.write_all(b"alive").await;
    })
    .await;
    let dead = dead_addr();
    let proxy = Proxy::start(&tcp_config(&[dead, upstream.addr])).await;
    for _ in 0..4 {
        let mut stream = TcpStream::connect(proxy.listener("db")).await.unwrap();
        assert_eq!(read_to_end(&mut stream).await.unwrap(), b"alive");
    }
    let stats = admin_json(&proxy, "/stats").await;
    let tcp = &stats["tcp"][0];
    assert_eq!(tcp["connections"], 4, "{stats:#}");
    // Round robin puts every other connection on the dead endpoint first: each of those fails once.
    assert!(tcp["connect_failures"].as_u64().is_some_and(|failures| failures >= 1), "{stats:#}");
    assert_eq!(upstream.connections(), 4);
}

#[tokio::test]
async fn tcp_listener_resets_the_client_when_no_endpoint_answers() {
    let proxy = Proxy::start(&tcp_config(&[dead_addr()])).await;
    assert_eq!(exchange(proxy.listener("db"), b"").await, Err(ErrorKind::ConnectionReset));
}

/// A sidecar pair as `remora inject` sets it up, on ports from the OS, plus `extra`.
fn sidecar_config(extra: &str) -> String {
    config(
        r#"{ADMIN}
[[listeners]]
name = "inbound"
listen = "127.0.0.1:0"
mode = "inbound"

[[listeners]]
name = "outbound"
listen = "127.0.0.1:0"
mode = "outbound"

{EXTRA}
"#,
        &[("EXTRA", &extra as &dyn Display)],
    )
}

/// The value of the one sample `name{labels}` in /metrics text.
fn sample(metrics: &str, name_and_labels: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_text(proxy: &Proxy) -> String {
    let reply = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    assert_eq!(reply.status, 200);
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn an_inbound_connection_without_a_redirect_is_served_by_its_routes() {
    let app = Upstream::echo("app").await;
    let routes = format!(
        "[[routes]]\nname = \"app\"\nlistener = \"inbound\"\nbackends = [{{ cluster = \"app\" }}]\n\n\
         [clusters.app]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let proxy = Proxy::start(&sidecar_config(&routes)).await;
    let reply = get(&h1_client(), &format!("http://{}/hello", proxy.listener("inbound"))).await;
    assert_eq!((reply.status, reply.upstream.as_deref()), (200, Some("app")), "{reply:?}");
    let h2 = H2Conn::connect(proxy.listener("inbound")).await;
    let response = h2.send(http::Request::get("http://app/two").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "h2c is detected too");

    // Bytes that are not HTTP have nowhere to go without an original destination.
    let tls = exchange(proxy.listener("inbound"), &[0x16, 0x03, 0x01, 0x00]).await;
    assert_eq!(tls, Err(ErrorKind::ConnectionReset));

    let metrics = metrics_text(&proxy).await;
    let detected = |result: &str| {
        sample(
            &metrics,
            &format!("remora_protocol_detections_total{{listener=\"inbound\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (detected("http1"), detected("http2"), detected("tcp")),
        (Some(1), Some(1), Some(1)),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "remora_connections_refused_total{listener=\"inbound\",reason=\"not_http\"}"),
        Some(1)
    );
    assert_eq!(
        sample(
            &metrics,
            "remora_responses_total{route=\"app\",cluster=\"app\",version=\"default\",code=\"2xx\"}"
        ),
        Some(2),
        "{metrics}"
    );
}

#[tokio::test]
async fn sidecar_connections_without_a_redirect_and_without_routes_are_refused_and_counted() {
    let proxy = Proxy::start(&sidecar_config("")).await;
    for listener in ["inbound", "outbound"] {
        let refused = exchange(proxy.listener(listener), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert_eq!(refused, Err(ErrorKind::ConnectionReset), "{listener}");
    }
    let metrics = metrics_text(&proxy).await;
    for listener in ["inbound", "outbound"] {
        let refused = format!(
            "remora_connections_refused_total{{listener=\"{listener}\",reason=\"no_original_destination\"}}"
        );
        assert_eq!(sample(&metrics, &refused), Some(1), "{metrics}");
        assert_eq!(
            sample(&metrics, &format!("remora_loops_detected_total{{listener=\"{listener}\"}}")),
            Some(0)
        );
    }
    let stats = admin_json(&proxy, "/stats").await;
    assert_eq!(stats["listeners"]["outbound"]["refused"]["no_original_destination"], 1, "{stats:#}");
    // The proxy says it once (per interval) in its log, in words an operator can act on.
    assert!(proxy.stderr().contains("not redirected here"), "{}", proxy.stderr());
}

#[tokio::test]
async fn remora_check_accepts_a_sidecar_config_and_names_a_misplaced_key() {
    let good = sidecar_config(
        "[[listeners]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"db\"\n\n\
         [clusters.db]\nendpoints = [\"127.0.0.1:5432\"]\n",
    )
    .replace("mode = \"inbound\"", "mode = \"inbound\"\nopaque_ports = [3306]\ndetect_timeout = \"300ms\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.toml");
    std::fs::write(&path, &good).unwrap();
    let output = remora_check(&path, &[]).await;
    assert!(output.status.success(), "{}\n{good}", String::from_utf8_lossy(&output.stderr));

    std::fs::write(&path, good.replace("protocol = \"tcp\"\ncluster = \"db\"", "protocol = \"tcp\""))
        .unwrap();
    let output = remora_check(&path, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("listeners[2].cluster: missing required key"), "{stderr}");
}
