//! Loading: a TOML file (or string) merged with `REMORA_<SECTION>__<KEY>` environment overrides.

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use crate::{validate, Config, LoadError};

/// Where configuration values may come from besides the TOML text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The TOML text, then `REMORA_*__*` environment variables over it.
    WithEnv,
    /// The TOML text alone.
    TextOnly,
}

/// Reads, merges and validates a configuration file. A missing or unreadable file is an error,
/// never an empty configuration.
pub fn load_file(path: &Path, source: Source) -> Result<Config, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    load_str(&text, source)
}

/// Merges and validates configuration text.
pub fn load_str(text: &str, source: Source) -> Result<Config, LoadError> {
    let mut figment = Figment::from(Toml::string(text));
    if source == Source::WithEnv {
        figment = figment.merge(env());
    }
    validate::figment(&figment).map_err(LoadError::Invalid)
}

/// `REMORA_ADMIN__LISTEN=…` sets `admin.listen`. Variables without a `__` (such as `REMORA_LOG`)
/// are not configuration and are left alone.
fn env() -> Env {
    Env::prefixed("REMORA_").filter(|key| key.as_str().contains("__")).split("__")
}
