//! The `/var/lang` tree that platform bootstraps call runtimes through.
//!
//! Platform bootstraps run `/var/lang/python3/bin/python3 app.py` or `/var/lang/node16/bin/node
//! app.js` unchanged. scfsim generates a tree of symlinks to this machine's interpreters and
//! bind-mounts it on `/var/lang` inside each instance's mount namespace; the host's `/var/lang`
//! is never written (only created, empty, if it did not exist, so it can serve as the mount
//! point; it is left in place). A runtime that is not installed gets a stub that says so, and which config key maps
//! it, on the instance's stderr: the message then reaches the user through the 405's text.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::PoolError;

/// Where platform bootstraps find their runtimes; the mount point of the generated tree.
const VAR_LANG: &str = "/var/lang";

/// Builds the tree under `work_dir` for instances with a mount namespace, and makes sure the
/// host has the mount point. The mount point stays (empty) when scfsim stops: another scfsim
/// may be using it as its mount point at that moment.
pub(crate) fn mount_tree(
    work_dir: &Path,
    overrides: &BTreeMap<String, PathBuf>,
) -> Result<RuntimeTree, PoolError> {
    let mount_point = Path::new(VAR_LANG);
    let created = match mount_point.exists() {
        true => Ok(()),
        false => std::fs::create_dir_all(mount_point),
    };
    if !mount_point.is_dir() {
        return Err(PoolError::VarLangMountPoint {
            source: created.err(),
        });
    }
    let root = work_dir.join("var-lang");
    std::path::absolute(&root)
        .and_then(|root| RuntimeTree::build(&root, overrides))
        .map_err(|source| PoolError::RuntimeTree { path: root, source })
}

/// Which local command each `/var/lang` path stands for by default.
const DEFAULTS: &[(&str, &str)] = &[
    ("python3/bin/python3", "python3"),
    ("python3/bin/python", "python3"),
    ("python36/bin/python3", "python3"),
    ("python37/bin/python3", "python3"),
    ("python38/bin/python3", "python3"),
    ("python39/bin/python3", "python3"),
    ("python310/bin/python3", "python3"),
    ("python311/bin/python3", "python3"),
    ("python312/bin/python3", "python3"),
    ("node10/bin/node", "node"),
    ("node12/bin/node", "node"),
    ("node14/bin/node", "node"),
    ("node16/bin/node", "node"),
    ("node18/bin/node", "node"),
    ("node20/bin/node", "node"),
    ("php7/bin/php", "php"),
    ("php8/bin/php", "php"),
    ("php80/bin/php", "php"),
    ("java8/bin/java", "java"),
    ("java11/bin/java", "java"),
];

/// One `/var/lang` path and what it runs here (`None`: not installed, a stub says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEntry {
    pub path: String,
    pub target: Option<PathBuf>,
}

/// The generated tree, ready to be mounted on `/var/lang`.
#[derive(Debug, Clone)]
pub struct RuntimeTree {
    pub root: PathBuf,
    /// The same tree for instances in debug mode (beside `root`, named `<root>-debug`): its
    /// Python entries are wrappers that run the interpreter under debugpy, waiting for a
    /// debugger on `$SCFSIM_DEBUG_HOST:$SCFSIM_DEBUG_PORT`, so that a platform bootstrap
    /// (`/var/lang/python3/bin/python3 app.py`) is debugged without an edit.
    pub debug_root: PathBuf,
    pub entries: Vec<RuntimeEntry>,
}

impl RuntimeTree {
    /// (Re)builds the tree under `root` from the defaults, with `overrides` (config
    /// `[runtimes]`, e.g. `"node12/bin/node" -> /opt/node12/bin/node`) taking precedence.
    pub fn build(root: &Path, overrides: &BTreeMap<String, PathBuf>) -> io::Result<RuntimeTree> {
        let debug_root = debug_root_of(root);
        for dir in [root, &debug_root] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
        }
        let mut resolved: BTreeMap<&str, Option<PathBuf>> = BTreeMap::new();
        let mut wanted: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
        for (path, command) in DEFAULTS {
            let target = resolved
                .entry(command)
                .or_insert_with(|| resolve(command))
                .clone();
            wanted.insert(path.to_string(), target);
        }
        for (path, target) in overrides {
            wanted.insert(path.clone(), Some(target.clone()));
        }
        let mut entries = Vec::with_capacity(wanted.len());
        for (path, target) in wanted {
            for (tree, debug) in [(root, false), (debug_root.as_path(), true)] {
                let file = tree.join(&path);
                std::fs::create_dir_all(file.parent().expect("entries are dir/bin/exe"))?;
                match &target {
                    Some(target) if debug && path.starts_with("python") => {
                        write_script(&file, &under_debugpy(target))?
                    }
                    Some(target) => std::os::unix::fs::symlink(target, &file)?,
                    None => write_script(&file, &stub(&path))?,
                }
            }
            entries.push(RuntimeEntry { path, target });
        }
        Ok(RuntimeTree {
            root: root.to_path_buf(),
            debug_root,
            entries,
        })
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let mut found: Vec<&str> = Vec::new();
        let mut missing: Vec<&str> = Vec::new();
        for e in &self.entries {
            let runtime = e.path.split('/').next().unwrap_or(&e.path);
            let list = if e.target.is_some() {
                &mut found
            } else {
                &mut missing
            };
            if !list.contains(&runtime) {
                list.push(runtime);
            }
        }
        format!(
            "/var/lang runtimes: {} mapped; not installed here: {}",
            found.join(" "),
            if missing.is_empty() {
                "none".to_string()
            } else {
                missing.join(" ")
            }
        )
    }
}

fn debug_root_of(root: &Path) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push("-debug");
    root.with_file_name(name)
}

fn write_script(file: &Path, text: &str) -> io::Result<()> {
    std::fs::write(file, text)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755))
}

/// The debug tree's Python: the interpreter's own options stay before `-m debugpy`, the script
/// (or `-m module`, `-c code`) and its arguments after; debugpy listens inside the instance and
/// waits for a debugger before the first line runs.
fn under_debugpy(python: &Path) -> String {
    let py = python.display().to_string().replace('\'', "'\\''");
    format!(
        r#"#!/bin/sh
# scfsim debug mode: the platform's Python under debugpy, waiting for a debugger on
# $SCFSIM_DEBUG_HOST:$SCFSIM_DEBUG_PORT before the first line runs.
py='{py}'
if ! "$py" -c 'import debugpy' 2>/dev/null; then
    echo "scfsim: debug mode runs Python under debugpy, which $py cannot import: $py -m pip install debugpy" >&2
    exit 1
fi
opts=
while [ $# -gt 0 ]; do
    case "$1" in
        -m|-c|-) break ;;
        -X|-W) opts="$opts $1 $2"; shift 2 ;;
        -*) opts="$opts $1"; shift ;;
        *) break ;;
    esac
done
exec "$py" $opts -m debugpy --listen "${{SCFSIM_DEBUG_HOST:-127.0.0.1}}:${{SCFSIM_DEBUG_PORT:-9229}}" --wait-for-client "$@"
"#
    )
}

fn stub(path: &str) -> String {
    format!(
        "#!/bin/sh\necho \"scfsim: the runtime /var/lang/{path} is not installed on this machine: \
         install it, or map it in the config: [runtimes] \\\"{path}\\\" = \\\"/path/to/interpreter\\\"\" >&2\nexit 127\n"
    )
}

/// The real interpreter behind `command`: interpreters are asked (a pyenv or nvm shim on PATH
/// is a script, not the interpreter), others are looked up on PATH.
fn resolve(command: &str) -> Option<PathBuf> {
    let asked = match command {
        "python3" => ask("python3", &["-c", "import sys; print(sys.executable)"]),
        "node" => ask("node", &["-p", "process.execPath"]),
        _ => None,
    };
    asked.or_else(|| on_path(command))
}

fn ask(command: &str, args: &[&str]) -> Option<PathBuf> {
    let out = Command::new(command).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_absolute().then_some(path)
}

fn on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .and_then(|p| p.canonicalize().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_links_stubs_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("var-lang");
        let overrides =
            BTreeMap::from([("custom9/bin/run".to_string(), PathBuf::from("/bin/true"))]);
        let tree = RuntimeTree::build(&root, &overrides).unwrap();
        let custom = tree
            .entries
            .iter()
            .find(|e| e.path == "custom9/bin/run")
            .unwrap();
        assert_eq!(custom.target.as_deref(), Some(Path::new("/bin/true")));
        assert_eq!(
            std::fs::read_link(root.join("custom9/bin/run")).unwrap(),
            Path::new("/bin/true")
        );
        for entry in &tree.entries {
            let file = root.join(&entry.path);
            match &entry.target {
                Some(_) => assert!(std::fs::symlink_metadata(&file).unwrap().is_symlink()),
                None => assert!(std::fs::read_to_string(&file)
                    .unwrap()
                    .contains("[runtimes]")),
            }
        }
        // The debug tree: the same entries, Python under debugpy.
        assert_eq!(tree.debug_root, dir.path().join("var-lang-debug"));
        let python = tree
            .entries
            .iter()
            .find(|e| e.path == "python3/bin/python3")
            .unwrap();
        let wrapper = tree.debug_root.join("python3/bin/python3");
        if python.target.is_some() {
            let text = std::fs::read_to_string(&wrapper).unwrap();
            assert!(text.contains("-m debugpy --listen"), "{text}");
        }
        assert_eq!(
            std::fs::read_link(tree.debug_root.join("custom9/bin/run")).unwrap(),
            Path::new("/bin/true")
        );
        // Rebuilding replaces the old tree.
        RuntimeTree::build(&root, &BTreeMap::new()).unwrap();
        assert!(!root.join("custom9").exists());
        assert!(!tree.debug_root.join("custom9").exists());
    }
}
