use std::io;
use std::path::PathBuf;

/// Why a config could not be used. Every variant names the file, so `scfsim check` can print the
/// error alone and the user knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The file parses but a value is not allowed.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Where the value is, e.g. `functions."echo".idle_timeout` or `gateway.admin_listen`.
        field: String,
        /// The value as written and what is allowed instead.
        message: String,
    },
}

/// What is wrong with one value, as a sentence that quotes the user's text and says what is
/// allowed. The validator that called the check adds the file and the field
/// ([`ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl From<BadValue> for String {
    fn from(bad: BadValue) -> String {
        bad.0
    }
}
