use std::io;
use std::path::PathBuf;

/// Why a scenario file cannot be run. Every variant names the file; `Invalid` also names where
/// in it (the step, by number and line, or the key) and says what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario file {}", path.display())]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Not valid TOML, an unknown key outside the steps, or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The scenario file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The file parses but something in it cannot be run.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// Where: `step 3 (line 12)`, `outcome.end_reason`, `connections`, ...
        field: String,
        /// The value as written and what is allowed instead.
        message: String,
    },
}
