//! Part of step 7: the connections to one endpoint.
//!
//! Each endpoint keeps one slot per worker thread, so that a worker takes and returns connections
//! without touching another core's memory: the slot's mutex is never contended in practice. HTTP/1.1
//! slots hold a stack of idle connections (most recently used on top); an HTTP/2 slot holds one
//! multiplexed connection. An HTTP/1.1 connection goes back to its slot when the response body has been
//! read to its end ([`Lease`]); a response abandoned half-way takes its connection with it.
//!
//! This replaces hyper-util's generic pool, which hashes a key, spawns a task per response and shares
//! one lock across every thread (measured in `benches/README.md`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use remora_config as config;
use tokio::net::TcpStream;

use crate::limits::{Limits, Overflow};
use crate::retry::UpstreamBody;
use crate::tcp::{OwnPort, OwnPorts};

/// Why an upstream exchange failed before a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("handshake with {endpoint}: {source}")]
    Handshake { endpoint: String, source: hyper::Error },
    #[error("exchange with {endpoint}: {source}")]
    Exchange { endpoint: String, source: hyper::Error },
    /// A new connection was needed but the cluster's connection or pending-request limit is full.
    #[error("{0:?} limit reached")]
    Limits(Overflow),
}

impl UpstreamError {
    /// The HTTP/2 stream was refused (REFUSED_STREAM): the upstream did not process it.
    pub fn is_refused_stream(&self) -> bool {
        match self {
            UpstreamError::Exchange { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
                while let Some(error) = cause {
                    if let Some(h2) = error.downcast_ref::<h2::Error>() {
                        return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
                    }
                    cause = error.source();
                }
                false
            }
            UpstreamError::Connect { .. } | UpstreamError::Handshake { .. } | UpstreamError::Limits(_) => {
                false
            }
        }
    }
}

/// The connections to one endpoint. A clone shares the connections (a reload keeps an endpoint's
/// pool when its address and connection settings are unchanged).
#[derive(Clone, Debug)]
pub struct Pool {
    endpoint: config::Endpoint,
    protocol: config::UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    slots: Arc<[Arc<Mutex<Slot>>]>,
    limits: Arc<Limits>,
    /// Set when the proxy runs an outbound sidecar listener: connections are dialled from a port
    /// bound first and noted here while they live, so that one the redirect rules send back to the
    /// proxy is recognised as a loop (see [`OwnPorts`]).
    noted: Option<Arc<OwnPorts>>,
}

#[derive(Debug)]
enum Slot {
    Http1(Vec<Idle>),
    Http2(Option<http2::SendRequest<UpstreamBody>>),
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// Idle HTTP/1.1 connections kept per worker and endpoint; more are closed when they come back.
const MAX_IDLE_PER_SLOT: usize = 256;

impl Pool {
    pub fn new(
        cluster: &config::Cluster,
        endpoint: &config::Endpoint,
        workers: usize,
        limits: Arc<Limits>,
        noted: Option<Arc<OwnPorts>>,
    ) -> Self {
        let slots = (0..workers.max(1))
            .map(|_| {
                Arc::new(Mutex::new(match cluster.protocol {
                    config::UpstreamProtocol::Http1 => Slot::Http1(Vec::new()),
                    config::UpstreamProtocol::Http2 => Slot::Http2(None),
                }))
            })
            .collect();
        Self {
            endpoint: endpoint.clone(),
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout.get(),
            idle_timeout: cluster.idle_timeout.get(),
            slots,
            limits,
            noted,
        }
    }

    /// Whether this pool connects as a pool built from `cluster` (noting its ports or not) would.
    pub fn settings_match(&self, cluster: &config::Cluster, noted: bool) -> bool {
        self.protocol == cluster.protocol
            && self.connect_timeout == cluster.connect_timeout.get()
            && self.idle_timeout == cluster.idle_timeout.get()
            && self.noted.is_some() == noted
    }

    /// Whether connections are dialled with their ports noted.
    pub fn notes_ports(&self) -> bool {
        self.noted.is_some()
    }

    /// Everything a request needs to be sent from the current worker: owned, so the send can happen
    /// in the request's own future after the snapshot guard is gone.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            index: crate::worker_index() % self.slots.len(),
            all: self.slots.clone(),
            endpoint: EndpointTarget {
                endpoint: self.endpoint.clone(),
                protocol: self.protocol,
                connect_timeout: self.connect_timeout,
                idle_timeout: self.idle_timeout,
                limits: self.limits.clone(),
                noted: self.noted.clone(),
            },
        }
    }
}

#[derive(Debug, Clone)]
struct EndpointTarget {
    endpoint: config::Endpoint,
    protocol: config::UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    limits: Arc<Limits>,
    noted: Option<Arc<OwnPorts>>,
}

/// A worker's slot of one endpoint's pool.
pub struct PoolHandle {
    /// Every worker's slot of this endpoint: at `max_connections`, an idle connection in another
    /// worker's slot serves rather than a refusal.
    all: Arc<[Arc<Mutex<Slot>>]>,
    /// This worker's slot in `all`.
    index: usize,
    endpoint: EndpointTarget,
}

impl PoolHandle {
    /// Sends a request on a pooled connection, or a new one. A request that a pooled connection
    /// closed under before it was written is sent once more on a fresh connection: nothing of it
    /// reached the upstream, so this is safe for any method.
    pub async fn send(
        self,
        request: Request<UpstreamBody>,
    ) -> Result<(Response<hyper::body::Incoming>, Option<Lease>), UpstreamError> {
        match self.endpoint.protocol {
            config::UpstreamProtocol::Http1 => self.send_http1(request).await,
            config::UpstreamProtocol::Http2 => {
                self.send_http2(request).await.map(|response| (response, None))
            }
        }
    }

    async fn send_http1(
        self,
        request: Request<UpstreamBody>,
    ) -> Result<(Response<hyper::body::Incoming>, Option<Lease>), UpstreamError> {
        let reused = self.checkout_http1();
        let (mut sender, mut request) = match reused {
            Some(sender) => (sender, request),
            None => match self.connect_http1().await {
                Ok(sender) => (sender, request),
                Err(UpstreamError::Limits(Overflow::Connections)) => match self.steal_http1() {
                    Some(sender) => (sender, request),
                    None => return Err(UpstreamError::Limits(Overflow::Connections)),
                },
                Err(error) => return Err(error),
            },
        };
        loop {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // A connection that switched protocols, or that the upstream will close, is not
                    // reused.
                    let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let lease = reusable.then(|| Lease { sender, slot: self.all[self.index].clone() });
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if error.error().is_canceled() => {
                        tracing::debug!(endpoint = %self.endpoint.endpoint, "pooled connection closed before use; retrying on a new one");
                        request = unsent;
                        sender = self.connect_http1().await?;
                    }
                    _ => {
                        return Err(UpstreamError::Exchange {
                            endpoint: self.endpoint.endpoint.to_string(),
                            source: error.into_error(),
                        })
                    }
                },
            }
        }
    }

    /// The most recently used idle connection that is ready; closed and expired ones are dropped.
    fn checkout_http1(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut slot = lock(self.slot());
        let Slot::Http1(idle) = &mut *slot else { return None };
        let now = Instant::now();
        // The oldest sit at the bottom: drop those past the idle timeout.
        let expired = idle
            .iter()
            .take_while(|entry| now.duration_since(entry.since) >= self.endpoint.idle_timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            // Closed, or still finishing its last response: not usable now. A connection still
            // finishing is dropped rather than waited for; the next one is opened fresh.
        }
        None
    }

    fn slot(&self) -> &Mutex<Slot> {
        &self.all[self.index]
    }

    /// A ready idle connection from any worker's slot.
    fn steal_http1(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        self.all.iter().find_map(|slot| {
            let mut slot = lock(slot);
            let Slot::Http1(idle) = &mut *slot else { return None };
            let position = idle.iter().rposition(|entry| entry.sender.is_ready())?;
            Some(idle.remove(position).sender)
        })
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let (io, held) = connect(&self.endpoint).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(|source| {
            UpstreamError::Handshake { endpoint: self.endpoint.endpoint.to_string(), source }
        })?;
        let endpoint = self.endpoint.endpoint.to_string();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%endpoint, %error, "upstream connection ended with an error");
            }
            drop(held);
        });
        Ok(sender)
    }

    async fn send_http2(
        self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        let existing = match &*lock(self.slot()) {
            Slot::Http2(Some(sender)) if !sender.is_closed() => Some(sender.clone()),
            _ => None,
        };
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let sender = self.connect_http2().await?;
                if let Slot::Http2(stored) = &mut *lock(self.slot()) {
                    *stored = Some(sender.clone());
                }
                sender
            }
        };
        sender.send_request(request).await.map_err(|source| UpstreamError::Exchange {
            endpoint: self.endpoint.endpoint.to_string(),
            source,
        })
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let (io, held) = connect(&self.endpoint).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                endpoint: self.endpoint.endpoint.to_string(),
                source,
            })?;
        let endpoint = self.endpoint.endpoint.to_string();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "upstream HTTP/2 connection ended with an error");
            }
            drop(held);
        });
        Ok(sender)
    }
}

/// An HTTP/1.1 connection lent to one response; it returns to its slot when the response body has
/// been read to the end, and closes if the body is abandoned.
#[derive(Debug)]
pub struct Lease {
    sender: http1::SendRequest<UpstreamBody>,
    slot: Arc<Mutex<Slot>>,
}

impl Lease {
    /// The response body ended: the connection can serve the next request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut slot = lock(&self.slot);
        if let Slot::Http1(idle) = &mut *slot {
            if idle.len() < MAX_IDLE_PER_SLOT {
                idle.push(Idle { sender: self.sender, since: Instant::now() });
            }
        }
    }
}

/// What a connection's task holds while the connection lives: its place in the cluster's connection
/// limit and, when ports are noted, its local port.
struct Held {
    _connection: crate::limits::Slot,
    _port: Option<OwnPort>,
}

/// Opens a connection within the cluster's limits.
async fn connect(target: &EndpointTarget) -> Result<(TokioIo<TcpStream>, Held), UpstreamError> {
    let connection = target.limits.connection().map_err(UpstreamError::Limits)?;
    let _pending = target.limits.pending().map_err(UpstreamError::Limits)?;
    let endpoint = &target.endpoint;
    let connect = async {
        match (&target.noted, endpoint.socket_addr) {
            (None, Some(addr)) => TcpStream::connect(addr).await.map(|stream| (stream, None)),
            (None, None) => {
                TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map(|stream| (stream, None))
            }
            (Some(noted), addr) => {
                let addr = match addr {
                    Some(addr) => addr,
                    None => crate::tcp::lookup((endpoint.host.as_str(), endpoint.port)).await?,
                };
                let (stream, port) = crate::tcp::dial(addr, target.connect_timeout, noted).await?;
                Ok((stream, Some(port)))
            }
        }
    };
    let error = |source| UpstreamError::Connect { endpoint: endpoint.to_string(), source };
    let (stream, port) = match tokio::time::timeout(target.connect_timeout, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(source)) => return Err(error(source)),
        Err(_) => return Err(error(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))),
    };
    stream.set_nodelay(true).map_err(error)?;
    Ok((TokioIo::new(stream), Held { _connection: connection, _port: port }))
}

/// A slot's lock: poisoning cannot leave a slot inconsistent (every change is one push or pop), so a
/// poisoned lock is used as it is.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
