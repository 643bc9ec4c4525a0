//! `remora-proxy`: Remora's data plane.
//!
//! A request's way, one module per step: [`listener`](crate::listener) accepts, `server` hands each
//! request to the proxy service, `route` finds its route, `split` its weighted backend, `balance` the
//! endpoint, `forward` sends it on a pooled upstream client. `admin` answers operators; `snapshot`
//! holds the compiled configuration behind `ArcSwap`.
#![forbid(unsafe_code)]

mod admin;
mod balance;
mod body;
mod breaker;
mod cluster;
mod error;
mod events;
mod exposition;
mod forward;
mod headers;
mod limits;
mod listener;
mod outcome;
mod outlier;
mod pool;
mod retry;
mod route;
mod server;
mod snapshot;
mod split;
mod stats;
mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use remora_config::Config;
use tokio::sync::watch;

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
        Snapshot::build(std::sync::Arc::new(config), 1, &std::sync::Arc::default(), &stats)
    }
}

/// The addresses the proxy actually listens on (port 0 in the configuration becomes a real port).
#[derive(Clone, Debug)]
pub struct Bound {
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
}

/// Runs the proxy until `shutdown` resolves, then drains: `/ready` turns 503, listeners stop
/// accepting, in-flight requests get the configured grace period to finish.
///
/// `on_bound` is called once every socket is bound, before the first connection is accepted.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServeError> {
    let grace_period = config.runtime.grace_period.get();
    let workers_configured = config.runtime.workers;
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = listener::bind(listener).await?;
        let addr = listener::local_addr(&socket, listener.listen);
        sockets.push((listener.clone(), socket, addr));
    }
    let admin_socket = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServeError::Bind { what: "admin".to_owned(), addr: config.admin.listen, source })?;
    let bound = Bound {
        listeners: sockets.iter().map(|(listener, _, addr)| (listener.name.clone(), *addr)).collect(),
        admin: listener::local_addr(&admin_socket, config.admin.listen),
    };

    let shared = Arc::new(snapshot::Shared::new(config, worker_threads(workers_configured)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = Vec::new();
    for (listener, socket, addr) in sockets {
        tracing::info!(listener = %listener.name, %addr, "listening");
        let builder = listener::connection_builder(&listener);
        accept_loops.push(tokio::spawn(listener::accept_loop(
            socket,
            listener.name.as_str().into(),
            builder,
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    let stats_interval = shared.snapshot.load().config.stats.interval.get();
    tokio::spawn(stats::ticker(shared.stats.clone(), stats_interval, stop_rx.clone()));
    let admin = tokio::spawn(admin::serve(admin_socket, shared.clone(), stop_rx));
    tracing::info!(addr = %bound.admin, "admin listening");
    on_bound(&bound);

    shutdown.await;
    tracing::info!(grace_period = ?grace_period, "shutting down: draining in-flight requests");
    shared.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    // The accept loops are gone, and with them every other handle on `graceful`.
    let drained = match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::time::timeout(grace_period, graceful.shutdown()).await,
        Err(_) => Ok(()),
    };
    match drained {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("grace period over: closing the connections still open"),
    }
    let _ = admin.await;
    Ok(())
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
