//! Scaffolding of new functions: what `scfsim init` writes.
//!
//! [`scaffold`] creates a code directory holding a WebSocket web function that both scfsim and
//! the platform accept: an executable `scf_bootstrap` (`#!/bin/bash`, mode 755) that starts a
//! WebSocket echo server on `0.0.0.0:9000`, the server itself in the chosen [`Runtime`], its
//! dependency file and a README. It returns the `[[functions]]` block to add to an scfsim config
//! and the commands that install or build the function's dependencies.
//!
//! The files are the templates under `crates/init/templates/<runtime>/` and, for the server code
//! that is also one of scfsim's examples (python3, nodejs, rust, bash), the example's file under
//! `examples/`; all are built into the library. Templates contain three placeholders, replaced when written: `{{name}}` (the function's name),
//! `{{package}}` (the name in lower case, for package.json, go.mod and Cargo.toml) and
//! `{{config_block}}` (in the README).
//!
//! Bootstraps call `python3` and `node` from `PATH`, with a comment giving the line the platform
//! uses (`/var/lang/python3/bin/python3`, `/var/lang/node16/bin/node`). Go and Rust functions run
//! a binary, `./server`, that the user builds (the README and [`Scaffolded::next_steps`] say
//! how); until it is built the bootstrap exits with a message saying so.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The language a scaffolded function is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Python 3 on the `websockets` library.
    Python3,
    /// Node.js on the `ws` library.
    Nodejs,
    /// Go on `github.com/gorilla/websocket`; a binary built by the user.
    Go,
    /// Rust on tokio and tokio-tungstenite; a binary built by the user.
    Rust,
    /// A bash bootstrap; the server is Python 3 standard library only (bash cannot serve
    /// WebSocket by itself).
    Bash,
}

impl Runtime {
    /// Every runtime, in the order `--help` lists them.
    pub const ALL: [Runtime; 5] = [
        Runtime::Python3,
        Runtime::Nodejs,
        Runtime::Go,
        Runtime::Rust,
        Runtime::Bash,
    ];

    /// The name [`FromStr`] accepts and [`Display`](fmt::Display) writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Go => "go",
            Runtime::Rust => "rust",
            Runtime::Bash => "bash",
        }
    }

    fn templates(self) -> &'static [Template] {
        match self {
            Runtime::Python3 => PYTHON3,
            Runtime::Nodejs => NODEJS,
            Runtime::Go => GO,
            Runtime::Rust => RUST,
            Runtime::Bash => BASH,
        }
    }

    /// Commands run in the function's directory to make it runnable.
    fn build_steps(self) -> &'static [&'static str] {
        match self {
            Runtime::Python3 => &["python3 -m pip install -r requirements.txt -t ."],
            Runtime::Nodejs => &["npm install"],
            Runtime::Go => &["CGO_ENABLED=0 go build -o server ."],
            Runtime::Rust => &["cargo build --release", "cp target/release/server server"],
            Runtime::Bash => &[],
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runtime {
    type Err = InitError;

    fn from_str(s: &str) -> Result<Runtime, InitError> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InitError::UnknownRuntime(s.to_owned()))
    }
}

/// What [`scaffold`] wrote, and what the user does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaffolded {
    /// Every file written, as `dir` joined with the file's path, in the order written.
    pub files: Vec<PathBuf>,
    /// The `[[functions]]` block to add to an scfsim config: `name`, `path = "/<name>"`,
    /// `code_dir` (the `dir` given, as given: relative paths are relative to the config file),
    /// `idle_timeout = "15s"`. Ends with a newline.
    pub config_block: String,
    /// Shell commands that install or build the function's dependencies: `cd <dir>` first, then
    /// commands run there. Empty for a runtime with nothing to install (bash).
    pub next_steps: Vec<String>,
}

/// Why [`scaffold`] (or parsing a [`Runtime`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("unknown runtime {0:?}: expected one of python3, nodejs, go, rust, bash")]
    UnknownRuntime(String),
    #[error(
        "{0:?} is not a valid function name: 1 to 60 letters, digits, '_' or '-', starting with \
         a letter"
    )]
    InvalidName(String),
    #[error("{} is not valid UTF-8, so it cannot be written into the config", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "{} is not empty (it holds {first:?}): choose a new directory, or empty this one first",
        dir.display()
    )]
    NotEmpty { dir: PathBuf, first: String },
    #[error("cannot use {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One file of a runtime's template.
struct Template {
    /// Where it goes, relative to the function's directory.
    path: &'static str,
    content: &'static str,
    /// Mode 755 (the bootstrap) instead of the process's default.
    executable: bool,
}

macro_rules! template {
    ($runtime:literal, $path:literal) => {
        template!($runtime, $path, $path, false)
    };
    ($runtime:literal, $path:literal, executable) => {
        template!($runtime, $path, $path, true)
    };
    ($runtime:literal, $path:literal, from $file:literal) => {
        template!($runtime, $path, $file, false)
    };
    // Code that is also one of scfsim's examples (tested there as served by scfsim): the
    // example is the one copy.
    ($runtime:literal, $path:literal, example $file:literal) => {
        Template {
            path: $path,
            content: include_str!(concat!("../../../examples/", $file)),
            executable: false,
        }
    };
    ($runtime:literal, $path:literal, $file:literal, $executable:expr) => {
        Template {
            path: $path,
            content: include_str!(concat!("../templates/", $runtime, "/", $file)),
            executable: $executable,
        }
    };
}

const PYTHON3: &[Template] = &[
    template!("python3", "scf_bootstrap", executable),
    template!("python3", "app.py", example "python-echo/app.py"),
    template!("python3", "requirements.txt"),
    template!("python3", "README.md"),
];

const NODEJS: &[Template] = &[
    template!("nodejs", "scf_bootstrap", executable),
    template!("nodejs", "app.js", example "node-echo/app.js"),
    template!("nodejs", "package.json"),
    template!("nodejs", "README.md"),
    template!("nodejs", ".gitignore", from "gitignore"),
];

const GO: &[Template] = &[
    template!("go", "scf_bootstrap", executable),
    template!("go", "main.go"),
    template!("go", "go.mod"),
    template!("go", "go.sum"),
    template!("go", "README.md"),
    template!("go", ".gitignore", from "gitignore"),
];

// Cargo.toml is stored as Cargo.toml.tmpl so that no manifest with placeholders sits inside
// scfsim's own workspace.
const RUST: &[Template] = &[
    template!("rust", "scf_bootstrap", executable),
    template!("rust", "Cargo.toml", from "Cargo.toml.tmpl"),
    template!("rust", "src/main.rs", example "rust-echo/src/main.rs"),
    template!("rust", "README.md"),
    template!("rust", ".gitignore", from "gitignore"),
];

const BASH: &[Template] = &[
    template!("bash", "scf_bootstrap", executable),
    template!("bash", "server.py", example "echo/server.py"),
    template!("bash", "README.md"),
];

/// The platform's rule for function names, as scfsim's config checks it:
/// `[A-Za-z][A-Za-z0-9_-]{0,59}`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 60
}

/// Writes a new `runtime` function called `name` into `dir`, which is created (with its parents)
/// and must not exist yet or be empty.
///
/// On an error after `dir` was created, the files already written stay there.
pub fn scaffold(dir: &Path, name: &str, runtime: Runtime) -> Result<Scaffolded, InitError> {
    if !valid_name(name) {
        return Err(InitError::InvalidName(name.to_owned()));
    }
    let dir_str = dir
        .to_str()
        .ok_or_else(|| InitError::NonUtf8Path(dir.to_path_buf()))?;
    let config_block = config_block(name, dir_str);
    prepare_dir(dir)?;

    let package = name.to_ascii_lowercase();
    let mut files = Vec::new();
    for template in runtime.templates() {
        let path = dir.join(template.path);
        let io_err = |source| InitError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let content = template
            .content
            .replace("{{name}}", name)
            .replace("{{package}}", &package)
            .replace("{{config_block}}", &config_block);
        std::fs::write(&path, content).map_err(io_err)?;
        if template.executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err)?;
        }
        files.push(path);
    }

    let steps = runtime.build_steps();
    let next_steps = if steps.is_empty() {
        Vec::new()
    } else {
        std::iter::once(format!("cd {}", shell_quote(dir_str)))
            .chain(steps.iter().map(|s| s.to_string()))
            .collect()
    };
    Ok(Scaffolded {
        files,
        config_block,
        next_steps,
    })
}

/// Creates `dir`, or accepts it if it is an empty directory.
fn prepare_dir(dir: &Path) -> Result<(), InitError> {
    let io_err = |source| InitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(InitError::NotADirectory(dir.to_path_buf())),
        Ok(_) => match std::fs::read_dir(dir).map_err(io_err)?.next() {
            None => Ok(()),
            Some(entry) => Err(InitError::NotEmpty {
                dir: dir.to_path_buf(),
                first: entry
                    .map_err(io_err)?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            }),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err)
        }
        Err(err) => Err(io_err(err)),
    }
}

fn config_block(name: &str, code_dir: &str) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "[[functions]]\nname = {}\npath = {}\ncode_dir = {}\nidle_timeout = \"15s\"\n",
        quoted(name),
        quoted(&format!("/{name}")),
        quoted(code_dir),
    )
}

/// `s` as one shell word: unchanged when that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_platform_rule() {
        for ok in ["a", "hello", "Hello-World_2", &"x".repeat(60)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "-a", "a b", "a/b", "a.b", "é", &"x".repeat(61)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("my-fn"), "my-fn");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn config_block_escapes_paths() {
        let block = config_block("f", r#"C:\dir "x""#);
        let parsed: toml::Table = toml::from_str(&block).unwrap();
        assert_eq!(
            parsed["functions"][0]["code_dir"].as_str(),
            Some(r#"C:\dir "x""#)
        );
        // Relative paths stay relative: scfsim resolves them against the config file.
        assert!(config_block("f", "functions/f").contains("code_dir = \"functions/f\"\n"));
    }
}
