//! The journal's entries read as sentences: `remora events`, the demo and the dashboard (control adds
//! each entry's summary when it serves the journal) all say the same thing the same way. A kind known
//! here gets a sentence; any other kind, or a known kind whose detail lacks a field, its fields as
//! `key=value`.

use std::fmt::Write as _;

use serde_json::Value;

/// The longest summary printed; a longer one ends in `…`.
const SUMMARY_CHARS: usize = 160;

/// The detail of an entry in a few words: kinds known here get a sentence, others their fields.
pub fn summary(kind: &str, detail: &Value) -> String {
    let text = known_summary(kind, detail).unwrap_or_else(|| fields(detail));
    let text = one_line(&text);
    if text.chars().count() > SUMMARY_CHARS {
        let mut short: String = text.chars().take(SUMMARY_CHARS - 1).collect();
        short.push('…');
        short
    } else {
        text
    }
}

fn known_summary(kind: &str, detail: &Value) -> Option<String> {
    let text = |key: &str| detail.get(key).and_then(Value::as_str);
    let count = |key: &str| detail.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    match kind {
        "registered" | "reregistered" => {
            let mut out = format!("version {} from proxy {}", text("version")?, text("proxy")?);
            match count("warnings") {
                0 => {}
                1 => out.push_str(", 1 warning"),
                many => {
                    let _ = write!(out, ", {many} warnings");
                }
            }
            if count("forced_over") > 0 {
                let _ = write!(out, ", forced over {} conflict(s)", count("forced_over"));
            }
            Some(out)
        }
        "registration_refused" => {
            let conflicts = detail.get("conflicts")?.as_array()?;
            let first =
                conflicts.first().and_then(|conflict| conflict.get("message")).and_then(Value::as_str)?;
            let more = match conflicts.len() {
                0 | 1 => String::new(),
                many => format!(" (+{} more)", many - 1),
            };
            Some(format!("from proxy {}: {first}{more}", text("proxy")?))
        }
        "status_changed" => {
            let from = text("from").unwrap_or("-");
            let to = text("to")?;
            match text("reason") {
                Some(reason) => Some(format!("{from} → {to}: {reason}")),
                None => Some(format!("{from} → {to}")),
            }
        }
        "proxy_event" => {
            let event = text("event")?;
            let mut out = event.to_owned();
            if let Some(cluster) = text("cluster") {
                let _ = write!(out, " on {cluster}");
            }
            if let Some(proxy) = text("proxy") {
                let _ = write!(out, " (proxy {proxy})");
            }
            match detail.get("detail") {
                Some(Value::Null) | None => {}
                Some(Value::String(more)) if more.is_empty() => {}
                Some(Value::String(more)) => {
                    let _ = write!(out, ": {more}");
                }
                Some(more) => {
                    let _ = write!(out, ": {more}");
                }
            }
            Some(out)
        }
        "desired_changed" => {
            let routes = detail.get("routes")?.as_object()?;
            let routes: Vec<String> = routes
                .iter()
                .map(|(route, backends)| {
                    let backends: Vec<String> = backends
                        .as_array()
                        .map(|backends| {
                            backends
                                .iter()
                                .map(|backend| {
                                    let cluster =
                                        backend.get("cluster").and_then(Value::as_str).unwrap_or("?");
                                    let weight = backend
                                        .get("weight")
                                        .map_or_else(|| "-".to_owned(), Value::to_string);
                                    format!("{cluster} {weight}")
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{route}: {}", backends.join(", "))
                })
                .collect();
            match detail.get("revision").and_then(Value::as_u64) {
                Some(revision) => Some(format!("revision {revision}, weights {}", routes.join("; "))),
                None => Some(format!("weights {}", routes.join("; "))),
            }
        }
        _ => healing_summary(kind, detail),
    }
}

/// The healing loop's entries (control's `engine.rs`).
fn healing_summary(kind: &str, detail: &Value) -> Option<String> {
    let text = |key: &str| detail.get(key).and_then(Value::as_str);
    let number = |key: &str| detail.get(key).and_then(Value::as_u64);
    let constraints = || -> Option<String> {
        let list: Vec<&str> =
            detail.get("constraints")?.as_array()?.iter().filter_map(Value::as_str).collect();
        Some(list.join("; "))
    };
    let split = || -> Option<String> {
        let split = detail.get("split")?;
        let stable = split.pointer("/stable/version")?.as_str()?;
        let weight = split.get("canary_weight").and_then(Value::as_u64).unwrap_or(0);
        Some(match split.pointer("/canary/version").and_then(Value::as_str) {
            Some(canary) => format!("{stable} {}% / {canary} {weight}%", 100 - weight.min(100)),
            None => format!("{stable} 100%"),
        })
    };
    Some(match kind {
        "degraded" => format!("{}: {}", text("version")?, constraints()?),
        "remedy_did_not_help" => format!("still breaching: {}", constraints()?),
        "remediating" | "regenerating" => format!("hook {}", text("hook")?),
        "remediated" => format!("cooling down {} ms", number("cooldown_ms")?),
        "regenerated" => {
            let endpoints: Vec<&str> =
                detail.get("endpoints")?.as_array()?.iter().filter_map(Value::as_str).collect();
            format!("{} on {}", text("version")?, endpoints.join(", "))
        }
        "hook_failed" => format!("{} hook: {}", text("hook")?, text("error")?),
        "held" => format!("held on {}: {}", text("serving")?, text("reason")?),
        "recovered" => format!("recovered (was {})", text("from")?),
        "retried" => match (number("attempt"), number("held_retry_ms")) {
            (Some(attempt), Some(waited)) => format!(
                "retried by {}, attempt {attempt} after {} s held (was held: {})",
                text("by")?,
                waited as f64 / 1000.0,
                text("was")?
            ),
            _ => format!("retried by {} (was held: {})", text("by")?, text("was")?),
        },
        "ladder_restarted" => format!("{} (was {})", text("reason")?, text("from")?),
        "healed" => format!("{} serving", text("version")?),
        "retired" => format!("{} retired", text("version")?),
        "rollout_started" | "rollout_step" | "rollout_promoting" => {
            format!("revision {}, {}", number("revision")?, split()?)
        }
        "rollout_rolled_back" | "rollout_failed" => {
            format!("revision {}, {}: {}", number("revision")?, split()?, text("reason")?)
        }
        "rollout_check_failed" => format!(
            "check {} of {} failed at {}%: {}",
            number("failed_checks")?,
            number("max_failed_checks")?,
            number("weight")?,
            constraints()?
        ),
        "rollout_acked" => format!(
            "revision {} ({}%) applied by {} proxies in {} ms",
            number("revision")?,
            number("weight")?,
            number("proxies")?,
            number("push_to_ack_ms")?
        ),
        "rollout_succeeded" => format!("{} replaced {}", text("version")?, text("replaced")?),
        "rollout_paused" | "rollout_resumed" => format!("by {}", text("by").unwrap_or("control")),
        _ => return None,
    })
}

/// `key=value` for each field of an object (strings bare, everything else as JSON).
fn fields(detail: &Value) -> String {
    match detail {
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| match value {
                    Value::String(text) => format!("{key}={text}"),
                    other => format!("{key}={other}"),
                })
                .collect();
            parts.join(" ")
        }
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Control characters (a newline in a name or a message) would break the line: they become spaces.
pub fn one_line(text: &str) -> String {
    text.chars().map(|character| if character.is_control() { ' ' } else { character }).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_known_kind_with_an_unexpected_detail_falls_back_to_its_fields() {
        assert_eq!(summary("status_changed", &json!({"state": "odd"})), "state=odd");
        assert_eq!(summary("registered", &json!(null)), "");
    }

    #[test]
    fn the_healing_loops_entries_read_as_sentences() {
        let degraded = json!({"version": "v1", "constraints": ["p99 must be <= 250ms; measured 912ms"]});
        assert_eq!(summary("degraded", &degraded), "v1: p99 must be <= 250ms; measured 912ms");
        let split = json!({"stable": {"version": "v1"}, "canary": {"version": "v2", "endpoints": ["127.0.0.1:9"]}, "canary_weight": 10});
        assert_eq!(
            summary("rollout_started", &json!({"revision": 4, "split": split})),
            "revision 4, v1 90% / v2 10%"
        );
        let back = json!({"revision": 5, "split": {"stable": {"version": "v1"}, "canary_weight": 0}, "reason": "1 of 1 checks failed"});
        assert_eq!(summary("rollout_rolled_back", &back), "revision 5, v1 100%: 1 of 1 checks failed");
        let acked = json!({"revision": 5, "weight": 0, "proxies": 3, "push_to_ack_ms": 4});
        assert_eq!(summary("rollout_acked", &acked), "revision 5 (0%) applied by 3 proxies in 4 ms");
        let held = json!({"serving": "v1", "reason": "the regenerate hook failed: no answer within 2s"});
        assert_eq!(summary("held", &held), "held on v1: the regenerate hook failed: no answer within 2s");
        let restarted = json!({"from": "remediating", "reason": "control restarted while the remediate hook ran: the episode starts over"});
        assert_eq!(
            summary("ladder_restarted", &restarted),
            "control restarted while the remediate hook ran: the episode starts over (was remediating)"
        );
        let retried = json!({"by": "control", "held_retry_ms": 1500, "attempt": 2, "was": "the regenerate hook failed"});
        assert_eq!(
            summary("retried", &retried),
            "retried by control, attempt 2 after 1.5 s held (was held: the regenerate hook failed)"
        );
        let by_hand = json!({"by": "operator", "was": "the regenerate hook failed"});
        assert_eq!(
            summary("retried", &by_hand),
            "retried by operator (was held: the regenerate hook failed)"
        );
        // Missing fields fall back to the fields themselves.
        assert_eq!(summary("healed", &json!({"what": 1})), "what=1");
    }

    #[test]
    fn summaries_stay_on_one_line_and_short() {
        let long = "x".repeat(500);
        let text = summary("anything", &json!({"message": format!("two\nlines {long}")}));
        assert!(text.starts_with("message=two lines xxx"), "{text}");
        assert_eq!(text.chars().count(), SUMMARY_CHARS);
        assert!(text.ends_with('…'));
    }
}
