//! Opaque TCP forwarding: bytes copied both ways, exactly, with a half-close passed on (a side that
//! finishes sending gets the other's write side shut down, and the other may keep sending) and a
//! reset passed on (an error on either side aborts both with `SO_LINGER` 0, so the peer sees a reset,
//! never a clean end of stream that would pass a truncated transfer off as complete).
//!
//! Used by reverse listeners with `protocol = "tcp"` (each connection to an endpoint of the
//! listener's cluster, chosen by the cluster's balancer) and by sidecar listeners for whatever is not
//! served as HTTP (to the connection's original destination). Upstream sockets are bound before they
//! connect, and their ports noted in [`OwnPorts`], so that a connection of the proxy's own that
//! redirect rules send back to it is recognised as a loop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::outcome::CallResult;
use crate::snapshot::Shared;
use crate::stats::tcp::TcpSeries;

/// Bytes read at a time, per direction.
const BUFFER_BYTES: usize = 16 * 1024;

/// How long a connect to an original destination may take (a cluster has its own `connect_timeout`).
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many endpoints a reverse `tcp` connection tries before it gives up.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Which side of a forwarded connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed their sending side; every byte was passed on.
    Closed,
    /// `side` failed (a reset, usually): both were aborted.
    Reset { side: Side, error: io::Error },
}

/// Copies `downstream` ⇄ `upstream` until both directions have ended, after writing `prefix` (bytes
/// already read from downstream) upstream. Counts bytes into `series` as they pass.
pub async fn splice(downstream: TcpStream, prefix: &[u8], upstream: TcpStream, series: &TcpSeries) -> Ended {
    let (mut downstream, mut upstream) = (downstream, upstream);
    keep_alive(&downstream);
    keep_alive(&upstream);
    let result = {
        let (mut down_read, mut down_write) = downstream.split();
        let (mut up_read, mut up_write) = upstream.split();
        let upward = async {
            if !prefix.is_empty() {
                up_write.write_all(prefix).await.map_err(|error| (Side::Upstream, error))?;
                series.received(prefix.len());
            }
            copy(&mut down_read, &mut up_write, (Side::Downstream, Side::Upstream), |bytes| {
                series.received(bytes)
            })
            .await
        };
        let downward = copy(&mut up_read, &mut down_write, (Side::Upstream, Side::Downstream), |bytes| {
            series.sent(bytes)
        });
        tokio::try_join!(upward, downward)
    };
    match result {
        Ok(_) => Ended::Closed,
        Err((side, error)) => {
            abort(&downstream);
            abort(&upstream);
            Ended::Reset { side, error }
        }
    }
}

/// One direction: reads until end of stream, then shuts the writer's sending side down (a half-close
/// passed on). An error is returned with the side it came from.
async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    (from, to): (Side, Side),
    mut counted: impl FnMut(usize),
) -> Result<(), (Side, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        let read = reader.read(&mut buffer).await.map_err(|error| (from, error))?;
        if read == 0 {
            return writer.shutdown().await.map_err(|error| (to, error));
        }
        writer.write_all(&buffer[..read]).await.map_err(|error| (to, error))?;
        counted(read);
    }
}

/// Whether sockets can be marked with `mark` here (SO_MARK needs CAP_NET_ADMIN): tried on a socket
/// made for the purpose, so that a proxy without the capability says so at start or on reload,
/// not on every connection.
pub fn check_mark(mark: u32) -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_mark(mark)
}

/// TCP keepalive on a forwarded connection: an opaque connection has no idle timeout (a database
/// session may rightly sit quiet for hours), so a peer that vanished without a reset (a node gone, a
/// partition) is found by probes — after 5 minutes of silence, 6 probes 30 s apart — and its task and
/// sockets end instead of living for good.
pub fn keep_alive(stream: &TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(30))
        .with_retries(6);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(%error, "could not set TCP keepalive");
    }
}

/// How long a forwarded connection may be silent before keepalive probes start.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(300);

/// Makes the socket's close a reset (RST) rather than an orderly end (FIN).
pub fn abort(stream: &TcpStream) {
    if let Err(error) = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO)) {
        tracing::debug!(%error, "could not set SO_LINGER 0");
    }
}

/// Connects to `addr` from a socket bound first, whose port stays noted in `own` while the
/// connection lives (see [`OwnPorts`]).
pub async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    own: &Arc<OwnPorts>,
) -> io::Result<(TcpStream, OwnPort)> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(mark) = own.mark() {
        // Before the connect: the first packet is what the nat table judges.
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    let unspecified: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(unspecified)?;
    let port = own.hold(socket.local_addr()?.port());
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(connected) => connected?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok((stream, port))
}

/// Connects to the original destination `to` and forwards `downstream` to it; a connect that fails
/// resets the client (the nearest a proxy can come to the refusal it would have seen).
pub async fn forward(
    downstream: TcpStream,
    prefix: &[u8],
    to: SocketAddr,
    series: &Arc<TcpSeries>,
    own: &Arc<OwnPorts>,
) {
    match dial(to, PASSTHROUGH_CONNECT_TIMEOUT, own).await {
        Ok((upstream, _port)) => {
            // Counted once connected, as a cluster's connections are.
            let active = series.open();
            log_end(splice(downstream, prefix, upstream, active.series()).await, to)
        }
        Err(error) => {
            series.connect_failed();
            tracing::debug!(listener = %series.listener, %to, %error, "connect to the original destination failed");
            abort(&downstream);
        }
    }
}

fn log_end(ended: Ended, to: impl std::fmt::Display) {
    if let Ended::Reset { side, error } = ended {
        tracing::debug!(%to, ?side, %error, "forwarded connection reset");
    }
}

/// Accepts on a reverse listener with `protocol = "tcp"` until `stop` changes: each connection goes
/// to an endpoint of the listener's cluster.
pub async fn accept_loop(
    socket: TcpListener,
    listener: Arc<remora_config::Listener>,
    shared: Arc<Shared>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    own: Arc<OwnPorts>,
    mut stop: watch::Receiver<bool>,
) -> TcpListener {
    let name: Arc<str> = listener.name.as_str().into();
    let cluster: Arc<str> = listener.cluster.as_deref().unwrap_or_default().into();
    let series = shared.stats.tcp(&name, &cluster);
    let connections = shared.stats.connections(&name);
    while let Some((stream, _client)) = crate::listener::accept(&socket, &name, &mut stop).await {
        let open = crate::stats::ConnectionGuard::new(&connections);
        // Held, not watched: a graceful shutdown waits for opaque connections to end by themselves
        // (within the grace period), as it has no way to ask them to.
        let watcher = graceful.watcher();
        let (shared, cluster, series, own) = (shared.clone(), cluster.clone(), series.clone(), own.clone());
        tokio::spawn(async move {
            let (_open, _watcher) = (open, watcher);
            to_cluster(stream, &shared, &cluster, &series, &own).await;
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
    socket
}

/// Forwards a connection to an endpoint of `cluster`: the balancer's choice among the endpoints
/// outlier detection leaves eligible, within the cluster's `max_connections`; a connect that fails
/// counts against its endpoint and the next endpoint is tried (up to 3).
async fn to_cluster(
    downstream: TcpStream,
    shared: &Shared,
    name: &str,
    series: &Arc<TcpSeries>,
    own: &Arc<OwnPorts>,
) {
    let (cluster, connect_timeout) = {
        let snapshot = shared.snapshot.load();
        let timeout = snapshot.config.clusters.get(name).map(|cluster| cluster.connect_timeout.get());
        (snapshot.cluster(name).cloned(), timeout.unwrap_or(Duration::from_secs(1)))
    };
    let Some(cluster) = cluster else {
        tracing::warn!(listener = %series.listener, cluster = %name, "no such cluster: connection reset");
        return abort(&downstream);
    };
    let Ok(_slot) = cluster.limits.connection() else {
        tracing::debug!(cluster = %name, "max_connections reached: connection reset");
        return abort(&downstream);
    };
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    while tried.len() < MAX_CONNECT_ATTEMPTS.min(cluster.endpoints.len()) {
        let now = Instant::now();
        let eligible = cluster.outlier.eligible(now);
        for restored in &eligible.restored {
            cluster.outlier_event(*restored);
        }
        let untried = |index: usize| !tried.contains(&index);
        let Some(index) = cluster
            .balancer
            .pick(|index| eligible.allows(index) && untried(index), now)
            .or_else(|| cluster.balancer.pick(untried, now))
        else {
            break;
        };
        tried.push(index);
        let endpoint = &cluster.endpoints[index];
        let in_flight = cluster.balancer.start(index);
        match resolve_and_dial(&endpoint.address, connect_timeout, own).await {
            Ok((upstream, _port)) => {
                let connected = Instant::now();
                cluster.balancer.observe(index, connected - now, connected);
                // A connection made counts as a success: it ends a run of connect failures.
                cluster.outlier.record(index, CallResult::Status(200), connected);
                let active = series.open();
                log_end(splice(downstream, &[], upstream, active.series()).await, &endpoint.address);
                drop(in_flight);
                return;
            }
            Err(error) => {
                series.connect_failed();
                tracing::debug!(cluster = %name, endpoint = %endpoint.address, %error, "connect failed");
                if let Some(event) = cluster.outlier.record(index, CallResult::Connect, Instant::now()) {
                    cluster.outlier_event(event);
                }
            }
        }
    }
    abort(&downstream);
}

/// `address` as a configured endpoint writes it (`IP:port` or `host:port`), resolved, then dialled.
async fn resolve_and_dial(
    address: &str,
    timeout: Duration,
    own: &Arc<OwnPorts>,
) -> io::Result<(TcpStream, OwnPort)> {
    let addr = match address.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => lookup(address).await?,
    };
    dial(addr, timeout, own).await
}

/// The first address a host name (with its port) resolves to.
pub async fn lookup(target: impl tokio::net::ToSocketAddrs) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address"))
}

/// The local ports of the upstream connections this proxy has open, as a bitmap: one bit per port.
///
/// A port bound explicitly is the socket's alone (no other socket's connect picks it while it is
/// bound), so an accepted connection that comes *from* one of these ports is one of the proxy's own,
/// sent back to it by redirect rules that do not skip the proxy's UID: a loop.
///
/// The same dials carry `[runtime] socket_mark` when one is set: rules that skip marked traffic
/// (`remora init --proxy-mark`) then keep them out of the redirect as the UID rule does.
#[derive(Debug)]
pub struct OwnPorts {
    bits: Box<[AtomicU64]>,
    /// SO_MARK for dialled sockets; 0: none (0 is no mark to netfilter either).
    mark: AtomicU32,
}

impl Default for OwnPorts {
    fn default() -> Self {
        Self { bits: (0..65_536 / 64).map(|_| AtomicU64::new(0)).collect(), mark: AtomicU32::new(0) }
    }
}

impl OwnPorts {
    /// Sets the mark the next dials carry (see [`check_mark`] first).
    pub fn set_mark(&self, mark: Option<u32>) {
        self.mark.store(mark.unwrap_or(0), Ordering::Relaxed);
    }

    fn mark(&self) -> Option<u32> {
        Some(self.mark.load(Ordering::Relaxed)).filter(|mark| *mark != 0)
    }

    /// Notes `port` as one of the proxy's own until the returned guard drops.
    pub fn hold(self: &Arc<Self>, port: u16) -> OwnPort {
        let (word, bit) = Self::position(port);
        self.bits[word].fetch_or(bit, Ordering::Relaxed);
        OwnPort { ports: self.clone(), port }
    }

    /// Whether an upstream connection of this proxy is bound to `port` now.
    pub fn contains(&self, port: u16) -> bool {
        let (word, bit) = Self::position(port);
        self.bits[word].load(Ordering::Relaxed) & bit != 0
    }

    fn position(port: u16) -> (usize, u64) {
        (usize::from(port / 64), 1u64 << (port % 64))
    }
}

/// A port noted in [`OwnPorts`] while the connection bound to it lives.
#[derive(Debug)]
pub struct OwnPort {
    ports: Arc<OwnPorts>,
    port: u16,
}

impl Drop for OwnPort {
    fn drop(&mut self) {
        let (word, bit) = OwnPorts::position(self.port);
        self.ports.bits[word].fetch_and(!bit, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on 127.0.0.1: (the connecting side, the accepted side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn series() -> Arc<TcpSeries> {
        Arc::new(TcpSeries::new("test".into(), "".into()))
    }

    #[tokio::test]
    async fn forwarded_sockets_probe_a_silent_peer() {
        let (client, server) = pair().await;
        let socket = socket2::SockRef::from(&client);
        assert!(!socket.keepalive().unwrap(), "off until set");
        keep_alive(&client);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 6);
        drop(server);
    }

    #[tokio::test]
    async fn a_dialled_port_is_own_while_its_connection_lives() {
        let own = Arc::new(OwnPorts::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stream, port) =
            dial(listener.local_addr().unwrap(), Duration::from_secs(5), &own).await.unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert!(own.contains(peer.port()), "the accepted side sees the proxy's own port");
        assert!(!own.contains(listener.local_addr().unwrap().port()));
        drop((stream, port));
        assert!(!own.contains(peer.port()));
    }

    #[tokio::test]
    async fn splice_passes_a_half_close_on_and_keeps_the_other_way_open() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let series = series();
        let spliced = tokio::spawn({
            let series = series.clone();
            async move { splice(proxy_down, b"pre:", proxy_up, &series).await }
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pre:hello", "the server sees the client's end of stream");
        server.write_all(b"still talking").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"still talking");
        assert!(matches!(spliced.await.unwrap(), Ended::Closed));
        let figures = series.figures();
        assert_eq!((figures.received, figures.sent), (9, 13));
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, server) = pair().await;
        let spliced = tokio::spawn(async move { splice(proxy_down, &[], proxy_up, &series()).await });
        client.write_all(b"x").await.unwrap();
        abort(&server);
        drop(server);
        let ended = spliced.await.unwrap();
        assert!(matches!(ended, Ended::Reset { side: Side::Upstream, .. }), "{ended:?}");
        let mut buffer = [0u8; 16];
        let read = client.read(&mut buffer).await;
        assert_eq!(
            read.map_err(|error| error.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "the client sees a reset, not an end of stream"
        );
    }
}
