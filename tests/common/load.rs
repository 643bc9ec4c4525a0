//! Continuous, bounded client load for the zero-loss tests: `clients` keep-alive clients sending GETs
//! to one URL until stopped, counting every request sent and every one that did not get a 200.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{empty, h1_client, read_body, within, TIMEOUT};

pub struct Load {
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Load {
    pub fn start(url: &str, clients: usize) -> Load {
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for _ in 0..clients {
            let (client, url, sent, failed, stop) =
                (h1_client(), url.to_owned(), sent.clone(), failed.clone(), stop_rx.clone());
            tasks.spawn(async move {
                while !*stop.borrow() {
                    let request = Request::get(url.as_str()).body(empty()).expect("request");
                    match tokio::time::timeout(TIMEOUT, client.request(request)).await {
                        Ok(Ok(response)) if response.status() == 200 => {
                            let _ = read_body("load", response.into_body()).await;
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: {other:?}");
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Load { sent, failed, stop, tasks }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `count` requests were sent in all.
    pub async fn wait_sent(&self, count: usize) {
        within(&format!("{count} requests"), async {
            while self.sent() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Stops the clients once their requests in flight end; returns (sent, failed).
    pub async fn stop(mut self) -> (usize, usize) {
        let _ = self.stop.send(true);
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("a load task panicked");
        }
        (self.sent(), self.failed.load(Ordering::Relaxed))
    }
}
