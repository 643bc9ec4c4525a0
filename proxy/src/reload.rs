//! Live reconfiguration, one path for every trigger (the config file changing, SIGHUP, `POST
//! /reload`, and desired state from control): load → validate whole → diff → one `ArcSwap::store`. A
//! configuration that fails validation, or whose new listeners cannot bind, changes nothing: the
//! running one keeps serving, the errors are logged with their paths and counted.
//!
//! State keyed by name survives (see `Snapshot::rebuild`): an unchanged cluster is the same cluster;
//! a changed one keeps its limits' counters, its kept endpoints' pools, loads and ejections, and its
//! breaker while the breaker's settings are unchanged. Stats series are found again by route, cluster
//! and version. A removed cluster lives on in the requests still using it, then closes its pools.
//! Listeners are started, restarted on their socket (new limits or protocols) or stopped and drained
//! one by one.
//!
//! Control's desired state is an overlay on the file's configuration ([`crate::control::overlay`]):
//! the reloader keeps the file's configuration and the last revision applied, and lays that revision
//! over every configuration the file brings, so that a file reload does not undo a rollout.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use remora_config::control::DesiredState;
use remora_config::{Change, Config, LoadError, Source};
use tokio::sync::Mutex;

use crate::error::ServeError;
use crate::listener::{self, ListenerSet};
use crate::snapshot::{Shared, Snapshot};

/// Applies new configurations to a running proxy, one at a time.
pub struct Reloader {
    shared: Arc<Shared>,
    workers: usize,
    config_path: Option<PathBuf>,
    /// Held for the whole of a reload: reloads never interleave.
    listeners: Mutex<ListenerSet>,
    /// Changed only under the `listeners` lock.
    overlay: std::sync::Mutex<Overlay>,
}

/// The configuration from the file, and control's desired state laid over it.
struct Overlay {
    file: Arc<Config>,
    desired: Option<DesiredState>,
}

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Applied {
    /// The configuration generation serving now (1 at start, one more per applied change).
    pub generation: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload from (the proxy was started without one)")]
    NoFile,
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Bind(#[from] ServeError),
    #[error("desired state revision {revision} does not fit the configuration: {}", problems.join("; "))]
    Desired { revision: u64, problems: Vec<String> },
}

impl ReloadError {
    /// Every problem, one line each (a config error with its path).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Load(error) => error.errors(),
            ReloadError::Desired { revision, problems } => problems
                .iter()
                .map(|problem| format!("desired state revision {revision}: {problem}"))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        workers: usize,
        config_path: Option<PathBuf>,
        listeners: ListenerSet,
    ) -> Self {
        let overlay = Overlay { file: shared.snapshot.load().config.clone(), desired: None };
        Self {
            shared,
            workers,
            config_path,
            listeners: Mutex::new(listeners),
            overlay: std::sync::Mutex::new(overlay),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reads the configuration file again and applies it.
    pub async fn reload_file(&self, trigger: &str) -> Result<Applied, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(self.refused(trigger, ReloadError::NoFile));
        };
        let loaded = remora_config::load_file(path, Source::WithEnv);
        self.apply_loaded(loaded, trigger).await
    }

    /// Applies configuration text (the file's content as the watcher read it).
    pub async fn reload_text(&self, text: &str, trigger: &str) -> Result<Applied, ReloadError> {
        let loaded = remora_config::load_str(text, Source::WithEnv);
        self.apply_loaded(loaded, trigger).await
    }

    async fn apply_loaded(
        &self,
        loaded: Result<Config, LoadError>,
        trigger: &str,
    ) -> Result<Applied, ReloadError> {
        match loaded {
            Ok(config) => self.apply(config, trigger).await,
            Err(error) => Err(self.refused(trigger, error.into())),
        }
    }

    /// Applies a validated configuration from the file, with control's desired state laid over it
    /// (a route the desired state no longer fits keeps the file's weights, with a warning).
    pub async fn apply(&self, config: Config, trigger: &str) -> Result<Applied, ReloadError> {
        let mut listeners = self.listeners.lock().await;
        let file = Arc::new(config);
        let desired = self.overlay().desired.clone();
        let serving = match &desired {
            None => file.clone(),
            Some(desired) => {
                let (overlaid, problems) = crate::control::overlay(&file, desired);
                for problem in problems {
                    tracing::warn!(
                        trigger,
                        revision = desired.revision,
                        "desired state not applied: {problem}"
                    );
                }
                Arc::new(overlaid)
            }
        };
        let applied = self.swap(&mut listeners, serving, trigger).await?;
        self.overlay().file = file;
        Ok(applied)
    }

    /// Applies desired state from control over the file's configuration. A revision that does not fit
    /// it whole (see [`crate::control::overlay`]) changes nothing.
    pub async fn apply_desired(&self, desired: DesiredState, trigger: &str) -> Result<Applied, ReloadError> {
        let mut listeners = self.listeners.lock().await;
        let file = self.overlay().file.clone();
        let (serving, problems) = crate::control::overlay(&file, &desired);
        if !problems.is_empty() {
            return Err(self.refused(trigger, ReloadError::Desired { revision: desired.revision, problems }));
        }
        let applied = self.swap(&mut listeners, Arc::new(serving), trigger).await?;
        self.overlay().desired = Some(desired);
        Ok(applied)
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Diffs `config` against the running one and swaps it in, listeners included.
    async fn swap(
        &self,
        listeners: &mut ListenerSet,
        config: Arc<Config>,
        trigger: &str,
    ) -> Result<Applied, ReloadError> {
        let stats = &self.shared.stats;
        let running = self.shared.snapshot.load_full();
        let changes = remora_config::diff(&running.config, &config);
        if changes.is_empty() {
            tracing::info!(trigger, "configuration unchanged");
            return Ok(Applied { generation: stats.generation.load(Ordering::Relaxed), changes });
        }
        for (what, old, new) in [
            ("admin.listen", running.config.admin.listen.to_string(), config.admin.listen.to_string()),
            (
                "runtime.workers",
                running.config.runtime.workers.to_string(),
                config.runtime.workers.to_string(),
            ),
        ] {
            if old != new {
                tracing::warn!(trigger, key = what, %old, %new, "this change takes effect at the next restart");
            }
        }

        // A mark this process may not set refuses the reload, as a port in use does.
        if let Some(mark) =
            config.runtime.socket_mark.filter(|mark| running.config.runtime.socket_mark != Some(*mark))
        {
            if let Err(source) = crate::tcp::check_mark(mark) {
                return Err(self.refused(trigger, ServeError::Mark { mark, source }.into()));
            }
        }
        // Bind what is new before anything changes: a port in use refuses the whole reload.
        let mut bound = Vec::new();
        for listener in &config.listeners {
            let moved =
                listeners.get(&listener.name).is_none_or(|(running, _)| running.listen != listener.listen);
            if moved {
                match listener::bind(listener).await {
                    Ok(socket) => bound.push((listener.clone(), socket)),
                    Err(error) => return Err(self.refused(trigger, error.into())),
                }
            }
        }
        // Removed (or moved) listeners stop accepting and drain before the new snapshot, so that their
        // connections finish on the routes they started with.
        let grace_period = config.runtime.grace_period.get();
        for name in listeners.names() {
            let kept = config.listeners.iter().any(|listener| listener.name == name);
            let moved = bound.iter().any(|(listener, _)| listener.name == name);
            if !kept || moved {
                listeners.stop(&name, grace_period).await;
            }
        }

        self.shared.own_ports.set_mark(config.runtime.socket_mark);
        let snapshot = Snapshot::rebuild(config.clone(), self.workers, self.shared.parts(), Some(&running));
        self.shared.snapshot.store(Arc::new(snapshot));

        for listener in &config.listeners {
            if let Some(index) = bound.iter().position(|(bound, _)| bound.name == listener.name) {
                let (listener, socket) = bound.swap_remove(index);
                listeners.start(&listener, socket, &self.shared);
            } else if listeners.get(&listener.name).is_some_and(|(running, _)| running != listener) {
                listeners.restart(listener, &self.shared).await;
            }
        }
        let generation = stats.generation.fetch_add(1, Ordering::Relaxed) + 1;
        stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
        for change in &changes {
            tracing::info!(trigger, generation, "{change}");
        }
        tracing::info!(trigger, generation, changes = changes.len(), "configuration applied");
        Ok(Applied { generation, changes })
    }

    /// Counts and logs a refused reload; the running configuration keeps serving.
    fn refused(&self, trigger: &str, error: ReloadError) -> ReloadError {
        self.shared.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
        for line in error.lines() {
            tracing::error!(trigger, "reload refused: {line}");
        }
        error
    }

    /// Listening sockets by name (duplicates), for a successor process.
    pub async fn sockets(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.listeners.lock().await.sockets()
    }

    /// Bound addresses by name.
    pub async fn addrs(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.listeners.lock().await.addrs()
    }

    /// Stops every listener and drains their connections within `grace_period`; true when all
    /// finished in time.
    pub async fn shutdown(&self, grace_period: std::time::Duration) -> bool {
        self.listeners.lock().await.shutdown(&self.shared, grace_period).await
    }
}
