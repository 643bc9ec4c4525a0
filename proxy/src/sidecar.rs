//! Inbound and outbound listeners: the proxy beside a service, fed by redirect rules (`remora init`'s
//! iptables REDIRECT to port 4143 for inbound traffic and 4140 for the service's own outbound
//! connections). Each connection's original destination is read with `SO_ORIGINAL_DST`, and one pure
//! function, [`decide`], says what happens to it:
//!
//! - **outbound**: to a known service (an address in the listener's `services`, or an endpoint of a
//!   cluster one of its routes sends to, a host name's by what it resolves to), HTTP goes through the listener's routes like a reverse
//!   listener's (split, breakers, stats); anything else is forwarded as opaque TCP to where it was
//!   going. Not redirected: refused, there is nowhere to forward it.
//! - **inbound**: HTTP goes through the listener's routes when routes name it, else to the local app
//!   at `127.0.0.1:<original port>` (its requests counted like any route's); anything else is
//!   forwarded as opaque TCP to that same local port. Not redirected: served by the routes if any,
//!   else refused.
//!
//! Protocol `auto` detects HTTP from the first bytes (`detect`), unless the original port is one of
//! the listener's `opaque_ports`. A connection whose forwarding would come back to this proxy (its
//! target is one of the proxy's own listeners, or it comes from one of the proxy's own upstream
//! sockets) is a loop: refused, counted and logged once per interval.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use remora_config as config;
use remora_config::{ListenerMode, ListenerProtocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::detect::{self, Prefixed};
use crate::server::{Fixed, LocalApp, ProxyService, Targets};
use crate::snapshot::Shared;
use crate::stats::tcp::{Detected, ListenerCounters, Refusal, TcpSeries};
use crate::tcp;

/// An outbound listener's known services: original destinations its routes serve, each with the
/// cluster it is an endpoint of (for the TCP stats of a connection that turns out not to be HTTP).
/// Endpoints written as host names are resolved apart, by [`resolve_hostnames`].
#[derive(Debug, Default)]
pub struct Services {
    known: HashMap<SocketAddr, Option<Arc<str>>>,
    /// Endpoints of the routes' clusters written as `host:port`, with their cluster.
    hostnames: Vec<(String, u16, Arc<str>)>,
    /// Whether any route serves this listener.
    pub has_routes: bool,
}

impl Services {
    /// The services of `listener` in `config`: the listener's `services`, and every endpoint of the
    /// clusters its routes send to.
    pub fn of(config: &config::Config, listener: &config::Listener) -> Self {
        let routes: Vec<&config::Route> =
            config.routes.iter().filter(|route| route.listeners.contains(&listener.name)).collect();
        let mut known = HashMap::new();
        let mut hostnames = Vec::new();
        if listener.mode == ListenerMode::Outbound {
            for route in &routes {
                for backend in &route.backends {
                    let Some(cluster) = config.clusters.get(&backend.cluster) else { continue };
                    let name: Arc<str> = cluster.name.as_str().into();
                    for endpoint in &cluster.endpoints {
                        match endpoint.socket_addr {
                            Some(addr) => {
                                known.entry(addr).or_insert_with(|| Some(name.clone()));
                            }
                            None => hostnames.push((endpoint.host.clone(), endpoint.port, name.clone())),
                        }
                    }
                }
            }
            for addr in &listener.services {
                known.entry(*addr).or_insert(None);
            }
        }
        Self { known, hostnames, has_routes: !routes.is_empty() }
    }

    /// `Some(cluster)` when `destination` is a known service (`cluster` is `None` for one listed only
    /// in `services`).
    pub fn lookup(&self, destination: &SocketAddr) -> Option<Option<&Arc<str>>> {
        self.known.get(destination).map(Option::as_ref)
    }
}

/// What one connection's circumstances are, as [`decide`] needs them.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub mode: ListenerMode,
    pub protocol: ListenerProtocol,
    /// The original destination; `None` when the connection was not redirected.
    pub destination: Option<SocketAddr>,
    /// The destination's port is one of the listener's `opaque_ports`.
    pub opaque_port: bool,
    /// Outbound: the destination is a known service.
    pub known: bool,
    /// Routes serve this listener.
    pub has_routes: bool,
    /// The connection comes from one of this proxy's own upstream sockets.
    pub from_self: bool,
}

/// What happens to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Closed with a reset, counted.
    Refuse(Refusal),
    /// Closed with a reset, counted as a loop and logged: forwarding it would come back here.
    Loop { target: Option<SocketAddr> },
    /// Forwarded as opaque TCP at once, without reading a byte first.
    Forward(SocketAddr),
    /// Served as HTTP, after detection when `detect`; bytes that are not HTTP go to `fallback` as
    /// opaque TCP (or are refused as [`Refusal::NotHttp`] when there is none).
    Http { detect: bool, fallback: Option<SocketAddr>, to: HttpTarget },
}

/// Where a sidecar listener's HTTP requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpTarget {
    /// The listener's routes.
    Routes,
    /// The local app on this port (`127.0.0.1`, or `::1` for an IPv6 destination).
    LocalApp(u16),
}

/// The rules of the module's documentation. `is_own_listener` says whether an address is one of this
/// proxy's listeners (forwarding there would loop).
pub fn decide(facts: Facts, is_own_listener: impl Fn(SocketAddr) -> bool) -> Decision {
    let detect = facts.protocol == ListenerProtocol::Auto;
    let opaque = facts.protocol == ListenerProtocol::Tcp || facts.opaque_port;
    if facts.from_self {
        return Decision::Loop { target: facts.destination };
    }
    match (facts.mode, facts.destination) {
        (ListenerMode::Outbound, None) => Decision::Refuse(Refusal::NoOriginalDestination),
        (ListenerMode::Outbound, Some(destination)) => {
            if is_own_listener(destination) {
                Decision::Loop { target: Some(destination) }
            } else if opaque || !facts.known {
                Decision::Forward(destination)
            } else {
                Decision::Http { detect, fallback: Some(destination), to: HttpTarget::Routes }
            }
        }
        (ListenerMode::Inbound, None) if facts.has_routes && facts.protocol != ListenerProtocol::Tcp => {
            Decision::Http { detect, fallback: None, to: HttpTarget::Routes }
        }
        (ListenerMode::Inbound, None) => Decision::Refuse(Refusal::NoOriginalDestination),
        (ListenerMode::Inbound, Some(destination)) => {
            let local = local_app(destination);
            if is_own_listener(local) {
                Decision::Loop { target: Some(local) }
            } else if opaque {
                Decision::Forward(local)
            } else {
                let to =
                    if facts.has_routes { HttpTarget::Routes } else { HttpTarget::LocalApp(local.port()) };
                Decision::Http { detect, fallback: Some(local), to }
            }
        }
        // Reverse listeners are served by `listener` and `tcp`; one that reaches here has nothing
        // to forward to.
        (ListenerMode::Reverse, _) => Decision::Refuse(Refusal::NoOriginalDestination),
    }
}

/// The local app's address for an inbound destination: the same port on the loopback address of the
/// destination's family.
fn local_app(destination: SocketAddr) -> SocketAddr {
    let ip = match destination.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, destination.port())
}

/// Where this proxy itself listens, for loop detection (where it dials from is
/// [`Shared::own_ports`](crate::snapshot::Shared::own_ports)).
#[derive(Debug, Default)]
pub struct Own {
    /// The bound addresses of every running listener.
    pub listeners: ArcSwap<Vec<SocketAddr>>,
}

impl Own {
    /// Whether `target` reaches one of this proxy's listeners. A listener on an unspecified address
    /// (`0.0.0.0`) is reached through its port on loopback or on `local`, the address the connection
    /// being decided came in on (other local addresses are not known here).
    pub fn is_listener(&self, target: SocketAddr, local: IpAddr) -> bool {
        let target = normalize(target);
        self.listeners.load().iter().any(|listener| {
            let listener = normalize(*listener);
            listener.port() == target.port()
                && (listener.ip() == target.ip()
                    || (listener.ip().is_unspecified()
                        && (target.ip().is_loopback() || target.ip() == normalize_ip(local))))
        })
    }
}

fn normalize(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize_ip(addr.ip()), addr.port())
}

fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Where the original destination of an accepted connection comes from.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`: the redirect rules' conntrack entry.
    Kernel,
    /// In tests: by the client's address, as the test set it (no NAT on 127.0.0.1).
    #[cfg(test)]
    Table(Arc<std::sync::Mutex<HashMap<SocketAddr, SocketAddr>>>),
}

impl Lookup {
    fn original_destination(&self, stream: &TcpStream, client: SocketAddr) -> Option<SocketAddr> {
        match self {
            Lookup::Kernel => {
                let _ = client;
                original_destination(stream)
            }
            #[cfg(test)]
            Lookup::Table(table) => table.lock().unwrap().get(&client).copied(),
        }
    }
}

/// The connection's original destination, when the redirect rules changed it: `None` without a
/// conntrack entry (`ENOENT`: no NAT) or when it is the address the connection reached anyway.
pub fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let local = normalize(stream.local_addr().ok()?);
    let original = match local {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(stream).map(SocketAddr::V4),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(stream).map(SocketAddr::V6),
    };
    match original {
        Ok(original) => Some(normalize(original)).filter(|original| *original != local),
        Err(errno) => {
            if errno != rustix::io::Errno::NOENT && errno != rustix::io::Errno::NOPROTOOPT {
                tracing::debug!(error = %errno, "SO_ORIGINAL_DST failed");
            }
            None
        }
    }
}

/// What every connection of one sidecar listener shares.
struct Context {
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: Arc<config::Listener>,
    builder: auto::Builder<TokioExecutor>,
    counters: Arc<ListenerCounters>,
    own: Arc<Own>,
    /// The addresses the routes' host-name endpoints resolve to, by [`resolve_hostnames`].
    resolved: Arc<ArcSwap<Resolved>>,
}

/// Addresses of host-name endpoints, with their cluster.
type Resolved = HashMap<SocketAddr, Arc<str>>;

/// How often host-name endpoints are resolved again (and at once when the configuration changes).
const RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps `resolved` to what the host-name endpoints of `listener`'s known services resolve to: at
/// start, on every new snapshot, and every [`RESOLVE_INTERVAL`]. A name that fails to resolve keeps
/// its last addresses. Runs until aborted.
async fn resolve_hostnames(shared: Arc<Shared>, listener: Arc<str>, resolved: Arc<ArcSwap<Resolved>>) {
    let mut last: Option<Arc<crate::snapshot::Snapshot>> = None;
    let mut due = tokio::time::Instant::now();
    let mut by_name: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
    loop {
        let snapshot = shared.snapshot.load_full();
        let changed = last.as_ref().is_none_or(|last| !Arc::ptr_eq(last, &snapshot));
        if changed || tokio::time::Instant::now() >= due {
            let hostnames = snapshot.services(&listener).map(|services| services.hostnames.clone());
            last = Some(snapshot);
            let mut addresses = Resolved::new();
            for (host, port, cluster) in hostnames.unwrap_or_default() {
                let key = (host, port);
                let lookup = tokio::net::lookup_host((key.0.as_str(), port));
                match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
                    Ok(Ok(found)) => {
                        by_name.insert(key.clone(), found.map(normalize).collect());
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(listener = %listener, host = %key.0, %error, "endpoint name did not resolve")
                    }
                    Err(_) => {
                        tracing::debug!(listener = %listener, host = %key.0, "endpoint name: lookup timed out")
                    }
                }
                for addr in by_name.get(&key).into_iter().flatten() {
                    addresses.entry(*addr).or_insert_with(|| cluster.clone());
                }
            }
            resolved.store(Arc::new(addresses));
            due = tokio::time::Instant::now() + RESOLVE_INTERVAL;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The local app targets an inbound listener has made, by address (`127.0.0.1:PORT` or
/// `[::1]:PORT`: one family's connections never go to the other's loopback): kept by its accept
/// loop (no lock), at most [`MAX_LOCAL_PORTS`].
type LocalApps = HashMap<SocketAddr, Arc<LocalApp>>;

/// Distinct local app ports an inbound listener serves as HTTP; further ports are forwarded as TCP.
const MAX_LOCAL_PORTS: usize = 1024;

/// What an inbound or outbound listener's accept loop starts from.
pub struct Setup {
    pub listener: Arc<config::Listener>,
    pub builder: auto::Builder<TokioExecutor>,
    pub shared: Arc<Shared>,
    pub graceful: Arc<GracefulShutdown>,
    pub own: Arc<Own>,
    pub lookup: Lookup,
}

/// Accepts on an inbound or outbound listener until `stop` changes.
pub async fn accept_loop(socket: TcpListener, setup: Setup, mut stop: watch::Receiver<bool>) -> TcpListener {
    let Setup { listener, builder, shared, graceful, own, lookup } = setup;
    let name: Arc<str> = listener.name.as_str().into();
    let connections = shared.stats.connections(&name);
    let counters = shared.stats.listener(&name);
    let resolved = Arc::new(ArcSwap::default());
    // Aborted when the accept loop ends (a stopped or restarted listener).
    let _resolver = (listener.mode == ListenerMode::Outbound).then(|| {
        AbortOnDrop(tokio::spawn(resolve_hostnames(shared.clone(), name.clone(), resolved.clone())))
    });
    let context =
        Arc::new(Context { shared, name: name.clone(), listener, builder, counters, own, resolved });
    let mut local_apps = LocalApps::new();
    let mut tcp_series: HashMap<Option<Arc<str>>, Arc<TcpSeries>> = HashMap::new();
    log_identity(&context.listener);
    while let Some((stream, client)) = crate::listener::accept(&socket, &name, &mut stop).await {
        let decision = context.decision(&stream, client, &lookup);
        let action = context.action(decision, &mut local_apps, &mut tcp_series);
        let open = crate::stats::ConnectionGuard::new(&connections);
        let watcher = graceful.watcher();
        let context = context.clone();
        tokio::spawn(async move {
            let _open = open;
            context.serve(stream, client, action, watcher).await;
        });
    }
    tracing::debug!(listener = %name, "stopped accepting");
    socket
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A decision with what it needs at run time.
enum Action {
    Refuse(Refusal),
    Loop(Option<SocketAddr>),
    Forward(SocketAddr, Arc<TcpSeries>),
    Http { detect: bool, fallback: Option<(SocketAddr, Arc<TcpSeries>)>, local: Option<Arc<LocalApp>> },
}

impl Context {
    fn decision(&self, stream: &TcpStream, client: SocketAddr, lookup: &Lookup) -> Decision {
        let destination = lookup.original_destination(stream, client);
        let local = stream.local_addr().map(|addr| addr.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let snapshot = self.shared.snapshot.load();
        let services = snapshot.services(&self.name);
        let facts = Facts {
            mode: self.listener.mode,
            protocol: self.listener.protocol,
            destination,
            opaque_port: destination
                .is_some_and(|destination| self.listener.opaque_ports.contains(&destination.port())),
            known: destination.is_some_and(|destination| self.service(services, destination).is_some()),
            has_routes: services.is_some_and(|services| services.has_routes),
            from_self: self.listener.mode == ListenerMode::Outbound
                && self.shared.own_ports.contains(client.port()),
        };
        decide(facts, |target| self.own.is_listener(target, local))
    }

    /// `Some(cluster)` when `destination` is one of the listener's known services (`Some(None)`: listed
    /// in `services` only), statically or by a host-name endpoint's resolved address.
    fn service(&self, services: Option<&Services>, destination: SocketAddr) -> Option<Option<Arc<str>>> {
        match services?.lookup(&destination) {
            Some(cluster) => Some(cluster.cloned()),
            None => self.resolved.load().get(&destination).map(|cluster| Some(cluster.clone())),
        }
    }

    /// Attaches the stats series and the local app target a decision needs; both are made once and
    /// kept by the accept loop.
    fn action(
        &self,
        decision: Decision,
        local_apps: &mut LocalApps,
        tcp_series: &mut HashMap<Option<Arc<str>>, Arc<TcpSeries>>,
    ) -> Action {
        let stats = &self.shared.stats;
        let mut series_for = |destination: SocketAddr| {
            // A destination that is a cluster's endpoint is counted under that cluster.
            let snapshot = self.shared.snapshot.load();
            let cluster = self.service(snapshot.services(&self.name), destination).flatten();
            tcp_series
                .entry(cluster.clone())
                .or_insert_with(|| stats.tcp(&self.name, cluster.as_deref().unwrap_or_default()))
                .clone()
        };
        match decision {
            Decision::Refuse(refusal) => Action::Refuse(refusal),
            Decision::Loop { target } => Action::Loop(target),
            Decision::Forward(to) => Action::Forward(to, series_for(to)),
            Decision::Http { detect, fallback, to } => {
                let local = match to {
                    HttpTarget::Routes => None,
                    HttpTarget::LocalApp(port) => {
                        let address =
                            fallback.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                        match local_apps.get(&address) {
                            Some(app) => Some(app.clone()),
                            None if local_apps.len() < MAX_LOCAL_PORTS => {
                                let app = Arc::new(self.local_app(fallback, port));
                                local_apps.insert(address, app.clone());
                                Some(app)
                            }
                            None => {
                                tracing::warn!(listener = %self.name, port, "too many local app ports: forwarded as TCP");
                                return Action::Forward(address, series_for(address));
                            }
                        }
                    }
                };
                let fallback = fallback.map(|to| (to, series_for(to)));
                Action::Http { detect, fallback, local }
            }
        }
    }

    /// The local app on `port` as an implicit cluster (one endpoint, no breaker) per upstream
    /// protocol: a request keeps the version it came in with, so gRPC stays HTTP/2.
    fn local_app(&self, address: Option<SocketAddr>, port: u16) -> LocalApp {
        let snapshot = self.shared.snapshot.load();
        let address = address.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let version = snapshot.config.node.as_ref().map_or("default", |node| node.version.as_str());
        let workers = crate::worker_threads(snapshot.config.runtime.workers);
        let name = address.to_string();
        let series = self.shared.stats.series(&self.name, &name, version);
        let fixed = |protocol| {
            let settings = config::Cluster {
                name: name.clone(),
                version: version.to_owned(),
                node: snapshot.config.node.as_ref().map(|node| node.name.clone()),
                endpoints: vec![config::Endpoint {
                    host: address.ip().to_string(),
                    port: address.port(),
                    socket_addr: Some(address),
                }],
                protocol,
                connect_timeout: config::Duration::from_secs(1),
                idle_timeout: config::Duration::from_secs(60),
                balance: config::Balance::RoundRobin,
                limits: config::Limits::default(),
                breaker: None,
                outlier: None,
            };
            let cluster = Arc::new(Cluster::new(&settings, workers, self.shared.events.clone()));
            Fixed { cluster, series: series.clone() }
        };
        LocalApp {
            http1: fixed(config::UpstreamProtocol::Http1),
            http2: fixed(config::UpstreamProtocol::Http2),
        }
    }

    async fn serve(
        &self,
        mut stream: TcpStream,
        client: SocketAddr,
        action: Action,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        match action {
            Action::Refuse(refusal) => {
                self.counters.refused(refusal);
                if self.counters.refusal_logged() {
                    tracing::warn!(
                        listener = %self.name,
                        %client,
                        reason = refusal.name(),
                        "connection refused: it was not redirected here (no original destination) and \
                         nothing else serves it (logged once per 10 s; see remora_connections_refused_total)"
                    );
                }
                tcp::abort(&stream);
            }
            Action::Loop(target) => {
                if self.counters.loop_detected() {
                    let target =
                        target.map_or_else(|| "its own upstream socket".to_owned(), |t| t.to_string());
                    tracing::error!(
                        listener = %self.name,
                        %client,
                        %target,
                        "loop refused: forwarding this connection would bring it back to this proxy; the \
                         redirect rules must skip the proxy's own traffic (run it as the UID `remora init` \
                         excludes, 2102) and its own ports (logged once per 10 s; see \
                         remora_loops_detected_total)"
                    );
                }
                tcp::abort(&stream);
            }
            Action::Forward(to, series) => {
                let _watcher = watcher;
                tcp::forward(stream, &[], to, &series, &self.shared.own_ports).await;
            }
            Action::Http { detect, fallback, local } => {
                let prefix = if detect {
                    let timeout = self.listener.detect_timeout.get();
                    match detect::detect(&mut stream, timeout).await {
                        Ok((detected, prefix)) => {
                            self.counters.detected(detected);
                            match (detected, fallback) {
                                (Detected::Http1 | Detected::Http2, _) => prefix,
                                (Detected::Tcp | Detected::Timeout, Some((to, series))) => {
                                    let _watcher = watcher;
                                    return tcp::forward(
                                        stream,
                                        &prefix,
                                        to,
                                        &series,
                                        &self.shared.own_ports,
                                    )
                                    .await;
                                }
                                (Detected::Tcp | Detected::Timeout, None) => {
                                    self.counters.refused(Refusal::NotHttp);
                                    return tcp::abort(&stream);
                                }
                            }
                        }
                        Err(error) => {
                            return tracing::debug!(listener = %self.name, %client, %error, "connection failed before its protocol was known");
                        }
                    }
                } else {
                    bytes::BytesMut::new()
                };
                let io = Prefixed::new(prefix, stream);
                let (shared, name) = (self.shared.clone(), self.name.clone());
                match local {
                    None => {
                        self.serve_http(io, client, ProxyService::new(shared, name, client), watcher).await
                    }
                    Some(app) => {
                        let service = ProxyService::local(shared, name, client, app);
                        self.serve_http(io, client, service, watcher).await
                    }
                }
            }
        }
    }

    /// Serves HTTP on a connection whose first bytes were read already.
    async fn serve_http<T: Targets>(
        &self,
        io: Prefixed<TcpStream>,
        client: SocketAddr,
        service: ProxyService<T>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%client, %error, "connection ended with an error");
        }
    }
}

/// Logs, once per listener start, who the proxy runs as: the redirect rules must skip exactly that.
fn log_identity(listener: &config::Listener) {
    if listener.mode == ListenerMode::Outbound {
        tracing::info!(
            listener = %listener.name,
            uid = rustix::process::geteuid().as_raw(),
            "outbound listener: the redirect rules must skip this UID's connections (remora init skips 2102)"
        );
    }
}

#[cfg(test)]
mod tests;
