//! The typed, validated config that the rest of scfsim reads. Built only by `validate` (or by
//! hand in tests); every value here is already within its allowed range.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::duration::serialize_as_string;
use crate::Faults;

/// A validated config file.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Values outside the platform's ranges were allowed.
    pub relaxed_limits: bool,
    /// Platform time runs this many times faster than real time: the idle and execution
    /// timeouts last `1 / time_scale` of their configured (platform) value, and the rate limits
    /// allow `time_scale` times more per real second. 1.0 = real time. Validated: 1 to
    /// [`Config::MAX_TIME_SCALE`].
    pub time_scale: f64,
    /// Listeners and gateway-wide settings.
    pub gateway: GatewayConfig,
    /// The `[limits]` table with defaults filled in; each function holds its effective copy.
    pub limits: Limits,
    /// In file order; names and paths are unique.
    pub functions: Vec<FunctionConfig>,
    /// The account instances believe they run in.
    pub platform: Platform,
    /// `/var/lang` paths (relative, e.g. `node12/bin/node`) mapped to interpreters here.
    pub runtimes: BTreeMap<String, PathBuf>,
    /// `[timeline]`: the frame timeline kept per invocation.
    pub timeline: TimelineConfig,
    /// The file this came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[timeline]` with defaults filled in: what each invocation's frame timeline keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimelineConfig {
    /// Capture timelines at all; off, `/api/invocations/{id}/frames` answers 404.
    pub enabled: bool,
    /// Invocations whose timeline is kept on disk (the newest).
    pub keep_invocations: u32,
    /// Events kept per invocation; later ones are counted as `dropped`.
    pub max_events: u32,
    /// Bytes of each payload kept; longer ones are cut and marked `truncated`.
    pub payload_bytes: u32,
}

impl TimelineConfig {
    pub const MAX_KEEP_INVOCATIONS: u32 = 1_000_000;
    pub const MAX_EVENTS: u32 = 1_000_000;
    /// A message is at most this large under the platform's limits anyway.
    pub const MAX_PAYLOAD_BYTES: u32 = 16 * 1024 * 1024;
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig {
            enabled: true,
            keep_invocations: 1000,
            max_events: 10_000,
            payload_bytes: 4096,
        }
    }
}

/// `[platform]` with defaults filled in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Platform {
    pub region: String,
    pub appid: String,
    pub uin: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            region: "ap-guangzhou".into(),
            appid: "1250000000".into(),
            uin: "100000000001".into(),
        }
    }
}

/// `[gateway]` with defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// ws:// listener.
    pub listen: SocketAddr,
    /// wss:// listener, if any.
    pub tls_listen: Option<SocketAddr>,
    /// Resolved against the config file's directory; set together with `tls_key` or not at all.
    pub tls_cert: Option<PathBuf>,
    /// Resolved against the config file's directory; set together with `tls_cert` or not at all.
    pub tls_key: Option<PathBuf>,
    /// Admin HTTP API listener.
    pub admin_listen: SocketAddr,
    /// As written: relative paths are relative to the process's working directory.
    pub data_dir: PathBuf,
    /// Bearer token for the admin API. Serialized as `"<redacted>"` so the admin API can show the
    /// config without handing out its own credential.
    #[serde(serialize_with = "serialize_redacted")]
    pub admin_token: Option<String>,
    /// Instances alive at once across all functions.
    pub max_total_instances: u32,
    /// New instances per minute across all functions; `None` = unlimited.
    pub max_new_instances_per_minute: Option<u32>,
    /// How instances are isolated.
    pub isolation: Isolation,
    /// Variables of scfsim's environment that instances also get (beyond PATH, HOME, LANG).
    pub pass_env: Vec<String>,
    /// Invocation records kept (the newest).
    pub max_records: u32,
    /// Invocations whose instance log is kept (the newest).
    pub max_logged_invocations: u32,
    /// Records older than this (by start time) are deleted; `None` keeps them (up to
    /// `max_records`).
    #[serde(serialize_with = "serialize_optional_duration")]
    pub max_record_age: Option<Duration>,
    /// The gateway accepts faults for one connection in its `X-Scfsim-Faults` request header
    /// (with the admin token in `X-Scfsim-Token` when there is one); refused with 403 otherwise.
    pub fault_headers: bool,
}

/// `gateway.isolation`: how instances are kept apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Namespaces where the machine allows them, else none (said at startup).
    #[default]
    Auto,
    /// Own network, PID and mount namespace per instance (in a user namespace when not root),
    /// or refuse to start.
    Namespaces,
    /// Host network and PID space: one instance at a time on port 9000.
    None,
    /// A container of the Docker engine per instance (the engine `DOCKER_HOST` names), code
    /// functions in scfsim's runtime image.
    Docker,
}

impl GatewayConfig {
    /// ws:// listener when the file names none.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    /// Admin listener when the file names none.
    pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
    /// Data directory when the file names none.
    pub const DEFAULT_DATA_DIR: &'static str = ".scfsim";
    /// Instances alive at once when the file names no limit.
    pub const DEFAULT_MAX_TOTAL_INSTANCES: u32 = 1000;
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: Self::DEFAULT_LISTEN,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            admin_listen: Self::DEFAULT_ADMIN_LISTEN,
            data_dir: PathBuf::from(Self::DEFAULT_DATA_DIR),
            admin_token: None,
            max_total_instances: Self::DEFAULT_MAX_TOTAL_INSTANCES,
            max_new_instances_per_minute: None,
            isolation: Isolation::Auto,
            pass_env: Vec::new(),
            max_records: 100_000,
            max_logged_invocations: 10_000,
            max_record_age: None,
            fault_headers: false,
        }
    }
}

fn serialize_optional_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::duration::format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn serialize_redacted<S: Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Per-connection limits. `Default` is the platform's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest single message in bytes, either direction (406 upstream / 407 downstream).
    pub max_message_bytes: u64,
    /// Client-to-function bytes per second.
    pub max_bytes_per_second: u64,
    /// Client-to-function messages per second.
    pub max_messages_per_second: u32,
    /// What happens when a rate is exceeded.
    pub rate_limit_action: RateLimitAction,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 256 * 1024,
            max_bytes_per_second: 128 * 1024,
            max_messages_per_second: 10,
            rate_limit_action: RateLimitAction::Throttle,
        }
    }
}

/// What the gateway does when a connection goes over its byte or message rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// Delay forwarding to stay within the limit; count throttled messages.
    Throttle,
    /// Close the connection (status 429).
    Close,
    /// Do not enforce rates.
    Off,
}

/// One function, with defaults filled in and paths made absolute.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionConfig {
    /// Unique name.
    pub name: String,
    /// Gateway path: "/" or "/seg[/seg...]" without a trailing '/'.
    pub path: String,
    /// Absolute; an existing directory when the config was validated. The instance's cwd.
    /// Empty for an image function (`image`), which has no code directory.
    #[serde(skip_serializing_if = "path_is_empty")]
    pub code_dir: PathBuf,
    /// Absolute: `code_dir` joined with the configured bootstrap. May not exist (that is a
    /// runtime 445, see `Config::warnings`). Empty for an image function.
    #[serde(skip_serializing_if = "path_is_empty")]
    pub bootstrap: PathBuf,
    /// An image function: its container image instead of a code directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageConfig>,
    /// No text/binary message either way for this long ends the invocation (455).
    #[serde(serialize_with = "serialize_as_string")]
    pub idle_timeout: Duration,
    /// A connection still open after this long ends the invocation (433).
    #[serde(serialize_with = "serialize_as_string")]
    pub execution_timeout: Duration,
    /// The bootstrap must listen on port 9000 within this long (else 446).
    #[serde(serialize_with = "serialize_as_string")]
    pub init_timeout: Duration,
    /// Concurrency quota (432 beyond it).
    pub max_instances: u32,
    /// Container instances (image functions, `isolation = "docker"`): how many containers are
    /// kept created, not started, ahead of demand; at most `max_instances`. 0: none.
    pub container_stock: u32,
    /// Instances kept ready ahead of demand (bootstrap run, listening on port 9000), each
    /// serving one connection and replaced at once; part of `max_instances`. 0: none.
    pub provisioned_instances: u32,
    /// Instance memory size (434 above it).
    pub memory_mb: u32,
    /// The function's own environment variables (built-ins are added by the pool).
    pub env: BTreeMap<String, String>,
    /// Effective limits: `[limits]` overridden field by field by `[functions.limits]`.
    pub limits: Limits,
    /// Debug mode: each instance's runtime waits for a debugger on a port of its own, and its
    /// init, idle and execution timers do not fire.
    pub debug: bool,
    /// `[functions.faults]`: injected into every connection; empty = none.
    #[serde(skip_serializing_if = "Faults::is_empty")]
    pub faults: Faults,
}

/// An image function's container: `image`, `command` and `args` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    /// "name:tag" (or a digest), as the engine names images.
    pub image: String,
    /// Replaces the image's entrypoint when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's command when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

fn path_is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

impl Config {
    /// The largest `time_scale`: beyond it a 10 s idle timeout would be shorter than a
    /// millisecond, below what the timers can keep.
    pub const MAX_TIME_SCALE: f64 = 10_000.0;

    /// The real time that `platform` time lasts at this config's `time_scale`.
    pub fn real_time(&self, platform: Duration) -> Duration {
        scaled(platform, self.time_scale)
    }

    /// The function serving a request `path` (without its query string): the longest function
    /// path equal to `path` or followed in it by '/'. "/echo" serves "/echo", "/echo/" and
    /// "/echo/a" but not "/echoes"; "/" serves everything no longer path claims.
    pub fn route(&self, path: &str) -> Option<&FunctionConfig> {
        self.functions
            .iter()
            .filter(|f| path_matches(&f.path, path))
            .max_by_key(|f| f.path.len())
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionConfig> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Things that are allowed but will probably not work: a missing or non-executable
    /// bootstrap (each connection would end with 445), TLS files that do not exist, TLS files
    /// without a wss:// listener. Looks at the file system now; the answer can change later.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .functions
            .iter()
            .filter(|f| f.image.is_none())
            .filter_map(bootstrap_warning)
            .collect();
        let gw = &self.gateway;
        for (field, path) in [("tls_cert", &gw.tls_cert), ("tls_key", &gw.tls_key)] {
            if let Some(path) = path.as_deref().filter(|p| !p.is_file()) {
                out.push(format!(
                    "gateway.{field}: {} is not a readable file; the wss:// listener will fail \
                     to start",
                    path.display()
                ));
            }
        }
        if gw.tls_listen.is_none() && gw.tls_cert.is_some() {
            out.push(
                "gateway.tls_cert and gateway.tls_key are set but gateway.tls_listen is not; \
                 no wss:// listener will start"
                    .to_owned(),
            );
        }
        out
    }
}

/// `platform` time divided by `time_scale` (at least 1; anything else is read as 1).
pub fn scaled(platform: Duration, time_scale: f64) -> Duration {
    if time_scale.is_finite() && time_scale > 1.0 {
        platform.div_f64(time_scale)
    } else {
        platform
    }
}

fn path_matches(function_path: &str, request_path: &str) -> bool {
    function_path == "/"
        || request_path
            .strip_prefix(function_path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn bootstrap_warning(f: &FunctionConfig) -> Option<String> {
    let problem = match std::fs::metadata(&f.bootstrap) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(e) => format!("cannot be read ({e})"),
        Ok(meta) if !meta.is_file() => "is not a file".to_owned(),
        Ok(meta) if !is_executable(&meta) => {
            format!("is not executable (chmod 755 {})", f.bootstrap.display())
        }
        Ok(_) => return None,
    };
    Some(format!(
        "function {:?}: bootstrap {} {problem}; every connection to {} will fail with status 445",
        f.name,
        f.bootstrap.display(),
        f.path
    ))
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    true
}

/// `path.parent()` of a bare file name is `""`; treat that as the current directory.
pub(crate) fn config_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dir_of_a_bare_file_name_is_the_current_directory() {
        assert_eq!(config_dir(Path::new("scfsim.toml")), Path::new("."));
        assert_eq!(
            config_dir(Path::new("config/scfsim.toml")),
            Path::new("config")
        );
        assert_eq!(config_dir(Path::new("/etc/scfsim.toml")), Path::new("/etc"));
    }
}
