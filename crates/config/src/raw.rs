//! The config file exactly as written: every field optional where the file may omit it, no
//! defaults applied, nothing checked beyond TOML types. `validate` turns these into the typed
//! config; keeping the two apart lets validation name the field that is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::duration::RawDuration;
use crate::RateLimitAction;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Allow values outside the platform's documented ranges (tests need sub-second timeouts).
    #[serde(default)]
    pub relaxed_limits: bool,
    /// Run the idle and execution timers (and the rate limits) this many times faster; ranges
    /// are checked on the values as written. 1 when absent.
    pub time_scale: Option<f64>,
    /// `[gateway]`: listeners, TLS material, data directory, admin access.
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[limits]`: per-connection limits for every function unless it overrides them.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[[functions]]`: at least one is required.
    #[serde(default)]
    pub functions: Vec<RawFunction>,
    /// `[platform]`: the account instances believe they run in.
    #[serde(default)]
    pub platform: RawPlatform,
    /// `[runtimes]`: `"node12/bin/node" = "/opt/node12/bin/node"` maps a path under `/var/lang`
    /// to an interpreter on this machine.
    #[serde(default)]
    pub runtimes: BTreeMap<String, String>,
    /// `[timeline]`: the frame timeline kept per invocation.
    #[serde(default)]
    pub timeline: RawTimeline,
}

/// `[timeline]`. Integers stay `i64` so that negative values reach validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeline {
    pub enabled: Option<bool>,
    pub keep_invocations: Option<i64>,
    pub max_events: Option<i64>,
    pub payload_bytes: Option<i64>,
}

/// `[platform]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlatform {
    /// `TENCENTCLOUD_REGION` and `X-Scf-Region`.
    pub region: Option<String>,
    /// `TENCENTCLOUD_APPID` and `X-Scf-Appid`.
    pub appid: Option<String>,
    /// `TENCENTCLOUD_UIN` and `X-Scf-Uin`.
    pub uin: Option<String>,
}

/// `[gateway]`. Addresses stay strings here so a bad one is reported with its field name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    /// `IP:PORT` of the ws:// listener.
    pub listen: Option<String>,
    /// `IP:PORT` of the wss:// listener; no TLS listener when absent.
    pub tls_listen: Option<String>,
    /// PEM certificate chain, relative to the config file; requires `tls_key`.
    pub tls_cert: Option<String>,
    /// PEM private key, relative to the config file; requires `tls_cert`.
    pub tls_key: Option<String>,
    /// `IP:PORT` of the admin HTTP API.
    pub admin_listen: Option<String>,
    /// Where records, logs and generated certificates live, relative to the working directory.
    pub data_dir: Option<String>,
    /// Bearer token for the admin API; required when `admin_listen` is not a loopback address.
    pub admin_token: Option<String>,
    /// Instances alive at once across all functions: protects the machine.
    pub max_total_instances: Option<i64>,
    /// New instances per minute across all functions (the platform's regional burst quota);
    /// unlimited when absent.
    pub max_new_instances_per_minute: Option<i64>,
    /// How instances are isolated: "auto", "namespaces", "none" or "docker".
    pub isolation: Option<crate::Isolation>,
    /// Variables of scfsim's own environment passed to instances, beyond PATH, HOME and LANG.
    pub pass_env: Option<Vec<String>>,
    /// Invocation records kept (the newest).
    pub max_records: Option<i64>,
    /// Invocations whose instance log is kept (the newest).
    pub max_logged_invocations: Option<i64>,
    /// Records older than this are deleted ("30d" is not a unit: write "720h"); none by default.
    pub max_record_age: Option<RawDuration>,
    /// Accept the `X-Scfsim-Faults` header (faults for one connection, e.g. from `scfsim test`
    /// against this running scfsim). Off by default.
    #[serde(default)]
    pub fault_headers: bool,
}

/// `[limits]` and `[functions.limits]`: integers stay `i64` (TOML's integer) so that negative
/// values reach validation and get a message naming the range.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest single message, in bytes, either direction.
    pub max_message_bytes: Option<i64>,
    /// Client-to-function bytes per second per connection.
    pub max_bytes_per_second: Option<i64>,
    /// Client-to-function messages per second per connection.
    pub max_messages_per_second: Option<i64>,
    /// What to do when a rate limit is exceeded.
    pub rate_limit_action: Option<RateLimitAction>,
}

/// One `[[functions]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    /// Unique function name, `[A-Za-z][A-Za-z0-9_-]{0,59}`.
    pub name: String,
    /// Gateway path, e.g. "/echo"; matches "/echo" and "/echo/...".
    pub path: String,
    /// Directory holding the code and the bootstrap, relative to the config file. A code
    /// function has it; an image function (`image`) does not.
    pub code_dir: Option<String>,
    /// An image function: the container image ("name:tag") whose server listens on port 9000.
    pub image: Option<String>,
    /// An image function's command (the image's entrypoint replaced), as the platform's
    /// image functions have it.
    pub command: Option<Vec<String>>,
    /// An image function's arguments (the image's command replaced).
    pub args: Option<Vec<String>>,
    /// Bootstrap file, relative to `code_dir`; "scf_bootstrap" when absent.
    pub bootstrap: Option<String>,
    /// Time with no text/binary message either way before the gateway ends the connection.
    pub idle_timeout: Option<RawDuration>,
    /// Longest a connection may stay open.
    pub execution_timeout: Option<RawDuration>,
    /// Time for the bootstrap to start listening on port 9000.
    pub init_timeout: Option<RawDuration>,
    /// Concurrency quota: at most this many live instances.
    pub max_instances: Option<i64>,
    /// Containers created ahead of demand (container instances only).
    pub container_stock: Option<i64>,
    /// Instances kept started ahead of demand (the platform's provisioned concurrency).
    pub provisioned_instances: Option<i64>,
    /// Instance memory size in MB.
    pub memory_mb: Option<i64>,
    /// The function's own environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Overrides of `[limits]`, field by field.
    pub limits: Option<RawLimits>,
    /// Debug mode: each instance's runtime waits for a debugger (`scfsim serve --debug NAME`).
    #[serde(default)]
    pub debug: bool,
    /// `[functions.faults]`: faults injected into every connection of this function.
    pub faults: Option<crate::RawFaults>,
}
