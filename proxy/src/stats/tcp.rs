//! The figures of connections rather than requests: opaque TCP forwarding (per listener, and per
//! cluster when the connection goes to one) and what a sidecar listener decided per connection
//! (protocol detected, loops refused, connections with nowhere to go).
//!
//! Everything here is an atomic counter found once per listener start (or once per cluster by a
//! listener's accept loop), so a connection never takes a lock to count itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One listener × cluster's opaque TCP connections. `cluster` is empty when the connection goes to
/// its original destination rather than to a cluster.
#[derive(Debug)]
pub struct TcpSeries {
    pub listener: Arc<str>,
    pub cluster: Arc<str>,
    connections: AtomicU64,
    active: AtomicU64,
    /// Bytes from the downstream client, forwarded upstream.
    received: AtomicU64,
    /// Bytes from the upstream, forwarded to the downstream client.
    sent: AtomicU64,
    connect_failures: AtomicU64,
}

/// A [`TcpSeries`]' counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFigures {
    pub connections: u64,
    pub active: u64,
    pub received: u64,
    pub sent: u64,
    pub connect_failures: u64,
}

impl TcpSeries {
    pub fn new(listener: Arc<str>, cluster: Arc<str>) -> Self {
        Self {
            listener,
            cluster,
            connections: AtomicU64::new(0),
            active: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    /// Counts a forwarded connection, active until the guard drops.
    pub fn open(self: &Arc<Self>) -> Active {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    pub fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn figures(&self) -> TcpFigures {
        TcpFigures {
            connections: self.connections.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
        }
    }
}

/// One active forwarded connection of a series.
#[derive(Debug)]
pub struct Active(Arc<TcpSeries>);

impl Active {
    pub fn series(&self) -> &TcpSeries {
        &self.0
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener decided about its connections, beside the requests and bytes they carried.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections whose original destination was this proxy's own listener: refused.
    loops: AtomicU64,
    /// By [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
    /// By [`Detected`].
    detected: [AtomicU64; Detected::ALL.len()],
    /// When a loop, and a refusal, was last logged, in seconds since the Unix epoch.
    loop_logged: AtomicU64,
    refusal_logged: AtomicU64,
}

/// Why a sidecar listener closed a connection without forwarding it (loops aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not redirected (no `SO_ORIGINAL_DST`), and no route to serve it either.
    NoOriginalDestination,
    /// Not redirected, and not HTTP: the listener's routes cannot serve it.
    NotHttp,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::NoOriginalDestination, Refusal::NotHttp];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoOriginalDestination => "no_original_destination",
            Refusal::NotHttp => "not_http",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::NoOriginalDestination => 0,
            Refusal::NotHttp => 1,
        }
    }
}

/// What protocol detection concluded on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// The first bytes were not HTTP (or the client closed before they could tell).
    Tcp,
    /// The client sent nothing decisive within `detect_timeout`: taken for TCP.
    Timeout,
}

impl Detected {
    pub const ALL: [Detected; 4] = [Detected::Http1, Detected::Http2, Detected::Tcp, Detected::Timeout];

    pub fn name(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tcp => "tcp",
            Detected::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        match self {
            Detected::Http1 => 0,
            Detected::Http2 => 1,
            Detected::Tcp => 2,
            Detected::Timeout => 3,
        }
    }
}

/// How often a loop (or a refusal) is logged at most, per listener: a misconfiguration repeats for
/// every connection.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// True when the last log stamped in `stamp` is [`LOG_INTERVAL`] old (and stamps now).
fn due(stamp: &AtomicU64) -> bool {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let last = stamp.load(Ordering::Relaxed);
    (last == 0 || now >= last + LOG_INTERVAL.as_secs())
        && stamp.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

impl ListenerCounters {
    /// Counts a loop; true when it should be logged (the first one in [`LOG_INTERVAL`]).
    pub fn loop_detected(&self) -> bool {
        self.loops.fetch_add(1, Ordering::Relaxed);
        due(&self.loop_logged)
    }

    /// True when a refusal should be logged (the first one in [`LOG_INTERVAL`]).
    pub fn refusal_logged(&self) -> bool {
        due(&self.refusal_logged)
    }

    pub fn refused(&self, refusal: Refusal) {
        self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn detected(&self, detected: Detected) {
        self.detected[detected.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn loops(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }

    pub fn refusals(&self, refusal: Refusal) -> u64 {
        self.refused[refusal.index()].load(Ordering::Relaxed)
    }

    pub fn detections(&self, detected: Detected) -> u64 {
        self.detected[detected.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_active_connection_counts_until_it_drops() {
        let series = Arc::new(TcpSeries::new("db".into(), "postgres".into()));
        let active = series.open();
        active.series().received(10);
        active.series().sent(7);
        assert_eq!(
            series.figures(),
            TcpFigures { connections: 1, active: 1, received: 10, sent: 7, connect_failures: 0 }
        );
        drop(active);
        assert_eq!(series.figures().active, 0);
        assert_eq!(series.figures().connections, 1);
    }

    #[test]
    fn loops_are_all_counted_and_logged_once_per_interval() {
        let counters = ListenerCounters::default();
        assert!(counters.loop_detected(), "the first loop is logged");
        assert!(!counters.loop_detected(), "the next ones within the interval are not");
        assert!(!counters.loop_detected());
        assert_eq!(counters.loops(), 3);
    }
}
