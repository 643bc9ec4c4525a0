//! Step 1 of a request's way: binding the configured listeners and accepting connections. A reverse
//! listener serves each with hyper's auto server (HTTP/1.1 and HTTP/2 prior knowledge on one port)
//! under a graceful-shutdown watcher; a reverse `tcp` listener forwards each to its cluster (`tcp`);
//! inbound and outbound listeners decide per connection from its original destination (`sidecar`).

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
use crate::sidecar::{self, Own};
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
        .max_headers(limits.max_headers)
        // A sidecar is transparent: a client that shuts its sending side after the request still
        // gets the answer, as it would without the sidecar in between.
        .half_close(listener.mode != config::ListenerMode::Reverse);
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
) -> TcpListener {
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
    socket
}

/// The next connection on `socket`, or `None` once `stop` changes. Accept errors (out of file
/// descriptors and the like) are logged and waited out rather than spun on.
pub async fn accept(
    socket: &TcpListener,
    name: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return None,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
                return Some((stream, client));
            }
            Err(error) => {
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The listeners serving now, by name: each with its accept loop and the graceful-shutdown watcher of
/// its connections. A reload starts, restarts and stops them one by one.
#[derive(Default)]
pub struct ListenerSet {
    running: std::collections::BTreeMap<String, Running>,
    /// Every listener's address and the proxy's upstream ports, for sidecar loop detection.
    own: Arc<Own>,
}

struct Running {
    config: config::Listener,
    addr: SocketAddr,
    /// A duplicate of the listening socket, to hand to a successor process.
    fd: Option<std::os::fd::OwnedFd>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<TcpListener>,
    graceful: Arc<GracefulShutdown>,
}

impl ListenerSet {
    /// Starts accepting on `socket` for `listener`.
    pub fn start(&mut self, listener: &config::Listener, socket: TcpListener, shared: &Arc<Shared>) {
        self.start_with(listener, socket, shared, Arc::new(GracefulShutdown::new()));
    }

    fn start_with(
        &mut self,
        listener: &config::Listener,
        socket: TcpListener,
        shared: &Arc<Shared>,
        graceful: Arc<GracefulShutdown>,
    ) {
        use std::os::fd::AsFd;
        let addr = local_addr(&socket, listener.listen);
        let fd = socket.as_fd().try_clone_to_owned().ok();
        let (stop, stop_rx) = watch::channel(false);
        let accept = match (listener.mode, listener.protocol) {
            (config::ListenerMode::Reverse, config::ListenerProtocol::Tcp) => {
                tokio::spawn(crate::tcp::accept_loop(
                    socket,
                    Arc::new(listener.clone()),
                    shared.clone(),
                    graceful.clone(),
                    shared.own_ports.clone(),
                    stop_rx,
                ))
            }
            (config::ListenerMode::Reverse, _) => tokio::spawn(accept_loop(
                socket,
                listener.name.as_str().into(),
                connection_builder(listener),
                shared.clone(),
                graceful.clone(),
                stop_rx,
            )),
            (config::ListenerMode::Inbound | config::ListenerMode::Outbound, _) => {
                let setup = sidecar::Setup {
                    listener: Arc::new(listener.clone()),
                    builder: connection_builder(listener),
                    shared: shared.clone(),
                    graceful: graceful.clone(),
                    own: self.own.clone(),
                    lookup: sidecar::Lookup::Kernel,
                };
                tokio::spawn(sidecar::accept_loop(socket, setup, stop_rx))
            }
        };
        tracing::info!(listener = %listener.name, %addr, mode = ?listener.mode, protocol = ?listener.protocol, "listening");
        let running = Running { config: listener.clone(), addr, fd, stop, accept, graceful };
        self.running.insert(listener.name.clone(), running);
        self.note_addresses();
    }

    /// Publishes the running listeners' addresses for loop detection.
    fn note_addresses(&self) {
        let addresses = self.running.values().map(|running| running.addr).collect();
        self.own.listeners.store(Arc::new(addresses));
    }

    /// The configuration a listener runs with, and its bound address.
    pub fn get(&self, name: &str) -> Option<(&config::Listener, SocketAddr)> {
        self.running.get(name).map(|running| (&running.config, running.addr))
    }

    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Bound addresses, by name.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.running.iter().map(|(name, running)| (name.clone(), running.addr)).collect()
    }

    /// The listening sockets, for a successor process (duplicates: this process keeps its own).
    pub fn sockets(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.running
            .iter()
            .filter_map(|(name, running)| Some((name.clone(), running.fd.as_ref()?.try_clone().ok()?)))
            .collect()
    }

    /// Stops accepting on `name` and returns its socket; its open connections are drained in the
    /// background (in-flight requests finish, idle keep-alive connections close, HTTP/2 gets GOAWAY)
    /// for at most `grace_period`.
    pub async fn stop(&mut self, name: &str, grace_period: Duration) -> Option<TcpListener> {
        let running = self.running.remove(name)?;
        self.note_addresses();
        let _ = running.stop.send(true);
        let socket = running.accept.await.ok();
        tokio::spawn(drain(running.graceful, grace_period));
        socket
    }

    /// Stops accepting on a listener and starts again on the same socket with new settings (protocols,
    /// limits); connections already open keep the settings they started with.
    pub async fn restart(&mut self, listener: &config::Listener, shared: &Arc<Shared>) {
        let Some(running) = self.running.remove(&listener.name) else { return };
        let _ = running.stop.send(true);
        match running.accept.await {
            // The same watcher: the open connections are drained with the new ones at shutdown.
            Ok(socket) => self.start_with(listener, socket, shared, running.graceful),
            Err(error) => tracing::error!(listener = %listener.name, %error, "accept loop failed"),
        }
    }

    /// Stops every listener and drains all their connections within `grace_period`; true when every
    /// connection finished in time.
    ///
    /// First, for up to [`LEAVE_WINDOW`], HTTP/1 responses carry `connection: close` and clients leave
    /// between two requests of their own accord; closing an idle keep-alive connection at once would
    /// race a request the client may be sending on it. Then the connections still open are shut down
    /// gracefully (idle ones closed, HTTP/2 GOAWAY, in-flight requests finish).
    pub async fn shutdown(&mut self, shared: &Shared, grace_period: Duration) -> bool {
        let started = tokio::time::Instant::now();
        let mut draining = Vec::new();
        for (_, running) in std::mem::take(&mut self.running) {
            let _ = running.stop.send(true);
            let _ = running.accept.await;
            draining.push(running.graceful);
        }
        shared.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let leave = started + LEAVE_WINDOW.min(grace_period);
        while tokio::time::Instant::now() < leave
            && shared.stats.open_connections().iter().any(|(_, open)| *open > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grace_period = grace_period.saturating_sub(started.elapsed());
        let all = futures_util::future::join_all(draining.into_iter().map(|graceful| async move {
            if let Ok(graceful) = Arc::try_unwrap(graceful) {
                graceful.shutdown().await;
            }
        }));
        tokio::time::timeout(grace_period, all).await.is_ok()
    }
}

/// How long clients get to leave by themselves on shutdown before their idle connections are closed.
pub const LEAVE_WINDOW: Duration = Duration::from_secs(2);

/// Drains one stopped listener's connections, bounded by the grace period.
async fn drain(graceful: Arc<GracefulShutdown>, grace_period: Duration) {
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(grace_period, graceful.shutdown()).await.is_err() {
            tracing::warn!("grace period over: closing a removed listener's connections still open");
        }
    }
}

/// The address a listener actually bound (port 0 becomes a real port).
pub fn local_addr(socket: &TcpListener, configured: SocketAddr) -> SocketAddr {
    socket.local_addr().unwrap_or(configured)
}
