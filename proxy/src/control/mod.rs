//! The proxy's control client: beside the request path, never on it. When the configuration has
//! `[control]` and `[node]`, three things run against the control process (`shared/DESIGN.md`,
//! *report*):
//!
//! - **registration** of the node (name, version, events published and consumed, this proxy's id and
//!   listener addresses) at start, and again whenever control may have forgotten it: a report or a
//!   desired-state read answered "unknown node", or the first success after a connection failure
//!   (control restarted). Registering is idempotent.
//! - **reports** every `[control] report_interval` ([`session`]), carrying the desired-state revision
//!   applied as the acknowledgement.
//! - **desired state** by long-poll ([`desired`]), applied through the reload path as a file change
//!   is, and kept as an overlay that later file reloads keep (see [`overlay`]).
//!
//! Control being down changes nothing on the request path ("fail static"): the proxy serves on its last
//! good state, every loop retries with jittered exponential backoff, and the outage is logged once when
//! it starts and once when it ends.

mod api;
mod backoff;
mod desired;
mod session;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use remora_config::Config;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::reload::Reloader;
pub use desired::overlay;

/// The environment variable that holds the bearer token; it wins over `[control] token_file`.
pub const TOKEN_ENV: &str = "REMORA_CONTROL_TOKEN";

/// What the client's loops share.
#[derive(Debug, Default)]
struct Link {
    outage: backoff::Outage,
    /// The desired-state revision applied last (0: none yet), acknowledged in every report.
    applied: AtomicU64,
    /// Bumped by every accepted registration, with the desired revision control had then.
    registrations: watch::Sender<Registrations>,
    /// Set when the desired-state loop hears that control does not know the node.
    reregister: Notify,
    /// Set when a desired state was applied: the ack goes out in a report at once, not at the next
    /// interval (a rollback is over when every proxy has acked it).
    report_now: Notify,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Registrations {
    count: u64,
    desired_revision: u64,
}

/// Starts the control client when the configuration asks for one (`[control]` with a `[node]`); it
/// runs until `stop` changes (or its sender goes), then sends a last report (for at most a second)
/// and ends. `None` when there is nothing to run; why is logged.
///
/// `[control]` and `[node]` are read here, once: a reload that changes them takes effect at the next
/// start.
pub fn spawn(
    config: &Config,
    reloader: Arc<Reloader>,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let control = config.control.as_ref()?;
    let Some(node) = config.node.clone() else {
        tracing::error!(
            url = %control.url,
            "[control] needs a node name ([node] name = \"...\"): running alone, without control"
        );
        return None;
    };
    // As for control itself and every `REMORA_` override: the environment wins over the file.
    let source = match (std::env::var(TOKEN_ENV), &control.token_file) {
        (Ok(token), _) if !token.trim().is_empty() => api::TokenSource::Env(token),
        (_, Some(path)) => api::TokenSource::File(path.into()),
        (_, None) => {
            tracing::warn!("no control token ({TOKEN_ENV} or [control] token_file): requests go without one");
            api::TokenSource::None
        }
    };
    let api = match api::Api::new(&control.url, source) {
        Ok(api) => Arc::new(api),
        Err(error) => {
            tracing::error!("{error}: running alone, without control");
            return None;
        }
    };
    let link = Arc::new(Link::default());
    let proxy = proxy_id();
    tracing::info!(url = %control.url, node = %node.name, %proxy, "control client starting");
    let desired = desired::Poller::new(api.clone(), reloader.clone(), link.clone(), node.name.clone());
    let session = session::Session::new(api, reloader, link, node, proxy, control.report_interval.get());
    Some(tokio::spawn(async move {
        let desired = tokio::spawn(desired.run(stop.clone()));
        session.run(stop).await;
        // The poller holds no state worth a goodbye.
        desired.abort();
    }))
}

/// This proxy instance's id in reports and registrations: `host:pid`.
fn proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|host| host.trim().to_owned())
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
