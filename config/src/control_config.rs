//! The control process's configuration (`remora control --config control.toml`, `shared/CONFIG.md`,
//! section "Control"): where its API listens, where it keeps the event/node map, how it judges nodes
//! (`[analysis]`), how it rolls a new version out (`[rollout]`), and each node's SLO and hooks
//! (`[[nodes]]`).
//!
//! Loaded like the proxy's file: TOML, then environment overrides, then validation that reports every
//! error with its path. The environment variables it reads:
//!
//! - `REMORA_LISTEN`, `REMORA_STORE`, `REMORA_TOKEN_FILE`: the top-level keys;
//! - `REMORA_ANALYSIS__<KEY>`, `REMORA_ROLLOUT__<KEY>`: keys of the sections
//!   (`REMORA_ROLLOUT__STEPS="[5, 50, 100]"`);
//! - `REMORA_NODES`: the whole node list, in TOML's inline form
//!   (`REMORA_NODES='[{ name = "payments" }]'`);
//! - `REMORA_CONTROL_TOKEN`: the API token itself (see [`TokenSource`]).
//!
//! Other `REMORA_*` variables are left alone: they belong to the proxy (which shares the prefix) or are
//! not configuration (`REMORA_LOG`). A misspelt key inside a section (`REMORA_ANALYSIS__WINDW`) is an
//! error like one in the file; a misspelt section name is not seen.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Serialize, Serializer};

use crate::{ConfigErrors, Duration, Endpoint, LoadError, Source};

mod raw;
mod validate;

/// The variable that holds the API token itself.
pub const TOKEN_ENV: &str = "REMORA_CONTROL_TOKEN";

/// The control process's configuration, validated whole. `ControlConfig::default()` is what an empty
/// file gives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControlConfig {
    /// Where the API (and the dashboard) listens. Default `127.0.0.1:9900`.
    pub listen: SocketAddr,
    /// Where the event/node map and the journal are kept. Default `sqlite://remora-control.db`, a
    /// file in the working directory.
    pub store: Store,
    /// Where the API token comes from; `None`: the API asks for none (then keep `listen` on
    /// loopback).
    pub token: Option<TokenSource>,
    pub analysis: Analysis,
    pub rollout: Rollout,
    /// Per-node policy, in file order, names unique. A node not listed gets [`Slo::default()`] and no
    /// hooks.
    pub nodes: Vec<NodePolicy>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            store: Store::Sqlite { path: PathBuf::from("remora-control.db") },
            token: None,
            analysis: Analysis::default(),
            rollout: Rollout::default(),
            nodes: Vec::new(),
        }
    }
}

impl ControlConfig {
    /// The policy the file sets for `node`, if any.
    pub fn node(&self, node: &str) -> Option<&NodePolicy> {
        self.nodes.iter().find(|policy| policy.name == node)
    }

    /// The SLO `node` is judged by: its own, or the default.
    pub fn slo(&self, node: &str) -> Slo {
        self.node(node).map_or_else(Slo::default, |policy| policy.slo.clone())
    }

    /// The API token now, from the source the `token` field names (see [`TokenSource::read`]);
    /// `None` when there is none.
    pub fn token(&self) -> Result<Option<Token>, LoadError> {
        self.token.as_ref().map(TokenSource::read).transpose()
    }

    /// One line for people: what this configuration holds.
    pub fn summary(&self) -> String {
        let token = match &self.token {
            None => "no token",
            Some(TokenSource::Environment(_)) => "token from the environment",
            Some(TokenSource::File(_)) => "token from a file",
        };
        let policies = if self.nodes.len() == 1 { "node policy" } else { "node policies" };
        format!("listen {}, store {}, {token}, {} {policies}", self.listen, self.store, self.nodes.len())
    }
}

/// Where control keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// `sqlite://PATH`: one SQLite file. `sqlite:///var/lib/remora/control.db` is absolute,
    /// `sqlite://remora-control.db` relative to the working directory.
    Sqlite { path: PathBuf },
    /// `sqlite::memory:`: SQLite in memory, gone when the process ends (for tests).
    SqliteMemory,
    /// `etcd://HOST:PORT[,HOST:PORT…]`: an etcd cluster, for high availability. Read here ahead of the
    /// store itself, which comes later.
    Etcd { endpoints: Vec<Endpoint> },
}

impl Store {
    /// The schemes a store URL may have.
    pub const SCHEMES: &'static [&'static str] = &["sqlite", "etcd"];
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            Store::SqliteMemory => f.write_str("sqlite::memory:"),
            Store::Etcd { endpoints } => {
                f.write_str("etcd://")?;
                for (index, endpoint) in endpoints.iter().enumerate() {
                    if index > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{endpoint}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Store {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        validate::store(text)
    }
}

impl Serialize for Store {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How nodes are judged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    /// How often every node is judged. Default 1 s.
    pub interval: Duration,
    /// The span of reports each judgement looks at; at least `interval`. Default 10 s.
    pub window: Duration,
    /// A node is degraded after this many breached windows in a row; at least 1. Default 3.
    pub breach_windows: u32,
    /// After a remedy, how long a node gets to recover before it is regenerated. Default 30 s.
    pub cooldown: Duration,
    /// How long a held node waits before control tries its healing again by itself (as `remora heal`
    /// does); 0, the default, waits for an operator. Each retry that ends held again doubles the wait,
    /// up to `held_retry_max`.
    pub held_retry: Duration,
    /// The longest wait between automatic retries (never less than `held_retry`). Default 1 h.
    pub held_retry_max: Duration,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            breach_windows: 3,
            cooldown: Duration::from_secs(30),
            held_retry: Duration::from_secs(0),
            held_retry_max: Duration::from_secs(3600),
        }
    }
}

/// How a new version takes traffic over.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollout {
    /// The canary's share of traffic at each step, in percent: strictly increasing, each in 1..=100,
    /// the last 100. Default `[10, 25, 50, 100]`.
    pub steps: Vec<u32>,
    /// How long each step holds, judged by analysis, before the next. Default 30 s.
    pub step_interval: Duration,
    /// A rollout rolls back once this many checks have failed (1: at the first); at least 1.
    /// Default 1.
    pub max_failed_checks: u32,
    /// A rollout that has not moved a step for this long (too little traffic to judge, say) is rolled
    /// back; at least `step_interval`. Default 10 min.
    pub progress_deadline: Duration,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            steps: vec![10, 25, 50, 100],
            step_interval: Duration::from_secs(30),
            max_failed_checks: 1,
            progress_deadline: Duration::from_secs(600),
        }
    }
}

/// One node's policy (`[[nodes]]`); the node itself registers from its proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodePolicy {
    pub name: String,
    pub slo: Slo,
    pub hooks: Hooks,
}

/// What a node must hold to over analysis' window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slo {
    /// The least share of requests that must succeed, in (0, 1]. Default 0.99.
    pub success_rate: f64,
    /// The highest p99 latency allowed; `None` (the default) judges no latency.
    pub p99: Option<Duration>,
    /// Fewer requests than this in a window is "inconclusive", never a pass; at least 1. Default 20.
    pub min_requests: u64,
}

impl Default for Slo {
    fn default() -> Self {
        Self { success_rate: 0.99, p99: None, min_requests: 20 }
    }
}

/// The steps of a node's healing ladder that call out; each hook is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Hooks {
    /// Tried first on a degraded node (drop caches, restart a worker). Default timeout 5 s.
    pub remediate: Option<Hook>,
    /// Asked for a new version when remediation did not help; answers
    /// `{"version": "v2", "endpoints": ["127.0.0.1:9002"]}`. Default timeout 2 min.
    pub regenerate: Option<Hook>,
    /// Told to retire a version that no longer takes traffic. Default timeout 30 s.
    pub retire: Option<Hook>,
}

impl Hooks {
    /// Each hook's key and its default timeout.
    pub const DEFAULT_TIMEOUTS: [(&'static str, Duration); 3] = [
        ("remediate", Duration::from_secs(5)),
        ("regenerate", Duration::from_secs(120)),
        ("retire", Duration::from_secs(30)),
    ];
}

/// A hook: a webhook or a command, and how long it may take. It receives one JSON document (the node,
/// its spec, its version, the symptoms measured and the constraints derived from them) as the POST
/// body or on stdin.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hook {
    pub target: HookTarget,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookTarget {
    /// `url = "http://…"`: POSTed to.
    Url(String),
    /// `command = ["program", "arg", …]`: run without a shell; never empty.
    Command(Vec<String>),
}

/// Where the API token comes from. With [`Source::WithEnv`], a non-empty `REMORA_CONTROL_TOKEN` wins
/// over `token_file`, as the environment wins over the file for every key; an empty one counts as
/// unset. With [`Source::TextOnly`] only `token_file` counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// `REMORA_CONTROL_TOKEN`, read (and checked) when the configuration was loaded.
    Environment(Token),
    /// `token_file`, read by [`TokenSource::read`] each time it is called, so that a rotated file is
    /// picked up without a restart.
    File(PathBuf),
}

impl TokenSource {
    /// The token now.
    pub fn read(&self) -> Result<Token, LoadError> {
        match self {
            TokenSource::Environment(token) => Ok(token.clone()),
            TokenSource::File(path) => Token::read_file(path),
        }
    }
}

/// A bearer token: visible ASCII, 1 to [`Token::MAX_LEN`] bytes. Its `Debug` and `Serialize` never
/// show it, and comparing two takes the same time wherever they differ.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The longest token accepted: it travels in an `Authorization` header.
    pub const MAX_LEN: usize = 4096;

    /// A token from text, without surrounding whitespace (a file's final newline).
    pub fn new(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the token is empty".to_owned());
        }
        if text.len() > Self::MAX_LEN {
            return Err(format!("the token is {} bytes, more than {}", text.len(), Self::MAX_LEN));
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("the token may only hold visible ASCII characters (no spaces)".to_owned());
        }
        Ok(Token(text.to_owned()))
    }

    /// Reads a token file. A missing or unreadable file is [`LoadError::Io`]; one whose text is not a
    /// token is [`LoadError::Invalid`] at `token_file`.
    pub fn read_file(path: &Path) -> Result<Token, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
        Token::new(&text).map_err(|message| {
            let mut errors = ConfigErrors::default();
            errors.push("token_file", format!("{}: {message}", path.display()));
            LoadError::Invalid(errors)
        })
    }

    /// The token's text, to send it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether `presented` is this token, in time that depends on their lengths only.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if expected.len() != presented.len() {
            return false;
        }
        expected.iter().zip(presented).fold(0_u8, |differ, (a, b)| differ | (a ^ b)) == 0
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Reads, merges and validates a control configuration file. A missing or unreadable file is an
/// error, never an empty configuration. The token file is not read here: see [`TokenSource::read`].
pub fn load_control_file(path: &Path, source: Source) -> Result<ControlConfig, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    load_control_str(&text, source)
}

/// Merges and validates control configuration text.
pub fn load_control_str(text: &str, source: Source) -> Result<ControlConfig, LoadError> {
    let variables: Vec<(String, String)> = match source {
        Source::WithEnv => std::env::vars_os()
            .map(|(name, value)| (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()))
            .collect(),
        Source::TextOnly => Vec::new(),
    };
    load_with(text, &variables)
}

/// [`load_control_str`] with the environment given, so that tests need not change the process's.
fn load_with(text: &str, variables: &[(String, String)]) -> Result<ControlConfig, LoadError> {
    let figment = Figment::from(Toml::string(text)).merge(EnvOverrides::new(variables));
    let mut config = validate::figment(&figment).map_err(LoadError::Invalid)?;
    let token = variables.iter().find(|(name, value)| name == TOKEN_ENV && !value.is_empty());
    if let Some((_, value)) = token {
        let token = Token::new(value).map_err(|message| {
            let mut errors = ConfigErrors::default();
            errors.push(TOKEN_ENV, message);
            LoadError::Invalid(errors)
        })?;
        config.token = Some(TokenSource::Environment(token));
    }
    Ok(config)
}

/// The `REMORA_*` variables that are control configuration (see the module's documentation), as a
/// figment provider over the file.
struct EnvOverrides(Dict);

impl EnvOverrides {
    fn new(variables: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        for (name, value) in variables {
            let Some(key) = strip_prefix_ignoring_case(name, "REMORA_") else { continue };
            let key = key.trim().to_ascii_lowercase();
            let segments: Vec<&str> = key.split("__").collect();
            let ours = match segments.as_slice() {
                [key] => ["listen", "store", "token_file", "nodes"].contains(key),
                [section, rest @ ..] => {
                    raw::SECTIONS.contains(section) && rest.iter().all(|key| !key.is_empty())
                }
                [] => false,
            };
            if ours {
                insert(&mut dict, &segments, value.parse().unwrap_or_else(|never| match never {}));
            }
        }
        Self(dict)
    }
}

fn strip_prefix_ignoring_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Sets `path` in `dict`, making the tables on the way; a later variable wins over an earlier one.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [key] => {
            dict.insert((*key).to_owned(), value);
        }
        [key, rest @ ..] => {
            let entry = dict.entry((*key).to_owned()).or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("`REMORA_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
mod tests;
