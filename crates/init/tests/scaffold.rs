//! What `scaffold` writes, for every runtime, without starting scfsim (tests/e2e/init.rs builds
//! and serves each one).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scfsim_init::{scaffold, InitError, Runtime};

fn expected_files(runtime: Runtime) -> &'static [&'static str] {
    match runtime {
        Runtime::Python3 => &["scf_bootstrap", "app.py", "requirements.txt", "README.md"],
        Runtime::Nodejs => &[
            "scf_bootstrap",
            "app.js",
            "package.json",
            "README.md",
            ".gitignore",
        ],
        Runtime::Go => &[
            "scf_bootstrap",
            "main.go",
            "go.mod",
            "go.sum",
            "README.md",
            ".gitignore",
        ],
        Runtime::Rust => &[
            "scf_bootstrap",
            "Cargo.toml",
            "src/main.rs",
            "README.md",
            ".gitignore",
        ],
        Runtime::Bash => &["scf_bootstrap", "server.py", "README.md"],
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs a checker of the sources (`python3`, `node`), which the tests need: a missing one fails
/// naming the command that installs it.
fn check(cmd: &str, args: &[&str], file: &Path, install: &str) {
    let out = Command::new(cmd)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{cmd} is missing here ({e}): install it with `{install}` \
                 (scripts/test-setup.sh installs everything the tests need)"
            )
        });
    assert!(
        out.status.success(),
        "{cmd} {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_runtime_scaffolds_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    for runtime in Runtime::ALL {
        let dir = tmp.path().join(format!("fn-{runtime}"));
        let name = format!("My_{runtime}-fn");
        let done = scaffold(&dir, &name, runtime).unwrap();

        let expected: Vec<PathBuf> = expected_files(runtime)
            .iter()
            .map(|f| dir.join(f))
            .collect();
        assert_eq!(done.files, expected, "{runtime}");
        let mut on_disk: Vec<String> = expected_files(runtime)
            .iter()
            .map(|s| s.to_string())
            .collect();
        on_disk.sort();
        assert_eq!(tree(&dir), on_disk, "{runtime}: nothing else is written");

        let bootstrap = dir.join("scf_bootstrap");
        let mode = std::fs::metadata(&bootstrap).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{runtime}: bootstrap mode {mode:o}");
        let text = read(&bootstrap);
        assert!(text.starts_with("#!/bin/bash\n"), "{runtime}: {text}");
        assert!(
            text.contains("exec "),
            "{runtime}: the bootstrap execs its server"
        );

        for file in &done.files {
            let text = read(file);
            assert!(
                !text.contains("{{") && !text.contains("}}"),
                "{}: a placeholder is left",
                file.display()
            );
            if file.file_name() != Some("scf_bootstrap".as_ref()) {
                let mode = std::fs::metadata(file).unwrap().permissions().mode();
                assert_eq!(mode & 0o111, 0, "{}: not executable", file.display());
            }
        }
        let readme = read(&dir.join("README.md"));
        assert!(readme.starts_with(&format!("# {name}\n")), "{readme}");
        assert!(
            readme.contains(&done.config_block),
            "README shows the block"
        );
    }
}

#[test]
fn the_config_block_is_valid_scfsim_config() {
    let tmp = tempfile::tempdir().unwrap();
    for runtime in Runtime::ALL {
        let dir = tmp.path().join(runtime.as_str());
        let done = scaffold(&dir, &format!("f-{runtime}"), runtime).unwrap();
        assert_eq!(
            done.config_block,
            format!(
                "[[functions]]\nname = \"f-{runtime}\"\npath = \"/f-{runtime}\"\ncode_dir = \"{}\"\nidle_timeout = \"15s\"\n",
                dir.display()
            )
        );
        let source = tmp.path().join("scfsim.toml");
        let config = scfsim_config::parse(&done.config_block, tmp.path(), &source)
            .unwrap_or_else(|e| panic!("{runtime}: {e}\n{}", done.config_block));
        let function = &config.functions[0];
        assert_eq!(function.name, format!("f-{runtime}"));
        assert_eq!(function.path, format!("/f-{runtime}"));
        assert_eq!(function.code_dir, dir);
        assert_eq!(function.bootstrap, dir.join("scf_bootstrap"));
        assert_eq!(function.idle_timeout, Duration::from_secs(15));
    }
}

#[test]
fn next_steps_install_or_build() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = |runtime: Runtime| {
        let dir = tmp.path().join(runtime.as_str()).join("with space");
        let done = scaffold(&dir, "f", runtime).unwrap();
        let cd = format!("cd '{}'", dir.display());
        (done.next_steps, cd)
    };
    let (s, cd) = steps(Runtime::Python3);
    assert_eq!(
        s,
        [cd, "python3 -m pip install -r requirements.txt -t .".into()]
    );
    let (s, cd) = steps(Runtime::Nodejs);
    assert_eq!(s, [cd, "npm install".into()]);
    let (s, cd) = steps(Runtime::Go);
    assert_eq!(s, [cd, "CGO_ENABLED=0 go build -o server .".into()]);
    let (s, cd) = steps(Runtime::Rust);
    assert_eq!(
        s,
        [
            cd,
            "cargo build --release".into(),
            "cp target/release/server server".into()
        ]
    );
    assert!(steps(Runtime::Bash).0.is_empty());
}

#[test]
fn dependency_files_are_well_formed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |r: Runtime| {
        let d = tmp.path().join(r.as_str());
        scaffold(&d, "Echo-Fn", r).unwrap();
        d
    };

    let requirements = read(&dir(Runtime::Python3).join("requirements.txt"));
    assert_eq!(requirements.trim(), "websockets>=12");

    let package: serde_json::Value =
        serde_json::from_str(&read(&dir(Runtime::Nodejs).join("package.json"))).unwrap();
    assert_eq!(package["name"], "echo-fn", "npm names are lower case");
    assert_eq!(package["main"], "app.js");
    assert!(package["dependencies"]["ws"].is_string());

    let go = dir(Runtime::Go);
    let go_mod = read(&go.join("go.mod"));
    assert!(go_mod.starts_with("module echo-fn\n"), "{go_mod}");
    assert!(go_mod.contains("require github.com/gorilla/websocket v1.5.3"));
    assert!(read(&go.join("go.sum")).contains("github.com/gorilla/websocket v1.5.3 h1:"));

    let cargo: toml::Table = toml::from_str(&read(&dir(Runtime::Rust).join("Cargo.toml"))).unwrap();
    assert_eq!(cargo["package"]["name"].as_str(), Some("echo-fn"));
    assert_eq!(
        cargo["workspace"].as_table().map(|t| t.is_empty()),
        Some(true),
        "an empty [workspace] keeps it out of enclosing workspaces"
    );
    assert_eq!(cargo["bin"][0]["name"].as_str(), Some("server"));
    for dep in ["tokio", "tokio-tungstenite", "futures-util"] {
        assert!(cargo["dependencies"].get(dep).is_some(), "{dep}");
    }
}

#[test]
fn sources_parse() {
    let tmp = tempfile::tempdir().unwrap();
    for (runtime, file) in [(Runtime::Python3, "app.py"), (Runtime::Bash, "server.py")] {
        let d = tmp.path().join(runtime.as_str());
        scaffold(&d, "f", runtime).unwrap();
        check(
            "python3",
            &["-m", "py_compile"],
            &d.join(file),
            "apt-get install python3",
        );
    }
    let d = tmp.path().join("nodejs");
    scaffold(&d, "f", Runtime::Nodejs).unwrap();
    check(
        "node",
        &["--check"],
        &d.join("app.js"),
        "apt-get install nodejs",
    );
    let d = tmp.path().join("bootstraps");
    for runtime in Runtime::ALL {
        let d = d.join(runtime.as_str());
        scaffold(&d, "f", runtime).unwrap();
        let out = Command::new("bash")
            .arg("-n")
            .arg(d.join("scf_bootstrap"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{runtime}: bash -n failed");
    }
}

/// Runs `cmd`, retrying while the file is "busy": a child that another test thread forked
/// while this one was writing the script holds a copy of its descriptor until it execs.
fn run_retrying_busy(cmd: &mut Command) -> std::process::Output {
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{cmd:?}: text file busy")
}

#[test]
fn compiled_runtimes_say_when_the_binary_is_not_built() {
    let tmp = tempfile::tempdir().unwrap();
    for (runtime, build) in [
        (Runtime::Go, "go build -o server ."),
        (
            Runtime::Rust,
            "cargo build --release && cp target/release/server server",
        ),
    ] {
        let dir = tmp.path().join(runtime.as_str());
        scaffold(&dir, "f", runtime).unwrap();
        // Run the way scfsim runs it: the code directory is the working directory.
        let out = run_retrying_busy(Command::new("./scf_bootstrap").current_dir(&dir));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{runtime}: {stderr}");
        assert!(stderr.contains("./server is not built yet"), "{stderr}");
        assert!(
            stderr.contains(build),
            "{runtime}: names the build: {stderr}"
        );
    }
}

#[test]
fn refuses_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("taken");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("app.py"), "mine").unwrap();
    for runtime in Runtime::ALL {
        let err = scaffold(&dir, "f", runtime).unwrap_err();
        assert!(
            matches!(&err, InitError::NotEmpty { dir: d, first } if d == &dir && first == "app.py"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("is not empty") && msg.contains("app.py"),
            "{msg}"
        );
    }
    assert_eq!(tree(&dir), ["app.py"], "nothing written");
    assert_eq!(read(&dir.join("app.py")), "mine");

    // A hidden file counts too.
    let hidden = tmp.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    std::fs::write(hidden.join(".git"), "").unwrap();
    assert!(matches!(
        scaffold(&hidden, "f", Runtime::Bash),
        Err(InitError::NotEmpty { .. })
    ));
}

#[test]
fn accepts_an_empty_directory_and_creates_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let done = scaffold(tmp.path(), "f", Runtime::Bash).unwrap();
    assert_eq!(done.files.len(), 3);
    let deep = tmp.path().join("a/b/c");
    scaffold(&deep, "f", Runtime::Rust).unwrap();
    assert!(deep.join("src/main.rs").is_file());
}

#[test]
fn refuses_a_file_and_a_bad_name() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = scaffold(&file, "f", Runtime::Python3).unwrap_err();
    assert!(matches!(err, InitError::NotADirectory(_)), "{err:?}");
    assert!(err.to_string().contains("is not a directory"));

    let dir = tmp.path().join("new");
    for bad in ["", "1st", "my fn", "a/b", "-x", &"n".repeat(61)] {
        let err = scaffold(&dir, bad, Runtime::Nodejs).unwrap_err();
        assert!(matches!(err, InitError::InvalidName(_)), "{bad:?}: {err:?}");
        assert!(err.to_string().contains("not a valid function name"));
    }
    assert!(!dir.exists(), "nothing created for a bad name");
}

#[test]
fn runtimes_parse_and_display() {
    for runtime in Runtime::ALL {
        let s = runtime.to_string();
        assert_eq!(s.parse::<Runtime>().unwrap(), runtime);
    }
    assert_eq!(
        ["python3", "nodejs", "go", "rust", "bash"].map(|s| s.parse::<Runtime>().unwrap()),
        Runtime::ALL
    );
    let err = "python".parse::<Runtime>().unwrap_err();
    assert!(matches!(err, InitError::UnknownRuntime(ref s) if s == "python"));
    assert_eq!(
        err.to_string(),
        "unknown runtime \"python\": expected one of python3, nodejs, go, rust, bash"
    );
}
