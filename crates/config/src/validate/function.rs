//! One `[[functions]]` table: identity, code directory, timeouts, sizes, env, limit overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Checked, Checker};
use crate::duration::{format_duration, RawDuration};
use crate::names;
use crate::raw::RawFunction;
use crate::{FunctionConfig, ImageConfig, Limits};

// The platform's defaults and documented ranges (semantics.md §2, §5).
const IDLE_DEFAULT: Duration = Duration::from_secs(15);
const IDLE_PLATFORM: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(7200));
const EXECUTION_DEFAULT: Duration = Duration::from_secs(900);
const EXECUTION_PLATFORM_MAX: Duration = Duration::from_secs(86_400);
const INIT_DEFAULT: Duration = Duration::from_secs(60);
const INIT_PLATFORM: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(300));
const MAX_INSTANCES_DEFAULT: u32 = 100;
const CONTAINER_STOCK_DEFAULT: u32 = 2;
const MEMORY_DEFAULT: u32 = 128;
const BOOTSTRAP_DEFAULT: &str = "scf_bootstrap";

impl Checker<'_> {
    pub(super) fn function(
        &self,
        index: usize,
        raw: RawFunction,
        default_limits: Limits,
        base_dir: &Path,
    ) -> Checked<FunctionConfig> {
        names::check_function_name(&raw.name)
            .map_err(|message| self.invalid(format!("functions[{index}].name"), message))?;
        // From here on the name is known to be plain ASCII, so it identifies the table.
        let at = |field: &str| format!("functions.{:?}.{field}", raw.name);

        names::check_route_path(&raw.path).map_err(|message| self.invalid(at("path"), message))?;
        let (code_dir, bootstrap, image) = self.code_or_image(&raw, &at, base_dir)?;

        let idle_timeout = self.duration(
            &at("idle_timeout"),
            raw.idle_timeout.as_ref(),
            IDLE_DEFAULT,
            Some(IDLE_PLATFORM),
        )?;
        let execution_timeout = self.execution_timeout(
            &at("execution_timeout"),
            raw.execution_timeout.as_ref(),
            idle_timeout,
        )?;
        let init_timeout = self.duration(
            &at("init_timeout"),
            raw.init_timeout.as_ref(),
            INIT_DEFAULT,
            Some(INIT_PLATFORM),
        )?;

        let max_instances = match raw.max_instances {
            Some(v) => self.count_u32(&at("max_instances"), v, None)?,
            None => MAX_INSTANCES_DEFAULT,
        };
        let container_stock = match raw.container_stock {
            // 0 is allowed: no stock.
            Some(0) => 0,
            Some(v) if v < 0 => {
                return Err(self.invalid(
                    at("container_stock"),
                    format!("got {v}; must be 0 (no stock) or more"),
                ))
            }
            Some(v) => self.count_u32(&at("container_stock"), v, None)?,
            None => CONTAINER_STOCK_DEFAULT,
        };
        let provisioned_instances =
            self.provisioned_instances(&at("provisioned_instances"), &raw, max_instances)?;
        let memory_mb = match raw.memory_mb {
            Some(v) => self.memory_mb(&at("memory_mb"), v)?,
            None => MEMORY_DEFAULT,
        };
        names::check_env(&raw.env).map_err(|message| self.invalid(at("env"), message))?;
        let limits = match &raw.limits {
            Some(overrides) => self.limits(&at("limits"), overrides, default_limits)?,
            None => default_limits,
        };

        let faults = match &raw.faults {
            Some(faults) => crate::Faults::check(faults)
                .map_err(|bad| self.invalid(at(&format!("faults.{}", bad.key)), bad.problem))?,
            None => crate::Faults::default(),
        };

        Ok(FunctionConfig {
            faults,
            bootstrap,
            code_dir,
            image,
            name: raw.name,
            path: raw.path,
            idle_timeout,
            execution_timeout,
            init_timeout,
            max_instances,
            container_stock,
            provisioned_instances,
            memory_mb,
            env: raw.env,
            limits,
            debug: raw.debug,
        })
    }

    /// A code function (`code_dir`, `bootstrap`) or an image function (`image`, `command`,
    /// `args`): exactly one of the two, and no field of the other.
    fn code_or_image(
        &self,
        raw: &RawFunction,
        at: &dyn Fn(&str) -> String,
        base_dir: &Path,
    ) -> Checked<(PathBuf, PathBuf, Option<ImageConfig>)> {
        let Some(image) = &raw.image else {
            for (field, set) in [
                ("command", raw.command.is_some()),
                ("args", raw.args.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        at(field),
                        "is only allowed for an image function (with `image = \"name:tag\"`)",
                    ));
                }
            }
            let Some(code_dir) = &raw.code_dir else {
                return Err(self.invalid(
                    at("code_dir"),
                    "is missing: a function needs either code_dir (a code package with an \
                     scf_bootstrap) or image (a container image listening on port 9000)",
                ));
            };
            let code_dir = self.code_dir(&at("code_dir"), code_dir, base_dir)?;
            let bootstrap = raw.bootstrap.as_deref().unwrap_or(BOOTSTRAP_DEFAULT);
            if bootstrap.is_empty() {
                return Err(self.invalid(at("bootstrap"), "must not be empty"));
            }
            let bootstrap = code_dir.join(bootstrap);
            return Ok((code_dir, bootstrap, None));
        };
        for (field, set) in [
            ("code_dir", raw.code_dir.is_some()),
            ("bootstrap", raw.bootstrap.is_some()),
        ] {
            if set {
                return Err(self.invalid(
                    at(field),
                    "is not allowed with image: an image function has no code package (its \
                     image's server listens on port 9000)",
                ));
            }
        }
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(
                at("image"),
                format!("got {image:?}; expected an image reference such as \"echo:1.0\""),
            ));
        }
        for (field, list) in [("command", &raw.command), ("args", &raw.args)] {
            if let Some(list) = list {
                if field == "command" && list.is_empty() {
                    return Err(self.invalid(
                        at(field),
                        "must not be empty (leave it out to keep the image's entrypoint)",
                    ));
                }
                if list.iter().any(|a| a.contains('\0')) {
                    return Err(self.invalid(at(field), "must not contain NUL characters"));
                }
            }
        }
        Ok((
            PathBuf::new(),
            PathBuf::new(),
            Some(ImageConfig {
                image: image.clone(),
                command: raw.command.clone(),
                args: raw.args.clone(),
            }),
        ))
    }

    /// 0 (the default) to `max_instances`: provisioned instances are part of the concurrency
    /// quota. Not with `debug = true`, whose instances wait for a person before they listen.
    fn provisioned_instances(
        &self,
        field: &str,
        raw: &RawFunction,
        max_instances: u32,
    ) -> Checked<u32> {
        let Some(value) = raw.provisioned_instances else {
            return Ok(0);
        };
        if value < 0 || value > i64::from(max_instances) {
            return Err(self.invalid(
                field,
                format!(
                    "got {value}; must be 0 to max_instances ({max_instances}): provisioned \
                     instances count against the function's concurrency quota"
                ),
            ));
        }
        if value > 0 && raw.debug {
            return Err(self.invalid(
                field,
                format!(
                    "got {value}; not allowed with debug = true: a debug-mode instance waits \
                     for a person to attach before it listens, so it cannot be started ahead \
                     (remove one of the two)"
                ),
            ));
        }
        Ok(u32::try_from(value).unwrap_or(max_instances))
    }

    fn execution_timeout(
        &self,
        field: &str,
        raw: Option<&RawDuration>,
        idle_timeout: Duration,
    ) -> Checked<Duration> {
        let value = self.duration(field, raw, EXECUTION_DEFAULT, None)?;
        // The default can clash with a long idle_timeout; say so rather than quoting a value the
        // user never wrote.
        let shown = raw.map_or_else(
            || format!("the default {}", format_duration(EXECUTION_DEFAULT)),
            ToString::to_string,
        );
        if value > EXECUTION_PLATFORM_MAX {
            self.platform(
                field,
                format!(
                    "got {shown}; the platform allows at most {}",
                    format_duration(EXECUTION_PLATFORM_MAX)
                ),
            )?;
        }
        if value < idle_timeout {
            self.platform(
                field,
                format!(
                    "got {shown}, shorter than idle_timeout ({}); the platform requires \
                     idle_timeout <= execution_timeout <= {}",
                    format_duration(idle_timeout),
                    format_duration(EXECUTION_PLATFORM_MAX)
                ),
            )?;
        }
        Ok(value)
    }

    fn memory_mb(&self, field: &str, value: i64) -> Checked<u32> {
        let mb = self.count_u32(field, value, None)?;
        let on_platform = mb == 64 || ((128..=3072).contains(&mb) && mb % 128 == 0);
        if !on_platform {
            self.platform(
                field,
                format!("got {mb}; the platform allows 64, or 128 to 3072 in steps of 128"),
            )?;
        }
        Ok(mb)
    }

    /// `text` resolved against the config file's directory; must be an existing directory.
    fn code_dir(&self, field: &str, text: &str, base_dir: &Path) -> Checked<PathBuf> {
        let joined = self.file_path(field, text, base_dir)?;
        let problem = match std::fs::metadata(&joined) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("is not a directory".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".to_owned()),
            Err(e) => Some(format!("cannot be read ({e})")),
        };
        if let Some(problem) = problem {
            return Err(self.invalid(
                field,
                format!(
                    "{text:?} resolves to {} which {problem} (code_dir is relative to the config \
                     file's directory)",
                    joined.display()
                ),
            ));
        }
        // Canonical form keeps messages and the instance's cwd free of "..".
        Ok(joined.canonicalize().unwrap_or(joined))
    }
}
