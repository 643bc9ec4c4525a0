//! WebSocket through the proxy (HTTP/1.1 Upgrade): frames both ways and a clean close.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::Message;

/// What the upstream saw in the upgrade request: (path, Host, Upgrade).
type Handshake = (String, Option<String>, Option<String>);

/// A WebSocket echo server; each handshake it accepts is reported on the channel.
async fn websocket_echo() -> (Upstream, mpsc::UnboundedReceiver<Handshake>) {
    let (report, handshakes) = mpsc::unbounded_channel();
    let upstream = Upstream::raw(move |tcp| {
        let report = report.clone();
        async move {
            #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
            let callback = |request: &WsRequest, response: WsResponse| {
                let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                let _ = report.send((request.uri().path().to_owned(), header("host"), header("upgrade")));
                Ok(response)
            };
            let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
            while let Some(Ok(message)) = socket.next().await {
                // tungstenite answers pings and closes by itself while the stream is polled.
                let echo = matches!(message, Message::Text(_) | Message::Binary(_));
                if echo && socket.send(message).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (upstream, handshakes)
}

async fn proxy_to(upstream: &Upstream) -> Proxy {
    let text = config(
        r#"{ADMIN}
{LISTENER}
[[routes]]
name = "ws"
listener = "main"
match = { path_prefix = "/ws" }
backends = [{ cluster = "ws", weight = 1 }]

[clusters.ws]
endpoints = ["{UP}"]
"#,
        &[("UP", &upstream.addr)],
    );
    Proxy::start(&text).await
}

#[tokio::test]
async fn websocket_frames_are_echoed_and_the_close_is_clean() {
    let (upstream, mut handshakes) = websocket_echo().await;
    let proxy = proxy_to(&upstream).await;

    let url = format!("ws://{}/ws/chat", proxy.addr());
    let (mut socket, response) =
        within("the WebSocket handshake through the proxy", tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|error| panic!("WebSocket handshake through the proxy failed: {error}"));
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let (path, host, upgrade) = within("the upstream's handshake report", handshakes.recv()).await.unwrap();
    assert_eq!(path, "/ws/chat");
    assert_eq!(
        host.as_deref(),
        Some(proxy.addr().to_string().as_str()),
        "Host must reach the upstream unchanged"
    );
    assert_eq!(upgrade.map(|u| u.to_ascii_lowercase()).as_deref(), Some("websocket"));

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let messages = [
        Message::text("hello through remora"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("ünïcödé ✓"),
        Message::binary(big),
        Message::text(""),
    ];
    for (index, message) in messages.iter().enumerate() {
        within("sending a WebSocket message", socket.send(message.clone())).await.expect("send");
        let echo = within(&format!("the echo of WebSocket message {index}"), socket.next()).await;
        match echo {
            Some(Ok(echo)) => assert_eq!(&echo, message, "message {index} came back changed"),
            other => panic!("message {index}: expected its echo, got {other:?}"),
        }
    }

    within("sending the close frame", socket.close(None)).await.expect("close");
    let mut saw_close = false;
    loop {
        match within_for(Duration::from_secs(10), "the close handshake", socket.next()).await {
            Some(Ok(Message::Close(_))) => saw_close = true,
            Some(Ok(other)) => panic!("unexpected message after close: {other:?}"),
            Some(Err(error)) => panic!("the close was not clean: {error}"),
            None => break,
        }
    }
    assert!(saw_close, "the upstream's close frame must come back through the proxy");
}

#[tokio::test]
async fn plain_http_still_works_after_a_websocket_session() {
    let (upstream, _handshakes) = websocket_echo().await;
    let proxy = proxy_to(&upstream).await;
    let (mut socket, _) =
        within("handshake", tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr())))
            .await
            .expect("WebSocket handshake through the proxy");
    within("send", socket.send(Message::text("ping"))).await.unwrap();
    assert_eq!(within("echo", socket.next()).await.unwrap().unwrap(), Message::text("ping"));
    drop(socket);

    // A route miss on a fresh connection still gets the proxy's own answer.
    let response = within(
        "GET /other",
        h1_client().request(http::Request::get(proxy.url("/other")).body(empty()).unwrap()),
    )
    .await
    .expect("GET /other");
    assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
}
