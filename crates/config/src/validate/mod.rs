//! Raw config -> typed config. Checks run in file order and stop at the first problem, whose
//! message names the field, quotes the value as written and says what is allowed.
//!
//! Two kinds of check: the platform's documented ranges, lifted by `relaxed_limits = true`
//! (tests need timeouts of a second or less), and sanity rules that always hold because scfsim
//! itself could not work without them (positive durations, a limit of at least 1, unique names).
//!
//! `gateway` and `function` hold the checks for those tables; this file holds the shared
//! vocabulary (platform ranges, counts, durations, limits).

mod function;
mod gateway;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration::{format_duration, RawDuration};
use crate::raw::{RawConfig, RawLimits, RawTimeline};
use crate::{Config, ConfigError, FunctionConfig, Limits, Platform, TimelineConfig};

const RELAX_HINT: &str = "(set relaxed_limits = true to lift the platform's ranges)";

// The platform's per-connection maxima (semantics.md §5), which are also its defaults.
const MESSAGE_BYTES_PLATFORM_MAX: u64 = 256 * 1024;
const BYTES_PER_SECOND_PLATFORM_MAX: u64 = 128 * 1024;
const MESSAGES_PER_SECOND_PLATFORM_MAX: u64 = 10;

pub(crate) fn validate(
    raw: RawConfig,
    base_dir: &Path,
    source: &Path,
) -> Result<Config, ConfigError> {
    let check = Checker {
        source,
        relaxed: raw.relaxed_limits,
    };
    let gateway = check.gateway(raw.gateway, base_dir)?;
    let limits = check.limits("limits", &raw.limits, Limits::default())?;
    if raw.functions.is_empty() {
        return Err(check.invalid(
            "functions",
            "no function is configured; add a [[functions]] table with name, path and code_dir",
        ));
    }
    let mut functions: Vec<FunctionConfig> = Vec::with_capacity(raw.functions.len());
    for (index, raw_function) in raw.functions.into_iter().enumerate() {
        let function = check.function(index, raw_function, limits, base_dir)?;
        if let Some(other) = functions.iter().position(|f| f.name == function.name) {
            return Err(check.invalid(
                format!("functions[{index}].name"),
                format!(
                    "{:?} is already the name of functions[{other}]",
                    function.name
                ),
            ));
        }
        if let Some(other) = functions.iter().find(|f| f.path == function.path) {
            return Err(check.invalid(
                format!("functions.{:?}.path", function.name),
                format!(
                    "{:?} is already the path of function {:?}",
                    function.path, other.name
                ),
            ));
        }
        functions.push(function);
    }
    let defaults = Platform::default();
    let platform = Platform {
        region: raw.platform.region.unwrap_or(defaults.region),
        appid: raw.platform.appid.unwrap_or(defaults.appid),
        uin: raw.platform.uin.unwrap_or(defaults.uin),
    };
    let mut runtimes = std::collections::BTreeMap::new();
    for (key, target) in raw.runtimes {
        let field = format!("runtimes.{key:?}");
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() < 3
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(check.invalid(
                field,
                "must be a path under /var/lang such as \"node12/bin/node\" or \"python3/bin/python3\"",
            ));
        }
        runtimes.insert(key, check.file_path(&field, &target, base_dir)?);
    }
    let time_scale = check.time_scale(raw.time_scale)?;
    let timeline = check.timeline(&raw.timeline)?;
    Ok(Config {
        relaxed_limits: raw.relaxed_limits,
        time_scale,
        gateway,
        limits,
        functions,
        platform,
        runtimes,
        timeline,
        source: source.to_path_buf(),
    })
}

struct Checker<'a> {
    source: &'a Path,
    relaxed: bool,
}

type Checked<T> = Result<T, ConfigError>;

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Fails with `message` plus the relax hint, unless the config relaxes platform ranges.
    fn platform(&self, field: &str, message: String) -> Checked<()> {
        if self.relaxed {
            Ok(())
        } else {
            Err(self.invalid(field, format!("{message} {RELAX_HINT}")))
        }
    }

    /// `raw` overrides `base` field by field; `table` prefixes field names in messages.
    fn limits(&self, table: &str, raw: &RawLimits, base: Limits) -> Checked<Limits> {
        let field = |name: &str| format!("{table}.{name}");
        Ok(Limits {
            max_message_bytes: match raw.max_message_bytes {
                Some(v) => self.count(
                    &field("max_message_bytes"),
                    v,
                    Some(MESSAGE_BYTES_PLATFORM_MAX),
                    u64::MAX,
                )?,
                None => base.max_message_bytes,
            },
            max_bytes_per_second: match raw.max_bytes_per_second {
                Some(v) => self.count(
                    &field("max_bytes_per_second"),
                    v,
                    Some(BYTES_PER_SECOND_PLATFORM_MAX),
                    u64::MAX,
                )?,
                None => base.max_bytes_per_second,
            },
            max_messages_per_second: match raw.max_messages_per_second {
                Some(v) => self.count_u32(
                    &field("max_messages_per_second"),
                    v,
                    Some(MESSAGES_PER_SECOND_PLATFORM_MAX),
                )?,
                None => base.max_messages_per_second,
            },
            rate_limit_action: raw.rate_limit_action.unwrap_or(base.rate_limit_action),
        })
    }

    /// A positive integer, at most `hard_max` always and at most `platform_max` unless relaxed.
    fn count(
        &self,
        field: &str,
        value: i64,
        platform_max: Option<u64>,
        hard_max: u64,
    ) -> Checked<u64> {
        let Some(value) = u64::try_from(value).ok().filter(|v| *v >= 1) else {
            let range = platform_max.map_or(String::new(), |max| {
                format!(" (the platform allows 1 to {max})")
            });
            return Err(self.invalid(field, format!("got {value}; must be at least 1{range}")));
        };
        if value > hard_max {
            return Err(self.invalid(field, format!("got {value}; must be at most {hard_max}")));
        }
        if let Some(max) = platform_max.filter(|max| value > *max) {
            self.platform(
                field,
                format!("got {value}; the platform allows 1 to {max}"),
            )?;
        }
        Ok(value)
    }

    fn count_u32(&self, field: &str, value: i64, platform_max: Option<u64>) -> Checked<u32> {
        let value = self.count(field, value, platform_max, u64::from(u32::MAX))?;
        // count() enforced the u32 bound.
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    }

    /// `raw` or `default`; always > 0, and within `platform` unless relaxed.
    fn duration(
        &self,
        field: &str,
        raw: Option<&RawDuration>,
        default: Duration,
        platform: Option<(Duration, Duration)>,
    ) -> Checked<Duration> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let value = raw
            .to_duration()
            .map_err(|message| self.invalid(field, message))?;
        if value.is_zero() {
            return Err(self.invalid(field, format!("got {raw}; must be greater than zero")));
        }
        if let Some((min, max)) = platform.filter(|(min, max)| value < *min || value > *max) {
            self.platform(
                field,
                format!(
                    "got {raw}; the platform allows {} to {}",
                    format_duration(min),
                    format_duration(max)
                ),
            )?;
        }
        Ok(value)
    }

    /// `time_scale`: a number from 1 (real time) to [`Config::MAX_TIME_SCALE`]. Not a platform
    /// range: scfsim's timers cannot keep a faster clock.
    fn time_scale(&self, raw: Option<f64>) -> Checked<f64> {
        let Some(value) = raw else {
            return Ok(1.0);
        };
        if !(1.0..=Config::MAX_TIME_SCALE).contains(&value) {
            return Err(self.invalid(
                "time_scale",
                format!(
                    "got {value}; must be a number from 1 (real time) to {} (time runs that \
                     many times faster)",
                    Config::MAX_TIME_SCALE
                ),
            ));
        }
        Ok(value)
    }

    /// `[timeline]`: sizes from 1 to scfsim's own maxima (not platform ranges: the timeline is
    /// scfsim's, so `relaxed_limits` does not lift them).
    fn timeline(&self, raw: &RawTimeline) -> Checked<TimelineConfig> {
        let defaults = TimelineConfig::default();
        let bounded = |name: &str, value: Option<i64>, default: u32, max: u32, what: &str| {
            let Some(value) = value else {
                return Ok(default);
            };
            if !(1..=i64::from(max)).contains(&value) {
                return Err(self.invalid(
                    format!("timeline.{name}"),
                    format!("got {value}; must be 1 to {max} ({what})"),
                ));
            }
            Ok(value as u32)
        };
        Ok(TimelineConfig {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            keep_invocations: bounded(
                "keep_invocations",
                raw.keep_invocations,
                defaults.keep_invocations,
                TimelineConfig::MAX_KEEP_INVOCATIONS,
                "invocations whose timeline is kept; set timeline.enabled = false to keep none",
            )?,
            max_events: bounded(
                "max_events",
                raw.max_events,
                defaults.max_events,
                TimelineConfig::MAX_EVENTS,
                "events kept per invocation",
            )?,
            payload_bytes: bounded(
                "payload_bytes",
                raw.payload_bytes,
                defaults.payload_bytes,
                TimelineConfig::MAX_PAYLOAD_BYTES,
                "bytes of each payload kept",
            )?,
        })
    }

    /// A file path from the config, resolved against the config file's directory. Existence is
    /// not checked here; `Config::warnings` reports missing files.
    fn file_path(&self, field: &str, text: &str, base_dir: &Path) -> Checked<PathBuf> {
        if text.is_empty() {
            return Err(self.invalid(field, "must not be empty"));
        }
        std::path::absolute(base_dir.join(text))
            .map_err(|e| self.invalid(field, format!("{text:?} cannot be made absolute: {e}")))
    }
}
