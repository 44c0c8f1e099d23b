//! Shared by the integration tests: a temp directory holding a config file's neighbours.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use scfsim_config::{parse, Config, ConfigError};

/// The smallest valid function, with `code_dir` = "code" next to the config file.
pub const ECHO: &str = "[[functions]]\nname = \"echo\"\npath = \"/echo\"\ncode_dir = \"code\"\n";

/// A directory standing in for the config file's directory, with a `code` subdirectory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("code")).expect("mkdir code");
        Fixture { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the config file would be; only used in messages.
    pub fn source(&self) -> PathBuf {
        self.dir.path().join("scfsim.toml")
    }

    /// The canonical `code` directory, as `FunctionConfig::code_dir` reports it.
    pub fn code_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("code")
            .canonicalize()
            .expect("canonicalize")
    }

    pub fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse(text, self.dir.path(), &self.source())
    }

    pub fn parse_ok(&self, text: &str) -> Config {
        self.parse(text)
            .unwrap_or_else(|e| panic!("config should be valid: {e}\n---\n{text}"))
    }
}
