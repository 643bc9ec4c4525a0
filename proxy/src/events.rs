//! Events the data plane raises beside the request path: breaker transitions and endpoint ejections.
//! Each is logged once through `tracing` with its fields and queued (bounded) for the report to the
//! control process.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    BreakerOpened { open_for: Duration },
    BreakerHalfOpen,
    BreakerClosed,
    EndpointEjected { endpoint: String, ejected_for: Duration, ejections: u32 },
    EndpointRestored { endpoint: String },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::BreakerOpened { .. } => "breaker_opened",
            EventKind::BreakerHalfOpen => "breaker_half_open",
            EventKind::BreakerClosed => "breaker_closed",
            EventKind::EndpointEjected { .. } => "endpoint_ejected",
            EventKind::EndpointRestored { .. } => "endpoint_restored",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: SystemTime,
    pub cluster: String,
    pub kind: EventKind,
}

/// The most recent events, oldest dropped first. Touched only when something happens, never per
/// request.
#[derive(Debug, Default)]
pub struct Events {
    queue: Mutex<VecDeque<Event>>,
}

const CAPACITY: usize = 1024;

impl Events {
    pub fn raise(&self, cluster: &str, kind: EventKind) {
        match &kind {
            EventKind::BreakerOpened { open_for } => {
                tracing::warn!(event = kind.name(), cluster, open_for = ?open_for, "breaker opened")
            }
            EventKind::BreakerHalfOpen => tracing::info!(event = kind.name(), cluster, "breaker half-open"),
            EventKind::BreakerClosed => tracing::info!(event = kind.name(), cluster, "breaker closed"),
            EventKind::EndpointEjected { endpoint, ejected_for, ejections } => tracing::warn!(
                event = kind.name(),
                cluster,
                endpoint = %endpoint,
                ejected_for = ?ejected_for,
                ejections,
                "endpoint ejected"
            ),
            EventKind::EndpointRestored { endpoint } => {
                tracing::info!(event = kind.name(), cluster, endpoint = %endpoint, "endpoint restored")
            }
        }
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.len() == CAPACITY {
            queue.pop_front();
        }
        queue.push_back(Event { at: SystemTime::now(), cluster: cluster.to_owned(), kind });
    }

    /// The queued events, oldest first, without removing them.
    pub fn recent(&self) -> Vec<Event> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_the_newest_events() {
        let events = Events::default();
        for index in 0..CAPACITY + 5 {
            events.raise(&format!("c{index}"), EventKind::BreakerClosed);
        }
        let recent = events.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].cluster, "c5");
        assert_eq!(recent.last().unwrap().kind.name(), "breaker_closed");
    }
}
