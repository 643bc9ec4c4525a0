//! Which call results a cluster's breaker counts as failures: its `failure_on` list, parsed once.

use crate::outcome::CallResult;

/// The parsed `failure_on`: `5xx`, `4xx`, `connect`, `timeout`, `reset` (resets and refused
/// streams), `gateway-error` (502, 503, 504 and connect failures) and exact status codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureOn {
    server_errors: bool,
    client_errors: bool,
    connect: bool,
    timeout: bool,
    reset: bool,
    gateway_errors: bool,
    statuses: Vec<u16>,
}

impl FailureOn {
    /// Entries validation would refuse are skipped, not trusted: the config crate already reported them.
    pub fn new(kinds: &[String]) -> FailureOn {
        let mut failure_on = FailureOn::default();
        for kind in kinds {
            match kind.as_str() {
                "5xx" => failure_on.server_errors = true,
                "4xx" => failure_on.client_errors = true,
                "connect" => failure_on.connect = true,
                "timeout" => failure_on.timeout = true,
                "reset" => failure_on.reset = true,
                "gateway-error" => failure_on.gateway_errors = true,
                other => {
                    if let Some(status) =
                        other.parse::<u16>().ok().filter(|status| (100..=599).contains(status))
                    {
                        failure_on.statuses.push(status);
                    }
                }
            }
        }
        failure_on
    }

    pub fn is_failure(&self, result: CallResult) -> bool {
        match result {
            CallResult::Status(status) => {
                (self.server_errors && result.is_5xx())
                    || (self.client_errors && (400..500).contains(&status))
                    || (self.gateway_errors && result.is_gateway_error())
                    || self.statuses.contains(&status)
            }
            CallResult::Connect => self.connect || (self.gateway_errors && result.is_gateway_error()),
            CallResult::Timeout => self.timeout,
            CallResult::Reset | CallResult::RefusedStream => self.reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure_on(kinds: &[&str]) -> FailureOn {
        FailureOn::new(&kinds.iter().map(|kind| (*kind).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn the_default_list_counts_5xx_and_transport_failures() {
        let failure_on = failure_on(&["5xx", "connect", "timeout", "reset"]);
        for failed in [
            CallResult::Status(500),
            CallResult::Status(599),
            CallResult::Connect,
            CallResult::Timeout,
            CallResult::Reset,
            CallResult::RefusedStream,
        ] {
            assert!(failure_on.is_failure(failed), "{failed:?}");
        }
        for passed in [CallResult::Status(200), CallResult::Status(404), CallResult::Status(499)] {
            assert!(!failure_on.is_failure(passed), "{passed:?}");
        }
    }

    #[test]
    fn client_errors_count_only_when_listed() {
        assert!(!failure_on(&["5xx"]).is_failure(CallResult::Status(429)));
        let with_4xx = failure_on(&["4xx"]);
        assert!(with_4xx.is_failure(CallResult::Status(400)));
        assert!(with_4xx.is_failure(CallResult::Status(499)));
        assert!(!with_4xx.is_failure(CallResult::Status(500)));
        assert!(!with_4xx.is_failure(CallResult::Status(399)));
    }

    #[test]
    fn gateway_errors_are_502_to_504_and_connect_failures() {
        let failure_on = failure_on(&["gateway-error"]);
        for failed in
            [CallResult::Status(502), CallResult::Status(503), CallResult::Status(504), CallResult::Connect]
        {
            assert!(failure_on.is_failure(failed), "{failed:?}");
        }
        for passed in
            [CallResult::Status(500), CallResult::Status(501), CallResult::Timeout, CallResult::Reset]
        {
            assert!(!failure_on.is_failure(passed), "{passed:?}");
        }
    }

    #[test]
    fn an_exact_status_counts_only_itself() {
        let failure_on = failure_on(&["503", "429"]);
        assert!(failure_on.is_failure(CallResult::Status(503)));
        assert!(failure_on.is_failure(CallResult::Status(429)));
        assert!(!failure_on.is_failure(CallResult::Status(500)));
        assert!(!failure_on.is_failure(CallResult::Connect));
    }

    #[test]
    fn unknown_entries_are_skipped() {
        assert_eq!(failure_on(&["teapot", "999", "5XX"]), FailureOn::default());
        assert!(!FailureOn::default().is_failure(CallResult::Status(500)));
    }
}
