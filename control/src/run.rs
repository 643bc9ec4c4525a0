//! `remora control`: opens the store, rebuilds the map from it, serves the API, watches node
//! reachability every analysis interval and runs the healing engine, until the shutdown future
//! resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use remora_config::ControlConfig;
use serde_json::json;

use crate::server::{self, Api};
use crate::service::{new_trace_id, Service};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the store {url}: {source}")]
    Store { url: String, source: crate::store::StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no token: set token_file in the config or REMORA_CONTROL_TOKEN")]
    NoToken,
}

/// Runs the control process; `on_bound` gets the API's address once it listens.
pub async fn run(
    config: ControlConfig,
    token: Option<String>,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), RunError> {
    let token = token.filter(|token| !token.is_empty()).ok_or(RunError::NoToken)?;
    let url = config.store.to_string();
    let store = crate::store::open(&url).map_err(|source| RunError::Store { url: url.clone(), source })?;
    let store: Arc<dyn crate::store::Store> = Arc::from(store);
    let interval = config.analysis.interval.get();
    // A node misses three analysis intervals of reports before it is unreachable.
    let service = Service::new(store, config.analysis.window.get(), interval * 3)
        .map_err(|source| RunError::Store { url: url.clone(), source })?;
    let service = Arc::new(service);
    let engine = crate::engine::Engine::new(service.clone(), config.clone())
        .map_err(|source| RunError::Store { url: url.clone(), source })?;
    let engine = Arc::new(engine);
    let socket = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind { addr: config.listen, source })?;
    let addr = socket.local_addr().unwrap_or(config.listen);
    let _ = service.record("control_started", None, &new_trace_id(), json!({ "listen": addr.to_string() }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = Arc::new(Api { service: service.clone(), engine: engine.clone(), token });
    let healing = tokio::spawn(engine.run(stop_rx.clone()));
    let server = tokio::spawn(server::serve(socket, api, stop_rx.clone()));
    let watcher = tokio::spawn({
        let (service, mut stop) = (service.clone(), stop_rx);
        async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Err(error) = service.check_reachability() {
                            tracing::error!(%error, "reachability check failed");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
    });
    tracing::info!(%addr, "control API listening");
    on_bound(addr);
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = watcher.await;
    let _ = healing.await;
    Ok(())
}
