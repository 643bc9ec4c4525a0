//! `remora-proxy`: Remora's data plane.
//!
//! A request's way, one module per step: `listener` accepts, `server` hands each
//! request to the proxy service, `route` finds its route, `split` its weighted backend, `balance` the
//! endpoint, `forward` sends it on a pooled upstream client. `admin` answers operators; `snapshot`
//! holds the compiled configuration behind `ArcSwap`. Beside HTTP: `sidecar` decides what an inbound
//! or outbound connection is (from its original destination and, via `detect`, its first bytes) and
//! `tcp` forwards opaque TCP.
#![forbid(unsafe_code)]

mod admin;
mod balance;
mod body;
mod breaker;
mod cluster;
mod control;
mod detect;
mod error;
mod events;
mod exposition;
mod forward;
mod handover;
mod headers;
mod limits;
mod listener;
mod outcome;
mod outlier;
mod pool;
mod reload;
mod retry;
mod route;
mod server;
mod sidecar;
mod snapshot;
mod split;
mod stats;
mod tcp;
mod trace;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use remora_config::Config;

pub use error::{ErrorKind, ServeError, Side};

/// The hot-path pieces, reachable for the criterion benchmarks in `benches/` only: not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::balance::Balancer;
    pub use crate::breaker::Breaker;
    pub use crate::outcome::{CallResult, Outcome};
    pub use crate::route::RequestKey;
    pub use crate::snapshot::Snapshot;
    pub use crate::stats::{RequestOutcome, Series, Stats};

    /// Routes a request and picks its backend, as the proxy does; returns the cluster's name.
    pub fn route_and_pick<'a>(
        snapshot: &'a Snapshot,
        listener: &str,
        key: &RequestKey<'_>,
    ) -> Option<&'a str> {
        let route = snapshot.table(listener)?.find(key)?;
        Some(&route.split.pick(key.headers).cluster.name)
    }

    /// Compiles a configuration as the proxy does, for one worker.
    pub fn snapshot(config: remora_config::Config) -> Snapshot {
        let stats = crate::stats::Stats::new(1);
        let (events, own_ports) = (std::sync::Arc::default(), std::sync::Arc::default());
        let parts = crate::snapshot::Parts { events: &events, stats: &stats, own_ports: &own_ports };
        Snapshot::build(std::sync::Arc::new(config), 1, parts)
    }
}

/// The addresses the proxy actually listens on (port 0 in the configuration becomes a real port).
#[derive(Clone, Debug)]
pub struct Bound {
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
}

/// How the proxy was started, beside its configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The file the configuration came from: reloaded when it changes, on SIGHUP and on `POST
    /// /reload`.
    pub config_path: Option<std::path::PathBuf>,
    /// Take the listening sockets over from the proxy serving `[runtime] handover_socket`, which then
    /// drains and exits (a zero-downtime binary restart).
    pub upgrade: bool,
}

/// Why the proxy stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM, SIGINT (the `shutdown` future) or `POST /drain`.
    Drain,
    /// A successor took the listening sockets over and accepts on them.
    HandedOver,
}

/// Runs the proxy until `shutdown` resolves (or `POST /drain`), then drains: `/ready` turns 503,
/// listeners keep accepting for `[runtime] drain_delay`, then stop; open connections are closed
/// gracefully (HTTP/2 GOAWAY) and in-flight requests get the grace period to finish.
///
/// `on_bound` is called once every socket is bound, before the first connection is accepted.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServeError> {
    let workers = worker_threads(config.runtime.workers);
    if let Some(mark) = config.runtime.socket_mark {
        tcp::check_mark(mark).map_err(|source| ServeError::Mark { mark, source })?;
    }
    let (mut inherited, confirm) = if options.upgrade {
        let Some(path) = &config.runtime.handover_socket else {
            return Err(ServeError::Handover("--upgrade needs [runtime] handover_socket".to_owned()));
        };
        let (inherited, confirm) =
            handover::take_over(path).await.map_err(|error| ServeError::Handover(error.to_string()))?;
        tracing::info!(path = %path.display(), listeners = inherited.listeners.len(), "took the listening sockets over");
        (inherited, Some(confirm))
    } else {
        (handover::Inherited::default(), None)
    };
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = match take_inherited(&mut inherited.listeners, &listener.name, listener.listen) {
            Some(socket) => socket,
            None => listener::bind(listener).await?,
        };
        sockets.push((listener.clone(), socket));
    }
    for (name, _) in &inherited.listeners {
        tracing::info!(listener = %name, "an inherited listener the configuration no longer has is closed");
    }
    let admin_inherited = inherited.admin.take().and_then(|admin| {
        let fits = admin.local_addr().is_ok_and(|addr| fits(addr, config.admin.listen));
        fits.then(|| tokio::net::TcpListener::from_std(admin).ok()).flatten()
    });
    let admin_socket = match admin_inherited {
        Some(socket) => socket,
        None => tokio::net::TcpListener::bind(config.admin.listen).await.map_err(|source| {
            ServeError::Bind { what: "admin".to_owned(), addr: config.admin.listen, source }
        })?,
    };
    let admin_addr = listener::local_addr(&admin_socket, config.admin.listen);
    let admin_fd = std::os::fd::AsFd::as_fd(&admin_socket).try_clone_to_owned().ok();
    // Installed before `on_bound`: a SIGHUP right after start-up reloads rather than kills.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());

    let shared = Arc::new(snapshot::Shared::new(config, workers));
    let mut set = listener::ListenerSet::default();
    for (listener, socket) in sockets {
        set.start(&listener, socket, &shared);
    }
    let bound = Bound { listeners: set.addrs(), admin: admin_addr };
    // `addrs` is by name; print in the file's order.
    let order = shared
        .snapshot
        .load()
        .config
        .listeners
        .iter()
        .map(|listener| listener.name.clone())
        .collect::<Vec<_>>();
    let mut bound = bound;
    bound.listeners.sort_by_key(|(name, _)| order.iter().position(|ordered| ordered == name));
    let reloader = Arc::new(reload::Reloader::new(shared.clone(), workers, options.config_path.clone(), set));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_requested = Arc::new(tokio::sync::Notify::new());
    let stats_interval = shared.snapshot.load().config.stats.interval.get();
    tokio::spawn(stats::ticker(shared.stats.clone(), stats_interval, stop_rx.clone()));
    let control = control::spawn(&shared.snapshot.load().config, reloader.clone(), stop_rx.clone());
    let admin =
        tokio::spawn(admin::serve(admin_socket, reloader.clone(), drain_requested.clone(), stop_rx.clone()));
    tracing::info!(addr = %bound.admin, "admin listening");
    match hangup {
        Ok(hangup) => {
            tokio::spawn(reload_on_hangup(hangup, reloader.clone(), stop_rx.clone()));
        }
        Err(error) => tracing::warn!(%error, "cannot watch SIGHUP: reload with POST /reload"),
    }
    let watch_config = shared.snapshot.load().config.runtime.watch_config;
    let _watcher = match (&options.config_path, watch_config) {
        (Some(path), true) => match watch::ConfigWatcher::start(path.clone(), WATCH_DEBOUNCE) {
            Ok((watcher, changes)) => {
                tokio::spawn(reload_on_change(changes, reloader.clone()));
                Some(watcher)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch the config file: reload with SIGHUP or POST /reload");
                None
            }
        },
        _ => None,
    };
    let handed_over = Arc::new(tokio::sync::Notify::new());
    if let Some(path) = shared.snapshot.load().config.runtime.handover_socket.clone() {
        match handover::Server::bind(path.clone()) {
            Ok(server) => {
                let (reloader, handed_over) = (reloader.clone(), handed_over.clone());
                let admin_fd = Arc::new(admin_fd);
                let offer = move || {
                    let (reloader, admin_fd) = (reloader.clone(), admin_fd.clone());
                    async move {
                        let admin = admin_fd.as_ref().as_ref().and_then(|fd| fd.try_clone().ok());
                        handover::Offer { listeners: reloader.sockets().await, admin }
                    }
                };
                tokio::spawn(server.serve(offer, move || handed_over.notify_one(), stop_rx.clone()));
            }
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot serve socket handover"),
        }
    }
    on_bound(&bound);
    if let Some(confirm) = confirm {
        // The predecessor drains once it hears we accept; if it cannot hear it, both serve and the
        // operator sees the error.
        if let Err(error) = confirm.ready().await {
            tracing::error!(%error, "could not tell the previous proxy to drain");
        }
    }

    let stop = tokio::select! {
        _ = shutdown => Stop::Drain,
        _ = drain_requested.notified() => Stop::Drain,
        _ = handed_over.notified() => Stop::HandedOver,
    };
    let runtime = shared.snapshot.load().config.runtime.clone();
    shared.draining.store(true, Ordering::Relaxed);
    if stop == Stop::HandedOver {
        tracing::info!("handed the listening sockets over: draining");
    } else {
        tracing::info!(?stop, drain_delay = ?runtime.drain_delay.get(), "draining: /ready answers 503");
        // Load balancers take a while to see `/ready` fail; until then new connections still come.
        tokio::time::sleep(runtime.drain_delay.get()).await;
    }
    tracing::info!(grace_period = ?runtime.grace_period.get(), "stopped accepting: finishing in-flight requests");
    let drained = reloader.shutdown(runtime.grace_period.get()).await;
    if drained {
        tracing::info!("all connections drained");
    } else {
        tracing::warn!("grace period over: closing the connections still open");
    }
    let _ = stop_tx.send(true);
    if let Some(control) = control {
        // Its last report goes out (within a second) before the process ends.
        let _ = control.await;
    }
    let _ = admin.await;
    Ok(())
}

/// The inherited socket of listener `name`, when its address fits the configured one (same address,
/// or the configuration asks for any port).
fn take_inherited(
    inherited: &mut Vec<(String, std::net::TcpListener)>,
    name: &str,
    configured: SocketAddr,
) -> Option<tokio::net::TcpListener> {
    let index = inherited.iter().position(|(inherited, socket)| {
        inherited == name && socket.local_addr().is_ok_and(|addr| fits(addr, configured))
    })?;
    let (_, socket) = inherited.swap_remove(index);
    tokio::net::TcpListener::from_std(socket).ok()
}

fn fits(bound: SocketAddr, configured: SocketAddr) -> bool {
    bound == configured || (configured.port() == 0 && bound.ip() == configured.ip())
}

/// How long the config file must stay quiet before it is read: an editor's save is several events.
const WATCH_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Applies each new content of the config file; ends when the watcher is dropped.
async fn reload_on_change(
    mut changes: tokio::sync::mpsc::Receiver<Vec<u8>>,
    reloader: Arc<reload::Reloader>,
) {
    while let Some(bytes) = changes.recv().await {
        match String::from_utf8(bytes) {
            // Errors are logged and counted by the reloader.
            Ok(text) => drop(reloader.reload_text(&text, "file changed").await),
            Err(_) => tracing::error!("reload refused: the config file is not UTF-8"),
        }
    }
}

/// Reloads the configuration file on every SIGHUP until `stop` changes.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reloader: Arc<reload::Reloader>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
                // Errors are logged and counted by the reloader.
                let _ = reloader.reload_file("SIGHUP").await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// The worker threads for `[runtime] workers`: 0 means one per core available to the process
/// (cgroup-aware).
pub fn worker_threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        workers => workers,
    }
}

/// This thread's worker number, handed out in the order threads first ask: per-worker state (pool
/// slots, stats recorders) is indexed by it modulo its length.
pub(crate) fn worker_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled: a signal that
/// arrives right after start-up (after `ready:` is printed) must drain, not kill, the process. Call it
/// inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            (terminate, interrupt) => {
                let error = terminate.err().or(interrupt.err());
                tracing::warn!(error = ?error, "cannot watch SIGTERM/SIGINT: the proxy stops only when killed");
                std::future::pending::<()>().await;
            }
        }
    }
}
