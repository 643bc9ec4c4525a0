//! `remora-config`: the configuration contract users write against (`shared/CONFIG.md`).
//!
//! A file is loaded with figment (TOML plus `REMORA_<SECTION>__<KEY>` environment overrides), checked
//! section by section so that one mistake does not hide the next, and turned into a validated
//! [`Config`]: an immutable value the proxy compiles into its runtime snapshot. Every problem is
//! reported as a [`ConfigError`] with the exact path of the offending key.
#![forbid(unsafe_code)]

pub mod control;
pub mod control_config;
mod diff;
mod duration;
mod error;
pub mod journal;
mod load;
mod model;
mod raw;
pub mod report;
pub mod rollout;
mod traffic;
mod validate;

pub use control_config::{load_control_file, load_control_str, ControlConfig};
pub use diff::{diff, Change};
pub use duration::Duration;
pub use error::{error_chain, ConfigError, ConfigErrors, LoadError};
pub use load::{load_file, load_str, Source};
pub use model::{
    Admin, Backend, Balance, Breaker, BreakerWindow, Cluster, Config, Control, Endpoint, EventRef, HostMatch,
    HttpLimits, Limits, Listener, ListenerMode, ListenerProtocol, Node, Outlier, PathMatch, Retry, RetryOn,
    Route, RouteMatch, Runtime, Stats, Sticky, UpstreamProtocol,
};
pub use traffic::NodeTraffic;
