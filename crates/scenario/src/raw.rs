//! The scenario file as written: serde structs, unknown keys rejected, nothing checked beyond
//! TOML types. `model` validates these into a [`crate::Scenario`], naming the key that is wrong.

use std::collections::BTreeMap;

use scfsim_config::RawDuration;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    /// Shown in reports; the file name when absent.
    pub name: Option<String>,
    /// Gateway path, e.g. "/echo" or "/chat/{n}".
    pub path: String,
    /// Query parameters, percent-encoded by the runner.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Extra request headers of the upgrade request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Sec-WebSocket-Protocol` values offered.
    #[serde(default)]
    pub subprotocols: Vec<String>,
    /// Connections run in parallel, each through all the steps.
    pub connections: Option<i64>,
    /// Default `within` of every expectation.
    pub timeout: Option<RawDuration>,
    /// Kept as tables so that each step's keys are checked with its number and line.
    #[serde(default)]
    pub steps: Vec<toml::Spanned<toml::Table>>,
    /// The invocation's record, checked after the connection ends.
    pub outcome: Option<RawOutcome>,
    /// `[faults]`: injected into each connection, with the keys of `[functions.faults]`.
    pub faults: Option<scfsim_config::RawFaults>,
}

/// One `[[steps]]` table: exactly one action key, plus the modifiers that action takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub send: Option<String>,
    pub send_binary: Option<String>,
    pub send_file: Option<String>,
    pub expect: Option<String>,
    pub expect_match: Option<String>,
    pub expect_json: Option<toml::Value>,
    pub expect_binary: Option<String>,
    pub expect_file: Option<String>,
    pub expect_nothing: Option<RawDuration>,
    pub expect_close: Option<toml::Value>,
    pub sleep: Option<RawDuration>,
    pub ping: Option<String>,
    pub close: Option<toml::Value>,
    /// Modifier of the expect_* actions and of ping: how long to wait.
    pub within: Option<RawDuration>,
    /// Modifier of send_file: "binary" (default) or "text".
    #[serde(rename = "as")]
    pub send_as: Option<String>,
}

/// `[outcome]`: fields of the invocation record; each one present is compared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutcome {
    pub function: Option<String>,
    pub status_code: Option<i64>,
    pub outcome: Option<String>,
    pub end_reason: Option<String>,
    pub closed_by: Option<String>,
    pub close_code: Option<i64>,
    pub close_reason: Option<String>,
    pub messages_in: Option<i64>,
    pub messages_out: Option<i64>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
    pub throttled_messages: Option<i64>,
    /// The record's `injected_faults`, exactly (`[]`: none).
    pub injected_faults: Option<Vec<String>>,
    /// How long to wait for the record to be complete after the connection ended.
    pub within: Option<RawDuration>,
}
