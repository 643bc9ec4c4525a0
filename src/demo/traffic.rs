//! The demo's traffic: a steady, open-loop stream of requests through the proxy (a new request every
//! tick whatever the earlier ones do, so a slow version shows as latency, not as fewer requests),
//! tallied per version, with the time of the first failure per version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

/// What the traffic saw so far.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub failed: u64,
    /// Per version (`x-demo-version`; `-` when the proxy answered itself): answered, failed.
    pub versions: BTreeMap<String, (u64, u64)>,
    /// Per version, when its first failed answer came (ms since the Unix epoch).
    pub first_failure_unix_ms: BTreeMap<String, u64>,
}

impl Tally {
    /// What happened between `earlier` and this tally.
    pub fn since(&self, earlier: &Tally) -> (u64, u64) {
        (self.sent - earlier.sent, self.failed - earlier.failed)
    }
}

pub struct Traffic {
    tally: Arc<Mutex<Tally>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Starts `rate` requests a second, spread over `proxies` in turn.
    pub fn start(proxies: Vec<SocketAddr>, rate: u32) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, mut stopped) = watch::channel(false);
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http();
        let task = tokio::spawn({
            let tally = tally.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut requests = tokio::task::JoinSet::new();
                let mut next = 0;
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    while requests.try_join_next().is_some() {}
                    let (client, tally) = (client.clone(), tally.clone());
                    let proxy = proxies[next % proxies.len()];
                    next += 1;
                    requests.spawn(async move {
                        let outcome = one(&client, proxy).await;
                        record(&tally, outcome);
                    });
                }
                // The requests in flight finish (each has its timeout).
                while requests.join_next().await.is_some() {}
            }
        });
        Self { tally, stop, task }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let tally = self.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        tally
    }
}

/// The answering version and whether the request succeeded.
async fn one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
) -> (String, bool) {
    let Ok(request) = Request::get(format!("http://{proxy}/hello")).body(Full::new(Bytes::new())) else {
        return ("-".into(), false);
    };
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => {
            let version = response
                .headers()
                .get("x-demo-version")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let ok = response.status().is_success();
            let read = response.into_body().collect().await.is_ok();
            (version, ok && read)
        }
        _ => ("-".into(), false),
    }
}

fn record(tally: &Mutex<Tally>, (version, ok): (String, bool)) {
    let mut tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tally.sent += 1;
    if !ok {
        tally.failed += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        tally.first_failure_unix_ms.entry(version.clone()).or_insert(now);
    }
    let slot = tally.versions.entry(version).or_default();
    slot.0 += 1;
    if !ok {
        slot.1 += 1;
    }
}
