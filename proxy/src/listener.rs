//! Step 1 of a request's way: binding the configured listeners and accepting connections, each served
//! by hyper's auto server (HTTP/1.1 and HTTP/2 prior knowledge on one port) under a graceful-shutdown
//! watcher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use remora_config as config;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::ServeError;
use crate::server::ProxyService;
use crate::snapshot::Shared;

/// Binds a socket for a configured listener.
pub async fn bind(listener: &config::Listener) -> Result<TcpListener, ServeError> {
    TcpListener::bind(listener.listen).await.map_err(|source| ServeError::Bind {
        what: format!("listener {:?}", listener.name),
        addr: listener.listen,
        source,
    })
}

/// The connection settings of a listener: protocols and the limits on what a client may send.
pub fn connection_builder(listener: &config::Listener) -> auto::Builder<TokioExecutor> {
    let limits = &listener.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    match listener.protocol {
        config::ListenerProtocol::Http1 => builder.http1_only(),
        config::ListenerProtocol::Http2 => builder.http2_only(),
        config::ListenerProtocol::Auto | config::ListenerProtocol::Tcp => builder,
    }
}

/// Accepts connections until `stop` changes; each connection is watched by `graceful` so that a
/// graceful shutdown can wait for it.
pub async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    builder: auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder);
    let connections = shared.stats.connections(&name);
    loop {
        let (stream, client) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let service = ProxyService::new(shared.clone(), name.clone(), client);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let open = crate::stats::ConnectionGuard::new(&connections);
        tokio::spawn(async move {
            let _open = open;
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(client = %client, error = %error, "connection ended with an error");
            }
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

/// The address a listener actually bound (port 0 becomes a real port).
pub fn local_addr(socket: &TcpListener, configured: SocketAddr) -> SocketAddr {
    socket.local_addr().unwrap_or(configured)
}
