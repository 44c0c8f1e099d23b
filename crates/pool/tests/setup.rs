//! The host changes only in `Launcher::setup`, and back when the launcher goes (Linux, root,
//! nftables). A test binary of its own: another test's launcher would show in the same places.

use std::time::Duration;

use scfsim_pool::{InstanceSpec, IsolationRequest, Launcher, LauncherOptions, StartFailureKind};

fn require(program: &str, install: &str) {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(found, "`{program}` is needed for this test: {install}");
}

/// This process's cgroup parents (`scfsim-<pid>-<n>`).
fn cgroups() -> Vec<String> {
    let prefix = format!("scfsim-{}-", std::process::id());
    std::fs::read_dir("/sys/fs/cgroup/memory")
        .expect("cgroup v1 memory hierarchy")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

/// This process's nftables tables (`scfsim_<pid>_<n>`).
fn tables() -> Vec<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    let prefix = format!("table ip scfsim_{}_", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_host_changes_only_in_setup_and_back_when_the_launcher_goes() {
    require("nft", "apt-get install nftables");
    let work_dir = tempfile::tempdir().unwrap();
    let mut launcher = Launcher::new(LauncherOptions {
        isolation: IsolationRequest::Namespaces,
        image_functions: false,
        runtimes: Default::default(),
        work_dir: work_dir.path().to_path_buf(),
        supervisor: env!("CARGO_BIN_EXE_scfsim-supervisor").into(),
    })
    .expect("tests run as root with namespaces");
    assert_eq!(cgroups(), Vec::<String>::new());
    assert_eq!(tables(), Vec::<String>::new());
    assert!(!work_dir.path().join("var-lang").exists());

    // Starting before the setup is scfsim's own mistake, and changes nothing either.
    let spec = InstanceSpec {
        bootstrap: "/bin/true".into(),
        code_dir: "/".into(),
        env: Vec::new(),
        init_timeout: Duration::from_secs(5),
        memory_mb: None,
        ..InstanceSpec::default()
    };
    let failure = launcher.start(&spec).await.err().unwrap();
    assert!(
        matches!(failure.kind, StartFailureKind::Internal { .. }),
        "{failure}"
    );
    assert_eq!(cgroups(), Vec::<String>::new());

    launcher.setup().await.expect("the host setup");
    assert_eq!(cgroups().len(), 1, "{:?}", cgroups());
    assert_eq!(tables().len(), 1, "{:?}", tables());
    assert!(work_dir.path().join("var-lang").is_dir());
    let details = launcher.details().join("\n");
    assert!(details.contains("via cgroup"), "{details}");
    assert!(details.contains("nftables table"), "{details}");

    drop(launcher);
    assert_eq!(cgroups(), Vec::<String>::new());
    assert_eq!(tables(), Vec::<String>::new());
}
