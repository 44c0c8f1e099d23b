//! Typed, validated scfsim configuration.
//!
//! [`load`] reads a TOML file, [`parse`] takes its text; both parse into raw structs that mirror
//! the file (unknown keys rejected), then validate them into a [`Config`]: defaults filled in
//! from the platform's limits, durations as [`Duration`](std::time::Duration)s, code directories
//! absolute, and every value checked against the platform's ranges unless `relaxed_limits` is
//! set. A rejected value yields [`ConfigError::Invalid`], naming the file, the field and what is
//! allowed.
//!
//! This crate is not a runtime: it binds nothing and starts nothing. Its only I/O is reading the
//! file and checking that each `code_dir` is a directory; [`Config::warnings`] looks at bootstrap
//! and TLS files on request.
//!
//! # Layout
//! - `raw`: the file as written (serde structs, `deny_unknown_fields`).
//! - `validate`, `names`: raw -> typed, with the platform's ranges and scfsim's own rules.
//! - `model`: the typed config and routing ([`Config::route`]).
//! - `faults`: `[functions.faults]`, shared with scenario files and the `X-Scfsim-Faults` header.
//! - `duration`: "500ms" / "15s" / "1m30s" parsing and [`format_duration`].

use std::path::Path;

mod duration;
mod error;
mod faults;
mod model;
mod names;
mod raw;
mod validate;

pub use duration::{format_duration, RawDuration};
pub use error::{BadValue, ConfigError};
pub use faults::{BadFault, Faults, RawFaults, START_FAILURES};
pub use model::{
    scaled, Config, FunctionConfig, GatewayConfig, ImageConfig, Isolation, Limits, Platform,
    RateLimitAction, TimelineConfig,
};

/// Reads, parses and validates the config file at `path`. Relative paths inside it (`code_dir`,
/// TLS files) are resolved against the file's directory; `data_dir` is kept as written.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, model::config_dir(path), path)
}

/// Parses and validates config `text`, resolving relative paths against `base_dir`. `source`
/// is only used to name the file in errors and is kept in [`Config::source`].
pub fn parse(text: &str, base_dir: &Path, source: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: source.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    validate::validate(raw, base_dir, source)
}
