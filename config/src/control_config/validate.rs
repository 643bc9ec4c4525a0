//! Validation of the control file: raw values in, a whole [`ControlConfig`] or every error (with its
//! path) out. Sections, nodes, each node's SLO and each hook are read one at a time, so that a mistake
//! in one does not hide another.
//!
//! The helpers at the end (figment errors to paths, did-you-mean) mirror those of the proxy's
//! `crate::validate`, which keeps its own private.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;

use super::raw::*;
use super::{Analysis, ControlConfig, Hook, HookTarget, Hooks, NodePolicy, Rollout, Slo, Store};
use crate::validate::{did_you_mean, push_figment_error, unknown_key};
use crate::{ConfigErrors, Duration, Endpoint};

pub(super) fn figment(figment: &Figment) -> Result<ControlConfig, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let dict: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(error) => {
            for error in error {
                push_figment_error(&mut errors, "", error);
            }
            return Err(errors);
        }
    };
    let config = Checker { errors: &mut errors }.config(&dict);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Parses a store URL: `sqlite://PATH`, `sqlite::memory:` or `etcd://HOST:PORT[,HOST:PORT…]`.
pub(super) fn store(text: &str) -> Result<Store, String> {
    if text == "sqlite::memory:" {
        return Ok(Store::SqliteMemory);
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "{text:?} is not a store URL: write \"sqlite://PATH\" or \"etcd://HOST:PORT[,HOST:PORT]\""
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            if rest.is_empty() || rest.ends_with('/') {
                return Err(format!(
                    "{text:?} names no file: write \"sqlite://remora-control.db\" (relative to the working \
                     directory) or \"sqlite:///var/lib/remora/control.db\" (absolute)"
                ));
            }
            Ok(Store::Sqlite { path: PathBuf::from(rest) })
        }
        "etcd" => {
            let mut endpoints = Vec::new();
            for part in rest.split(',') {
                let endpoint = endpoint(part.trim()).map_err(|message| format!("in {text:?}: {message}"))?;
                if endpoints.contains(&endpoint) {
                    return Err(format!("in {text:?}: {endpoint} is listed twice"));
                }
                endpoints.push(endpoint);
            }
            Ok(Store::Etcd { endpoints })
        }
        _ => Err(match did_you_mean(scheme, Store::SCHEMES) {
            Some(candidate) => {
                format!("unknown store scheme {scheme:?} in {text:?} (did you mean {candidate:?}?)")
            }
            None => format!(
                "unknown store scheme {scheme:?} in {text:?} (expected one of: {})",
                Store::SCHEMES.join(", ")
            ),
        }),
    }
}

struct Checker<'a> {
    errors: &'a mut ConfigErrors,
}

impl Checker<'_> {
    /// Builds a configuration from whatever parts are valid; the caller returns it only if no error
    /// was pushed on the way.
    fn config(&mut self, dict: &Dict) -> ControlConfig {
        for key in dict.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                self.errors.push(key.clone(), unknown_key(key, TOP_LEVEL_KEYS));
            }
        }
        let defaults = ControlConfig::default();
        let listen = dict
            .get("listen")
            .and_then(|value| self.read::<String>(value, "listen"))
            .and_then(|text| self.socket_addr(&text, "listen"))
            .unwrap_or(defaults.listen);
        let store = dict
            .get("store")
            .and_then(|value| self.read::<String>(value, "store"))
            .and_then(|text| store(&text).map_err(|message| self.errors.push("store", message)).ok())
            .unwrap_or(defaults.store);
        let token_file = dict.get("token_file").and_then(|value| self.read::<PathBuf>(value, "token_file"));
        if token_file.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
            self.errors.push("token_file", "cannot be empty (leave it out for no token)");
        }
        ControlConfig {
            listen,
            store,
            token: token_file.map(super::TokenSource::File),
            analysis: self.analysis(dict.get("analysis")),
            rollout: self.rollout(dict.get("rollout")),
            nodes: self.nodes(dict.get("nodes")),
        }
    }

    fn analysis(&mut self, value: Option<&Value>) -> Analysis {
        let defaults = Analysis::default();
        let Some(raw) = self.section::<RawAnalysis>(value, "analysis") else { return defaults };
        let analysis = Analysis {
            interval: raw.interval.unwrap_or(defaults.interval),
            window: raw.window.unwrap_or(defaults.window),
            breach_windows: raw.breach_windows.unwrap_or(defaults.breach_windows),
            cooldown: raw.cooldown.unwrap_or(defaults.cooldown),
            held_retry: raw.held_retry.unwrap_or(defaults.held_retry),
            held_retry_max: raw.held_retry_max.unwrap_or(defaults.held_retry_max),
        };
        self.positive(analysis.interval, "analysis.interval");
        self.positive(analysis.window, "analysis.window");
        if analysis.window < analysis.interval {
            self.errors.push(
                "analysis.window",
                format!(
                    "{} is shorter than interval ({}): some reports would never be judged",
                    analysis.window, analysis.interval
                ),
            );
        }
        if analysis.breach_windows == 0 {
            self.errors.push("analysis.breach_windows", "must be at least 1");
        }
        analysis
    }

    fn rollout(&mut self, value: Option<&Value>) -> Rollout {
        let defaults = Rollout::default();
        let Some(raw) = self.section::<RawRollout>(value, "rollout") else { return defaults };
        let steps = match raw.steps {
            None => defaults.steps,
            Some(values) => self.steps(&values),
        };
        let rollout = Rollout {
            steps,
            step_interval: raw.step_interval.unwrap_or(defaults.step_interval),
            max_failed_checks: raw.max_failed_checks.unwrap_or(defaults.max_failed_checks),
            progress_deadline: raw.progress_deadline.unwrap_or(defaults.progress_deadline),
        };
        self.positive(rollout.step_interval, "rollout.step_interval");
        self.positive(rollout.progress_deadline, "rollout.progress_deadline");
        if rollout.progress_deadline < rollout.step_interval {
            self.errors.push(
                "rollout.progress_deadline",
                format!(
                    "{} is shorter than step_interval ({}): no step could ever complete",
                    rollout.progress_deadline, rollout.step_interval
                ),
            );
        }
        if rollout.max_failed_checks == 0 {
            self.errors.push(
                "rollout.max_failed_checks",
                "must be at least 1 (1 rolls back at the first failed check)",
            );
        }
        rollout
    }

    /// Percentages, strictly increasing, ending at 100; each element's error at its own index.
    fn steps(&mut self, values: &[Value]) -> Vec<u32> {
        if values.is_empty() {
            self.errors.push("rollout.steps", "needs at least one step, the last one 100");
            return Vec::new();
        }
        let mut steps = Vec::new();
        let mut previous: Option<u32> = None;
        for (index, value) in values.iter().enumerate() {
            let path = format!("rollout.steps[{index}]");
            let step = match value {
                Value::Num(_, number) if number.to_f64().is_some() => {
                    Err(format!("{} is not a whole percentage", number.to_f64().unwrap_or_default()))
                }
                Value::Num(..) => match value.deserialize::<i64>() {
                    Ok(step) if (1..=100).contains(&step) => Ok(step as u32),
                    Ok(step) => Err(format!("{step} is not a percentage in 1..=100")),
                    Err(_) => Err("is not a percentage in 1..=100".to_owned()),
                },
                other => Err(format!("expected a percentage such as 25, found {}", other.to_actual())),
            };
            match step {
                Ok(step) => {
                    if let Some(previous) = previous.filter(|previous| step <= *previous) {
                        self.errors.push(path, format!("{step} does not increase on {previous}"));
                    }
                    previous = Some(step);
                    steps.push(step);
                }
                Err(message) => self.errors.push(path, message),
            }
        }
        if steps.len() == values.len() && steps.last() != Some(&100) {
            self.errors.push(
                format!("rollout.steps[{}]", steps.len() - 1),
                format!("the last step must be 100 (the whole traffic), not {}", steps[steps.len() - 1]),
            );
        }
        steps
    }

    fn nodes(&mut self, value: Option<&Value>) -> Vec<NodePolicy> {
        let mut nodes = Vec::new();
        let elements = match value {
            None => return nodes,
            Some(Value::Array(_, elements)) => elements,
            Some(_) => {
                self.errors.push("nodes", "expected a list ([[nodes]])");
                return nodes;
            }
        };
        let mut names = HashSet::new();
        for (index, value) in elements.iter().enumerate() {
            let path = format!("nodes[{index}]");
            let Some(raw) = self.read::<RawNode>(value, &path) else { continue };
            self.name(&raw.name, &format!("{path}.name"));
            if !names.insert(raw.name.clone()) {
                self.errors.push(format!("{path}.name"), format!("duplicate node name {:?}", raw.name));
            }
            let slo = self.slo(raw.slo.as_ref(), &format!("{path}.slo"));
            let hooks = self.hooks(raw.hooks.as_ref(), &format!("{path}.hooks"));
            nodes.push(NodePolicy { name: raw.name, slo, hooks });
        }
        nodes
    }

    fn slo(&mut self, value: Option<&Value>, path: &str) -> Slo {
        let defaults = Slo::default();
        let Some(raw) = self.section::<RawSlo>(value, path) else { return defaults };
        let slo = Slo {
            success_rate: raw.success_rate.unwrap_or(defaults.success_rate),
            p99: raw.p99.or(defaults.p99),
            min_requests: raw.min_requests.unwrap_or(defaults.min_requests),
        };
        if !(slo.success_rate > 0.0 && slo.success_rate <= 1.0) {
            self.errors.push(
                format!("{path}.success_rate"),
                format!("{} is not a share in (0, 1] (0.99 is 99%)", slo.success_rate),
            );
        }
        if slo.p99.is_some_and(Duration::is_zero) {
            self.errors
                .push(format!("{path}.p99"), "must be greater than zero (leave p99 out to judge no latency)");
        }
        if slo.min_requests == 0 {
            self.errors.push(format!("{path}.min_requests"), "must be at least 1");
        }
        slo
    }

    fn hooks(&mut self, value: Option<&Value>, path: &str) -> Hooks {
        let Some(raw) = self.section::<RawHooks>(value, path) else { return Hooks::default() };
        let [(_, remediate), (_, regenerate), (_, retire)] = Hooks::DEFAULT_TIMEOUTS;
        Hooks {
            remediate: raw
                .remediate
                .and_then(|value| self.hook(&value, &format!("{path}.remediate"), remediate)),
            regenerate: raw
                .regenerate
                .and_then(|value| self.hook(&value, &format!("{path}.regenerate"), regenerate)),
            retire: raw.retire.and_then(|value| self.hook(&value, &format!("{path}.retire"), retire)),
        }
    }

    fn hook(&mut self, value: &Value, path: &str, default_timeout: Duration) -> Option<Hook> {
        let raw: RawHook = self.read(value, path)?;
        let target = match (raw.url, raw.command) {
            (Some(url), None) => {
                self.url(&url, &format!("{path}.url"));
                HookTarget::Url(url)
            }
            (None, Some(command)) => HookTarget::Command(self.command(&command, &format!("{path}.command"))),
            (Some(_), Some(_)) => {
                self.errors.push(path.to_owned(), "set either url or command, not both");
                return None;
            }
            (None, None) => {
                self.errors.push(path.to_owned(), "set url (a webhook) or command (a program to run)");
                return None;
            }
        };
        let timeout = raw.timeout.unwrap_or(default_timeout);
        self.positive(timeout, &format!("{path}.timeout"));
        Some(Hook { target, timeout })
    }

    fn command(&mut self, value: &Value, path: &str) -> Vec<String> {
        let Value::Array(_, elements) = value else {
            let example = match value {
                Value::String(_, text) => format!("[{text:?}]"),
                _ => "[\"deploy/regenerate.sh\", \"--fast\"]".to_owned(),
            };
            self.errors.push(
                path.to_owned(),
                format!(
                    "expected a list: the program, then its arguments, as in {example} (no shell is used)"
                ),
            );
            return Vec::new();
        };
        if elements.is_empty() {
            self.errors.push(path.to_owned(), "needs at least the program to run");
        }
        let mut command = Vec::new();
        for (index, element) in elements.iter().enumerate() {
            match element {
                Value::String(_, text) => command.push(text.clone()),
                other => self.errors.push(
                    format!("{path}[{index}]"),
                    format!("expected a string, found {}", other.to_actual()),
                ),
            }
        }
        if command.first().is_some_and(String::is_empty) {
            self.errors.push(format!("{path}[0]"), "the program cannot be empty");
        }
        command
    }

    fn read<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match value.deserialize::<T>() {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                for error in error {
                    push_figment_error(self.errors, path, error);
                }
                None
            }
        }
    }

    /// An optional table: its defaults when absent, `None` when present but invalid.
    fn section<T: DeserializeOwned + Default>(&mut self, value: Option<&Value>, path: &str) -> Option<T> {
        match value {
            None => Some(T::default()),
            Some(value) => self.read(value, path),
        }
    }

    fn positive(&mut self, duration: Duration, path: &str) {
        if duration.is_zero() {
            self.errors.push(path.to_owned(), "must be greater than zero");
        }
    }

    fn socket_addr(&mut self, text: &str, path: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.errors.push(
                    path.to_owned(),
                    format!("{text:?} is not an IP address with a port (e.g. \"127.0.0.1:9900\")"),
                );
                None
            }
        }
    }

    fn url(&mut self, text: &str, path: &str) {
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
        match rest {
            None => self.errors.push(path.to_owned(), format!("{text:?} is not an http:// or https:// URL")),
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                self.errors.push(path.to_owned(), format!("{text:?} names no host"));
            }
            Some(rest) if rest.bytes().any(|byte| byte <= b' ' || byte == 0x7f) => {
                self.errors.push(path.to_owned(), format!("{text:?} holds spaces or control characters"));
            }
            Some(_) => {}
        }
    }

    /// Names appear in metric labels and URLs: keep them plain (the proxy's rule for `[node].name`).
    fn name(&mut self, name: &str, path: &str) {
        if name.is_empty() {
            self.errors.push(path.to_owned(), "cannot be empty");
        } else if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        {
            self.errors
                .push(path.to_owned(), format!("{name:?} may only hold letters, digits, '-', '_' and '.'"));
        }
    }
}

/// `host:port`, `1.2.3.4:port` or `[::1]:port`, the port not 0.
fn endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{text:?} needs a port other than 0"));
        }
        return Ok(Endpoint { host: addr.ip().to_string(), port: addr.port(), socket_addr: Some(addr) });
    }
    let invalid =
        || format!("{text:?} is not an address with a port (e.g. \"127.0.0.1:2379\" or \"etcd-1:2379\")");
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let hostname = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
    if port == 0 || host.parse::<IpAddr>().is_ok() || !hostname {
        return Err(invalid());
    }
    Ok(Endpoint { host: host.to_ascii_lowercase(), port, socket_addr: None })
}
