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
    /// Increases by one per event raised in this process (1 for the first).
    pub sequence: u64,
    pub at: SystemTime,
    pub cluster: String,
    pub kind: EventKind,
}

/// The most recent events, oldest dropped first. Touched only when something happens, never per
/// request.
#[derive(Debug, Default)]
pub struct Events {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    raised: u64,
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
        let mut queue = self.lock();
        if queue.events.len() == CAPACITY {
            queue.events.pop_front();
        }
        queue.raised += 1;
        let sequence = queue.raised;
        queue.events.push_back(Event { sequence, at: SystemTime::now(), cluster: cluster.to_owned(), kind });
    }

    /// The queued events, oldest first, without removing them.
    pub fn recent(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// The queued events raised after `sequence`, oldest first (a report asks for those after the
    /// last one it carried).
    #[allow(dead_code)]
    pub fn after(&self, sequence: u64) -> Vec<Event> {
        self.lock().events.iter().filter(|event| event.sequence > sequence).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        assert_eq!(recent.last().unwrap().sequence, (CAPACITY + 5) as u64);
        let after = events.after((CAPACITY + 3) as u64);
        assert_eq!(after.iter().map(|event| event.cluster.as_str()).collect::<Vec<_>>(), ["c1027", "c1028"]);
    }
}
