//! Step 8 of a request's way: every response (or failure) is recorded, per route × backend cluster ×
//! version, into HDR histograms (µs, 3 significant digits) and counts by outcome and status class.
//!
//! The request path never takes a lock another worker takes: each [`Series`] keeps one recorder per
//! worker thread, and a request locks only its own worker's (uncontended; the reader takes it for the
//! moment of a merge, about once per interval). Readers ([`Stats::collect`]) drain every worker's recorder
//! into the views the admin server and the control report read: since start, the current and the last
//! interval, and not yet reported.
//!
//! A [`Record`] travels with the response body and is written once, when the body ends (or is
//! dropped), so the latency covers the whole response.

mod recorder;
pub mod report;
pub mod tcp;
pub mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokio::time::Instant;

use crate::error::ErrorKind;
#[cfg(test)]
use recorder::histogram;
pub use recorder::{Recorder, RequestOutcome};

/// A series' name: the route, the backend cluster it picked, and that cluster's version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub version: Arc<str>,
}

/// The figures of one route × cluster × version.
#[derive(Debug)]
pub struct Series {
    pub key: SeriesKey,
    /// One recorder per worker thread: the request path locks only its own.
    workers: Box<[Mutex<Recorder>]>,
    views: Mutex<Views>,
}

/// What readers see, filled by draining the workers' recorders.
#[derive(Debug, Default)]
pub struct Views {
    pub since_start: Recorder,
    /// Since the last interval tick.
    pub current: Recorder,
    /// The last complete interval.
    pub last: Recorder,
    /// Since the last control report.
    pub unreported: Recorder,
}

impl Series {
    fn new(key: SeriesKey, workers: usize) -> Self {
        Self {
            key,
            workers: (0..workers.max(1)).map(|_| Mutex::new(Recorder::default())).collect(),
            views: Mutex::default(),
        }
    }

    /// Records one request, on the calling worker's recorder.
    pub fn record(&self, outcome: RequestOutcome, status: u16, headers_us: u64, latency_us: u64) {
        let worker = &self.workers[crate::worker_index() % self.workers.len()];
        lock(worker).record(outcome, status, headers_us, latency_us);
    }

    /// Moves what the workers recorded into the views.
    fn drain(&self, views: &mut Views) {
        for worker in self.workers.iter() {
            let mut worker = lock(worker);
            if worker.is_empty() {
                continue;
            }
            views.since_start.add(&worker);
            views.current.add(&worker);
            views.unreported.add(&worker);
            worker.reset();
        }
    }

    /// The views, after draining the workers into them.
    pub fn views(&self) -> MutexGuard<'_, Views> {
        let mut views = lock(&self.views);
        self.drain(&mut views);
        views
    }
}

/// Every series of the process, and the counters that belong to no series. Series live as long as
/// the process: a reload that keeps a route, cluster and version keeps its figures, and counters
/// never go back.
#[derive(Debug)]
pub struct Stats {
    workers: usize,
    series: Mutex<BTreeMap<SeriesKey, Arc<Series>>>,
    ticks: Mutex<Ticks>,
    /// Requests answered before a route was found: no route, or a malformed request.
    pub no_route: AtomicU64,
    pub bad_request: AtomicU64,
    /// The configuration generation serving (1 at start) and reloads by result.
    pub generation: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Open downstream connections per listener.
    connections: Mutex<BTreeMap<Arc<str>, Arc<AtomicU64>>>,
    /// Opaque TCP forwarding per listener × cluster (cluster empty: the original destination).
    tcp: Mutex<BTreeMap<TcpKey, Arc<tcp::TcpSeries>>>,
    /// What sidecar listeners decided per connection.
    listeners: Mutex<BTreeMap<Arc<str>, Arc<tcp::ListenerCounters>>>,
}

/// An opaque TCP series' key: listener, cluster.
type TcpKey = (Arc<str>, Arc<str>);

/// Counts one open downstream connection while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<AtomicU64>);

impl ConnectionGuard {
    pub fn new(counter: &Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Ticks {
    started: Instant,
    last_tick: Instant,
    /// The span of the `last` views.
    last_span: Duration,
    last_report: SystemTime,
}

impl Stats {
    pub fn new(workers: usize) -> Self {
        let now = Instant::now();
        Self {
            workers,
            series: Mutex::default(),
            ticks: Mutex::new(Ticks {
                started: now,
                last_tick: now,
                last_span: Duration::ZERO,
                last_report: SystemTime::now(),
            }),
            no_route: AtomicU64::new(0),
            bad_request: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            connections: Mutex::default(),
            tcp: Mutex::default(),
            listeners: Mutex::default(),
        }
    }

    /// The opaque TCP series of a listener × cluster (`""`: forwarded to the original destination),
    /// kept for the life of the process.
    pub fn tcp(&self, listener: &str, cluster: &str) -> Arc<tcp::TcpSeries> {
        let key: TcpKey = (listener.into(), cluster.into());
        lock(&self.tcp)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tcp::TcpSeries::new(key.0, key.1)))
            .clone()
    }

    /// Every opaque TCP series, by listener and cluster.
    pub fn all_tcp(&self) -> Vec<Arc<tcp::TcpSeries>> {
        lock(&self.tcp).values().cloned().collect()
    }

    /// The per-connection decisions of a listener.
    pub fn listener(&self, listener: &str) -> Arc<tcp::ListenerCounters> {
        lock(&self.listeners).entry(listener.into()).or_default().clone()
    }

    /// Every listener that counted decisions, by name.
    pub fn all_listeners(&self) -> Vec<(Arc<str>, Arc<tcp::ListenerCounters>)> {
        lock(&self.listeners).iter().map(|(name, counters)| (name.clone(), counters.clone())).collect()
    }

    /// The open-connection counter of a listener.
    pub fn connections(&self, listener: &str) -> Arc<AtomicU64> {
        lock(&self.connections).entry(listener.into()).or_default().clone()
    }

    /// Open connections per listener, in name order.
    pub fn open_connections(&self) -> Vec<(Arc<str>, u64)> {
        lock(&self.connections)
            .iter()
            .map(|(listener, count)| (listener.clone(), count.load(Ordering::Relaxed)))
            .collect()
    }

    /// The series of a route × cluster × version: the existing one (its figures carry over a reload),
    /// or a new one.
    pub fn series(&self, route: &str, cluster: &str, version: &str) -> Arc<Series> {
        let key = SeriesKey { route: route.into(), cluster: cluster.into(), version: version.into() };
        lock(&self.series)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Series::new(key, self.workers)))
            .clone()
    }

    /// Every series, in key order.
    pub fn all(&self) -> Vec<Arc<Series>> {
        lock(&self.series).values().cloned().collect()
    }

    /// Counts a request answered before it had a series.
    pub fn unrouted(&self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::NoRoute => &self.no_route,
            _ => &self.bad_request,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the current interval: every series' `current` becomes its `last`.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut ticks = lock(&self.ticks);
        for series in self.all() {
            let mut views = series.views();
            let views = &mut *views;
            std::mem::swap(&mut views.last, &mut views.current);
            views.current.reset();
        }
        ticks.last_span = now - ticks.last_tick;
        ticks.last_tick = now;
    }

    /// Seconds since start, and the span of the last complete interval (zero before the first tick).
    pub fn spans(&self) -> (Duration, Duration) {
        let ticks = lock(&self.ticks);
        (ticks.started.elapsed(), ticks.last_span)
    }

    /// What every series recorded since the last call, and the wall-clock span it covers; the
    /// series with no requests in it are left out.
    pub fn take_unreported(&self) -> (Vec<(SeriesKey, Recorder)>, SystemTime, SystemTime) {
        let now = SystemTime::now();
        let start = std::mem::replace(&mut lock(&self.ticks).last_report, now);
        let mut taken = Vec::new();
        for series in self.all() {
            let mut views = series.views();
            if !views.unreported.is_empty() {
                let recorder = std::mem::take(&mut views.unreported);
                taken.push((series.key.clone(), recorder));
            }
        }
        (taken, start, now)
    }
}

/// Ticks the interval until `stop` changes.
pub async fn ticker(stats: Arc<Stats>, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => stats.tick(),
            _ = stop.changed() => return,
        }
    }
}

/// One request's figures on their way to its series: made when the response head is ready, written
/// when the body ends (or is dropped: a client that goes away still counts).
#[derive(Debug)]
pub struct Record {
    pub series: Arc<Series>,
    pub started: Instant,
    pub headers_us: u64,
    pub status: u16,
    pub outcome: RequestOutcome,
    /// Present when the access log is on.
    pub access: Option<Box<AccessEntry>>,
}

/// What the access log writes of a request besides its figures.
#[derive(Debug)]
pub struct AccessEntry {
    pub method: http::Method,
    pub path: Box<str>,
    pub host: Box<str>,
    pub client: HeaderValue,
    pub traceparent: HeaderValue,
}

impl Record {
    /// The body ended (`reset`: with an error from the upstream).
    pub fn finish(self, reset: bool) {
        let latency_us = micros(self.started.elapsed());
        let outcome = if reset { RequestOutcome::Reset } else { self.outcome };
        self.series.record(outcome, self.status, self.headers_us, latency_us);
        if let Some(access) = self.access {
            let key = &self.series.key;
            tracing::info!(
                target: "remora::access",
                method = %access.method,
                host = &*access.host,
                path = &*access.path,
                status = self.status,
                outcome = outcome.name(),
                route = &*key.route,
                cluster = &*key.cluster,
                version = &*key.version,
                headers_us = self.headers_us,
                duration_us = latency_us,
                client = access.client.to_str().unwrap_or_default(),
                traceparent = access.traceparent.to_str().unwrap_or_default(),
            );
        }
    }
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A poisoned stats lock is used as it is: every change is a whole record or a whole merge.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_again_by_its_key() {
        let stats = Stats::new(2);
        let a = stats.series("api", "payments-v1", "v1");
        let b = stats.series("api", "payments-v1", "v1");
        let c = stats.series("api", "payments-v1", "v2");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(stats.all().len(), 2);
    }

    #[test]
    fn views_drain_workers_and_ticks_move_current_to_last() {
        let stats = Stats::new(1);
        let series = stats.series("api", "c", "v1");
        series.record(RequestOutcome::Success, 200, 10, 20);
        series.record(RequestOutcome::ServerError, 500, 10, 30);
        assert_eq!(series.views().current.requests(), 2);
        stats.tick();
        series.record(RequestOutcome::Success, 200, 10, 40);
        {
            let views = series.views();
            assert_eq!(views.last.requests(), 2);
            assert_eq!(views.current.requests(), 1);
            assert_eq!(views.since_start.requests(), 3);
        }
        let (taken, start, end) = stats.take_unreported();
        assert!(start <= end);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.requests(), 3);
        assert!(stats.take_unreported().0.is_empty(), "a report takes each request once");
        assert_eq!(series.views().since_start.requests(), 3);
    }
}
